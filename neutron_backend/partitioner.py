"""NeutronPartitioner: cluster verdicts -> proposed partitions -> partition-level rules -> tags and a report."""

from __future__ import annotations

import collections
import difflib
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from executorch.exir.backend.compile_spec_schema import CompileSpec
from executorch.exir.backend.partitioner import DelegationSpec, Partitioner, PartitionResult
from executorch.exir.backend.utils import tag_constant_data
from torch._subclasses.fake_tensor import FakeTensor
from torch.export import ExportedProgram
from torch.fx import Node

from neutron_backend import ops
from neutron_backend.backend import NeutronBackend
from neutron_backend.clusters import (
    Cluster,
    ClusterIndex,
    is_dequantize,
    is_qdq,
    op_name,
    read_qparams,
    target_name,
)
from neutron_backend.compile_spec import NeutronCompileOptions, OperatorName, origin_of, parse_compile_spec
from neutron_backend.delegation_options import CustomDelegationOptions
from neutron_backend.fallback import ConversionFailure, try_partition
from neutron_backend.ir.formats import FormatMap
from neutron_backend.ops.base import QParams, Verdict, flat_inputs, reject
from neutron_backend.quantizer.quantizer import EXCLUDED_META_KEY, SKIPPED_META_KEY
from neutron_backend.report import DelegationReport, build_report

logger = logging.getLogger(__name__)

BACKEND_ID = NeutronBackend.__name__
# Rejecting a partition can only shrink the supported set, so re-proposal converges; this bounds it regardless.
_MAX_PROPOSALS = 8


class _Context:
    """The CheckContext given to operator checks for one graph."""

    def __init__(self, index: ClusterIndex, formats: FormatMap, options: NeutronCompileOptions,
                 delegation: CustomDelegationOptions) -> None:
        self.index = index
        self.formats = formats
        self.target = options.target
        self.options = delegation
        self.flavor = options.neutron_converter_flavor

    def _source(self, node: Node) -> Node:
        """The node behind auxiliary data movement and a dequantize, e.g. a weight placeholder."""
        while self.index.cluster_of.get(node) is not None and node in self.index.cluster_of[node].auxiliary:
            node = node.all_input_nodes[0]
        if is_dequantize(node):
            node = node.args[0]
        return node

    def input_qparams(self, node: Node, index: int) -> QParams | None:
        inputs = flat_inputs(node)
        if index >= len(inputs):
            return None
        dequantize = self.index.dequantize_of(inputs[index])
        return None if dequantize is None else read_qparams(dequantize, self.index.constants)

    def output_qparams(self, node: Node) -> QParams | None:
        cluster = self.index.cluster_of.get(node)
        if cluster is None or not cluster.quantized_outputs:
            return None
        return read_qparams(cluster.quantized_outputs[0], self.index.constants)

    def is_static(self, node: Node) -> bool:
        return self.index.constants.is_constant(self._source(node))

    def constant(self, node: Node) -> torch.Tensor | None:
        return self.index.constants.value(self._source(node))

    def is_channels_first(self, node: Node) -> bool:
        return self.formats.is_channels_first(node)


@dataclass
class _Partition:
    id: int
    nodes: list[Node]


