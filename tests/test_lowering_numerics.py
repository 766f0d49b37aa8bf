"""Per-operator numerics of the whole flow (see tests/numerics.py) for the first operator families, the coverage
check over every registered operator, and verify() itself."""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from numerics import MAX_ERROR_STEPS, NUM_INPUTS, Conv, Fn, Linear, check_case, lower, sample_inputs
from torch import nn

from neutron_backend import ops
from neutron_backend.quantizer.calibration import quantize_model, random_batches
from neutron_backend.verify import verify


class ConvViewLinear(nn.Module):
    """conv -> view (flatten) -> linear: the view sits inside a compute partition."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.linear = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        return self.linear(self.conv(x).view(1, -1))


class AddPermute(nn.Module):
    def forward(self, x, y):
        return (x + y).permute(0, 2, 3, 1)


class ConvCloneRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x).clone())


class ConvCat(nn.Module):
    """Two convs concatenated along channels (8 + 8: multiples of imxrt700's num_macs)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


class ConvSoftmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return torch.softmax(self.conv(x), dim=1)


CONV = "aten.convolution.default"
ADDMM = "aten.addmm.default"
MM = "aten.mm.default"
RELU = "aten.relu.default"
HARDTANH = "aten.hardtanh.default"
CLAMP = "aten.clamp.default"
ADD = "aten.add.Tensor"
IMAGE = (1, 3, 8, 8)
FEATURE_MAP = (1, 8, 6, 6)

CASES: dict[str, tuple[Callable[[], nn.Module], tuple[tuple[int, ...], ...], tuple[str, ...]]] = {
    "conv": (lambda: Conv(), (IMAGE,), (CONV,)),
    "conv_no_bias": (lambda: Conv(bias=False), (IMAGE,), (CONV,)),
    "conv_padding": (lambda: Conv(padding=1), (IMAGE,), (CONV,)),
    "conv_stride2": (lambda: Conv(stride=2, padding=1), (IMAGE,), (CONV,)),
    "conv_dilation2": (lambda: Conv(dilation=2, padding=2), (IMAGE,), (CONV,)),
    "conv_1x1": (lambda: Conv(kernel=1), (IMAGE,), (CONV,)),
    "depthwise_conv": (lambda: Conv(8, 8, 3, groups=8, padding=1), (FEATURE_MAP,), (CONV,)),
    "conv_relu": (lambda: Conv(act=nn.ReLU(), padding=1), (IMAGE,), (CONV, RELU)),
    "conv_relu6": (lambda: Conv(act=nn.ReLU6(), padding=1), (IMAGE,), (CONV, HARDTANH)),
    "linear": (lambda: Linear(), ((1, 16),), (ADDMM,)),
    "linear_no_bias": (lambda: Linear(bias=False), ((1, 16),), (MM,)),
    "linear_relu": (lambda: Linear(act=nn.ReLU()), ((1, 16),), (ADDMM, RELU)),
    "relu": (lambda: Fn(torch.relu), (FEATURE_MAP,), (RELU,)),
    "relu6": (lambda: nn.ReLU6(), (FEATURE_MAP,), (HARDTANH,)),
    "hardtanh_0_6": (lambda: nn.Hardtanh(0.0, 6.0), (FEATURE_MAP,), (HARDTANH,)),
    "hardtanh_minus1_1": (lambda: nn.Hardtanh(-1.0, 1.0), (FEATURE_MAP,), (HARDTANH,)),
    # Not a ReLU form: the quantizer shares the input's qparams and the IR clamps with MAXIMUM/MINIMUM.
    "hardtanh_minus0.5_0.75": (lambda: nn.Hardtanh(-0.5, 0.75), (FEATURE_MAP,), (HARDTANH,)),
    "clamp_0_6": (lambda: Fn(lambda x: torch.clamp(x, 0.0, 6.0)), (FEATURE_MAP,), (CLAMP,)),
    "clamp_min_0": (lambda: Fn(lambda x: torch.clamp(x, min=0.0)), (FEATURE_MAP,), (CLAMP,)),
    "clamp_0_1": (lambda: Fn(lambda x: torch.clamp(x, 0.0, 1.0)), (FEATURE_MAP,), (CLAMP,)),
    # Not ReLU forms: input and output share qparams; MAXIMUM and/or MINIMUM with the quantized bounds.
    "clamp_minus0.5_0.75": (lambda: Fn(lambda x: torch.clamp(x, -0.5, 0.75)), (FEATURE_MAP,), (CLAMP,)),
    "clamp_max_0.5": (lambda: Fn(lambda x: torch.clamp(x, max=0.5)), (FEATURE_MAP,), (CLAMP,)),
    # ReLU forms run fused into the conv/linear (no requantization in between).
    "conv_clamp_0_6": (lambda: Conv(act=lambda y: torch.clamp(y, 0.0, 6.0), padding=1), (IMAGE,), (CONV, CLAMP)),
    "linear_clamp_minus1_1": (lambda: Linear(act=lambda y: torch.clamp(y, -1.0, 1.0)), ((1, 16),), (ADDMM, CLAMP)),
    "add": (lambda: Fn(torch.add), (FEATURE_MAP, FEATURE_MAP), (ADD,)),
    "add_relu": (lambda: Fn(lambda x, y: torch.relu(x + y)), (FEATURE_MAP, FEATURE_MAP), (ADD, RELU)),
    "add_same_input": (lambda: Fn(lambda x: x + x), (FEATURE_MAP,), (ADD,)),
    "avg_pool2d": (lambda: nn.AvgPool2d(2), (FEATURE_MAP,), ("aten.avg_pool2d.default",)),
    "avg_pool2d_padding": (lambda: nn.AvgPool2d(3, stride=2, padding=1), (FEATURE_MAP,),
                           ("aten.avg_pool2d.default",)),
    "adaptive_avg_pool2d_3x3": (lambda: nn.AdaptiveAvgPool2d(3), (FEATURE_MAP,),
                                ("aten._adaptive_avg_pool2d.default",)),
    # to_edge decomposes a global adaptive average pool into mean over H, W.
    "adaptive_avg_pool2d_1x1": (lambda: nn.AdaptiveAvgPool2d(1), (FEATURE_MAP,), ("aten.mean.dim",)),
    "max_pool2d": (lambda: nn.MaxPool2d(2), (FEATURE_MAP,), ("aten.max_pool2d_with_indices.default",)),
    "max_pool2d_padding": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (FEATURE_MAP,),
                           ("aten.max_pool2d_with_indices.default",)),
    "mean_hw_keepdim": (lambda: Fn(lambda x: x.mean((2, 3), keepdim=True)), (FEATURE_MAP,), ("aten.mean.dim",)),
    "mean_hw": (lambda: Fn(lambda x: x.mean((-2, -1))), (FEATURE_MAP,), ("aten.mean.dim",)),
    "view": (lambda: ConvViewLinear(), ((1, 3, 4, 4),), (CONV, "aten.view_copy.default", ADDMM)),
    "permute": (lambda: AddPermute(), (FEATURE_MAP, FEATURE_MAP), (ADD, "aten.permute_copy.default")),
    "clone": (lambda: ConvCloneRelu(), (IMAGE,), (CONV, RELU)),
    "cat_channels": (lambda: ConvCat(), (IMAGE,), (CONV, "aten.cat.default")),
    "cat_inputs": (lambda: Fn(lambda x, y: torch.cat([x, y], dim=1)), (FEATURE_MAP, FEATURE_MAP),
                   ("aten.cat.default",)),
    "softmax_last_dim": (lambda: Fn(lambda x: torch.softmax(x, dim=-1)), ((1, 10),), ("aten._softmax.default",)),
    # Channels of a 4D tensor are dim 1 once a conv makes it an image (a bare 4D input is formatless: last dim).
    "softmax_channels": (lambda: ConvSoftmax(), (IMAGE,), (CONV, "aten._softmax.default")),
}

