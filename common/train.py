"""Local fine-tuning and evaluation shared by clients and server, and Setup-B pretraining.

Fine-tuning follows the paper's Setup B: SGD with momentum 0.9 and weight decay 1e-4 over the
trainable parameters, gradient-norm clipping at 2.0, BatchNorm layers in eval mode (running
statistics frozen), and a cosine learning rate. A call covers the slice [a, b] of one cosine
(``span``; (0, 1) by default, the whole decay over the T steps of the call):

    lr_t = lr * (1 + cos(pi * (a + (b - a) * t / T))) / 2,   t = 0 .. T-1,

so that federated rounds can continue one schedule (round r of R covers [(r-1)/R, r/R], see
:func:`round_span`) instead of restarting it.

Logit adjustment (Menon et al., ICLR 2021, "Long-tail learning via logit adjustment"; per client
as in FedLC, Zhang et al., ICML 2022): with a client's class prior pi, training minimises
CE(f(x) + log pi, y), whose minimiser is f(x) = log p(x | y) + const, i.e. the balanced
posterior; predictions use f(x) unadjusted. A client whose data is skewed to some classes
then no longer pushes the global classifier toward them. ``log_prior`` gives log pi with
add-one smoothing, so a class absent locally gets a large negative offset, not -inf.

FedProx adds the proximal term mu/2 * ||w - w_global||^2 over the trainable parameters, with
w_global the weights at the start of the call unless given.

``pretrain_setup_b`` trains the whole model (BatchNorm in train mode) on the server's half of
the Setup-B split and caches the weights under ``<cache>/checkpoints/<hash>.pt``, keyed by
everything that determines them. By default it uses the whole server half
(``pretrain_samples``: none) for ``pretrain_epochs`` 5: MobileNetV2 w0.5 on Fashion-MNIST
reaches about 0.90 balanced test accuracy, which takes several minutes on two CPU cores once
and is cached; a ``pretrain_samples`` cap trades that accuracy for time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from common.config import ExperimentConfig
from common.data import cache_dir, dataset_spec, labels_of, load_dataset, setup_b_split, subsample
from common.memory import MemoryReport, StepProbe
from common.models import build_model

MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
CLIP_NORM = 2.0
PRETRAIN_BATCH = 64
PRETRAIN_LR = 0.1
CHECKPOINT_VERSION = 1

StepCallback = Callable[[int, int, float], None]
"""Called after every step with (step, total steps, batch loss)."""


@dataclass(frozen=True)
class TrainResult:
    """Mean training loss and accuracy over the examples seen (in train mode), their number
    (``examples``, counting repeats over epochs) and the number of optimizer steps."""

    loss: float
    accuracy: float
    examples: int
    steps: int
    first_step: MemoryReport | None = None


def sgd(params: Iterable[nn.Parameter], lr: float) -> torch.optim.SGD:
    """Setup B's optimizer: SGD, momentum 0.9, weight decay 1e-4."""
    return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def batchnorm_eval(model: nn.Module) -> nn.Module:
    """``model.train()`` with every BatchNorm layer switched back to eval mode."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def _loader(data: DataLoader | Dataset, batch_size: int, seed: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)


def proximal_term(params: list[nn.Parameter], anchor: list[torch.Tensor]) -> torch.Tensor:
    """sum_i ||w_i - a_i||^2 (FedProx's penalty without the mu/2 factor)."""
    return sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))


