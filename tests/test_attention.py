"""The ViT attention block (issue 13) and the softmax split that keeps its scores on the NPU.

A softmax over more elements than one Neutron SOFTMAX takes (ops/softmax.py: total <= 524288) runs as SLICE, SOFTMAX
per piece, CONCATENATION when one other axis splits it into pieces within the limits: exact, since softmax
normalises each row on its own. The attention block is lowered from NeutronQuantizer's and XNNPACKQuantizer's
graphs and compared with the quantized model in output steps: one step per requantizing operator.
"""

from __future__ import annotations

from pathlib import Path

import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)
import pytest
import torch
from executorch.exir import to_edge_transform_and_lower
from test_no_silent_miscompute import ViTAttention, steps, xnnpack_quantized
from torch import nn

from neutron_backend.compile_spec import generate_neutron_compile_spec
from neutron_backend.ops.softmax import MAX_CHANNELS, MAX_OTHER, MAX_TOTAL, split_for_limits
from neutron_backend.partitioner import NeutronPartitioner
from neutron_backend.runtime import load_pte

QDQ_PREFIX = "quantized_decomposed."


def lower_and_run(model: torch.fx.GraphModule, shape: tuple[int, ...], directory: Path):
    """(report with each partition's IR, .pte output, quantized model's output) on a seeded N(0, 1) input."""
    torch.manual_seed(1)
    inputs = (torch.randn(shape),)
    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700"))
    edge = to_edge_transform_and_lower(torch.export.export(model, inputs), partitioner=[partitioner])
    partitioner.report.add_lowering(edge)
    pte = directory / "model.pte"
    pte.write_bytes(edge.to_executorch().buffer)
    (got,) = load_pte(pte)(*inputs)
    return partitioner.report, got, model(*inputs)


# -- the split, on both sides of its condition -------------------------------------------------------------------


def test_a_softmax_within_the_limits_is_not_split() -> None:
    assert 2 * 4 * 256 * 256 == MAX_TOTAL
    assert split_for_limits((2, 4, 256, 256), 3) is None


def test_attention_scores_over_the_total_are_split_along_the_first_axis() -> None:
    # 4 x 4 heads x 256 x 256 = 1,048,576 scores: two pieces of 2 x 4 x 256 x 256 = 524,288 each.
    assert split_for_limits((4, 4, 256, 256), 3) == (0, [2, 2])


def test_pieces_are_nearly_equal_and_each_within_every_limit() -> None:
    # Axis 0 holds 600,000 scores per index: too many. Along axis 1, pieces of 3 x 1000 x 200 = 600,000 are still
    # too many, 4 pieces of 3 x 750 x 200 = 450,000 fit.
    shape, dim = (3, 3000, 200), 2
    axis, sizes = split_for_limits(shape, dim)
    assert (axis, sizes) == (1, [750, 750, 750, 750])
    piece = list(shape)
    piece[axis] = max(sizes)
    assert piece[dim] <= MAX_CHANNELS and piece[0] * piece[1] <= MAX_OTHER and piece[0] * piece[1] * 200 <= MAX_TOTAL


@pytest.mark.parametrize(("shape", "dim", "why"), [
    ((1, 4, MAX_CHANNELS + 8), 2, "a row longer than C <= 2040 cannot be split"),
    ((4097, 4097, 2), 2, "every single-axis piece keeps more than 4096 rows"),
])
def test_softmax_that_no_single_axis_split_fits_is_not_split(shape, dim, why) -> None:
    assert split_for_limits(shape, dim) is None, why


class Softmax(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)


def _ir_opcodes(report) -> list[str]:
    return [op.opcode for partition in report.partitions for op in partition.ir.operators]


@pytest.mark.parametrize(("shape", "softmaxes"), [((2, 1, 1024, 256), 1), ((3, 1, 1024, 256), 2)])
def test_a_split_softmax_is_delegated_and_within_one_step(shape, softmaxes, tmp_path: Path) -> None:
    """2 x 1024 x 256 = 524,288 fits one SOFTMAX; 3 x 1024 x 256 = 786,432 was kept on the CPU with "total size =
    786432 > 524288" and now runs as two (pieces of 2 and 1 along dim 0)."""
    from neutron_backend.quantizer.calibration import quantize_model, random_batches
    from neutron_backend.verify import output_scales

    inputs = (torch.randn(shape),)
    quantized = quantize_model(Softmax().eval(), inputs, calibration_batches=random_batches(inputs, 2),
                               progress=False)
    report, got, want = lower_and_run(quantized, shape, tmp_path)
    assert [e.delegated for e in report.nodes if e.target == "aten._softmax.default"] == [True], str(report)
    opcodes = _ir_opcodes(report)
    assert opcodes.count("SOFTMAX") == softmaxes, opcodes
    assert opcodes.count("CONCATENATION") == (softmaxes > 1), opcodes
    (scale,) = output_scales(quantized)
    assert steps(got, want, scale) <= 1  # one requantizing operator (slices and the concatenation are exact)


