"""Unary activations and math (neutron_backend/ops/unary.py), their quantizer annotations, clamp fusion, and
NeutronPartitioner.ops_to_not_decompose keeping hardswish, hardsigmoid, silu and prelu whole.

Numerics cases run the whole flow (tests/numerics.py). Tolerance: one output quantization step per requantizing
operator on the path (fixed-point against float requantization); a case's `steps` counts them, composite lowerings
included (silu is
LOGISTIC + MUL: 2; hardsigmoid's MUL multiplies by exactly 1 in the integer domain, so it counts 1).

Verdict tests need the operator whole in the edge program even when it is rejected (to_edge_transform_and_lower
would decompose a rejected one for the CPU), so they lower with `to_edge(..., preserve_ops=...)` and run the real
partitioner on it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import entry_for, partition_edge
from numerics import Conv, Fn, HandQuantized, Linear, check_case, qdq, sample_inputs
from torch import nn

from neutron_backend.compile_spec import generate_neutron_compile_spec
from neutron_backend.delegation_options import CustomDelegationOptions
from neutron_backend.partitioner import NeutronPartitioner, kept_whole_operators
from neutron_backend.quantizer import NeutronQuantizer
from neutron_backend.quantizer.calibration import calibrate, quantize_model, random_batches

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed

SIGMOID = "aten.sigmoid.default"
TANH = "aten.tanh.default"
HARDSWISH = "aten.hardswish.default"
HARDSIGMOID = "aten.hardsigmoid.default"
SILU = "aten.silu.default"
LEAKY_RELU = "aten.leaky_relu.default"
PRELU = "aten.prelu.default"
ABS = "aten.abs.default"
NEG = "aten.neg.default"
EXP = "aten.exp.default"
LOG = "aten.log.default"
RSQRT = "aten.rsqrt.default"
CONV = "aten.convolution.default"
ADDMM = "aten.addmm.default"
MUL = "aten.mul.Tensor"
IMAGE = (1, 3, 8, 8)
FEATURE_MAP = (1, 8, 6, 6)

COVERED = {SIGMOID, TANH, HARDSWISH, HARDSIGMOID, SILU, LEAKY_RELU, PRELU, ABS, NEG, EXP, LOG, RSQRT}


class SqueezeExcitation(nn.Module):
    """x * gate(conv1x1(relu(conv1x1(mean_hw(x))))), as in MobileNetV3 / EfficientNet."""

    def __init__(self, gate: nn.Module, channels: int = 8, squeezed: int = 4) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.gate = gate

    def forward(self, x):
        return x * self.gate(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))


class HardswishBlock(nn.Module):
    """conv -> hardswish -> depthwise conv -> hardswish (in place), as in MobileNetV3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.act = nn.Hardswish(inplace=True)

    def forward(self, x):
        return self.act(self.depthwise(F.hardswish(self.conv(x))))


@dataclass(frozen=True)
class NumericsCase:
    factory: Callable[[], nn.Module]
    shape: tuple[int, ...]
    targets: tuple[str, ...]
    steps: int = 1  # requantizing operators on the path


