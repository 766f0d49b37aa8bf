"""NeutronPartitioner: per-operator verdicts on both sides of every limit, with the exact reason; delegation
options; partition-level rules; the report on CifarNet.

Most tests quantize a tiny real model with NeutronQuantizer and partition its edge program. Where the quantizer
cannot produce the graph a rule is about (qparams it never emits, addmm with alpha/beta), the model writes its
quantize/dequantize nodes by hand (`_ExplicitQDQ`), which still goes through torch.export, to_edge and the real
partitioner.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from conftest import entry_for, partition_edge, partition_model, quantized_edge
from numerics import HandQuantized, qdq
from torch import nn

from neutron_backend.delegation_options import CustomDelegationOptions
from neutron_backend.models import get_model

qd = torch.ops.quantized_decomposed

CONV = "aten.convolution.default"
ADDMM = "aten.addmm.default"
MM = "aten.mm.default"
RELU = "aten.relu.default"
HARDTANH = "aten.hardtanh.default"
CLAMP = "aten.clamp.default"
ADD = "aten.add.Tensor"
AVG_POOL = "aten.avg_pool2d.default"
ADAPTIVE_POOL = "aten._adaptive_avg_pool2d.default"
MAX_POOL = "aten.max_pool2d_with_indices.default"
MEAN = "aten.mean.dim"
VIEW = "aten.view_copy.default"
CAT = "aten.cat.default"
SOFTMAX = "aten._softmax.default"
QDQ_PREFIX = "quantized_decomposed."

NO_OP_REASON = ("its partition holds only no-op operators ({}), so a delegate call would do nothing; set "
                "CustomDelegationOptions(allow_no_op_partitions=True) to delegate it anyway")


class _Fn(nn.Module):
    """A parameter-free model computing `fn(*inputs)`."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.fn(*inputs)


def _inputs(*shapes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=generator) for shape in shapes)


def _run_fn(fn, *shapes: tuple[int, ...], **kwargs):
    """Report of `fn` over inputs of `shapes`, quantized and partitioned."""
    report, _ = partition_model(_Fn(fn), _inputs(*shapes), **kwargs)
    return report


def _run(model: nn.Module, *shapes: tuple[int, ...], **kwargs):
    report, _ = partition_model(model, _inputs(*shapes), **kwargs)
    return report


def _assert_delegated(report, target: str, partition: int = 0, index: int = 0) -> None:
    entry = entry_for(report, target, index)
    assert entry.delegated, f"{entry.name}: {entry.reason}\n{report}"
    assert entry.partition == partition
    assert entry.reason == ""


def _assert_rejected(report, target: str, reason: str, index: int = 0) -> None:
    """The node is on the CPU with exactly `reason`, and nothing in its cluster is delegated."""
    entry = entry_for(report, target, index)
    assert not entry.delegated, f"{entry.name} unexpectedly delegated\n{report}"
    assert entry.partition is None
    assert entry.reason == reason


def _edge(model: nn.Module, inputs: tuple[torch.Tensor, ...]):
    from executorch.exir import to_edge

    return to_edge(torch.export.export(model.eval(), inputs)).exported_program()


class _ExplicitAddmm(nn.Module):
    """torch.addmm(bias, x, weight.t(), beta=..., alpha=...) over int8 weights and an int32 bias, hand-quantized."""

    def __init__(self, beta: float = 1, alpha: float = 1) -> None:
        super().__init__()
        self.beta, self.alpha = beta, alpha
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("weight", torch.randint(-127, 128, (4, 8), generator=generator, dtype=torch.int8))
        self.register_buffer("bias", torch.randint(-100, 100, (4,), generator=generator, dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = qd.dequantize_per_tensor(self.weight, 0.01, 0, -127, 127, torch.int8)
        bias = qd.dequantize_per_tensor(self.bias, 0.0002, 0, -(2**31), 2**31 - 1, torch.int32)
        y = torch.addmm(bias, qdq(x, 0.02, 0), weight.t(), beta=self.beta, alpha=self.alpha)
        return qdq(y, 0.05, 3)


def _conv(cin: int, cout: int, kernel, **kwargs) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, **kwargs))


