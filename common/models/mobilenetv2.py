"""MobileNetV2 (Sandler et al. 2018) with torchvision's state-dict layout.

Keys: ``features.0`` (stem ConvBNAct), ``features.1`` ... ``features.17`` (inverted residuals),
``features.18`` (1x1 ConvBNAct to the last channel), ``classifier.1`` (Linear; ``classifier.0``
is Dropout). At width 1.0, 3 input channels and 1000 classes it has torchvision's 3,504,872
parameters and its exact key names and shapes.

Small inputs (image_size < 64, e.g. 32x32 CIFAR / padded Fashion-MNIST): torchvision downsamples
by 32, which leaves a 1x1 feature map at 32 px. The CIFAR-style variant runs the stem conv at
stride 1 instead of 2, so the total stride is 16 and a 32 px input ends in a 2x2 map (28 px: 2x2).
Parameter shapes are unchanged; only that one stride differs. Dropping the next stride-2 step too
(total stride 8, 4x4 maps) was measured at about 2x the CPU time of a training step, too slow for
the default 2-core experiment.
"""

from __future__ import annotations

from ._layers import InvertedResidualNet


class MobileNetV2(InvertedResidualNet):
    """MobileNetV2 with width multiplier ``width``; a stride-1 stem below 64 px."""

    STEM = 32
    # t (expansion), c (output channels), n (repeats), s (first stride), k (depthwise kernel)
    SETTING = (
        (1, 16, 1, 1, 3),
        (6, 24, 2, 2, 3),
        (6, 32, 3, 2, 3),
        (6, 64, 4, 2, 3),
        (6, 96, 3, 1, 3),
        (6, 160, 3, 2, 3),
        (6, 320, 1, 1, 3),
    )
    HEAD = 1280
