"""Convolution family: 1D (through the conv1d -> conv2d rewrite and as a rank-3 convolution), transposed, grouped,
depthwise with a channel multiplier, batchnorm folding and standalone batchnorm, 1D pooling; numerics of each
through the whole flow (tests/numerics.py), and verdicts with their exact reasons on both sides of every limit."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import entry_for, partition_edge, partition_model
from executorch.exir.lowered_backend_module import LoweredBackendModule
from numerics import Conv, check_case
from torch import nn

import neutron_backend.passes as passes
from neutron_backend import ops
from neutron_backend.ops.edge import edge as edge_op
from neutron_backend.passes import conv1d_to_conv2d
from neutron_backend.quantizer import NeutronQuantizer
from neutron_backend.quantizer.kinds import Weighted
from neutron_backend.quantizer.patterns import patterns
from neutron_backend.targets import get_target

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
    """Batchnorm statistics far from identity (identity statistics would make the fold trivial)."""
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
    # Five requantizing convs in a chain: an intermediate one-step difference may grow along it (measured: 1).
    "wav2letter_like": (lambda: _warmed(Wav2LetterLike(), (4, 12, 64)), ((1, 12, 64),), (CONV, RELU, MAX_POOL),
                        2.0),
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


# ---------------------------------------------------------------------------------------------------------------
# A 1D convolution that reaches the partitioner as one (rank-3 input): lowered as RESHAPE + CONV_2D + RESHAPE.


@pytest.fixture(name="without_conv1d_rewrite")
def _without_conv1d_rewrite(monkeypatch) -> None:
    """Quantizes as a quantizer without the conv1d -> conv2d rewrite would (the conv stays 1D into to_edge)."""
    every = passes.rewrites()
    monkeypatch.setattr(passes, "rewrites", lambda: tuple(m for m in every if m is not conv1d_to_conv2d))


@pytest.mark.parametrize("case", ["conv1d_relu", "conv1d_padding_stride", "conv1d_grouped", "conv_transpose1d",
                                  "wav2letter_like"])
def test_rank3_convolution_numerics(case: str, without_conv1d_rewrite, tmp_path: Path, record_property) -> None:
    factory, shapes, targets, max_error_steps = CASES[case]
    torch.manual_seed(0)
    lowered = check_case(case, factory(), shapes, targets, tmp_path, record_property, max_error_steps=max_error_steps)
    ranks = {len(node.meta["val"].shape) for node in _delegated_convolutions(lowered.edge)}
    assert ranks == {3}, f"expected rank-3 convolutions in the edge program, got ranks {ranks}"


def _delegated_convolutions(edge) -> list[torch.fx.Node]:
    """The convolution nodes inside the delegates of a lowered program (from each delegate's original program)."""
    return [node for module in edge.exported_program().graph_module.modules()
            if isinstance(module, LoweredBackendModule)
            for node in module.original_module.graph.nodes
            if node.op == "call_function" and node.target == edge_op(CONV)]


# ---------------------------------------------------------------------------------------------------------------
# Verdicts and their exact reasons, on both sides of every limit. The cases of one rule are branches of one model,
# quantized and partitioned once (each input feeds one branch; the n-th convolution in the report is case n).


class _Branches(nn.Module):
    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(modules)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(branch(x) for branch, x in zip(self.branches, inputs, strict=True))


# (id, module, input shape, reason or None for delegated); `{target}` in a reason is the target's name.
BoundaryCase = tuple[str, Callable[[], nn.Module], tuple[int, ...], str | None]

WEIGHT_SIZE = "(Neutron's weight-size limit on {target})"
BOUNDARY_CASES: dict[str, tuple[BoundaryCase, ...]] = {
    # Grouped convs count the input channels of one group: 9 * ceil(7280, 8) = 65520 fits, 9 * 7288 = 65592 does
    # not, although both convs have twice as many input channels in all.
    "grouped": (
        ("groups2-7280-per-group", lambda: nn.Conv2d(2 * 7280, 2, 3, groups=2), (1, 2 * 7280, 3, 3), None),
        ("groups2-7281-per-group", lambda: nn.Conv2d(2 * 7281, 2, 3, groups=2), (1, 2 * 7281, 3, 3),
         "kernel 3x3 x ceil(Cin per group=7281, 8) = 65592 > 65535 " + WEIGHT_SIZE),
    ),
    # A depthwise conv with a channel multiplier runs over its input repeated `multiplier` times.
    "depthwise_multiplier": (
        ("C3640-x2", lambda: nn.Conv2d(3640, 7280, 3, groups=3640), (1, 3640, 3, 3), None),
        ("C3641-x2", lambda: nn.Conv2d(3641, 7282, 3, groups=3641), (1, 3641, 3, 3),
         "kernel 3x3 x ceil(Cin x multiplier 2=7282, 8) = 65592 > 65535 " + WEIGHT_SIZE),
    ),
    "transposed": (
        ("stride2-kernel2", lambda: nn.ConvTranspose2d(8, 4, 2, stride=2), (1, 8, 4, 4), None),
        ("stride3-kernel3", lambda: nn.ConvTranspose2d(8, 4, 3, stride=3), (1, 8, 4, 4),
         "transposed convolution stride 3x3 exceeds Neutron's TRANSPOSE_CONV limit of 2 per axis"),
        ("stride1x3-kernel3", lambda: nn.ConvTranspose2d(8, 4, 3, stride=(1, 3)), (1, 8, 4, 4),
         "transposed convolution stride 1x3 exceeds Neutron's TRANSPOSE_CONV limit of 2 per axis"),
        ("stride2-kernel1", lambda: nn.ConvTranspose2d(8, 4, 1, stride=2), (1, 8, 4, 4),
         "transposed convolution stride 2x2 is larger than its kernel 1x1; Neutron's TRANSPOSE_CONV needs "
         "stride <= kernel per axis"),
        ("stride2-kernel2x1", lambda: nn.ConvTranspose2d(8, 4, (2, 1), stride=(2, 2)), (1, 8, 4, 4),
         "transposed convolution stride 2x2 is larger than its kernel 2x1; Neutron's TRANSPOSE_CONV needs "
         "stride <= kernel per axis"),
        ("padding1-kernel2", lambda: nn.ConvTranspose2d(8, 4, 2, stride=2, padding=1), (1, 8, 4, 4), None),
        ("padding2-kernel2", lambda: nn.ConvTranspose2d(8, 4, 2, stride=2, padding=2), (1, 8, 4, 4),
         "transposed convolution padding 2x2 is not smaller than its kernel 2x2; Neutron's TRANSPOSE_CONV needs "
         "padding < kernel per axis"),
        ("padding0x3-kernel3", lambda: nn.ConvTranspose2d(8, 4, 3, padding=(0, 3)), (1, 8, 4, 8),
         "transposed convolution padding 0x3 is not smaller than its kernel 3x3; Neutron's TRANSPOSE_CONV needs "
         "padding < kernel per axis"),
        ("dilation2", lambda: nn.ConvTranspose2d(8, 4, 3, dilation=2), (1, 8, 4, 4),
         "transposed convolution with dilation 2x2 is not supported; Neutron's TRANSPOSE_CONV has no dilation "
         "(use dilation=1)"),
        ("groups2", lambda: nn.ConvTranspose2d(8, 4, 3, groups=2), (1, 8, 4, 4),
         "transposed convolution with groups=2 is not supported; Neutron's TRANSPOSE_CONV needs groups=1"),
        ("Cin7280", lambda: nn.ConvTranspose2d(7280, 1, 3), (1, 7280, 2, 2), None),
        ("Cin7281", lambda: nn.ConvTranspose2d(7281, 1, 3), (1, 7281, 2, 2),
         "kernel 3x3 x ceil(Cin=7281, 8) = 65592 > 65535 " + WEIGHT_SIZE),
        ("kernel4097", lambda: nn.ConvTranspose2d(1, 1, (1, 4097)), (1, 1, 1, 2),
         "kernel 1x4097 exceeds Neutron's limit of 4096 per axis"),
    ),
    # Through the conv1d -> conv2d rewrite a 1D conv is a 2D conv with kernel 1 x k.
    "conv1d": (
        ("kernel4096", lambda: nn.Conv1d(1, 1, 4096), (1, 1, 4096), None),
        ("kernel4097", lambda: nn.Conv1d(1, 1, 4097), (1, 1, 4097),
         "kernel 1x4097 exceeds Neutron's limit of 4096 per axis"),
        ("Cin7280-kernel9", lambda: nn.Conv1d(7280, 1, 9), (1, 7280, 9), None),
        ("Cin7281-kernel9", lambda: nn.Conv1d(7281, 1, 9), (1, 7281, 9),
         "kernel 1x9 x ceil(Cin=7281, 8) = 65592 > 65535 " + WEIGHT_SIZE),
    ),
}


@functools.cache
def _boundary_report(rule: str, target: str):
    cases = BOUNDARY_CASES[rule]
    torch.manual_seed(0)
    model = _Branches([factory() for _, factory, _, _ in cases])
    inputs = tuple(torch.randn(shape) for _, _, shape, _ in cases)
    return partition_model(model, inputs, target=target)[0]


def _boundary_params(targets: tuple[str, ...]) -> list:
    return [pytest.param(rule, index, target, id=f"{rule}-{case[0]}-{target}")
            for rule, cases in BOUNDARY_CASES.items() for index, case in enumerate(cases) for target in targets]


@pytest.mark.parametrize(("rule", "index", "target"), _boundary_params(("imxrt700", "mcxn94x")))
def test_convolution_limits(rule: str, index: int, target: str) -> None:
    _, _, _, reason = BOUNDARY_CASES[rule][index]
    report = _boundary_report(rule, target)
    entry = entry_for(report, CONV, index)
    if reason is None:
        assert entry.delegated and entry.reason == "", f"{entry.name}: {entry.reason}"
    else:
        assert not entry.delegated, f"{entry.name} unexpectedly delegated"
        assert entry.reason == reason.format(target=target)


@pytest.mark.slow  # convert_pt2e's QAT conv+batchnorm folding takes about a minute
def test_qat_conv1d_with_batchnorm_reaches_the_partitioner_as_a_1d_conv_and_is_delegated() -> None:
    """QAT fuses conv1d + batchnorm after annotation (the weight becomes a computation), so the rewrite leaves the
    conv 1D; after convert_pt2e it is a rank-3 convolution with a constant weight, which Neutron runs."""
    from executorch.exir import to_edge
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU())
    example = (torch.randn(2, 4, 16),)
    prepared = prepare_qat_pt2e(torch.export.export(model.train(), example).module(),
                                NeutronQuantizer("imxrt700", is_qat=True))
    for _ in range(3):
        prepared(torch.randn(2, 4, 16))
    quantized = convert_pt2e(prepared)
    program = to_edge(torch.export.export(quantized, example)).exported_program()
    report = partition_edge(program)
    conv = entry_for(report, CONV)
    assert (conv.delegated, entry_for(report, RELU).delegated) == (True, True), str(report)
    (node,) = [n for n in program.graph.nodes if n.name == conv.name]
    assert len(node.meta["val"].shape) == 3


