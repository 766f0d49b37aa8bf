"""The operator registry's vocabulary: verdicts, operator kinds, and the one record each operator declares."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from torch.fx import Node

    from neutron_backend.clusters import QParams
    from neutron_backend.delegation_options import CustomDelegationOptions
    from neutron_backend.ops.limits import VersionedLimit
    from neutron_backend.targets import NeutronTarget


@dataclass(frozen=True)
class Verdict:
    """Whether a node may run on Neutron; `reason` says why not, in words a user can act on."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


SUPPORTED = Verdict(True)


def reject(reason: str) -> Verdict:
    """A negative verdict carrying `reason`."""
    return Verdict(False, reason)


class OpKind(enum.Enum):
    """How the partitioner treats an operator."""

    COMPUTE = "compute"  # does arithmetic; counts toward a partition's compute ops
    SHAPE = "shape"  # moves data only; alone in a partition it is a no-op
    ACTIVATION = "activation"  # fusable into a preceding conv/linear; standalone it is compute


class CheckContext(Protocol):
    """What a support check may ask about the graph around a node."""

    target: NeutronTarget
    options: CustomDelegationOptions
    # The compile spec's neutron_converter_flavor (None: the current converter); see neutron_backend.ops.limits.
    flavor: str | None

    def input_qparams(self, node: Node, index: int) -> QParams | None: ...

    def output_qparams(self, node: Node) -> QParams | None: ...

    def is_static(self, node: Node) -> bool: ...

    def constant(self, node: Node) -> Any: ...

    def is_channels_first(self, node: Node) -> bool: ...


class ConversionContext(Protocol):
    """What a converter may ask while emitting IR for a node (see neutron_backend.lowering)."""


@dataclass(frozen=True)
class NeutronOperator:
    """One delegable edge operator: where it applies, its rules, and its conversion, declared together.

    `check` decides representability (arguments, static shapes, quantization); `check_target` decides whether the
    target's hardware limits allow it. Both return a Verdict with a reason.
    """

    name: str
    targets: tuple[Any, ...]
    kind: OpKind
    constraints: str
    check: Callable[[Node, CheckContext], Verdict]
    convert: Callable[[Node, Any], None] | None = None
    check_target: Callable[[Node, CheckContext], Verdict] | None = None
    macs: Callable[[Node], int] | None = None
    quantization: str = "int8 per-tensor activations"
    weight_args: tuple[int, ...] = field(default=())  # argument positions holding static weights or bias
    no_op: Callable[[Node], bool] | None = None  # True when this particular node computes nothing
    fusable: Callable[[Node], bool] | None = None  # ACTIVATION: may run fused into the conv/linear before it
    # The target's limits in numbers, for `neutron ops --target` (e.g. the largest Cin per kernel size).
    target_limits: Callable[[NeutronTarget], str] | None = None
    # Limits only older converters impose, applied per the compile spec's flavor (neutron_backend.ops.limits).
    versioned_limits: tuple[VersionedLimit, ...] = ()

    def is_no_op(self, node: Node) -> bool:
        """Whether the node moves data only (shape operators always; others when `no_op` says so)."""
        if self.kind is OpKind.SHAPE:
            return True
        return self.no_op is not None and self.no_op(node)

    def verdict(self, node: Node, ctx: CheckContext) -> Verdict:
        """Representability first, then the target's limits."""
        verdict = self.check(node, ctx)
        if verdict and self.check_target is not None:
            verdict = self.check_target(node, ctx)
        return verdict


def shape_of(node: Any) -> tuple[int, ...]:
    """The static shape of a node's value (from `meta['val']`)."""
    value = node.meta.get("val")
    if isinstance(value, (list, tuple)):
        value = value[0]
    return tuple(int(d) for d in value.shape)


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def ceil_to(value: int, multiple: int) -> int:
    """`value` rounded up to a multiple of `multiple`."""
    return -(-value // multiple) * multiple


def arg(node: Node, index: int, name: str, default: Any = None) -> Any:
    """A node argument by position or keyword, with a default."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def pair(value: Any) -> tuple[int, int]:
    """An int-or-list pooling/conv parameter as an (h, w) pair."""
    if isinstance(value, int):
        return (value, value)
    values = list(value)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])