CASES: dict[str, NumericsCase] = {
    "sigmoid": NumericsCase(lambda: Fn(torch.sigmoid), FEATURE_MAP, (SIGMOID,)),
    "tanh": NumericsCase(lambda: Fn(torch.tanh), FEATURE_MAP, (TANH,)),
    "hardswish": NumericsCase(lambda: nn.Hardswish(), FEATURE_MAP, (HARDSWISH,)),
    "hardsigmoid": NumericsCase(lambda: nn.Hardsigmoid(), FEATURE_MAP, (HARDSIGMOID,)),
    "silu": NumericsCase(lambda: nn.SiLU(), FEATURE_MAP, (SILU,), steps=2),
    "leaky_relu_default_slope": NumericsCase(lambda: nn.LeakyReLU(), FEATURE_MAP, (LEAKY_RELU,)),
    "leaky_relu_0.2": NumericsCase(lambda: nn.LeakyReLU(0.2), FEATURE_MAP, (LEAKY_RELU,)),
    "abs": NumericsCase(lambda: Fn(torch.abs), FEATURE_MAP, (ABS,)),
    "neg": NumericsCase(lambda: Fn(torch.neg), FEATURE_MAP, (NEG,)),
    "exp": NumericsCase(lambda: Fn(torch.exp), FEATURE_MAP, (EXP,)),
    # log and rsqrt need a non-negative input range (zero point -128): sigmoid's and exp's outputs have one.
    "log_of_sigmoid": NumericsCase(lambda: Fn(lambda x: torch.log(torch.sigmoid(x))), FEATURE_MAP, (SIGMOID, LOG),
                                   steps=2),
    "rsqrt_of_exp": NumericsCase(lambda: Fn(lambda x: torch.rsqrt(torch.exp(x))), FEATURE_MAP, (EXP, RSQRT),
                                 steps=2),
    # Channels-first rank 4 (after a conv), a single slope, and rank 2 (after a linear layer).
    "conv_prelu": NumericsCase(lambda: Conv(act=nn.PReLU(8)), IMAGE, (CONV, PRELU), steps=2),
    "conv_prelu_single_slope": NumericsCase(lambda: Conv(act=nn.PReLU()), IMAGE, (CONV, PRELU), steps=2),
    "linear_prelu": NumericsCase(lambda: Linear(act=nn.PReLU(10)), (1, 16), (ADDMM, PRELU), steps=2),
    # In-place variants after a conv, as nn modules with inplace=True export them.
    "conv_hardswish_inplace": NumericsCase(lambda: Conv(act=nn.Hardswish(inplace=True)), IMAGE, (CONV, HARDSWISH),
                                           steps=2),
    "conv_leaky_relu_inplace": NumericsCase(lambda: Conv(act=nn.LeakyReLU(0.1, inplace=True)), IMAGE,
                                            (CONV, LEAKY_RELU), steps=2),
    "conv_hardsigmoid_inplace": NumericsCase(lambda: Conv(act=nn.Hardsigmoid(inplace=True)), IMAGE,
                                             (CONV, HARDSIGMOID), steps=2),
    # sigmoid/tanh/silu after conv/linear are separate operators (conv output quantized), see quantizer tests.
    "conv_sigmoid": NumericsCase(lambda: Conv(act=nn.Sigmoid()), IMAGE, (CONV, SIGMOID), steps=2),
    "linear_tanh": NumericsCase(lambda: Linear(act=nn.Tanh()), (1, 16), (ADDMM, TANH), steps=2),
    "conv_silu_inplace": NumericsCase(lambda: Conv(act=nn.SiLU(inplace=True)), IMAGE, (CONV, SILU), steps=3),
    # mean, conv (+ fused relu), conv, gate, mul.
    "squeeze_excitation_sigmoid": NumericsCase(lambda: SqueezeExcitation(nn.Sigmoid()), FEATURE_MAP,
                                               ("aten.mean.dim", CONV, SIGMOID, MUL), steps=5),
    "squeeze_excitation_hardsigmoid": NumericsCase(lambda: SqueezeExcitation(nn.Hardsigmoid()), FEATURE_MAP,
                                                   ("aten.mean.dim", CONV, HARDSIGMOID, MUL), steps=5),
    "hardswish_block": NumericsCase(HardswishBlock, IMAGE, (CONV, HARDSWISH), steps=4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unary_numerics(case: str, tmp_path: Path, record_property) -> None:
    spec = CASES[case]
    torch.manual_seed(0)
    check_case(case, spec.factory(), (spec.shape,), spec.targets, tmp_path, record_property,
               max_error_steps=float(spec.steps))


# -- verdicts and reasons ----------------------------------------------------------------------------------------


class _Branches(nn.Module):
    """Output i is fns[i](input i): the cases of one rule quantized and lowered once."""

    def __init__(self, fns) -> None:
        super().__init__()
        self.branches = nn.ModuleList(fn if isinstance(fn, nn.Module) else Fn(fn) for fn in fns)

    def forward(self, *inputs):
        return tuple(branch(x) for branch, x in zip(self.branches, inputs, strict=True))


@dataclass(frozen=True)
class Case:
    id: str
    fn: Callable
    shape: tuple[int, ...]
    target: str
    reason: str | None = None  # None: delegated


def _inputs(*shapes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=generator) for shape in shapes)


def _edge_keeping_whole(model: nn.Module, inputs: tuple[torch.Tensor, ...]):
    """The edge program of `model` with every kept-whole operator preserved, as to_edge_transform_and_lower keeps
    the delegable ones."""
    from executorch.exir import EdgeCompileConfig, to_edge

    config = EdgeCompileConfig(preserve_ops=list(kept_whole_operators().values()))
    return to_edge(torch.export.export(model, inputs), compile_config=config).exported_program()


@functools.cache
def _cases_report(cases: tuple[Case, ...], hand_quantized: bool):
    model = _Branches([case.fn for case in cases]).eval()
    inputs = _inputs(*(case.shape for case in cases))
    if not hand_quantized:
        torch.manual_seed(0)
        model = quantize_model(model, inputs, calibration_batches=random_batches(inputs, 3), progress=False)
    return partition_edge(_edge_keeping_whole(model, inputs))


def _check(cases: tuple[Case, ...], case: Case, hand_quantized: bool) -> None:
    report = _cases_report(cases, hand_quantized)
    index = sum(1 for other in cases[: cases.index(case)] if other.target == case.target)
    entry = entry_for(report, case.target, index)
    if case.reason is None:
        assert entry.delegated and entry.partition is not None, f"{entry.name}: {entry.reason}\n{report}"
        assert entry.reason == ""
    else:
        assert not entry.delegated, f"{entry.name} unexpectedly delegated\n{report}"
        assert entry.reason == case.reason


def _hand(fn, in_qparams: tuple[float, int], out_qparams: tuple[float, int]) -> HandQuantized:
    return HandQuantized(fn, in_qparams, out_qparams)


_SIGMOID_NEEDS = "int8 sigmoid (LOGISTIC) needs scale 1/256 and zero point -128 (NeutronQuantizer fixes them)"
_TANH_NEEDS = "int8 tanh needs scale 1/128 and zero point 0 (NeutronQuantizer fixes them)"

# The fixed output qparams, exactly and one step off in scale or zero point.
FIXED_OUTPUT_CASES = (
    Case("sigmoid-1/256,-128", _hand(torch.sigmoid, (0.05, 0), (1 / 256, -128)), FEATURE_MAP, SIGMOID),
    Case("sigmoid-1/256,-127", _hand(torch.sigmoid, (0.05, 0), (1 / 256, -127)), FEATURE_MAP, SIGMOID,
         f"output quantized with scale 0.00390625, zero point -127; {_SIGMOID_NEEDS}"),
    Case("sigmoid-1/255,-128", _hand(torch.sigmoid, (0.05, 0), (1 / 255, -128)), FEATURE_MAP, SIGMOID,
         f"output quantized with scale 0.00392157, zero point -128; {_SIGMOID_NEEDS}"),
    Case("tanh-1/128,0", _hand(torch.tanh, (0.05, 0), (1 / 128, 0)), FEATURE_MAP, TANH),
    Case("tanh-1/128,1", _hand(torch.tanh, (0.05, 0), (1 / 128, 1)), FEATURE_MAP, TANH,
         f"output quantized with scale 0.0078125, zero point 1; {_TANH_NEEDS}"),
    Case("tanh-1/127,0", _hand(torch.tanh, (0.05, 0), (1 / 127, 0)), FEATURE_MAP, TANH,
         f"output quantized with scale 0.00787402, zero point 0; {_TANH_NEEDS}"),
)


@pytest.mark.parametrize("case", FIXED_OUTPUT_CASES, ids=[c.id for c in FIXED_OUTPUT_CASES])
def test_fixed_output_qparams(case: Case) -> None:
    _check(FIXED_OUTPUT_CASES, case, hand_quantized=True)


def _negative_input(function: str, zero_point: int) -> str:
    return (f"input zero point {zero_point} > -128 lets the int8 input hold negative values, where int8 {function} "
            "differs from torch (NaN); Neutron needs a non-negative input range (zero point -128), e.g. the output "
            "of exp, sigmoid, softmax or abs")


# Input zero point at the int8 minimum (no negative value representable) and one above it.
NON_NEGATIVE_INPUT_CASES = (
    Case("log-zp-128", _hand(torch.log, (0.05, -128), (0.04, 60)), FEATURE_MAP, LOG),
    Case("log-zp-127", _hand(torch.log, (0.05, -127), (0.04, 60)), FEATURE_MAP, LOG, _negative_input("LOG", -127)),
    Case("rsqrt-zp-128", _hand(torch.rsqrt, (0.05, -128), (0.04, -128)), FEATURE_MAP, RSQRT),
    Case("rsqrt-zp-127", _hand(torch.rsqrt, (0.05, -127), (0.04, -128)), FEATURE_MAP, RSQRT,
         _negative_input("RSQRT", -127)),
)


@pytest.mark.parametrize("case", NON_NEGATIVE_INPUT_CASES, ids=[c.id for c in NON_NEGATIVE_INPUT_CASES])
def test_log_and_rsqrt_need_a_non_negative_input_range(case: Case) -> None:
    _check(NON_NEGATIVE_INPUT_CASES, case, hand_quantized=True)


class _PreluWithInputSlope(nn.Module):
    """prelu whose slope is computed at run time (from the second half of the input)."""

    def forward(self, x):
        return F.prelu(x[:, :8], x[0, 8:, 0, 0])


def _not_channels_first(rank: int, shape: list[int]) -> str:
    return (f"rank-{rank} input {shape} is not in channels-first format (no convolution or pooling defines its "
            f"channel dim); Neutron runs prelu of rank > 2 only on channels-first tensors")


# NeutronQuantizer-quantized. Rank 2 vs 3 without a format; rank 4 with and without a conv defining the channels.
PRELU_CASES = (
    Case("rank2", nn.PReLU(8), (4, 8), PRELU),
    Case("rank3-formatless", nn.PReLU(8), (1, 8, 6), PRELU, _not_channels_first(3, [1, 8, 6])),
    Case("rank4-formatless", nn.PReLU(8), FEATURE_MAP, PRELU, _not_channels_first(4, [1, 8, 6, 6])),
    Case("rank4-channels-first", Conv(act=nn.PReLU(8)), IMAGE, PRELU),
)


@pytest.mark.parametrize("case", PRELU_CASES, ids=[c.id for c in PRELU_CASES])
def test_prelu_format(case: Case) -> None:
    _check(PRELU_CASES, case, hand_quantized=False)


def test_prelu_slope_computed_at_run_time_is_rejected() -> None:
    cases = (Case("runtime-slope", Conv(cout=16, act=_PreluWithInputSlope()), IMAGE, PRELU,
                  "the slope is computed at run time; Neutron needs a constant slope (a parameter)"),)
    _check(cases, cases[0], hand_quantized=False)


class _PreluPerChannelSlope(nn.Module):
    """Hand-quantized prelu whose slope is int8 per channel (NeutronQuantizer quantizes it per tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.register_buffer("slope", torch.arange(8, dtype=torch.int8) + 10)
        self.register_buffer("scales", torch.full((8,), 0.01))
        self.register_buffer("zero_points", torch.zeros(8, dtype=torch.int64))

    def forward(self, x):
        slope = qd.dequantize_per_channel(self.slope, self.scales, self.zero_points, 0, -127, 127, torch.int8)
        return qdq(F.prelu(qdq(self.conv(x), 0.05, 0), slope), 0.04, -10)


def test_prelu_per_channel_slope_is_rejected() -> None:
    report = partition_edge(_edge_keeping_whole(_PreluPerChannelSlope().eval(), _inputs(IMAGE)))
    entry = entry_for(report, PRELU)
    assert not entry.delegated
    assert entry.reason == ("slope quantized per channel; Neutron's int8 PRELU takes one scale for all slopes "
                            "(NeutronQuantizer quantizes it per tensor)")


# -- quantizer annotations -----------------------------------------------------------------------------------


def _quantize(model: nn.Module, shape: tuple[int, ...], quantizer: NeutronQuantizer | None = None):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    inputs = _inputs(shape)
    prepared = prepare_pt2e(torch.export.export(model.eval(), inputs).module(),
                            quantizer or NeutronQuantizer("imxrt700"))
    calibrate(prepared, random_batches(inputs, 3), progress=False)
    return convert_pt2e(prepared)


def _the(gm, targets) -> torch.fx.Node:
    found = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in targets]
    assert len(found) == 1, f"expected one of {targets}, found {[n.target for n in found]}"
    return found[0]


def _output_qparams(node: torch.fx.Node) -> tuple[float, int]:
    (user,) = node.users
    assert user.target == qd.quantize_per_tensor.default, f"'{node.name}' feeds {user.target}, not a quantize"
    return user.args[1], user.args[2]


def _input_qparams(node: torch.fx.Node) -> tuple[float, int]:
    source = node.args[0]
    assert source.target == qd.dequantize_per_tensor.default, f"'{node.name}' reads {source.target}"
    return source.args[1], source.args[2]


@pytest.mark.parametrize(("fn", "targets", "qparams"), [
    (torch.sigmoid, (aten.sigmoid.default,), (1 / 256, -128)),
    (torch.tanh, (aten.tanh.default,), (1 / 128, 0)),
    (nn.Sigmoid(), (aten.sigmoid.default,), (1 / 256, -128)),
], ids=["sigmoid", "tanh", "nn.Sigmoid"])
def test_sigmoid_and_tanh_outputs_have_fixed_qparams(fn, targets, qparams) -> None:
    gm = _quantize(fn if isinstance(fn, nn.Module) else Fn(fn), FEATURE_MAP)
    assert _output_qparams(_the(gm, targets)) == qparams


def test_sigmoid_after_conv_is_a_separate_operator() -> None:
    """TFLite's int8 conv fuses only RELU, RELU6 and RELU_N1_TO_1, so LOGISTIC reads a quantized conv output."""
    gm = _quantize(Conv(act=nn.Sigmoid()), IMAGE)
    conv = _the(gm, (aten.conv2d.default,))
    scale, zero_point = _output_qparams(conv)
    assert _input_qparams(_the(gm, (aten.sigmoid.default,))) == (scale, zero_point)
    assert (scale, zero_point) != (1 / 256, -128)


@pytest.mark.parametrize(("model", "shape", "producer", "act"), [
    (Conv(act=lambda y: torch.clamp(y, 0.0, 6.0)), IMAGE, aten.conv2d.default, aten.clamp.default),
    (Conv(act=lambda y: torch.clamp(y, min=0.0)), IMAGE, aten.conv2d.default, aten.clamp.default),
    (Linear(act=lambda y: torch.clamp(y, -1.0, 1.0)), (1, 16), aten.linear.default, aten.clamp.default),
    (Linear(act=lambda y: y.clamp_(-1.0, 1.0)), (1, 16), aten.linear.default, aten.clamp_.default),
    (Conv(act=nn.Hardtanh(-1.0, 1.0)), IMAGE, aten.conv2d.default, aten.hardtanh.default),
], ids=["conv-clamp0..6", "conv-clamp0..inf", "linear-clamp-1..1", "linear-clamp_-1..1", "conv-hardtanh-1..1"])
def test_relu_form_clamp_is_fused_after_conv_and_linear(model, shape, producer, act) -> None:
    gm = _quantize(model, shape)
    (user,) = _the(gm, (producer,)).users
    assert user.target == act, f"{producer} feeds {user.target}: not fused"
    scale, _ = _output_qparams(user)
    assert scale > 0


def test_clamp_to_0_1_after_conv_is_not_fused() -> None:
    """RELU_0_TO_1 is not a TFLite fused activation: the conv output is quantized and the clamp observed alone."""
    gm = _quantize(Conv(act=lambda y: torch.clamp(y, 0.0, 1.0)), IMAGE)
    conv_out = _output_qparams(_the(gm, (aten.conv2d.default,)))
    clamp = _the(gm, (aten.clamp.default,))
    assert _input_qparams(clamp) == conv_out
    assert _output_qparams(clamp) != conv_out


@pytest.mark.parametrize("fn", [lambda x: torch.clamp(x, -0.5, 0.75), lambda x: torch.clamp(x, max=0.5),
                                lambda x: x.clamp_min(-0.5)], ids=["clamp-0.5..0.75", "clamp..0.5", "clamp_min-0.5"])
def test_clamp_with_other_bounds_shares_the_input_qparams(fn) -> None:
    gm = _quantize(Fn(lambda x: fn(x + x)), FEATURE_MAP)
    clamp = _the(gm, (aten.clamp.default, aten.clamp_min.default))
    assert _output_qparams(clamp) == _input_qparams(clamp)


def test_prelu_slope_is_int8_symmetric_per_tensor() -> None:
    gm = _quantize(Conv(act=nn.PReLU(8)), IMAGE)
    prelu = _the(gm, (aten.prelu.default,))
    slope = prelu.args[1]
    assert slope.target == qd.dequantize_per_tensor.default
    _, scale, zero_point, qmin, qmax, dtype = slope.args
    assert (zero_point, qmin, qmax, dtype) == (0, -127, 127, torch.int8) and scale > 0
    assert _output_qparams(prelu) != _input_qparams(prelu)


@pytest.mark.parametrize("module", [nn.Hardswish(inplace=True), nn.Hardsigmoid(inplace=True), nn.SiLU(inplace=True),
                                    nn.LeakyReLU(0.1, inplace=True)], ids=lambda m: type(m).__name__)
def test_in_place_activations_are_quantized(module) -> None:
    gm = _quantize(Conv(act=module), IMAGE)
    targets = (aten.hardswish_.default, aten.hardsigmoid_.default, aten.silu_.default, aten.leaky_relu_.default)
    node = _the(gm, targets)
    _input_qparams(node)
    _output_qparams(node)


# -- keeping operators whole through decomposition -----------------------------------------------------------------


def test_kept_whole_operators_come_from_the_registry() -> None:
    from executorch.exir.program._program import _default_decomposition_table

    from neutron_backend import ops

    kept = kept_whole_operators()
    assert {("aten::hardswish", "default"), ("aten::hardsigmoid", "default"), ("aten::silu", "default"),
            ("aten::prelu", "default")} <= kept.keys()
    decomposed = set(_default_decomposition_table())
    for key, op in kept.items():
        assert op in decomposed and ops.lookup(op) is not None, key
    # A further target of an operator (max_pool2d next to max_pool2d_with_indices) is left to decompose.
    assert ("aten::max_pool2d", "default") not in kept


def _partitioner(options: CustomDelegationOptions | None = None, **spec) -> NeutronPartitioner:
    return NeutronPartitioner(generate_neutron_compile_spec("imxrt700", **spec), options)


def test_programs_without_kept_whole_operators_get_no_filter() -> None:
    ep = torch.export.export(Fn(torch.relu), _inputs(FEATURE_MAP))
    assert _partitioner().ops_to_not_decompose(ep) == ([], None)
    preserve = [aten.linear.default]
    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700"), preserve_ops=preserve)
    assert partitioner.ops_to_not_decompose(ep) == (preserve, None)


def test_filter_keeps_quantized_instances_and_user_preserve_ops_whole() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quantized_act = nn.Hardswish()
            self.float_act = nn.Hardswish()
            self.float_linear = nn.Linear(6, 6)

        def forward(self, x, y):
            return self.quantized_act(x), self.float_linear(self.float_act(y))

    quantizer = (NeutronQuantizer("imxrt700").set_module_name("float_act", None)
                 .set_module_name("float_linear", None))
    inputs = _inputs(FEATURE_MAP, FEATURE_MAP)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(torch.export.export(Mixed().eval(), inputs).module(), quantizer)
    calibrate(prepared, random_batches(inputs, 2), progress=False)
    ep = torch.export.export(convert_pt2e(prepared), inputs).run_decompositions({})
    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700"), preserve_ops=[aten.linear.default])
    kept, keep_whole = partitioner.ops_to_not_decompose(ep)
    assert aten.hardswish.default in kept and aten.linear.default in kept
    hardswishes = [n for n in ep.graph.nodes if n.target == aten.hardswish.default]
    assert [keep_whole(n) for n in hardswishes] == [True, False]  # graph order: quantized, float
    (linear,) = [n for n in ep.graph.nodes if n.target == aten.linear.default]
    assert keep_whole(linear)


def _lower_and_run(model: nn.Module, inputs: tuple[torch.Tensor, ...], tmp_path: Path,
                   options: CustomDelegationOptions | None = None, **spec):
    """(partitioner, edge program, .pte outputs per sample, samples) of `model` lowered for imxrt700."""
    import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize)
    from executorch.exir import to_edge_transform_and_lower

    from neutron_backend.runtime import load_pte

    partitioner = _partitioner(options, **spec)
    edge = to_edge_transform_and_lower(torch.export.export(model, inputs), partitioner=[partitioner])
    program = edge.exported_program()
    pte = tmp_path / "model.pte"
    pte.write_bytes(edge.to_executorch().buffer)
    runtime = load_pte(pte)
    samples = sample_inputs(inputs)
    return partitioner, program, [runtime(*sample) for sample in samples], samples


