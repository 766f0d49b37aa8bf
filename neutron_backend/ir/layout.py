"""NCHW <-> NHWC layout helpers.

ExecuTorch tensors at a delegate boundary are channels-first (N, C, *spatial) unless their dim order says
otherwise; TFLite and Neutron are channels-last (N, *spatial, C).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NCHW_TO_NHWC: tuple[int, ...] = (0, 2, 3, 1)
NHWC_TO_NCHW: tuple[int, ...] = (0, 3, 1, 2)


def _check_rank(rank: int) -> None:
    if rank not in (3, 4, 5):
        raise ValueError(f"channels-first/last layouts need rank 3, 4 or 5, got rank {rank}")


def channels_last_perm(rank: int) -> tuple[int, ...]:
    """Returns the permutation taking (N, C, *spatial) to (N, *spatial, C) for a rank-3/4/5 tensor."""
    _check_rank(rank)
    return (0, *range(2, rank), 1)


def channels_first_perm(rank: int) -> tuple[int, ...]:
    """Returns the permutation taking (N, *spatial, C) to (N, C, *spatial) for a rank-3/4/5 tensor."""
    _check_rank(rank)
    return (0, rank - 1, *range(1, rank - 1))


def to_channels_last_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Returns the channels-last shape (N, *spatial, C) of a channels-first shape (N, C, *spatial)."""
    return tuple(shape[i] for i in channels_last_perm(len(shape)))


def to_channels_first_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Returns the channels-first shape (N, C, *spatial) of a channels-last shape (N, *spatial, C)."""
    return tuple(shape[i] for i in channels_first_perm(len(shape)))


def conv_weight_to_ohwi(w: np.ndarray) -> np.ndarray:
    """Returns a PyTorch OIHW (or OIW / OIDHW) conv weight as a contiguous OHWI (O, *spatial, I) array."""
    return np.ascontiguousarray(np.transpose(w, channels_last_perm(w.ndim)))
