"""Deep autoencoder for anomaly detection, the MLPerf Tiny AD model (ToyADMOS / DCASE 2020 task 2, 640 inputs =
5 frames x 128 log-mel bins): Banbury et al., "MLPerf Tiny Benchmark" (arXiv:2106.07597); reference Keras model in
mlcommons/tiny, benchmark/training/anomaly_detection/keras_model.py (the DCASE 2020 task 2 baseline).

Encoder: four Linear 640/128 -> 128 layers and a 128 -> 8 bottleneck; decoder: four 128 -> 128 layers; each
followed by BatchNorm1d and ReLU; then a linear 128 -> 640 reconstruction (the output; the anomaly score is its
mean squared error against the input). Weights are seeded, batchnorm statistics warmed up on random data.
"""

from __future__ import annotations

import torch
from torch import nn

from neutron_backend.models.common import init_weights, seeded_input, warm_up_batchnorm

INPUT_SHAPE = (1, 640)
HIDDEN = 128
BOTTLENECK = 8
LAYERS_PER_SIDE = 4


def _dense_bn_relu(in_features: int, out_features: int) -> list[nn.Module]:
    return [nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features), nn.ReLU()]


class DeepAutoencoder(nn.Module):
    """The MLPerf Tiny anomaly detection autoencoder; `forward` returns the 640-value reconstruction."""

    def __init__(self, num_inputs: int = INPUT_SHAPE[1]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = num_inputs
        for _ in range(LAYERS_PER_SIDE):
            layers += _dense_bn_relu(width, HIDDEN)
            width = HIDDEN
        layers += _dense_bn_relu(HIDDEN, BOTTLENECK)
        width = BOTTLENECK
        for _ in range(LAYERS_PER_SIDE):
            layers += _dense_bn_relu(width, HIDDEN)
            width = HIDDEN
        layers.append(nn.Linear(HIDDEN, num_inputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Returns a deterministic autoencoder in eval mode (batchnorm warmed up) and one seeded 1x640 input."""
    example = (seeded_input(INPUT_SHAPE, seed),)
    return warm_up_batchnorm(init_weights(DeepAutoencoder(), seed), example, seed=seed), example
