"""CifarNet: three 5x5 convolutions (32, 32, 64 channels) with ReLU and 2x2 max pooling, then FC 1024 -> 10.

Input 1x3x32x32 (CIFAR-10). Weights are random but deterministic (seeded), which is enough to exercise
quantization and delegation; no pretrained weights ship with the package.
"""

from __future__ import annotations

import torch
from torch import nn

from neutron_backend.models.common import init_weights, seeded_input

INPUT_SHAPE = (1, 3, 32, 32)
NUM_CLASSES = 10


class CifarNet(nn.Module):
    """The CifarNet layer stack; `forward` returns the 10 class logits."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(32, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Linear(64 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Returns a deterministic CifarNet in eval mode and its example inputs (one seeded 1x3x32x32 tensor)."""
    model = init_weights(CifarNet(), seed).eval()
    return model, (seeded_input(INPUT_SHAPE, seed),)
