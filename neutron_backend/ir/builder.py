"""Builder for the Neutron IR: an int8 TFLite flatbuffer with one subgraph.

The model is assembled with the object API of ``ai_edge_litert.schema_py_generated`` (``ModelT`` and friends)
and packed once in :meth:`IRBuilder.finish`. Nothing here hand-writes schema code.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

logger = logging.getLogger(__name__)

# dtype name -> (TFLite TensorType, numpy dtype)
_DTYPES: dict[str, tuple[int, np.dtype]] = {
    "int8": (schema.TensorType.INT8, np.dtype(np.int8)),
    "uint8": (schema.TensorType.UINT8, np.dtype(np.uint8)),
    "int16": (schema.TensorType.INT16, np.dtype(np.int16)),
    "int32": (schema.TensorType.INT32, np.dtype(np.int32)),
    "int64": (schema.TensorType.INT64, np.dtype(np.int64)),
    "float32": (schema.TensorType.FLOAT32, np.dtype(np.float32)),
    "bool": (schema.TensorType.BOOL, np.dtype(np.bool_)),
}

_QUANTIZABLE = ("int8", "uint8", "int16", "int32", "int64")

# Constant data is aligned like the TFLite converter does, so kernels reading int32/float data straight
# from the flatbuffer never see a misaligned pointer.
_BUFFER_ALIGNMENT = 16

# The last operator code that fits the deprecated int8 field; larger codes store this placeholder there.
_DEPRECATED_CODE_LIMIT = schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES

_OPERATORS: dict[str, int] = {
    name: code for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")
}
_OPTIONS: dict[str, int] = {
    name: code for name, code in vars(schema.BuiltinOptions).items() if not name.startswith("_")
}
_OPTIONS2: dict[str, int] = {
    name: code for name, code in vars(schema.BuiltinOptions2).items() if not name.startswith("_")
}


class _AlignedBufferT(schema.BufferT):
    """A ``BufferT`` whose data vector starts on a ``_BUFFER_ALIGNMENT`` boundary.

    The generated ``BufferT.Pack`` aligns a uint8 vector to 1 byte only.
    """

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 - overrides the generated method
        """Pack the buffer; returns its flatbuffer offset."""
        if self.data is None:
            return super().Pack(builder)
        payload = self.data.tobytes()
        builder.StartVector(1, len(payload), _BUFFER_ALIGNMENT)
        builder.head -= len(payload)
        builder.Bytes[builder.head : builder.head + len(payload)] = payload
        data = builder.EndVector()
        schema.BufferStart(builder)
        schema.BufferAddData(builder, data)
        return schema.BufferEnd(builder)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


class IRBuilder:
    """Incrementally builds a single-subgraph, version-3 TFLite model.

    Tensors and operators are added in order; indices returned by :meth:`add_tensor` are used to wire
    operators and the subgraph inputs/outputs. Call :meth:`finish` to get the flatbuffer bytes.
    """

    def __init__(self, description: str = "neutron partition") -> None:
        self._description = description
        # Buffer 0 is the empty sentinel TFLite requires; non-constant tensors point at it.
        self._buffers: list[schema.BufferT] = [schema.BufferT()]
        self._tensors: list[schema.TensorT] = []
        self._constant: list[bool] = []
        self._operators: list[schema.OperatorT] = []
        self._opcodes: list[schema.OperatorCodeT] = []
        self._opcode_index: dict[int, int] = {}
        self._inputs: list[int] = []
        self._outputs: list[int] = []

    # -- tensors -------------------------------------------------------------------------------------------

    def add_tensor(
        self,
        name: str,
        shape: Sequence[int],
        dtype: str,
        *,
        scale: float | Sequence[float] | None = None,
        zero_point: int | Sequence[int] | None = None,
        quantized_dimension: int = 0,
        data: np.ndarray | None = None,
    ) -> int:
        """Add a tensor (a constant one when ``data`` is given).

        ``scale`` as a sequence means per-channel quantization along ``quantized_dimension``;
        ``zero_point`` is then a sequence of the same length or a scalar broadcast to every channel.
        A missing ``zero_point`` with a ``scale`` means 0.

        Returns the index of the new tensor.
        Raises ValueError for an unknown dtype, a bad shape, bad quantization parameters or data that does not
        match the shape or does not fit the dtype.
        """
        if dtype not in _DTYPES:
            raise ValueError(f"tensor {name!r}: dtype {dtype!r} is not supported; valid: {sorted(_DTYPES)}")
        tensor_type, np_dtype = _DTYPES[dtype]
        dims = tuple(shape)
        if not all(_is_int(d) and d >= 0 for d in dims):
            raise ValueError(f"tensor {name!r}: shape {dims} must be non-negative integers")
        dims = tuple(int(d) for d in dims)

        tensor = schema.TensorT()
        tensor.name = name
        tensor.shape = list(dims)
        tensor.type = tensor_type
        tensor.quantization = self._quantization(name, dims, dtype, scale, zero_point, quantized_dimension)

        if data is not None:
            tensor.buffer = len(self._buffers)
            buffer = _AlignedBufferT()
            buffer.data = self._constant_bytes(name, dims, np_dtype, data)
            self._buffers.append(buffer)
        self._tensors.append(tensor)
        self._constant.append(data is not None)
        return len(self._tensors) - 1

    def add_constant(self, name: str, data: np.ndarray, dtype: str | None = None, **quant: object) -> int:
        """Add a constant tensor shaped like ``data``.

        ``dtype`` defaults to the name of ``data``'s numpy dtype; ``quant`` takes the keyword arguments
        ``scale``, ``zero_point`` and ``quantized_dimension`` of :meth:`add_tensor`.

        Returns the index of the new tensor.
        """
        array = np.asarray(data)
        return self.add_tensor(name, array.shape, dtype or array.dtype.name, data=array, **quant)

    def tensor_quantization(self, tensor_id: int) -> tuple[float, int]:
        """(scale, zero point) of a per-tensor quantized tensor."""
        self._check_tensor_id(tensor_id, "tensor")
        quantization = self._tensors[tensor_id].quantization
        if quantization is None or not quantization.scale or len(quantization.scale) != 1:
            raise ValueError(f"tensor {tensor_id} ({self._tensors[tensor_id].name!r}) is not per-tensor quantized")
        return float(quantization.scale[0]), int(quantization.zeroPoint[0])

    @property
    def num_operators(self) -> int:
        return len(self._operators)

    def tensor_shape(self, tensor_id: int) -> tuple[int, ...]:
        """Returns the shape of tensor ``tensor_id``."""
        self._check_tensor_id(tensor_id, "tensor_shape")
        return tuple(self._tensors[tensor_id].shape)

    @staticmethod
    def _quantization(
        name: str,
        dims: tuple[int, ...],
        dtype: str,
        scale: float | Sequence[float] | None,
        zero_point: int | Sequence[int] | None,
        quantized_dimension: int,
    ) -> schema.QuantizationParametersT | None:
        """Returns the quantization parameters for a tensor, or None for an unquantized one."""
        if scale is None:
            if zero_point is not None:
                raise ValueError(f"tensor {name!r}: zero_point {zero_point!r} given without a scale")
            return None
        if dtype not in _QUANTIZABLE:
            raise ValueError(
                f"tensor {name!r}: dtype {dtype!r} cannot be quantized; valid: {list(_QUANTIZABLE)}"
            )

        per_channel = not isinstance(scale, int | float | np.number)
        scales = [float(s) for s in scale] if per_channel else [float(scale)]
        if not scales or not all(math.isfinite(s) and s > 0 for s in scales):
            raise ValueError(f"tensor {name!r}: scale {scale!r} must be finite and > 0")

        if zero_point is None:
            zero_points = [0] * len(scales)
        elif _is_int(zero_point):
            zero_points = [int(zero_point)] * len(scales)
        else:
            zero_points = list(zero_point)
            if not all(_is_int(z) for z in zero_points):
                raise ValueError(f"tensor {name!r}: zero_point {zero_point!r} must be integers")
            zero_points = [int(z) for z in zero_points]
        if len(zero_points) != len(scales):
            raise ValueError(
                f"tensor {name!r}: {len(zero_points)} zero points for {len(scales)} scales; "
                "give one per scale or a single one"
            )
        info = np.iinfo(_DTYPES[dtype][1])
        bad = [z for z in zero_points if not info.min <= z <= info.max]
        if bad:
            raise ValueError(
                f"tensor {name!r}: zero_point {bad[0]} outside the {dtype} range [{info.min}, {info.max}]"
            )

        if per_channel:
            if not 0 <= quantized_dimension < len(dims):
                raise ValueError(
                    f"tensor {name!r}: quantized_dimension {quantized_dimension} "
                    f"out of range for rank {len(dims)}"
                )
            if len(scales) != dims[quantized_dimension]:
                raise ValueError(
                    f"tensor {name!r}: {len(scales)} per-channel scales but dimension "
                    f"{quantized_dimension} of shape {dims} has {dims[quantized_dimension]} channels"
                )

        quant = schema.QuantizationParametersT()
        quant.scale = scales
        quant.zeroPoint = zero_points
        quant.quantizedDimension = quantized_dimension if per_channel else 0
        return quant

    @staticmethod
    def _constant_bytes(name: str, dims: tuple[int, ...], np_dtype: np.dtype, data: np.ndarray) -> np.ndarray:
        """Returns ``data`` as the flat uint8 bytes of a C-contiguous little-endian array of ``np_dtype``."""
        array = np.asarray(data)
        if array.shape != dims:
            raise ValueError(f"tensor {name!r}: data shape {array.shape} does not match tensor shape {dims}")
        cast = np.ascontiguousarray(array.astype(np_dtype.newbyteorder("<")))
        # A silent wrap-around (e.g. 200 into int8) would corrupt weights; only float32 may round.
        if np_dtype.kind != "f" and not np.array_equal(cast.reshape(dims), array):
            raise ValueError(
                f"tensor {name!r}: data of dtype {array.dtype} does not fit {np_dtype.name} exactly"
            )
        return cast.reshape(-1).view(np.uint8)

    # -- operators -----------------------------------------------------------------------------------------

    def add_operator(
        self, op: str, inputs: Sequence[int], outputs: Sequence[int], options: object | None = None
    ) -> int:
        """Add a builtin operator.

        ``op`` is a ``BuiltinOperator`` name such as ``"CONV_2D"``; ``options`` a schema ``*OptionsT`` object
        (its union type is derived from its class). An input index of -1 marks an omitted optional input.

        Returns the index of the new operator.
        """
        if op not in _OPERATORS:
            raise ValueError(f"operator {op!r} is not a TFLite BuiltinOperator name (e.g. 'CONV_2D')")
        for i in inputs:
            if i != -1:
                self._check_tensor_id(i, f"{op} input")
        if not outputs:
            raise ValueError(f"operator {op}: needs at least one output")
        for i in outputs:
            self._check_tensor_id(i, f"{op} output")

        operator = schema.OperatorT()
        operator.opcodeIndex = self._opcode(_OPERATORS[op])
        operator.inputs = [int(i) for i in inputs]
        operator.outputs = [int(i) for i in outputs]
        if options is not None:
            option_name = type(options).__name__.removesuffix("T")
            if getattr(schema, type(options).__name__, None) is not type(options):
                raise ValueError(f"operator {op}: options {options!r} is not a schema *OptionsT object")
            if option_name in _OPTIONS:
                operator.builtinOptionsType = _OPTIONS[option_name]
                operator.builtinOptions = options
            elif option_name in _OPTIONS2:
                operator.builtinOptions2Type = _OPTIONS2[option_name]
                operator.builtinOptions2 = options
            else:
                raise ValueError(f"operator {op}: {type(options).__name__} is not a builtin options type")
        self._operators.append(operator)
        return len(self._operators) - 1

    def _opcode(self, code: int) -> int:
        """Returns the index of the operator code entry for builtin ``code``, adding it on first use."""
        if code not in self._opcode_index:
            entry = schema.OperatorCodeT()
            entry.builtinCode = code
            entry.deprecatedBuiltinCode = min(code, _DEPRECATED_CODE_LIMIT)
            entry.version = 1
            self._opcode_index[code] = len(self._opcodes)
            self._opcodes.append(entry)
        return self._opcode_index[code]

    # -- graph interface -----------------------------------------------------------------------------------

    def set_inputs(self, tensor_ids: Sequence[int]) -> None:
        """Set the subgraph inputs (in delegate order). Constant tensors cannot be inputs."""
        for i in tensor_ids:
            self._check_tensor_id(i, "subgraph input")
            if self._constant[i]:
                raise ValueError(f"subgraph input {i} ({self._tensors[i].name!r}) is a constant tensor")
        self._inputs = [int(i) for i in tensor_ids]

    def set_outputs(self, tensor_ids: Sequence[int]) -> None:
        """Set the subgraph outputs (in delegate order)."""
        for i in tensor_ids:
            self._check_tensor_id(i, "subgraph output")
        self._outputs = [int(i) for i in tensor_ids]

    def finish(self) -> bytes:
        """Returns the model as TFLite flatbuffer bytes (schema version 3, one subgraph)."""
        if not self._outputs:
            raise ValueError("the subgraph has no outputs; call set_outputs() before finish()")
        subgraph = schema.SubGraphT()
        subgraph.name = "main"
        subgraph.tensors = self._tensors
        subgraph.inputs = self._inputs
        subgraph.outputs = self._outputs
        subgraph.operators = self._operators

        model = schema.ModelT()
        model.version = 3
        model.description = self._description
        model.operatorCodes = self._opcodes
        model.subgraphs = [subgraph]
        model.buffers = self._buffers

        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        result = bytes(builder.Output())
        logger.debug(
            "built IR %r: %d tensors, %d operators, %d bytes",
            self._description,
            len(self._tensors),
            len(self._operators),
            len(result),
        )
        return result

    def _check_tensor_id(self, tensor_id: int, what: str) -> None:
        if not _is_int(tensor_id) or not 0 <= tensor_id < len(self._tensors):
            raise ValueError(f"{what}: tensor index {tensor_id!r} out of range [0, {len(self._tensors)})")
