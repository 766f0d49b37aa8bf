"""MobileNetV1 at width 0.25 for visual wake words, the MLPerf Tiny VWW model (96x96 RGB, person / no person):
Howard et al., "MobileNets" (arXiv:1704.04861), as used by Banbury et al., "MLPerf Tiny Benchmark"
(arXiv:2106.07597); reference Keras model in mlcommons/tiny, benchmark/training/visual_wake_words/vww_model.py.

A 3x3 stride-2 convolution (8 channels), 13 depthwise-separable blocks (3x3 depthwise + 1x1 pointwise, batchnorm
+ ReLU after each; 16 ... 256 channels, five of them stride 2), 3x3 average pooling and a 256 -> 2 classifier.
ReLU, not ReLU6, as in the reference. Returns logits. Weights are seeded, batchnorm statistics warmed up on
random data.
"""

from __future__ import annotations

import torch
from torch import nn

from neutron_backend.models.common import init_weights, seeded_input, warm_up_batchnorm

INPUT_SHAPE = (1, 3, 96, 96)
NUM_CLASSES = 2
WIDTH = 0.25
# (output channels at width 1.0, depthwise stride) of the 13 depthwise-separable blocks (paper, Table 1).
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
STEM_CHANNELS = 32


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups),
            nn.BatchNorm2d(out_channels), nn.ReLU()]


class MobileNetV1VWW(nn.Module):
    """MobileNetV1 0.25 with a 2-class head; `forward` returns the 2 logits (no person, person)."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: float = WIDTH) -> None:
        super().__init__()
        in_channels = int(STEM_CHANNELS * width)
        layers = _conv_bn_relu(3, in_channels, 3, stride=2)
        for channels, stride in BLOCKS:
            out_channels = int(channels * width)
            layers += _conv_bn_relu(in_channels, in_channels, 3, stride, groups=in_channels)
            layers += _conv_bn_relu(in_channels, out_channels, 1)
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(3)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Returns a deterministic MobileNetV1 0.25 VWW model in eval mode (batchnorm warmed up) and one seeded
    1x3x96x96 input."""
    example = (seeded_input(INPUT_SHAPE, seed),)
    return warm_up_batchnorm(init_weights(MobileNetV1VWW(), seed), example, seed=seed), example
