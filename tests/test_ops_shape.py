"""Shape, reduction, padding and resize operators: numerics of the whole flow (see tests/numerics.py) on
channels-last (after a conv) and formatless values, verdicts with their exact reasons on both sides of each limit,
and the no-op rule for every shape operator alone in a partition.

Data-movement operators are paired with a compute operator, so the partition is not a lone no-op. Every operator
here either copies elements (0 steps of error possible) or requantizes once (<= 1 step).
"""

from __future__ import annotations

from pathlib import Path

import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)
import pytest
import torch
import torch.nn.functional as F
from conftest import entry_for
from executorch.exir import to_edge_transform_and_lower
from numerics import CALIBRATION_BATCHES, Fn, check_case, sample_inputs
from torch import nn

from neutron_backend.compile_spec import generate_neutron_compile_spec
from neutron_backend.partitioner import NeutronPartitioner
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
}

COVERED = {MEAN, SUM, AMAX, AMIN, SLICE, SELECT, SQUEEZE, UNSQUEEZE, PAD, REFLECT1D, REFLECT2D, NEAREST, BILINEAR}


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
