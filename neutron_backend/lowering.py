"""Partition -> Neutron IR: walks one partition's edge program and asks each operator module to convert its node.

Values inside the IR are int8 tensors. A channels-first image tensor (NCHW in torch) lives in the IR as NHWC;
`_Value.channels_last` records which layout a tensor is in, and a TRANSPOSE is inserted (once per value) when a
consumer needs the other layout.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from ai_edge_litert import schema_py_generated as schema
from torch.export import ExportedProgram
from torch.fx import Node

from neutron_backend import ops
from neutron_backend.clusters import (
    ClusterIndex,
    is_dequantize,
    is_getitem,
    is_quantize,
    op_name,
    read_qparams,
    target_name,
)
from neutron_backend.compile_spec import NeutronCompileOptions
from neutron_backend.ir import IRBuilder, channels_last_perm, to_channels_last_shape
from neutron_backend.ir.formats import FormatMap
from neutron_backend.ops.base import INT32_MAX, QParams, flat_inputs, shape_of
from neutron_backend.ops.shape import CONSTANT_MOVES
from neutron_backend.payload import TensorSpec

logger = logging.getLogger(__name__)

_ACTIVATIONS = {
    None: schema.ActivationFunctionType.NONE,
    "RELU": schema.ActivationFunctionType.RELU,
    "RELU6": schema.ActivationFunctionType.RELU6,
    "RELU_N1_TO_1": schema.ActivationFunctionType.RELU_N1_TO_1,
}


class LoweringError(RuntimeError):
    """A node of a partition could not be expressed in the Neutron IR; `node` names it when one is to blame."""

    def __init__(self, message: str, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node


@dataclass(frozen=True)
class _Value:
    tensor: int
    channels_last: bool
    # Set when a channels-last image was flattened without transposing back: the (C, H, W) it came from, so a
    # linear layer consuming it permutes its weight columns instead (saves a TRANSPOSE).
    flattened_from: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class LoweredPartition:
    """The IR of one partition and the description of its delegate inputs and outputs."""

    tflite: bytes
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    num_operators: int

    @property
    def file_stem(self) -> str:
        """The name under which this partition's intermediates are written (stable for the same IR)."""
        return f"neutron_partition_{hashlib.sha256(self.tflite).hexdigest()[:12]}"


def _torch_dtype_name(dtype: torch.dtype) -> str:
    return {torch.int8: "int8", torch.int32: "int32", torch.uint8: "uint8", torch.float32: "float32"}[dtype]


