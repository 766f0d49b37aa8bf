"""The converter layer: finding the eIQ Neutron converter, running it isolated, and the deployable payload.

NXP's converter is proprietary and not installable here, so these tests use TEST DOUBLES from
tests/fake_converter/ (importable as `neutron_converter_SDK_25_06`, `eiq_neutron_sdk` (the older converter
interface) & co. once that directory is on the path; tests/fake_converter/compiler_sdk/ holds the double of the
newer `eiq_neutron_sdk` with the Neutron compiler). The doubles record every call made into them and the options
they were given, so the tests check the exact calls. The
expected payload bytes are computed here from NXP's deployable payload layout, not from the code under
test, and compared with what the double produced (recorded under $FAKE_NEUTRON_RECORD_DIR).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from ai_edge_litert import schema_py_generated as schema

from neutron_backend.compile_spec import NeutronCompileOptions, generate_neutron_compile_spec
from neutron_backend.converter import (
    ConversionError,
    ConverterInterface,
    ConverterNotInstalledError,
    apply_extra_flags,
    convert_partition,
    extract_deployable,
    find_converter,
    parse_extra_flags,
    require_converter,
)
from neutron_backend.ir import IRBuilder
from neutron_backend.lowering import LoweredPartition
from neutron_backend.payload import EMULATION_MAGIC, DeployablePayload, TensorSpec, read_payload
from neutron_backend.targets import get_target

if TYPE_CHECKING:
    from executorch.exir import EdgeProgramManager

FAKE_DIR = Path(__file__).parent / "fake_converter"

# NXP's deployable payload layout: 16-byte-aligned sections header, microcode, weights, kernels.
ALIGN = 16
CHANNELS_LAST, NO_FORMAT = 1, 0
# A NeutronGraph with profile and debug outputs (the SDK_25_06 double) is payload version 1.
PAYLOAD_VERSION = 1


def _forget_fake_modules() -> None:
    """Drops the doubles from sys.modules, so later tests see the converter as not installed again."""
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(FAKE_DIR)):
            del sys.modules[name]


@pytest.fixture
def fake_converter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Makes the doubles importable here and in the converter subprocess; returns their record directory."""
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FAKE_DIR), os.environ.get("PYTHONPATH")])))
    record_dir = tmp_path / "record"
    monkeypatch.setenv("FAKE_NEUTRON_RECORD_DIR", str(record_dir))
    yield record_dir
    _forget_fake_modules()


@pytest.fixture(autouse=True)
def _no_fake_modules_before() -> None:
    """Starts every test with the converter not installed, whatever an earlier test imported."""
    _forget_fake_modules()


def recorded(record_dir: Path) -> dict[str, object]:
    """Returns what the (single) conversion of the double produced: microcode, weights, kernels, options."""
    (directory,) = list(record_dir.iterdir())
    return {
        "microcode": (directory / "microcode.bin").read_bytes(),
        "weights": (directory / "weights.bin").read_bytes(),
        "kernels": (directory / "kernels.bin").read_bytes(),
        "options": json.loads((directory / "options.json").read_text()),
    }


# -- a small quantized model, lowered end to end --------------------------------------------------------------


