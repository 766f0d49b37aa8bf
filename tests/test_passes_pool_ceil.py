"""The ceil_mode pooling rewrite (neutron_backend/passes/pool_ceil_mode.py): both sides of each condition, exact
against PyTorch's own ceil_mode pooling (an independent implementation), and lowered numerics."""

from __future__ import annotations

import itertools

import pytest
import torch
from numerics import check_case
from torch import nn

from neutron_backend.passes import pool_ceil_mode

aten = torch.ops.aten


def _rewritten(module: nn.Module, shape: tuple[int, ...]):
    torch.manual_seed(0)
    x = torch.randn(shape)
    graph_module = torch.export.export(module, (x,)).module()
    changed = pool_ceil_mode.run(graph_module)
    graph_module.recompile()
    return graph_module, changed, module(x), graph_module(x)


def _calls(graph_module, target) -> list:
    return [n for n in graph_module.graph.nodes if n.op == "call_function" and n.target == target]


def _pool(graph_module, target):
    (node,) = _calls(graph_module, target)
    return node


def test_ceil_mode_that_changes_nothing_only_flips_the_flag():
    # 7 = 3 + 2 * 2: floor and ceil both give 3 windows per axis.
    graph_module, changed, want, got = _rewritten(nn.MaxPool2d(3, 2, ceil_mode=True), (1, 4, 7, 7))
    assert changed == 1
    assert _pool(graph_module, aten.max_pool2d.default).args[5] is False
    assert not _calls(graph_module, aten.cat.default)
    assert got.shape == want.shape == (1, 4, 3, 3) and torch.equal(got, want)


def test_partial_window_repeats_the_last_row_and_column():
    # 8 pixels, kernel 3, stride 2: ceil gives 4 windows, floor 3; one extra row and column.
    graph_module, changed, want, got = _rewritten(nn.MaxPool2d(3, 2, ceil_mode=True), (1, 4, 8, 8))
    assert changed == 1
    pool = _pool(graph_module, aten.max_pool2d.default)
    assert pool.args[5] is False and pool.args[0].target == aten.cat.default
    assert [tuple(n.meta["val"].shape) for n in _calls(graph_module, aten.cat.default)] == [(1, 4, 9, 8),
                                                                                             (1, 4, 9, 9)]
    assert got.shape == want.shape == (1, 4, 4, 4) and torch.equal(got, want)


def test_ceil_mode_off_is_left_alone():
    graph_module, changed, want, got = _rewritten(nn.MaxPool2d(3, 2), (1, 4, 8, 8))
    assert changed == 0 and torch.equal(got, want)


def test_avg_pool_with_a_partial_window_is_left_alone_and_without_one_is_flipped():
    graph_module, changed, _, _ = _rewritten(nn.AvgPool2d(3, 2, ceil_mode=True), (1, 4, 8, 8))
    assert changed == 0 and _pool(graph_module, aten.avg_pool2d.default).args[4] is True
    graph_module, changed, want, got = _rewritten(nn.AvgPool2d(3, 2, ceil_mode=True), (1, 4, 7, 7))
    assert changed == 1 and _pool(graph_module, aten.avg_pool2d.default).args[4] is False
    assert torch.equal(got, want)


def test_dilated_max_pool_with_a_partial_window_is_left_alone():
    graph_module, changed, _, _ = _rewritten(nn.MaxPool2d(2, 2, dilation=2, ceil_mode=True), (1, 2, 8, 8))
    assert changed == 0 and _pool(graph_module, aten.max_pool2d.default).args[5] is True


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_every_small_window_is_exact(kind):
    mismatches = []
    for size, kernel, stride, padding in itertools.product((5, 6, 8, 13), (1, 2, 3, 4), (1, 2, 3), (0, 1)):
        if padding > kernel // 2 or size + 2 * padding < kernel:
            continue
        pool = (nn.MaxPool2d if kind == "max" else nn.AvgPool2d)(kernel, stride, padding, ceil_mode=True)
        _, _, want, got = _rewritten(pool, (1, 2, size, size + 1))
        if got.shape != want.shape or not torch.equal(got, want):
            mismatches.append((size, kernel, stride, padding))
    assert not mismatches


class _ConvCeilPool(nn.Module):
    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.conv, self.pool = nn.Conv2d(3, 8, 3), pool

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x)))


@pytest.mark.parametrize(("pool", "size"), [(nn.MaxPool2d(3, 2, ceil_mode=True), 10),
                                            (nn.AvgPool2d(3, 2, ceil_mode=True), 9)])
def test_lowered_ceil_mode_pool_is_one_partition_within_one_step(pool, size, tmp_path):
    # One requantizing operator (the conv); the pooling, slice and cat keep their input's qparams.
    targets = ("aten.convolution.default",
               "aten.max_pool2d_with_indices.default" if isinstance(pool, nn.MaxPool2d) else "aten.avg_pool2d.default")
    check_case("ceil_mode pool", _ConvCeilPool(pool), ((1, 3, size, size),), targets, tmp_path, max_error_steps=1.0)