# Registered operators a case above exercises, by registry name (see test_every_registered_operator_is_covered).
COVERED = {
    "aten.convolution.default", "aten.addmm.default", "aten.mm.default", "aten.relu.default",
    "aten.hardtanh.default", "aten.clamp.default", "aten.add.Tensor", "aten.avg_pool2d.default",
    "aten._adaptive_avg_pool2d.default",
    "aten.max_pool2d_with_indices.default", "aten.mean.dim", "aten.view_copy.default",
    "aten.permute_copy.default", "aten.clone.default", "aten.cat.default", "aten._softmax.default",
}
# Registered but unreachable through NeutronQuantizer today, with the reason.
NOT_REACHABLE: dict[str, str] = {}

# Known library bugs, each with its reproducer; strict, so fixing the bug turns the case into a failure to un-mark.
@pytest.mark.parametrize("case", list(CASES))
def test_operator_numerics(case: str, tmp_path: Path, record_property) -> None:
    factory, shapes, targets = CASES[case]
    torch.manual_seed(0)
    check_case(case, factory(), shapes, targets, tmp_path, record_property)


def _coverage() -> tuple[set[str], dict[str, str]]:
    """COVERED and NOT_REACHABLE of this module and of every tests/test_ops_*.py module."""
    covered, not_reachable = set(COVERED), dict(NOT_REACHABLE)
    for path in sorted(Path(__file__).parent.glob("test_ops_*.py")):
        module = importlib.import_module(path.stem)
        covered |= set(module.COVERED)
        not_reachable.update(getattr(module, "NOT_REACHABLE", {}))
    return covered, not_reachable


