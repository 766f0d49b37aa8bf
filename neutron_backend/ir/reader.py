"""Reading a Neutron IR (an int8 TFLite flatbuffer) back: its tensors, operators and their MACs.

What the memory planner and the per-layer profile need, and nothing else: tensor shapes, byte sizes and whether a
tensor is constant (has data in the flatbuffer), and per operator its builtin name, inputs and outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ai_edge_litert import schema_py_generated as schema

_OPERATOR_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
_TYPE_NAMES = {code: name.lower() for name, code in vars(schema.TensorType).items() if not name.startswith("_")}
_ITEM_BYTES = {"int8": 1, "uint8": 1, "bool": 1, "int16": 2, "float16": 2, "int32": 4, "float32": 4, "int64": 8,
               "float64": 8}


@dataclass(frozen=True)
class IRTensor:
    """One tensor of the IR. `constant`: its data is in the flatbuffer (weights, biases, shapes, pad values)."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    constant: bool

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.elements * _ITEM_BYTES.get(self.dtype, 1)


@dataclass(frozen=True)
class IROperator:
    """One operator of the IR: its builtin name (e.g. `CONV_2D`) and tensor indices (-1: an omitted input)."""

    index: int
    opcode: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class IRGraph:
    """The single subgraph of a Neutron IR model."""

    tensors: tuple[IRTensor, ...]
    operators: tuple[IROperator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def operator_inputs(self, operator: IROperator) -> list[IRTensor]:
        return [self.tensors[i] for i in operator.inputs if i >= 0]

    def operator_outputs(self, operator: IROperator) -> list[IRTensor]:
        return [self.tensors[i] for i in operator.outputs if i >= 0]

    def macs(self, operator: IROperator) -> int:
        """Multiply-accumulates of `operator`, from its tensor shapes (0 for operators without a weight product)."""
        inputs = [self.tensors[i] if i >= 0 else None for i in operator.inputs]
        output = self.tensors[operator.outputs[0]]
        if operator.opcode == "CONV_2D":  # weights OHWI: every output element sums kH x kW x Cin products
            return output.elements * math.prod(inputs[1].shape[1:])
        if operator.opcode == "DEPTHWISE_CONV_2D":  # weights [1, kH, kW, C]: kH x kW products per output element
            return output.elements * math.prod(inputs[1].shape[1:3])
        if operator.opcode == "TRANSPOSE_CONV":  # inputs: output shape, weights OHWI, data; scattered per input
            return inputs[2].elements * math.prod(inputs[1].shape[:3])
        if operator.opcode == "FULLY_CONNECTED":  # weights [out, in]
            return output.elements * inputs[1].shape[-1]
        if operator.opcode == "BATCH_MATMUL":  # [.., M, K] x [.., K, N] (no adjoint in our IR)
            return output.elements * inputs[0].shape[-1]
        return 0


def read_ir(tflite: bytes) -> IRGraph:
    """The tensors and operators of the (single) subgraph of the TFLite model `tflite`.

    Raises ValueError when `tflite` is not a TFLite flatbuffer with exactly one subgraph.
    """
    data = bytes(tflite)
    if data[4:8] != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (no 'TFL3' identifier)")
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    if len(model.subgraphs or ()) != 1:
        raise ValueError(f"a Neutron IR has one subgraph, this model has {len(model.subgraphs or ())}")
    graph = model.subgraphs[0]
    buffers = model.buffers or []
    tensors = []
    for index, tensor in enumerate(graph.tensors or ()):
        buffer = buffers[tensor.buffer] if 0 < tensor.buffer < len(buffers) else None
        data_bytes = getattr(buffer, "data", None)
        constant = data_bytes is not None and len(data_bytes) > 0
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        shape = tuple(int(d) for d in np.asarray(tensor.shape if tensor.shape is not None else []).reshape(-1))
        tensors.append(IRTensor(index, name, shape, _TYPE_NAMES.get(tensor.type, "int8"), constant))
    operators = []
    for index, operator in enumerate(graph.operators or ()):
        code = model.operatorCodes[operator.opcodeIndex]
        opcode = _OPERATOR_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        operators.append(IROperator(index, opcode, _indices(operator.inputs), _indices(operator.outputs)))
    return IRGraph(tuple(tensors), tuple(operators), _indices(graph.inputs), _indices(graph.outputs))


def _indices(values: object) -> tuple[int, ...]:
    return () if values is None else tuple(int(v) for v in np.asarray(values).reshape(-1))
