"""MobileNetV2 (width 1.0, 224x224, 1000 classes): Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018 (arXiv:1801.04381), Table 2.

A 3x3 stride-2 stem (32 channels), 17 inverted residual blocks (1x1 expansion, 3x3 depthwise, linear 1x1
projection; batchnorm after each convolution, ReLU6 after the first two; a residual add when the stride is 1
and the channel count is kept), a 1x1 convolution to 1280 channels, global average pooling and a 1280 -> 1000
classifier. Returns logits. `MobileNetV2(width_mult=0.35, num_classes=10)` scales every layer's channels as the
paper's width multiplier does (rounded to multiples of 8, the last layer kept at 1280 below width 1.0), e.g. for
the digits-trained zoo model at 32x32 (`neutron_backend.models.train`). `build()` gives width 1.0 with seeded
weights and batchnorm statistics warmed up on random data.
"""

from __future__ import annotations

import torch
from torch import nn

from neutron_backend.models.common import init_weights, seeded_input, warm_up_batchnorm

INPUT_SHAPE = (1, 3, 224, 224)
NUM_CLASSES = 1000
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
# (expansion t, output channels c, repeats n, first stride s), Table 2 of the paper.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def conv_bn_relu6(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  groups: int = 1) -> nn.Sequential:
    """Convolution (no bias, 'same' padding for odd kernels), batchnorm, ReLU6."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """Expansion 1x1 (skipped when the expansion is 1), depthwise 3x3, linear 1x1 projection; residual when the
    block keeps stride 1 and the channel count."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_relu6(in_channels, hidden, 1))
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


def _make_divisible(channels: float, divisor: int = 8) -> int:
    """`channels` rounded to the nearest multiple of `divisor`, never more than 10% below it (the reference
    implementation's rounding of width-multiplied channel counts)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


class MobileNetV2(nn.Module):
    """MobileNetV2 at width `width_mult`; `forward` returns the class logits."""

    def __init__(self, num_classes: int = NUM_CLASSES, width_mult: float = 1.0) -> None:
        super().__init__()
        stem = _make_divisible(STEM_CHANNELS * width_mult)
        last = _make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        layers: list[nn.Module] = [conv_bn_relu6(3, stem, 3, stride=2)]
        in_channels = stem
        for expansion, channels, repeats, first_stride in INVERTED_RESIDUAL_SETTING:
            out_channels = _make_divisible(channels * width_mult)
            for index in range(repeats):
                layers.append(InvertedResidual(in_channels, out_channels, first_stride if index == 0 else 1,
                                               expansion))
                in_channels = out_channels
        layers.append(conv_bn_relu6(in_channels, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Returns a deterministic MobileNetV2 in eval mode (batchnorm warmed up) and one seeded 1x3x224x224 input."""
    example = (seeded_input(INPUT_SHAPE, seed),)
    return warm_up_batchnorm(init_weights(MobileNetV2(), seed), example, seed=seed), example
