"""256-entry tables of TFLite's int8 elementwise kernels, indexed by ``x + 128``.

An int8 elementwise operator has 256 possible inputs, so every one of them is evaluated once when a payload is
prepared and the batch is then a gather. How an entry is computed is what matters:

- **independent**: TFLite's kernel is integer arithmetic (ReLU family, HARD_SWISH, LEAKY_RELU, ABS, RSQRT); the
  entry is our own implementation of that arithmetic.
- **table**: TFLite's int8 kernel is itself a lookup table its ``Prepare`` fills in float32 with the C library's
  ``expf``/``tanhf``/``logf`` (LOGISTIC, TANH, EXP, LOG); we fill the same table with our own float32 code calling
  the same C library functions, so the float rounding matches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

import numpy as np

from neutron_backend.runtime.exact.fixed_point import (
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    round_half_away_f32,
)
from neutron_backend.runtime.exact.gemmlowp import mul, rescale

INT8_VALUES = np.arange(-128, 128, dtype=np.int64)

def f32(value: float) -> np.float32:
    """The float32 value C code holds for a tensor scale or option."""
    return np.float32(value)


@functools.cache
def _libm() -> ctypes.CDLL:
    library = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    for name in ("expf", "tanhf", "logf"):
        function = getattr(library, name)
        function.restype = ctypes.c_float
        function.argtypes = [ctypes.c_float]
    return library


def _float_lut(transform: Callable[[np.float32], np.float32], in_scale: float, in_zp: int, out_scale: float,
               out_zp: int) -> np.ndarray:
    """TFLite's ``LUTPopulate<int8_t>``: dequantize in float32, transform, ``round(y / out_scale) + zp``."""
    inverse_scale = np.float32(1.0) / f32(out_scale)
    table = np.empty(256, dtype=np.int8)
    for index, value in enumerate(range(-128, 128)):
        dequantized = f32(in_scale) * np.float32(value - in_zp)
        transformed = np.float32(transform(dequantized))
        rescaled = round_half_away_f32(np.array([transformed * inverse_scale], dtype=np.float32))[0]
        quantized = int(np.float32(rescaled + np.float32(out_zp)))
        table[index] = min(max(quantized, -128), 127)
    return table


