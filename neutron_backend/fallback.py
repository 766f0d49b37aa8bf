"""Trial conversion of proposed partitions, so that a partition Neutron cannot convert runs on the CPU instead.

Before tagging, the partitioner lowers (and, with a converter flavor, converts) every proposed partition exactly as
NeutronBackend.preprocess will, on a stand-alone view of the partition shaped like the program ExecuTorch later
hands preprocess: the partition's nodes copied into a graph of their own, inputs from outside as placeholders in
order of first use, constants as parameters, the values used outside as outputs. When that fails, the partitioner
leaves out the node the error names (or the whole partition when none is named) and partitions again.

The program a partitioner sees holds FakeTensors in its state dict (ExecuTorch partitions a fake copy). Real
values come from `values`; a constant without one gets a stand-in of its shape and dtype, so the trial then checks
the structure of the conversion, not the values. With real values the trial IR is the IR preprocess builds, and
NeutronBackend reuses the trial's converter result instead of converting twice.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.export import ExportedProgram
from torch.fx import Graph, GraphModule, Node

from neutron_backend.compile_spec import NeutronCompileOptions
from neutron_backend.lowering import LoweringError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConversionFailure:
    """Why a partition did not convert; `node` names the node to blame, None when it is the partition as a whole."""

    node: str | None
    reason: str


@dataclass
class _Signature:
    """The part of an ExportGraphSignature that lowering reads."""

    user_inputs: list[str]
    inputs_to_parameters: dict[str, str]
    inputs_to_buffers: dict[str, str]
    inputs_to_lifted_tensor_constants: dict[str, str]


class PartitionProgram:
    """One partition as a stand-alone program, with the interface of ExportedProgram that lowering uses."""

    def __init__(self, graph: Graph, graph_signature: _Signature, state_dict: dict[str, torch.Tensor]) -> None:
        self.graph = graph
        self.graph_signature = graph_signature
        self.state_dict = state_dict
        self.constants: dict[str, torch.Tensor] = {}
        self._graph_module: GraphModule | None = None

    @property
    def graph_module(self) -> GraphModule:
        # Built on demand: generating the module's code costs time lowering rarely needs.
        if self._graph_module is None:
            self._graph_module = GraphModule(torch.nn.Module(), self.graph)
        return self._graph_module


def _stand_in(like: torch.Tensor) -> torch.Tensor:
    """A real tensor shaped like `like`: ones for floating point (scales stay usable), zeros otherwise."""
    if like.dtype.is_floating_point:
        return torch.ones(like.shape, dtype=like.dtype)
    return torch.zeros(like.shape, dtype=like.dtype)


def _real_value(program: ExportedProgram, key: str, values: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The real tensor behind a state dict or constants key, or None when only a fake one is known."""
    value = program.state_dict.get(key, program.constants.get(key))
    if value is not None and not isinstance(value, FakeTensor):
        return value
    known = values.get(key)
    if known is None or isinstance(known, FakeTensor):
        return None
    if value is not None and (tuple(known.shape) != tuple(value.shape) or known.dtype != value.dtype):
        return None
    return known


def partition_program(program: ExportedProgram, nodes: Sequence[Node], values: Mapping[str, torch.Tensor],
                      position: Mapping[Node, int]) -> tuple[PartitionProgram, bool]:
    """The partition made of `nodes` (in graph order; `position` numbers the program's nodes) as a stand-alone
    program, and whether every constant in it has its real value (False: some are stand-ins)."""
    signature = program.graph_signature
    kinds = (signature.inputs_to_parameters, signature.inputs_to_buffers, signature.inputs_to_lifted_tensor_constants)
    members = set(nodes)
    external: dict[Node, None] = {}
    for node in nodes:
        for source in node.all_input_nodes:
            if source not in members:
                external.setdefault(source)

    graph = Graph()
    copies: dict[Node, Node] = {}
    view_kinds: tuple[dict[str, str], ...] = ({}, {}, {})
    user_inputs: list[str] = []
    state_dict: dict[str, torch.Tensor] = {}
    exact = True
    # As ExecuTorch's submodule: parameters, buffers, then lifted constants, each in graph order, then the runtime
    # inputs in order of first use.
    kind_of = {s: next((i for i, k in enumerate(kinds) if s.name in k), None) if s.op == "placeholder" else None
               for s in external}
    constants = sorted((s for s in external if kind_of[s] is not None), key=lambda s: (kind_of[s], position[s]))
    for source in constants + [s for s in external if kind_of[s] is None]:
        placeholder = graph.placeholder(source.name, type_expr=source.type)
        placeholder.meta = dict(source.meta)
        copies[source] = placeholder
        kind = kind_of[source]
        if kind is None:
            user_inputs.append(placeholder.name)
            continue
        key = kinds[kind][source.name]
        view_kinds[kind][placeholder.name] = key
        value = _real_value(program, key, values)
        if value is None:
            exact = False
            value = _stand_in(source.meta["val"])
        state_dict[key] = value
    for node in nodes:
        copies[node] = graph.node_copy(node, lambda source: copies[source])
    outputs = [copies[n] for n in nodes if any(user not in members for user in n.users)]
    graph.output(tuple(outputs))
    view_signature = _Signature(user_inputs, *view_kinds)
    return PartitionProgram(graph, view_signature, state_dict), exact


def try_partition(program: ExportedProgram, nodes: Sequence[Node], options: NeutronCompileOptions,
                  values: Mapping[str, torch.Tensor], position: Mapping[Node, int]) -> ConversionFailure | None:
    """Lowers (and converts, with a flavor) the partition made of `nodes`; None when it converts, else why not."""
    from neutron_backend.backend import process_partition

    view, exact = partition_program(program, nodes, values, position)
    if not exact:
        # Stand-in values: this result is not the real one, so nothing the user would look at is written.
        options = dataclasses.replace(options, intermediates_dir=None, dump_kernel_selection_code=False)
    try:
        process_partition(view, options, trial=True)
    except LoweringError as error:
        return ConversionFailure(error.node, str(error))
    except Exception as error:  # the converter, payload checks or a lowering bug: the partition goes to the CPU
        logger.debug("trial conversion failed", exc_info=error)
        return ConversionFailure(None, f"{type(error).__name__}: {error}")
    return None
