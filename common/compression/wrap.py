"""``wrap_last_layers``: make the last K Conv2d/Linear layers of a model train through a
compressed-activation method, freeze everything else.

Layer order is module registration order (``model.named_modules()``), which is the forward
execution order for the models in ``common.models``; the "trainable region" is every module
registered from the first wrapped layer on.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from .layers import CompressedConv2d, CompressedLinear
from .lean import LEAN, EvalBatchNorm2d
from .rank import BudgetLedger
from .registry import is_int, method_spec


def trainable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Conv2d / Linear layers (wrapped ones included) in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def wrapped_layers(model: nn.Module) -> list[tuple[str, CompressedConv2d | CompressedLinear]]:
    """The layers made trainable by ``wrap_last_layers``, in order."""
    kinds = CompressedConv2d | CompressedLinear
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


def compressed_bytes(model: nn.Module) -> int:
    """The paper's metric: bytes the wrapped layers stored for dW at their last forward
    (Tucker core + factors; the pooled or full input for gradfilter / vanilla)."""
    return sum(m.method.nbytes for _, m in wrapped_layers(model))


def layer_ranks(model: nn.Module) -> list[list[int]]:
    """Per wrapped layer, the Tucker ranks of its last forward ([] for vanilla/gradfilter)."""
    return [list(m.method.ranks) for _, m in wrapped_layers(model)]


def _check_conv(name: str, layer: nn.Module) -> None:
    if isinstance(layer, nn.Conv2d) and (
        isinstance(layer.padding, str) or layer.padding_mode != "zeros"
    ):
        raise ValueError(
            f"layer {name!r}: padding={layer.padding!r}, padding_mode={layer.padding_mode!r} "
            "is not supported; compressed convs need explicit int zero padding"
        )


def unwrap(model: nn.Module) -> nn.Module:
    """Restore the plain torch classes swapped in by an earlier ``wrap_last_layers``."""
    for module in model.modules():
        plain = getattr(type(module), "plain", None)
        if plain is not None:
            module.__class__ = plain
            module.__dict__.pop("method", None)
    return model


def wrap_last_layers(model: nn.Module, method: str, last_k: int, **params: Any) -> nn.Module:
    """Train only the last ``last_k`` Conv2d/Linear layers, through ``method``; in place.

    method: a name of ``registry.REGISTRY`` with the parameters its entry takes: "vanilla"
    (plain torch), "svd" (eps), "hosvd" (eps | rank | budget_bytes, eps and budget_bytes
    together = eps capped by the budget), "asi" (same; ranks fixed at the first batch,
    default eps 0.8) or "gradfilter" (radius in 2, 4, 7). ``rank`` is an int for
    every mode (clipped to the mode) or one int per mode. ``budget_bytes`` caps the stored
    bytes of all wrapped layers together (shared out in forward order, see BudgetLedger).

    Every parameter outside the wrapped layers is frozen and every BatchNorm pinned to eval
    mode (Setup B). For the compressing methods, ReLU/ReLU6/BatchNorm modules inside the
    trainable region become their lean versions (1-bit mask; nothing kept). Wrapped modules
    keep their Parameters and state-dict keys; wrapping again first undoes the last wrap.
    """
    spec = method_spec(method)
    spec.check(params)
    layers = trainable_layers(unwrap(model))
    if not (is_int(last_k) and 1 <= last_k <= len(layers)):
        raise ValueError(
            f"last_k={last_k!r} must be an int between 1 and {len(layers)} "
            "(the number of Conv2d/Linear layers)"
        )
    chosen = layers[-last_k:]
    if spec.lean:
        for name, layer in chosen:
            _check_conv(name, layer)

    model.requires_grad_(False)
    region = False
    for name, module in model.named_modules():
        region = region or name == chosen[0][0]
        kind = type(module)
        if kind is nn.BatchNorm2d and module.track_running_stats:
            module.__class__ = LEAN[kind] if region and spec.lean else EvalBatchNorm2d
            module.eval()
        elif kind in LEAN and region and spec.lean:
            module.__class__ = LEAN[kind]

    ledger = BudgetLedger(params["budget_bytes"], last_k) if "budget_bytes" in params else None
    for index, (name, layer) in enumerate(chosen):
        layer.__class__ = CompressedConv2d if isinstance(layer, nn.Conv2d) else CompressedLinear
        layer.method = spec.build(params, name, ledger and (ledger, index))
        layer.requires_grad_(True)
    return model
