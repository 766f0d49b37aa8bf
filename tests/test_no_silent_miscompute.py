"""Regression tests of issue 13: graphs whose qparams NeutronQuantizer never writes are delegated correctly or kept
on the CPU with a reason, never delegated and wrong.

Each case is hand-quantized (explicit quantize/dequantize pairs), lowered through the public API, run as a .pte and
compared with the same module run in PyTorch, in output quantization steps: one step per requantizing operator is
the tolerance (LiteRT requantizes in fixed point, torch in float).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)
import pytest
import torch
import torch.nn.functional as F
from executorch.exir import to_edge_transform_and_lower
from numerics import qdq
from torch import nn

from neutron_backend.compile_spec import generate_neutron_compile_spec
from neutron_backend.partitioner import NeutronPartitioner
from neutron_backend.report import DelegationReport
from neutron_backend.runtime import load_pte

# About 20 lowerings (a few seconds each): slow, still run in CI.
pytestmark = pytest.mark.slow
QDQ_PREFIX = "quantized_decomposed."
IN_QPARAMS = (0.05, 3)
OTHER_QPARAMS = (0.02, -5)


def lower_and_run(model: nn.Module, shapes: tuple[tuple[int, ...], ...], directory: Path,
                  **spec_kwargs) -> tuple[DelegationReport, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """(report, .pte outputs, PyTorch outputs) of `model` on seeded N(0, 1) inputs."""
    torch.manual_seed(0)
    inputs = tuple(torch.randn(shape) for shape in shapes)
    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700", **spec_kwargs))
    if not isinstance(model, torch.fx.GraphModule):
        model = model.eval()
    edge = to_edge_transform_and_lower(torch.export.export(model, inputs), partitioner=[partitioner])
    pte = directory / "model.pte"
    pte.write_bytes(edge.to_executorch().buffer)
    got = tuple(load_pte(pte)(*inputs))
    want = model(*inputs)
    return partitioner.report, got, want if isinstance(want, tuple) else (want,)


def steps(got: torch.Tensor, want: torch.Tensor, scale: float) -> float:
    """The largest difference in output steps, rounded to 4 decimals (float32 rounding of the values)."""
    return round(float((got - want).abs().max()) / scale, 4)


def compute_entries(report: DelegationReport, name: str):
    return [e for e in report.nodes if name in e.target]


# -- a pool's output shares its input's qparams ------------------------------------------------------------------


@pytest.mark.parametrize(("pool", "name"), [(lambda x: F.max_pool2d(x, 2), "max_pool2d"),
                                            (lambda x: F.avg_pool2d(x, 2), "avg_pool2d"),
                                            (lambda x: F.adaptive_avg_pool2d(x, 2), "adaptive_avg_pool2d")])
def test_pool_with_unequal_qparams_is_not_delegated_wrong(pool: Callable, name: str, tmp_path: Path) -> None:
    """Was delegated and 73 (max) / 38 (avg) output steps off: pooling keeps its input's qparams."""

    class Pool(nn.Module):
        def forward(self, x):
            return qdq(pool(qdq(x, *IN_QPARAMS)), *OTHER_QPARAMS)

    report, (got,), (want,) = lower_and_run(Pool(), ((1, 4, 8, 8),), tmp_path)
    (entry,) = compute_entries(report, name)
    assert not entry.delegated, f"delegated {steps(got, want, OTHER_QPARAMS[0]):.0f} steps off"
    assert "input and output are quantized differently (scale 0.05, zero point 3 vs scale 0.02, zero point -5)" \
        in entry.reason, entry.reason
    assert steps(got, want, OTHER_QPARAMS[0]) == 0  # the CPU runs the same PyTorch kernels


def test_pool_with_equal_qparams_is_delegated(tmp_path: Path) -> None:
    class Pool(nn.Module):
        def forward(self, x):
            return qdq(F.max_pool2d(qdq(x, *IN_QPARAMS), 2), *IN_QPARAMS)

    report, (got,), (want,) = lower_and_run(Pool(), ((1, 4, 8, 8),), tmp_path)
    assert all(e.delegated for e in compute_entries(report, "max_pool2d")), str(report)
    assert steps(got, want, IN_QPARAMS[0]) <= 1  # one requantizing operator at most


# -- a value with several quantize users -------------------------------------------------------------------------


