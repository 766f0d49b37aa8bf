"""QDQ cluster recognition: which compute nodes are quantized, and which Q/DQ/auxiliary nodes belong to them.

A cluster is a compute node (plus activations fused after it) whose tensor inputs all come from dequantize nodes,
possibly through auxiliary data-movement nodes (e.g. the permute of a linear weight), and whose users all go to
quantize nodes. Everything here is linear in graph size: each node looks only at its own inputs and `node.users`.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.export import ExportedProgram
from torch.fx import Node

# Data movement allowed between a dequantize and the compute node it feeds, declared with the shape operators.
from neutron_backend.ops.base import QParams
from neutron_backend.ops.shape import CONSTANT_MOVES

_QUANTIZE = {"quantize_per_tensor", "quantize_per_channel"}
_DEQUANTIZE = {"dequantize_per_tensor", "dequantize_per_channel"}


def op_name(node: Node) -> str:
    """The operator's base name without namespace or overload, e.g. 'convolution' for aten.convolution.default."""
    if node.op != "call_function":
        return ""
    target = node.target
    schema = getattr(target, "_schema", None)
    if schema is not None:
        return schema.name.split("::")[-1]
    return getattr(target, "__name__", str(target))


def _is_float(node: Node) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.dtype.is_floating_point


def _dtype_name(node: Node) -> str:
    value = node.meta.get("val")
    return str(getattr(value, "dtype", "non-tensor")).removeprefix("torch.")


def is_quantize(node: Any) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and op_name(node) in _QUANTIZE


def is_dequantize(node: Any) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and op_name(node) in _DEQUANTIZE


def is_qdq(node: Any) -> bool:
    return is_quantize(node) or is_dequantize(node)


def is_requantization(node: Any) -> bool:
    """A per-tensor quantize of a per-tensor dequantized value: the two change a value's qparams (e.g. where a
    softmax's fixed output qparams meet a cat's shared ones), an operator of its own that Neutron can run."""
    return (is_quantize(node) and op_name(node) == "quantize_per_tensor" and is_dequantize(node.args[0])
            and op_name(node.args[0]) == "dequantize_per_tensor"
            and (is_quantize(node.args[0].args[0]) or node.args[0].args[0].op == "placeholder"))


def is_getitem(node: Any) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target is operator.getitem


