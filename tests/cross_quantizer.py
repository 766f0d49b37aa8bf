"""Graphs quantized by someone else: one registered operator (a tests/fuzz_graphs.py builder) quantized by
XNNPACKQuantizer (per-channel or per-tensor weights) or by hand with random qparams (equal or unequal input and
output, zero points at the int8 range ends, tiny and huge scales), lowered with NeutronPartitioner and run.

The property (`check`): lowering never raises; every operator left on the CPU carries a reason; the .pte is within
the operator's declared requantizations (at least one output step) of the quantized model it was lowered from.
Used by tests/test_cross_quantizer.py (a few graphs per CI run) and bench/cross_quantizer_soak.py (thousands).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from fuzz_graphs import BUILDERS, MAX_CHANNELS, MAX_SIDE, SeededDraw, Step
from numerics import qdq
from torch import nn

from neutron_backend import ops

QUANTIZERS = ("xnnpack_per_channel", "xnnpack_per_tensor", "hand")
QDQ_PREFIX = "quantized_decomposed."


def operator_names() -> list[str]:
    """Every registered operator with a fuzz builder."""
    return sorted(BUILDERS.keys() & {operator.name for operator in ops.operators()})


class HandQuantizedStep(nn.Module):
    """One step between hand-written quantize/dequantize pairs (a binary step takes the input twice)."""

    def __init__(self, step: Step, in_qparams: tuple[float, int], out_qparams: tuple[float, int]) -> None:
        super().__init__()
        self.step, self.in_qparams, self.out_qparams = step, in_qparams, out_qparams
        self.layer = step.module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = qdq(x, *self.in_qparams)
        return qdq(self.step.apply(x, x if self.step.other is not None else None), *self.out_qparams)


class OneStep(nn.Module):
    def __init__(self, step: Step) -> None:
        super().__init__()
        self.step = step
        self.layer = step.module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.step.apply(x, x if self.step.other is not None else None)


def _hand_qparams(rng: random.Random) -> tuple[float, int]:
    scale = rng.choice([1e-4, 2.0 ** rng.randint(-9, -3), rng.uniform(0.005, 0.1), 10.0])
    zero_point = rng.choice([-128, 127, 0, rng.randint(-128, 127)])
    return scale, zero_point


@dataclass
class CrossCase:
    seed: int
    operator: str
    quantizer: str
    step: Step
    shape: tuple[int, ...]
    qparams: tuple[tuple[float, int], tuple[float, int]] | None = None

    def __str__(self) -> str:
        hand = f" qparams in/out {self.qparams}" if self.qparams else ""
        return f"seed {self.seed}: {self.operator} ({self.step.description}) on {self.shape}, {self.quantizer}{hand}"


def draw(seed: int, operator: str, quantizer: str) -> CrossCase | None:
    """The case of `seed` for `operator` quantized by `quantizer`; None when no shape drawn takes the operator."""
    rng = random.Random(seed)
    draw_ = SeededDraw(seed)
    torch.manual_seed(seed)
    for _ in range(8):
        shape = (1, rng.randint(1, MAX_CHANNELS), rng.randint(1, MAX_SIDE), rng.randint(1, MAX_SIDE))
        step = BUILDERS[operator](draw_, shape, [shape])
        if step is not None and (step.other is None or step.other == 0):
            break
    else:
        return None
    qparams = None
    if quantizer == "hand":
        first = _hand_qparams(rng)
        qparams = (first, first if rng.random() < 0.5 else _hand_qparams(rng))
    return CrossCase(seed, operator, quantizer, step, shape, qparams)


@dataclass
class Outcome:
    delegated: int
    operators: int
    max_error_steps: float
    tolerance_steps: float


def _quantized(case: CrossCase, example: tuple[torch.Tensor, ...]) -> nn.Module:
    if case.quantizer == "hand":
        return HandQuantizedStep(case.step, *case.qparams).eval()
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from neutron_backend.quantizer.calibration import random_batches

    config = get_symmetric_quantization_config(is_per_channel=case.quantizer == "xnnpack_per_channel")
    prepared = prepare_pt2e(torch.export.export(OneStep(case.step).eval(), example).module(),
                            XNNPACKQuantizer().set_global(config))
    for batch in random_batches(example, 3):
        prepared(*batch)
    return convert_pt2e(prepared)


def check(case: CrossCase, directory: Path) -> Outcome:
    """Lowers and runs `case`; asserts the property of the module docstring. Returns what happened."""
    import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)
    from executorch.exir import to_edge_transform_and_lower

    from neutron_backend.compile_spec import generate_neutron_compile_spec
    from neutron_backend.partitioner import NeutronPartitioner
    from neutron_backend.quantizer.calibration import random_batches
    from neutron_backend.runtime import load_pte

    example = (torch.randn(case.shape, generator=torch.Generator().manual_seed(case.seed)),)
    quantized = _quantized(case, example)
    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700"))
    edge = to_edge_transform_and_lower(torch.export.export(quantized, example), partitioner=[partitioner])
    pte = directory / "cross.pte"
    pte.write_bytes(edge.to_executorch().buffer)
    program = load_pte(pte)
    entries = [e for e in partitioner.report.nodes if not e.target.startswith(QDQ_PREFIX) and e.target != "getitem"]
    silent = [e.name for e in entries if not e.delegated and not e.reason]
    assert not silent, f"{case}: left on the CPU without a reason: {silent}"
    scale = _output_scale(quantized, case)
    # One output step per requantizing operator the step declares (at least one: the output's own rounding); a
    # float output (the quantizer left the operator alone) runs on the CPU as the reference does: float rounding.
    tolerance = float(max(1, case.step.requantizes)) if scale is not None else 1e-5
    worst = 0.0
    for sample in random_batches(example, 2, seed=case.seed + 1):
        (got,) = program(*sample)
        want = quantized(*sample)
        error = float((got - want).abs().max())
        worst = max(worst, round(error / scale, 4) if scale is not None else error)
    delegated = sum(e.delegated for e in entries)
    assert worst <= tolerance, (f"{case}: {'delegated' if delegated else 'CPU-only'} result {worst} "
                                f"{'output steps' if scale is not None else ''} off (tolerance {tolerance}):\n"
                                f"{partitioner.report}")
    return Outcome(delegated, len(entries), worst, tolerance)


# Float operators that never widen a difference (|f(a) - f(b)| <= |a - b|).
_NON_EXPANSIVE = {"relu", "relu6", "hardtanh", "clamp"}


def _output_scale(quantized: nn.Module, case: CrossCase) -> float | None:
    """The scale of the reference's output quantization; None when its output is float all the way.

    An output computed in float by non-expansive operators from a dequantized value (XNNPACKQuantizer leaves the
    relu6 after a convolution in float) carries that value's difference unchanged: its steps count."""
    if case.qparams is not None:
        return case.qparams[1][0]
    from neutron_backend.verify import output_scales

    try:
        (scale,) = output_scales(quantized)
    except ValueError:
        return _float_tail_scale(quantized)
    return scale


def _float_tail_scale(quantized: nn.Module) -> float | None:
    """The scale of the dequantize the single output reaches through non-expansive float operators, or None."""
    (output,) = [n for n in quantized.graph.nodes if n.op == "output"]
    results = output.args[0]
    if isinstance(results, (tuple, list)):
        if len(results) != 1:
            return None
        results = results[0]
    node = results
    while isinstance(node, torch.fx.Node) and node.op == "call_function" and hasattr(node.target, "_schema"):
        name = node.target._schema.name.split("::")[-1]
        if name == "dequantize_per_tensor":
            return float(node.args[1])
        if name not in _NON_EXPANSIVE:
            return None
        node = node.args[0]
    return None