def test_every_registered_operator_is_covered() -> None:
    covered, not_reachable = _coverage()
    registered = {operator.name for operator in ops.operators()}
    assert registered <= covered | set(not_reachable), (
        f"registered but without a numerics case: {sorted(registered - covered - set(not_reachable))}")
    assert not (covered | set(not_reachable)) - registered, (
        f"listed but no longer registered: {sorted((covered | set(not_reachable)) - registered)}")


# ---------------------------------------------------------------------------------------------------------------
# verify() itself, against a stand-in program (any callable returning a tuple of tensors).


@pytest.fixture(scope="module", name="quantized_relu")
def _quantized_relu() -> tuple[torch.fx.GraphModule, tuple[torch.Tensor, ...]]:
    example_inputs = (torch.randn(1, 10),)
    quantized = quantize_model(Fn(torch.relu), example_inputs, calibration_batches=random_batches(example_inputs, 2),
                               progress=False)
    return quantized, example_inputs


def test_verify_reads_the_output_scale_and_measures_steps(quantized_relu) -> None:
    from neutron_backend.verify import output_scales

    quantized, example_inputs = quantized_relu
    (scale,) = output_scales(quantized)
    dequantize = next(n for n in quantized.graph.nodes if n.op == "output").args[0][0]
    assert scale == pytest.approx(dequantize.args[1]) and scale > 0
    samples = sample_inputs(example_inputs)

    exact = verify(lambda x: (quantized(x),), quantized, samples)
    assert (exact.max_abs_error, exact.max_error_steps, exact.mean_error_steps) == (0.0, 0.0, 0.0)
    assert exact.top1_agreement == 1.0 and exact.num_samples == NUM_INPUTS
    assert exact.top1_agreement_with_float is None and exact.pte_accuracy is None

    def two_steps_off_at_one_element(x):
        out = quantized(x).clone()
        out[0, 3] += 2 * scale
        return (out,)

    off = verify(two_steps_off_at_one_element, quantized, samples)
    assert off.max_error_steps == pytest.approx(2.0)
    assert off.mean_error_steps == pytest.approx(2.0 / 10)
    assert "2 step(s)" in str(off)