class ConvAdd(torch.nn.Module):
    """relu(conv(x)) + y: two delegate inputs of different shapes, so a wrong input map is visible."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)) + y


EXAMPLE_INPUTS = (torch.randn(1, 3, 8, 8), torch.randn(1, 8, 8, 8))


@pytest.fixture(scope="module")
def quantized() -> torch.fx.GraphModule:
    from neutron_backend.quantizer.calibration import quantize_model, random_batches

    torch.manual_seed(0)
    return quantize_model(
        ConvAdd(), EXAMPLE_INPUTS, calibration_batches=random_batches(EXAMPLE_INPUTS, 3), progress=False
    )


def lower(quantized: torch.fx.GraphModule, **spec_kwargs: object) -> EdgeProgramManager:
    """Returns the EdgeProgramManager of `quantized` lowered with NeutronPartitioner(spec of `spec_kwargs`)."""
    from executorch.exir import to_edge_transform_and_lower

    from neutron_backend.partitioner import NeutronPartitioner

    spec = generate_neutron_compile_spec("imxrt700", **spec_kwargs)
    return to_edge_transform_and_lower(
        torch.export.export(quantized, EXAMPLE_INPUTS), partitioner=[NeutronPartitioner(spec)]
    )


def delegate_of(edge: EdgeProgramManager) -> tuple[bytes, list[tuple[int, ...]]]:
    """Returns the payload of the single Neutron delegate and the shapes of its arguments, in call order."""
    from executorch.exir.lowered_backend_module import LoweredBackendModule

    graph_module = edge.exported_program().graph_module
    lowered = [m for m in graph_module.children() if isinstance(m, LoweredBackendModule)]
    assert len(lowered) == 1, f"expected one delegate, found {len(lowered)}"
    assert lowered[0].backend_id == "NeutronBackend"
    (call,) = [n for n in graph_module.graph.nodes if n.op == "call_function" and "call_delegate" in str(n.target)]
    arg_shapes = [tuple(arg.meta["val"].shape) for arg in call.args[1:]]
    return bytes(lowered[0].processed_bytes), arg_shapes


def neutron_io_shapes(converted: bytes) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Returns the shapes of the NeutronGraph's I/O tensors (without microcode/weights/kernels and extras)."""
    model = schema.ModelT.InitFromPackedBuf(converted, 0)
    graph = model.subgraphs[0]
    (node,) = graph.operators
    inputs = [tuple(graph.tensors[i].shape) for i in node.inputs[:-3]]
    outputs = [tuple(graph.tensors[i].shape) for i in node.outputs if i in list(graph.outputs)]
    return inputs, outputs


