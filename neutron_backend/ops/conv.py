"""Convolution: 2D and 1D (as 2D over a height-1 image), depthwise (also with a channel multiplier), grouped (split
per group), transposed.

What each form becomes in the IR (images are NHWC there; a 1D [N, C, L] value is [N, L, C]):
- groups = 1: CONV_2D;
- depthwise, groups = Cin = Cout: DEPTHWISE_CONV_2D;
- depthwise with a channel multiplier, groups = Cin, Cout = k * Cin: the input's channels repeated k times in place
  (RESHAPE, CONCATENATION of k copies, RESHAPE: exact) then DEPTHWISE_CONV_2D with Cin = Cout = groups, the only
  depthwise form facts.md lists as accepted by the converter;
- other groups: SLICE of each group's input channels, one CONV_2D per group, CONCATENATION of the outputs (exact:
  every group conv writes the output's qparams);
- transposed (groups 1): TRANSPOSE_CONV with VALID padding and output size H_out + 2 * padding, then a SLICE
  cropping the padding (TRANSPOSE_CONV's SAME/VALID padding cannot express PyTorch's explicit padding); output
  padding is the extra bottom/right rows of that output, which get the bias only, as in PyTorch;
- 1D: the 2D form between two RESHAPEs ([N, L, C] <-> [N, 1, L, C]: no data moves).
Explicit padding of a forward conv is a PAD with the input zero point; a missing bias is a zero int32 bias.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch.fx import Node

from neutron_backend.ops.base import (
    SUPPORTED,
    CheckContext,
    Layout,
    NeutronOperator,
    OpKind,
    Verdict,
    ceil_to,
    float_bias_problem,
    numel,
    reject,
    shape_of,
)
from neutron_backend.ops.edge import edge
from neutron_backend.quantizer.kinds import (
    Weighted,
    aten,
)
from neutron_backend.targets import NeutronTarget

# Neutron's limits (facts.md, from NXP's Neutron documentation as applied by NXP's backend).
MAX_KERNEL_STRIDE_DILATION = 4096
MAX_WEIGHT_SIZE = 65535
MAX_TRANSPOSED_STRIDE = 2


@dataclass(frozen=True)
class ConvParams:
    """A convolution's arguments as 2D pairs (a 1D conv is 2D with height 1)."""

    spatial_rank: int  # 1 or 2
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    output_padding: tuple[int, int]
    transposed: bool
    groups: int
    cin: int
    cout: int

    @property
    def depthwise(self) -> bool:
        """groups = Cin = Cout: one filter per channel."""
        return not self.transposed and self.groups > 1 and self.groups == self.cin == self.cout

    @property
    def multiplier(self) -> int:
        """The channel multiplier k of a depthwise conv with groups = Cin and Cout = k * Cin (1 otherwise)."""
        if self.transposed or self.groups == 1 or self.groups != self.cin or self.cout % self.cin:
            return 1
        return self.cout // self.cin

    @property
    def split(self) -> bool:
        """Grouped, but neither plain nor depthwise (with or without a multiplier): one conv per group."""
        return not self.transposed and self.groups > 1 and self.multiplier == 1 and not self.depthwise


def _pair(values, fill: int) -> tuple[int, int]:
    values = [int(v) for v in values]
    return (fill, values[0]) if len(values) == 1 else (values[0], values[1])


def conv_params(node: Node) -> ConvParams:
    """The node's convolution parameters; only meaningful for a rank-3 or rank-4 input."""
    x, w, _, stride, padding, dilation, transposed, output_padding, groups = node.args
    x_shape, w_shape = shape_of(x), shape_of(w)
    spatial_rank = len(x_shape) - 2
    kernel = (1, w_shape[2]) if spatial_rank == 1 else (w_shape[2], w_shape[3])
    return ConvParams(
        spatial_rank=spatial_rank, kernel=kernel, stride=_pair(stride, 1), padding=_pair(padding, 0),
        dilation=_pair(dilation, 1), output_padding=_pair(output_padding, 0), transposed=bool(transposed),
        groups=int(groups), cin=x_shape[1], cout=w_shape[1] * int(groups) if transposed else w_shape[0],
    )


