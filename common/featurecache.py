"""Frozen-prefix feature cache: fine-tune and evaluate only the part of a model after its
frozen layers, on features computed once.

Setup B fine-tuning freezes every layer before the last k and keeps BatchNorm in eval mode
(``common.compression.wrap_last_layers``, ``common.train.batchnorm_eval``). Written as its
top-level blocks ("stages", :func:`stages`), the model is f = s_n o ... o s_1; with cut c the
first stage that holds a trainable parameter or a Dropout (the one module that is random in
training mode), the prefix p = s_{c-1} o ... o s_1 is a fixed deterministic function in both
modes, so

    f(x) = q(p(x)),   q = s_n o ... o s_c,

and q on the stored p(x) gives the same logits, loss and gradients of every trainable
parameter as f on x (autograd keeps nothing in p: no input or parameter there requires grad).
:class:`FeatureCache` computes p(x) once per dataset (no_grad, eval mode, batches of 256) and
derives a later cut's features from an earlier cut's instead of from the images.

Stages are whole top-level blocks, never parts of one, so a residual block stays whole:
MobileNetV2/MCUNet ``features[i]`` (stem, inverted residuals, head), then pool, flatten and the
classifier's modules; ResNet's stem modules, every ``layerN[j]`` block, pool, flatten, ``fc``;
SmallCNN ``features[i]``, pool, flatten, classifier modules. A model with no such list, or
whose first stage is already trainable (all layers, say), has no cut: :func:`split` returns
None and the caller runs the whole model on the images.

What changes for ``common.memory.measure`` on the suffix q instead of f: ``activation_bytes``,
``compressed_bytes``, ``grad_bytes`` and ``optimizer_bytes`` are the same (the prefix keeps
nothing for backward and owns no trainable parameter); ``param_bytes`` counts the suffix's
parameters only, and ``peak_forward_bytes`` / ``peak_step_bytes`` miss the prefix's forward
temporaries and count the cached feature batch as the input instead of the images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from common.models import ResNet
from common.models._layers import InvertedResidualNet
from common.models.smallcnn import SmallCNN

BATCH = 256


def stages(model: nn.Module) -> list[nn.Module] | None:
    """``model``'s forward as a list of top-level blocks, model(x) = s_n(...s_1(x)); None for
    a model whose forward is not such a chain (or not known to be)."""
    if isinstance(model, InvertedResidualNet | SmallCNN):
        return [*model.features, model.pool, nn.Flatten(1), *model.classifier]
    if isinstance(model, ResNet):
        blocks = [block for n in range(1, 5) for block in getattr(model, f"layer{n}")]
        return [model.conv1, model.bn1, model.relu, model.maxpool, *blocks, model.avgpool,
                nn.Flatten(1), model.fc]
    return None


def _fixed(stage: nn.Module) -> bool:
    """No trainable parameter and no Dropout (random in training mode) in ``stage``."""
    return (not any(p.requires_grad for p in stage.parameters())
            and not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in stage.modules()))


def cut_of(model: nn.Module) -> int | None:
    """The index of the first stage that is not fixed (see :func:`_fixed`); None when the
    model has no stage list, no fixed first stage, or no trainable parameter at all."""
    chain = stages(model)
    if chain is None:
        return None
    cut = next((i for i, stage in enumerate(chain) if not _fixed(stage)), None)
    return cut or None


@dataclass(frozen=True)
class Split:
    """A model cut at ``cut``: ``prefix`` (fixed, stages before the cut) and ``suffix`` (the
    rest); both share the model's modules, so training the suffix trains the model."""

    cut: int
    prefix: nn.Sequential
    suffix: nn.Sequential


def split(model: nn.Module) -> Split | None:
    """``model`` cut before its first non-fixed stage, or None where there is no cut."""
    cut = cut_of(model)
    if cut is None:
        return None
    chain = stages(model)
    return Split(cut, nn.Sequential(*chain[:cut]), nn.Sequential(*chain[cut:]))


@torch.no_grad()
def _run(modules: list[nn.Module], data: Dataset, batch_size: int) -> TensorDataset:
    """The modules in eval mode over ``data`` (inputs, labels) as a new TensorDataset; their
    train/eval modes are put back afterwards."""
    chain = nn.Sequential(*modules)
    modes = {module: module.training for module in chain.modules()}
    chain.eval()
    try:
        outputs, labels = [], []
        for inputs, targets in DataLoader(data, batch_size=batch_size):
            outputs.append(chain(inputs))
            labels.append(targets)
    finally:
        for module, mode in modes.items():
            module.training = mode
    return TensorDataset(torch.cat(outputs), torch.cat(labels))


def _same_prefix(a: list[nn.Module], b: list[nn.Module]) -> bool:
    """Whether two lists of stages hold equal parameters and buffers, in order."""
    def tensors(chain: list[nn.Module]) -> list[torch.Tensor]:
        return [t for stage in chain for t in (*stage.parameters(), *stage.buffers())]

    ours, theirs = tensors(a), tensors(b)
    return len(ours) == len(theirs) and all(
        x.shape == y.shape and torch.equal(x, y) for x, y in zip(ours, theirs, strict=True))


class FeatureCache:
    """One dataset's features at the stage boundaries of a frozen ``reference`` model.

    ``at(cut)`` is the dataset after stages[:cut] (eval mode, no grad), computed from the
    nearest earlier cut already cached (the images for none), so asking for the earliest cut
    first passes the images through the network once. ``view(model)`` returns what to train or
    evaluate ``model`` with: its suffix and the features at its cut, or ``model`` itself and
    the images when it has no cut. Its prefix must equal the reference's (a wrapped copy of
    it, say): ``ValueError`` otherwise.
    """

    def __init__(self, reference: nn.Module, data: Dataset, batch_size: int = BATCH) -> None:
        chain = stages(reference)
        if chain is None:
            raise ValueError(f"reference: {type(reference).__name__} has no stage list")
        if batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
        self.stages = chain
        self.data = data
        self.batch_size = batch_size
        self._features: dict[int, Dataset] = {0: data}

    def at(self, cut: int) -> Dataset:
        """The dataset's features after stages[:cut] (cut 0: the dataset itself)."""
        if not 0 <= cut < len(self.stages):
            raise ValueError(f"cut: must be in [0, {len(self.stages)}), got {cut}")
        if cut not in self._features:
            start = max(c for c in self._features if c < cut)
            self._features[cut] = _run(self.stages[start:cut], self._features[start],
                                       self.batch_size)
        return self._features[cut]

    def view(self, model: nn.Module) -> tuple[nn.Module, Dataset]:
        """(suffix, features at its cut) for ``model``, or (``model``, the images) without a
        cut."""
        parts = split(model)
        if parts is None:
            return model, self.data
        if not _same_prefix(list(parts.prefix), self.stages[:parts.cut]):
            raise ValueError("model: its frozen prefix differs from the cache's reference "
                             "model, so the cached features do not apply to it")
        return parts.suffix, self.at(parts.cut)