def test_verify_top1_and_accuracy(quantized_relu) -> None:
    quantized, _ = quantized_relu
    samples = [(torch.eye(10)[i:i + 1] * 3,) for i in range(4)]  # relu keeps the one-hot: argmax i

    def shifted(x):  # the stand-in .pte puts its maximum one class further on the last sample only
        out = quantized(x)
        return (out.roll(1, dims=1) if x[0, 3] > 0 else out,)

    result = verify(shifted, quantized, samples, float_model=Fn(torch.relu), labels=[0, 1, 2, 4])
    assert result.top1_agreement == 0.75
    assert result.top1_agreement_with_float == 0.75
    assert result.reference_top1_agreement_with_float == 1.0
    assert (result.pte_accuracy, result.reference_accuracy, result.float_accuracy) == (1.0, 0.75, 0.75)
    assert "75.00%" in str(result)


def test_verify_errors(quantized_relu) -> None:
    quantized, example_inputs = quantized_relu
    samples = sample_inputs(example_inputs)
    with pytest.raises(ValueError, match="at least one input sample"):
        verify(lambda x: (quantized(x),), quantized, [])
    with pytest.raises(ValueError, match="returned 2 output"):
        verify(lambda x: (quantized(x), quantized(x)), quantized, samples)
    with pytest.raises(ValueError, match="shape"):
        verify(lambda x: (quantized(x).reshape(10),), quantized, samples)
    with pytest.raises(ValueError, match="label"):
        verify(lambda x: (quantized(x),), quantized, samples, labels=[0])
    with pytest.raises(ValueError, match="not a torch.fx.GraphModule"):
        verify(lambda x: (x,), Fn(torch.relu), samples)
    with pytest.raises(TypeError, match="input sample 0"):
        verify(lambda x: (quantized(x),), quantized, [3.0])
    # An explicit scale makes a float reference usable.
    assert verify(lambda x: (x.relu(),), Fn(torch.relu), samples, output_scale=0.1).max_error_steps == 0.0


def test_verify_accepts_a_path_bytes_or_a_program_manager(tmp_path: Path) -> None:
    example_inputs = (torch.randn(IMAGE),)
    lowered = lower(Conv(act=nn.ReLU()), example_inputs, tmp_path)
    samples = sample_inputs(example_inputs)
    by_path = verify(lowered.pte, lowered.quantized, samples)
    by_bytes = verify(lowered.pte.read_bytes(), lowered.quantized, samples)
    by_manager = verify(copy.deepcopy(lowered.edge).to_executorch(), lowered.quantized, samples)
    assert by_path == by_bytes == by_manager
    assert by_path.max_error_steps <= MAX_ERROR_STEPS


def test_verify_counts_a_tie_only_where_the_reference_is_tied(quantized_relu) -> None:
    quantized, _ = quantized_relu
    samples = [(torch.eye(10)[i:i + 1] * 3,) for i in range(4)]  # relu keeps the one-hot: argmax i

    def tied(x):  # the stand-in .pte ties class 9 with the reference's single maximum
        out = quantized(x).clone()
        out[0, 9] = out.max()
        return (out,)

    result = verify(tied, quantized, samples, labels=[0, 1, 2, 3])
    # The reference is not tied, so the .pte's ambiguous answer does not agree; nor is a tie a correct answer.
    assert result.top1_agreement == 0.0
    assert (result.pte_accuracy, result.reference_accuracy) == (0.0, 1.0)
    assert (result.distinct_reference_classes, result.distinct_pte_classes) == (4, 0)

    # The other side: a reference tied between classes i and 9 agrees with a .pte choosing either one, or both.
    tied_reference = Fn(lambda x: tied(x)[0])
    for choose in (lambda x: (quantized(x),), lambda x: (x.roll(9 - int(x.argmax()), 1),), tied):
        assert verify(choose, tied_reference, samples, output_scale=0.1).top1_agreement == 1.0

    def tied_elsewhere(x):  # ties two classes, neither of them the reference's
        out = quantized(x).clone()
        out[0, 8] = out[0, 9] = out.max() + 1
        return (out,)

    assert verify(tied_elsewhere, quantized, samples).top1_agreement == 0.0
    assert verify(tied_elsewhere, tied_reference, samples, output_scale=0.1).top1_agreement == 0.0