def _targets(program) -> set[str]:
    return {str(getattr(n.target, "_op", n.target)) for n in program.graph.nodes if n.op == "call_function"}


def test_float_hardswish_decomposes_for_the_cpu(tmp_path: Path) -> None:
    model = nn.Hardswish().eval()
    partitioner, program, outputs, samples = _lower_and_run(model, _inputs(FEATURE_MAP), tmp_path)
    assert "aten.hardswish.default" not in _targets(program)
    assert partitioner.report.num_partitions == 0
    for (got,), sample in zip(outputs, samples, strict=True):
        torch.testing.assert_close(got, model(*sample), rtol=0, atol=1e-6)


def _max_steps(got: torch.Tensor, want: torch.Tensor, quantized: torch.fx.GraphModule) -> float:
    from neutron_backend.verify import output_scales

    (scale,) = output_scales(quantized)
    return float(((got - want).abs() / scale).max())


@pytest.mark.parametrize(("model", "options", "spec", "op", "warning"), [
    (nn.Hardswish(), None, {"operators_not_to_delegate": ["aten::hardswish"]}, "aten.hardswish.default",
     "excluded by operators_not_to_delegate ('aten::hardswish')"),
    (nn.PReLU(8), None, {}, "aten.prelu.default", _not_channels_first(4, [1, 8, 6, 6])),
    # A partition-level rule: the lone silu's partition is too small.
    (nn.SiLU(), CustomDelegationOptions(min_compute_ops_per_partition=2), {}, "aten.silu.default",
     "its partition has 1 compute operator(s), fewer than min_compute_ops_per_partition=2"),
], ids=["excluded-hardswish", "formatless-prelu", "partition-too-small"])
def test_rejected_quantized_operator_decomposes_for_the_cpu(model, options, spec, op, warning, tmp_path, caplog):
    """Kept whole it would have no CPU kernel: it decomposes, computes the same int8 result on the CPU, and the
    partitioner says why."""
    inputs = _inputs(FEATURE_MAP)
    torch.manual_seed(0)
    quantized = quantize_model(model.eval(), inputs, calibration_batches=random_batches(inputs, 3), progress=False)
    with caplog.at_level(logging.WARNING, logger="neutron_backend.partitioner"):
        partitioner, program, outputs, samples = _lower_and_run(quantized, inputs, tmp_path, options, **spec)
    assert op not in _targets(program)
    assert partitioner.report.num_partitions == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "neutron_backend.partitioner"]
    assert any(m.endswith(f"is decomposed for the CPU: {warning}") for m in messages), messages
    for (got,), sample in zip(outputs, samples, strict=True):
        assert _max_steps(got, quantized(*sample), quantized) <= 1.0