def same_tensor_shape(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """NCHW and NHWC views of one tensor have the same dims in another order."""
    return sorted(a) == sorted(b)


@pytest.mark.parametrize("in_ir", [True, False], ids=["transpose-in-ir", "transpose-on-cpu"])
def test_deployable_payload_matches_the_documented_layout_byte_for_byte(
    quantized: torch.fx.GraphModule, fake_converter: Path, tmp_path: Path, in_ir: bool
) -> None:
    intermediates = tmp_path / "intermediates"
    flags = ["--excludeGraphPasses=HoistSliceAboveTranspose,MergeTranspose", "--verbose"]
    edge = lower(
        quantized,
        neutron_converter_flavor="SDK_25_06",
        extra_flags=flags,
        fetch_constants_to_sram=True,
        use_neutron_for_format_conversion=in_ir,
        intermediates_dir=intermediates,
    )
    processed, arg_shapes = delegate_of(edge)
    produced = recorded(fake_converter)
    (converted_path,) = intermediates.glob("*.converted.tflite")
    neutron_inputs, neutron_outputs = neutron_io_shapes(converted_path.read_bytes())

    # The delegate's arguments are x (1x3x8x8) and y (1x8x8x8); the double lists the NeutronGraph inputs in
    # reverse order, so Neutron input 0 is y -> argument 1.
    assert arg_shapes == [(1, 3, 8, 8), (1, 8, 8, 8)]
    input_map = [next(a for a, shape in enumerate(arg_shapes) if same_tensor_shape(shape, s)) for s in neutron_inputs]
    assert input_map == [1, 0]
    assert len(neutron_outputs) == 1
    output_map = [0]
    # Every delegate tensor here is 4D around a conv: channels-last on the device unless the IR transposes.
    fmt = NO_FORMAT if in_ir else CHANNELS_LAST
    input_formats, output_formats = [fmt, fmt], [fmt]

    header = bytes([2, 1, 2, *input_formats, *output_formats, *input_map, *output_map, PAYLOAD_VERSION])
    assert len(header) == 10
    header_section = header + bytes(ALIGN - len(header))

    def section(data: bytes) -> bytes:
        return data + bytes(-len(data) % ALIGN)

    microcode, weights, kernels = produced["microcode"], produced["weights"], produced["kernels"]
    # The double makes every section a size that needs padding, so the padding is exercised.
    assert all(len(data) % ALIGN for data in (microcode, weights, kernels))
    expected = header_section + section(microcode) + section(weights) + section(kernels)
    assert processed == expected

    # The same, position by position, as the device runtime reads it.
    assert processed[0] == 2 and processed[1] == 1 and processed[2] == 2
    assert list(processed[3:5]) == input_formats and processed[5] == output_formats[0]
    assert list(processed[6:8]) == input_map and processed[8] == output_map[0]
    assert processed[9] == PAYLOAD_VERSION and processed[10:16] == bytes(6)
    offsets = [16, 16 + len(section(microcode)), 16 + len(section(microcode)) + len(section(weights))]
    assert all(offset % ALIGN == 0 for offset in offsets) and len(processed) % ALIGN == 0
    for offset, data in zip(offsets, (microcode, weights, kernels), strict=True):
        assert processed[offset : offset + len(data)] == data
        assert processed[offset + len(data) : offset + len(section(data))] == bytes(len(section(data)) - len(data))
    assert struct.unpack_from("<I", processed, 16)[0] == 0x64434D6E  # the microcode magic word
    assert read_payload(processed).to_bytes() == processed

    # The compile spec reached the converter: the double records the options it was given.
    options = produced["options"]
    assert options["minNumOpsPerGraph"] == 1
    assert options["fetchConstantsToSRAM"] is True
    assert options["dumpKernelSelectionCode"] is False
    assert options["excludeGraphPasses"] == "HoistSliceAboveTranspose,MergeTranspose"
    assert options["verbose"] is True
    from fake_neutron_common import read_record

    assert read_record(microcode)["target"] == "imxrt700"
    assert read_record(microcode)["compilationOpts"] == options

    # intermediates_dir: the partition IR, the converter output and the converter log.
    (ir_path,) = [p for p in intermediates.glob("*.tflite") if not p.name.endswith(".converted.tflite")]
    ir = schema.ModelT.InitFromPackedBuf(ir_path.read_bytes(), 0)
    ir_ops = {ir.operatorCodes[op.opcodeIndex].builtinCode for op in ir.subgraphs[0].operators}
    assert schema.BuiltinOperator.CONV_2D in ir_ops
    assert ir_path.stem + ".converted.tflite" == converted_path.name
    assert "fake neutron-converter: converting" in (intermediates / f"{ir_path.stem}.converter.log").read_text()


def test_deployable_payload_lands_in_the_pte(quantized: torch.fx.GraphModule, fake_converter: Path) -> None:
    import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)

    edge = lower(quantized, neutron_converter_flavor="SDK_25_06")
    processed, _ = delegate_of(edge)
    assert processed in edge.to_executorch().buffer


def test_crashing_converter_raises_with_its_log_and_this_process_survives(
    quantized: torch.fx.GraphModule, fake_converter: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConversionError) as caught:
        convert_partition(add_partition(), options("SDK_99_01"))
    from neutron_converter_SDK_99_01 import CRASH_MESSAGE

    error = caught.value
    assert CRASH_MESSAGE in str(error) and CRASH_MESSAGE in error.log
    assert "SIGABRT" in str(error) and error.returncode == -6
    assert "neutron_converter_SDK_99_01" in str(error)
    # Lowering survives it too: the partition falls back to the CPU with a warning carrying the converter's log.
    with caplog.at_level(logging.WARNING, logger="neutron_backend"):
        edge = lower(quantized, neutron_converter_flavor="SDK_99_01")
    assert "call_delegate" not in str(edge.exported_program().graph)
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "neutron_backend.partitioner" and "could not be converted" in r.getMessage()]
    assert len(warnings) == 1 and CRASH_MESSAGE in warnings[0] and "run(s) on the CPU" in warnings[0]
    # Still here, and the next conversion works.
    processed, _ = delegate_of(lower(quantized, neutron_converter_flavor="SDK_25_06"))
    assert isinstance(read_payload(processed), DeployablePayload)