@dataclass(frozen=True)
class Case:
    """One branch of a multi-branch model: `fn` over an input of `shape` produces a `target` node that is
    delegated (`reason` None) or rejected with exactly `reason`."""

    id: str
    fn: Callable[..., torch.Tensor]
    shape: tuple[int, ...]
    target: str
    reason: str | None = None


class _Branches(nn.Module):
    """Independent branches, one per input: output i is fns[i](input i). Batching the cases of one rule into
    one model quantizes and lowers once instead of once per case."""

    def __init__(self, fns) -> None:
        super().__init__()
        self.branches = nn.ModuleList(fn if isinstance(fn, nn.Module) else _Fn(fn) for fn in fns)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(branch(x) for branch, x in zip(self.branches, inputs, strict=True))


@functools.cache
def _cases_report(cases: tuple[Case, ...], target: str = "imxrt700", hand_quantized: bool = False):
    """The report of all `cases` as branches of one model (cached: each parametrized case reads its own entry).

    `hand_quantized`: the case functions write their own quantize/dequantize nodes (no NeutronQuantizer)."""
    model = _Branches([case.fn for case in cases])
    inputs = _inputs(*(case.shape for case in cases))
    if hand_quantized:
        return partition_edge(_edge(model, inputs), target)
    return partition_model(model, inputs, target=target)[0]


def _check_case(cases: tuple[Case, ...], case: Case, **kwargs) -> None:
    report = _cases_report(cases, **kwargs)
    index = sum(1 for other in cases[: cases.index(case)] if other.target == case.target)
    entry = entry_for(report, case.target, index)
    if case.reason is None:
        assert entry.delegated and entry.partition is not None, f"{entry.name}: {entry.reason}\n{report}"
        assert entry.reason == ""
    else:
        assert not entry.delegated, f"{entry.name} unexpectedly delegated\n{report}"
        assert entry.partition is None
        assert entry.reason == case.reason


def _ids(cases: tuple[Case, ...]) -> list[str]:
    return [case.id for case in cases]


# -- convolution ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conv_relu_edge():
    """Quantized edge program of Conv2d(8, 8, 3, padding=1) + ReLU on 1x8x8x8; copy it before partitioning."""
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
    return quantized_edge(model, _inputs((1, 8, 8, 8)))


def test_conv2d_with_fused_relu_is_delegated(conv_relu_edge):
    report = partition_edge(copy.deepcopy(conv_relu_edge))
    _assert_delegated(report, CONV)
    _assert_delegated(report, RELU)
    assert report.num_partitions == 1
    # Only the model's input quantize and output dequantize stay on the CPU.
    assert [(e.target, e.reason) for e in report.rejected()] == [
        ("quantized_decomposed.quantize_per_tensor.default", "quantize/dequantize at a CPU boundary"),
        ("quantized_decomposed.dequantize_per_tensor.default", "quantize/dequantize at a CPU boundary"),
    ]
    assert entry_for(report, CONV).macs == 8 * 8 * 8 * (8 * 3 * 3)


def test_depthwise_conv_is_delegated():
    report = _run(_conv(8, 8, 3, padding=1, groups=8), (1, 8, 8, 8))
    _assert_delegated(report, CONV)


def test_grouped_conv_is_delegated():
    # Lowered as one conv per group (tests/test_ops_conv.py has its numerics and limits).
    report = _run(_conv(8, 8, 3, padding=1, groups=2), (1, 8, 8, 8))
    _assert_delegated(report, CONV)


def _weight_size_case(cin: int, kernel: int, size: int) -> Case:
    reason = None
    if size > 65535:
        reason = f"kernel {kernel}x{kernel} x ceil(Cin={cin}, 8) = {size} > 65535 (Neutron's weight-size limit on {{}})"
    return Case(f"{kernel}x{kernel}-Cin{cin}-{size}", _conv(cin, 1, kernel), (1, cin, kernel, kernel), CONV, reason)