def logistic(in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> np.ndarray:
    """LOGISTIC: ``1.0f / (1.0f + expf(-x))``."""
    expf = _libm().expf
    return _float_lut(lambda x: np.float32(1.0) / (np.float32(1.0) + np.float32(expf(float(-x)))),
                      in_scale, in_zp, out_scale, out_zp)


def tanh(in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> np.ndarray:
    """TANH: ``tanhf(x)``."""
    tanhf = _libm().tanhf
    return _float_lut(lambda x: np.float32(tanhf(float(x))), in_scale, in_zp, out_scale, out_zp)


def exp(in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> np.ndarray:
    """EXP: ``expf(x)``."""
    expf = _libm().expf
    return _float_lut(lambda x: np.float32(expf(float(x))), in_scale, in_zp, out_scale, out_zp)


def log(in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> np.ndarray:
    """LOG: ``logf(x)``, and the output range's minimum for x <= 0."""
    logf = _libm().logf
    output_min = np.float32(-128 - out_zp) * f32(out_scale)
    return _float_lut(lambda x: output_min if x <= 0 else np.float32(logf(float(x))),
                      in_scale, in_zp, out_scale, out_zp)


def _clamp8(values: np.ndarray) -> np.ndarray:
    return np.clip(values, -128, 127).astype(np.int8)


def relu_x(in_scale: float, in_zp: int, out_scale: float, out_zp: int, low: float, high: float | None
           ) -> np.ndarray:
    """RELU, RELU6, RELU_N1_TO_1, RELU_0_TO_1 (``ReluX``): requantize, then clamp to
    ``zp + roundf(bound / scale)`` (``high`` None: no upper bound)."""
    multiplier, shift = quantize_multiplier(float(f32(in_scale) / f32(out_scale)))
    values = out_zp + multiply_by_quantized_multiplier(INT8_VALUES - in_zp, multiplier, shift)

    def bound(value: float) -> int:
        return out_zp + int(round_half_away_f32(np.array([f32(value) / f32(out_scale)], dtype=np.float32))[0])

    low_q = max(-128, bound(low))
    high_q = 127 if high is None else min(127, bound(high))
    return _clamp8(np.minimum(np.maximum(values, low_q), high_q))


def _downscale_to_int16(multiplier: int) -> int:
    """TFLite's ``DownScaleInt32ToInt16Multiplier``."""
    if multiplier >= (1 << 31) - 1 - (1 << 15):
        return (1 << 15) - 1
    return (multiplier + (1 << 15)) >> 16


def _srdhm16(a: np.ndarray, b: int) -> np.ndarray:
    """gemmlowp's int16 ``SaturatingRoundingDoublingHighMul``: ``floor((a * b + 2^14) / 2^15)``."""
    result = (a * b + (1 << 14)) >> 15
    return np.where((a == -32768) & (b == -32768), 32767, result)


def _sdhm16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """TFLite's ``SaturatingDoublingHighMul`` (int16, rounding toward zero)."""
    product = a * b
    result = np.where(product >= 0, product >> 15, -((-product) >> 15))
    return np.where((a == -32768) & (b == -32768), 32767, result)


def _saturating_left_shift16(values: np.ndarray, amount: int) -> np.ndarray:
    return np.clip(values * (1 << amount), -32768, 32767)


def _rdbpot(values: np.ndarray, exponent: int) -> np.ndarray:
    mask = (1 << exponent) - 1
    return (values >> exponent) + ((values & mask) > ((mask >> 1) + (values < 0)))


def hard_swish(in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> np.ndarray:
    """HARD_SWISH (``reference_ops::HardSwish``): int16 fixed point with a "relu-ish" multiplier in [0, 1]."""
    hires_input_scale = np.float32(1.0 / 128.0) * f32(in_scale)
    output_multiplier, output_exponent = quantize_multiplier(float(hires_input_scale / f32(out_scale)))
    if output_exponent > 0:
        raise ValueError(f"HARD_SWISH: input scale {in_scale} / 128 over output scale {out_scale} is above 1, which "
                         "TFLite's int8 kernel refuses")
    output_multiplier16 = _downscale_to_int16(output_multiplier)
    reluish_scale = np.float32(3.0) / np.float32(32768.0)
    reluish_multiplier, reluish_exponent = quantize_multiplier(float(hires_input_scale / reluish_scale))
    reluish_multiplier16 = _downscale_to_int16(reluish_multiplier)

    hires = (INT8_VALUES - in_zp) * (1 << 7)
    preshift_output = _srdhm16(hires, output_multiplier16)
    reluish = hires
    if reluish_exponent > 0:
        reluish = _saturating_left_shift16(reluish, reluish_exponent - 1)
    reluish = _srdhm16(reluish, reluish_multiplier16)
    if reluish_exponent > 0:
        reluish = _saturating_left_shift16(reluish, 1)
    if reluish_exponent < 0:
        reluish = _rdbpot(reluish, -reluish_exponent)
    reluish = (reluish + (1 << 15)) >> 1
    output = _rdbpot(_sdhm16(reluish, preshift_output), -output_exponent) + out_zp
    return _clamp8(output)


def leaky_relu(in_scale: float, in_zp: int, out_scale: float, out_zp: int, alpha: float) -> np.ndarray:
    """LEAKY_RELU (``QuantizeLeakyRelu``): one multiplier for x >= 0, one with alpha below."""
    alpha_m, alpha_s = quantize_multiplier(float(f32(in_scale) * f32(alpha) / f32(out_scale)))
    identity_m, identity_s = quantize_multiplier(float(f32(in_scale) / f32(out_scale)))
    values = INT8_VALUES - in_zp
    output = np.where(values >= 0, multiply_by_quantized_multiplier(values, identity_m, identity_s),
                      multiply_by_quantized_multiplier(values, alpha_m, alpha_s))
    return _clamp8(output + out_zp)


def absolute(in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> np.ndarray:
    """ABS: ``|x - zp_in|``, rescaled when the scales differ."""
    values = np.abs(INT8_VALUES - in_zp)
    if f32(in_scale) != f32(out_scale):
        multiplier, shift = quantize_multiplier(float(f32(in_scale) / f32(out_scale)))
        values = multiply_by_quantized_multiplier(values, multiplier, shift)
    return _clamp8(values + out_zp)


def _inv_sqrt_multiplier_exp(value: int) -> tuple[int, int]:
    """TFLite's ``GetInvSqrtQuantizedMultiplierExp(value, kReverseShift=-1)``: Newton-Raphson in Q3.28."""
    if value <= 1:
        return (1 << 31) - 1, 0
    shift = 11
    while value >= 1 << 29:
        value //= 4
        shift += 1
    max_left_shift_bits = (32 - value.bit_length()) - 1
    left_shift_bit_pairs = max_left_shift_bits // 2 - 1
    shift -= left_shift_bit_pairs
    value <<= 2 * left_shift_bit_pairs
    fixed_input = np.array([value >> 1], dtype=np.int64)
    half_input = _rdbpot(fixed_input, 1)
    half_three = (1 << 28) + (1 << 27)
    x = np.array([1 << 28], dtype=np.int64)
    for _ in range(5):
        x3 = rescale(mul(mul(x, x), x), 9, 3)
        x = rescale(mul(half_three, x) - mul(half_input, x3), 6, 3)
    x = mul(x, 1518500250)  # sqrt(2) / 2 in Q0.31
    inv_sqrt = int(x[0])
    if shift < 0:
        inv_sqrt <<= -shift
        shift = 0
    return inv_sqrt, -shift


def rsqrt(in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> np.ndarray:
    """RSQRT (``RsqrtEvalQuantizedInt8``); entries below the input zero point are invalid inputs (TFLite fails
    the call), see :func:`rsqrt_valid_from`."""
    scale = 1.0 / float(np.float32(np.sqrt(f32(in_scale))) * f32(out_scale))
    multiplier, shift = quantize_multiplier(scale)
    k_shift = 20
    table = np.empty(256, dtype=np.int8)
    for index, x in enumerate(range(-128, 128)):
        value = x - in_zp
        if value < 0:
            table[index] = 0
            continue
        if value == 0:
            table[index] = 127
            continue
        inv_multiplier, inv_shift = _inv_sqrt_multiplier_exp(value)
        data = multiply_by_quantized_multiplier(np.array([1]), inv_multiplier, inv_shift + k_shift)
        output = multiply_by_quantized_multiplier(data, multiplier, shift - k_shift) + out_zp
        table[index] = min(max(int(output[0]), -128), 127)
    return table
