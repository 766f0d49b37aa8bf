"""Bad-input catalog: every way a user can hand the backend something wrong ends in a clear error, or in a CPU
fallback with a warning and a correct result, never in a crash, a hang or a silently wrong result.

Errors are checked for their type and for naming the bad value and what would be valid. Fallbacks are checked for
the reason in the report, the warning, and the numbers: the .pte runs and reproduces its reference (the quantized
model, or the float model when nothing was quantized).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)
import pytest
import torch
from executorch.exir import to_edge_transform_and_lower
from executorch.exir.backend.compile_spec_schema import CompileSpec
from numerics import Conv, Fn
from torch import nn

from neutron_backend.compile_spec import NeutronConfigError, generate_neutron_compile_spec, parse_compile_spec
from neutron_backend.converter import ConverterNotInstalledError
from neutron_backend.delegation_options import CustomDelegationOptions
from neutron_backend.partitioner import NeutronPartitioner
from neutron_backend.payload import EMULATION_MAGIC, PayloadError, read_payload
from neutron_backend.quantizer import NeutronQuantizer
from neutron_backend.quantizer.calibration import calibrate, quantize_model, random_batches
from neutron_backend.report import DelegationReport
from neutron_backend.runtime import NeutronRuntimeError, load_pte
from neutron_backend.targets import UnknownTargetError

CONV = "aten.convolution.default"
QDQ_PREFIX = "quantized_decomposed."
# One requantizing operator: the .pte may differ from the quantized reference by one output step.
MAX_ERROR_STEPS = 1.0


# -- helpers -----------------------------------------------------------------------------------------------------


def _lower(program: torch.export.ExportedProgram, directory: Path) -> tuple[Path, DelegationReport]:
    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700"))
    edge = to_edge_transform_and_lower(program, partitioner=[partitioner])
    path = directory / "model.pte"
    path.write_bytes(edge.to_executorch().buffer)
    return path, partitioner.report


def _quantized(model: nn.Module, example: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    return quantize_model(model.eval(), example, calibration_batches=random_batches(example, 3), progress=False)


def _cpu_entries(report: DelegationReport) -> list:
    return [e for e in report.nodes if not e.delegated and not e.target.startswith(QDQ_PREFIX)]


def _assert_runs_like(pte: Path, reference: Callable, inputs: tuple[torch.Tensor, ...], atol: float) -> None:
    (got,) = load_pte(pte)(*inputs)
    want = reference(*inputs)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=atol, rtol=0), f"max difference {(got - want).abs().max()}"


def _nothing_delegated_warning(caplog: pytest.LogCaptureFixture) -> str:
    (warning,) = [r.getMessage() for r in caplog.records
                  if r.name == "neutron_backend.partitioner" and "nothing was delegated" in r.getMessage()]
    return warning


class QdqRelu(nn.Module):
    """relu between quantize/dequantize pairs of a given integer dtype (as a foreign quantizer would leave it)."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        info = torch.iinfo(dtype)
        self.args = (0.05, 0 if info.min < 0 else 128, info.min, info.max, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        x = qd.dequantize_per_tensor.default(qd.quantize_per_tensor.default(x, *self.args), *self.args)
        y = torch.relu(x)
        return qd.dequantize_per_tensor.default(qd.quantize_per_tensor.default(y, *self.args), *self.args)


# -- names and options -----------------------------------------------------------------------------------------


def test_unknown_target_name_lists_the_valid_ones() -> None:
    with pytest.raises(NeutronConfigError, match=r"unknown Neutron target 'imxrt7000'; valid targets: \['imxrt700', "
                                                 r"'mcxn94x', 'imx95'\]\. Did you mean 'imxrt700'\?"):
        generate_neutron_compile_spec("imxrt7000")


def test_unknown_target_in_the_quantizer() -> None:
    with pytest.raises(UnknownTargetError, match="unknown Neutron target 'rt700'.*Did you mean 'imxrt700'"):
        NeutronQuantizer("rt700")


def test_target_of_the_wrong_type() -> None:
    with pytest.raises(NeutronConfigError, match="target must be a string, got int 700"):
        generate_neutron_compile_spec(700)


def test_malformed_converter_flavor() -> None:
    with pytest.raises(NeutronConfigError, match=r"invalid neutron_converter_flavor '25\.06'; valid flavors: "
                                                 r"'SDK_<yy>_<mm>'"):
        generate_neutron_compile_spec("imxrt700", neutron_converter_flavor="25.06")


def test_named_flavor_that_is_not_installed_fails_at_partitioner_construction() -> None:
    spec = generate_neutron_compile_spec("imxrt700", neutron_converter_flavor="SDK_25_06")
    with pytest.raises(ConverterNotInstalledError, match="neutron_converter_SDK_25_06.*pip install"):
        NeutronPartitioner(spec)


def test_unknown_operator_name_suggests_the_closest() -> None:
    with pytest.raises(NeutronConfigError, match=r"unknown operator 'aten::convolutoin'.*did you mean "
                                                 r"'aten::convolution'"):
        generate_neutron_compile_spec("imxrt700", operators_not_to_delegate=["aten::convolutoin"])


def test_malformed_operator_name() -> None:
    with pytest.raises(NeutronConfigError, match="malformed operator name 'aten::'; write it as 'aten::convolution'"):
        generate_neutron_compile_spec("imxrt700", operators_not_to_delegate=["aten::"])


def test_single_operator_string_instead_of_a_list() -> None:
    with pytest.raises(NeutronConfigError, match=r"got the single string 'aten::add'; write \['aten::add'\]"):
        generate_neutron_compile_spec("imxrt700", operators_not_to_delegate="aten::add")


@pytest.mark.parametrize(("option", "value", "message"), [
    ("use_neutron_for_format_conversion", "yes", "use_neutron_for_format_conversion must be True or False, got str"),
    ("fetch_constants_to_sram", 1, "fetch_constants_to_sram must be True or False, got int 1"),
    ("extra_flags", 42, r"extra_flags must be a str .* or a list of str .*, got int 42"),
    ("intermediates_dir", 3, r"intermediates_dir must be a path \(str or os.PathLike\) or None, got int 3"),
    ("optimise", True, r"unknown option 'optimise'; valid options: \['config', 'neutron_converter_flavor'"),
])
def test_option_of_the_wrong_type_or_name(option: str, value: object, message: str) -> None:
    with pytest.raises(NeutronConfigError, match=message):
        generate_neutron_compile_spec("imxrt700", **{option: value})


def test_delegation_options_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match="custom_delegation_options must be a CustomDelegationOptions, got dict"):
        NeutronPartitioner(generate_neutron_compile_spec("imxrt700"), {"force_delegate_cat": True})
    with pytest.raises(NeutronConfigError, match="min_compute_ops_per_partition must be an int >= 1, got int 0"):
        CustomDelegationOptions(min_compute_ops_per_partition=0)
    with pytest.raises(NeutronConfigError, match="force_delegate_cat must be True or False, got str 'no'"):
        CustomDelegationOptions(force_delegate_cat="no")