class NeutronPartitioner(Partitioner):
    """Finds the parts of a quantized edge program that run on Neutron, tags them, and explains every decision.

    With no options it delegates as much as possible. After `partition()`, `report` holds a DelegationReport.
    """

    def __init__(self, compile_spec: Sequence[CompileSpec],
                 custom_delegation_options: CustomDelegationOptions | None = None, *,
                 preserve_ops: Sequence[Any] | None = None,
                 post_quantization_state_dict: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.compile_options = parse_compile_spec(compile_spec)
        if self.compile_options.neutron_converter_flavor is not None:
            from neutron_backend.converter import require_converter

            require_converter(self.compile_options)  # a named flavor must be installed: fail now, not after lowering
        if custom_delegation_options is not None and not isinstance(custom_delegation_options,
                                                                    CustomDelegationOptions):
            raise TypeError(f"custom_delegation_options must be a CustomDelegationOptions, got "
                            f"{type(custom_delegation_options).__name__}")
        self.delegation_options = custom_delegation_options or CustomDelegationOptions()
        self.preserve_ops = list(preserve_ops or [])
        self.post_quantization_state_dict = post_quantization_state_dict
        self.delegation_spec = DelegationSpec(BACKEND_ID, list(compile_spec))
        self.report: DelegationReport | None = None
        # Real constants of the program to_edge_transform_and_lower showed ops_to_not_decompose; partition() gets a
        # copy whose state dict is fake, and its trial conversions want the real weights.
        self._seen_constants: dict[str, torch.Tensor] = {}
        # operators_not_to_delegate names seen matching a node since the last partition(), to warn about the rest.
        self._matched_exclusions: set[OperatorName] = set()

    @property
    def target(self):
        return self.compile_options.target

    def ops_to_not_decompose(self, ep: ExportedProgram) -> tuple[list[Any], Callable[[Node], bool] | None]:
        """The operators to_edge_transform_and_lower keeps whole, and a filter choosing which of their nodes.

        `preserve_ops` are kept whole everywhere. Registered operators that ExecuTorch would decompose but Neutron
        runs whole (hardswish, prelu, ...: `kept_whole_operators()`) are kept whole only where this partitioner
        will delegate them: quantized clusters with a positive verdict in a partition the partition-level rules
        accept. Float or rejected instances still decompose into operators the CPU runs (ExecuTorch's portable
        kernels lack most of them whole), with a warning naming the reason for a quantized one.
        """
        self._remember_constants(ep)
        self._note_matched_exclusions(ep.graph)
        kept_whole = kept_whole_operators()
        present = {ops.schema_key(node.target) for node in ep.graph.nodes if node.op == "call_function"}
        if not present & kept_whole.keys():
            # No filter: ExecuTorch's plain decomposition path, unchanged for programs without such operators.
            return self.preserve_ops, None
        from executorch.exir.dialects.edge._ops import EdgeOpOverload

        user_keys = {ops.schema_key(op) for op in self.preserve_ops}
        delegated: list[set[Node]] = []  # computed on first use: most nodes are not kept-whole candidates

        def keep_whole(node: Node) -> bool:
            key = ops.schema_key(node.target) if node.op == "call_function" else None
            if key in user_keys:
                return True
            if key not in kept_whole:
                return False
            if isinstance(node.target, EdgeOpOverload):
                # After lowering, ExecuTorch asks again to find kept-whole nodes left undelegated: one still here
                # must be reported unless the CPU runs it whole (unsqueeze_copy: from functionalization, not kept).
                return not has_portable_kernel(node.target)
            if not delegated:
                delegated.append(self._delegated_heads(ep, kept_whole.keys()))
            return node in delegated[0]

        return [*self.preserve_ops, *(op for key, op in kept_whole.items() if key in present)], keep_whole

    def _delegated_heads(self, ep: ExportedProgram, kept_whole: Any) -> set[Node]:
        """The cluster heads of the (ATen) program `ep` that this partitioner would delegate: verdicts, then the
        partition-level rules (no-op partitions, min_compute_ops_per_partition).

        The ATen program has not met to_edge's passes yet (its views are not yet view_copy, which has a rule), so
        its partitions can only be smaller than the edge program's: a kept-whole node is never kept whole where the
        edge partitions would reject it. Warns for each quantized kept-whole node left to decompose.
        """
        index = ClusterIndex(ep, ops.is_fusable, self.post_quantization_state_dict)
        ctx = _Context(index, FormatMap(ep.graph), self.compile_options, self.delegation_options)
        verdicts = {id(cluster): self._cluster_verdict(cluster, ctx) for cluster in index.clusters}
        partitions = self._partition_with_rules(ep, index, verdicts)
        heads = {node for partition in partitions for node in partition.nodes
                 if node in index.cluster_of and index.cluster_of[node].head is node}
        candidates = [head for head in heads if ops.schema_key(head.target) in kept_whole]
        if self._reject_unconvertible(ep, index, verdicts, candidates):
            partitions = self._partition_with_rules(ep, index, verdicts)
            heads = {node for partition in partitions for node in partition.nodes
                     if node in index.cluster_of and index.cluster_of[node].head is node}
        for cluster in index.clusters:
            head = cluster.head
            if cluster.problem is None and head not in heads and ops.schema_key(head.target) in kept_whole:
                logger.warning("Neutron: %s '%s' is decomposed for the CPU: %s", target_name(head), head.name,
                               verdicts[id(cluster)].reason)
        return heads

    def _reject_unconvertible(self, ep: ExportedProgram, index: ClusterIndex, verdicts: dict[int, Verdict],
                              heads: list[Node]) -> bool:
        """Trial-converts each cluster of `heads` alone, as `_convertible` converts partitions, and rejects those
        that fail with the failure as reason. Kept whole, such a node would have no CPU kernel to fall back to."""
        values = {**self._seen_constants, **(self.post_quantization_state_dict or {})}
        position = {node: i for i, node in enumerate(ep.graph.nodes)}
        rejected = False
        for head in heads:
            cluster = index.cluster_of[head]
            nodes = sorted(cluster.nodes(), key=position.__getitem__)
            failure = try_partition(ep, nodes, self.compile_options, values, position)
            if failure is not None:
                reason = failure.reason.strip().splitlines()[0] if failure.reason.strip() else "unknown error"
                verdicts[id(cluster)] = reject(f"converting it for Neutron failed: {reason}")
                rejected = True
        return rejected

    def _remember_constants(self, ep: ExportedProgram) -> None:
        for key, value in [*ep.state_dict.items(), *ep.constants.items()]:
            if isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor):
                self._seen_constants[key] = value

    # -- verdicts ---------------------------------------------------------------------------------------------

    def _excluded_by_user(self, node: Node) -> str | None:
        for name in self.compile_options.operators_not_to_delegate:
            if name.matches(node.target, origin_of(node)):
                return f"excluded by operators_not_to_delegate ('{name}')"
        return None

    def _note_matched_exclusions(self, graph: torch.fx.Graph) -> None:
        """Remembers which operators_not_to_delegate names match a node of `graph` (the ATen program, where
        kept-whole operators still exist, and the edge program)."""
        names = [n for n in self.compile_options.operators_not_to_delegate if n not in self._matched_exclusions]
        for node in graph.nodes:
            if not names:
                return
            if node.op == "call_function":
                origin = origin_of(node)
                for name in [n for n in names if n.matches(node.target, origin)]:
                    self._matched_exclusions.add(name)
                    names.remove(name)

    def _warn_unmatched_exclusions(self, graph: torch.fx.Graph) -> None:
        """Warns for each operators_not_to_delegate name that matched no node: it excluded nothing."""
        present = {name for node in graph.nodes if node.op == "call_function"
                   for name in (op_name(node), origin_of(node)) if name}
        for name in self.compile_options.operators_not_to_delegate:
            if name in self._matched_exclusions:
                continue
            close = difflib.get_close_matches(name.name, sorted(present), n=3, cutoff=0.5) or sorted(present)[:3]
            stands_for = ", ".join(name.would_match()) or "no operator Neutron runs"
            logger.warning("Neutron: operators_not_to_delegate entry '%s' matches no node of this program, so it "
                           "excludes nothing; it stands for %s; the program's closest operator names: %s", name,
                           stands_for, ", ".join(close) or "none")

    def _quantization_verdict(self, cluster: Cluster, ctx: _Context, operator: ops.NeutronOperator) -> Verdict:
        inputs = flat_inputs(cluster.head)
        for position, source in enumerate(inputs):
            qparams = ctx.input_qparams(cluster.head, position)
            if qparams is None:
                continue
            is_weight = position in operator.weight_args
            allowed = (torch.int8, torch.int32) if is_weight else (torch.int8,)
            if qparams.dtype not in allowed:
                kind = "weight/bias" if is_weight else "activation"
                return reject(f"{kind} input '{source.name}' is quantized as {qparams.dtype}; Neutron runs "
                              f"{' or '.join(str(d) for d in allowed)}")
        for output in cluster.quantized_outputs:
            qparams = read_qparams(output, ctx.index.constants)
            if qparams is not None and qparams.dtype != torch.int8:
                return reject(f"output is quantized as {qparams.dtype}; Neutron produces torch.int8")
        return Verdict(True)

    def _cluster_verdict(self, cluster: Cluster, ctx: _Context) -> Verdict:
        head = cluster.head
        # The quantizer leaves its reason in meta["custom"], which survives export and to_edge.
        excluded = head.meta.get("custom", {}).get(EXCLUDED_META_KEY)
        operator = ops.lookup(head.target)
        if cluster.problem is not None:
            if excluded:
                return reject(f"left in float by the quantizer configuration ({excluded})")
            if operator is None:
                return reject(_unsupported(head))
            value = head.meta.get("val")
            if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16, torch.float64):
                return reject(f"not quantized: it computes in {value.dtype}, and NeutronQuantizer quantizes float32 "
                              "only; convert the model with .float() before quantizing it")
            if skipped := head.meta.get("custom", {}).get(SKIPPED_META_KEY):
                return reject(f"not quantized: {skipped}")
            return reject(cluster.problem)
        if operator is None:
            return reject(_unsupported(head))
        if float_problem := _float_constant_problem(cluster, operator):
            return reject(float_problem)
        if user_reason := self._excluded_by_user(head):
            return reject(user_reason)
        if shape_problem := _shape_problem([*flat_inputs(head), head, *cluster.fused]):
            return reject(shape_problem)
        if not (verdict := self._quantization_verdict(cluster, ctx, operator)):
            return verdict
        if not (verdict := operator.verdict(head, ctx)):
            return verdict
        for node in [*cluster.auxiliary, *cluster.fused]:
            member = ops.lookup(node.target)
            if member is None:
                return reject(f"its input goes through {target_name(node)} ('{node.name}'), which has no Neutron "
                              "implementation")
            # Only fused activations run as operators; auxiliary weight moves are folded into constants.
            if node in cluster.fused and (user_reason := self._excluded_by_user(node)):
                return reject(f"fused {target_name(node)} is {user_reason}")
            if node in cluster.fused and not (verdict := member.verdict(node, ctx)):
                return reject(f"fused {target_name(node)} '{node.name}': {verdict.reason}")
        for node in cluster.output_moves:
            member = ops.lookup(node.target)
            if member is None or not (verdict := member.verdict(node, ctx)):
                reason = "it has no Neutron implementation" if member is None else verdict.reason
                return reject(f"its result goes through {target_name(node)} ('{node.name}') before its quantize: "
                              f"{reason}")
        return verdict

    # -- partitions --------------------------------------------------------------------------------------------

    @staticmethod
    def _propose(program: ExportedProgram, supported: set[Node], index: ClusterIndex) -> list[_Partition]:
        """Groups supported nodes into partitions that can each become one delegate call, in linear time.

        Every node gets a level that rises by one wherever a path leaves supported nodes for the CPU, and never
        falls along an edge; all nodes of a cluster share one level. Connected supported nodes of equal level form
        a partition: no path can leave such a partition through the CPU and come back, and partitions cannot form
        a cycle (it would have to rise). Levels only grow between passes, so the loop ends, usually after two.
        """
        nodes = list(program.graph.nodes)
        floor: dict[Node, int] = {}
        while True:
            level: dict[Node, int] = {}
            for node in nodes:
                inputs = node.all_input_nodes
                if node in supported:
                    level[node] = max([level[i] for i in inputs] + [floor.get(node, 0)])
                else:
                    level[node] = max((level[i] + (i in supported) for i in inputs), default=0)
            changed = False
            for cluster in {id(index.cluster_of[n]): index.cluster_of[n] for n in supported}.values():
                members = list(cluster.nodes())
                top = max(level[m] for m in members)
                for member in members:
                    if level[member] < top:
                        floor[member], changed = top, True
            if not changed:
                break

        parent: dict[Node, Node] = {node: node for node in nodes if node in supported}

        def root(node: Node) -> Node:
            while parent[node] is not node:
                parent[node] = parent[parent[node]]
                node = parent[node]
            return node

        for node in parent:
            for source in node.all_input_nodes:
                if source in supported and level[source] == level[node]:
                    parent[root(source)] = root(node)
        groups: dict[Node, list[Node]] = {}
        for node in parent:
            groups.setdefault(root(node), []).append(node)
        return [_Partition(number, members) for number, members in enumerate(groups.values())]

    def _partition_problem(self, partition: _Partition, index: ClusterIndex) -> str | None:
        heads = {index.cluster_of[n].head for n in partition.nodes if n in index.cluster_of}
        compute = [h for h in heads if not ops.lookup(h.target).is_no_op(h)]
        if not compute and not self.delegation_options.allow_no_op_partitions:
            names = sorted(target_name(h) for h in heads)
            return (f"its partition holds only no-op operators ({', '.join(names)}), so a delegate call would do "
                    "nothing; set CustomDelegationOptions(allow_no_op_partitions=True) to delegate it anyway")
        minimum = self.delegation_options.min_compute_ops_per_partition
        if compute and len(compute) < minimum:
            return (f"its partition has {len(compute)} compute operator(s), fewer than "
                    f"min_compute_ops_per_partition={minimum}")
        return None

    def _partition_with_rules(self, program: ExportedProgram, index: ClusterIndex,
                              verdicts: dict[int, Verdict]) -> list[_Partition]:
        accepted = [c for c in index.clusters if verdicts[id(c)]]
        for _ in range(_MAX_PROPOSALS):
            supported = {node for cluster in accepted for node in cluster.nodes()}
            partitions = self._propose(program, supported, index)
            rejected_any = False
            for partition in partitions:
                problem = self._partition_problem(partition, index)
                if problem is None:
                    continue
                rejected_any = True
                for cluster in {id(index.cluster_of[n]): index.cluster_of[n] for n in partition.nodes
                                if n in index.cluster_of}.values():
                    verdicts[id(cluster)] = reject(problem)
            if not rejected_any:
                return partitions
            accepted = [c for c in accepted if verdicts[id(c)]]
        return []

    def _convertible(self, program: ExportedProgram, index: ClusterIndex, verdicts: dict[int, Verdict],
                     partitions: list[_Partition], values: dict[str, torch.Tensor]) -> list[_Partition]:
        """The partitions after leaving out what does not convert (neutron_backend.fallback).

        A partition whose trial conversion fails loses the cluster of the node the error names, or all its clusters
        when none is named (always, after _MAX_PROPOSALS rounds, so the loop ends); each gets the error as its
        reason, a warning names it, and the rest is partitioned again. Partitions that converted are not retried.
        """
        position = {node: i for i, node in enumerate(program.graph.nodes)}
        converted: set[frozenset[Node]] = set()
        rounds = 0
        while True:
            failed = False
            for partition in partitions:
                key = frozenset(partition.nodes)
                if key in converted:
                    continue
                nodes = sorted(partition.nodes, key=position.__getitem__)
                failure = try_partition(program, nodes, self.compile_options, values, position)
                if failure is None:
                    converted.add(key)
                    continue
                failed = True
                self._leave_out(partition, failure, index, verdicts, whole=rounds >= _MAX_PROPOSALS)
            if not failed:
                return partitions
            rounds += 1
            partitions = self._partition_with_rules(program, index, verdicts)

    @staticmethod
    def _leave_out(partition: _Partition, failure: ConversionFailure, index: ClusterIndex,
                   verdicts: dict[int, Verdict], whole: bool) -> None:
        """Rejects the clusters of `partition` that `failure` blames, with its reason, and warns."""
        blamed = next((n for n in partition.nodes if n.name == failure.node), None) if not whole else None
        if blamed is not None and blamed in index.cluster_of:
            clusters = [index.cluster_of[blamed]]
        else:
            clusters = list({id(index.cluster_of[n]): index.cluster_of[n] for n in partition.nodes
                             if n in index.cluster_of}.values())
        reason = failure.reason.strip().splitlines()[0] if failure.reason.strip() else "unknown error"
        for cluster in clusters:
            verdicts[id(cluster)] = reject(f"converting it for Neutron failed: {reason}")
        names = ", ".join(f"'{c.head.name}' ({target_name(c.head)})" for c in clusters[:5])
        more = f" and {len(clusters) - 5} more" if len(clusters) > 5 else ""
        logger.warning("Neutron: %s%s could not be converted and run(s) on the CPU instead: %s", names, more,
                       failure.reason)

    # -- entry point -------------------------------------------------------------------------------------------

    def partition(self, exported_program: ExportedProgram) -> PartitionResult:
        """Tags the delegable nodes of `exported_program` for NeutronBackend and fills `self.report`.

        The graph is not modified (ExecuTorch's to_backend asserts it): a dequantize shared by several users makes
        their clusters CPU-only (see ClusterIndex).
        """
        values = {**self._seen_constants, **(self.post_quantization_state_dict or {})}
        self._seen_constants = {}
        self._note_matched_exclusions(exported_program.graph)
        self._warn_unmatched_exclusions(exported_program.graph)
        self._matched_exclusions = set()
        index = ClusterIndex(exported_program, ops.is_fusable, values)
        formats = FormatMap(exported_program.graph)
        ctx = _Context(index, formats, self.compile_options, self.delegation_options)
        verdicts = {id(cluster): self._cluster_verdict(cluster, ctx) for cluster in index.clusters}
        partitions = self._partition_with_rules(exported_program, index, verdicts)
        partitions = self._convertible(exported_program, index, verdicts, partitions, values)

        tags: dict[str, DelegationSpec] = {}
        partition_of: dict[Node, int] = {}
        position = {node: i for i, node in enumerate(exported_program.graph.nodes)}
        ordered = sorted(partitions, key=lambda p: min(position[n] for n in p.nodes))
        for number, partition in enumerate(ordered):
            tag = f"neutron_{number}"
            tags[tag] = self.delegation_spec
            for node in partition.nodes:
                node.meta["delegation_tag"] = tag
                partition_of[node] = number
        tag_constant_data(exported_program)
        self.report = self._report(exported_program, index, verdicts, partition_of, len(partitions))
        if not partitions:
            _warn_nothing_delegated(index, verdicts)
        logger.info("%s", self.report.to_dict() if logger.isEnabledFor(logging.DEBUG) else
                    f"Neutron: {len(partitions)} partition(s), "
                    f"{100 * self.report.delegated_mac_fraction:.1f}% of MACs delegated")
        return PartitionResult(tagged_exported_program=exported_program, partition_tags=tags)

    def _report(self, program: ExportedProgram, index: ClusterIndex, verdicts: dict[int, Verdict],
                partition_of: dict[Node, int], num_partitions: int) -> DelegationReport:
        def reason(node: Node) -> str:
            return _cpu_reason(node, index.cluster_of.get(node), verdicts)

        return build_report(program, self.target.name, partition_of, num_partitions, reason)