def _dims(values: tuple[int, int], spatial_rank: int) -> str:
    """'3x3' for 2D, '3' for 1D: the user's own view of the parameter."""
    return str(values[1]) if spatial_rank == 1 else f"{values[0]}x{values[1]}"


# -- checks ----------------------------------------------------------------------------------------------------


def _check(node: Node, ctx: CheckContext) -> Verdict:
    x, w, b = node.args[0], node.args[1], node.args[2]
    rank = len(shape_of(x))
    if rank not in (3, 4):
        return reject(f"{rank - 2}D convolution (input rank {rank}) is not supported; Neutron runs 1D (input rank 3) "
                      "and 2D (input rank 4) convolutions")
    if not ctx.is_static(w):
        return reject(f"weight '{w.name}' is computed at run time; Neutron needs constant weights")
    if b is not None and not ctx.is_static(b):
        return reject(f"bias '{b.name}' is computed at run time; Neutron needs a constant bias")
    if b is not None and (problem := float_bias_problem(node, ctx, 0, 1, 2)):
        return reject(problem)
    p = conv_params(node)
    if p.transposed:
        if p.groups != 1:
            return reject(f"transposed convolution with groups={p.groups} is not supported; Neutron's "
                          "TRANSPOSE_CONV needs groups=1")
        if p.dilation != (1, 1):
            return reject(f"transposed convolution with dilation {_dims(p.dilation, p.spatial_rank)} is not "
                          "supported; Neutron's TRANSPOSE_CONV has no dilation (use dilation=1)")
    weight_q = ctx.input_qparams(node, 1)
    if weight_q is not None:
        if not weight_q.symmetric:
            return reject("weights must be quantized symmetrically (zero point 0); use NeutronQuantizer")
        channel_axis = 1 if p.transposed else 0
        if weight_q.per_channel and weight_q.axis != channel_axis:
            kind = "a transposed convolution's" if p.transposed else "a convolution's"
            return reject(f"per-channel weight quantization must be on axis {channel_axis} ({kind} output "
                          f"channels), got axis {weight_q.axis}")
    return SUPPORTED


def _weight_size(p: ConvParams, ctx: CheckContext) -> Verdict:
    """Neutron's limit on one kernel's weights: kH * kW * ceil_to(input channels, num_macs) <= 65535."""
    num_macs = ctx.target.num_macs
    if p.split:
        label, channels = "Cin per group", p.cin // p.groups
    elif p.multiplier > 1:
        # The depthwise conv runs over the input with its channels repeated `multiplier` times.
        label, channels = f"Cin x multiplier {p.multiplier}", p.cout
    else:
        label, channels = "Cin", p.cin
    kh, kw = p.kernel
    size = kh * kw * ceil_to(channels, num_macs)
    if size > MAX_WEIGHT_SIZE:
        return reject(f"kernel {kh}x{kw} x ceil({label}={channels}, {num_macs}) = {size} > {MAX_WEIGHT_SIZE} "
                      f"(Neutron's weight-size limit on {ctx.target.name})")
    return SUPPORTED


def _check_transposed_target(p: ConvParams) -> Verdict:
    stride, kernel, padding = (_dims(v, p.spatial_rank) for v in (p.stride, p.kernel, p.padding))
    if any(s > MAX_TRANSPOSED_STRIDE for s in p.stride):
        return reject(f"transposed convolution stride {stride} exceeds Neutron's TRANSPOSE_CONV limit of "
                      f"{MAX_TRANSPOSED_STRIDE} per axis")
    if any(s > k for s, k in zip(p.stride, p.kernel, strict=True)):
        return reject(f"transposed convolution stride {stride} is larger than its kernel {kernel}; Neutron's "
                      "TRANSPOSE_CONV needs stride <= kernel per axis")
    if any(pad >= k for pad, k in zip(p.padding, p.kernel, strict=True)):
        return reject(f"transposed convolution padding {padding} is not smaller than its kernel {kernel}; "
                      "Neutron's TRANSPOSE_CONV needs padding < kernel per axis")
    return SUPPORTED


