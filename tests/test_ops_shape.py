"""Shape, reduction, padding and resize operators: numerics of the whole flow (see tests/numerics.py) on
channels-last (after a conv) and formatless values, verdicts with their exact reasons on both sides of each limit,
and the no-op rule for every shape operator alone in a partition.

Data-movement operators are paired with a compute operator, so the partition is not a lone no-op. Every operator
here either copies elements (0 steps of error possible) or requantizes once (<= 1 step).
"""

from __future__ import annotations

import logging
from pathlib import Path

import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)
import pytest
import torch
import torch.nn.functional as F
from conftest import entry_for, partition_edge, partition_model
from executorch.exir import to_edge, to_edge_transform_and_lower
from numerics import CALIBRATION_BATCHES, Fn, HandQuantized, check_case, qdq, sample_inputs
from torch import nn
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

from neutron_backend.compile_spec import generate_neutron_compile_spec
from neutron_backend.delegation_options import CustomDelegationOptions
from neutron_backend.partitioner import NeutronPartitioner
from neutron_backend.quantizer import NeutronQuantizer
from neutron_backend.quantizer.calibration import quantize_model, random_batches
from neutron_backend.runtime import load_pte
from neutron_backend.verify import verify

CONV = "aten.convolution.default"
ADDMM = "aten.addmm.default"
ADD = "aten.add.Tensor"
CAT = "aten.cat.default"
MEAN = "aten.mean.dim"
SUM = "aten.sum.dim_IntList"
AMAX = "aten.amax.default"
AMIN = "aten.amin.default"
SLICE = "aten.slice_copy.Tensor"
SELECT = "aten.select_copy.int"
SQUEEZE = "aten.squeeze_copy.dims"
UNSQUEEZE = "aten.unsqueeze_copy.default"
VIEW = "aten.view_copy.default"
PAD = "aten.constant_pad_nd.default"
REFLECT1D = "aten.reflection_pad1d.default"
REFLECT2D = "aten.reflection_pad2d.default"
NEAREST = "aten.upsample_nearest2d.vec"
BILINEAR = "aten.upsample_bilinear2d.vec"
SOFTMAX = "aten._softmax.default"
REQUANTIZE = "quantized_decomposed.quantize_per_tensor.default"

IMAGE = (1, 3, 8, 8)
FEATURE_MAP = (1, 8, 6, 6)
NO_OP_REASON = ("its partition holds only no-op operators ({}), so a delegate call would do nothing; set "
                "CustomDelegationOptions(allow_no_op_partitions=True) to delegate it anyway")


class ConvThen(nn.Module):
    """A conv (so its output is a channels-last image inside the IR) followed by `fn`."""

    def __init__(self, fn, cin: int = 3, cout: int = 8, kernel: int = 3, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, **kwargs)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.conv(x))


