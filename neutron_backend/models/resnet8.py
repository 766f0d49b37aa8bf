"""ResNet-8, the MLPerf Tiny image classification model (CIFAR-10, 1x3x32x32, 10 classes): Banbury et al.,
"MLPerf Tiny Benchmark", NeurIPS 2021 (arXiv:2106.07597); reference Keras model in mlcommons/tiny,
benchmark/training/image_classification/keras_model.py.

A 3x3 stem (16 channels), three residual stacks of two 3x3 convolutions (16, 32, 64 channels; the last two
stacks start with stride 2 and take a strided 1x1 convolution shortcut), batchnorm + ReLU as in the reference,
8x8 average pooling and a 64 -> 10 classifier. Returns logits (the reference's final softmax belongs to the
loss/post-processing). Weights are seeded, batchnorm statistics warmed up on random data.
"""

from __future__ import annotations

import torch
from torch import nn

from neutron_backend.models.common import init_weights, seeded_input, warm_up_batchnorm

INPUT_SHAPE = (1, 3, 32, 32)
NUM_CLASSES = 10
STACK_CHANNELS = (16, 32, 64)


class ResidualStack(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, added to the input (or to a strided 1x1 convolution of it), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = (nn.Identity() if stride == 1 and in_channels == out_channels
                         else nn.Conv2d(in_channels, out_channels, 1, stride))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet8(nn.Module):
    """The MLPerf Tiny ResNet-8; `forward` returns the 10 class logits."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        first = STACK_CHANNELS[0]
        self.stem = nn.Sequential(nn.Conv2d(3, first, 3, 1, 1), nn.BatchNorm2d(first), nn.ReLU())
        self.stacks = nn.Sequential(
            ResidualStack(first, STACK_CHANNELS[0], 1),
            ResidualStack(STACK_CHANNELS[0], STACK_CHANNELS[1], 2),
            ResidualStack(STACK_CHANNELS[1], STACK_CHANNELS[2], 2),
        )
        self.pool = nn.AvgPool2d(8)
        self.classifier = nn.Linear(STACK_CHANNELS[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.stacks(self.stem(x))), 1))


def build(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Returns a deterministic ResNet-8 in eval mode (batchnorm warmed up) and one seeded 1x3x32x32 input."""
    example = (seeded_input(INPUT_SHAPE, seed),)
    return warm_up_batchnorm(init_weights(ResNet8(), seed), example, seed=seed), example