def target_name(node: Node) -> str:
    """A readable operator name, e.g. 'aten.convolution.default'."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return getattr(node.target, "__name__", str(node.target))
    return f"{schema.name.replace('::', '.')}.{schema.overload_name or 'default'}"


def tensor_inputs(node: Node) -> list[Node]:
    """The node's tensor-valued inputs in argument order (flattening list arguments such as cat's)."""
    return list(node.all_input_nodes)


class ConstantResolver:
    """Reads constant tensors (parameters, buffers, lifted constants) behind placeholder nodes."""

    def __init__(self, program: ExportedProgram, fallback: dict[str, torch.Tensor] | None = None) -> None:
        signature = program.graph_signature
        self._program = program
        self._fallback = fallback or {}
        self._sources: dict[str, str] = {}
        self._sources.update(signature.inputs_to_parameters)
        self._sources.update(signature.inputs_to_buffers)
        self._sources.update(signature.inputs_to_lifted_tensor_constants)

    def is_constant(self, node: Node) -> bool:
        return node.op == "get_attr" or (node.op == "placeholder" and node.name in self._sources)

    def value(self, node: Node) -> torch.Tensor | None:
        """The tensor behind a constant placeholder or get_attr node, or None when it is a runtime input."""
        if node.op == "get_attr":
            return getattr(node.graph.owning_module, str(node.target), None)
        key = self._sources.get(node.name)
        if key is None:
            return None
        value = self._program.state_dict.get(key, self._program.constants.get(key))
        if isinstance(value, FakeTensor):
            # to_edge_transform_and_lower partitions a copy holding fake tensors; the post-quantization state dict,
            # when the user gives one, has the real values.
            value = self._fallback.get(key)
        return value


def read_qparams(node: Node, constants: ConstantResolver) -> QParams | None:
    """The qparams of a quantize/dequantize node, or None for any other node."""
    if not is_qdq(node):
        return None
    if op_name(node).endswith("per_channel"):
        scales, zero_points, axis, qmin, qmax, dtype = node.args[1:7]
        scale_values = constants.value(scales) if isinstance(scales, Node) else scales
        zp_values = constants.value(zero_points) if isinstance(zero_points, Node) else zero_points
        return QParams(
            scale=None if scale_values is None else tuple(torch.as_tensor(scale_values).flatten().tolist()),
            zero_point=None if zp_values is None else tuple(int(z) for z in torch.as_tensor(zp_values).flatten()),
            qmin=int(qmin), qmax=int(qmax), dtype=dtype, axis=int(axis),
        )
    scale, zero_point, qmin, qmax, dtype = node.args[1:6]
    return QParams(scale=float(scale), zero_point=int(zero_point), qmin=int(qmin), qmax=int(qmax), dtype=dtype)


@dataclass
class Cluster:
    """A compute node with the Q/DQ and auxiliary nodes that belong to it.

    `problem` is None for a well-formed QDQ cluster, else the reason it is not one (e.g. a float input).
    """

    head: Node
    fused: list[Node] = field(default_factory=list)
    dequantized_inputs: list[Node] = field(default_factory=list)
    auxiliary: list[Node] = field(default_factory=list)
    getitems: list[Node] = field(default_factory=list)
    quantized_outputs: list[Node] = field(default_factory=list)
    # Float constant inputs (e.g. the float bias XNNPACKQuantizer leaves): the operator's declaration says whether
    # it takes one there (NeutronOperator.float_bias_arg); the partitioner rejects the others.
    float_constants: list[Node] = field(default_factory=list)
    # Data movement between the result and its quantize (a reshape another quantizer quantizes after).
    output_moves: list[Node] = field(default_factory=list)
    problem: str | None = None

    @property
    def last(self) -> Node:
        """The node whose value leaves the cluster (the last fused activation, or the head)."""
        return self.fused[-1] if self.fused else self.head

    def nodes(self) -> Iterator[Node]:
        yield from self.dequantized_inputs
        yield from self.auxiliary
        yield self.head
        yield from self.fused
        yield from self.output_moves
        yield from self.getitems
        # A requantization's head is its own quantized output.
        yield from (node for node in self.quantized_outputs if node is not self.head)


class ClusterIndex:
    """Every cluster of a graph, and for each node the cluster it belongs to. Built in one linear pass.

    `is_fusable(node)` tells whether an activation node may be fused into the compute node before it.
    """

    def __init__(self, program: ExportedProgram, is_fusable, fallback: dict[str, torch.Tensor] | None = None) -> None:
        self.constants = ConstantResolver(program, fallback)
        self._is_fusable = is_fusable
        self.clusters: list[Cluster] = []
        self.cluster_of: dict[Node, Cluster] = {}
        self._auxiliary_memo: dict[Node, bool] = {}
        for node in program.graph.nodes:
            if node.op != "call_function" or node in self.cluster_of:
                continue
            if is_requantization(node) and not self.constants.is_constant(node.args[0].args[0]):
                cluster = Cluster(head=node, quantized_outputs=[node])
                self._trace_input(cluster, node.args[0])
            elif is_qdq(node) or is_getitem(node) or self._is_auxiliary(node) or self._is_fused(node):
                continue
            else:
                cluster = self._build(node)
            self.clusters.append(cluster)
            for member in cluster.nodes():
                self.cluster_of.setdefault(member, cluster)

    def dequantize_of(self, node: Node) -> Node | None:
        """The dequantize node behind `node`, through the auxiliary data movement of its cluster (None if none)."""
        while node in self.cluster_of and node in self.cluster_of[node].auxiliary:
            node = node.all_input_nodes[0]
        return node if is_dequantize(node) else None

    def _is_auxiliary(self, node: Node) -> bool:
        """A data-movement node between a dequantize and a compute node (it has no quantize of its own)."""
        memo = self._auxiliary_memo.get(node)
        if memo is not None:
            return memo
        result = False
        if node.op == "call_function" and op_name(node) in CONSTANT_MOVES and len(node.users) == 1:
            (user,) = node.users
            inputs = tensor_inputs(node)
            result = (not is_quantize(user) and len(inputs) == 1
                      and (is_dequantize(inputs[0]) or self._is_auxiliary(inputs[0])))
        self._auxiliary_memo[node] = result
        return result

    @staticmethod
    def _is_output_move(node: Node) -> bool:
        """A data-movement node whose only input is a compute result and whose only user is a quantize."""
        return (node.op == "call_function" and op_name(node) in CONSTANT_MOVES and len(tensor_inputs(node)) == 1
                and len(node.users) == 1 and is_quantize(next(iter(node.users))))

    def _is_fused(self, node: Node) -> bool:
        """An activation applied directly to a single-use compute result, quantized only after it."""
        inputs = tensor_inputs(node)
        if len(inputs) != 1 or not self._is_fusable(node):
            return False
        producer = inputs[0]
        return (producer.op == "call_function" and not is_qdq(producer) and not is_getitem(producer)
                and len(producer.users) == 1 and not self._is_auxiliary(producer))

    def _build(self, head: Node) -> Cluster:
        cluster = Cluster(head=head)
        last = head
        while len(last.users) == 1:
            (user,) = last.users
            if not self._is_fused(user):
                break
            cluster.fused.append(user)
            last = user
        # Fused activations have one tensor input, the previous node, so only the head's inputs need tracing.
        for source in tensor_inputs(head):
            self._trace_input(cluster, source)
        self._trace_outputs(cluster, last)
        return cluster

    def _trace_input(self, cluster: Cluster, source: Node) -> None:
        while self._is_auxiliary(source):
            cluster.auxiliary.append(source)
            source = tensor_inputs(source)[0]
        if is_dequantize(source):
            cluster.dequantized_inputs.append(source)
            if len(source.users) > 1 and cluster.problem is None:
                # convert_pt2e gives every quantized operator its own dequantize; a shared one comes from a
                # decomposition after quantization, and a partition cannot take it without also feeding the CPU.
                other = next(user for user in source.users if user is not cluster.head
                             and user not in cluster.auxiliary)
                cluster.problem = (f"its input dequantize '{source.name}' also feeds '{other.name}' "
                                   f"({op_name(other) or other.op}); Neutron needs a dequantize of its own per "
                                   "quantized operator")
        elif self.constants.is_constant(source) and _is_float(source):
            cluster.float_constants.append(source)
        elif cluster.problem is None:
            if self.constants.is_constant(source):
                cluster.problem = (f"input '{source.name}' is a {_dtype_name(source)} constant, not dequantized "
                                   "int8; Neutron computes on int8 values that come from a dequantize node")
            else:
                producer = "a model input" if source.op == "placeholder" else f"'{source.name}' ({op_name(source)})"
                value = source.meta.get("val")
                dtype = getattr(value, "dtype", None)
                if dtype is not None and not dtype.is_floating_point:
                    cluster.problem = (f"input '{source.name}' is {str(dtype).removeprefix('torch.')}, produced by "
                                       f"{producer}; Neutron computes on int8 values that come from a dequantize "
                                       "node, so this operator runs on the CPU")
                else:
                    cluster.problem = (f"not quantized: input '{source.name}' is float, produced by {producer} "
                                       "rather than a dequantize node; quantize the model with NeutronQuantizer "
                                       "(prepare_pt2e / convert_pt2e)")

    def _trace_outputs(self, cluster: Cluster, last: Node) -> None:
        if len(last.users) == 1 and self._is_output_move(next(iter(last.users))):
            # A quantizer that annotates the result only after a reshape (XNNPACKQuantizer's rank-3 linear:
            # addmm -> view_copy -> quantize): quantizing commutes with moving data, so the move joins the cluster.
            (move,) = last.users
            cluster.output_moves.append(move)
            last = move
        for user in last.users:
            if is_quantize(user):
                cluster.quantized_outputs.append(user)
            elif is_getitem(user) and user.args[1] == 0:
                cluster.getitems.append(user)
                for item_user in user.users:
                    if is_quantize(item_user):
                        cluster.quantized_outputs.append(item_user)
                    elif cluster.problem is None:
                        cluster.problem = (f"not quantized: output feeds '{item_user.name}' "
                                           f"({op_name(item_user) or item_user.op}) without a quantize node")
            elif is_getitem(user):
                if user.users and cluster.problem is None:
                    cluster.problem = f"its secondary output '{user.name}' (e.g. pooling indices) is used"
            elif cluster.problem is None:
                cluster.problem = (f"not quantized: output feeds '{user.name}' ({op_name(user) or user.op}) "
                                   "without a quantize node; quantize the model with NeutronQuantizer")
        if not last.users and cluster.problem is None:
            cluster.problem = "its result is unused"
        if not cluster.quantized_outputs and cluster.problem is None:
            cluster.problem = "not quantized: no quantize node after it"