class ConvCatConstant(nn.Module):
    """A conv whose output is concatenated with a constant (a learned feature map, say) along the channels."""

    def __init__(self, constant_first: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.register_buffer("constant", torch.randn((1, 8, *IMAGE[2:]), generator=torch.Generator().manual_seed(5)))
        self.constant_first = constant_first

    def forward(self, x):
        y = self.conv(x)
        return torch.cat([self.constant, y] if self.constant_first else [y, self.constant], dim=1)


class SoftmaxCat(nn.Module):
    """A softmax (fixed output qparams 1/256, -128) concatenated with a conv output: the cat's shared qparams need a
    requantization (dequantize -> quantize) of the softmax's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.other = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.cat([torch.softmax(self.conv(x), dim=1), self.other(x)], dim=1)


class ConvMeanLinear(nn.Module):
    """Global average pooling written as a mean over H and W (keepdim=False), then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.linear = nn.Linear(8, 10)

    def forward(self, x):
        return self.linear(torch.relu(self.conv(x)).mean((2, 3)))


class ConvFlattenLinear(nn.Module):
    """conv -> flatten(2) -> reshape -> linear: a chain of reshapes inside one partition."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.linear = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        return self.linear(self.conv(x).flatten(2).reshape(1, -1))


class LinearThen(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 12)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.linear(x))


def _add(fn):
    """x + y, then `fn`: the add makes the partition compute, its output is a formatless value."""
    return Fn(lambda x, y: fn(x + y))


# name -> (model factory, input shapes, edge targets that must be delegated, requantizing ops in the model).
# The allowed error is 1 output step per requantizing op (conv, linear, add, mean, sum, bilinear, softmax); data
# movement and max/min copy values and add none, so e.g. conv -> slice may be 1 step off and a cat of inputs 0.
CASES = {
    # Reductions: mean and sum requantize once; max and min pick an input value.
    "mean_global_keepdim_false_then_linear": (ConvMeanLinear, (IMAGE,), (CONV, MEAN, ADDMM), 3),
    "sum_channels_formatless": (lambda: _add(lambda v: v.sum(1)), ((1, 3, 6, 6),) * 2, (ADD, SUM), 2),
    "sum_hw_keepdim_channels_last": (lambda: ConvThen(lambda v: v.sum((2, 3), keepdim=True), cout=8, kernel=5,
                                                      padding=1),
                                     ((1, 3, 4, 4),), (CONV, SUM), 2),
    "sum_channels_channels_last": (lambda: ConvThen(lambda v: v.sum(1), cout=2), (IMAGE,), (CONV, SUM), 2),
    "amax_hw_keepdim_channels_last": (lambda: ConvThen(lambda v: v.amax((2, 3), keepdim=True)), (IMAGE,),
                                      (CONV, AMAX), 1),
    "amax_width_channels_last": (lambda: ConvThen(lambda v: v.amax(-1)), (IMAGE,), (CONV, AMAX), 1),
    "amin_channels_channels_last": (lambda: ConvThen(lambda v: v.amin(1, keepdim=True)), (IMAGE,), (CONV, AMIN),
                                    1),
    "amin_last_formatless": (lambda: _add(lambda v: v.amin(-1)), ((2, 5, 7),) * 2, (ADD, AMIN), 1),
    # Slices and selects keep the input's layout (SLICE with begin/size in IR axis order).
    "slice_channels_channels_last": (lambda: ConvThen(lambda v: v[:, 2:6]), (IMAGE,), (CONV, SLICE), 1),
    "slice_width_channels_last": (lambda: ConvThen(lambda v: v[..., 1:-1]), (IMAGE,), (CONV, SLICE), 1),
    "slice_height_negative_start": (lambda: ConvThen(lambda v: v[:, :, -4:]), (IMAGE,), (CONV, SLICE), 1),
    "narrow_formatless": (lambda: _add(lambda v: v.narrow(-1, 1, 3)), ((1, 4, 6),) * 2, (ADD, SLICE), 1),
    "slice_2d": (lambda: LinearThen(lambda v: v[:, 3:9]), ((2, 16),), (ADDMM, SLICE), 1),
    "select_channel_channels_last": (lambda: ConvThen(lambda v: v[:, 3]), (IMAGE,), (CONV, SELECT), 1),
    "select_height_channels_last": (lambda: ConvThen(lambda v: v[:, :, -2]), (IMAGE,), (CONV, SELECT), 1),
    # split / chunk become slices before quantization (passes/split_to_slices.py).
    "split_then_add": (lambda: ConvThen(lambda v: torch.add(*v.split(4, dim=1))), (IMAGE,), (CONV, SLICE, ADD),
                       2),
    "chunk_then_cat_swapped": (lambda: ConvThen(lambda v: torch.cat(v.chunk(2, dim=1)[::-1], dim=1), cout=16),
                               (IMAGE,), (CONV, SLICE, CAT), 1),
    "split_sizes_width": (lambda: ConvThen(lambda v: v.split([2, 4], dim=3)[1]), (IMAGE,), (CONV, SLICE), 1),
    # Reshapes: squeeze/unsqueeze/flatten are RESHAPEs in torch element order.
    "squeeze_height_channels_last": (lambda: ConvThen(lambda v: v.squeeze(2)), ((1, 3, 3, 8),), (CONV, SQUEEZE),
                                     1),
    "unsqueeze_after_linear": (lambda: LinearThen(lambda v: v.unsqueeze(1)), ((1, 16),), (ADDMM, UNSQUEEZE), 1),
    "flatten_reshape_chain": (ConvFlattenLinear, ((1, 3, 4, 4),), (CONV, VIEW, ADDMM), 2),
    # Padding: PAD when the value quantizes to the zero point, PADV2 otherwise; MIRROR_PAD for reflection.
    "pad_zero_hw_channels_last": (lambda: ConvThen(lambda v: F.pad(v, (1, 2, 0, 1))), (IMAGE,), (CONV, PAD), 1),
    "pad_value_hw_channels_last": (lambda: ConvThen(lambda v: F.pad(v, (2, 0, 1, 1), value=0.5)), (IMAGE,),
                                   (CONV, PAD), 1),
    "pad_value_channels": (lambda: ConvThen(lambda v: F.pad(v, (0, 0, 0, 0, 1, 3), value=-0.25)), (IMAGE,),
                           (CONV, PAD), 1),
    "pad_value_last_formatless": (lambda: _add(lambda v: F.pad(v, (1, 1), value=0.3)), ((1, 4, 6),) * 2,
                                  (ADD, PAD), 1),
    "reflection_pad2d_channels_last": (lambda: ConvThen(nn.ReflectionPad2d((1, 2, 0, 3))), (IMAGE,),
                                       (CONV, REFLECT2D), 1),
    "reflection_pad1d_formatless": (lambda: _add(nn.ReflectionPad1d((2, 1))), ((1, 4, 6),) * 2, (ADD, REFLECT1D),
                                    1),
    # Resizing: nearest copies values; bilinear requantizes once.
    "nearest_x2": (lambda: ConvThen(nn.Upsample(scale_factor=2)), (IMAGE,), (CONV, NEAREST), 1),
    "nearest_size_x2_x4": (lambda: ConvThen(lambda v: F.interpolate(v, size=(12, 24))), (IMAGE,),
                           (CONV, NEAREST), 1),
    "nearest_formatless_input": (lambda: _add(nn.Upsample(scale_factor=(8, 1))), ((1, 2, 3, 5),) * 2,
                                 (ADD, NEAREST), 1),
    "bilinear_x2": (lambda: ConvThen(nn.Upsample(scale_factor=2, mode="bilinear")), (IMAGE,), (CONV, BILINEAR),
                    2),
    "bilinear_x4_x1": (lambda: ConvThen(lambda v: F.interpolate(v, scale_factor=(4, 1), mode="bilinear")),
                       (IMAGE,), (CONV, BILINEAR), 2),
    "bilinear_align_corners_x2": (lambda: ConvThen(lambda v: F.interpolate(v, size=(11, 11), mode="bilinear",
                                                                           align_corners=True)),
                                  ((1, 3, 8, 8),), (CONV, BILINEAR), 2),
    # Softmax over the channel dim or the last dim, and cat along any dim, on both kinds of value.
    "softmax_channels_formatless": (lambda: _add(lambda v: torch.softmax(v, 1)), ((1, 5, 3, 4),) * 2,
                                    (ADD, SOFTMAX), 2),
    "softmax_last_channels_last": (lambda: ConvThen(lambda v: torch.softmax(v, -1)), (IMAGE,), (CONV, SOFTMAX),
                                   2),
    "softmax_last_formatless": (lambda: _add(lambda v: torch.softmax(v, -1)), ((1, 5, 3, 4),) * 2,
                                (ADD, SOFTMAX), 2),
    "cat_width_formatless": (lambda: Fn(lambda x, y: torch.cat([x, y], dim=3)), ((1, 3, 4, 8),) * 2, (CAT,), 0),
    "cat_height_formatless": (lambda: Fn(lambda x, y: torch.cat([x, y], dim=-2)), ((1, 3, 4, 5),) * 2, (CAT,),
                              0),
    "cat_height_channels_last": (lambda: ConvThen(lambda v: torch.cat([v, v[:, :, :2]], dim=2)), (IMAGE,),
                                 (CONV, SLICE, CAT), 1),
    "cat_width_channels_last": (lambda: ConvThen(lambda v: torch.cat([v[..., 1:], v], dim=3)), (IMAGE,),
                                (CONV, SLICE, CAT), 1),
    # conv -> softmax -> requantization -> cat: three requantizing operators on the softmax's path.
    "softmax_requantized_into_cat": (SoftmaxCat, (IMAGE,), (CONV, SOFTMAX, REQUANTIZE, CAT), 3),
    "cat_constant_last": (lambda: ConvCatConstant(constant_first=False), (IMAGE,), (CONV, CAT), 1),
    "cat_constant_first": (lambda: ConvCatConstant(constant_first=True), (IMAGE,), (CONV, CAT), 1),
}

COVERED = {MEAN, SUM, AMAX, AMIN, SLICE, SELECT, SQUEEZE, UNSQUEEZE, PAD, REFLECT1D, REFLECT2D, NEAREST, BILINEAR,
           REQUANTIZE}


@pytest.mark.parametrize("case", list(CASES))
def test_operator_numerics(case: str, tmp_path: Path, record_property) -> None:
    factory, shapes, targets, requantizing_ops = CASES[case]
    torch.manual_seed(0)
    check_case(case, factory(), shapes, targets, tmp_path, record_property, max_error_steps=float(requantizing_ops))


def _lower_and_verify(model: nn.Module, shapes: tuple[tuple[int, ...], ...], directory: Path, **spec_kwargs):
    """Quantizes and lowers `model` with a compile spec built from `spec_kwargs`; returns (report, verify result)."""
    torch.manual_seed(0)
    example_inputs = tuple(torch.randn(shape) for shape in shapes)
    quantized = quantize_model(model.eval(), example_inputs,
                               calibration_batches=random_batches(example_inputs, CALIBRATION_BATCHES), progress=False)
    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700", **spec_kwargs))
    edge = to_edge_transform_and_lower(torch.export.export(quantized, example_inputs), partitioner=[partitioner])
    pte = directory / "model.pte"
    pte.write_bytes(edge.to_executorch().buffer)
    return partitioner.report, verify(load_pte(pte), quantized, sample_inputs(example_inputs))


@pytest.mark.parametrize("dim", [1, -1])
def test_softmax_after_a_cpu_conv_follows_its_dim_not_the_partition_format(dim: int, tmp_path: Path) -> None:
    """The conv (left on the CPU) makes the value channels-first in the whole graph, but inside the softmax's
    partition nothing says so: the IR layout must follow from the softmax dim alone."""
    report, result = _lower_and_verify(ConvThen(lambda v: torch.softmax(v, dim)), (IMAGE,), tmp_path,
                                       operators_not_to_delegate=["aten::convolution"])
    assert entry_for(report, SOFTMAX).delegated and not entry_for(report, CONV).delegated, str(report)
    assert result.max_error_steps <= 1.0, str(result)


@pytest.mark.parametrize("dim", [1, 3])
def test_cat_after_a_cpu_conv_maps_its_dim_in_the_layout_it_picks(dim: int, tmp_path: Path) -> None:
    """As above for cat: whatever layout the partition picks, the torch dim maps to the matching IR axis."""
    report, result = _lower_and_verify(ConvThen(lambda v: torch.cat([v, v], dim), kernel=1), (IMAGE,), tmp_path,
                                       operators_not_to_delegate=["aten::convolution"])
    assert entry_for(report, CAT).delegated and not entry_for(report, CONV).delegated, str(report)
    assert result.max_error_steps == 0.0, str(result)


# -- verdicts: the no-op rule and each limit, on both sides, with its exact reason ----------------------------


def _report(fn, *shapes: tuple[int, ...], **kwargs):
    report, _ = partition_model(Fn(fn), tuple(torch.randn(shape) for shape in shapes), **kwargs)
    return report


def _assert_verdict(report, target: str, reason: str | None) -> None:
    """`reason` None: the node is delegated; else it is on the CPU with exactly `reason`."""
    entry = entry_for(report, target)
    if reason is None:
        assert entry.delegated and entry.reason == "", f"{entry.name}: {entry.reason}\n{report}"
    else:
        assert not entry.delegated, f"{entry.name} unexpectedly delegated\n{report}"
        assert entry.reason == reason


LONE_NO_OPS = {
    SLICE: (lambda x: x[:, 1:3], (1, 4, 6, 6)),
    SELECT: (lambda x: x[:, 1], (1, 4, 6, 6)),
    SQUEEZE: (lambda x: x.squeeze(2), (1, 4, 1, 6)),
    UNSQUEEZE: (lambda x: x.unsqueeze(0), (4, 6)),
    PAD: (lambda x: F.pad(x, (1, 1), value=0.5), (1, 4, 6)),
    SUM: (lambda x: x.sum(2, keepdim=True), (1, 4, 1, 6)),
    AMAX: (lambda x: x.amax((0, 2)), (1, 4, 1, 6)),
    AMIN: (lambda x: x.amin(-1), (1, 4, 6, 1)),
    NEAREST: (lambda x: F.interpolate(x, scale_factor=1.0), (1, 4, 6, 6)),
}


@pytest.mark.parametrize("target", list(LONE_NO_OPS))
def test_lone_no_op_is_not_delegated(target: str) -> None:
    fn, shape = LONE_NO_OPS[target]
    report = _report(fn, shape)
    _assert_verdict(report, target, NO_OP_REASON.format(target))
    assert report.num_partitions == 0
    allowed = _report(fn, shape, delegation_options=CustomDelegationOptions(allow_no_op_partitions=True))
    _assert_verdict(allowed, target, None)


def test_requantization_keeps_softmax_and_cat_in_one_partition_but_alone_stays_on_the_cpu() -> None:
    report, _ = partition_model(SoftmaxCat(), (torch.randn(IMAGE),))
    assert report.num_partitions == 1, str(report)
    # The softmax's quantize, then the requantization's dequantize -> quantize, all inside the partition.
    quantizes = [e for e in report.nodes if e.target == REQUANTIZE]
    assert all(e.delegated for e in quantizes[1:]), str(report)
    # With the softmax on the CPU the requantization joins the cat's partition; with the cat too, it is alone.
    alone, _ = partition_model(SoftmaxCat(), (torch.randn(IMAGE),),
                               operators_not_to_delegate=["aten::_softmax", "aten::cat"])
    requantization = next(e for e in alone.nodes if e.target == REQUANTIZE and e.reason.startswith("its partition"))
    assert requantization.reason == NO_OP_REASON.format(REQUANTIZE)
    assert alone.num_partitions == 2, str(alone)


def test_lone_reflection_pad_runs_on_the_cpu(tmp_path: Path) -> None:
    """Alone it is a no-op partition: not kept whole for Neutron, it runs on the CPU, exactly."""
    report, result = _lower_and_verify(nn.ReflectionPad2d((1, 2, 0, 1)), ((1, 3, 6, 6),), tmp_path)
    assert report.num_partitions == 0, str(report)
    assert result.max_error_steps == 0.0, str(result)


def test_slice_step():
    report = _report(lambda x, y: (x + y)[..., ::2], FEATURE_MAP, FEATURE_MAP)
    _assert_verdict(report, SLICE, "slice step 2 is not supported; only step 1 (contiguous slices)")
    _assert_verdict(_report(lambda x, y: (x + y)[..., ::1], FEATURE_MAP, FEATURE_MAP), ADD, None)


def test_empty_slice():
    _assert_verdict(_report(lambda x, y: (x + y)[..., 3:3], FEATURE_MAP, FEATURE_MAP), SLICE,
                    "'aten_slice_copy_tensor' has no elements (shape [1, 8, 6, 0]); there is nothing for Neutron to "
                    "compute")


NEGATIVE_PAD_REASON = "negative padding [-1, 2] (cropping) is not supported; slice the tensor instead"


@pytest.mark.parametrize(("pad", "reason"), [((1, 0), None), ((-1, 2), NEGATIVE_PAD_REASON)])
def test_constant_padding_sign(pad, reason):
    _assert_verdict(_report(lambda x, y: F.pad(x + y, pad), (1, 4, 6), (1, 4, 6)), PAD, reason)


def test_reflection_padding_sign(tmp_path: Path, caplog) -> None:
    """A reflection pad is kept whole only where Neutron takes it; a rejected one is decomposed for the CPU, and
    the warning says why."""
    accepted, _ = _lower_and_verify(_add(lambda v: F.pad(v, (1, 0), mode="reflect")), ((1, 4, 6),) * 2, tmp_path)
    _assert_verdict(accepted, REFLECT1D, None)
    with caplog.at_level(logging.WARNING, logger="neutron_backend.partitioner"):
        rejected, result = _lower_and_verify(_add(lambda v: F.pad(v, (-1, 2), mode="reflect")), ((1, 4, 6),) * 2,
                                             tmp_path)
    assert REFLECT1D not in {entry.target for entry in rejected.nodes}, str(rejected)
    assert any(NEGATIVE_PAD_REASON in record.getMessage() and REFLECT1D in record.getMessage()
               for record in caplog.records), caplog.text
    assert result.max_error_steps <= 1.0, str(result)


def _hand_report(fn, shape, scale: float = 0.01):
    """x -> int8 (0.01, 0) -> `fn` -> int8 (`scale`, 0) -> amax (compute, so the partition is not a lone no-op).

    NeutronQuantizer never produces these qparams (it shares them, and its shared observer sees a pad value)."""
    model = HandQuantized(lambda v: qdq(fn(v), scale, 0).amax(-1), (0.01, 0), (scale, 0))
    return partition_edge(to_edge(torch.export.export(model, (torch.randn(shape),))).exported_program())


# Representable with (0.01, 0): [-1.28, 1.27].
@pytest.mark.parametrize(("value", "reason"), [
    (1.27, None),
    (-1.28, None),
    (1.29, "pad value 1.29 is outside [-1.28, 1.27], the range representable with the input's qparams that the "
           "padded output shares"),
    (-1.3, "pad value -1.3 is outside [-1.28, 1.27], the range representable with the input's qparams that the "
           "padded output shares"),
])
def test_pad_value_must_be_representable(value, reason):
    _assert_verdict(_hand_report(lambda x: F.pad(x, (1, 1), value=value), (1, 4, 6)), PAD, reason)


@pytest.mark.parametrize(("target", "fn", "what"), [
    (SLICE, lambda x: x[:, 1:3], "slice_copy"),
    (PAD, lambda x: F.pad(x, (1, 1)), "constant_pad_nd"),
    (AMAX, lambda x: x.amax(1, keepdim=True), "amax"),
    (NEAREST, lambda x: F.interpolate(x, scale_factor=2.0), "upsample_nearest2d"),
])
def test_data_movement_needs_shared_qparams(target, fn, what):
    """These copy int8 values unchanged, so their output must be quantized like their input."""
    _assert_verdict(_hand_report(fn, (1, 4, 3, 3)), target, None)
    _assert_verdict(_hand_report(fn, (1, 4, 3, 3), scale=0.02), target,
                    "input and output are quantized differently (scale 0.01, zero point 0 vs scale 0.02, zero point "
                    f"0); {what} keeps its input's qparams, so both must be equal (NeutronQuantizer shares them)")


SCALE_REASON = "scale {} along {} ({} -> {}, {}); Neutron resizes by 1, 2, 4, 8 per axis"


@pytest.mark.parametrize(("target", "fn", "shape", "reason"), [
    (NEAREST, lambda x: F.interpolate(x, scale_factor=8.0), (1, 2, 3, 3), None),
    (NEAREST, lambda x: F.interpolate(x, scale_factor=(1.0, 4.0)), (1, 2, 3, 3), None),
    (NEAREST, lambda x: F.interpolate(x, scale_factor=3.0), (1, 2, 3, 3),
     SCALE_REASON.format(3, "H", 3, 9, "out / in")),
    (NEAREST, lambda x: F.interpolate(x, size=(6, 48)), (1, 2, 3, 3), SCALE_REASON.format(16, "W", 3, 48, "out / in")),
    (BILINEAR, lambda x: F.interpolate(x, size=(6, 5), mode="bilinear"), (1, 2, 3, 5), None),
    (BILINEAR, lambda x: F.interpolate(x, size=(9, 10), mode="bilinear"), (1, 2, 6, 5),
     SCALE_REASON.format(1.5, "H", 6, 9, "out / in")),
    (BILINEAR, lambda x: F.interpolate(x, size=(15, 8), mode="bilinear", align_corners=True), (1, 2, 8, 8), None),
    (BILINEAR, lambda x: F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True), (1, 2, 8, 8),
     SCALE_REASON.format("2.14286", "H", 8, 16, "(out - 1) / (in - 1) with align_corners")),
    (BILINEAR, lambda x: F.interpolate(x, size=(2, 4), mode="bilinear", align_corners=True), (1, 2, 1, 2),
     "align_corners=True with an input of size 1x2: a size-1 axis has no corners to align; use align_corners=False"),
    # PyTorch samples with the given factor, not out / in: 2.2 on a 2-pixel axis gives 4 pixels placed unlike x2.
    (NEAREST, lambda x: F.interpolate(x, scale_factor=2.2), (1, 2, 2, 2),
     "scale_factor 2.2 along H does not equal output/input size 4/2; PyTorch then samples with step 1/2.2, which "
     "the resize kernel cannot express: pass size= or recompute_scale_factor=True"),
    (NEAREST, lambda x: F.interpolate(x, scale_factor=2.2, recompute_scale_factor=True), (1, 2, 2, 2), None),
], ids=["nearest_x8", "nearest_x1_x4", "nearest_x3", "nearest_x16", "bilinear_x2_x1", "bilinear_x1.5",
        "bilinear_align_corners_x2", "bilinear_align_corners_x2.14", "bilinear_align_corners_size1",
        "scale_factor_unlike_sizes", "scale_factor_recomputed"])
def test_resize_limits(target, fn, shape, reason):
    _assert_verdict(_report(fn, shape), target, reason)


def test_resize_with_a_dynamic_batch_stays_on_the_cpu():
    from torch.export import Dim

    batch = Dim("batch", min=2, max=4)
    model = nn.Upsample(scale_factor=2.0).eval()
    x = torch.randn(2, 4, 6, 6)
    prepared = prepare_pt2e(torch.export.export(model, (x,), dynamic_shapes=({0: batch},)).module(),
                            NeutronQuantizer("imxrt700"))
    prepared(x)
    quantized = convert_pt2e(prepared)
    edge = to_edge(torch.export.export(quantized, (x,), dynamic_shapes=({0: batch},))).exported_program()
    dequantize = next(n for n in edge.graph.nodes if n.op == "call_function" and "dequantize" in str(n.target))
    shape = ", ".join(str(d) for d in dequantize.meta["val"].shape)
    assert not shape.startswith("2"), shape  # the batch dim is a symbol
    report = partition_edge(edge)
    _assert_verdict(report, NEAREST, f"'{dequantize.name}' has a dynamic shape [{shape}]; Neutron runs static shapes "
                                     "only (export this part of the model without dynamic_shapes)")


@pytest.mark.parametrize(("dim", "shape", "reason"), [
    (1, (1, 8, 6, 6), None),
    (3, (1, 8, 6, 6), None),
    (2, (1, 8, 6, 6), "softmax over dim 2 of a tensor of shape [1, 8, 6, 6]; Neutron computes softmax over the "
                      "channel dim (1) or the last dim (3) only"),
    (0, (2, 8, 6), "softmax over dim 0 of a tensor of shape [2, 8, 6]; Neutron computes softmax over the channel "
                   "dim (1) or the last dim (2) only"),
])
def test_softmax_dims(dim, shape, reason):
    _assert_verdict(_report(lambda x: torch.softmax(x, dim), shape), SOFTMAX, reason)


@pytest.mark.parametrize(("name", "target", "fn", "shape"), [
    ("aten::pad", PAD, lambda x, y: F.pad(x + y, (1, 1)), (1, 4, 6)),
    ("aten::slice", SLICE, lambda x, y: (x + y)[:, 1:3], (1, 4, 6)),
    ("aten::narrow", SLICE, lambda x, y: (x + y).narrow(1, 1, 2), (1, 4, 6)),
    ("aten::select", SELECT, lambda x, y: (x + y)[:, 1], (1, 4, 6)),
])
def test_operators_not_to_delegate_by_the_name_the_user_wrote(name, target, fn, shape):
    report = _report(fn, shape, shape, operators_not_to_delegate=[name])
    _assert_verdict(report, target, f"excluded by operators_not_to_delegate ('{name}')")
    _assert_verdict(report, ADD, None)
