"""The shape rewrites before quantization: split/chunk -> slices, reflection pad -> reflection_pad1d/2d.

Each rewrite runs on the graph `torch.export.export(...).module()` gives the quantizer; the tests count the sites
changed, check the nodes that replace them, and compare the rewritten module's outputs with the original's
(bit-exact: both rewrites move the same elements).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from executorch.exir import to_edge
from torch import nn

from neutron_backend.passes import reflection_pad, sdpa_to_matmul_softmax, split_to_slices, unbind_to_select

aten = torch.ops.aten


class _Fn(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _rewrite(fn, shape, rewrite):
    """(graph module after `rewrite`, sites changed, original outputs, rewritten outputs) on one random input."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    module = torch.export.export(_Fn(fn), (x,)).module()
    expected = module(x)
    changed = rewrite.run(module)
    return module, changed, expected, module(x)


def _calls(module, target) -> list:
    return [node for node in module.graph.nodes if node.op == "call_function" and node.target == target]


def _assert_same(expected, got) -> None:
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    got = got if isinstance(got, (tuple, list)) else (got,)
    assert len(expected) == len(got)
    for want, have in zip(expected, got, strict=True):
        assert torch.equal(want, have)


def test_split_becomes_one_slice_per_piece():
    module, changed, expected, got = _rewrite(lambda x: x.split(3, dim=1), (1, 8, 4), split_to_slices)
    assert changed == 1
    assert not _calls(module, aten.split.Tensor)
    # 8 channels in pieces of 3: [0, 3), [3, 6), [6, 8).
    assert [node.args[1:] for node in _calls(module, aten.slice.Tensor)] == [(1, 0, 3), (1, 3, 6), (1, 6, 8)]
    _assert_same(expected, got)


def test_split_with_sizes_negative_dim_and_unused_pieces():
    module, changed, expected, got = _rewrite(lambda x: x.split([1, 4, 2], dim=-1)[1] * 2, (2, 3, 7),
                                              split_to_slices)
    assert changed == 1
    assert not _calls(module, aten.split_with_sizes.default)
    assert [node.args[1:] for node in _calls(module, aten.slice.Tensor)] == [(2, 1, 5)]
    _assert_same(expected, got)


def test_chunk_uneven():
    module, changed, expected, got = _rewrite(lambda x: torch.cat(x.chunk(3, dim=0)[::-1]), (8, 2), split_to_slices)
    assert changed == 1
    assert not _calls(module, aten.chunk.default)
    assert sorted(node.args[1:] for node in _calls(module, aten.slice.Tensor)) == [(0, 0, 3), (0, 3, 6), (0, 6, 8)]
    _assert_same(expected, got)


def test_no_split_no_change():
    _, changed, expected, got = _rewrite(lambda x: x[:, 1:3], (1, 8, 4), split_to_slices)
    assert changed == 0
    _assert_same(expected, got)


def test_to_edge_turns_a_split_into_split_with_sizes_copy_and_the_rewrite_into_slice_copy():
    """Why the rewrite exists: without it the edge program holds a multi-output split_with_sizes_copy."""
    x = torch.randn(1, 8, 4)
    original = torch.export.export(_Fn(lambda v: v.split(4, dim=1)), (x,))
    edge_targets = {str(n.target) for n in to_edge(original).exported_program().graph.nodes if n.op == "call_function"}
    assert any("split_with_sizes_copy" in t for t in edge_targets), edge_targets

    module = original.module()
    split_to_slices.run(module)
    rewritten = to_edge(torch.export.export(module, (x,))).exported_program()
    edge_targets = {str(n.target) for n in rewritten.graph.nodes if n.op == "call_function"}
    assert not any("split" in t for t in edge_targets), edge_targets
    assert any("slice_copy" in t for t in edge_targets), edge_targets


def test_reflection_pad_2d_and_1d():
    module, changed, expected, got = _rewrite(
        lambda x: F.pad(F.pad(x, (1, 2, 0, 3), mode="reflect")[0], (2, 1), mode="reflect"), (1, 3, 5, 6),
        reflection_pad)
    assert changed == 2
    assert not _calls(module, aten.pad.default)
    assert [node.args[1] for node in _calls(module, aten.reflection_pad2d.default)] == [[1, 2, 0, 3]]
    assert [node.args[1] for node in _calls(module, aten.reflection_pad1d.default)] == [[2, 1]]
    _assert_same(expected, got)


def test_reflection_pad_on_a_2d_input():
    module, changed, expected, got = _rewrite(lambda x: F.pad(x, (1, 1), mode="reflect"), (3, 5), reflection_pad)
    assert changed == 1
    assert len(_calls(module, aten.reflection_pad1d.default)) == 1
    _assert_same(expected, got)


def test_other_pads_are_left_alone():
    module, changed, expected, got = _rewrite(
        lambda x: F.pad(x, (1, 1), value=0.5) + F.pad(x, (1, 1), mode="replicate") + F.pad(x, (1, 1), mode="circular"),
        (2, 3, 5), reflection_pad)
    assert changed == 0
    assert len(_calls(module, aten.pad.default)) == 3
    _assert_same(expected, got)


def test_reflection_pad_3d_is_left_alone():
    module, changed, expected, got = _rewrite(lambda x: F.pad(x, (1, 1, 1, 1, 1, 1), mode="reflect"), (1, 2, 3, 3, 3),
                                              reflection_pad)
    assert changed == 0
    assert len(_calls(module, aten.pad.default)) == 1
    _assert_same(expected, got)


def _attention(x, **kwargs):
    q, k, v = x.unbind(0)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def test_unbind_becomes_one_select_per_item():
    module, changed, expected, got = _rewrite(lambda x: x.unbind(1), (2, 3, 4), unbind_to_select)
    assert changed == 1 and not _calls(module, aten.unbind.int) and len(_calls(module, aten.select.int)) == 3
    _assert_same(expected, got)


def test_plain_attention_is_written_out():
    module, changed, expected, got = _rewrite(_attention, (3, 2, 4, 5, 8), sdpa_to_matmul_softmax)
    assert changed == 1 and not _calls(module, aten.scaled_dot_product_attention.default)
    assert len(_calls(module, aten.matmul.default)) == 2 and len(_calls(module, aten.softmax.int)) == 1
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)  # float: summation order differs


def test_causal_attention_is_left_alone():
    module, changed, expected, got = _rewrite(lambda x: _attention(x, is_causal=True), (3, 2, 4, 5, 8),
                                              sdpa_to_matmul_softmax)
    assert changed == 0 and len(_calls(module, aten.scaled_dot_product_attention.default)) == 1
    _assert_same(expected, got)