# kH * kW * ceil_to(Cin, 8) <= 65535 (num_macs = 8 on both targets). The product is a multiple of 8, so the
# largest reachable value is 65528 = 8 * 8191; 8191 is prime, so only a 1x1 kernel with ceil_to(Cin, 8) = 65528
# reaches it (Cin in 65521..65528). The next multiple of 8 is 65536 (Cin = 65529). With a 3x3 kernel:
# 9 * 7280 = 65520 <= 65535 < 9 * 7288 = 65592 (Cin = 7281).
WEIGHT_SIZE_CASES = (
    _weight_size_case(65521, 1, 65528),
    _weight_size_case(65529, 1, 65536),
    _weight_size_case(7280, 3, 65520),
    _weight_size_case(7281, 3, 65592),
)


@pytest.mark.parametrize("target", ["imxrt700", "mcxn94x"])
@pytest.mark.parametrize("case", WEIGHT_SIZE_CASES, ids=_ids(WEIGHT_SIZE_CASES))
def test_conv_weight_size_limit(target, case):
    expected = case if case.reason is None else dataclasses.replace(case, reason=case.reason.format(target))
    report = _cases_report(WEIGHT_SIZE_CASES, target=target)
    entry = entry_for(report, CONV, WEIGHT_SIZE_CASES.index(case))
    assert (entry.delegated, entry.reason) == (expected.reason is None, expected.reason or "")


# One input channel keeps kH * ceil_to(1, 8) = 8 * 4097 under the weight-size limit, so each case hits only the
# kernel/stride/dilation limit.
KERNEL_STRIDE_DILATION_CASES = (
    Case("kernel4096", nn.Conv2d(1, 1, (4096, 1)), (1, 1, 4096, 1), CONV),
    Case("kernel4097", nn.Conv2d(1, 1, (4097, 1)), (1, 1, 4097, 1), CONV,
         "kernel 4097x1 exceeds Neutron's limit of 4096 per axis"),
    Case("stride4096", nn.Conv2d(1, 1, 1, stride=(4096, 1)), (1, 1, 4097, 1), CONV),
    Case("stride4097", nn.Conv2d(1, 1, 1, stride=(4097, 1)), (1, 1, 4098, 1), CONV,
         "stride 4097x1 exceeds Neutron's limit of 4096 per axis"),
    Case("dilation4096", nn.Conv2d(1, 1, (2, 1), dilation=(4096, 1)), (1, 1, 4097, 1), CONV),
    Case("dilation4097", nn.Conv2d(1, 1, (2, 1), dilation=(4097, 1)), (1, 1, 4098, 1), CONV,
         "dilation 4097x1 exceeds Neutron's limit of 4096 per axis"),
)


@pytest.mark.parametrize("case", KERNEL_STRIDE_DILATION_CASES, ids=_ids(KERNEL_STRIDE_DILATION_CASES))
def test_conv_kernel_stride_dilation_limit(case):
    _check_case(KERNEL_STRIDE_DILATION_CASES, case)


# -- linear ---------------------------------------------------------------------------------------------------


def test_linear_with_bias_is_delegated_as_addmm():
    report = _run(nn.Linear(16, 4), (1, 16))
    _assert_delegated(report, ADDMM)
    assert entry_for(report, ADDMM).macs == 16 * 4


def test_linear_without_bias_is_delegated_as_mm():
    report = _run(nn.Linear(16, 4, bias=False), (1, 16))
    _assert_delegated(report, MM)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({}, None), (dict(beta=2), "beta=2; only alpha = beta = 1 is supported"),
     (dict(alpha=2), "alpha=2; only alpha = beta = 1 is supported")],
    ids=["alpha1-beta1", "beta2", "alpha2"],
)
def test_addmm_alpha_beta(kwargs, reason):
    report = partition_edge(_edge(_ExplicitAddmm(**kwargs), _inputs((2, 8))))
    if reason is None:
        _assert_delegated(report, ADDMM)
    else:
        _assert_rejected(report, ADDMM, reason)
        # The cluster's weight dequantize and permute follow the addmm's verdict.
        assert entry_for(report, "aten.permute_copy.default").reason == f"follows 'aten_addmm_default': {reason}"