class ConversionContext:
    """What an operator's `convert(node, ctx)` uses to emit IR: inputs, weights, qparams, outputs, helpers."""

    def __init__(self, program: ExportedProgram, options: NeutronCompileOptions) -> None:
        self.program = program
        self.options = options
        self.builder = IRBuilder(f"neutron partition for {options.target.name}")
        self.index = ClusterIndex(program, ops.is_fusable)
        self.formats = FormatMap(program.graph)
        self.values: dict[Node, _Value] = {}
        # Quantize nodes whose qparams differ from the value they quantize (a value with several quantize users):
        # requantized inside the IR when first used.
        self._to_requantize: dict[Node, _Value] = {}
        self._transposed: dict[tuple[int, bool], int] = {}
        self._names: set[str] = set()

    # -- naming ------------------------------------------------------------------------------------------------

    def name(self, base: str) -> str:
        """A tensor name unique within the IR."""
        name, counter = base, 1
        while name in self._names:
            counter += 1
            name = f"{base}_{counter}"
        self._names.add(name)
        return name

    # -- qparams -----------------------------------------------------------------------------------------------

    def input_qparams(self, node: Node, index: int) -> QParams:
        """Qparams of the node's index-th tensor input (from its dequantize node)."""
        source = flat_inputs(node)[index]
        dequantize = self.index.dequantize_of(source)
        if dequantize is None:
            if source in self.values and source in self.index.cluster_of:
                return self._value_qparams(source)
            raise LoweringError(f"input {index} of '{node.name}' has no quantization parameters")
        return read_qparams(dequantize, self.index.constants)

    def _value_qparams(self, node: Node) -> QParams:
        cluster = self.index.cluster_of[node]
        if node in cluster.auxiliary:
            return self.input_qparams(node, 0)
        return read_qparams(cluster.quantized_outputs[0], self.index.constants)

    def output_qparams(self, node: Node) -> QParams:
        """Qparams of the value the node produces: its cluster's quantize node, or its input's for data movement."""
        cluster = self.index.cluster_of.get(node)
        if cluster is not None and node is cluster.head and cluster.quantized_outputs:
            return read_qparams(cluster.quantized_outputs[0], self.index.constants)
        return self.input_qparams(node, 0)

    def fused_activation(self, node: Node) -> int:
        """The TFLite fused activation for the activations fused after `node` (NONE when there are none)."""
        cluster = self.index.cluster_of.get(node)
        if cluster is None or not cluster.fused:
            return _ACTIVATIONS[None]
        if len(cluster.fused) > 1:
            raise LoweringError(f"'{node.name}' has {len(cluster.fused)} fused activations; at most one is supported")
        from neutron_backend.ops.activation import relu_form

        return _ACTIVATIONS[relu_form(cluster.fused[0])]

    # -- constants ---------------------------------------------------------------------------------------------

    def is_constant_input(self, node: Node, index: int) -> bool:
        """Whether the node's index-th tensor input is a dequantized constant (readable with `weight`)."""
        dequantize = self.index.dequantize_of(flat_inputs(node)[index])
        return dequantize is not None and self.index.constants.is_constant(dequantize.args[0])

    def weight(self, node: Node, index: int) -> tuple[np.ndarray, QParams]:
        """The raw integer values of a constant input (auxiliary data movement applied) and its qparams."""
        source = flat_inputs(node)[index]
        chain: list[Node] = []
        while not is_dequantize(source):
            if source not in self.index.cluster_of or source not in self.index.cluster_of[source].auxiliary:
                raise LoweringError(f"input {index} of '{node.name}' is not a dequantized constant")
            chain.append(source)
            source = source.all_input_nodes[0]
        qparams = read_qparams(source, self.index.constants)
        value = self.index.constants.value(source.args[0])
        if value is None:
            raise LoweringError(f"input {index} of '{node.name}' is not a constant")
        tensor = value.detach()
        for step in reversed(chain):
            tensor = CONSTANT_MOVES[op_name(step)](step, tensor)
        return tensor.contiguous().numpy(), qparams

    def bias_values(self, node: Node, index: int) -> np.ndarray:
        """The real values of a bias input, flattened: a dequantized int32 constant dequantized, or a float
        constant (a quantizer that leaves the bias in float, as XNNPACKQuantizer does) as it is."""
        source = flat_inputs(node)[index]
        if not is_dequantize(source):
            value = self.index.constants.value(source)
            if value is None:
                raise LoweringError(f"bias input {index} of '{node.name}' is not a constant")
            return value.detach().to(torch.float64).reshape(-1).numpy()
        raw, q = self.weight(node, index)
        return ((raw.astype(np.float64).reshape(-1) - np.asarray(q.zero_point, np.float64))
                * np.asarray(q.scale, np.float64))

    def int32_bias(self, node: Node, values: np.ndarray, scale) -> np.ndarray:
        """`values` (real) as an int32 bias at `scale` (s_in * s_w, per channel or not); LoweringError when one is
        beyond int32, which rounding and casting would wrap silently."""
        steps = np.round(np.asarray(values, np.float64) / np.asarray(scale, np.float64))
        if steps.size and np.abs(steps).max() > INT32_MAX:
            raise LoweringError(f"the bias of '{node.name}' reaches {np.abs(steps).max():.4g} steps of its int32 "
                                f"scale s_in * s_w, beyond the int32 range (at most {INT32_MAX})", node=node.name)
        return steps.astype(np.int32)

    def int32_constant(self, base: str, values) -> int:
        data = np.asarray(values, dtype=np.int32)
        return self.builder.add_tensor(self.name(base), data.shape, "int32", data=data)

    # -- values ------------------------------------------------------------------------------------------------

    def prefers_channels_last(self, node: Node) -> bool:
        return len(shape_of(node)) >= 3 and self.formats.is_channels_first(node)

    def value_of(self, source: Node) -> _Value:
        while source not in self.values:
            if source in self._to_requantize:
                return self._requantized(source)
            if is_dequantize(source) and self.index.constants.is_constant(source.args[0]):
                return self._constant_value(source)
            if is_dequantize(source) or is_quantize(source):
                source = source.args[0]
                continue
            raise LoweringError(f"'{source.name}' ({target_name(source)}) was not converted before its use")
        return self.values[source]

    def _constant_value(self, dequantize: Node) -> _Value:
        """A dequantized int8 constant used as an activation (a cat or add operand): an IR constant tensor."""
        qparams = read_qparams(dequantize, self.index.constants)
        value = self.index.constants.value(dequantize.args[0])
        if value is None or qparams.per_channel or qparams.dtype != torch.int8:
            raise LoweringError(f"'{dequantize.name}' dequantizes a constant that is not a per-tensor int8 tensor; "
                                "Neutron takes such an operand as a per-tensor int8 constant")
        data = value.detach().contiguous().numpy()
        tensor = self.builder.add_tensor(self.name(dequantize.args[0].name), list(data.shape), "int8", data=data,
                                         scale=qparams.scale, zero_point=qparams.zero_point)
        self.values[dequantize] = _Value(tensor, channels_last=False)
        return self.values[dequantize]

    def input(self, node: Node, index: int, channels_last: bool | None = None) -> int:
        """The IR tensor of the node's index-th tensor input, in the requested layout (default: as it is)."""
        source = flat_inputs(node)[index]
        value = self.value_of(source)
        if channels_last is None or value.channels_last == channels_last or len(shape_of(source)) < 3:
            return value.tensor
        return self.transpose(value.tensor, source, to_channels_last=channels_last)

    def input_is_channels_last(self, node: Node, index: int) -> bool:
        return self.value_of(flat_inputs(node)[index]).channels_last

    def input_flattened_from(self, node: Node, index: int) -> tuple[int, int, int] | None:
        """(C, H, W) when the input is a channels-last image flattened in NHWC order, else None."""
        return self.value_of(flat_inputs(node)[index]).flattened_from

    def feeds_only_linear_inputs(self, node: Node) -> bool:
        """Whether every consumer of the node's value, inside this partition, is the input of a linear layer."""
        cluster = self.index.cluster_of.get(node)
        if cluster is None or node is not cluster.head or not cluster.quantized_outputs:
            return False
        for quantize in cluster.quantized_outputs:
            for dequantize in quantize.users:
                if not is_dequantize(dequantize):
                    return False
                for user in dequantize.users:
                    operator = ops.lookup(user.target)
                    position = None if operator is None else operator.feature_input
                    if position is None or flat_inputs(user)[position] is not dequantize:
                        return False
        return True

    def transpose(self, tensor: int, node: Node, to_channels_last: bool) -> int:
        """`tensor` (the value of `node`) permuted to/from channels-last; one TRANSPOSE per value and direction."""
        key = (tensor, to_channels_last)
        if key in self._transposed:
            return self._transposed[key]
        rank = len(shape_of(node))
        perm = channels_last_perm(rank)
        if not to_channels_last:
            perm = tuple(int(i) for i in np.argsort(perm))
        in_shape = self.builder.tensor_shape(tensor)
        out_shape = [in_shape[p] for p in perm]
        q = self._tensor_qparams(tensor)
        result = self.builder.add_tensor(self.name(f"{node.name}_transposed"), out_shape, "int8", **q)
        self.builder.add_operator("TRANSPOSE", [tensor, self.int32_constant(f"{node.name}_perm", perm)], [result])
        self._transposed[key] = result
        return result

    def _tensor_qparams(self, tensor: int) -> dict:
        scale, zero_point = self.builder.tensor_quantization(tensor)
        return {"scale": scale, "zero_point": zero_point}

    def new_tensor(self, base: str, shape, qparams: QParams) -> int:
        return self.builder.add_tensor(self.name(base), list(shape), _torch_dtype_name(qparams.dtype),
                                       scale=qparams.scale, zero_point=qparams.zero_point)

    def output(self, node: Node, channels_last: bool, flattened_from: tuple[int, int, int] | None = None) -> int:
        """Creates the IR tensor for the value `node` produces (its cluster's output) in the given layout."""
        qparams = self.output_qparams(node)
        shape = shape_of(node)
        ir_shape = to_channels_last_shape(shape) if channels_last and len(shape) >= 3 else shape
        tensor = self.new_tensor(node.name, ir_shape, qparams)
        value = _Value(tensor, channels_last and len(shape) >= 3, flattened_from)
        self.values[node] = value
        self._bind_cluster_outputs(node, value)
        return tensor

    def alias(self, node: Node, source: Node) -> None:
        """Makes `node` (a copy such as clone) share the IR tensor of `source`."""
        value = self.value_of(source)
        self.values[node] = value
        self._bind_cluster_outputs(node, value)

    def _bind_cluster_outputs(self, node: Node, value: _Value) -> None:
        """Gives the value of a cluster's head to its fused activations, getitems and quantize nodes; a quantize
        with other qparams than the value's (one of several quantize users) gets a requantized copy instead."""
        cluster = self.index.cluster_of.get(node)
        if cluster is None or node not in (cluster.head, *cluster.output_moves):
            return
        if node is cluster.head:
            for member in [*cluster.fused, *cluster.getitems]:
                self.values[member] = value
        if node is not (cluster.output_moves or [cluster.head])[-1]:
            return  # the quantize nodes follow the data movement after the result
        scale, zero_point = self.builder.tensor_quantization(value.tensor)
        for quantize in cluster.quantized_outputs:
            q = read_qparams(quantize, self.index.constants)
            if np.float32(q.scale) == np.float32(scale) and q.zero_point == zero_point:
                self.values[quantize] = value
            else:
                self._to_requantize[quantize] = value

    def is_requantized_on_use(self, node: Node) -> bool:
        """Whether `node` is a quantize into other qparams than its value's, converted where it is first used."""
        return node in self._to_requantize

    def _requantized(self, quantize: Node) -> _Value:
        """The value before `quantize` requantized into its qparams: MUL by a constant 1 (as ops/requantize.py)."""
        value = self._to_requantize.pop(quantize)
        q = read_qparams(quantize, self.index.constants)
        result = self.new_tensor(f"{quantize.name}_requantized", self.builder.tensor_shape(value.tensor), q)
        one = self.builder.add_tensor(self.name(f"{quantize.name}_one"), [], "int8",
                                      data=np.array(1, dtype=np.int8), scale=1.0, zero_point=0)
        self.builder.add_operator("MUL", [value.tensor, one], [result], schema.MulOptionsT())
        self.values[quantize] = _Value(result, value.channels_last, value.flattened_from)
        return self.values[quantize]
    def torch_axis(self, node: Node, dim: int, channels_last: bool) -> int:
        """The IR axis of torch dimension `dim` of `node`'s value in the given layout."""
        rank = len(shape_of(node))
        dim %= rank
        if not channels_last or rank < 3:
            return dim
        return channels_last_perm(rank).index(dim)

    def pad(self, tensor: int, node: Node, paddings: list[tuple[int, int]], value: int | None = None) -> int:
        """`tensor` padded with the zero point (PAD) or with `value` (PADV2)."""
        in_shape = self.builder.tensor_shape(tensor)
        out_shape = [d + a + b for d, (a, b) in zip(in_shape, paddings, strict=True)]
        q = self._tensor_qparams(tensor)
        result = self.builder.add_tensor(self.name(f"{node.name}_padded"), out_shape, "int8", **q)
        inputs = [tensor, self.int32_constant(f"{node.name}_paddings", paddings)]
        if value is None:
            self.builder.add_operator("PAD", inputs, [result])
        else:
            constant = self.builder.add_tensor(self.name(f"{node.name}_pad_value"), [], "int8",
                                               data=np.array(value, dtype=np.int8), **q)
            self.builder.add_operator("PADV2", [*inputs, constant], [result])
        return result