@pytest.mark.parametrize(("specs", "message"), [
    ([CompileSpec("target", b"\xff")], r"compile spec 'target' holds b'\\xff', which is not UTF-8 JSON"),
    ([CompileSpec("target", b'"imxrt700"'), CompileSpec("bogus", b"1")], "unknown compile spec key 'bogus'"),
    ([], "compile spec has no 'target' key"),
], ids=["corrupted-value", "unknown-key", "empty"])
def test_hand_built_compile_spec(specs: list[CompileSpec], message: str) -> None:
    with pytest.raises(NeutronConfigError, match=message):
        parse_compile_spec(specs)
    with pytest.raises(NeutronConfigError, match=message):
        NeutronPartitioner(specs)


def test_unknown_model_name_in_the_zoo() -> None:
    from neutron_backend.models import get_model

    with pytest.raises(ValueError, match="unknown model 'mobilnet'.*Did you mean 'mobilenet_v2'"):
        get_model("mobilnet")


# -- calibration -------------------------------------------------------------------------------------------------


def test_empty_calibration_data() -> None:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    example = (torch.randn(1, 3, 8, 8),)
    prepared = prepare_pt2e(torch.export.export(Conv().eval(), example).module(), NeutronQuantizer("imxrt700"))
    with pytest.raises(ValueError, match="calibration data is empty: pass at least one batch"):
        calibrate(prepared, [], progress=False)
    with pytest.raises(ValueError, match="calibration data is empty"):
        quantize_model(Conv(), example, calibration_batches=iter([]), progress=False)


