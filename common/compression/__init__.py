"""Compressed-activation training: layers whose backward keeps a low-rank (SVD / HOSVD /
ASI) or pooled (gradient filtering) version of their input instead of the input itself.

Entry point: ``wrap_last_layers(model, method, last_k, **params)``; ``compressed_bytes`` and
``layer_ranks`` report what the wrapped layers stored at their last forward. The methods and
their parameters are the entries of ``registry.REGISTRY``.

The names below load their module on first use (PEP 562), so that reading the registry
(``common.compression.registry``: the schema, the CLI, the dashboard) does not import torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Tucker": ".decompose",
    "hosvd": ".decompose",
    "reference_hosvd": ".decompose",
    "subspace_iteration": ".decompose",
    "METHODS": ".registry",
    "REGISTRY": ".registry",
    "MethodSpec": ".registry",
    "method_spec": ".registry",
    "compressed_bytes": ".wrap",
    "layer_ranks": ".wrap",
    "trainable_layers": ".wrap",
    "unwrap": ".wrap",
    "wrap_last_layers": ".wrap",
    "wrapped_layers": ".wrap",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