def _boundary_spec(node: Node, qparams: QParams, channels_last: bool, index: int) -> TensorSpec:
    return TensorSpec(shape=tuple(shape_of(node)), dtype=_torch_dtype_name(qparams.dtype), scale=float(qparams.scale),
                      zero_point=int(qparams.zero_point), channels_last=channels_last, arg_index=index)


def _runtime_inputs(program: ExportedProgram) -> list[Node]:
    user_inputs = set(program.graph_signature.user_inputs)
    return [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]


def _convert_node(node: Node, ctx: ConversionContext) -> None:
    operator = ops.lookup(node.target)
    if operator is None or operator.convert is None:
        raise LoweringError(f"no conversion for {target_name(node)} ('{node.name}')")
    operator.convert(node, ctx)


def lower_partition(program: ExportedProgram, options: NeutronCompileOptions) -> LoweredPartition:
    """The Neutron IR for one partition's edge program, with its delegate I/O description."""
    ctx = ConversionContext(program, options)
    in_ir = options.use_neutron_for_format_conversion
    input_specs, input_tensors = [], []
    for position, placeholder in enumerate(_runtime_inputs(program)):
        dequantizers = [u for u in placeholder.users if is_dequantize(u)]
        if not dequantizers:
            raise LoweringError(f"delegate input '{placeholder.name}' is not dequantized inside the partition")
        qparams = read_qparams(dequantizers[0], ctx.index.constants)
        channels_first = ctx.prefers_channels_last(placeholder) or any(
            ctx.prefers_channels_last(d) for d in dequantizers)
        shape = shape_of(placeholder)
        if channels_first and not in_ir:
            tensor = ctx.new_tensor(placeholder.name, to_channels_last_shape(shape), qparams)
            ctx.values[placeholder] = _Value(tensor, True)
        else:
            tensor = ctx.new_tensor(placeholder.name, shape, qparams)
            ctx.values[placeholder] = _Value(tensor, False)
            if channels_first:
                ctx.values[placeholder] = _Value(ctx.transpose(tensor, placeholder, to_channels_last=True), True)
        input_tensors.append(tensor)
        input_specs.append(_boundary_spec(placeholder, qparams, channels_first and not in_ir, position))

    for node in program.graph.nodes:
        if node.op != "call_function" or node in ctx.values or is_dequantize(node) or is_getitem(node):
            continue
        cluster = ctx.index.cluster_of.get(node)
        if ctx.is_requantized_on_use(node):
            continue
        if is_quantize(node) and (cluster is None or node is not cluster.head):
            raise LoweringError(f"quantize node '{node.name}' does not follow a converted operator")
        if cluster is not None and node in cluster.auxiliary:
            dequantize = ctx.index.dequantize_of(node)
            if dequantize is not None and ctx.index.constants.is_constant(dequantize.args[0]):
                continue  # folded into the constant it moves
        elif cluster is None or node is not cluster.head:
            if cluster is not None and node in cluster.fused:
                continue
            if cluster is None or node not in cluster.output_moves:
                raise LoweringError(f"'{node.name}' ({target_name(node)}) is not part of a quantized cluster")
        try:
            _convert_node(node, ctx)
        except LoweringError as error:
            error.node = error.node or node.name
            raise
        except Exception as error:  # a converter bug still names its node, so the partitioner can leave it out
            raise LoweringError(f"converting '{node.name}' ({target_name(node)}) failed: "
                                f"{type(error).__name__}: {error}", node=node.name) from error

    output_specs, output_tensors = [], []
    (results,) = [n.args[0] for n in program.graph.nodes if n.op == "output"]
    for position, result in enumerate(results):
        value = ctx.value_of(result)
        qparams = read_qparams(result, ctx.index.constants) if is_quantize(result) else ctx.output_qparams(result)
        tensor, channels_last = value.tensor, value.channels_last
        if channels_last and in_ir:
            tensor, channels_last = ctx.transpose(tensor, result, to_channels_last=False), False
        output_tensors.append(tensor)
        output_specs.append(_boundary_spec(result, qparams, channels_last, position))

    ctx.builder.set_inputs(input_tensors)
    ctx.builder.set_outputs(output_tensors)
    tflite = ctx.builder.finish()
    return LoweredPartition(tflite=tflite, inputs=tuple(input_specs), outputs=tuple(output_specs),
                            num_operators=ctx.builder.num_operators)