class TwoQuantizedUsers(nn.Module):
    """leaky_relu's value quantized twice with different qparams, each feeding a conv, as a hand-quantized model
    (or another quantizer) may write it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("first", torch.randint(-127, 128, (4, 4, 1, 1), dtype=torch.int8))
        self.register_buffer("second", torch.randint(-127, 128, (4, 4, 1, 1), dtype=torch.int8))

    @staticmethod
    def _conv(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        w = torch.ops.quantized_decomposed.dequantize_per_tensor(weight, 0.004, 0, -127, 127, torch.int8)
        return qdq(F.conv2d(x, w), 0.03, 1)

    def forward(self, x):
        y = F.leaky_relu(qdq(x, *IN_QPARAMS), 0.1)
        return self._conv(self.first, qdq(y, *IN_QPARAMS)), self._conv(self.second, qdq(y, *OTHER_QPARAMS))


def test_each_quantize_user_gets_its_own_qparams(tmp_path: Path) -> None:
    """Was 73 steps off: lowering gave the second user the first quantize's qparams."""
    report, got, want = lower_and_run(TwoQuantizedUsers(), ((1, 4, 6, 6),), tmp_path)
    (leaky,) = compute_entries(report, "leaky_relu")
    assert leaky.delegated, str(report)
    # leaky_relu, the requantization into the second qparams, then the conv: at most 3 requantizing steps.
    for output, reference in zip(got, want, strict=True):
        assert steps(output, reference, 0.03) <= 3, [steps(g, w, 0.03) for g, w in zip(got, want, strict=True)]


# -- a kept-whole operator whose conversion fails ----------------------------------------------------------------


@pytest.mark.parametrize(("module", "name"), [(nn.Hardswish(), "hardswish"), (nn.Hardsigmoid(), "hardsigmoid"),
                                              (nn.SiLU(), "silu"), (nn.PReLU(4), "prelu")])
def test_kept_whole_operator_that_fails_conversion_decomposes_for_the_cpu(module: nn.Module, name: str,
                                                                           tmp_path: Path, monkeypatch, caplog) -> None:
    """Was a hard error: "aten.hardswish ... was not decomposed or delegated" (no portable kernel runs it whole)."""
    import logging

    from neutron_backend import ops
    from neutron_backend.quantizer.calibration import quantize_model, random_batches

    def failing(node, ctx) -> None:
        raise ValueError("converter double: this operator does not convert")

    operator = ops.lookup(getattr(torch.ops.aten, name).default)
    monkeypatch.setitem(operator.__dict__, "convert", failing)  # a frozen dataclass: its field, for this test
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), module).eval()
    inputs = (torch.randn(1, 4, 6, 6),)
    torch.manual_seed(0)
    quantized = quantize_model(model, inputs, calibration_batches=random_batches(inputs, 3), progress=False)
    with caplog.at_level(logging.WARNING, logger="neutron_backend.partitioner"):
        report, (got,), (want,) = lower_and_run(quantized, ((1, 4, 6, 6),), tmp_path)
    assert not any(e.delegated for e in compute_entries(report, name)), str(report)
    assert any(e.delegated for e in compute_entries(report, "convolution")), str(report)
    assert any("is decomposed for the CPU: converting it for Neutron failed: converting '" in r.getMessage()
               and "converter double" in r.getMessage() for r in caplog.records), caplog.text
    from neutron_backend.verify import output_scales

    (scale,) = output_scales(quantized)
    # The CPU runs the decomposition in float between the same quantize/dequantize pairs: the conv's one step, and
    # one more where the decomposition's float result rounds differently from the whole operator's.
    assert steps(got, want, scale) <= 2


# -- exclusions name what the user wrote -------------------------------------------------------------------------


