"""DS-CNN keyword spotting, the MLPerf Tiny KWS model (49x10 MFCC features, 12 classes): Zhang et al., "Hello
Edge: Keyword Spotting on Microcontrollers" (arXiv:1711.07128), as used by Banbury et al., "MLPerf Tiny
Benchmark" (arXiv:2106.07597); reference Keras model in mlcommons/tiny, benchmark/training/keyword_spotting.

A 10x4 stride-2 convolution (64 channels), four depthwise-separable blocks (3x3 depthwise + 1x1 pointwise, 64
channels, batchnorm + ReLU after each), 25x5 average pooling and a 64 -> 12 classifier. Returns logits.
Input 1x1x49x10 (NCHW). The reference's 'same' padding of the first convolution pads rows 4 above and 5 below;
PyTorch pads symmetrically, so this pads 5 and 5 (same 25x5 output, same MACs). Weights are seeded, batchnorm
statistics warmed up on random data.

`DSCNN1d` is the same network over time only (a 1-D variant, as temporal-convolution KWS models are): the 10
features of each of the 49 frames are the channels of a 1x10x49 input, a 10-tap stride-2 convolution, four 1-D
depthwise-separable blocks (3-tap depthwise), average pooling over the 25 frames and the classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from neutron_backend.models.common import init_weights, seeded_input, warm_up_batchnorm

INPUT_SHAPE = (1, 1, 49, 10)
NUM_CLASSES = 12
CHANNELS = 64
NUM_BLOCKS = 4


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU()]


class DSCNN(nn.Module):
    """The MLPerf Tiny DS-CNN; `forward` returns the 12 class logits."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, CHANNELS, (10, 4), stride=2, padding=(5, 1)), *_bn_relu(CHANNELS)]
        for _ in range(NUM_BLOCKS):
            layers += [nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, groups=CHANNELS), *_bn_relu(CHANNELS),
                       nn.Conv2d(CHANNELS, CHANNELS, 1), *_bn_relu(CHANNELS)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d((25, 5))
        self.classifier = nn.Linear(CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


INPUT_SHAPE_1D = (1, 10, 49)


def _bn1d_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm1d(channels), nn.ReLU()]


class DSCNN1d(nn.Module):
    """DS-CNN over time (1-D convolutions); input [N, 10 features, 49 frames]; `forward` returns the logits."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        features = INPUT_SHAPE_1D[1]
        layers: list[nn.Module] = [nn.Conv1d(features, CHANNELS, 10, stride=2, padding=5), *_bn1d_relu(CHANNELS)]
        for _ in range(NUM_BLOCKS):
            layers += [nn.Conv1d(CHANNELS, CHANNELS, 3, padding=1, groups=CHANNELS), *_bn1d_relu(CHANNELS),
                       nn.Conv1d(CHANNELS, CHANNELS, 1), *_bn1d_relu(CHANNELS)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool1d(25)
        self.classifier = nn.Linear(CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Returns a deterministic DS-CNN in eval mode (batchnorm warmed up) and one seeded 1x1x49x10 input."""
    example = (seeded_input(INPUT_SHAPE, seed),)
    return warm_up_batchnorm(init_weights(DSCNN(), seed), example, seed=seed), example