# -- activations ----------------------------------------------------------------------------------------------


def test_standalone_relu_is_delegated():
    report = _run_fn(F.relu, (1, 8, 4, 4))
    _assert_delegated(report, RELU)
    assert report.num_partitions == 1


# NeutronQuantizer observes ReLU forms on their own and gives other hardtanh bounds the input's qparams.
ACTIVATION_CASES = (
    Case("relu6", F.relu6, (1, 8, 4, 4), HARDTANH),
    Case("hardtanh-1..1", lambda x: F.hardtanh(x, -1.0, 1.0), (1, 8, 4, 4), HARDTANH),
    Case("hardtanh0..1", lambda x: F.hardtanh(x, 0.0, 1.0), (1, 8, 4, 4), HARDTANH),
    Case("hardtanh-2..3-shared-qparams", lambda x: F.hardtanh(x, -2.0, 3.0), (1, 8, 4, 4), HARDTANH),
)


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=_ids(ACTIVATION_CASES))
def test_quantized_activation_is_delegated(case):
    _check_case(ACTIVATION_CASES, case)


@pytest.mark.parametrize("fn", [lambda x: torch.clamp(x, 0.0, 6.0), lambda x: torch.clamp(x, min=0.0)],
                         ids=["clamp0..6", "clamp0..inf"])
def test_clamp_relu_form_is_delegated_through_the_quantizer(fn):
    report = _run_fn(fn, (1, 8, 4, 4))
    _assert_delegated(report, CLAMP)


def _hand(fn, out_qparams: tuple[float, int]) -> HandQuantized:
    return HandQuantized(fn, (0.05, 0), out_qparams)


def _not_relu_form(name: str) -> str:
    """Bounds that are not a ReLU form clamp integers, keeping the input's qparams (0.05, 0)."""
    return ("input and output are quantized differently (scale 0.05, zero point 0 vs scale 0.03, zero point -10); "
            f"{name} keeps its input's qparams, so both must be equal (NeutronQuantizer shares them)")


# Hand-quantized: input (0.05, 0); output different (0.03, -10) or equal (0.05, 0) qparams.
CLAMP_CASES = (
    Case("clamp0..6", _hand(lambda x: torch.clamp(x, 0.0, 6.0), (0.03, -10)), (1, 8, 4, 4), CLAMP),
    Case("clamp0..inf", _hand(lambda x: torch.clamp(x, min=0.0), (0.03, -10)), (1, 8, 4, 4), CLAMP),
    Case("clamp-1..1", _hand(lambda x: torch.clamp(x, -1.0, 1.0), (0.03, -10)), (1, 8, 4, 4), CLAMP),
    Case("clamp0..1", _hand(lambda x: torch.clamp(x, 0.0, 1.0), (0.03, -10)), (1, 8, 4, 4), CLAMP),
    Case("hardtanh0..6", _hand(lambda x: F.hardtanh(x, 0.0, 6.0), (0.03, -10)), (1, 8, 4, 4), HARDTANH),
    Case("clamp-2..3-different-qparams", _hand(lambda x: torch.clamp(x, -2.0, 3.0), (0.03, -10)), (1, 8, 4, 4),
         CLAMP, _not_relu_form("clamp")),
    Case("clamp0..5-different-qparams", _hand(lambda x: torch.clamp(x, 0.0, 5.0), (0.03, -10)), (1, 8, 4, 4),
         CLAMP, _not_relu_form("clamp")),
    Case("hardtanh-2..3-different-qparams", _hand(lambda x: F.hardtanh(x, -2.0, 3.0), (0.03, -10)),
         (1, 8, 4, 4), HARDTANH, _not_relu_form("hardtanh")),
    Case("clamp-2..3-equal-qparams", _hand(lambda x: torch.clamp(x, -2.0, 3.0), (0.05, 0)), (1, 8, 4, 4), CLAMP),
    Case("hardtanh-2..3-equal-qparams", _hand(lambda x: F.hardtanh(x, -2.0, 3.0), (0.05, 0)), (1, 8, 4, 4),
         HARDTANH),
)