class Excludable(nn.Module):
    """Operators edge lowering or our passes rename: adaptive_avg_pool2d (-> mean.dim), max_pool1d and avg_pool1d
    (-> 2D pools), div by a constant (-> mul), next to a real mul."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        flat = y.flatten(2)
        return (F.adaptive_avg_pool2d(y, 1), F.max_pool1d(flat, 2), F.avg_pool1d(flat, 2), y / 4.0, y * y)


def _excluded_report(exclusions: list[str], tmp_path: Path, caplog) -> DelegationReport:
    import logging

    from neutron_backend.quantizer.calibration import quantize_model, random_batches

    inputs = (torch.randn(1, 4, 6, 6),)
    torch.manual_seed(0)
    quantized = quantize_model(Excludable().eval(), inputs, calibration_batches=random_batches(inputs, 3),
                               progress=False)
    with caplog.at_level(logging.WARNING, logger="neutron_backend.partitioner"):
        report, _, _ = lower_and_run(quantized, ((1, 4, 6, 6),), tmp_path, operators_not_to_delegate=exclusions)
    return report


@pytest.mark.parametrize(("exclusion", "target"), [("aten::adaptive_avg_pool2d", "aten.mean.dim"),
                                                   ("aten::max_pool1d", "aten.max_pool2d_with_indices.default"),
                                                   ("aten::avg_pool1d", "aten.avg_pool2d.default")])
def test_exclusion_of_a_renamed_operator_excludes_what_it_became(exclusion: str, target: str, tmp_path: Path,
                                                                 caplog) -> None:
    """Excluded nothing and said nothing before."""
    report = _excluded_report([exclusion], tmp_path, caplog)
    (entry,) = [e for e in report.nodes if e.target == target]
    assert not entry.delegated and entry.reason == f"excluded by operators_not_to_delegate ('{exclusion}')", entry
    assert "matches no node" not in caplog.text


def test_exclusion_of_div_excludes_the_mul_it_became_and_not_a_real_mul(tmp_path: Path, caplog) -> None:
    report = _excluded_report(["aten::div"], tmp_path, caplog)
    muls = [e for e in report.nodes if e.target == "aten.mul.Tensor"]
    assert len(muls) == 2, str(report)
    assert sorted(e.delegated for e in muls) == [False, True], str(report)
    assert [e.reason for e in muls if not e.delegated] == ["excluded by operators_not_to_delegate ('aten::div')"]


def test_exclusion_matching_no_node_warns_with_what_it_would_match(tmp_path: Path, caplog) -> None:
    """nn.ReLU6 is written as hardtanh, and there is no 3D pool: both exclude nothing, and say so."""
    _excluded_report(["aten::relu6", "aten::max_pool3d", "aten::mean"], tmp_path, caplog)
    messages = {r.getMessage().split("'")[1]: r.getMessage() for r in caplog.records
                if "operators_not_to_delegate entry" in r.getMessage()}
    assert sorted(messages) == ["aten::max_pool3d", "aten::relu6"], messages  # aten::mean matched mean.dim
    assert ("matches no node of this program, so it excludes nothing; it stands for aten.hardtanh.default; "
            in messages["aten::relu6"]), messages
    closest = messages["aten::max_pool3d"].split("closest operator names: ")[1].split(", ")
    assert "it stands for no operator Neutron runs" in messages["aten::max_pool3d"]
    assert closest[0] == "max_pool1d", messages


# -- graphs from another quantizer -------------------------------------------------------------------------------


def xnnpack_quantized(model: nn.Module, inputs: tuple[torch.Tensor, ...], per_channel: bool = True,
                      is_dynamic: bool = False) -> torch.fx.GraphModule:
    """`model` quantized with ExecuTorch's XNNPACKQuantizer (symmetric config), calibrated on seeded batches."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from neutron_backend.quantizer.calibration import random_batches

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel,
                                                                                is_dynamic=is_dynamic))
    prepared = prepare_pt2e(torch.export.export(model.eval(), inputs).module(), quantizer)
    for batch in random_batches(inputs, 3):
        prepared(*batch)
    return convert_pt2e(prepared)