# -- the attention block from two quantizers ---------------------------------------------------------------------

# Requantizing operators on the longest path: qkv linear, q.k bmm, scale mul, softmax (SOFTMAX and, for the bmm
# that needs zero point 0, RELU_0_TO_1), attention bmm, output linear: one step each.
NEUTRON_MAX_STEPS = 7


def _counts(report, delegated: bool) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in report.nodes:
        if entry.delegated is delegated and not entry.target.startswith(QDQ_PREFIX):
            counts[entry.target] = counts.get(entry.target, 0) + 1
    return counts


@pytest.mark.parametrize("shape", [
    (1, 16, 64),
    # The size: 4 x 4 heads x 256 x 256 scores, over the softmax limit, split in two.
    (4, 256, 64),
])
def test_attention_from_neutron_quantizer_is_one_partition(shape, tmp_path: Path) -> None:
    from neutron_backend.quantizer.calibration import quantize_model, random_batches
    from neutron_backend.verify import output_scales

    torch.manual_seed(0)
    inputs = (torch.randn(shape),)
    quantized = quantize_model(ViTAttention().eval(), inputs, calibration_batches=random_batches(inputs, 2),
                               progress=False)
    report, got, want = lower_and_run(quantized, shape, tmp_path)
    assert report.num_partitions == 1, str(report)
    delegated = _counts(report, delegated=True)
    assert {name: delegated.get(name) for name in ("aten.addmm.default", "aten.bmm.default",
                                                    "aten._softmax.default", "aten.select_copy.int")} == {
        "aten.addmm.default": 2, "aten.bmm.default": 2, "aten._softmax.default": 1, "aten.select_copy.int": 3}
    # Nothing but the model input's quantize and the output's dequantize stays on the CPU: no round trip between
    # the unbind (three selects) and the products.
    assert _counts(report, delegated=False) == {}, str(report)
    assert sorted(e.target for e in report.nodes if not e.delegated) == [
        "quantized_decomposed.dequantize_per_tensor.default", "quantized_decomposed.quantize_per_tensor.default"]
    if shape[1] <= 16:
        (scale,) = output_scales(quantized)
        assert steps(got, want, scale) <= NEUTRON_MAX_STEPS
    # With 256 tokens the attention weights (about 1/256 each) sit at half a step of their 1/128 grid, where
    # LiteRT's fixed-point softmax (rounded twice: 1/256, then 1/128) and torch's float softmax round the other way
    # in many elements at once; the attention product sums them, so the two int8 results drift apart far more than
    # one step per operator (measured 135 output steps at 1 x 256 x 64, also without any split, while each is 62-75
    # steps from the float model). No bound here: see the README, Attention.


@pytest.mark.parametrize(("shape", "linears_on_npu"), [
    ((1, 16, 64), 2),
    # With 4 images the output projection's input (a transposed view) is not contiguous, and ExecuTorch decomposes
    # that linear into expand + bmm + add instead of addmm: it stays on the CPU, where the quantized model runs it.
    ((4, 256, 64), 1),
])
def test_attention_from_xnnpack_quantizer_keeps_its_float_core_on_the_cpu(shape, linears_on_npu,
                                                                         tmp_path: Path) -> None:
    """XNNPACKQuantizer annotates the linear layers only (it has no rule for attention, bmm or softmax): its
    quantized model computes attention in float, which an int8 NPU cannot reproduce, so those nodes stay on the CPU
    with the reason. The linear layers are delegated: their float biases quantized to int32 while lowering, and the
    reshape between addmm and the quantize (XNNPACKQuantizer quantizes a rank-3 linear's result after it) taken
    into the cluster."""
    from neutron_backend.verify import output_scales

    torch.manual_seed(0)
    quantized = xnnpack_quantized(ViTAttention().eval(), (torch.randn(shape),), per_channel=False)
    report, got, want = lower_and_run(quantized, shape, tmp_path)
    delegated, on_cpu = _counts(report, delegated=True), _counts(report, delegated=False)
    assert delegated.get("aten.addmm.default") == linears_on_npu == report.num_partitions, str(report)
    assert "aten.bmm.default" not in delegated and on_cpu.get("aten._softmax.default") == 1, str(report)
    for entry in report.nodes:
        if entry.target in ("aten.bmm.default", "aten._softmax.default"):
            assert entry.reason.startswith("not quantized: "), entry.reason
    (scale,) = output_scales(quantized)
    # Requantizing operators on the NPU on the longest path: the delegated linear layers (the float core runs the
    # quantized model's own kernels).
    assert steps(got, want, scale) <= linears_on_npu
