"""FastHistogramObserver against torchao's HistogramObserver (the oracle: torchao's own search, unchanged): the
same qparams on histograms of every shape the search meets."""

from __future__ import annotations

import pytest
import torch
from torchao.quantization.pt2e import HistogramObserver

from neutron_backend.quantizer.observers import FastHistogramObserver


def _samples(kind: int, count: int, generator: torch.Generator) -> torch.Tensor:
    normal = torch.randn(count, generator=generator)
    return [
        normal,
        torch.rand(count, generator=generator) * 10,
        torch.cat([normal, torch.tensor([50.0, -40.0])]),  # outliers the search clips
        torch.sigmoid(normal * 3),
        normal.exp(),  # long right tail
        torch.randint(-3, 4, (count,), generator=generator).float(),  # few distinct values
        torch.full((count,), 0.25),  # one value
        torch.relu(normal),  # half the mass in one bin
    ][kind]


@pytest.mark.parametrize("kind", range(8))
@pytest.mark.parametrize("dtype", [torch.qint8, torch.quint8])
def test_same_qparams_as_torchao(kind: int, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(kind)
    for trial in range(4):
        x = _samples(kind, 500 + 700 * trial, generator)
        reference = HistogramObserver(dtype=dtype, qscheme=torch.per_tensor_affine)
        fast = FastHistogramObserver(dtype=dtype, qscheme=torch.per_tensor_affine)
        for chunk in x.split(max(1, x.numel() // 3)):  # several batches: the histogram is rebinned between them
            reference(chunk)
            fast(chunk)
        want, got = reference.calculate_qparams(), fast.calculate_qparams()
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1]), (kind, trial, want, got)


def test_same_qparams_past_float32_counts() -> None:
    """Over 2^24 samples the quantile bounds are no longer exact in float32; torch compares them with the
    cumulative sums in float32, and so must the fast search (comparing in float64 gives another range here)."""
    x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0)) ** 3
    reference = HistogramObserver(dtype=torch.qint8, qscheme=torch.per_tensor_affine)
    fast = FastHistogramObserver(dtype=torch.qint8, qscheme=torch.per_tensor_affine)
    for _ in range(20):
        reference(x)
        fast(x)
    want, got = reference.calculate_qparams(), fast.calculate_qparams()
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1]), (want, got)
