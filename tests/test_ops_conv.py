"""Convolution family: 1D (through the conv1d -> conv2d rewrite and as a rank-3 convolution), transposed, grouped,
depthwise with a channel multiplier, batchnorm folding and standalone batchnorm, 1D pooling; numerics of each
through the whole flow (tests/numerics.py), and verdicts with their exact reasons on both sides of every limit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from numerics import Conv, check_case
from torch import nn

CONV = "aten.convolution.default"
VIEW = "aten.view_copy.default"
RELU = "aten.relu.default"
ADDMM = "aten.addmm.default"
MAX_POOL = "aten.max_pool2d_with_indices.default"
AVG_POOL = "aten.avg_pool2d.default"
ADAPTIVE_AVG_POOL = "aten._adaptive_avg_pool2d.default"

COVERED = {CONV, VIEW, RELU, ADDMM, MAX_POOL, AVG_POOL, ADAPTIVE_AVG_POOL}


class Conv1d(nn.Module):
    def __init__(self, cin=4, cout=8, kernel=3, act=None, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, **kwargs)
        self.act = act

    def forward(self, x):
        y = self.conv(x)
        return y if self.act is None else self.act(y)


class Wav2LetterLike(nn.Module):
    """A wav2letter-style acoustic model in miniature: a stack of 1D convs with ReLU (a wide strided first layer,
    a batchnorm folded into it, a max pool, 1x1 convs at the end)."""

    def __init__(self, features: int = 12, classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv1d(features, 32, 11, stride=2, padding=5), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Conv1d(32, 32, 7, padding=3), nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(32, 32, 5, padding=4, dilation=2), nn.ReLU(),
            nn.Conv1d(32, 64, 1), nn.ReLU(),
            nn.Conv1d(64, classes, 1),
        )

    def forward(self, x):
        return self.layers(x)


class ConvTranspose(nn.Module):
    def __init__(self, cin=8, cout=4, kernel=3, act=None, one_d=False, **kwargs) -> None:
        super().__init__()
        self.conv = (nn.ConvTranspose1d if one_d else nn.ConvTranspose2d)(cin, cout, kernel, **kwargs)
        self.act = act

    def forward(self, x):
        y = self.conv(x)
        return y if self.act is None else self.act(y)


class ConvBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class AutoencoderBlock(nn.Module):
    """The MLPerf Tiny anomaly-detection autoencoder's layer: Linear -> BatchNorm1d -> ReLU."""

    def __init__(self, features: int = 32, hidden: int = 16) -> None:
        super().__init__()
        self.encode = nn.Sequential(nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.decode = nn.Sequential(nn.Linear(hidden, features), nn.BatchNorm1d(features), nn.ReLU())

    def forward(self, x):
        return self.decode(self.encode(x))


class StandaloneBatchNorm(nn.Module):
    """A batchnorm with no conv/linear before it (it normalises the model input)."""

    def __init__(self, kind: type[nn.Module], channels: int) -> None:
        super().__init__()
        self.bn = kind(channels)

    def forward(self, x):
        return self.bn(x)


def _warmed(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Batchnorm statistics far from identity (DESIGN.md §9: identity statistics make the fold trivial)."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(shape) * 3 + 1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.data.uniform_(0.5, 2.0)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


SEQUENCE = (1, 4, 16)
IMAGE = (1, 3, 8, 8)
FEATURE_MAP = (1, 8, 6, 6)
SMALL_MAP = (1, 8, 5, 5)

# name -> (model factory, input shapes, edge targets that must be delegated, allowed error in output steps)
CASES: dict[str, tuple[Callable[[], nn.Module], tuple[tuple[int, ...], ...], tuple[str, ...], float]] = {
    "conv1d": (lambda: Conv1d(), (SEQUENCE,), (CONV,), 1.0),
    "conv1d_padding_stride": (lambda: Conv1d(kernel=5, stride=2, padding=2), (SEQUENCE,), (CONV,), 1.0),
    "conv1d_dilation": (lambda: Conv1d(dilation=2, padding=2), (SEQUENCE,), (CONV,), 1.0),
    "conv1d_relu": (lambda: Conv1d(act=nn.ReLU(), padding=1), (SEQUENCE,), (CONV, RELU), 1.0),
    "conv1d_depthwise": (lambda: Conv1d(8, 8, 3, groups=8, padding=1), ((1, 8, 16),), (CONV,), 1.0),
    "conv1d_grouped": (lambda: Conv1d(8, 8, 3, groups=2, padding=1), ((1, 8, 16),), (CONV,), 1.0),
    # Five requantizing convs in a chain: an intermediate difference of one step may grow by a step per layer.
    "wav2letter_like": (lambda: _warmed(Wav2LetterLike(), (4, 12, 64)), ((1, 12, 64),), (CONV, RELU, MAX_POOL),
                        5.0),
    "max_pool1d": (lambda: nn.MaxPool1d(2), (SEQUENCE,), (MAX_POOL,), 1.0),
    "max_pool1d_padding": (lambda: nn.MaxPool1d(3, stride=2, padding=1), (SEQUENCE,), (MAX_POOL,), 1.0),
    "avg_pool1d": (lambda: nn.AvgPool1d(4, stride=2), (SEQUENCE,), (AVG_POOL,), 1.0),
    "adaptive_avg_pool1d": (lambda: nn.AdaptiveAvgPool1d(4), (SEQUENCE,), (ADAPTIVE_AVG_POOL,), 1.0),
    "conv_transpose": (lambda: ConvTranspose(), (SMALL_MAP,), (CONV,), 1.0),
    "conv_transpose_no_bias": (lambda: ConvTranspose(bias=False), (SMALL_MAP,), (CONV,), 1.0),
    "conv_transpose_stride2": (lambda: ConvTranspose(kernel=2, stride=2), (SMALL_MAP,), (CONV,), 1.0),
    "conv_transpose_stride2_padding": (lambda: ConvTranspose(stride=2, padding=1), (SMALL_MAP,), (CONV,), 1.0),
    "conv_transpose_output_padding": (lambda: ConvTranspose(stride=2, padding=1, output_padding=1), (SMALL_MAP,),
                                      (CONV,), 1.0),
    "conv_transpose_asymmetric": (lambda: ConvTranspose(kernel=(3, 4), stride=(1, 2), padding=(2, 1),
                                                        output_padding=(0, 1)), (SMALL_MAP,), (CONV,), 1.0),
    "conv_transpose_relu": (lambda: ConvTranspose(act=nn.ReLU(), stride=2, padding=1), (SMALL_MAP,), (CONV, RELU),
                            1.0),
    "conv_transpose1d": (lambda: ConvTranspose(one_d=True, stride=2, padding=1, output_padding=1), ((1, 8, 7),),
                         (CONV,), 1.0),
    "grouped_conv": (lambda: Conv(8, 16, 3, groups=2, padding=1), (FEATURE_MAP,), (CONV,), 1.0),
    "grouped_conv_4_groups_relu": (lambda: Conv(8, 8, 3, groups=4, act=nn.ReLU()), (FEATURE_MAP,), (CONV, RELU),
                                   1.0),
    "depthwise_multiplier": (lambda: Conv(8, 16, 3, groups=8, padding=1), (FEATURE_MAP,), (CONV,), 1.0),
    "depthwise_multiplier_stride2": (lambda: Conv(4, 12, 3, groups=4, stride=2), (FEATURE_MAP[:1] + (4, 7, 7),),
                                     (CONV,), 1.0),
    "conv_batchnorm_relu": (lambda: _warmed(ConvBatchNorm(), (4, *IMAGE[1:])), (IMAGE,), (CONV, RELU), 1.0),
    # Two requantizing linear layers in a chain.
    "linear_batchnorm1d_relu": (lambda: _warmed(AutoencoderBlock(), (8, 32)), ((1, 32),), (ADDMM, RELU), 2.0),
    "batchnorm2d_standalone": (lambda: _warmed(StandaloneBatchNorm(nn.BatchNorm2d, 8), (4, 8, 6, 6)),
                               (FEATURE_MAP,), (CONV,), 1.0),
    "batchnorm1d_standalone_2d_input": (lambda: _warmed(StandaloneBatchNorm(nn.BatchNorm1d, 16), (4, 16)),
                                        ((1, 16),), (CONV,), 1.0),
    "batchnorm1d_standalone_3d_input": (lambda: _warmed(StandaloneBatchNorm(nn.BatchNorm1d, 4), (4, 4, 16)),
                                        (SEQUENCE,), (CONV,), 1.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_conv_numerics(case: str, tmp_path: Path, record_property) -> None:
    factory, shapes, targets, max_error_steps = CASES[case]
    torch.manual_seed(0)
    check_case(case, factory(), shapes, targets, tmp_path, record_property, max_error_steps=max_error_steps)
