"""The operator registry's vocabulary: verdicts, operator kinds, and the one record each operator declares."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from torch.fx import Node

if TYPE_CHECKING:
    import torch

    from neutron_backend.delegation_options import CustomDelegationOptions
    from neutron_backend.ops.limits import VersionedLimit
    from neutron_backend.targets import NeutronTarget


@dataclass(frozen=True)
class QParams:
    """Quantization parameters read from a quantize/dequantize node."""

    scale: float | tuple[float, ...] | None  # None: per-channel values not known while partitioning a fake program
    zero_point: int | tuple[int, ...] | None
    qmin: int
    qmax: int
    dtype: torch.dtype
    axis: int | None = None

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def symmetric(self) -> bool:
        """True when every zero point is 0 (or, for unknown per-channel values, when the range is symmetric)."""
        if self.zero_point is None:
            return self.qmin == -self.qmax
        zero_points = self.zero_point if isinstance(self.zero_point, tuple) else (self.zero_point,)
        return all(z == 0 for z in zero_points)


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


class QParamsContract(enum.Enum):
    """How an operator's output qparams must relate to its inputs' (the partitioner enforces it for every node)."""

    FREE = "free"  # the operator requantizes: any input and output qparams
    OUTPUT_EQUALS_INPUT = "output equals input"  # moves or selects input values without rescaling them
    SHARED = "all inputs and output shared"  # selects among several inputs' values without rescaling them
    FIXED_OUTPUT = "fixed output"  # the int8 kernel produces one output quantization (its check names it)


class Layout(enum.Enum):
    """How an operator affects format inference (neutron_backend.ir.formats)."""

    CHANNELS_FIRST = "channels first"  # its activation input and output are images (NCHW in torch, NHWC in the IR)
    CARRIES = "carries"  # same-rank inputs and output share one format (elementwise, cat, pads, reductions...)
    BREAKS = "breaks"  # its output's format is its own (reshapes, permutes, matmuls): formatless unless forced


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
    # The argument position of a bias that may be a float constant (XNNPACKQuantizer and others leave the bias in
    # float and their backends quantize it): the lowering quantizes it to int32 at scale s_in * s_w.
    float_bias_arg: int | None = None
    # The input position whose features the conversion can take in any order by reordering its weights (a fully
    # connected layer's input), so a flatten of an NHWC image feeding it needs no transpose.
    feature_input: int | None = None
    no_op: Callable[[Node], bool] | None = None  # True when this particular node computes nothing
    fusable: Callable[[Node], bool] | None = None  # ACTIVATION: may run fused into the conv/linear before it
    # The target's limits in numbers, for `neutron ops --target` (e.g. the largest Cin per kernel size).
    target_limits: Callable[[NeutronTarget], str] | None = None
    # Limits only older converters impose, applied per the compile spec's flavor (neutron_backend.ops.limits).
    versioned_limits: tuple[VersionedLimit, ...] = ()
    # ATen names (no namespace or overload) a user may write for this operator: those it decomposes from or one of
    # our passes rewrites into it ('linear' for addmm, 'div' for mul). operators_not_to_delegate matches them.
    aliases: tuple[str, ...] = ()
    layout: Layout = Layout.BREAKS
    # The pre-dispatch ATen operators NeutronQuantizer annotates into this one, with how (quantizer/patterns.py kinds).
    annotated_as: Mapping[Any, Any] = field(default_factory=dict)
    # Requantizing steps its lowering has at most (each may round one output step away from torch's float
    # requantization); None: one for an operator that computes, none for data movement (OpKind.SHAPE).
    requantizations: int | None = None
    # How output qparams relate to input qparams; a function when it depends on the node (clamp's bounds).
    qparams: QParamsContract | Callable[[Node], QParamsContract] = QParamsContract.FREE

    @property
    def max_requantizations(self) -> int:
        """How many requantizing steps the lowering has at most: the tolerance in output steps it may add."""
        if self.requantizations is not None:
            return self.requantizations
        return 0 if self.kind is OpKind.SHAPE else 1

    def qparams_contract(self, node: Node) -> QParamsContract:
        """The qparams contract of this node."""
        return self.qparams if isinstance(self.qparams, QParamsContract) else self.qparams(node)

    def is_no_op(self, node: Node) -> bool:
        """Whether the node moves data only (shape operators always; others when `no_op` says so)."""
        if self.kind is OpKind.SHAPE:
            return True
        return self.no_op is not None and self.no_op(node)

    def verdict(self, node: Node, ctx: CheckContext) -> Verdict:
        """The qparams contract first, then representability, then the target's limits."""
        verdict = check_qparams_contract(self, node, ctx)
        if verdict:
            verdict = self.check(node, ctx)
        if verdict and self.check_target is not None:
            verdict = self.check_target(node, ctx)
        return verdict


