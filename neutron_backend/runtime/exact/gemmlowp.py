"""The pieces of gemmlowp's fixed-point library TFLite's int8 kernels use (``fixedpoint.h``), on int64 numpy arrays
holding int32 raw values. A ``FixedPoint<int32, I>`` is just its raw value here; the integer bits ``I`` of each
operand decide the shifts, as in the C++ templates.
"""

from __future__ import annotations

import numpy as np

from neutron_backend.runtime.exact.fixed_point import (
    INT32_MAX,
    INT32_MIN,
    rounding_divide_by_pot,
)
from neutron_backend.runtime.exact.fixed_point import saturating_rounding_doubling_high_mul as mul


def saturating_shift_left(x: np.ndarray, exponent: int) -> np.ndarray:
    """``SaturatingRoundingMultiplyByPOT<exponent>`` for exponent > 0: ``x << exponent``, saturating to int32."""
    threshold = (1 << (31 - exponent)) - 1
    shifted = x << exponent
    shifted = np.where(x > threshold, INT32_MAX, shifted)
    return np.where(x < -threshold, INT32_MIN, shifted)


def rescale(x: np.ndarray, src_integer_bits: int, dst_integer_bits: int) -> np.ndarray:
    """``Rescale<dst>(FixedPoint<int32, src>)``: a saturating left shift or a rounding right shift."""
    exponent = src_integer_bits - dst_integer_bits
    if exponent > 0:
        return saturating_shift_left(x, exponent)
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    return x


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a: np.ndarray) -> np.ndarray:
    """exp(a) for a in [-1/4, 0), both Q0.31: a Taylor expansion around -1/8."""
    constant_term = 1895147668  # exp(-1/8) in Q0.31
    constant_1_over_3 = 715827883
    x = a + (1 << 28)  # a + 1/8
    x2 = mul(x, x)
    x3 = mul(x2, x)
    x4 = mul(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    poly = rounding_divide_by_pot(mul(x4_over_4 + x3, constant_1_over_3) + x2, 1)
    return constant_term + mul(constant_term, x + poly)


# exp(-2^k) in Q0.31 for k = -2 .. 4: the barrel shifter's multipliers.
_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535), (3, 720401),
               (4, 242))


def exp_on_negative_values(a: np.ndarray, integer_bits: int) -> np.ndarray:
    """gemmlowp's ``exp_on_negative_values`` of a ``FixedPoint<int32, integer_bits>`` (a <= 0); returns Q0.31."""
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    mask = one_quarter - 1
    a_mod_quarter_minus_one_quarter = (a & mask) - one_quarter
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        rescale(a_mod_quarter_minus_one_quarter, integer_bits, 0))
    remainder = a_mod_quarter_minus_one_quarter - a
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            bit = np.int64(1) << (fractional_bits + exponent)
            result = np.where((remainder & bit) != 0, mul(result, multiplier), result)
    if integer_bits > 5:
        clamp = -(1 << (36 - integer_bits))
        result = np.where(a < clamp, 0, result)
    return np.where(a == 0, INT32_MAX, result)


def rounding_half_sum(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp's ``RoundingHalfSum``: ``(a + b + sign) / 2`` with C's truncating division."""
    total = np.asarray(a, dtype=np.int64) + b
    total = total + np.where(total >= 0, 1, -1)
    return np.where(total >= 0, total >> 1, -((-total) >> 1))


def one_over_one_plus_x_for_x_in_0_1(a: np.ndarray) -> np.ndarray:
    """1 / (1 + a) for a in [0, 1) as Q0.31 (Newton-Raphson in Q2.29, three iterations)."""
    half_denominator = rounding_half_sum(a, INT32_MAX)
    constant_48_over_17 = 1515870810
    constant_neg_32_over_17 = -1010580540
    one_q2 = 1 << 29
    x = constant_48_over_17 + mul(half_denominator, constant_neg_32_over_17)
    for _ in range(3):
        half_denominator_times_x = mul(half_denominator, x)
        one_minus = one_q2 - half_denominator_times_x
        x = x + rescale(mul(x, one_minus), 4, 2)
    return rescale(x, 1, 0)  # ExactMulByPot<-1> turns Q2.29 into Q1.30 without touching the raw value


def count_leading_zeros32(x: np.ndarray) -> np.ndarray:
    """Leading zero bits of non-negative int32 values (32 for 0)."""
    x = np.asarray(x, dtype=np.int64)
    _, exponent = np.frexp(x.astype(np.float64))  # exact: x < 2^53
    return np.where(x > 0, 32 - exponent, 32)


def get_reciprocal(x: np.ndarray, x_integer_digits: int) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's ``GetReciprocal``: returns (1 / x as Q0.31 scaled into [0.5, 1), num_bits_over_unit)."""
    headroom_plus_one = count_leading_zeros32(x)
    num_bits_over_unit = x_integer_digits - headroom_plus_one
    shifted = ((x << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31)
    return one_over_one_plus_x_for_x_in_0_1(shifted), num_bits_over_unit