def test_weight_size_limit_rounds_input_channels_to_the_targets_num_macs() -> None:
    """65525 input channels round up to 65528 with 8 MACs (fits) and to 65536 with 16 (does not)."""
    report, program = partition_model(nn.Conv2d(65525, 1, 1), (torch.randn(1, 65525, 1, 1),))
    assert entry_for(report, CONV).delegated
    (node,) = [n for n in program.graph.nodes if n.op == "call_function" and n.target == edge_op(CONV)]
    sixteen_macs = dataclasses.replace(get_target("imxrt700"), name="sixteen-macs", num_macs=16)
    verdict = ops.lookup(node.target).check_target(node, SimpleNamespace(target=sixteen_macs))
    assert verdict.reason == ("kernel 1x1 x ceil(Cin=65525, 16) = 65536 > 65535 (Neutron's weight-size limit on "
                              "sixteen-macs)")


def test_rank3_convolution_reasons_name_1d_values(without_conv1d_rewrite) -> None:
    model = _Branches([nn.Conv1d(1, 1, 4097), nn.ConvTranspose1d(8, 4, 3, stride=3), nn.Conv1d(4, 4, 3)])
    report, _ = partition_model(model, (torch.randn(1, 1, 4097), torch.randn(1, 8, 4), torch.randn(1, 4, 8)))
    assert [entry_for(report, CONV, i).reason for i in range(3)] == [
        "kernel 4097 exceeds Neutron's limit of 4096 per axis",
        "transposed convolution stride 3 exceeds Neutron's TRANSPOSE_CONV limit of 2 per axis",
        "",
    ]


def test_3d_convolution_is_rejected(monkeypatch) -> None:
    # NeutronQuantizer has no pattern for conv3d; quantized as a conv would be, the partitioner names the rank.
    monkeypatch.setitem(patterns(), torch.ops.aten.conv3d.default, Weighted(per_channel=True))
    report, _ = partition_model(nn.Conv3d(2, 4, 3), (torch.randn(1, 2, 4, 4, 4),))
    assert entry_for(report, CONV).reason == ("3D convolution (input rank 5) is not supported; Neutron runs 1D "
                                              "(input rank 3) and 2D (input rank 4) convolutions")


def test_transposed_convolution_weights_must_be_per_channel_on_axis_1(monkeypatch) -> None:
    # Quantized like a forward conv (axis 0; Cin = Cout keeps the bias scale consistent).
    monkeypatch.setitem(patterns(), torch.ops.aten.conv_transpose2d.input, Weighted(per_channel=True))
    report, _ = partition_model(nn.ConvTranspose2d(8, 8, 3), (torch.randn(1, 8, 4, 4),))
    assert entry_for(report, CONV).reason == ("per-channel weight quantization must be on axis 1 (a transposed "
                                              "convolution's output channels), got axis 0")