class PerChannelLinear(nn.Module):
    """A linear layer with int8 weights quantized per output feature and an int32 bias per output feature (scale
    input scale x weight scale), quantized by hand as a per-channel quantizer writes it."""

    IN_SCALE = 0.05

    def __init__(self, features: int = 16, out: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        weight, bias = torch.randn(out, features), torch.randn(out)
        scales = weight.abs().amax(1) / 127
        self.register_buffer("scales", scales)
        self.register_buffer("bias_scales", scales * self.IN_SCALE)
        self.register_buffer("zero_points", torch.zeros(out, dtype=torch.int64))
        self.register_buffer("weight", torch.round(weight / scales[:, None]).to(torch.int8))
        self.register_buffer("bias", torch.round(bias / self.bias_scales).to(torch.int32))

    def forward(self, x):
        ops = torch.ops.quantized_decomposed
        w = ops.dequantize_per_channel(self.weight, self.scales, self.zero_points, 0, -127, 127, torch.int8)
        b = ops.dequantize_per_channel(self.bias, self.bias_scales, self.zero_points, 0, -2**31, 2**31 - 1,
                                       torch.int32)
        return qdq(F.linear(qdq(x, self.IN_SCALE, 0), w, b), 0.1, 2)


def test_per_channel_linear_weights_are_converted(tmp_path: Path) -> None:
    """Was accepted, then failed conversion with a TypeError (a float times the tuple of per-channel scales) shown
    to the user as the reason."""
    report, (got,), (want,) = lower_and_run(PerChannelLinear(), ((2, 16),), tmp_path)
    (entry,) = compute_entries(report, "addmm")
    assert entry.delegated, str(report)
    assert steps(got, want, 0.1) <= 1  # one requantizing operator


def test_per_channel_weights_along_the_input_features_are_rejected(tmp_path: Path) -> None:
    """A scale per input feature cannot be folded into a fully connected layer's per-output-channel scales."""

    class PerInputFeature(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.register_buffer("weight", torch.randint(-127, 128, (8, 16), dtype=torch.int8))
            self.register_buffer("scales", torch.rand(16) / 100 + 1e-3)
            self.register_buffer("zero_points", torch.zeros(16, dtype=torch.int64))

        def forward(self, x):
            ops = torch.ops.quantized_decomposed
            w = ops.dequantize_per_channel(self.weight, self.scales, self.zero_points, 1, -127, 127, torch.int8)
            return qdq(F.linear(qdq(x, 0.05, 0), w), 0.1, 2)

    report, (got,), (want,) = lower_and_run(PerInputFeature(), ((2, 16),), tmp_path)
    (entry,) = compute_entries(report, "aten.mm")
    assert not entry.delegated
    assert entry.reason == ("weights are quantized per channel along axis 1, which is not the output features of this "
                            "linear layer; Neutron takes one weight scale per output feature (or one per tensor)")
    assert steps(got, want, 0.1) == 0  # the CPU runs the quantized model's own kernels


def test_per_channel_weights_from_xnnpack_quantizer_are_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    quantized = xnnpack_quantized(nn.Sequential(nn.Linear(16, 8, bias=False)), (torch.randn(2, 16),))
    report, (got,), (want,) = lower_and_run(quantized, ((2, 16),), tmp_path)
    (entry,) = compute_entries(report, "aten.mm")
    assert entry.delegated, str(report)
    from neutron_backend.verify import output_scales

    (scale,) = output_scales(quantized)
    assert steps(got, want, scale) <= 1  # one requantizing operator


@pytest.mark.parametrize("layer", [nn.Linear(16, 8), nn.Conv2d(4, 8, 3)], ids=["linear", "conv"])
def test_float_bias_from_xnnpack_quantizer_is_quantized_while_lowering(layer: nn.Module, tmp_path: Path) -> None:
    """XNNPACKQuantizer leaves the bias in float; it was kept on the CPU ("is a float constant")."""
    from neutron_backend.verify import output_scales

    shape = (2, 16) if isinstance(layer, nn.Linear) else (1, 4, 6, 6)
    torch.manual_seed(0)
    quantized = xnnpack_quantized(nn.Sequential(layer), (torch.randn(shape),))
    report, (got,), (want,) = lower_and_run(quantized, (shape,), tmp_path)
    assert all(e.delegated for e in report.nodes if e.target in ("aten.addmm.default", "aten.convolution.default")
               ) and report.num_partitions == 1, str(report)
    (scale,) = output_scales(quantized)
    # One requantizing operator; the bias rounded to int32 at s_in * s_w moves the sum by at most half of s_in * s_w,
    # a small fraction of an output step, which the same one-step allowance covers.
    assert steps(got, want, scale) <= 1


def test_float_bias_beyond_int32_stays_on_the_cpu(tmp_path: Path) -> None:

    class HugeBias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.register_buffer("weight", torch.randint(-127, 128, (8, 16), dtype=torch.int8))
            self.register_buffer("bias", torch.full((8,), 1e6))

        def forward(self, x):
            w = torch.ops.quantized_decomposed.dequantize_per_tensor(self.weight, 1e-3, 0, -127, 127, torch.int8)
            return qdq(F.linear(qdq(x, 0.05, 0), w, self.bias), 1e4, 0)

    report, (got,), (want,) = lower_and_run(HugeBias(), ((2, 16),), tmp_path)
    (entry,) = compute_entries(report, "addmm")
    assert not entry.delegated
    # 1e6 / (0.05 x 0.001) = 2e10 > 2**31 - 1.
    assert entry.reason.startswith("float bias 'b_bias' reaches 2e+10 steps of its int32 scale s_in * s_w = 0.05 x "
                                   "0.001, beyond the int32 range (at most 2147483647)"), entry.reason
    assert steps(got, want, 1e4) == 0  # the CPU runs the quantized model's own kernels


# -- a ViT attention block ---------------------------------------------------------------------------------------


class ViTAttention(nn.Module):
    """Multi-head self-attention as timm/torchvision ViTs write it: one qkv projection, unbind,
    scaled_dot_product_attention, transpose + reshape, output projection."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


# Requantizing operators on the longest path: qkv linear, q.k bmm, scale mul, softmax (SOFTMAX and, for the bmm
# that needs zero point 0, RELU_0_TO_1), attention bmm, output linear: one step each.
ATTENTION_MAX_STEPS = 7


# The size, 4 x 256 x 64 (its scores over one SOFTMAX's limit, split in two), is in test_attention.py.
@pytest.mark.parametrize(("shape", "cpu"), [((1, 16, 64), {})])
def test_vit_attention_block_lowers_with_its_products_on_the_npu(shape, cpu, tmp_path: Path) -> None:
    """Crashed in run_decompositions ("Cannot view a tensor with shape torch.Size([4, 256, 64]) and strides
    (64, 256, 1)"); at smaller sizes the attention ran in float on the CPU and unbind's slices round-tripped."""
    from neutron_backend.quantizer.calibration import quantize_model, random_batches
    from neutron_backend.verify import output_scales

    torch.manual_seed(0)
    inputs = (torch.randn(shape),)
    quantized = quantize_model(ViTAttention().eval(), inputs, calibration_batches=random_batches(inputs, 2),
                               progress=False)
    report, (got,), (want,) = lower_and_run(quantized, (shape,), tmp_path)
    on_cpu = {e.target: e.reason for e in report.nodes if not e.delegated and not e.target.startswith(QDQ_PREFIX)}
    assert on_cpu == cpu, str(report)
    delegated = {e.target for e in report.nodes if e.delegated}
    assert {"aten.addmm.default", "aten.bmm.default", "aten.select_copy.int"} <= delegated, str(report)
    if not cpu:
        assert "aten._softmax.default" in delegated and report.num_partitions == 1, str(report)
    (scale,) = output_scales(quantized)
    assert steps(got, want, scale) <= ATTENTION_MAX_STEPS


# -- reasons say what happened -----------------------------------------------------------------------------------


class NormThenAttention(nn.Module):
    """A layer_norm (no NPU implementation) and a causal attention (left whole by the quantizer's rewrite, so
    ExecuTorch decomposes it after quantization)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.linear = nn.Linear(16, 16)

    def forward(self, x):
        y = self.linear(self.norm(x))
        return F.scaled_dot_product_attention(y, y, y, is_causal=True)


def test_unsupported_and_never_quantized_operators_say_why() -> None:
    """Both said "not quantized ... quantize the model with NeutronQuantizer" for a model quantized with it."""
    from conftest import partition_edge, quantized_edge

    report = partition_edge(quantized_edge(NormThenAttention(), (torch.randn(1, 8, 16),)))
    reasons = {e.target: e.reason for e in report.nodes if not e.delegated}
    assert reasons["aten.native_layer_norm.default"] == (
        "aten.native_layer_norm.default is not supported on Neutron (this backend has no NPU implementation of it), "
        "so it runs on the CPU"), reasons
    # The bmm comes from decomposing the attention after quantization; the quantizer's note follows it.
    assert reasons["aten.bmm.default"] == ("not quantized: NeutronQuantizer has no rule for "
                                           "aten.scaled_dot_product_attention.default and left it in float"), reasons
    assert not any("quantize the model with NeutronQuantizer" in reason for reason in reasons.values()), reasons


# The input's largest value: 10 x (127 - 94) = 330 (cross-quantizer soak graphs 520 and 796, whose .pte failed to
# load with 'cannot convert float infinity to integer'), and 0.3 x (127 + 128) = 76.5 <= 88.72.
@pytest.mark.parametrize(("scale", "zero_point", "delegated"), [(10.0, 94, False), (0.3, -128, True)])
def test_exp_whose_float32_table_would_overflow_stays_on_the_cpu(scale, zero_point, delegated, tmp_path: Path) -> None:

    class Exp(nn.Module):
        def forward(self, x):
            return qdq(torch.exp(qdq(x, scale, zero_point)), 2**20 / 127, -128)

    report, (got,), (want,) = lower_and_run(Exp(), ((1, 4, 2, 7),), tmp_path)
    (entry,) = compute_entries(report, "exp")
    assert entry.delegated is delegated, entry.reason
    if not delegated:
        assert "whose exp overflows float32 (finite only up to 88.72)" in entry.reason, entry.reason
    assert steps(got, want, 2**20 / 127) <= 1  # one requantizing operator
