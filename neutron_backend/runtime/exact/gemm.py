"""int8 matrix products requantized to int8: the sum of every convolution and fully connected layer.

Two implementations give the same integers: on a host with AVX-512 VNNI, a compiled GEMM that requantizes each
tile while it is still in cache (``nb_gemm_requantize``); elsewhere torch's int8 GEMM (``torch._int_mm``, int32
sums) followed by the compiled requantization. ``NEUTRON_EXACT_GEMM=torch`` selects the second on any host (the
tests run both).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from neutron_backend.runtime.exact import native
from neutron_backend.runtime.exact.fixed_point import Requantizer


def _dense(array: np.ndarray) -> torch.Tensor:
    """A torch copy with row-major strides: numpy may give a size-1 axis any stride, and ``torch._int_mm``
    (torch 2.13, CPU) returns wrong sums for a (1, n) operand with strides (1, 1)."""
    return torch.from_numpy(array).clone(memory_format=torch.contiguous_format)


class Int8GemmRequantize:
    """``requantize(x @ w.T + offset)`` for int8 ``x`` (rows x depth) and constant int8 ``w`` (channels x depth),
    the requantization as :class:`Requantizer` describes it."""

    def __init__(self, weight: np.ndarray, offset: np.ndarray, multipliers: np.ndarray, shifts: np.ndarray,
                 zero_point: int, low: int, high: int, single_rounding: bool = False) -> None:
        self.channels, self.depth = weight.shape
        library = native.library()
        self.compiled = bool(library.nb_has_gemm()) and os.environ.get("NEUTRON_EXACT_GEMM") != "torch"
        offset = np.asarray(offset, dtype=np.int64)
        if self.compiled:
            # The u8 x s8 instructions see x + 128: 128 * sum(w) comes off the offset.
            self.requantizer = Requantizer(offset - 128 * weight.astype(np.int64).sum(axis=1), multipliers, shifts,
                                           zero_point, low, high, single_rounding)
            blocks, groups = -(-self.channels // 16), -(-self.depth // 4)
            padded = np.zeros((blocks * 16, groups * 4), dtype=np.int8)
            padded[:self.channels, :self.depth] = weight
            self.packed = np.ascontiguousarray(padded.reshape(blocks, 16, groups, 4).transpose(0, 2, 1, 3))
            q = self.requantizer
            # The requantization's vector constants, laid out once at a 64-byte boundary of this buffer.
            size = library.nb_gemm_constants_bytes(self.channels)
            self._requant_buffer = np.zeros(size + 64, dtype=np.uint8)
            base = native.pointer(self._requant_buffer)
            requant = base + (-base) % 64
            library.nb_gemm_prepare(native.pointer(q.offset), native.pointer(q.multipliers), native.pointer(q.shifts),
                                    self.channels, requant)
            # The constants' addresses, taken once (the arrays live as long as this object).
            self._constants = (native.pointer(self.packed), self.channels, native.pointer(q.offset),
                               native.pointer(q.multipliers), native.pointer(q.shifts), requant,
                               int(q.single_rounding), q.zero_point, q.low, q.high)
        else:
            self.requantizer = Requantizer(offset, multipliers, shifts, zero_point, low, high, single_rounding)
            self.weight_t = _dense(np.ascontiguousarray(weight.T))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Returns the int8 (rows x channels) result for int8 ``x`` (rows x depth)."""
        x = np.ascontiguousarray(x, dtype=np.int8)
        if not self.compiled:
            return self.requantizer(torch._int_mm(_dense(x), self.weight_t).numpy())
        out = np.empty((x.shape[0], self.channels), dtype=np.int8)
        status = native.library().nb_gemm_requantize(native.pointer(x), x.shape[0], self.depth, self.depth,
                                                     *self._constants, native.pointer(out))
        if status:
            raise MemoryError(f"int8 GEMM of {x.shape[0]} x {self.depth} x {self.channels}: out of memory")
        return out