def test_calibration_data_outside_the_model_domain() -> None:
    example = (torch.rand(2, 8) + 0.5,)
    with pytest.raises(ValueError, match=r"calibration batch 0 produced non-finite activations \(NaN or inf\).*"
                                         r"input domain"):
        quantize_model(Fn(torch.log), example, calibration_batches=[(-example[0],)], progress=False)


# -- models Neutron cannot run: CPU fallback with a warning, and correct results --------------------------------


def test_float_model_runs_on_the_cpu_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, example = Conv().eval(), (torch.randn(1, 3, 8, 8),)
    with caplog.at_level(logging.WARNING, logger="neutron_backend"):
        pte, report = _lower(torch.export.export(model, example), tmp_path)
    assert report.num_partitions == 0
    (conv,) = _cpu_entries(report)
    assert conv.reason.startswith("not quantized: input 'x' is float") and "NeutronQuantizer" in conv.reason
    assert "not quantized" in _nothing_delegated_warning(caplog)
    _assert_runs_like(pte, model, example, atol=1e-5)


def test_float16_model_says_to_convert_it_to_float32(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, example = Conv().half().eval(), (torch.randn(1, 3, 8, 8).half(),)
    with caplog.at_level(logging.WARNING, logger="neutron_backend"):
        pte, report = _lower(torch.export.export(_quantized(model, example), example), tmp_path)
    assert report.num_partitions == 0
    (conv,) = _cpu_entries(report)
    assert conv.reason == ("not quantized: it computes in torch.float16, and NeutronQuantizer quantizes float32 "
                           "only; convert the model with .float() before quantizing it")
    assert "torch.float16" in _nothing_delegated_warning(caplog)
    _assert_runs_like(pte, model, example, atol=1e-2)


def test_integer_model_input_stays_on_the_cpu_with_its_dtype_named(tmp_path: Path) -> None:
    model, example = Fn(torch.abs), (torch.randint(-5, 5, (2, 16), dtype=torch.int32),)
    pte, report = _lower(torch.export.export(model, example), tmp_path)
    assert report.num_partitions == 0
    (absolute,) = _cpu_entries(report)
    assert absolute.reason == ("input 'xs_0' is int32, produced by a model input; Neutron computes on int8 values that "
                               "come from a dequantize node, so this operator runs on the CPU")
    _assert_runs_like(pte, model, example, atol=0)


@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8], ids=["int16", "uint8"])
def test_graph_quantized_to_another_integer_type(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 dtype: torch.dtype) -> None:
    model, example = QdqRelu(dtype), (torch.randn(2, 16),)
    with caplog.at_level(logging.WARNING, logger="neutron_backend"):
        pte, report = _lower(torch.export.export(model, example), tmp_path)
    (relu,) = _cpu_entries(report)
    assert relu.reason == (f"activation input 'quantized_decomposed_dequantize_per_tensor_default' is quantized as "
                           f"{dtype}; Neutron runs torch.int8")
    assert str(dtype) in _nothing_delegated_warning(caplog)
    _assert_runs_like(pte, model, example, atol=1e-6)


