"""The int8 kernels of the exact engine, one ``prepare`` function per TFLite builtin operator.

``prepare(op)`` reads the operator's static facts once (weights, multipliers, tables, padding) and returns a
function mapping the operator's input arrays (batch-leading, TFLite layout; constants as their data, None for an
omitted optional input) to its output array. Each follows TFLite's reference kernel for int8 (LiteRT 2.3.0,
``BUILTIN_REF``) bit for bit. Convolutions and fully connected layers are int8 GEMMs with int32 sums (exact, as
TFLite's accumulators; ``gemm.py``); depthwise convolutions and the requantization run compiled
(``native_kernels.cpp``); TRANSPOSE_CONV sums in float32, exact while every partial sum stays below 2^24 in
magnitude (its input is split along the summed axis to keep it so).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from neutron_backend.runtime.exact import native, unary
from neutron_backend.runtime.exact.fixed_point import (
    Requantizer,
    activation_range,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    round_half_away_f32,
    wrap_int32,
)
from neutron_backend.runtime.exact.gemm import Int8GemmRequantize
from neutron_backend.runtime.exact.model import Operator, Tensor
from neutron_backend.runtime.exact.softmax import Int8Softmax

Kernel = Callable[[Sequence[np.ndarray | None]], np.ndarray]

# The largest number of int8 x int8 products (each at most 2^14 in magnitude) a float32 sum holds exactly.
_EXACT_FLOAT32_TERMS = 1024
f32 = np.float32


class UnsupportedOperator(NotImplementedError):
    """The exact engine has no kernel for an operator, or not for its types or options."""


def _per_channel_multipliers(real: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(value) for value in real]
    return (np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64))


def _conv_multipliers(x: Tensor, w: Tensor, out: Tensor, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """``PopulateConvolutionQuantizationParams``: ``double(s_in) * double(s_w[c]) / double(s_out)``."""
    scales = w.scales if w.scales.size == channels else np.full(channels, w.scales[0], dtype=np.float32)
    return _per_channel_multipliers([float(x.scales[0]) * float(s) / float(out.scales[0]) for s in scales])


def _output_range(op: Operator) -> tuple[int, int]:
    out = op.outputs[0]
    return activation_range(op.activation(), out.scale, out.zero_point)


def _same_or_valid_padding(padding: int, size: int, kernel: int, stride: int, dilation: int, out_size: int
                           ) -> tuple[int, int]:
    """TFLite's ``ComputePaddingHeightWidth`` for one axis, as (before, after): ``before`` is what the reference
    kernels offset by; ``after`` is whatever the last window needs beyond the input (windows are clipped)."""
    effective = (kernel - 1) * dilation + 1
    if padding == 0:  # SAME
        computed = (size + stride - 1) // stride
    else:
        computed = (size + stride - effective) // stride
    total = max((computed - 1) * stride + effective - size, 0)
    before = total // 2
    after = max((out_size - 1) * stride + effective - size - before, 0)
    return before, after


def _geometry(op: Operator, kernel_h: int, kernel_w: int) -> tuple[tuple[int, int], tuple[int, int],
                                                                      tuple[int, int], tuple[int, int]]:
    """A convolution's (stride, dilation, (pad before, after) in height, in width)."""
    x_t, out, options = op.inputs[0], op.outputs[0], op.options
    stride = (int(options.strideH), int(options.strideW))
    dilation = (int(options.dilationHFactor), int(options.dilationWFactor))
    pads_h = _same_or_valid_padding(options.padding, x_t.shape[1], kernel_h, stride[0], dilation[0], out.shape[1])
    pads_w = _same_or_valid_padding(options.padding, x_t.shape[2], kernel_w, stride[1], dilation[1], out.shape[2])
    return stride, dilation, pads_h, pads_w


def _padded(x: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]], pad_value: int) -> np.ndarray:
    """NHWC int8 ``x`` padded in height and width with ``pad_value``, C-contiguous."""
    (top, bottom), (left, right) = pads
    x = np.ascontiguousarray(x)
    if not any((top, bottom, left, right)):
        return x
    batches, height, width, channels = x.shape
    padded = np.empty((batches, height + top + bottom, width + left + right, channels), dtype=x.dtype)
    native.library().nb_pad_hw(native.pointer(x), batches, height, width, channels * x.itemsize, top, bottom, left,
                               right, pad_value, native.pointer(padded))
    return padded


def _patches(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
             pads: tuple[tuple[int, int], tuple[int, int]], out_hw: tuple[int, int], pad_value: int) -> np.ndarray:
    """im2col of NHWC int8 ``x``: rows (n, oy, ox), columns (ky, kx, c), padding holding ``pad_value``."""
    x = _padded(x, pads, pad_value)
    batches, height, width, channels = x.shape
    rows = np.empty((batches * out_hw[0] * out_hw[1], kernel[0] * kernel[1] * channels), dtype=np.int8)
    native.library().nb_im2col(native.pointer(x), batches, height, width, channels, *kernel, *stride, *dilation,
                               *out_hw, native.pointer(rows))
    return rows