@pytest.mark.parametrize("case", CLAMP_CASES, ids=_ids(CLAMP_CASES))
def test_clamp_bounds_and_qparams(case):
    _check_case(CLAMP_CASES, case, hand_quantized=True)


# -- add ------------------------------------------------------------------------------------------------------


def test_add_is_delegated():
    report = _run_fn(torch.add, (1, 8, 4, 4), (1, 8, 4, 4))
    _assert_delegated(report, ADD)
    assert report.num_partitions == 1


ADD_CASES = (
    Case("second-broadcast", lambda x: x + x[:, :, :1, :1], (1, 8, 4, 4), ADD),
    Case("first-broadcast", lambda x: x[:, :1, :, :1] + x, (1, 8, 4, 4), ADD),
    # The current converter broadcasts both inputs; older flavors: tests/test_versioned_limits.py.
    Case("both-broadcast", lambda x: x[:, :, :1, :] + x[:, :1, :, :1], (1, 8, 4, 4), ADD),
    Case("alpha2", lambda x: torch.add(x, x, alpha=2), (1, 8, 4, 4), ADD, "alpha=2; only alpha = 1 is supported"),
)


@pytest.mark.parametrize("case", ADD_CASES, ids=_ids(ADD_CASES))
def test_add_broadcasting_and_alpha(case):
    _check_case(ADD_CASES, case)


# -- pooling --------------------------------------------------------------------------------------------------


def test_avg_pool2d_is_delegated():
    report = _run_fn(lambda x: F.avg_pool2d(x, 2), (1, 8, 8, 8))
    _assert_delegated(report, AVG_POOL)
    assert report.num_partitions == 1


AVG_POOL_CASES = (
    Case("ceil_mode", lambda x: F.avg_pool2d(x, 2, ceil_mode=True), (1, 8, 7, 7), AVG_POOL,
         "ceil_mode=True is not supported; use ceil_mode=False"),
    Case("divisor_override", lambda x: F.avg_pool2d(x, 2, divisor_override=3), (1, 8, 8, 8), AVG_POOL,
         "divisor_override=3 is not supported"),
    Case("padding-count_include_pad", lambda x: F.avg_pool2d(x, 3, 1, 1), (1, 8, 7, 7), AVG_POOL),
    Case("no-padding-exclude-pad", lambda x: F.avg_pool2d(x, 3, 1, 0, count_include_pad=False), (1, 8, 7, 7),
         AVG_POOL),
    Case("padding-exclude-pad", lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), (1, 8, 7, 7),
         AVG_POOL, "count_include_pad=False with padding cannot be expressed exactly; padding is added as "
                   "zero-point values that the average counts"),
    Case("kernel4096", lambda x: F.avg_pool2d(x, (4096, 1)), (1, 1, 4096, 1), AVG_POOL),
    Case("kernel4097", lambda x: F.avg_pool2d(x, (4097, 1)), (1, 1, 4097, 1), AVG_POOL,
         "kernel 4097x1 exceeds Neutron's limit of 4096 per axis"),
    Case("stride4096", lambda x: F.avg_pool2d(x, 1, (4096, 1)), (1, 1, 4097, 1), AVG_POOL),
    Case("stride4097", lambda x: F.avg_pool2d(x, 1, (4097, 1)), (1, 1, 4098, 1), AVG_POOL,
         "stride 4097x1 exceeds Neutron's limit of 4096 per axis"),
)


@pytest.mark.parametrize("case", AVG_POOL_CASES, ids=_ids(AVG_POOL_CASES))
def test_avg_pool2d_conditions(case):
    _check_case(AVG_POOL_CASES, case)


def test_adaptive_avg_pool2d_is_delegated():
    report = _run_fn(lambda x: F.adaptive_avg_pool2d(x, 2), (1, 8, 8, 8))
    _assert_delegated(report, ADAPTIVE_POOL)
    assert report.num_partitions == 1


