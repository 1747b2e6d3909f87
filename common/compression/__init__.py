"""Compressed-activation training: layers whose backward keeps a low-rank (SVD / HOSVD /
ASI) or pooled (gradient filtering) version of their input instead of the input itself.

Entry point: ``wrap_last_layers(model, method, last_k, **params)``; ``compressed_bytes`` and
``layer_ranks`` report what the wrapped layers stored at their last forward.
"""

from .decompose import Tucker, hosvd, reference_hosvd, subspace_iteration
from .wrap import (
    METHODS,
    compressed_bytes,
    layer_ranks,
    trainable_layers,
    unwrap,
    wrap_last_layers,
    wrapped_layers,
)

__all__ = [
    "METHODS",
    "Tucker",
    "compressed_bytes",
    "hosvd",
    "layer_ranks",
    "reference_hosvd",
    "subspace_iteration",
    "trainable_layers",
    "unwrap",
    "wrap_last_layers",
    "wrapped_layers",
]