def train(
    model: nn.Module,
    data: DataLoader | Dataset,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    epochs: int = 1,
    max_steps: int | None = None,
    lr: float = 0.05,
    span: tuple[float, float] = (0.0, 1.0),
    logit_adjustment: torch.Tensor | None = None,
    batch_size: int = 32,
    proximal_mu: float = 0.0,
    global_params: list[torch.Tensor] | None = None,
    freeze_batchnorm: bool = True,
    seed: int = 0,
    on_step: StepCallback | None = None,
    probe: StepProbe | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``epochs`` passes over ``data``, at most ``max_steps`` steps.

    ``data`` is a DataLoader, or a Dataset loaded shuffled (``batch_size``, ``seed``).
    ``optimizer`` defaults to Setup B's SGD with ``lr`` over the trainable parameters; a given
    optimizer keeps its own settings, its learning rate follows the cosine slice ``span`` during
    the call and is put back afterwards. ``logit_adjustment``: a (num_classes,) tensor added to
    the logits inside the loss only (``log_prior``); the reported accuracy uses the plain
    logits. ``global_params``: FedProx anchor, one tensor per trainable
    parameter (default: their values at the start). ``probe`` measures the first step, which
    stays a normal training step (``TrainResult.first_step``; it raises ``OutOfBudget`` there).
    """
    if epochs < 1:
        raise ValueError(f"epochs: must be at least 1, got {epochs}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps: must be at least 1, got {max_steps}")
    if proximal_mu < 0:
        raise ValueError(f"proximal_mu: must be non-negative, got {proximal_mu}")
    start, end = span
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"span: must satisfy 0 <= start <= end <= 1, got {span}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: has no trainable parameters")
    if len(data) == 0:
        raise ValueError("data: is empty")
    loader = _loader(data, batch_size, seed)
    total = epochs * len(loader)
    total = total if max_steps is None else min(total, max_steps)
    optimizer = optimizer or sgd(params, lr)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: 0.5 * (1.0 + math.cos(math.pi * (start + (end - start) * t / total)))
    )
    anchor = None
    if proximal_mu > 0:
        anchor = global_params or [p.detach().clone() for p in params]
    if freeze_batchnorm:
        batchnorm_eval(model)
    else:
        model.train()
    loss_sum, correct, seen, step = 0.0, 0, 0, 0
    first_step = None
    try:
        while step < total:
            for inputs, targets in loader:
                measured = probe if step == 0 else None
                optimizer.zero_grad(set_to_none=True)
                with measured.forward(inputs) if measured else nullcontext():
                    logits = model(inputs)
                    adjusted = logits if logit_adjustment is None else logits + logit_adjustment
                    loss = F.cross_entropy(adjusted, targets)
                objective = loss
                if anchor is not None:
                    objective = loss + proximal_mu / 2 * proximal_term(params, anchor)
                objective.backward()
                if measured:
                    measured.after_backward()
                nn.utils.clip_grad_norm_(params, CLIP_NORM)
                optimizer.step()
                if measured:
                    first_step = measured.after_step(optimizer)
                schedule.step()
                step += 1
                loss_sum += loss.item() * len(targets)
                correct += (logits.argmax(1) == targets).sum().item()
                seen += len(targets)
                if on_step is not None:
                    on_step(step, total, loss.item())
                if step == total:
                    break
    finally:
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base
        if probe is not None:
            probe.close()
    return TrainResult(loss_sum / seen, correct / seen, seen, step, first_step)


def log_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log pi_c with pi_c = (n_c + 1) / (n + C): the add-one-smoothed class prior of ``labels``
    (integer class ids), the logit adjustment of a client holding them."""
    if labels.numel() == 0:
        raise ValueError("labels: is empty")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels: must lie in [0, {num_classes}), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    counts = torch.bincount(labels.long(), minlength=num_classes).double() + 1.0
    return (counts / counts.sum()).log().float()


def round_span(schedule: str, server_round: int, rounds: int) -> tuple[float, float]:
    """The slice of the cosine learning-rate schedule that fine-tuning round ``server_round``
    (1-based) of ``rounds`` covers: ``[(r-1)/R, r/R]`` for ``across-rounds`` (one decay over
    the whole run), ``[0, 1]`` for ``per-round`` (a full decay, restarted every round)."""
    if not 1 <= server_round <= rounds:
        raise ValueError(f"server_round: must be in [1, {rounds}], got {server_round}")
    if schedule == "per-round":
        return 0.0, 1.0
    if schedule == "across-rounds":
        return (server_round - 1) / rounds, server_round / rounds
    raise ValueError(f"lr_schedule: unknown schedule {schedule!r}")


@torch.no_grad()
def evaluate(
    model: nn.Module, data: DataLoader | Dataset, batch_size: int = 256
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode over ``data``.

    The train/eval mode of every module is restored afterwards.
    """
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    try:
        for inputs, targets in loader:
            logits = model(inputs)
            loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
            correct += (logits.argmax(1) == targets).sum().item()
            seen += len(targets)
    finally:
        for module, mode in modes.items():
            module.training = mode
    if seen == 0:
        raise ValueError("data: is empty")
    return loss_sum / seen, correct / seen


# ------------------------------------------------------------------------- Setup B


def setup_b_data(config: ExperimentConfig) -> tuple[Subset, Subset]:
    """The server half and the client half of the Setup-B split of the training set."""
    train_set, _ = load_dataset(config.dataset, config.image_size)
    server, client = setup_b_split(labels_of(train_set), config.seed)
    return Subset(train_set, server.tolist()), Subset(train_set, client.tolist())


def initial_model(config: ExperimentConfig) -> nn.Module:
    """The experiment's untrained model, initialised from ``config.seed``."""
    spec = dataset_spec(config.dataset)
    torch.manual_seed(config.seed)
    return build_model(
        config.model, spec.num_classes, spec.channels, config.image_size, config.width
    )


def checkpoint_path(config: ExperimentConfig) -> Path:
    """``<cache>/checkpoints/<hash>.pt``; the hash covers everything pretraining depends on."""
    key = {
        "version": CHECKPOINT_VERSION,
        "model": config.model,
        "width": config.width,
        "dataset": config.dataset,
        "image_size": config.image_size,
        "seed": config.seed,
        "epochs": config.pretrain_epochs,
        "max_samples": config.pretrain_samples,
        "batch_size": PRETRAIN_BATCH,
        "lr": PRETRAIN_LR,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "checkpoints" / f"{digest}.pt"


def pretrain_setup_b(
    config: ExperimentConfig, on_step: StepCallback | None = None
) -> nn.Module:
    """The model pretrained for ``config.pretrain_epochs`` on (a ``config.pretrain_samples``
    subsample of) the Setup-B server half: all layers trainable, BatchNorm in train mode,
    batch 64, lr 0.1.

    The weights are cached (see :func:`checkpoint_path`); a later call with the same key loads
    them. With ``pretrain_epochs == 0`` the seeded untrained model is returned.
    """
    model = initial_model(config)
    if config.pretrain_epochs == 0:
        return model
    path = checkpoint_path(config)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model
    server_half, _ = setup_b_data(config)
    indices = subsample(server_half.indices, config.pretrain_samples, config.seed)
    train(
        model,
        Subset(server_half.dataset, indices.tolist()),
        epochs=config.pretrain_epochs,
        lr=PRETRAIN_LR,
        batch_size=PRETRAIN_BATCH,
        freeze_batchnorm=False,
        seed=config.seed,
        on_step=on_step,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")
    torch.save(model.state_dict(), partial)
    partial.replace(path)
    return model


def pretraining_tradeoff(config: ExperimentConfig) -> str | None:
    """A sentence naming what a reduced pretraining trades away (a ``pretrain_samples`` cap or
    fewer epochs than the default), or None when pretraining runs at the default or above."""
    fields = ExperimentConfig.model_fields
    full_epochs = fields["pretrain_epochs"].default
    if config.pretrain_epochs == 0:
        return "no pretraining: fine-tuning starts from an untrained model"
    if config.pretrain_samples is None and config.pretrain_epochs >= full_epochs:
        return None
    share = ("all" if config.pretrain_samples is None
             else f"{config.pretrain_samples:,} samples")
    return (f"pretraining reduced for speed ({share} of the server half x "
            f"{config.pretrain_epochs} epochs; default: all of it x {full_epochs}): a weaker "
            "start (MobileNetV2 w0.5 on Fashion-MNIST: about 0.72 balanced test accuracy "
            "instead of 0.90) and so larger, less representative fine-tuning gains; "
            "examples/credible.yaml is the full-scale experiment")

