"""TFLite's int8 SOFTMAX reference kernel (``reference_ops::Softmax`` for int8 in and out): gemmlowp fixed point.

Per row: ``diff = x - max(row)``; diffs below ``diff_min`` are dropped; ``exp(beta * s * diff)`` in Q0.31 by
``exp_on_negative_values`` on a Q5.26 rescaled diff; the sum in Q12.19; its reciprocal by Newton-Raphson; each
output ``exp * reciprocal`` shifted to the 1/256 scale, minus 128. The exp of the 256 possible diffs is
computed once per operator.
"""

from __future__ import annotations

import math

import numpy as np

from neutron_backend.runtime.exact.fixed_point import quantize_multiplier, rounding_divide_by_pot
from neutron_backend.runtime.exact.gemmlowp import exp_on_negative_values, get_reciprocal, mul

_SCALED_DIFF_INTEGER_BITS = 5
_ACCUMULATION_INTEGER_BITS = 12


class Int8Softmax:
    """Prepared softmax over the last axis for an input of ``input_scale`` and the option ``beta``."""

    def __init__(self, input_scale: float, beta: float) -> None:
        real = min(float(beta) * float(np.float32(input_scale)) * (1 << (31 - _SCALED_DIFF_INTEGER_BITS)),
                   (1 << 31) - 1.0)
        multiplier, left_shift = quantize_multiplier(real)
        if left_shift < 0:
            raise NotImplementedError(f"softmax input scale {input_scale} x beta {beta} is too small for the int8 "
                                      "kernel (it needs a multiplier of at least 1)")
        radius = math.floor(((1 << _SCALED_DIFF_INTEGER_BITS) - 1) * (1 << (31 - _SCALED_DIFF_INTEGER_BITS))
                            / (1 << left_shift))
        self.diff_min = -radius
        diffs = np.arange(-255, 1, dtype=np.int64)
        rescaled = mul(diffs * (1 << left_shift), multiplier)
        exps = exp_on_negative_values(rescaled, _SCALED_DIFF_INTEGER_BITS)
        # Indexed by -diff; dropped diffs contribute nothing and output the minimum.
        self._kept = (diffs >= self.diff_min)[::-1].copy()
        self._exp = np.where(self._kept, exps[::-1], 0)
        self._exp_accumulated = np.where(self._kept, rounding_divide_by_pot(exps, _ACCUMULATION_INTEGER_BITS)[::-1], 0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Returns the softmax of int8 ``x`` over its last axis, int8 with scale 1/256 and zero point -128."""
        values = x.astype(np.int64)
        negative_diff = values.max(axis=-1, keepdims=True) - values
        sum_of_exps = self._exp_accumulated[negative_diff].sum(axis=-1, keepdims=True)
        shifted_scale, num_bits_over_unit = get_reciprocal(sum_of_exps, _ACCUMULATION_INTEGER_BITS)
        exponent = num_bits_over_unit + 31 - 8
        unsaturated = rounding_divide_by_pot(mul(shifted_scale, self._exp[negative_diff]), exponent)
        output = np.clip(unsaturated - 128, -128, 127)
        return np.where(self._kept[negative_diff], output, -128).astype(np.int8)