def test_named_flavor_that_is_not_installed_is_an_error_saying_how_to_install(
    quantized: torch.fx.GraphModule,
) -> None:
    with pytest.raises(ConverterNotInstalledError) as caught:
        lower(quantized, neutron_converter_flavor="SDK_25_06")
    message = str(caught.value)
    assert "neutron_converter_SDK_25_06" in message and "'SDK_25_06'" in message
    assert "pip install" in message and "MCUXpresso SDK" in message
    assert "omit neutron_converter_flavor" in message and "emulation" in message
    assert isinstance(caught.value, ImportError) and caught.value.name == "neutron_converter_SDK_25_06"


def test_no_flavor_gives_emulation_payloads_and_warns_once(
    quantized: torch.fx.GraphModule, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from neutron_backend import backend

    monkeypatch.setattr(backend, "_warned_emulation", False)
    with caplog.at_level(logging.WARNING, logger="neutron_backend"):
        payloads = [delegate_of(lower(quantized))[0] for _ in range(2)]
    assert all(p.startswith(EMULATION_MAGIC) and p[:8] == b"NTRNEMU\x00" for p in payloads)
    warnings = [r for r in caplog.records if r.name == "neutron_backend.backend" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "neutron_converter_flavor" in warnings[0].getMessage()


# -- the converter layer on its own (a hand-built partition, no export) ---------------------------------------


def add_partition() -> LoweredPartition:
    """A two-input ADD partition whose delegate arguments are (a, b) and whose output is 'sum'."""
    ir = IRBuilder("converter test")
    a = ir.add_tensor("a", (1, 4), "int8", scale=0.1, zero_point=1)
    b = ir.add_tensor("b", (1, 4, 2, 3), "int8", scale=0.2, zero_point=2)
    flat = ir.add_tensor("b_flat", (1, 24), "int8", scale=0.2, zero_point=2)
    out = ir.add_tensor("sum", (1, 24), "int8", scale=0.3, zero_point=3)
    ir.add_operator("RESHAPE", [b, ir.add_constant("shape", np.array([1, 24], np.int32))], [flat])
    ir.add_operator("ADD", [flat, a], [out])
    ir.set_inputs([a, b])
    ir.set_outputs([out])
    return LoweredPartition(
        tflite=ir.finish(),
        inputs=(TensorSpec((1, 4), "int8", 0.1, 1, False, 0), TensorSpec((1, 2, 3, 4), "int8", 0.2, 2, True, 1)),
        outputs=(TensorSpec((1, 24), "int8", 0.3, 3, False, 0),),
        num_operators=2,
    )


def options(flavor: str | None, **more: object) -> NeutronCompileOptions:
    """Returns compile options for imxrt700 with converter `flavor`."""
    return NeutronCompileOptions(target=get_target("imxrt700"), neutron_converter_flavor=flavor, **more)


def test_payload_fields_from_the_neutron_graph(fake_converter: Path) -> None:
    payload, converted = convert_partition(add_partition(), options("SDK_25_06"))
    produced = recorded(fake_converter)
    # Reversed NeutronGraph inputs: b (argument 1, channels-last) then a (argument 0).
    assert payload.input_map == (1, 0) and payload.input_formats == (CHANNELS_LAST, NO_FORMAT)
    assert payload.output_map == (0,) and payload.output_formats == (NO_FORMAT,)
    assert payload.num_model_inputs == 2 and payload.version == 1
    assert (payload.microcode, payload.weights, payload.kernels) == (
        produced["microcode"],
        produced["weights"],
        produced["kernels"],
    )
    assert extract_deployable(converted, add_partition()) == payload


# -- the two SDK interfaces: exact calls and options -----------------------------------------------------------

# What the backend sets on every conversion (NXP's flow passes the same two).
BASE_OPTIONS = {
    "minNumOpsPerGraph": 1,
    "excludeGraphPasses": "HoistSliceAboveTranspose,MergeTranspose",
    "fetchConstantsToSRAM": False,
    "dumpKernelSelectionCode": False,
}
# The defaults of the doubles' other options (fake_neutron_common.OPTION_DEFAULTS), written out independently.
UNTOUCHED = {"dumpAfterImport": "", "dumpAfterGenerate": "", "verbose": False}


def recorded_calls(record_dir: Path) -> list[list[object]]:
    """Returns the calls the (single) conversion's worker made into the double's API, in order."""
    (directory,) = list(record_dir.iterdir())
    return json.loads((directory / "calls.json").read_text())


@pytest.fixture
def fake_compiler_sdk(fake_converter: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Puts the double of the newer eiq_neutron_sdk (neutron_compiler) ahead of the older one on the path."""
    monkeypatch.syspath_prepend(str(FAKE_DIR / "compiler_sdk"))
    return fake_converter


def test_per_release_converter_module_gets_the_exact_calls_and_options(fake_converter: Path) -> None:
    interface = require_converter(options("SDK_25_06"))
    assert interface == ConverterInterface(
        "neutron_converter_SDK_25_06", "neutron_converter_SDK_25_06", "convertModel", None
    )
    convert_partition(add_partition(), options("SDK_25_06"))
    tflite = add_partition().tflite
    # No library utils in a per-release module: the target goes straight to getNeutronTarget.
    assert recorded_calls(fake_converter) == [
        ["CompilationContext"],
        ["getNeutronTarget", "imxrt700"],
        ["convertModel", len(tflite)],
    ]
    assert recorded(fake_converter)["options"] == {**BASE_OPTIONS, **UNTOUCHED, "useProfiling": False}


def test_eiq_neutron_sdk_converter_interface_calls_options_and_payload_version_0(fake_converter: Path) -> None:
    assert require_converter(options("eiq_neutron_sdk")) == ConverterInterface(
        "eiq_neutron_sdk", "eiq_neutron_sdk.neutron_converter", "convertModel", "eiq_neutron_sdk.neutron_library_utils"
    )
    payload, _ = convert_partition(add_partition(), options("eiq_neutron_sdk", fetch_constants_to_sram=True))
    # This double keeps the input order and has no profile/debug outputs: version 0.
    assert payload.version == 0 and payload.input_map == (0, 1) and payload.input_formats == (0, 1)
    assert payload.to_bytes()[9] == 0
    # The target name is checked with the library utils before the SDK sees it.
    assert recorded_calls(fake_converter) == [
        ["isNeutronTarget", "imxrt700"],
        ["CompilationContext"],
        ["getNeutronTarget", "imxrt700"],
        ["convertModel", len(add_partition().tflite)],
    ]
    # SDK 3.1.2 has no useProfiling, and none is set.
    assert recorded(fake_converter)["options"] == {**BASE_OPTIONS, **UNTOUCHED, "fetchConstantsToSRAM": True}


def test_eiq_neutron_sdk_compiler_interface_calls_options_and_payload(
    fake_compiler_sdk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where the kernel selection code lands
    interface = require_converter(options("eiq_neutron_sdk"))
    assert (interface.module, interface.entry) == ("eiq_neutron_sdk.neutron_compiler", "compileModel")
    flags = ("--excludeGraphPasses=MergeTranspose", "--minNumOpsPerGraph", "2")
    payload, _ = convert_partition(
        add_partition(), options("eiq_neutron_sdk", extra_flags=flags, dump_kernel_selection_code=True)
    )
    produced = recorded(fake_compiler_sdk)
    assert recorded_calls(fake_compiler_sdk) == [
        ["isNeutronTarget", "imxrt700"],
        ["CompilationContext"],
        ["getNeutronTarget", "imxrt700"],
        ["compileModel", len(add_partition().tflite)],
    ]
    # extra_flags reach the compiler and win over the backend's own settings; profiling stays off unless asked.
    assert produced["options"] == {
        **BASE_OPTIONS,
        **UNTOUCHED,
        "excludeGraphPasses": "MergeTranspose",
        "minNumOpsPerGraph": 2,
        "dumpKernelSelectionCode": True,
        "useProfiling": False,
        "dumpMicrocode": False,
    }
    assert payload.version == 1 and payload.input_map == (1, 0)
    assert (payload.microcode, payload.weights, payload.kernels) == (
        produced["microcode"],
        produced["weights"],
        produced["kernels"],
    )


def test_use_profiling_sets_what_nxp_sets_with_it_and_user_flags_win(fake_compiler_sdk: Path) -> None:
    convert_partition(add_partition(), options("eiq_neutron_sdk", extra_flags=("--use-profiling", "--verbose=no")))
    assert recorded(fake_compiler_sdk)["options"] == {
        **BASE_OPTIONS,
        "useProfiling": True,
        "dumpAfterImport": "console",
        "dumpAfterGenerate": "console",
        "dumpMicrocode": True,
        "verbose": False,
    }


def test_use_profiling_on_an_sdk_without_it_names_the_version_needed(fake_converter: Path) -> None:
    with pytest.raises(ConversionError) as caught:
        convert_partition(add_partition(), options("eiq_neutron_sdk", extra_flags=("--useProfiling",)))
    message = str(caught.value)
    assert "--useProfiling needs eIQ Neutron SDK >= 3.2.1" in message
    assert "the installed eiq_neutron_sdk 3.1.2 has no useProfiling option" in message
    assert list(fake_converter.glob("*")) == []  # nothing was converted


def test_target_unknown_to_the_sdk_is_refused_before_the_sdk_sees_it(
    fake_compiler_sdk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups = tmp_path / "lookups.jsonl"
    monkeypatch.setenv("FAKE_NEUTRON_LOOKUP_LOG", str(lookups))
    renamed = replace(get_target("imxrt700"), name="imxrt600")
    unknown = NeutronCompileOptions(target=renamed, neutron_converter_flavor="eiq_neutron_sdk")
    with pytest.raises(ConversionError) as caught:
        convert_partition(add_partition(), unknown)
    expected = "eiq_neutron_sdk does not know Neutron target 'imxrt600'; its targets: ['imxrt700', 'mcxn94x', 'imx95']"
    assert expected in str(caught.value)
    assert not lookups.exists()  # getNeutronTarget was never called


def test_missing_eiq_neutron_sdk_is_not_installed_error() -> None:
    with pytest.raises(ConverterNotInstalledError, match=r"flavor='eiq_neutron_sdk'.*module 'eiq_neutron_sdk'"):
        require_converter(options("eiq_neutron_sdk"))
    with pytest.raises(ValueError, match="no neutron_converter_flavor"):
        require_converter(options(None))


def test_eiq_neutron_sdk_without_either_interface_is_found_out_without_importing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "eiq_neutron_sdk"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('the SDK package must not be imported here')\n")
    (package / "neutron_library_utils.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConverterNotInstalledError) as caught:
        find_converter("eiq_neutron_sdk", "eiq_neutron_sdk")
    assert "has neither eiq_neutron_sdk.neutron_compiler or eiq_neutron_sdk.neutron_converter" in str(caught.value)
    assert "eiq_neutron_sdk" not in sys.modules


def test_partial_conversion_is_not_fully_convertible(fake_converter: Path) -> None:
    with pytest.raises(ConversionError, match="not fully convertible") as caught:
        convert_partition(add_partition(), options("SDK_99_02"))
    assert "found ops ['NeutronGraph', 'MAX_POOL_2D']" in str(caught.value)


def test_hung_converter_is_killed_after_the_timeout(fake_converter: Path) -> None:
    with pytest.raises(ConversionError, match="did not finish within 1.5 s") as caught:
        convert_partition(add_partition(), options("SDK_99_03"), timeout=1.5)
    assert "optimizing forever" in caught.value.log and caught.value.returncode is None


def test_timeout_from_the_environment(fake_converter: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUTRON_CONVERTER_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="NEUTRON_CONVERTER_TIMEOUT"):
        convert_partition(add_partition(), options("SDK_25_06"))


def test_converter_is_found_through_this_process_sys_path(
    fake_converter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only sys.path knows the double (as after sys.path.append in a notebook); the worker must see it too.
    monkeypatch.delenv("PYTHONPATH")
    payload, _ = convert_partition(add_partition(), options("SDK_25_06"))
    assert payload.input_map == (1, 0)


def test_unknown_extra_flag_is_an_error_listing_the_converter_options(fake_converter: Path) -> None:
    with pytest.raises(ConversionError) as caught:
        convert_partition(add_partition(), options("SDK_25_06", extra_flags=("--noSuchOption=1",)))
    message = str(caught.value)
    assert "unknown converter flag --noSuchOption" in message
    assert "minNumOpsPerGraph" in message and "excludeGraphPasses" in message
    assert caught.value.returncode == 1


def test_extra_flags_in_cli_style_reach_the_converter(fake_converter: Path) -> None:
    flags = ("--fetch-constants-to-sram", "false", "--min_num_ops_per_graph", "3", "--use-profiling")
    convert_partition(add_partition(), options("SDK_25_06", extra_flags=flags, fetch_constants_to_sram=True))
    produced = recorded(fake_converter)["options"]
    # Extra flags are applied last, so they win over the spec's own fields.
    assert produced["fetchConstantsToSRAM"] is False
    assert produced["minNumOpsPerGraph"] == 3
    assert produced["useProfiling"] is True


def test_kernel_selection_code_goes_to_intermediates_not_the_cwd(
    fake_converter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    intermediates = tmp_path / "intermediates"
    convert_partition(
        add_partition(), options("SDK_25_06", dump_kernel_selection_code=True, intermediates_dir=intermediates)
    )
    assert recorded(fake_converter)["options"]["dumpKernelSelectionCode"] is True
    assert [p.name for p in intermediates.glob("*kernel_selection.c")] != []
    assert list(cwd.iterdir()) == []


def test_garbage_converter_output_is_a_conversion_error() -> None:
    with pytest.raises(ConversionError, match="not a TFLite flatbuffer"):
        extract_deployable(b"definitely not a model", add_partition())


# -- extra flags -----------------------------------------------------------------------------------------------


def test_parse_extra_flags_forms() -> None:
    assert parse_extra_flags(["--a=1", "--b", "2", "--c", "--d=x=y"]) == [
        ("a", "1"),
        ("b", "2"),
        ("c", None),
        ("d", "x=y"),
    ]
    assert parse_extra_flags(["--n", "-1"]) == [("n", "-1")]
    for bad in (["a=1"], ["--"], ["--a", "1", "2"]):
        with pytest.raises(ValueError, match="is not of the form"):
            parse_extra_flags(bad)


def test_apply_extra_flags_types_values_like_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    try:
        from fake_neutron_common import OPTION_DEFAULTS, CompilationOptions

        opts = CompilationOptions(OPTION_DEFAULTS)
        changed = apply_extra_flags(opts, ["--minNumOpsPerGraph=4", "--excludeGraphPasses", "A,B", "--VERBOSE=yes"])
        assert changed == ["minNumOpsPerGraph", "excludeGraphPasses", "verbose"]
        assert (opts.minNumOpsPerGraph, opts.excludeGraphPasses, opts.verbose) == (4, "A,B", True)
        with pytest.raises(ValueError, match="takes an integer"):
            apply_extra_flags(opts, ["--minNumOpsPerGraph=many"])
        with pytest.raises(ValueError, match="takes true/false"):
            apply_extra_flags(opts, ["--verbose=maybe"])
        with pytest.raises(ValueError, match="needs a value"):
            apply_extra_flags(opts, ["--excludeGraphPasses"])
        with pytest.raises(ValueError, match=r"unknown converter flag --target.*'fetchConstantsToSRAM'"):
            apply_extra_flags(opts, ["--target=imxrt700"])
    finally:
        _forget_fake_modules()
