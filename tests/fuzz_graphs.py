"""Random small models built from the operators Neutron supports, for property-based fuzzing of the whole flow.

A model is a short sequence of steps over a 4D activation (1, C, H, W) with random sizes. Each step is one
registered Neutron operator (`BUILDERS`, keyed by registry name) with random parameters; binary steps combine the
current value with an earlier one of the same shape, so the graphs are DAGs. Builders return None when the
drawn shape cannot take the operator, and another operator is drawn.

Randomness comes from a `Draw` (integers, choices): `SeededDraw`, so a failing graph is reproduced from its seed
(tests/test_fuzz.py draws fresh seeds each run, bench/fuzz_soak.py a range of them).

`check_graph` is the property: quantizing and lowering never raise, and the .pte run on the host reproduces the
quantized model within one output quantization step per requantizing operator (LiteRT requantizes in fixed point,
torch in float), the host shim (our exact engine) matching the pure-Python emulator run with LiteRT's reference
kernels bit for bit, also on random int8 delegate inputs.

Every registered operator needs a builder here or a reason in `NOT_FUZZED`; tests/test_fuzz.py checks that, so a
newly registered operator is fuzzed as soon as it is given a builder.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from neutron_backend import ops

Shape = tuple[int, ...]
REQUANTIZE = "quantized_decomposed.quantize_per_tensor.default"
MAX_STEPS = 4
MAX_CHANNELS = 16
MAX_SIDE = 12
NUM_SAMPLES = 2


class Draw(Protocol):
    def integer(self, low: int, high: int) -> int: ...

    def choice(self, options: Sequence[Any]) -> Any: ...


class SeededDraw:
    """Draws from random.Random(seed)."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self._random.randint(low, high)

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self._random.randrange(len(options))]


@dataclass
class Step:
    """One operator of a fuzzed model: `apply(value, earlier)` gives the next value; `requantizes` counts the
    requantizing operators it adds (0 for data movement). `own_qparams`: its output gets qparams of its own (else
    it may share its input's); `fixed_scale`: the output scale the quantizer fixes (sigmoid, softmax, tanh)."""

    name: str
    description: str
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    requantizes: int
    module: nn.Module | None = None
    other: int | None = None  # index of the earlier value a binary step combines with
    own_qparams: bool = False
    fixed_scale: float | None = None


Builder = Callable[[Draw, Shape, list[Shape]], Step | None]
BUILDERS: dict[str, Builder] = {}


def builder(*names: str) -> Callable[[Builder], Builder]:
    def register(function: Builder) -> Builder:
        for name in names:
            BUILDERS[name] = function
        return function

    return register


def requantizations(name: str) -> int:
    """The requantizing steps the registered operator `name` declares its lowering has at most."""
    return ops.lookup_name(name).max_requantizations