def conv_2d(op: Operator) -> Kernel:
    """CONV_2D (``reference_integer_ops::ConvPerChannel``): ``sum((x - zp_in) * w) + bias`` requantized per output
    channel, out-of-input taps contributing nothing.

    The sum runs as an int8 GEMM over the input's windows padded with ``zp_in``: summing ``x * w`` over every tap
    and subtracting ``zp_in * sum(w)`` equals the sum of ``(x - zp_in) * w`` over the taps inside the input."""
    x_t, w_t = op.inputs[0], op.inputs[1]
    b_t = op.inputs[2] if len(op.inputs) > 2 else None
    out = op.outputs[0]
    _check_int8(op, x_t, w_t)
    w = w_t.data  # (Cout, kh, kw, Cin)
    channels, kh, kw, filter_depth = w.shape
    if x_t.shape[-1] != filter_depth:
        raise UnsupportedOperator(f"CONV_2D with {x_t.shape[-1]} input channels and filters of {filter_depth}: "
                                  "grouped convolutions are not supported")
    stride, dilation, pads_h, pads_w = _geometry(op, kh, kw)
    bias = b_t.data.astype(np.int64) if b_t is not None and b_t.data is not None else np.zeros(channels, np.int64)
    in_zp = x_t.zero_point
    multipliers, shifts = _conv_multipliers(x_t, w_t, out, channels)
    gemm = Int8GemmRequantize(w.reshape(channels, -1), bias - in_zp * w.astype(np.int64).sum(axis=(1, 2, 3)),
                              multipliers, shifts, out.zero_point, *_output_range(op))
    out_hw = (out.shape[1], out.shape[2])
    pointwise = (kh, kw) == (1, 1) and stride == (1, 1) and not any((*pads_h, *pads_w))

    def run(inputs: Sequence[np.ndarray | None]) -> np.ndarray:
        x = np.asarray(inputs[0])
        rows = x.reshape(-1, filter_depth) if pointwise else _patches(
            x, (kh, kw), stride, dilation, (pads_h, pads_w), out_hw, in_zp)
        return gemm(rows).reshape(x.shape[0], *out_hw, channels)

    return run


def depthwise_conv_2d(op: Operator) -> Kernel:
    """DEPTHWISE_CONV_2D (``reference_integer_ops::DepthwiseConvPerChannel``): output channel
    ``i * multiplier + m`` sums ``(x[i] - zp_in) * w`` over the taps inside the input, plus bias, requantized per
    channel; compiled (``native_kernels.cpp``)."""
    x_t, w_t = op.inputs[0], op.inputs[1]
    b_t = op.inputs[2] if len(op.inputs) > 2 else None
    out = op.outputs[0]
    _check_int8(op, x_t, w_t)
    _, kh, kw, channels = w_t.shape
    in_channels = x_t.shape[-1]
    if channels % in_channels:
        raise UnsupportedOperator(f"DEPTHWISE_CONV_2D with {channels} output channels for {in_channels} inputs "
                                  "(not a multiple)")
    stride, dilation, pads_h, pads_w = _geometry(op, kh, kw)
    bias = b_t.data.astype(np.int64) if b_t is not None and b_t.data is not None else np.zeros(channels, np.int64)
    # The kernel sums x * w over every tap of the zero-point-padded input; zp_in * sum(w) comes off the bias.
    bias = wrap_int32(bias - x_t.zero_point * w_t.data.astype(np.int64).sum(axis=(0, 1, 2))).astype(np.int32)
    multipliers, shifts = _conv_multipliers(x_t, w_t, out, channels)
    return _NativeDepthwise(op, bias, multipliers.astype(np.int32), shifts.astype(np.int32), stride, dilation,
                            (pads_h, pads_w))


