"""Reading a Neutron IR flatbuffer (one-subgraph int8 TFLite) into plain tensor and operator descriptions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from neutron_backend.payload import PayloadError

_OPERATOR_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
_ACTIVATION_NAMES = {code: name for name, code in vars(schema.ActivationFunctionType).items()
                     if not name.startswith("_")}
_NUMPY_TYPES = {
    schema.TensorType.INT8: np.int8,
    schema.TensorType.UINT8: np.uint8,
    schema.TensorType.INT16: np.int16,
    schema.TensorType.INT32: np.int32,
    schema.TensorType.INT64: np.int64,
    schema.TensorType.FLOAT32: np.float32,
    schema.TensorType.BOOL: np.bool_,
}


@dataclass(frozen=True)
class Tensor:
    """One tensor of the subgraph: static shape, dtype, quantization (per-tensor values are 1-element arrays)
    and, for a constant, its data."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scales: np.ndarray  # float32
    zero_points: np.ndarray  # int64
    quantized_dimension: int
    data: np.ndarray | None

    @property
    def scale(self) -> float:
        """The per-tensor scale (the first one of a per-channel tensor)."""
        return float(self.scales[0]) if self.scales.size else 0.0

    @property
    def zero_point(self) -> int:
        """The per-tensor zero point."""
        return int(self.zero_points[0]) if self.zero_points.size else 0


@dataclass(frozen=True)
class Operator:
    """One operator: its builtin name, input tensors (None for an omitted optional input), outputs, options."""

    name: str
    inputs: tuple[Tensor | None, ...]
    outputs: tuple[Tensor, ...]
    options: Any

    def activation(self) -> str:
        """The fused activation's name (``NONE`` when the options have none)."""
        code = getattr(self.options, "fusedActivationFunction", schema.ActivationFunctionType.NONE)
        return _ACTIVATION_NAMES.get(code, str(code))


@dataclass(frozen=True)
class Graph:
    """The subgraph: tensors, operators in execution order, input and output tensor indices."""

    tensors: tuple[Tensor, ...]
    operators: tuple[Operator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def _tensor(index: int, tensor: Any, buffers: list[Any]) -> Tensor:
    if tensor.type not in _NUMPY_TYPES:
        raise PayloadError(f"tensor {index}: TFLite type {tensor.type} is not supported by the exact engine")
    dtype = np.dtype(_NUMPY_TYPES[tensor.type])
    shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
    quantization = tensor.quantization
    scale_values = getattr(quantization, "scale", None)
    zero_point_values = getattr(quantization, "zeroPoint", None)
    scales = np.asarray(scale_values if scale_values is not None else [], dtype=np.float32)
    zero_points = np.asarray(zero_point_values if zero_point_values is not None else [], dtype=np.int64)
    if scales.size and not zero_points.size:
        zero_points = np.zeros(scales.size, dtype=np.int64)
    axis = int(getattr(quantization, "quantizedDimension", 0) or 0)
    data = None
    buffer = buffers[tensor.buffer] if 0 <= tensor.buffer < len(buffers) else None
    raw = getattr(buffer, "data", None)
    if raw is not None and len(raw):
        raw = np.asarray(raw, dtype=np.uint8)
        count = int(np.prod(shape, dtype=np.int64))
        if raw.size != count * dtype.itemsize:
            raise PayloadError(f"tensor {index}: buffer of {raw.size} bytes, shape {list(shape)} of {dtype.name} "
                               f"needs {count * dtype.itemsize}")
        data = raw.view(dtype).reshape(shape)
    name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
    return Tensor(index, name, shape, dtype, scales, zero_points, axis, data)


def read_graph(model_bytes: bytes) -> Graph:
    """Returns the subgraph of a one-subgraph TFLite flatbuffer. Raises PayloadError when it cannot be read."""
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    except Exception as exc:  # a corrupted flatbuffer can fail anywhere in the generated reader
        raise PayloadError(f"the payload's TFLite model cannot be read: {exc!r}") from exc
    if not model.subgraphs or len(model.subgraphs) != 1:
        raise PayloadError(f"expected one subgraph, the model has {len(model.subgraphs or [])}")
    subgraph = model.subgraphs[0]
    buffers = list(model.buffers or [])
    tensors = tuple(_tensor(i, t, buffers) for i, t in enumerate(subgraph.tensors or []))
    operators = []
    for position, op in enumerate(subgraph.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        name = _OPERATOR_NAMES.get(builtin, f"builtin {builtin}")
        if name == "CUSTOM":
            raise PayloadError(f"operator {position} is a CUSTOM operator, which the exact engine cannot run")
        operators.append(Operator(
            name=name,
            inputs=tuple(tensors[i] if i >= 0 else None for i in (op.inputs if op.inputs is not None else ())),
            outputs=tuple(tensors[i] for i in (op.outputs if op.outputs is not None else ())),
            options=op.builtinOptions if op.builtinOptions is not None else op.builtinOptions2,
        ))
    return Graph(tensors, tuple(operators), tuple(int(i) for i in subgraph.inputs),
                 tuple(int(i) for i in subgraph.outputs))