def test_dynamic_shapes_run_on_the_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example, batch = (torch.randn(2, 3, 8, 8),), {0: torch.export.Dim("batch", min=1, max=8)}
    prepared = prepare_pt2e(torch.export.export(Conv().eval(), example, dynamic_shapes=(batch,)).module(),
                            NeutronQuantizer("imxrt700"))
    calibrate(prepared, random_batches(example, 3), progress=False)
    quantized = convert_pt2e(prepared)
    with caplog.at_level(logging.WARNING, logger="neutron_backend"):
        pte, report = _lower(torch.export.export(quantized, example, dynamic_shapes=(batch,)), tmp_path)
    assert report.num_partitions == 0
    (conv,) = _cpu_entries(report)
    assert "has a dynamic shape [s" in conv.reason and "Neutron runs static shapes only" in conv.reason
    assert "dynamic shape" in _nothing_delegated_warning(caplog)
    _assert_runs_like(pte, quantized, example, atol=1e-6)


def test_zero_size_tensors_run_on_the_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, example = nn.Linear(8, 4).eval(), (torch.randn(0, 8),)
    quantized = _quantized(model, example)
    with caplog.at_level(logging.WARNING, logger="neutron_backend"):
        pte, report = _lower(torch.export.export(quantized, example), tmp_path)
    assert report.num_partitions == 0
    assert all("has no elements (shape [0, " in e.reason for e in _cpu_entries(report))
    assert "there is nothing for Neutron to compute" in _nothing_delegated_warning(caplog)
    (output,) = load_pte(pte)(*example)
    assert output.shape == (0, 4)


@pytest.mark.parametrize(("model", "shape", "target", "reason"), [
    (nn.Conv2d(1024, 8, 9), (1, 1024, 9, 9), CONV,
     "kernel 9x9 x ceil(Cin=1024, 8) = 82944 > 65535 (Neutron's weight-size limit on imxrt700)"),
    (nn.Conv2d(2, 2, (1, 4097)), (1, 2, 1, 4097), CONV, "kernel 1x4097 exceeds Neutron's limit of 4096 per axis"),
    (Fn(lambda x: torch.softmax(x, dim=1)), (1, 2048), "aten._softmax.default", "C = 2048 > 2040 channels"),
], ids=["conv-weight-size", "conv-kernel", "softmax-channels"])
def test_operator_beyond_a_limit_runs_on_the_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture, model: nn.Module,
                                                 shape: tuple[int, ...], target: str, reason: str) -> None:
    torch.manual_seed(0)
    example = (torch.randn(shape),)
    quantized = _quantized(model, example)
    with caplog.at_level(logging.WARNING, logger="neutron_backend"):
        pte, report = _lower(torch.export.export(quantized, example), tmp_path)
    (entry,) = _cpu_entries(report)
    assert (entry.target, entry.reason) == (target, reason)
    assert reason in _nothing_delegated_warning(caplog)
    # On the CPU the .pte runs the quantized model's own arithmetic: within one output step of it.
    (got,) = load_pte(pte)(*example)
    scale = float(quantized(*example).unique().diff().min())
    assert (got - quantized(*example)).abs().max() <= MAX_ERROR_STEPS * scale + 1e-6


def test_quantized_model_with_nothing_delegable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, example = Fn(lambda x: x.permute(0, 2, 1)), (torch.randn(1, 4, 6),)
    quantized = _quantized(model, example)
    with caplog.at_level(logging.WARNING, logger="neutron_backend"):
        pte, report = _lower(torch.export.export(quantized, example), tmp_path)
    assert report.num_partitions == 0 and not any(e.delegated for e in report.nodes)
    (permute,) = _cpu_entries(report)
    assert permute.reason.startswith("its partition holds only no-op operators (aten.permute_copy.default)")
    assert "the whole program runs on the CPU" in _nothing_delegated_warning(caplog)
    _assert_runs_like(pte, quantized, example, atol=1e-6)