class _NativeDepthwise:
    """DEPTHWISE_CONV_2D by ``nb_depthwise_conv``: the constant arrays live as long as this object, since the
    library reads them by the addresses taken here."""

    def __init__(self, op: Operator, bias: np.ndarray, multipliers: np.ndarray, shifts: np.ndarray,
                 stride: tuple[int, int], dilation: tuple[int, int], pads: tuple[tuple[int, int], ...]) -> None:
        x_t, w_t, out = op.inputs[0], op.inputs[1], op.outputs[0]
        _, kh, kw, self.channels = w_t.shape
        in_channels = x_t.shape[-1]
        self.pads, self.input_zero_point = pads, x_t.zero_point
        self.out_hw = (out.shape[1], out.shape[2])
        self.weight = np.ascontiguousarray(w_t.data.reshape(kh, kw, self.channels))
        self.packed = np.empty(-(-self.channels // 32) * -(-(kh * kw) // 2) * 64, dtype=np.int16)
        native.library().nb_depthwise_pack(native.pointer(self.weight), kh * kw, self.channels,
                                           native.pointer(self.packed))
        self.bias, self.multipliers, self.shifts = bias, multipliers, shifts
        self._constants = (in_channels, native.pointer(self.weight), native.pointer(self.packed), kh, kw,
                           self.channels // in_channels, *stride, *dilation, *self.out_hw, native.pointer(self.bias),
                           native.pointer(self.multipliers), native.pointer(self.shifts), out.zero_point,
                           *_output_range(op))

    def __call__(self, inputs: Sequence[np.ndarray | None]) -> np.ndarray:
        x = _padded(np.asarray(inputs[0]), self.pads, self.input_zero_point)
        y = np.empty((x.shape[0], *self.out_hw, self.channels), dtype=np.int8)
        status = native.library().nb_depthwise_conv(
            native.pointer(x), x.shape[0], x.shape[1], x.shape[2], *self._constants, native.pointer(y))
        if status:
            raise MemoryError(f"DEPTHWISE_CONV_2D: no memory for a row of {self.out_hw[1]} x {self.channels} "
                              "accumulators")
        return y


def transpose_conv(op: Operator) -> Kernel:
    """TRANSPOSE_CONV (``reference_integer_ops::TransposeConv``): each input pixel scatters ``(x - zp_in) * w``
    to ``in * stride - pad + k``; bias added, requantized per output channel."""
    _, w_t, x_t = op.inputs[:3]
    b_t = op.inputs[3] if len(op.inputs) > 3 else None
    out = op.outputs[0]
    _check_int8(op, x_t, w_t)
    w = w_t.data.astype(np.int64)  # (Cout, kh, kw, Cin)
    channels, kh, kw, in_channels = w.shape
    options = op.options
    stride = (int(options.strideH), int(options.strideW))
    out_h, out_w = out.shape[1], out.shape[2]
    pad_h = _same_or_valid_padding(options.padding, out_h, kh, stride[0], 1, x_t.shape[1])[0]
    pad_w = _same_or_valid_padding(options.padding, out_w, kw, stride[1], 1, x_t.shape[2])[0]
    bias = b_t.data.astype(np.int64) if b_t is not None and b_t.data is not None else np.zeros(channels, np.int64)
    multipliers, shifts = _conv_multipliers(x_t, w_t, out, channels)
    requantize = Requantizer(bias, multipliers, shifts, out.zero_point, *_output_range(op))
    # Each output sums at most Cin * ceil(kh/sh) * ceil(kw/sw) products of magnitude < 2^15.
    per_channel_terms = math.ceil(kh / stride[0]) * math.ceil(kw / stride[1])
    chunk = max(1, (_EXACT_FLOAT32_TERMS // 2) // per_channel_terms)
    weight = np.transpose(w, (3, 0, 1, 2)).astype(np.float32)  # (Cin, Cout, kh, kw)
    weights = [torch.from_numpy(weight[c:c + chunk]) for c in range(0, in_channels, chunk)]
    in_zp = x_t.zero_point

    def run(inputs: Sequence[np.ndarray | None]) -> np.ndarray:
        x = torch.from_numpy(np.asarray(inputs[2]).astype(np.float32) - in_zp).permute(0, 3, 1, 2)
        acc = None
        for i, part in enumerate(weights):
            with torch.backends.nnpack.flags(enabled=False):
                y = F.conv_transpose2d(x[:, i * chunk:(i + 1) * chunk], part, stride=stride)
            y = y.permute(0, 2, 3, 1).numpy().astype(np.int64)
            acc = y if acc is None else acc + y
        full = np.zeros((acc.shape[0], max(acc.shape[1], pad_h + out_h), max(acc.shape[2], pad_w + out_w),
                         channels), dtype=np.int64)
        full[:, :acc.shape[1], :acc.shape[2]] = acc
        cropped = full[:, pad_h:pad_h + out_h, pad_w:pad_w + out_w]
        return requantize(np.ascontiguousarray(cropped))

    return run


def fully_connected(op: Operator) -> Kernel:
    """FULLY_CONNECTED (``reference_integer_ops::FullyConnected``): rows of the input flattened to the filter's
    depth, ``sum((x - zp_in) * w) + bias``, multipliers as for convolutions (``double(s_in) * s_w / s_out``) but
    applied with a single rounding."""
    x_t, w_t = op.inputs[0], op.inputs[1]
    b_t = op.inputs[2] if len(op.inputs) > 2 else None
    out = op.outputs[0]
    _check_int8(op, x_t, w_t)
    if w_t.data is None:
        raise UnsupportedOperator("FULLY_CONNECTED with non-constant weights")
    if np.any(w_t.zero_points):
        raise UnsupportedOperator(f"FULLY_CONNECTED with weight zero points {w_t.zero_points.tolist()}")
    w = w_t.data.astype(np.int64)
    channels, depth = w.shape
    multipliers, shifts = _conv_multipliers(x_t, w_t, out, channels)
    bias = b_t.data.astype(np.int64) if b_t is not None and b_t.data is not None else np.zeros(channels, np.int64)
    offset = bias - x_t.zero_point * w.sum(axis=1)
    gemm = Int8GemmRequantize(w_t.data, offset, multipliers, shifts, out.zero_point, *_output_range(op),
                              single_rounding=True)
    out_tail = out.shape[1:]

    def run(inputs: Sequence[np.ndarray | None]) -> np.ndarray:
        return gemm(np.asarray(inputs[0]).reshape(-1, depth)).reshape((-1, *out_tail))

    return run


def batch_matmul(op: Operator) -> Kernel:
    """BATCH_MATMUL (``reference_ops::BatchMatMul``, int8): ``(lhs - zp) @ (rhs - zp)`` (adjoints applied) with
    broadcast batch dimensions, one multiplier ``float(s_lhs * s_rhs) / s_out``, full int8 range."""
    lhs_t, rhs_t = op.inputs[0], op.inputs[1]
    out = op.outputs[0]
    _check_int8(op, lhs_t, rhs_t)
    multiplier, shift = quantize_multiplier(float(f32(lhs_t.scale) * f32(rhs_t.scale)) / float(f32(out.scale)))
    adj_x, adj_y = bool(op.options.adjX), bool(op.options.adjY)
    zp_l, zp_r = lhs_t.zero_point, rhs_t.zero_point

    def run(inputs: Sequence[np.ndarray | None]) -> np.ndarray:
        # |products| < 2^16 and depths far below 2^37: float64 sums are exact.
        lhs = torch.from_numpy(np.asarray(inputs[0]).astype(np.float64) - zp_l)
        rhs = torch.from_numpy(np.asarray(inputs[1]).astype(np.float64) - zp_r)
        if adj_x:
            lhs = lhs.transpose(-1, -2)
        if adj_y:
            rhs = rhs.transpose(-1, -2)
        acc = torch.matmul(lhs, rhs).numpy().astype(np.int64)
        scaled = multiply_by_quantized_multiplier(acc, multiplier, shift)
        return np.clip(scaled + out.zero_point, -128, 127).astype(np.int8)

    return run


def _binary_table(op: Operator, element: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Kernel:
    """An int8 x int8 -> int8 operator as a 256 x 256 table, broadcasting its inputs like numpy."""
    a = np.arange(-128, 128, dtype=np.int64)[:, None]
    b = np.arange(-128, 128, dtype=np.int64)[None, :]
    # Indexed by the uint8 bits of both operands: (a_bits << 8) | b_bits.
    table = np.ascontiguousarray(np.roll(np.roll(element(a, b).astype(np.int8), -128, axis=0), -128, axis=1)
                                 .reshape(-1))

    def run(inputs: Sequence[np.ndarray | None]) -> np.ndarray:
        a, b = np.ascontiguousarray(inputs[0]), np.ascontiguousarray(inputs[1])
        if a.shape == b.shape:  # the common case, compiled
            out = np.empty(a.shape, dtype=np.int8)
            native.library().nb_binary_table(native.pointer(a), native.pointer(b), a.size, native.pointer(table),
                                             native.pointer(out))
            return out
        first = a.view(np.uint8).astype(np.uint16) << 8
        return np.take(table, first | b.view(np.uint8))

    return run


def _add_or_sub(op: Operator, sign: int) -> Kernel:
    """ADD and SUB (``reference_integer_ops::Add`` and the general quantized SUB): both inputs shifted left by 20
    and rescaled to twice the larger input scale, summed, rescaled to the output."""
    a_t, b_t = op.inputs
    out = op.outputs[0]
    _check_int8(op, a_t, b_t)
    left_shift = 20
    twice_max = 2.0 * float(max(f32(a_t.scale), f32(b_t.scale)))
    m1, s1 = quantize_multiplier(float(f32(a_t.scale)) / twice_max)
    m2, s2 = quantize_multiplier(float(f32(b_t.scale)) / twice_max)
    mo, so = quantize_multiplier(twice_max / float(np.float32(1 << left_shift) * f32(out.scale)))
    low, high = _output_range(op)

    def element(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        scaled_a = multiply_by_quantized_multiplier((a - a_t.zero_point) * (1 << left_shift), m1, s1)
        scaled_b = multiply_by_quantized_multiplier((b - b_t.zero_point) * (1 << left_shift), m2, s2)
        raw = multiply_by_quantized_multiplier(scaled_a + sign * scaled_b, mo, so) + out.zero_point
        return np.clip(raw, low, high)

    return _binary_table(op, element)


def add(op: Operator) -> Kernel:
    """ADD; see :func:`_add_or_sub`."""
    return _add_or_sub(op, 1)


def sub(op: Operator) -> Kernel:
    """SUB; see :func:`_add_or_sub`."""
    return _add_or_sub(op, -1)


def mul(op: Operator) -> Kernel:
    """MUL (``reference_integer_ops::Mul``): ``(a - zp_a) * (b - zp_b)`` requantized by ``s_a * s_b / s_out``."""
    a_t, b_t = op.inputs
    out = op.outputs[0]
    _check_int8(op, a_t, b_t)
    multiplier, shift = quantize_multiplier(float(f32(a_t.scale)) * float(f32(b_t.scale)) / float(f32(out.scale)))
    low, high = _output_range(op)

    def element(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        product = (a - a_t.zero_point) * (b - b_t.zero_point)
        return np.clip(multiply_by_quantized_multiplier(product, multiplier, shift) + out.zero_point, low, high)

    return _binary_table(op, element)


def maximum(op: Operator) -> Kernel:
    """MAXIMUM: elementwise on the raw values (inputs and output share qparams)."""
    return lambda inputs: np.maximum(inputs[0], inputs[1])


def minimum(op: Operator) -> Kernel:
    """MINIMUM: elementwise on the raw values."""
    return lambda inputs: np.minimum(inputs[0], inputs[1])


def prelu(op: Operator) -> Kernel:
    """PRELU (``reference_ops::BroadcastPrelu4DSlow``): x >= zp: ``x * s_in / s_out``; else
    ``x * alpha * s_in * s_alpha / s_out``."""
    x_t, alpha_t = op.inputs
    out = op.outputs[0]
    m1, s1 = quantize_multiplier(float(f32(x_t.scale) / f32(out.scale)))
    m2, s2 = quantize_multiplier(float(f32(x_t.scale) * f32(alpha_t.scale) / f32(out.scale)))

    def run(inputs: Sequence[np.ndarray | None]) -> np.ndarray:
        value = np.asarray(inputs[0]).astype(np.int64) - x_t.zero_point
        alpha = np.asarray(inputs[1]).astype(np.int64) - alpha_t.zero_point
        result = np.where(value >= 0, multiply_by_quantized_multiplier(value, m1, s1),
                          multiply_by_quantized_multiplier(value * alpha, m2, s2))
        return np.clip(result + out.zero_point, -128, 127).astype(np.int8)

    return run


def _by_uint8_bits(table: np.ndarray) -> np.ndarray:
    """Reorders a table indexed by ``x + 128`` to be indexed by the bits of int8 x read as uint8 (no index
    arithmetic at run time)."""
    return np.roll(table, -128)


def _table_kernel(table: np.ndarray) -> Kernel:
    by_bits = _by_uint8_bits(table)
    return lambda inputs: np.take(by_bits, np.ascontiguousarray(inputs[0]).view(np.uint8))


def _qparams(op: Operator) -> tuple[float, int, float, int]:
    x_t, out = op.inputs[0], op.outputs[0]
    _check_int8(op, x_t)
    return x_t.scale, x_t.zero_point, out.scale, out.zero_point


def relu(op: Operator) -> Kernel:
    """RELU; RELU6, RELU_N1_TO_1 and RELU_0_TO_1 likewise, with their bounds."""
    bounds = {"RELU": (0.0, None), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0), "RELU_0_TO_1": (0.0, 1.0)}
    return _table_kernel(unary.relu_x(*_qparams(op), *bounds[op.name]))


def logistic(op: Operator) -> Kernel:
    """LOGISTIC (a float-built table in TFLite)."""
    return _table_kernel(unary.logistic(*_qparams(op)))


def tanh(op: Operator) -> Kernel:
    """TANH (a float-built table in TFLite)."""
    return _table_kernel(unary.tanh(*_qparams(op)))


def exp(op: Operator) -> Kernel:
    """EXP (a float-built table in TFLite)."""
    return _table_kernel(unary.exp(*_qparams(op)))


def log(op: Operator) -> Kernel:
    """LOG (a float-built table in TFLite)."""
    return _table_kernel(unary.log(*_qparams(op)))


def hard_swish(op: Operator) -> Kernel:
    """HARD_SWISH (int16 fixed point in TFLite)."""
    return _table_kernel(unary.hard_swish(*_qparams(op)))


def leaky_relu(op: Operator) -> Kernel:
    """LEAKY_RELU."""
    return _table_kernel(unary.leaky_relu(*_qparams(op), float(op.options.alpha)))


def absolute(op: Operator) -> Kernel:
    """ABS."""
    return _table_kernel(unary.absolute(*_qparams(op)))


def rsqrt(op: Operator) -> Kernel:
    """RSQRT; an input below the zero point (a negative real value) fails, as TFLite's kernel does."""
    in_scale, in_zp, out_scale, out_zp = _qparams(op)
    table = unary.rsqrt(in_scale, in_zp, out_scale, out_zp)

    def run(inputs: Sequence[np.ndarray | None]) -> np.ndarray:
        x = np.asarray(inputs[0])
        if x.size and int(x.min()) < in_zp:
            raise ValueError(f"RSQRT input {int(x.min())} is below its zero point {in_zp} (a negative value)")
        return table[x.astype(np.int32) + 128]

    return run


def softmax(op: Operator) -> Kernel:
    """SOFTMAX over the last axis (gemmlowp fixed point)."""
    x_t, out = op.inputs[0], op.outputs[0]
    _check_int8(op, x_t)
    if out.zero_point != -128 or abs(out.scale - 1 / 256) > 0.001 / 256:
        raise UnsupportedOperator(f"int8 SOFTMAX needs output qparams (1/256, -128), got ({out.scale}, "
                                  f"{out.zero_point})")
    kernel = Int8Softmax(x_t.scale, float(op.options.beta))
    return lambda inputs: kernel(np.asarray(inputs[0]))


def concatenation(op: Operator) -> Kernel:
    """CONCATENATION (int8 inputs share the output's qparams: a copy)."""
    axis = int(op.options.axis)
    rank = len(op.outputs[0].shape)
    axis = axis + rank if axis < 0 else axis
    return lambda inputs: np.concatenate([np.asarray(x) for x in inputs], axis=axis)


def _pool_geometry(op: Operator) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]:
    x_t, out = op.inputs[0], op.outputs[0]
    o = op.options
    kernel = (int(o.filterHeight), int(o.filterWidth))
    stride = (int(o.strideH), int(o.strideW))
    pads_h = _same_or_valid_padding(o.padding, x_t.shape[1], kernel[0], stride[0], 1, out.shape[1])
    pads_w = _same_or_valid_padding(o.padding, x_t.shape[2], kernel[1], stride[1], 1, out.shape[2])
    return kernel, stride, (*pads_h, *pads_w)


def average_pool_2d(op: Operator) -> Kernel:
    """AVERAGE_POOL_2D (``reference_integer_ops::AveragePool``): the sum over the window clipped to the input,
    divided by the clipped window's size rounding half away from zero, clamped to the fused activation."""
    kernel, stride, pads = _pool_geometry(op)
    x_t, out = op.inputs[0], op.outputs[0]
    _check_int8(op, x_t)
    low, high = _output_range(op)
    ones = torch.ones((1, 1, x_t.shape[1], x_t.shape[2]), dtype=torch.float32)
    ones = F.pad(ones, (pads[2], pads[3], pads[0], pads[1]))
    counts = F.avg_pool2d(ones, kernel, stride, divisor_override=1)[0, 0].numpy().astype(np.int64)
    counts = counts[:out.shape[1], :out.shape[2], None]
    if np.any(counts == 0):
        raise UnsupportedOperator("AVERAGE_POOL_2D with a window entirely outside its input")
    half = counts // 2

    def run(inputs: Sequence[np.ndarray | None]) -> np.ndarray:
        x = torch.from_numpy(np.asarray(inputs[0]).astype(np.float32)).permute(0, 3, 1, 2)
        x = F.pad(x, (pads[2], pads[3], pads[0], pads[1]))
        sums = F.avg_pool2d(x, kernel, stride, divisor_override=1).permute(0, 2, 3, 1).numpy()
        acc = sums[:, :out.shape[1], :out.shape[2]].astype(np.int64)
        average = np.sign(acc) * ((np.abs(acc) + half) // counts)
        return np.clip(average, low, high).astype(np.int8)

    return run


def max_pool_2d(op: Operator) -> Kernel:
    """MAX_POOL_2D: the maximum over the window clipped to the input, clamped to the fused activation."""
    kernel, stride, pads = _pool_geometry(op)
    x_t, out = op.inputs[0], op.outputs[0]
    _check_int8(op, x_t)
    low, high = _output_range(op)

    def run(inputs: Sequence[np.ndarray | None]) -> np.ndarray:
        x = torch.from_numpy(np.asarray(inputs[0]).astype(np.float32)).permute(0, 3, 1, 2)
        x = F.pad(x, (pads[2], pads[3], pads[0], pads[1]), value=-1000.0)
        y = F.max_pool2d(x, kernel, stride).permute(0, 2, 3, 1).numpy()[:, :out.shape[1], :out.shape[2]]
        return np.clip(y, low, high).astype(np.int8)

    return run


def _axes(op: Operator) -> tuple[int, ...]:
    rank = len(op.inputs[0].shape)
    return tuple(sorted({int(a) + rank if int(a) < 0 else int(a) for a in op.inputs[1].data.reshape(-1)}))


def mean(op: Operator) -> Kernel:
    """MEAN (``reference_ops::QuantizedMeanOrSum``, integer form): ``sum(x) - zp_in * n`` requantized by
    ``s_in / s_out`` with ``1/n`` folded into the multiplier (``(m << k) / n``, ``k = floor(log2 n)`` capped)."""
    x_t, out = op.inputs[0], op.outputs[0]
    _check_int8(op, x_t)
    axes = _axes(op)
    keep = bool(op.options.keepDims)
    count = int(np.prod([x_t.shape[a] for a in axes])) if axes else 1
    multiplier, shift = quantize_multiplier(float(x_t.scale) / float(out.scale))
    if count > 0:
        fold = min(count.bit_length() - 1, 32, 31 + shift)
        multiplier = (multiplier << fold) // count
        shift -= fold

    lanes = out.shape[-1] if out.shape else 1
    requantize = Requantizer(np.full(lanes, -x_t.zero_point * count), np.full(lanes, multiplier),
                             np.full(lanes, shift), out.zero_point, -128, 127)

    def run(inputs: Sequence[np.ndarray | None]) -> np.ndarray:
        # int32 sums, as the reference's accumulator (the wrap-around of C's int32 included).
        total = np.asarray(inputs[0]).sum(axis=axes, keepdims=keep, dtype=np.int32)
        return requantize(total.reshape(-1, lanes)).reshape(total.shape)

    return run


def reduce_max(op: Operator) -> Kernel:
    """REDUCE_MAX over the axes (input and output share qparams)."""
    axes, keep = _axes(op), bool(op.options.keepDims)
    return lambda inputs: np.max(inputs[0], axis=axes, keepdims=keep)


def reduce_min(op: Operator) -> Kernel:
    """REDUCE_MIN over the axes."""
    axes, keep = _axes(op), bool(op.options.keepDims)
    return lambda inputs: np.min(inputs[0], axis=axes, keepdims=keep)


def reshape(op: Operator) -> Kernel:
    """RESHAPE to the output tensor's shape, the leading (batch) dimension following the input's."""
    tail = op.outputs[0].shape[1:]
    if not op.outputs[0].shape:
        return lambda inputs: np.asarray(inputs[0]).reshape(())
    return lambda inputs: np.asarray(inputs[0]).reshape((-1, *tail))


def transpose(op: Operator) -> Kernel:
    """TRANSPOSE by the constant permutation. A permutation that keeps leading axes and swaps the two blocks of
    the rest (NCHW <-> NHWC among them) is a batch of 2D transposes, compiled."""
    perm = tuple(int(p) for p in op.inputs[1].data.reshape(-1))
    kept = next((k for k, p in enumerate(perm) if p != k), len(perm))
    split = perm[kept] if kept < len(perm) else len(perm)
    if perm != (*range(kept), *range(split, len(perm)), *range(kept, split)):
        return lambda inputs: np.ascontiguousarray(np.transpose(inputs[0], perm))

    def run(inputs: Sequence[np.ndarray | None]) -> np.ndarray:
        x = np.ascontiguousarray(inputs[0])
        if x.dtype.itemsize != 1:
            return np.ascontiguousarray(np.transpose(x, perm))
        out = np.empty([x.shape[p] for p in perm], dtype=x.dtype)
        native.library().nb_transpose_2d(native.pointer(x), math.prod(x.shape[:kept]),
                                         math.prod(x.shape[kept:split]), math.prod(x.shape[split:]),
                                         native.pointer(out))
        return out

    return run


def slice_(op: Operator) -> Kernel:
    """SLICE by constant begin and size (size -1: to the end); the batch axis is kept whole when it is."""
    begin = [int(b) for b in op.inputs[1].data.reshape(-1)]
    size = [int(s) for s in op.inputs[2].data.reshape(-1)]
    full_batch = begin[0] == 0 and size[0] in (-1, op.inputs[0].shape[0])

    def run(inputs: Sequence[np.ndarray | None]) -> np.ndarray:
        x = np.asarray(inputs[0])
        index = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size, strict=True))
        if full_batch:
            index = (slice(None), *index[1:])
        return np.ascontiguousarray(x[index])

    return run


def _paddings(op: Operator) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in op.inputs[1].data.reshape(-1, 2)]


def pad(op: Operator) -> Kernel:
    """PAD (with the output zero point) and PADV2 (with its constant value); padding of height and width only
    (NHWC) is compiled."""
    widths = _paddings(op)
    if op.name == "PADV2" and len(op.inputs) > 2 and op.inputs[2] is not None:
        value = int(op.inputs[2].data.reshape(-1)[0])
    else:
        value = op.outputs[0].zero_point
    if len(widths) == 4 and not any((*widths[0], *widths[3])):
        return lambda inputs: _padded(inputs[0], (widths[1], widths[2]), value)

    def run(inputs: Sequence[np.ndarray | None]) -> np.ndarray:
        x = np.asarray(inputs[0])
        # A filled array with the input copied in: several times faster than np.pad's general path.
        y = np.full([size + before + after for size, (before, after) in zip(x.shape, widths, strict=True)], value,
                    dtype=x.dtype)
        y[tuple(slice(before, before + size) for size, (before, _) in zip(x.shape, widths, strict=True))] = x
        return y

    return run


def mirror_pad(op: Operator) -> Kernel:
    """MIRROR_PAD: REFLECT (mode 0) excludes the edge, SYMMETRIC (mode 1) repeats it."""
    widths = _paddings(op)
    mode = "reflect" if int(op.options.mode) == 0 else "symmetric"
    return lambda inputs: np.pad(inputs[0], widths, mode=mode)


def _resize_geometry(op: Operator) -> tuple[int, int, int, int, bool, bool]:
    x_t, out = op.inputs[0], op.outputs[0]
    return (x_t.shape[1], x_t.shape[2], out.shape[1], out.shape[2], bool(op.options.alignCorners),
            bool(op.options.halfPixelCenters))


def resize_nearest_neighbor(op: Operator) -> Kernel:
    """RESIZE_NEAREST_NEIGHBOR (``reference_ops::ResizeNearestNeighbor``): float32 source indices."""
    in_h, in_w, out_h, out_w, align, half = _resize_geometry(op)

    def indices(in_size: int, out_size: int) -> np.ndarray:
        scale = (f32(in_size - 1) / f32(out_size - 1)) if align and out_size > 1 else f32(in_size) / f32(out_size)
        offset = f32(0.5) if half else f32(0.0)
        position = (np.arange(out_size, dtype=np.float32) + offset) * scale
        index = round_half_away_f32(position) if align else np.floor(position)
        index = np.minimum(index.astype(np.int64), in_size - 1)
        return np.maximum(index, 0) if half else index

    rows, cols = indices(in_h, out_h), indices(in_w, out_w)
    return lambda inputs: np.ascontiguousarray(np.asarray(inputs[0])[:, rows][:, :, cols])


def resize_bilinear(op: Operator) -> Kernel:
    """RESIZE_BILINEAR (``reference_ops::ResizeBilinearInteger``): 10-bit fixed-point source positions,
    four weighted neighbours summed in Q20 and divided rounding half away from zero."""
    in_h, in_w, out_h, out_w, align, half = _resize_geometry(op)

    def positions(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = ((1 << 10) * in_size + out_size // 2) // out_size
        if align and out_size > 1:
            scale = ((1 << 10) * (in_size - 1) + (out_size - 1) // 2) // (out_size - 1)
        values = np.arange(out_size, dtype=np.int64)
        scaled = values * scale + scale // 2 - (1 << 9) if half else values * scale
        truncated = np.where(scaled >= 0, scaled >> 10, -((-scaled) >> 10))
        lower = np.maximum(truncated, 0)
        upper_raw = scaled + (1 << 10) - 1
        upper = np.minimum(np.where(upper_raw >= 0, upper_raw >> 10, -((-upper_raw) >> 10)), in_size - 1)
        return scaled, lower, upper

    y, y0, y1 = positions(in_h, out_h)
    x, x0, x1 = positions(in_w, out_w)
    wy1 = (y - (1 << 10) * y0)[:, None, None]
    wy0 = (1 << 10) - wy1
    wx1 = (x - (1 << 10) * x0)[None, :, None]
    wx0 = (1 << 10) - wx1

    def run(inputs: Sequence[np.ndarray | None]) -> np.ndarray:
        v = np.asarray(inputs[0]).astype(np.int64)
        top, bottom = v[:, y0], v[:, y1]
        total = (top[:, :, x0] * wy0 * wx0 + bottom[:, :, x0] * wy1 * wx0 + top[:, :, x1] * wy0 * wx1
                 + bottom[:, :, x1] * wy1 * wx1)
        rounded = np.sign(total) * ((np.abs(total) + (1 << 19)) >> 20)
        return rounded.astype(np.int8)

    return run


def _check_int8(op: Operator, *tensors: Tensor | None) -> None:
    """Raises UnsupportedOperator unless the given tensors and the output are int8."""
    for tensor in (*tensors, op.outputs[0]):
        if tensor is not None and tensor.dtype != np.int8:
            raise UnsupportedOperator(f"{op.name} on {tensor.dtype.name} tensor {tensor.name!r}: the exact engine "
                                      "runs int8 kernels only")


KERNELS: dict[str, Callable[[Operator], Kernel]] = {
    "CONV_2D": conv_2d,
    "DEPTHWISE_CONV_2D": depthwise_conv_2d,
    "TRANSPOSE_CONV": transpose_conv,
    "FULLY_CONNECTED": fully_connected,
    "BATCH_MATMUL": batch_matmul,
    "ADD": add,
    "SUB": sub,
    "MUL": mul,
    "MAXIMUM": maximum,
    "MINIMUM": minimum,
    "PRELU": prelu,
    "RELU": relu,
    "RELU6": relu,
    "RELU_N1_TO_1": relu,
    "RELU_0_TO_1": relu,
    "LOGISTIC": logistic,
    "TANH": tanh,
    "EXP": exp,
    "LOG": log,
    "HARD_SWISH": hard_swish,
    "LEAKY_RELU": leaky_relu,
    "ABS": absolute,
    "RSQRT": rsqrt,
    "SOFTMAX": softmax,
    "CONCATENATION": concatenation,
    "AVERAGE_POOL_2D": average_pool_2d,
    "MAX_POOL_2D": max_pool_2d,
    "MEAN": mean,
    "REDUCE_MAX": reduce_max,
    "REDUCE_MIN": reduce_min,
    "RESHAPE": reshape,
    "TRANSPOSE": transpose,
    "SLICE": slice_,
    "PAD": pad,
    "PADV2": pad,
    "MIRROR_PAD": mirror_pad,
    "RESIZE_NEAREST_NEIGHBOR": resize_nearest_neighbor,
    "RESIZE_BILINEAR": resize_bilinear,
}