# Output (1, 2) keeps the adaptive pool (a 1x1 output becomes mean.dim); the kernels are 4096x1 / 4097x1.
ADAPTIVE_POOL_CASES = (
    Case("not-divisible", lambda x: F.adaptive_avg_pool2d(x, 2), (1, 8, 7, 7), ADAPTIVE_POOL,
         "input 7x7 is not divisible by output 2x2; adaptive pooling must reduce to a regular kernel"),
    Case("kernel4096", lambda x: F.adaptive_avg_pool2d(x, (1, 2)), (1, 1, 4096, 2), ADAPTIVE_POOL),
    Case("kernel4097", lambda x: F.adaptive_avg_pool2d(x, (1, 2)), (1, 1, 4097, 2), ADAPTIVE_POOL,
         "kernel 4097x1 exceeds Neutron's limit of 4096 per axis"),
)


@pytest.mark.parametrize("case", ADAPTIVE_POOL_CASES, ids=_ids(ADAPTIVE_POOL_CASES))
def test_adaptive_avg_pool2d_conditions(case):
    _check_case(ADAPTIVE_POOL_CASES, case)


def test_max_pool2d_is_delegated():
    report = _run_fn(lambda x: F.max_pool2d(x, 2), (1, 8, 8, 8))
    _assert_delegated(report, MAX_POOL)
    _assert_delegated(report, "getitem")
    assert report.num_partitions == 1


MAX_POOL_CASES = (
    Case("dilation2", lambda x: F.max_pool2d(x, 2, dilation=2), (1, 8, 8, 8), MAX_POOL,
         "dilation 2x2 is not supported; only 1"),
    # Rewritten to floor mode over the input with its last row and column repeated (passes/pool_ceil_mode.py).
    Case("ceil_mode", lambda x: F.max_pool2d(x, 2, ceil_mode=True), (1, 8, 7, 7), MAX_POOL),
    Case("stride4096", lambda x: F.max_pool2d(x, 1, (4096, 1)), (1, 1, 4097, 1), MAX_POOL),
    Case("stride4097", lambda x: F.max_pool2d(x, 1, (4097, 1)), (1, 1, 4098, 1), MAX_POOL,
         "stride 4097x1 exceeds Neutron's limit of 4096 per axis"),
)


@pytest.mark.parametrize("case", MAX_POOL_CASES, ids=_ids(MAX_POOL_CASES))
def test_max_pool2d_conditions(case):
    _check_case(MAX_POOL_CASES, case)
    if case.reason is not None:
        report = _cases_report(MAX_POOL_CASES)
        pool = entry_for(report, MAX_POOL, MAX_POOL_CASES.index(case))
        getitem = entry_for(report, "getitem", MAX_POOL_CASES.index(case))
        assert getitem.reason == f"follows '{pool.name}': {case.reason}"


# -- mean, view, cat, softmax ---------------------------------------------------------------------------------


def test_mean_dim_is_delegated():
    report = _run_fn(lambda x: x.mean(dim=(2, 3), keepdim=True), (1, 8, 4, 4))
    _assert_delegated(report, MEAN)


def test_mean_over_size_one_dims_alone_is_a_no_op():
    report = _run_fn(lambda x: x.mean(dim=(2, 3), keepdim=True), (1, 8, 1, 1))
    _assert_rejected(report, MEAN, NO_OP_REASON.format(MEAN))
    allowed = _run_fn(lambda x: x.mean(dim=(2, 3), keepdim=True), (1, 8, 1, 1),
                      delegation_options=CustomDelegationOptions(allow_no_op_partitions=True))
    _assert_delegated(allowed, MEAN)


def test_view_copy_is_delegated_with_compute_around_it():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    report = _run(model, (1, 4, 4, 4))
    for target in (CONV, VIEW, ADDMM):
        _assert_delegated(report, target)
    assert report.num_partitions == 1


def _lone_view(x: torch.Tensor) -> torch.Tensor:
    # sin has no Neutron rule (and NeutronQuantizer leaves it float): both neighbours stay on the CPU.
    return torch.sin(torch.sin(x).view(1, 64))