def _describe(q: QParams, other: QParams) -> str:
    text = f"scale {q.scale:.6g}, zero point {q.zero_point}"
    if (q.qmin, q.qmax, q.dtype) != (other.qmin, other.qmax, other.dtype):
        text += f", range [{q.qmin}, {q.qmax}] {str(q.dtype).removeprefix('torch.')}"
    return text


def check_qparams_contract(operator: NeutronOperator, node: Node, ctx: CheckContext) -> Verdict:
    """Whether the node's input and output qparams keep the operator's declared contract.

    OUTPUT_EQUALS_INPUT compares the first input with the output, SHARED every activation input (weights aside).
    Unknown qparams (an input that is not dequantized) are left to the cluster rules.
    """
    contract = operator.qparams_contract(node)
    if contract not in (QParamsContract.OUTPUT_EQUALS_INPUT, QParamsContract.SHARED):
        return SUPPORTED
    output_q = ctx.output_qparams(node)
    if output_q is None:
        return SUPPORTED
    name = node.target._schema.name.split("::")[-1]
    positions = [0] if contract is QParamsContract.OUTPUT_EQUALS_INPUT else [
        i for i in range(len(flat_inputs(node))) if i not in operator.weight_args]
    for position in positions:
        input_q = ctx.input_qparams(node, position)
        if input_q is None or input_q == output_q:
            continue
        if contract is QParamsContract.OUTPUT_EQUALS_INPUT:
            return reject(f"input and output are quantized differently ({_describe(input_q, output_q)} vs "
                          f"{_describe(output_q, input_q)}); {name} keeps its input's qparams, so both must be "
                          "equal (NeutronQuantizer shares them)")
        return reject(f"input {position} is quantized with {_describe(input_q, output_q)} but the output with "
                      f"{_describe(output_q, input_q)}; {name} needs all inputs and the output to share qparams "
                      "(NeutronQuantizer does this)")
    return SUPPORTED


INT32_MAX = 2**31 - 1


def float_bias_problem(node: Node, ctx: CheckContext, input_index: int, weight_index: int,
                       bias_index: int) -> str | None:
    """Why a float constant bias cannot be quantized to int32 at scale s_in * s_w (a value beyond int32), or None
    (also when the bias is quantized already or its values are not known while partitioning)."""
    bias = flat_inputs(node)[bias_index]
    if ctx.input_qparams(node, bias_index) is not None:
        return None
    value = ctx.constant(bias)
    x_q, w_q = ctx.input_qparams(node, input_index), ctx.input_qparams(node, weight_index)
    if value is None or x_q is None or w_q is None or w_q.scale is None or not value.dtype.is_floating_point:
        return None
    weight_scales = w_q.scale if isinstance(w_q.scale, tuple) else (w_q.scale,)
    largest = float(value.detach().abs().max()) / (x_q.scale * min(weight_scales)) if value.numel() else 0.0
    if largest > INT32_MAX:
        return (f"float bias '{bias.name}' reaches {largest:.4g} steps of its int32 scale s_in * s_w = "
                f"{x_q.scale:.6g} x {min(weight_scales):.6g}, beyond the int32 range (at most {INT32_MAX}); quantize "
                "the bias with the model (NeutronQuantizer does)")
    return None


def flat_inputs(node: Node) -> list[Node]:
    """The node's tensor arguments in argument order, list arguments flattened, duplicates kept."""
    found: list[Node] = []

    def visit(value: Any) -> None:
        if isinstance(value, Node):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(node.args)
    visit(tuple(node.kwargs.values()))
    return found


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