@functools.cache
def kept_whole_operators() -> dict[tuple[str, str], Any]:
    """The ATen overloads of registered operators that ExecuTorch's edge lowering would decompose, by schema key.

    Neutron runs them whole (e.g. hardswish as HARD_SWISH), so NeutronPartitioner.ops_to_not_decompose keeps their
    delegable nodes whole. Derived from the registry: registering an operator under such an op (its first target)
    is all it takes. Further targets are other spellings one converter also accepts (max_pool2d next to
    max_pool2d_with_indices, which it decomposes into), so they are left to decompose.
    """
    # ExecuTorch's own table, the one to_edge_transform_and_lower decomposes with (private, no public accessor).
    from executorch.exir.program._program import _default_decomposition_table

    decomposed = {ops.schema_key(op) for op in _default_decomposition_table()}
    kept: dict[tuple[str, str], Any] = {}
    for operator in ops.operators():
        aten_op = getattr(operator.targets[0], "_op", operator.targets[0])
        if ops.schema_key(aten_op) in decomposed:
            kept[ops.schema_key(aten_op)] = aten_op
    return kept


@functools.cache
def _portable_kernels() -> frozenset[str]:
    """The out variants ('unsqueeze_copy.out') ExecuTorch's portable kernel library implements."""
    import executorch

    table = Path(executorch.__path__[0]) / "kernels" / "portable" / "functions.yaml"
    lines = table.read_text(encoding="utf-8").splitlines()
    return frozenset(line.split("op:", 1)[1].strip() for line in lines if line.lstrip().startswith("- op:"))