def _check_target(node: Node, ctx: CheckContext) -> Verdict:
    p = conv_params(node)
    for label, values in (("kernel", p.kernel), ("stride", p.stride), ("dilation", p.dilation)):
        if any(v > MAX_KERNEL_STRIDE_DILATION for v in values):
            return reject(f"{label} {_dims(values, p.spatial_rank)} exceeds Neutron's limit of "
                          f"{MAX_KERNEL_STRIDE_DILATION} per axis")
    if p.transposed and not (verdict := _check_transposed_target(p)):
        return verdict
    return _weight_size(p, ctx)


def _target_limits(target: NeutronTarget) -> str:
    """The weight-size limit in numbers: the largest input channel count per square kernel size."""
    largest = [(k, MAX_WEIGHT_SIZE // (k * k) // target.num_macs * target.num_macs) for k in (1, 3, 5, 7)]
    return "Cin (per group) <= " + ", ".join(f"{cin} for {k}x{k}" for k, cin in largest) + " kernels"


def _macs(node: Node) -> int:
    w = shape_of(node.args[1])
    if node.args[6]:  # transposed: every input element is scattered through Cout/groups kernels
        return numel(shape_of(node.args[0])) * numel(w[1:])
    return numel(shape_of(node)) * numel(w[1:])


# -- conversion ------------------------------------------------------------------------------------------------


def _weights_and_bias(node: Node, ctx, p: ConvParams):
    """The int8 weights as [O, I, kH, kW] ([I, O, kH, kW] when transposed), their per-output-channel scales, and
    the int32 bias at scale s_in * s_w."""
    import numpy as np

    weights, w_q = ctx.weight(node, 1)
    if p.spatial_rank == 1:
        weights = weights.reshape(*weights.shape[:2], 1, weights.shape[2])
    w_scales = np.broadcast_to(np.asarray(w_q.scale, dtype=np.float64), (p.cout,))
    x_scale = ctx.input_qparams(node, 0).scale
    if node.args[2] is not None:
        bias_float = ctx.bias_values(node, 2)
    else:
        bias_float = np.zeros(p.cout)
    bias = ctx.int32_bias(node, bias_float, x_scale * w_scales)
    return weights, w_scales, bias


class _Emitter:
    """Emits the IR of one convolution node: its NHWC input and output, constants, and helper operators."""

    def __init__(self, node: Node, ctx, p: ConvParams) -> None:
        self.node, self.ctx, self.p = node, ctx, p
        self.x_q = ctx.input_qparams(node, 0)
        self.out_q = ctx.output_qparams(node)

    def tensor(self, suffix: str, shape, qparams) -> int:
        return self.ctx.new_tensor(f"{self.node.name}_{suffix}", shape, qparams)

    def reshape(self, tensor: int, shape, output: int | None = None) -> int:
        ctx = self.ctx
        if output is None:
            scale, zero_point = ctx.builder.tensor_quantization(tensor)
            output = ctx.builder.add_tensor(ctx.name(f"{self.node.name}_reshaped"), list(shape), "int8",
                                            scale=scale, zero_point=zero_point)
        ctx.builder.add_operator("RESHAPE", [tensor, ctx.int32_constant(f"{self.node.name}_shape", shape)], [output])
        return output

    def slice(self, tensor: int, begin, size, output: int) -> None:
        ctx = self.ctx
        ctx.builder.add_operator("SLICE", [tensor, ctx.int32_constant(f"{self.node.name}_begin", begin),
                                           ctx.int32_constant(f"{self.node.name}_size", size)], [output])

    def concatenate(self, tensors: list[int], axis: int, output: int) -> None:
        from ai_edge_litert import schema_py_generated as schema

        options = schema.ConcatenationOptionsT()
        options.axis = axis
        self.ctx.builder.add_operator("CONCATENATION", tensors, [output], options)

    def input_nhwc(self) -> int:
        """The input as an NHWC image ([N, 1, L, C] for 1D)."""
        x = self.ctx.input(self.node, 0, channels_last=True)
        if self.p.spatial_rank == 1:
            n, length, c = self.ctx.builder.tensor_shape(x)
            x = self.reshape(x, [n, 1, length, c])
        return x

    def output_nhwc(self) -> tuple[int, Callable[[], None]]:
        """The tensor the conv writes (NHWC, [N, 1, L', C'] for 1D) and a function to call once it is written."""
        ctx, node = self.ctx, self.node
        if self.p.spatial_rank == 2:
            return ctx.output(node, channels_last=True), lambda: None
        n, cout, length = shape_of(node)
        conv_out = self.tensor("conv2d", [n, 1, length, cout], self.out_q)

        def finish() -> None:
            self.reshape(conv_out, [n, length, cout], ctx.output(node, channels_last=True))

        return conv_out, finish

    def filters(self, name: str, data, scales, quantized_dimension: int) -> int:
        return self.ctx.builder.add_tensor(self.ctx.name(f"{self.node.name}_{name}"), data.shape, "int8",
                                           scale=[float(s) for s in scales], zero_point=0,
                                           quantized_dimension=quantized_dimension, data=data)

    def bias(self, name: str, data, w_scales) -> int:
        return self.ctx.builder.add_tensor(self.ctx.name(f"{self.node.name}_{name}"), data.shape, "int32",
                                           scale=[float(s) for s in self.x_q.scale * w_scales], zero_point=0,
                                           data=data)

    def conv(self, x: int, filters: int, bias: int, output: int, depthwise: bool) -> None:
        from ai_edge_litert import schema_py_generated as schema

        options = schema.DepthwiseConv2DOptionsT() if depthwise else schema.Conv2DOptionsT()
        options.padding = schema.Padding.VALID
        options.strideH, options.strideW = self.p.stride
        options.dilationHFactor, options.dilationWFactor = self.p.dilation
        options.fusedActivationFunction = self.ctx.fused_activation(self.node)
        if depthwise:
            options.depthMultiplier = 1
        self.ctx.builder.add_operator("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", [x, filters, bias], [output],
                                      options)


def _convert_forward(e: _Emitter) -> None:
    p, ctx = e.p, e.ctx
    weights, w_scales, bias = _weights_and_bias(e.node, ctx, p)
    x = e.input_nhwc()
    ph, pw = p.padding
    if ph or pw:
        x = ctx.pad(x, e.node, [(0, 0), (ph, ph), (pw, pw), (0, 0)])
    if p.multiplier > 1:
        x = _repeat_channels(e, x, p.multiplier)
    output, finish = e.output_nhwc()
    if p.depthwise or p.multiplier > 1:
        filters = e.filters("weights", weights.transpose(1, 2, 3, 0), w_scales, 3)  # [1, kH, kW, Cout]
        e.conv(x, filters, e.bias("bias", bias, w_scales), output, depthwise=True)
    elif p.split:
        _convert_groups(e, x, weights, w_scales, bias, output)
    else:
        filters = e.filters("weights", weights.transpose(0, 2, 3, 1), w_scales, 0)  # OHWI
        e.conv(x, filters, e.bias("bias", bias, w_scales), output, depthwise=False)
    finish()


def _repeat_channels(e: _Emitter, x: int, times: int) -> int:
    """x [N, H, W, C] -> [N, H, W, C * times] with channel c * times + m = x's channel c (PyTorch's order of a
    depthwise conv's output channels), as RESHAPE, CONCATENATION of `times` copies on a new last axis, RESHAPE."""
    n, h, w, c = e.ctx.builder.tensor_shape(x)
    column = e.reshape(x, [n, h * w, c, 1])
    scale, zero_point = e.ctx.builder.tensor_quantization(x)
    repeated = e.ctx.builder.add_tensor(e.ctx.name(f"{e.node.name}_repeated"), [n, h * w, c, times], "int8",
                                        scale=scale, zero_point=zero_point)
    e.concatenate([column] * times, 3, repeated)
    return e.reshape(repeated, [n, h, w, c * times])


def _convert_groups(e: _Emitter, x: int, weights, w_scales, bias, output: int) -> None:
    """One CONV_2D per group on a SLICE of its input channels, the outputs concatenated along channels."""
    p, ctx = e.p, e.ctx
    n, h, w, _ = ctx.builder.tensor_shape(x)
    out_shape = ctx.builder.tensor_shape(output)
    cin_g, cout_g = p.cin // p.groups, p.cout // p.groups
    scale, zero_point = ctx.builder.tensor_quantization(x)
    outputs = []
    for g in range(p.groups):
        x_g = ctx.builder.add_tensor(ctx.name(f"{e.node.name}_group{g}_input"), [n, h, w, cin_g], "int8",
                                     scale=scale, zero_point=zero_point)
        e.slice(x, [0, 0, 0, g * cin_g], [n, h, w, cin_g], x_g)
        channels = slice(g * cout_g, (g + 1) * cout_g)
        filters = e.filters(f"group{g}_weights", weights[channels].transpose(0, 2, 3, 1), w_scales[channels], 0)
        out_g = e.tensor(f"group{g}", [*out_shape[:3], cout_g], e.out_q)
        e.conv(x_g, filters, e.bias(f"group{g}_bias", bias[channels], w_scales[channels]), out_g, depthwise=False)
        outputs.append(out_g)
    e.concatenate(outputs, 3, output)


def _convert_transposed(e: _Emitter) -> None:
    from ai_edge_litert import schema_py_generated as schema

    p, ctx = e.p, e.ctx
    weights, w_scales, bias = _weights_and_bias(e.node, ctx, p)
    x = e.input_nhwc()
    output, finish = e.output_nhwc()
    n, h_out, w_out, cout = ctx.builder.tensor_shape(output)
    ph, pw = p.padding
    # TRANSPOSE_CONV computes rows 0 .. H_out + 2 * ph - 1 of the full (unpadded) result; PyTorch's output is the
    # window starting at row ph.
    full_shape = [n, h_out + 2 * ph, w_out + 2 * pw, cout]
    full = output if (ph, pw) == (0, 0) else e.tensor("uncropped", full_shape, e.out_q)
    filters = e.filters("weights", weights.transpose(1, 2, 3, 0), w_scales, 0)  # [Cout, kH, kW, Cin]
    options = schema.TransposeConvOptionsT()
    options.padding = schema.Padding.VALID
    options.strideH, options.strideW = p.stride
    options.fusedActivationFunction = ctx.fused_activation(e.node)
    output_shape = ctx.int32_constant(f"{e.node.name}_output_shape", full_shape)
    ctx.builder.add_operator("TRANSPOSE_CONV", [output_shape, filters, x, e.bias("bias", bias, w_scales)], [full],
                             options)
    if full != output:
        e.slice(full, [0, ph, pw, 0], [n, h_out, w_out, cout], output)
    finish()


def _convert(node: Node, ctx) -> None:
    p = conv_params(node)
    emitter = _Emitter(node, ctx, p)
    if p.transposed:
        _convert_transposed(emitter)
    else:
        _convert_forward(emitter)


OPERATORS = [
    NeutronOperator(
        name="aten.convolution.default",
         annotated_as={
             aten.conv1d.default: Weighted(per_channel=True),
             aten.conv2d.default: Weighted(per_channel=True),
             aten.conv_transpose1d.default: Weighted(per_channel=True, transposed=True),
             aten.conv_transpose2d.input: Weighted(per_channel=True, transposed=True),
         },
        targets=(edge("aten.convolution.default"),),
        aliases=("conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"),
        layout=Layout.CHANNELS_FIRST, kind=OpKind.COMPUTE,
        constraints=("1D or 2D; static weights and bias; kernel, stride, dilation <= 4096; "
                     "kH * kW * ceil_to(Cin, num_macs) <= 65535 (Cin per group when grouped); groups = 1, depthwise "
                     "(also with a channel multiplier) or split into one conv per group; transposed: groups = 1, "
                     "dilation 1, stride <= 2, stride <= kernel, padding < kernel"),
        quantization=("int8 activations; int8 symmetric per-channel weights (axis 0; axis 1 when transposed); "
                      "int32 bias (a float bias is quantized at s_in * s_w)"),
        check=_check,
        check_target=_check_target,
        macs=_macs,
        weight_args=(1, 2),
        float_bias_arg=2,
        convert=_convert,
        target_limits=_target_limits,
    ),
]
