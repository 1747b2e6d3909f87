"""An MCUNet-style tiny network (Lin et al. 2020): a narrow MobileNetV2-like inverted-residual
stack with mixed 3x3/5x5/7x7 depthwise kernels and small expansion ratios, no wide last conv.

This is a fixed hand-picked configuration in the spirit of MCUNet's searched ImageNet/VWW
models (which need TinyNAS output to reproduce exactly): 0.72M parameters at width 1.0 with
1000 classes, 178k at the default width 0.5 with 10 classes.
Layout: ``features.0`` stem ConvBNAct, ``features.1..`` inverted residuals, ``classifier.1``
Linear. Below 64 px the stem runs at stride 1 (total stride 16), as in our MobileNetV2.
"""

from __future__ import annotations

from ._layers import InvertedResidualNet


class MCUNet(InvertedResidualNet):
    """Tiny inverted-residual network; ``width`` scales every channel count."""

    STEM = 16
    # t (expansion), c (output channels), n (repeats), s (first stride), k (depthwise kernel)
    SETTING = (
        (1, 8, 1, 1, 3),
        (4, 16, 2, 2, 5),
        (4, 24, 2, 2, 7),
        (4, 40, 3, 2, 5),
        (5, 48, 2, 1, 3),
        (5, 96, 3, 2, 7),
        (6, 160, 1, 1, 5),
    )