def has_portable_kernel(op: Any) -> bool:
    """Whether ExecuTorch's portable kernels run the ATen/edge operator `op` whole on the CPU."""
    name, overload = ops.schema_key(op)
    base = name.split("::")[-1]
    return (f"{base}.out" if overload == "default" else f"{base}.{overload}_out") in _portable_kernels()


def _unsupported(node: Node) -> str:
    return (f"{target_name(node)} is not supported on Neutron (this backend has no NPU implementation of it), so it "
            "runs on the CPU")


def _float_constant_problem(cluster: Cluster, operator: ops.NeutronOperator) -> str | None:
    """Why a float constant input rules the cluster out, or None when each one is a bias the operator quantizes."""
    inputs = flat_inputs(cluster.head)
    for constant in cluster.float_constants:
        positions = [i for i, node in enumerate(inputs) if node is constant]
        if positions != [operator.float_bias_arg]:
            return (f"not quantized: input '{constant.name}' is a float constant, not dequantized int8; "
                    "quantize the model with NeutronQuantizer")
    return None


def _shape_problem(nodes: Sequence[Node]) -> str | None:
    """Why tensors of these shapes cannot run on Neutron (dynamic or zero-size), or None."""
    for node in nodes:
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            continue
        shape = list(value.shape)
        if not all(isinstance(d, int) for d in shape):
            return (f"'{node.name}' has a dynamic shape {shape}; Neutron runs static shapes only (export this part "
                    "of the model without dynamic_shapes)")
        if 0 in shape:
            return f"'{node.name}' has no elements (shape {shape}); there is nothing for Neutron to compute"
    return None


def _warn_nothing_delegated(index: ClusterIndex, verdicts: dict[int, Verdict]) -> None:
    """Warns that the whole program runs on the CPU, with the most common reason."""
    reasons = collections.Counter(verdicts[id(c)].reason for c in index.clusters if not verdicts[id(c)])
    if not reasons:
        logger.warning("Neutron: nothing was delegated: the program has no operators Neutron could run")
        return
    reason, count = reasons.most_common(1)[0]
    logger.warning("Neutron: nothing was delegated, the whole program runs on the CPU; %d of %d operator(s) "
                   "because: %s (see NeutronPartitioner.report for every node)", count, len(index.clusters), reason)


def _cpu_reason(node: Node, cluster: Cluster | None, verdicts: dict[int, Verdict]) -> str:
    if cluster is None:
        if is_qdq(node):
            return "quantize/dequantize at a CPU boundary"
        return f"{op_name(node) or node.op} is not part of a quantized cluster"
    reason = verdicts[id(cluster)].reason or "not delegated"
    if node is cluster.head:
        return reason
    return f"follows '{cluster.head.name}': {reason}"