def test_lone_view_between_cpu_ops_is_not_delegated():
    report = _run_fn(_lone_view, (1, 4, 4, 4))
    _assert_rejected(report, VIEW, NO_OP_REASON.format(VIEW))
    assert report.num_partitions == 0
    assert not any(e.delegated for e in report.nodes)


def test_lone_view_is_delegated_with_allow_no_op_partitions():
    report = _run_fn(_lone_view, (1, 4, 4, 4),
                     delegation_options=CustomDelegationOptions(allow_no_op_partitions=True))
    _assert_delegated(report, VIEW)
    assert report.num_partitions == 1


class _TwoConvCat(nn.Module):
    """Two convolutions (8 and `second` output channels) concatenated along channels."""

    def __init__(self, second: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 8, 1), nn.Conv2d(4, second, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


def test_cat_of_multiple_of_num_macs_channels_is_delegated():
    report = _run(_TwoConvCat(8), (1, 4, 4, 4))
    _assert_delegated(report, CAT)
    assert report.num_partitions == 1


def test_cat_of_channels_not_multiple_of_num_macs_is_delegated_for_the_current_converter():
    # Older flavors reject it unless force_delegate_cat: tests/test_versioned_limits.py.
    report = _run(_TwoConvCat(4), (1, 4, 4, 4))
    _assert_delegated(report, CAT)
    forced = _run(_TwoConvCat(4), (1, 4, 4, 4),
                  delegation_options=CustomDelegationOptions(force_delegate_cat=True))
    _assert_delegated(forced, CAT)
    assert forced.num_partitions == 1


def test_softmax_is_delegated():
    report = _run_fn(lambda x: torch.softmax(x, -1), (1, 16))
    _assert_delegated(report, SOFTMAX)
    assert report.num_partitions == 1


# Rank 2: the channel dim is the last one.
SOFTMAX_CASES = (
    Case("C2040", lambda x: torch.softmax(x, -1), (1, 2040), SOFTMAX),
    Case("C2041", lambda x: torch.softmax(x, -1), (1, 2041), SOFTMAX, "C = 2041 > 2040 channels"),
    Case("other4096", lambda x: torch.softmax(x, -1), (4096, 8), SOFTMAX),
    # Over the product or total limits, a softmax runs as pieces split along dim 0 (ops/softmax.py; the split's
    # own cases are in test_attention.py): 4097 rows as 2049 + 2048, 4096 x 129 as two halves.
    Case("other4097", lambda x: torch.softmax(x, -1), (4097, 8), SOFTMAX),
    Case("total524288", lambda x: torch.softmax(x, -1), (4096, 128), SOFTMAX),
    Case("total528384", lambda x: torch.softmax(x, -1), (4096, 129), SOFTMAX),
    Case("dim0", lambda x: torch.softmax(x, 0), (8, 16), SOFTMAX,
         "softmax over dim 0 of a tensor of shape [8, 16]; Neutron computes softmax over the channel dim (1) only"),
)


@pytest.mark.parametrize("case", SOFTMAX_CASES, ids=_ids(SOFTMAX_CASES))
def test_softmax_conditions(case):
    _check_case(SOFTMAX_CASES, case)


# -- operators_not_to_delegate --------------------------------------------------------------------------------


class _LinearPlusInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + x


def test_operators_not_to_delegate_add_keeps_add_but_not_addmm_on_cpu():
    report = _run(_LinearPlusInput(), (1, 8), operators_not_to_delegate=["aten::add"])
    _assert_rejected(report, ADD, "excluded by operators_not_to_delegate ('aten::add')")
    _assert_delegated(report, ADDMM)


@pytest.mark.parametrize("name", ["aten::convolution", "conv2d"])
def test_operators_not_to_delegate_convolution(conv_relu_edge, name):
    report = partition_edge(copy.deepcopy(conv_relu_edge), operators_not_to_delegate=[name])
    reason = f"excluded by operators_not_to_delegate ('aten::{name.removeprefix('aten::')}')"
    _assert_rejected(report, CONV, reason)
    assert entry_for(report, RELU).reason == f"follows 'aten_convolution_default': {reason}"
    assert report.num_partitions == 0


def test_operators_not_to_delegate_permute_keeps_linear_delegated():
    report = _run(nn.Linear(16, 4), (1, 16), operators_not_to_delegate=["aten::permute"])
    _assert_delegated(report, ADDMM)


# -- float model, partition rules ---------------------------------------------------------------------------


def test_float_model_is_not_delegated_and_every_node_says_not_quantized():
    model, inputs = get_model("cifarnet")
    report = partition_edge(_edge(model, inputs))
    assert report.nodes
    assert report.num_partitions == 0
    for entry in report.nodes:
        assert not entry.delegated
        assert "not quantized" in entry.reason, entry


@pytest.mark.parametrize("num_pools", [1, 2])
def test_min_compute_ops_per_partition(num_pools):
    # conv + num_pools average pools: a partition of 1 + num_pools compute operators.
    layers = [nn.Conv2d(8, 8, 1)] + [nn.AvgPool2d(1)] * num_pools
    report = _run(nn.Sequential(*layers), (1, 8, 4, 4),
                  delegation_options=CustomDelegationOptions(min_compute_ops_per_partition=3))
    if num_pools == 2:
        _assert_delegated(report, CONV)
        _assert_delegated(report, AVG_POOL, index=1)
    else:
        reason = "its partition has 2 compute operator(s), fewer than min_compute_ops_per_partition=3"
        _assert_rejected(report, CONV, reason)
        _assert_rejected(report, AVG_POOL, reason)


# -- CifarNet and the report ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifarnet_report():
    model, inputs = get_model("cifarnet")
    report, _ = partition_model(model, inputs)
    return report


def test_cifarnet_is_delegated_whole(cifarnet_report):
    report = cifarnet_report
    assert report.num_partitions == 1
    for entry in report.nodes:
        if entry.target.startswith(QDQ_PREFIX):
            assert entry.delegated or entry.reason == "quantize/dequantize at a CPU boundary", entry
        else:
            assert entry.delegated and entry.partition == 0, entry
    compute = {e.target for e in report.nodes if not e.target.startswith(QDQ_PREFIX)}
    assert compute == {CONV, RELU, MAX_POOL, "getitem", VIEW, ADDMM, "aten.permute_copy.default"}
    assert report.delegated_mac_fraction == 1.0


def test_cifarnet_mac_count(cifarnet_report):
    # conv MACs = Cout * Hout * Wout * Cin * kH * kW (padding 2 keeps the size; each pool halves it).
    conv1 = 32 * 32 * 32 * 3 * 5 * 5
    conv2 = 32 * 16 * 16 * 32 * 5 * 5
    conv3 = 64 * 8 * 8 * 32 * 5 * 5
    fc = 1024 * 10
    assert [e.macs for e in cifarnet_report.nodes if e.target == CONV] == [conv1, conv2, conv3]
    assert entry_for(cifarnet_report, ADDMM).macs == fc
    assert cifarnet_report.total_macs == conv1 + conv2 + conv3 + fc == 12_298_240
    assert cifarnet_report.delegated_macs == cifarnet_report.total_macs


def test_report_dict_counts_add_up_and_text_names_every_node(cifarnet_report):
    report = cifarnet_report
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["num_nodes"] == len(as_dict["nodes"]) == len(report.nodes)
    assert as_dict["num_delegated_nodes"] == sum(n["delegated"] for n in as_dict["nodes"])
    assert as_dict["num_delegated_nodes"] + len(report.rejected()) == as_dict["num_nodes"]
    assert as_dict["total_macs"] == sum(n["macs"] for n in as_dict["nodes"])
    assert as_dict["delegated_macs"] == sum(n["macs"] for n in as_dict["nodes"] if n["delegated"])
    assert as_dict["num_partitions"] == len({n["partition"] for n in as_dict["nodes"] if n["delegated"]})
    assert as_dict["delegated_mac_fraction"] == as_dict["delegated_macs"] / as_dict["total_macs"]
    text = str(report)
    for entry in report.nodes:
        assert entry.name in text
        assert report.entry(entry.name) == entry
    with pytest.raises(KeyError, match="no node 'missing'"):
        report.entry("missing")
