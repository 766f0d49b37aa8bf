"""TFLite's fixed-point integer arithmetic, vectorized over numpy int64 arrays holding int32 values.

The functions follow TFLite's ``quantization_util.cc`` and ``common.h`` (gemmlowp's double rounding, not the
single-rounding build variant): ``QuantizeMultiplier``, ``SaturatingRoundingDoublingHighMul``,
``RoundingDivideByPOT`` and ``MultiplyByQuantizedMultiplier``, plus the activation range of a fused activation.
"""

from __future__ import annotations

import math

import numpy as np

from neutron_backend.runtime.exact import native

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Returns TFLite's ``(quantized_multiplier, shift)`` of a real multiplier: ``real ~ q * 2^(shift - 31)``,
    q in [2^30, 2^31), rounding half away from zero, tiny multipliers flushed to 0, shifts capped at 30."""
    if real == 0.0:
        return 0, 0
    mantissa, shift = math.frexp(real)
    q_fixed = round_half_away(mantissa * (1 << 31))
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return INT32_MAX, 30
    return int(q_fixed), shift


def round_half_away(value: float) -> int:
    """Returns ``std::round(value)`` (half away from zero) as an int."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value)) if abs(value) < 2**52 else int(value)


def round_half_away_f32(values: np.ndarray) -> np.ndarray:
    """Returns ``std::round`` of float32 values, exactly (no ``floor(x + 0.5)`` double rounding)."""
    truncated = np.trunc(values)
    fraction = values - truncated  # exact in binary floating point
    return truncated + np.where(np.abs(fraction) >= 0.5, np.sign(values), 0).astype(values.dtype)


def wrap_int32(values: np.ndarray) -> np.ndarray:
    """Returns int64 ``values`` wrapped to int32 two's complement, as C's int32 arithmetic would leave them."""
    return ((values - INT32_MIN) & 0xFFFFFFFF) + INT32_MIN


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul`` of int32 values: ``round(a * b / 2^31)``, half up.

    With ``nudge = 2^30`` for non-negative products and ``1 - 2^30`` otherwise and C's truncating division,
    the result equals ``floor((a * b + 2^30) / 2^31)`` for every sign, which an arithmetic shift computes.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    result = (a * b + (1 << 30)) >> 31
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, INT32_MAX, result) if overflow.any() else result


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded half away from zero (exponent >= 0)."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x: np.ndarray, multiplier: np.ndarray | int, shift: np.ndarray | int
                                     ) -> np.ndarray:
    """TFLite's ``MultiplyByQuantizedMultiplier(int32 x, multiplier, shift)``; ``multiplier``/``shift`` may be
    per-channel arrays broadcasting against ``x``. The left shift is done in int32, as the C code does."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    if np.any(left):
        x = wrap_int32(x << left)
    high = saturating_rounding_doubling_high_mul(x, multiplier)
    return rounding_divide_by_pot(high, right)


class Requantizer:
    """Per-channel requantization of int32 accumulators to int8, the hot loop of every convolution, compiled
    (``native_kernels.cpp``).

    ``out = clamp(MultiplyByQuantizedMultiplier(acc + offset[c], m[c], shift[c]) + zp, low, high)`` with
    TFLite's double rounding, or with ``single_rounding=True`` the ``TFLITE_SINGLE_ROUNDING`` form
    ``(x * m + 2^(30 - shift)) >> (31 - shift)``, which LiteRT 2.3.0's reference int8 FULLY_CONNECTED uses
    (measured against it; its convolutions use the double rounding). The additions wrap in int32, as in C.
    """

    def __init__(self, offset: np.ndarray, multipliers: np.ndarray, shifts: np.ndarray, zero_point: int, low: int,
                 high: int, single_rounding: bool = False) -> None:
        self.offset = wrap_int32(np.asarray(offset, dtype=np.int64)).astype(np.int32)
        self.multipliers = np.ascontiguousarray(multipliers, dtype=np.int32)
        self.shifts = np.ascontiguousarray(shifts, dtype=np.int32)
        self.zero_point, self.low, self.high = int(zero_point), int(low), int(high)
        self.single_rounding = single_rounding

    def __call__(self, acc: np.ndarray) -> np.ndarray:
        """Returns int8 outputs for integer accumulators ``acc`` (int32, or wider values wrapped to int32 as
        TFLite's int32 sums would be), channels on the last axis."""
        channels = self.offset.size
        values = np.ascontiguousarray(acc if acc.dtype == np.int32 else wrap_int32(acc.astype(np.int64)),
                                      dtype=np.int32)
        out = np.empty(values.shape, dtype=np.int8)
        native.library().nb_requantize(
            native.pointer(values), values.size // channels, channels, native.pointer(self.offset),
            native.pointer(self.multipliers), native.pointer(self.shifts), int(self.single_rounding),
            self.zero_point, self.low, self.high, native.pointer(out))
        return out


def activation_range(activation: str, scale: float, zero_point: int, qmin: int = -128, qmax: int = 127
                     ) -> tuple[int, int]:
    """TFLite's ``CalculateActivationRangeQuantized`` for a fused activation ``NONE``, ``RELU``, ``RELU6`` or
    ``RELU_N1_TO_1`` on an output of ``scale``/``zero_point`` (``f / scale`` in float32, as TFLite does)."""

    def quantize(value: float) -> int:
        scaled = np.float32(value) / np.float32(scale)
        return zero_point + int(round_half_away_f32(np.array([scaled], dtype=np.float32))[0])

    if activation == "RELU":
        return max(qmin, quantize(0.0)), qmax
    if activation == "RELU6":
        return max(qmin, quantize(0.0)), min(qmax, quantize(6.0))
    if activation == "RELU_N1_TO_1":
        return max(qmin, quantize(-1.0)), min(qmax, quantize(1.0))
    if activation == "NONE":
        return qmin, qmax
    raise NotImplementedError(f"fused activation {activation!r}; supported: NONE, RELU, RELU6, RELU_N1_TO_1")
