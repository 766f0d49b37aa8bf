"""Whether a quantized reference is the model a `.pte` was lowered from, judged by quantization parameters.

Error in output steps and top-1 agreement only mean something against the very quantized model the `.pte` came from:
a model quantized again with other calibration data has other scales, and every step count against it is silently
wrong. `check_reference` compares the qparams the `.pte` uses where int8 meets the CPU - each quantize/dequantize
kernel left on the CPU (the model's inputs and outputs among them) and each input and output of every Neutron
emulation payload (the delegate boundaries) - with the quantize/dequantize qparams of the reference, and refuses a
reference that lacks any of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["QParams", "ReferenceMismatchError", "check_reference", "pte_qparams", "reference_qparams"]

# Scales are float32 values stored as doubles on both sides; this absorbs a float32 round trip.
_SCALE_RELATIVE_TOLERANCE = 1e-6
_QDQ_KERNELS = ("quantize_per_tensor", "dequantize_per_tensor")


class ReferenceMismatchError(ValueError):
    """The reference model is not the quantized model the `.pte` was lowered from (its qparams differ)."""


@dataclass(frozen=True)
class QParams:
    """A per-tensor scale and zero point, and where in the `.pte` (or reference) it was found."""

    scale: float
    zero_point: int
    where: str

    def matches(self, other: QParams) -> bool:
        return self.zero_point == other.zero_point and math.isclose(self.scale, other.scale,
                                                                    rel_tol=_SCALE_RELATIVE_TOLERANCE)


def pte_qparams(pte_path: str | Path) -> list[QParams]:
    """The qparams of every CPU quantize/dequantize kernel call and every emulation-payload input and output in the
    `forward` method of the `.pte` at `pte_path`."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.schema import DataLocation

    from neutron_backend.payload import EmulationPayload, read_payload

    program = deserialize_pte_binary(Path(pte_path).read_bytes()).program
    plan = next(p for p in program.execution_plan if p.name == "forward")
    found: list[QParams] = []
    for chain in plan.chains:
        for number, instruction in enumerate(chain.instructions):
            op_index = getattr(instruction.instr_args, "op_index", None)
            if op_index is None:
                continue
            operator = plan.operators[op_index]
            kernel = operator.name.split("::")[-1]
            if kernel not in _QDQ_KERNELS:
                continue
            args = [plan.values[i].val for i in instruction.instr_args.args]
            scale, zero_point = getattr(args[1], "double_val", None), getattr(args[2], "int_val", None)
            if scale is not None and zero_point is not None:
                found.append(QParams(float(scale), int(zero_point), f"CPU {kernel} (instruction {number})"))
    for number, delegate in enumerate(plan.delegates):
        if delegate.processed.location != DataLocation.INLINE:
            continue
        payload = read_payload(program.backend_delegate_data[delegate.processed.index].data)
        if not isinstance(payload, EmulationPayload):
            continue
        for kind, specs in (("input", payload.inputs), ("output", payload.outputs)):
            for spec in specs:
                found.append(QParams(float(spec.scale), int(spec.zero_point),
                                     f"delegate {number} {kind} {spec.arg_index}"))
    return found


def _constant(module: torch.nn.Module, value: object) -> object:
    if isinstance(value, torch.fx.Node) and value.op == "get_attr":
        for part in str(value.target).split("."):
            module = getattr(module, part)
        value = module
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return value


def reference_qparams(reference: torch.nn.Module) -> list[QParams]:
    """The qparams of every per-tensor quantize/dequantize node of a quantized GraphModule."""
    graph = getattr(reference, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        raise ReferenceMismatchError(f"the reference is a {type(reference).__name__}, not a quantized GraphModule "
                                     "(the output of convert_pt2e)")
    found = []
    for node in graph.nodes:
        if node.op != "call_function" or not any(k in str(node.target) for k in _QDQ_KERNELS):
            continue
        scale, zero_point = (_constant(reference, a) for a in node.args[1:3])
        if isinstance(scale, int | float) and isinstance(zero_point, int | float):
            found.append(QParams(float(scale), int(zero_point), node.name))
    return found


def check_reference(pte_path: str | Path, reference: torch.nn.Module, how_to_get_it: str = "") -> None:
    """Raises ReferenceMismatchError unless every qparam the `.pte` uses at its CPU quantize/dequantize kernels and
    delegate boundaries is one of `reference`'s quantize/dequantize qparams. The message names the first
    mismatches and ends with `how_to_get_it`."""
    wanted = reference_qparams(reference)
    if not wanted:
        raise ReferenceMismatchError("the reference has no quantize/dequantize nodes: it is not a quantized model "
                                     f"(convert_pt2e's output). {how_to_get_it}".strip())
    missing = [q for q in pte_qparams(pte_path) if not any(q.matches(w) for w in wanted)]
    if missing:
        shown = "; ".join(f"{q.where}: scale {q.scale:.9g}, zero point {q.zero_point}" for q in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ReferenceMismatchError(
            f"the reference is not the quantized model {pte_path} was lowered from: {len(missing)} of the .pte's "
            f"qparams are not in it ({shown}{more}); its step counts and agreement would be wrong. "
            f"{how_to_get_it}".strip())