def _unary(name: str, function: Callable[[torch.Tensor], torch.Tensor], extra: int,
           fixed_scale: float | None) -> Builder:
    """`extra`: requantizing operators `function` adds around the operator itself (log's abs and add)."""

    def build(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step:
        requantizes = requantizations(name) + extra
        return Step(name, name.split(".")[1], lambda x, _: function(x), requantizes, own_qparams=requantizes > 0,
                    fixed_scale=fixed_scale)

    return build


for _name, _function, _extra, _fixed in [
    ("aten.abs.default", torch.abs, 0, None),
    ("aten.neg.default", torch.neg, 0, None),
    ("aten.exp.default", torch.exp, 0, None),
    ("aten.sigmoid.default", torch.sigmoid, 0, 1 / 256),
    ("aten.tanh.default", torch.tanh, 0, 1 / 128),
    ("aten.relu.default", torch.relu, 0, None),
    ("aten.hardswish.default", F.hardswish, 0, None),
    ("aten.hardsigmoid.default", F.hardsigmoid, 0, 1 / 256),
    ("aten.silu.default", F.silu, 0, None),
    ("aten.clone.default", torch.clone, 0, None),
    # Positive inputs: the abs and the add are operators of their own.
    ("aten.log.default", lambda x: torch.log(x.abs() + 1.0), 2, None),
    ("aten.rsqrt.default", lambda x: torch.rsqrt(x.abs() + 1.0), 2, None),
]:
    BUILDERS[_name] = _unary(_name, _function, _extra, _fixed)


@builder("aten.leaky_relu.default")
def _leaky_relu(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step:
    slope = draw.choice([0.01, 0.1, 0.2])
    return Step("aten.leaky_relu.default", f"leaky_relu({slope})", lambda x, _: F.leaky_relu(x, slope),
                requantizations("aten.leaky_relu.default"),
                own_qparams=True)


@builder("aten.hardtanh.default", "aten.clamp.default")
def _clamp(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step:
    low, high = draw.choice([(0.0, 6.0), (-1.0, 1.0), (0.0, 1.0), (-0.5, 2.0)])
    return Step("aten.hardtanh.default", f"clamp({low}, {high})", lambda x, _: torch.clamp(x, low, high),
                requantizations("aten.clamp.default"))


@builder("aten.prelu.default")
def _prelu(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step:
    module = nn.PReLU(shape[1], init=draw.choice([0.05, 0.25]))
    return Step("aten.prelu.default", f"prelu({shape[1]})", lambda x, _: module(x),
                requantizations("aten.prelu.default"), module, own_qparams=True)


@builder("aten.convolution.default")
def _conv(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step | None:
    _, cin, h, w = shape
    kernel = draw.integer(1, min(5, h, w))
    stride = draw.integer(1, 2)
    padding = draw.integer(0, kernel // 2)
    depthwise = cin > 1 and draw.integer(0, 3) == 0
    cout = cin if depthwise else draw.integer(1, MAX_CHANNELS)
    module = nn.Conv2d(cin, cout, kernel, stride, padding, groups=cin if depthwise else 1,
                       bias=draw.integer(0, 3) > 0)
    fused = draw.choice([None, torch.relu, F.relu6])
    description = f"conv{kernel}x{kernel}/s{stride}/p{padding} {cin}->{cout}{' dw' if depthwise else ''}" + (
        f"+{fused.__name__}" if fused else "")
    return Step("aten.convolution.default", description,
                lambda x, _: fused(module(x)) if fused else module(x), requantizations("aten.convolution.default"),
                module, own_qparams=True)


@builder("aten.addmm.default", "aten.mm.default")
def _linear(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step | None:
    features = math.prod(shape[1:])
    if features > 512:
        return None
    out = draw.integer(1, 32)
    module = nn.Linear(features, out, bias=draw.integer(0, 1) == 1)
    return Step("aten.addmm.default", f"linear {features}->{out}",
                lambda x, _: module(x.flatten(1)).reshape(1, out, 1, 1), requantizations("aten.addmm.default"),
                module, own_qparams=True)


@builder("aten.max_pool2d_with_indices.default", "aten.avg_pool2d.default")
def _pool(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step | None:
    _, _, h, w = shape
    if min(h, w) < 2:
        return None
    kernel = draw.integer(2, min(3, h, w))
    stride = draw.integer(1, kernel)
    padding = draw.integer(0, kernel // 2)
    kind = draw.choice(["max", "avg"])
    module = (nn.MaxPool2d if kind == "max" else nn.AvgPool2d)(kernel, stride, padding)
    name = "aten.max_pool2d_with_indices.default" if kind == "max" else "aten.avg_pool2d.default"
    return Step(name, f"{kind}pool{kernel}/s{stride}/p{padding}", lambda x, _: module(x), requantizations(name))


@builder("aten._adaptive_avg_pool2d.default", "aten.mean.dim")
def _global_pool(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step:
    if draw.integer(0, 1):
        return Step("aten.mean.dim", "mean(2, 3)", lambda x, _: x.mean(dim=(2, 3), keepdim=True),
                    requantizations("aten.mean.dim"))
    sizes = [d for d in range(1, shape[2] + 1) if shape[2] % d == 0 and shape[3] % d == 0]
    size = draw.choice(sizes)
    return Step("aten._adaptive_avg_pool2d.default", f"adaptive_avg_pool({size})",
                lambda x, _: F.adaptive_avg_pool2d(x, size), requantizations("aten._adaptive_avg_pool2d.default"))


@builder("aten.sum.dim_IntList", "aten.amax.default", "aten.amin.default")
def _reduce(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step:
    dim = draw.choice([1, 2, 3, (2, 3)])
    kind = draw.choice(["sum", "amax", "amin"])
    function = {"sum": torch.sum, "amax": torch.amax, "amin": torch.amin}[kind]
    name = "aten.sum.dim_IntList" if kind == "sum" else f"aten.{kind}.default"
    return Step(name, f"{kind}({dim})", lambda x, _: function(x, dim=dim, keepdim=True), requantizations(name))


@builder("aten._softmax.default")
def _softmax(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step:
    return Step("aten._softmax.default", "softmax(1)", lambda x, _: torch.softmax(x, dim=1),
                requantizations("aten._softmax.default"), own_qparams=True,
                fixed_scale=1 / 256)


@builder("aten.add.Tensor", "aten.sub.Tensor", "aten.mul.Tensor", "aten.maximum.default", "aten.minimum.default")
def _binary(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step | None:
    candidates = [i for i, s in enumerate(earlier) if s == shape]
    if not candidates:
        return None
    other = draw.choice(candidates)
    kind = draw.choice(["add", "sub", "mul", "maximum", "minimum"])
    function = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "maximum": torch.maximum,
                "minimum": torch.minimum}[kind]
    name = f"aten.{kind}.Tensor" if kind in ("add", "sub", "mul") else f"aten.{kind}.default"
    return Step(name, f"{kind}(value {other})", lambda x, y: function(x, y), requantizations(name), other=other,
                own_qparams=kind in ("add", "sub", "mul"))


def _cat_partner(draw: Draw, shape: Shape, earlier: list[Shape]) -> int | None:
    """An earlier value to concatenate with along the channels (same spatial shape), or None."""
    candidates = [i for i, s in enumerate(earlier) if s[0] == 1 and s[2:] == shape[2:]]
    if not candidates or shape[1] * 2 > 4 * MAX_CHANNELS:
        return None
    return draw.choice(candidates)


@builder("aten.cat.default")
def _cat(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step | None:
    other = _cat_partner(draw, shape, earlier)
    if other is None:
        return None
    return Step("aten.cat.default", f"cat(value {other}, dim=1)", lambda x, y: torch.cat([x, y], dim=1),
                requantizations("aten.cat.default"),
                other=other)


@builder("quantized_decomposed.quantize_per_tensor.default")
def _requantized_cat(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step | None:
    """A sigmoid (fixed output qparams) concatenated with an earlier value: the cat's shared qparams need a
    requantization of the sigmoid's output."""
    other = _cat_partner(draw, shape, earlier)
    if other is None:
        return None
    return Step("quantized_decomposed.quantize_per_tensor.default", f"cat(sigmoid, value {other}, dim=1)",
                lambda x, y: torch.cat([torch.sigmoid(x), y], dim=1),
                requantizations("aten.sigmoid.default") + requantizations(REQUANTIZE), other=other)


@builder("aten.bmm.default")
def _bmm(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step:
    _, c, h, w = shape
    return Step("aten.bmm.default", "bmm(x, x^T)",
                lambda x, _: torch.bmm(x.reshape(c, h, w), x.reshape(c, h, w).transpose(1, 2)).reshape(1, c, h, h),
                requantizations("aten.bmm.default"), own_qparams=True)


@builder("aten.view_copy.default", "aten.permute_copy.default")
def _move(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step:
    if draw.integer(0, 1):
        order = draw.choice([(0, 1, 3, 2), (0, 2, 1, 3), (0, 3, 2, 1)])
        return Step("aten.permute_copy.default", f"permute{order}", lambda x, _: x.permute(*order),
                    requantizations("aten.permute_copy.default"))
    _, c, h, w = shape
    target = draw.choice([(1, c, w, h), (1, c * h, w, 1), (1, 1, c, h * w)])
    return Step("aten.view_copy.default", f"reshape{target}", lambda x, _: x.reshape(target),
                requantizations("aten.view_copy.default"))


@builder("aten.slice_copy.Tensor", "aten.select_copy.int", "aten.squeeze_copy.dims", "aten.unsqueeze_copy.default")
def _index(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step | None:
    dim = draw.integer(1, 3)
    size = shape[dim]
    if draw.integer(0, 1) or size == 1:
        start = draw.integer(0, size - 1)
        end = draw.integer(start + 1, size)
        return Step("aten.slice_copy.Tensor", f"slice(dim {dim}, {start}:{end})",
                    lambda x, _: x.narrow(dim, start, end - start),
                    requantizations("aten.slice_copy.Tensor"))
    ones = [d for d in (1, 2, 3) if shape[d] == 1]
    if ones and draw.integer(0, 1):
        one = draw.choice(ones)
        return Step("aten.squeeze_copy.dims", f"squeeze({one}).unsqueeze({one})",
                    lambda x, _: x.squeeze(one).unsqueeze(one),
                    requantizations("aten.squeeze_copy.dims"))
    index = draw.integer(0, size - 1)
    return Step("aten.select_copy.int", f"select(dim {dim}, {index}).unsqueeze({dim})",
                lambda x, _: x.select(dim, index).unsqueeze(dim),
                requantizations("aten.select_copy.int"))


@builder("aten.constant_pad_nd.default", "aten.reflection_pad2d.default", "aten.reflection_pad1d.default")
def _pad(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step | None:
    _, _, h, w = shape
    pads = tuple(draw.integer(0, 2) for _ in range(4))
    mode = draw.choice(["constant", "reflect", "reflect1d"])
    if mode == "reflect1d":
        _, c, h, w = shape
        left, right = pads[:2]
        if max(left, right) >= w:
            return None
        return Step("aten.reflection_pad1d.default", f"pad({left}, {right}) reflect 1d",
                    lambda x, _: F.pad(x.reshape(1, c * h, w), (left, right), mode="reflect").reshape(
                        1, c, h, w + left + right),
                    requantizations("aten.reflection_pad1d.default"))
    if mode == "reflect" and (max(pads[:2]) >= w or max(pads[2:]) >= h):
        return None
    name = "aten.constant_pad_nd.default" if mode == "constant" else "aten.reflection_pad2d.default"
    return Step(name, f"pad{pads} {mode}", lambda x, _: F.pad(x, pads, mode=mode), requantizations(name))


@builder("aten.upsample_nearest2d.vec", "aten.upsample_bilinear2d.vec")
def _upsample(draw: Draw, shape: Shape, earlier: list[Shape]) -> Step | None:
    if max(shape[2:]) * 2 > 2 * MAX_SIDE:
        return None
    mode = draw.choice(["nearest", "bilinear"])
    name = "aten.upsample_nearest2d.vec" if mode == "nearest" else "aten.upsample_bilinear2d.vec"
    return Step(name, f"upsample x2 {mode}", lambda x, _: F.interpolate(x, scale_factor=2, mode=mode),
                requantizations(name))


# Registered operators no builder here produces, and why.
NOT_FUZZED: dict[str, str] = {}


class FuzzModel(nn.Module):
    """Applies the steps in order; value 0 is the input, value i + 1 the output of step i."""

    def __init__(self, steps: list[Step]) -> None:
        super().__init__()
        self.steps = steps
        self.layers = nn.ModuleList(step.module for step in steps if step.module is not None)

    def values(self, x: torch.Tensor, start: int = 0, given: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Every value for input `x`; with `given` (the values up to `start`), only the later ones are recomputed."""
        values = [x] if given is None else list(given[: start + 1])
        for step in self.steps[start if given is not None else 0:]:
            other = values[step.other] if step.other is not None else None
            values.append(step.apply(values[-1], other))
        return values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values(x)[-1]


def _range_scale(batches: list[torch.Tensor]) -> float:
    """The int8 scale covering every value of `batches` and zero (what a min/max observer would choose)."""
    low = min(0.0, min(float(b.min()) for b in batches))
    high = max(0.0, max(float(b.max()) for b in batches))
    return (high - low) / 255


def error_budget(model: FuzzModel, calibration: list[torch.Tensor], sample: torch.Tensor) -> float:
    """The largest output error the per-op tolerance allows for `sample`, in the output's own units.

    Every requantizing operator may be off by one step of its output scale (fixed-point against float requantization);
    that error reaches the
    output scaled by the model's local gain from that value on (the max row sum of |d output / d value|, by
    autograd on the float model at `sample`). Scales are over-estimated from the calibration ranges of the
    operator's output and inputs (operators sharing their input's qparams have its scale).
    """
    with torch.no_grad():
        ranges = [_range_scale(list(batch)) for batch in zip(*(model.values(x) for x in calibration), strict=True)]
        values = model.values(sample)
    budget = 0.0
    for index, step in enumerate(model.steps):
        if not step.requantizes:
            continue
        value = index + 1

        def rest(v: torch.Tensor, value: int = value) -> torch.Tensor:
            return model.values(sample, value, [*values[:value], v])[-1]

        jacobian = torch.autograd.functional.jacobian(rest, values[value], vectorize=True).reshape(
            values[-1].numel(), -1)
        before = torch.autograd.functional.jacobian(
            lambda v, value=value: model.values(sample, value - 1, [*values[: value - 1], v])[-1],
            values[value - 1], vectorize=True).reshape(values[-1].numel(), -1)
        gain, gain_before = (float(j.abs().sum(dim=1).max()) for j in (jacobian, before))
        inputs = max(ranges[value - 1], ranges[step.other] if step.other is not None else 0.0)
        scale = max(ranges[value], step.fixed_scale or 0.0) if step.own_qparams else max(ranges[value], inputs)
        # The output's own rounding; a composite step's inner requantizations before it, at worst at the larger
        # scale and gain of its input and output.
        budget += gain * scale + (step.requantizes - 1) * max(gain, gain_before) * max(scale, inputs)
    return budget


@dataclass
class FuzzCase:
    shape: Shape
    steps: list[Step] = field(default_factory=list)

    @property
    def requantizing_ops(self) -> int:
        return max(1, sum(step.requantizes for step in self.steps))

    def __str__(self) -> str:
        return f"input {list(self.shape)}: " + " -> ".join(step.description for step in self.steps)


def draw_case(draw: Draw, names: Sequence[str] | None = None) -> FuzzCase:
    """A random model (1 to MAX_STEPS steps) over operators `names` (default: every builder)."""
    torch.manual_seed(draw.integer(0, 2**16))
    names = sorted(names if names is not None else BUILDERS)
    shape = (1, draw.integer(1, MAX_CHANNELS), draw.integer(1, MAX_SIDE), draw.integer(1, MAX_SIDE))
    case = FuzzCase(shape)
    shapes = [shape]
    current = torch.zeros(shape)
    values = [current]
    for _ in range(draw.integer(1, MAX_STEPS)):
        for _attempt in range(8):
            step = BUILDERS[draw.choice(names)](draw, tuple(current.shape), shapes)
            if step is None:
                continue
            other = values[step.other] if step.other is not None else None
            result = step.apply(current, other)
            if result.dim() != 4 or result.numel() == 0 or result.numel() > 4 * MAX_CHANNELS * MAX_SIDE**2:
                continue
            case.steps.append(step)
            current = result
            values.append(current)
            shapes.append(tuple(current.shape))
            break
    return case


@dataclass
class Outcome:
    """What one fuzzed graph did: partitions, delegated operators, error in output steps."""

    num_partitions: int
    delegated: int
    operators: int
    max_error_steps: float
    tolerance_steps: float
    delegated_targets: tuple[str, ...] = ()
    # (target, reason) of every operator left on the CPU
    cpu_reasons: tuple[tuple[str, str], ...] = ()


def check_graph(case: FuzzCase, directory: Path) -> Outcome:
    """Quantizes, lowers and runs `case`; asserts the property (module docstring). Returns what happened."""
    import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)
    from executorch.exir import to_edge_transform_and_lower

    from neutron_backend.compile_spec import generate_neutron_compile_spec
    from neutron_backend.partitioner import NeutronPartitioner
    from neutron_backend.quantizer.calibration import quantize_model, random_batches
    from neutron_backend.runtime import cross_check, emulate, load_pte
    from neutron_backend.verify import verify

    model = FuzzModel(case.steps).eval()
    example = (torch.randn(case.shape, generator=torch.Generator().manual_seed(0)),)
    calibration = random_batches(example, 3)
    quantized = quantize_model(model, example, calibration_batches=calibration, progress=False)
    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700"))
    edge = to_edge_transform_and_lower(torch.export.export(quantized, example), partitioner=[partitioner])
    kept = copy.deepcopy(edge)
    pte = directory / "fuzz.pte"
    pte.write_bytes(edge.to_executorch().buffer)
    program = load_pte(pte)
    samples = random_batches(example, NUM_SAMPLES, seed=99)
    result = verify(program, quantized, samples)
    (scale,) = result.output_scales
    # One step for the output's own rounding at least; more only as the propagated budget allows (computed only
    # when needed: it takes a Jacobian per operator). 1e-6 absorbs float32 rounding of the budget.
    tolerance = 1.0
    if result.max_error_steps > tolerance:
        budget = max(error_budget(model, [b[0] for b in calibration], s[0]) for s in samples)
        tolerance = max(tolerance, round(budget / scale, 4) + 1e-6)
    report = partitioner.report
    outcome = Outcome(report.num_partitions, sum(e.delegated for e in report.nodes if not _plumbing(e.target)),
                      sum(1 for e in report.nodes if not _plumbing(e.target)), result.max_error_steps, tolerance,
                      tuple(sorted({e.target for e in report.nodes if e.delegated and not _plumbing(e.target)})),
                      tuple((e.target, e.reason) for e in report.nodes if not e.delegated and not _plumbing(e.target)))
    assert result.max_error_steps <= tolerance, f"{case}: {result} (tolerance {tolerance:.3f} steps)"
    if report.num_partitions:
        for sample in samples:
            # The shim runs our exact engine, the emulator LiteRT's reference kernels: two independent oracles.
            for got, want in zip(program(*sample), emulate(kept, *sample, kernels="reference"), strict=True):
                assert torch.equal(got, want), f"{case}: shim and emulator differ by {(got - want).abs().max()}"
        engines = cross_check(kept)
        assert engines.identical, f"{case}: exact engine vs LiteRT reference kernels on random int8: {engines}"
    return outcome


def _plumbing(target: str) -> bool:
    return target.startswith("quantized_decomposed.") or target == "getitem"