def test_verify_claims_no_agreement_for_a_reference_predicting_one_class(quantized_relu) -> None:
    quantized, _ = quantized_relu
    one_class = [(torch.eye(10)[:1] * (i + 1),) for i in range(4)]  # always class 0
    result = verify(lambda x: (quantized(x),), quantized, one_class)
    assert result.top1_agreement == 1.0 and result.distinct_reference_classes == 1
    assert not result.agreement_is_meaningful
    assert "not claimed: the reference predicts 1 distinct class(es) over 4 sample(s)" in str(result)
    assert "100.00%" not in str(result)
    # A constant output (every class tied) predicts no class at all.
    flat = verify(lambda x: (torch.zeros(1, 10),), Fn(lambda x: torch.zeros(1, 10)), one_class, output_scale=0.1)
    assert flat.distinct_reference_classes == 0 and not flat.agreement_is_meaningful


def test_top1_margin_is_zero_exactly_on_agreement() -> None:
    from neutron_backend.verify import top1_margin

    reference = torch.tensor([0.1, 0.9, 0.9, 0.4])
    assert top1_margin(reference, torch.tensor([0.0, 0.5, 0.2, 0.1])) == 0.0
    assert top1_margin(reference, torch.tensor([0.0, 0.1, 0.1, 0.7])) == pytest.approx(0.5)
    # A tie in the output agrees only when every tied class is a top class of the reference.
    assert top1_margin(reference, torch.tensor([0.0, 0.7, 0.7, 0.0])) == 0.0
    assert top1_margin(reference, torch.tensor([0.7, 0.0, 0.7, 0.0])) == pytest.approx(0.8)


def test_verify_reports_per_output_metrics_and_worst_inputs(quantized_relu) -> None:
    quantized, example_inputs = quantized_relu
    from neutron_backend.verify import output_scales

    (scale,) = output_scales(quantized)
    samples = [(torch.eye(10)[i:i + 1] * 3,) for i in range(6)]

    def off_on_sample_4(x):  # 3 steps off at one element of sample 4, exact elsewhere
        out = quantized(x).clone()
        if x[0, 4] > 0:
            out[0, 0] += 3 * scale
        return (out,)

    result = verify(off_on_sample_4, quantized, samples)
    (out,) = result.outputs
    assert out.max_error_steps == pytest.approx(3.0)
    assert out.mean_error_steps == pytest.approx(3.0 / 60)
    assert out.rmse == pytest.approx(((3 * scale) ** 2 / 60) ** 0.5, rel=1e-5)
    # Independent computation of the cosine similarity over all samples, flattened.
    got = torch.cat([off_on_sample_4(x)[0] for (x,) in samples]).double().reshape(-1)
    want = torch.cat([quantized(x) for (x,) in samples]).double().reshape(-1)
    assert out.cosine_similarity == pytest.approx(torch.nn.functional.cosine_similarity(got, want, dim=0).item())
    assert [(w.index, w.max_error_steps) for w in result.worst_inputs] == [(4, pytest.approx(3.0))]
    assert "worst inputs (index, max error in steps): #4 (3)" in str(result)
    assert "cosine similarity" in str(result)


def test_verify_rejects_labels_that_are_not_class_indices(quantized_relu) -> None:
    quantized, _ = quantized_relu
    samples = [(torch.eye(10)[i:i + 1],) for i in range(2)]
    with pytest.raises(ValueError, match=r"class indices in \[0, 9\] \(the outputs have 10 classes\), got \[0, 10\]"):
        verify(lambda x: (quantized(x),), quantized, samples, labels=[0, 10])
