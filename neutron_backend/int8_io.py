"""Int8 model inputs and outputs: a lowered program that takes and returns int8 tensors instead of float32.

A quantized program quantizes each float input on the CPU before its first Neutron partition and dequantizes each
output after its last one. `make_io_int8` removes those boundary nodes with ExecuTorch's own passes
(`executorch.exir.passes.quantize_io_pass.QuantizeInputs` / `QuantizeOutputs`), so the caller exchanges int8 data
with the program directly, e.g. straight from a camera or microphone pipeline that already produces int8, and
reads the NPU's int8 results without a float round trip.

The caller must then quantize each float input and dequantize each output with the qparams returned in
`Int8IO` (the same values are stored in the `.pte` as constant methods `input{i}_scale`, `input{i}_zp`,
`input{i}_quant_min`, `input{i}_quant_max`, `input{i}_dtype` and `output{i}_...`)::

    q_in  = clamp(round(x / scale) + zero_point, quant_min, quant_max)  as int8   (TensorQuantization.quantize)
    y     = (q_out - zero_point) * scale                                          (TensorQuantization.dequantize)

Inputs that are not float32 (e.g. int64 indices) are left as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import Node

from neutron_backend.clusters import target_name

logger = logging.getLogger(__name__)

__all__ = ["Int8IO", "TensorQuantization", "make_io_int8"]


@dataclass(frozen=True)
class TensorQuantization:
    """The affine int8 qparams of one model input or output: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int
    quant_min: int
    quant_max: int
    dtype: torch.dtype

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Returns `x` quantized exactly as the removed quantize node would have (torch's quantized_decomposed
        reference op)."""
        import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers the quantized_decomposed ops

        return torch.ops.quantized_decomposed.quantize_per_tensor(
            x, self.scale, self.zero_point, self.quant_min, self.quant_max, self.dtype)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        """Returns the float32 values the int8 tensor `q` stands for."""
        import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers the quantized_decomposed ops

        return torch.ops.quantized_decomposed.dequantize_per_tensor(
            q, self.scale, self.zero_point, self.quant_min, self.quant_max, self.dtype)


@dataclass(frozen=True)
class Int8IO:
    """The qparams of the int8 inputs and outputs of a program, by position (positions of non-float inputs left
    as they were are absent)."""

    inputs: dict[int, TensorQuantization] = field(default_factory=dict)
    outputs: dict[int, TensorQuantization] = field(default_factory=dict)

    def quantize_inputs(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Returns the model's float inputs as the int8 program expects them (other inputs unchanged)."""
        return tuple(self.inputs[i].quantize(x) if i in self.inputs else x for i, x in enumerate(inputs))

    def dequantize_outputs(self, *outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Returns the int8 program's outputs as float32 (other outputs unchanged)."""
        return tuple(self.outputs[i].dequantize(y) if i in self.outputs else y for i, y in enumerate(outputs))


def _is_op(node: Node, name: str) -> bool:
    return node.op == "call_function" and target_name(node) == f"quantized_decomposed.{name}.default"


def _is_float32(node: Node) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.dtype == torch.float32


def _describe(node: Node) -> str:
    return f"'{node.name}' ({target_name(node) if node.op == 'call_function' else node.op})"


def _float_inputs(program: Any) -> list[int]:
    """Positions of the float32 user inputs; raises ValueError for one that does not go to exactly one quantize."""
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    positions = []
    for position, name in enumerate(program.graph_signature.user_inputs):
        node = placeholders[name]
        if not _is_float32(node):
            continue
        users = list(node.users)
        if len(users) != 1 or not _is_op(users[0], "quantize_per_tensor"):
            raise ValueError(
                f"int8 I/O: float input {position} ('{name}') must feed exactly one quantize_per_tensor node, but it "
                f"feeds {[_describe(user) for user in users]}; quantize the model so that this input is used only by "
                "quantized operators, or compile with int8_io=False")
        positions.append(position)
    return positions


def _dequantized_outputs(program: Any) -> list[int]:
    """Positions of the outputs; raises ValueError for a float32 output that no dequantize_per_tensor produces."""
    output_node = program.graph.output_node()
    positions = []
    for position, value in enumerate(output_node.args[0]):
        if not isinstance(value, Node):
            continue
        if _is_op(value, "dequantize_per_tensor"):
            positions.append(position)
        elif _is_float32(value):
            raise ValueError(
                f"int8 I/O: output {position} is computed in float by {_describe(value)}, not dequantized from int8, "
                "so it has no int8 form; quantize the operators producing it (or leave it out of the model), or "
                "compile with int8_io=False")
    return positions


def _qparams(args: tuple[Any, ...]) -> TensorQuantization:
    scale, zero_point, quant_min, quant_max, dtype = args
    return TensorQuantization(float(scale), int(zero_point), int(quant_min), int(quant_max), dtype)


def make_io_int8(edge: Any) -> tuple[Any, Int8IO]:
    """Makes the `forward` method of `edge` (an EdgeProgramManager from to_edge_transform_and_lower, before
    to_executorch) take its float inputs as int8 and return its outputs as int8.

    Returns the transformed EdgeProgramManager (also modified in place) and the qparams the caller must apply.
    Raises ValueError when a float32 input feeds anything but one quantize node, or a float32 output is not
    produced by a dequantize node.
    """
    from executorch.exir.passes.quantize_io_pass import QuantizeInputs, QuantizeOutputs

    program = edge.exported_program()
    input_positions = _float_inputs(program)
    output_positions = _dequantized_outputs(program)
    quantize_inputs = QuantizeInputs(edge, input_positions)
    quantize_outputs = QuantizeOutputs(edge, output_positions)
    transformed = edge.transform([quantize_inputs, quantize_outputs])
    io = Int8IO(
        inputs={i: _qparams(args) for i, args in quantize_inputs.quant_args.items()},
        outputs={i: _qparams(args) for i, args in quantize_outputs.dequant_args.items()},
    )
    logger.info("int8 I/O: inputs %s, outputs %s", io.inputs, io.outputs)
    return transformed, io
