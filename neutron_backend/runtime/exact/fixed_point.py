"""TFLite's fixed-point integer arithmetic, vectorized over numpy int64 arrays holding int32 values.

The functions follow TFLite's ``quantization_util.cc`` and ``common.h`` (gemmlowp's double rounding, not the
single-rounding build variant): ``QuantizeMultiplier``, ``SaturatingRoundingDoublingHighMul``,
``RoundingDivideByPOT`` and ``MultiplyByQuantizedMultiplier``, plus the activation range of a fused activation.
"""

from __future__ import annotations

import math

import numpy as np

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
    """Per-channel requantization of int32 accumulators to int8, the hot loop of every convolution.

    ``out = clamp(MultiplyByQuantizedMultiplier(acc + offset[c], m[c], shift[c]) + zp, low, high)`` with
    TFLite's double rounding, or with ``single_rounding=True`` the ``TFLITE_SINGLE_ROUNDING`` form
    ``(x * m + 2^(30 - shift)) >> (31 - shift)``, which LiteRT 2.3.0's reference int8 FULLY_CONNECTED uses
    (measured against it; its convolutions use the double rounding).

    Two paths give the same integers:

    - exact int64 arithmetic, in cache-sized blocks with in-place operations: the high multiply is
      ``(x * m + 2^30) >> 31``, the rounding divide adds ``2^(r-1)`` and subtracts 1 for negative values;
    - for float32 accumulators (exact integers) with ``max_abs_acc`` known: ``rint(acc * M + offset * M)`` in
      float32, ``M = m * 2^(shift - 31)``. The exact result is the nearest integer to the real product except
      within ``2^-(r+1)`` of a half-integer (the double rounding moves the value by at most that) and within the
      float32 error bound of the product; the few elements that close to a half-integer are recomputed exactly.
    """

    _BLOCK = 1 << 15  # elements per block: 128 KiB of float32, 256 KiB of int64

    def __init__(self, offset: np.ndarray, multipliers: np.ndarray, shifts: np.ndarray, zero_point: int, low: int,
                 high: int, single_rounding: bool = False, max_abs_acc: np.ndarray | None = None) -> None:
        self.offset = np.asarray(offset, dtype=np.int64)
        self.multipliers = np.asarray(multipliers, dtype=np.int64)
        self.shifts = np.asarray(shifts, dtype=np.int64)
        self.zero_point, self.low, self.high = zero_point, low, high
        self.single_rounding = single_rounding
        self.general = bool(np.any(self.shifts > 0) or np.any(self.multipliers < 0)) and not single_rounding
        right = np.maximum(-self.shifts, 0)
        self.right = right
        self.half = np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0)
        # x < 0 exactly when x + half < half; channels without a right shift never subtract.
        self.negative_below = np.where(right > 0, self.half, np.iinfo(np.int64).min)
        total = 31 - self.shifts
        self.single_round = np.int64(1) << (total - 1)
        self.single_total = total
        self.window = 1.0
        if max_abs_acc is not None and not self.general:
            real = self.multipliers.astype(np.float64) * np.exp2(self.shifts.astype(np.float64) - 31)
            self.scale32 = real.astype(np.float32)
            self.bias32 = (self.offset * real).astype(np.float32)
            magnitude = np.asarray(max_abs_acc, dtype=np.float64) * real + np.abs(self.offset * real) + 1.0
            float_error = magnitude * 2.0**-21  # 4x the float32 rounding of the product, the sum and the scales
            rounding = 0.0 if single_rounding else np.exp2(-(right.astype(np.float64) + 1))
            self.window = float(np.max(float_error + rounding))

    def _exact(self, b: np.ndarray, channels: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Requantizes int64 ``b`` in place (before zero point and clamp); ``channels`` indexes the parameters."""
        if self.general:
            b[...] = multiply_by_quantized_multiplier(b, self.multipliers[channels], self.shifts[channels])
        elif self.single_rounding:
            b *= self.multipliers[channels]
            b += self.single_round[channels]
            b >>= self.single_total[channels]
        else:
            b *= self.multipliers[channels]
            b += 1 << 30
            b >>= 31
            b += self.half[channels]
            b -= b < self.negative_below[channels]
            b >>= self.right[channels]
        return b

    def __call__(self, acc: np.ndarray) -> np.ndarray:
        """Returns int8 outputs for accumulators ``acc`` (float32 holding exact integers, or int64), channels on
        the last axis."""
        channels = self.offset.size
        flat = acc.reshape(-1, channels)
        out = np.empty(flat.shape, dtype=np.int8)
        rows = max(1, self._BLOCK // channels)
        fast = flat.dtype == np.float32 and self.window < 0.25
        block = np.empty((min(rows, len(flat)), channels), dtype=np.float32 if fast else np.int64)
        rounded = np.empty(block.shape, dtype=np.float32) if fast else None
        for start in range(0, len(flat), rows):
            part = flat[start:start + rows]
            b = block[:len(part)]
            if fast:
                np.multiply(part, self.scale32, out=b)
                b += self.bias32
                q = rounded[:len(part)]
                np.rint(b, out=q)
                b -= q
                np.abs(b, out=b)
                near_half = np.flatnonzero(b > 0.5 - self.window)
                if near_half.size:
                    channel = near_half % channels
                    values = part.reshape(-1)[near_half].astype(np.int64) + self.offset[channel]
                    q.reshape(-1)[near_half] = self._exact(values, channel)
                b = q
            else:
                np.copyto(b, part, casting="unsafe")
                b += self.offset
                self._exact(b)
            np.clip(b, self.low - self.zero_point, self.high - self.zero_point, out=b)
            b += self.zero_point
            np.copyto(out[start:start + rows], b, casting="unsafe")
        return out.reshape(acc.shape)


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