# -- files and payloads ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_pte(tmp_path_factory: pytest.TempPathFactory) -> Path:
    example = (torch.randn(1, 3, 8, 8),)
    pte, report = _lower(torch.export.export(_quantized(Conv(), example), example), tmp_path_factory.mktemp("pte"))
    assert report.num_partitions == 1
    return pte


def _payload_offset(data: bytes) -> int:
    offset = data.find(EMULATION_MAGIC)
    assert offset > 0 and data.find(EMULATION_MAGIC, offset + 1) == -1
    return offset


@pytest.mark.parametrize("cut", ["half", "header", "empty", "not-a-pte"])
def test_truncated_or_foreign_pte(good_pte: Path, tmp_path: Path, cut: str) -> None:
    data = good_pte.read_bytes()
    blob = {"half": data[: len(data) // 2], "header": data[:10], "empty": b"",
            "not-a-pte": bytes(range(256)) * 8}[cut]
    path = tmp_path / "broken.pte"
    path.write_bytes(blob)
    with pytest.raises(NeutronRuntimeError, match=rf"broken\.pte \({len(blob)} bytes\) is not a loadable ExecuTorch "
                                                  r"program \(truncated, corrupted or not a \.pte\)"):
        load_pte(path)


def test_missing_pte(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such .pte file.*missing.pte"):
        load_pte(tmp_path / "missing.pte")


@pytest.mark.parametrize(("where", "message"), [
    (200, r"invalid delegate payload \(\d+ bytes\): corrupted emulation payload: CRC32 0x[0-9a-f]+, recorded"),
    (0, r"invalid delegate payload \(\d+ bytes\): not a payload"),
], ids=["payload-body", "payload-magic"])
def test_corrupted_payload_inside_a_pte(good_pte: Path, tmp_path: Path, where: int, message: str) -> None:
    data = bytearray(good_pte.read_bytes())
    data[_payload_offset(bytes(data)) + where] ^= 0xFF
    path = tmp_path / "corrupted.pte"
    path.write_bytes(bytes(data))
    with pytest.raises(NeutronRuntimeError, match=message):
        load_pte(path)


def test_truncated_and_corrupted_payload_bytes(good_pte: Path) -> None:
    data = good_pte.read_bytes()
    start = _payload_offset(data)
    payload = read_payload(data[start:]).to_bytes()
    with pytest.raises(PayloadError, match="truncated emulation payload"):
        read_payload(payload[:20])
    with pytest.raises(PayloadError, match="corrupted emulation payload: CRC32"):
        read_payload(payload[:-5] + bytes([payload[-5] ^ 1]) + payload[-4:])
    with pytest.raises(PayloadError, match="empty payload"):
        read_payload(b"")


# -- wrong inputs at run time ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("inputs", "error", "message"), [
    ((torch.randn(1, 3, 8, 9),), ValueError, r"input 0: expected shape \[1, 3, 8, 8\], got \[1, 3, 8, 9\]"),
    ((torch.randn(1, 3, 8, 8, dtype=torch.float64),), ValueError,
     "input 0: expected dtype torch.float32, got torch.float64"),
    ((torch.randint(0, 9, (1, 3, 8, 8), dtype=torch.int8),), ValueError,
     "input 0: expected dtype torch.float32, got torch.int8"),
    ((), ValueError, "forward expects 1 inputs, got 0"),
    ((torch.randn(1, 3, 8, 8), torch.randn(1)), ValueError, "forward expects 1 inputs, got 2"),
    (([0.5] * 3,), TypeError, "input 0: expected a torch.Tensor, got list"),
], ids=["shape", "float64", "int8", "too-few", "too-many", "not-a-tensor"])
def test_wrong_inputs_at_run_time(good_pte: Path, inputs: tuple, error: type[Exception], message: str) -> None:
    program = load_pte(good_pte)
    with pytest.raises(error, match=message):
        program(*inputs)
    # The program still runs correct inputs afterwards.
    (output,) = program(torch.randn(1, 3, 8, 8))
    assert output.shape == (1, 8, 6, 6)
