"""Shared code of the TEST DOUBLES that stand in for NXP's eIQ Neutron converter in the tests.

NXP's converter (``neutron_converter_<flavor>`` / ``eiq_neutron_sdk``) is proprietary and cannot be installed
here. These doubles mimic only its Python API and the *shape* of its output: ``convertModel`` returns a TFLite
model with one CUSTOM ``NeutronGraph`` op whose last three inputs are uint8 constant buffers. The "microcode" is
NOT real microcode: it is a header that passes the checks of ``neutron_backend.payload`` followed by a JSON record
of the compilation options the double received, so tests can prove that options reach the converter. Nothing
produced here runs on Neutron hardware.

With $FAKE_NEUTRON_RECORD_DIR set, each conversion also writes what it produced (microcode.bin, weights.bin,
kernels.bin, options.json) and every call the process made into the double's API, in order (calls.json) to
``$FAKE_NEUTRON_RECORD_DIR/<sha256 of the input, 12 hex digits>/``, so a test can compare the payload with the
double's output without going through the code under test. With $FAKE_NEUTRON_LOOKUP_LOG set, every
``getNeutronTarget`` call appends a JSON line (target name, process id, the calls so far) to that file.

Each SDK double states its own compilation options (``CompilationContext.for_options``): an SDK older than 3.2.1
has no ``useProfiling``, and setting an option a double does not have fails as on NXP's pybind11 objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

MICROCODE_MAGIC = 0x64434D6E
HEADER_WORDS = 16
# Words of the microcode header read by the device runtime: sizes at 6 and 7, I/O counts per payload version.
MICROCODE_SIZE_WORD, WEIGHTS_SIZE_WORD = 6, 7
IO_COUNT_WORDS = {0: (11, 12), 1: (13, 14)}
# Where this double puts the length of its JSON record (a word the runtime does not read).
RECORD_LENGTH_WORD = 15
KERNELS_PREFIX = b"FAKEKERN"

OPTION_DEFAULTS = {
    # 2, not 1, so a test sees that the backend sets it.
    "minNumOpsPerGraph": 2,
    "excludeGraphPasses": "",
    "fetchConstantsToSRAM": False,
    "dumpKernelSelectionCode": False,
    "useProfiling": False,
    "dumpAfterImport": "",
    "dumpAfterGenerate": "",
    "verbose": False,
}
# An eIQ Neutron SDK before 3.2.1: no useProfiling.
OPTIONS_BEFORE_PROFILING = {name: value for name, value in OPTION_DEFAULTS.items() if name != "useProfiling"}
# The Neutron compiler (eIQ Neutron SDK >= 3.2.2) with its microcode dump.
COMPILER_OPTIONS = {**OPTION_DEFAULTS, "dumpMicrocode": False}

# Every call this process made into a double's API, in order: [function name, arguments...].
CALLS: list[list[object]] = []

_TARGETS = {"imxrt700": (8, 8, 1, "N3", False), "mcxn94x": (8, 2, 1, "N1", False), "imx95": (8, 128, 1, "S", True)}


class NeutronTarget:
    """The target description, fields named as in NXP's API."""

    def __init__(self, name: str, num_macs: int, num_pipes: int, num_units: int, hw: str, subsystem: bool) -> None:
        self.name = name
        self.numMacs = num_macs
        self.numPipes = num_pipes
        self.numUnits = num_units
        self.hwVersion = hw
        self.subsystem = subsystem


def getNeutronTarget(name: str) -> NeutronTarget:  # noqa: N802 - NXP's API name
    """Returns the target called `name`; raises ValueError for an unknown one."""
    CALLS.append(["getNeutronTarget", name])
    log = os.environ.get("FAKE_NEUTRON_LOOKUP_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as file:
            file.write(json.dumps({"target": name, "pid": os.getpid(), "calls": CALLS}) + "\n")
    if name not in _TARGETS:
        raise ValueError(f"unknown Neutron target {name!r}")
    return NeutronTarget(name, *_TARGETS[name])


def isNeutronTarget(name: str) -> bool:  # noqa: N802 - NXP's API name (neutron_library_utils)
    """Returns whether `name` is a target this double knows."""
    CALLS.append(["isNeutronTarget", name])
    return name in _TARGETS


def getNeutronTargets() -> list[NeutronTarget]:  # noqa: N802 - NXP's API name (neutron_library_utils)
    """Returns every target this double knows."""
    CALLS.append(["getNeutronTargets"])
    return [NeutronTarget(name, *numbers) for name, numbers in _TARGETS.items()]


class CompilationOptions:
    """Compilation options; like a pybind11 object, it rejects attributes it does not have."""

    def __init__(self, defaults: dict[str, object]) -> None:
        object.__setattr__(self, "_defaults", dict(defaults))
        for name, value in defaults.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        if name not in self._defaults:
            raise AttributeError(f"'CompilationOptions' object has no attribute '{name}'")
        object.__setattr__(self, name, value)

    def as_dict(self) -> dict[str, object]:
        """Returns every option and its value."""
        return {name: getattr(self, name) for name in self._defaults}


class CompilationContext:
    """What convertModel/compileModel take: target options and compilation options (OPTION_DEFAULTS)."""

    OPTIONS: dict[str, object] = OPTION_DEFAULTS

    def __init__(self) -> None:
        CALLS.append(["CompilationContext"])
        self.targetOpts: NeutronTarget | None = None
        self.compilationOpts = CompilationOptions(self.OPTIONS)

    @classmethod
    def for_options(cls, options: dict[str, object]) -> type[CompilationContext]:
        """Returns a CompilationContext class whose compilation options are `options` (name -> default)."""
        return type("CompilationContext", (cls,), {"OPTIONS": options})


def _log(message: str) -> None:
    # Straight to file descriptor 2, as native converter code would print.
    os.write(2, f"fake neutron-converter: {message}\n".encode())


def _opcode(builtin: int, custom: str | None = None) -> schema.OperatorCodeT:
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    code.customCode = custom
    code.version = 1
    return code


def _copy_tensor(source: schema.TensorT, name: bytes | None = None) -> schema.TensorT:
    tensor = schema.TensorT()
    tensor.name = name if name is not None else source.name
    tensor.shape = list(source.shape)
    tensor.type = source.type
    tensor.quantization = source.quantization
    tensor.buffer = 0
    return tensor


def _uint8(name: str, data: bytes, buffers: list[schema.BufferT]) -> schema.TensorT:
    tensor = schema.TensorT()
    tensor.name = name
    tensor.shape = [len(data)]
    tensor.type = schema.TensorType.UINT8
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, dtype=np.uint8) if data else None
    tensor.buffer = len(buffers)
    buffers.append(buffer)
    return tensor


def make_microcode(num_inputs: int, num_outputs: int, weights_size: int, record: dict, version: int = 1) -> bytes:
    """Returns fake microcode: a header the payload checks accept, then `record` as JSON, then filler.

    The size is deliberately not a multiple of 16, so payload padding is exercised.
    """
    body = json.dumps(record, sort_keys=True).encode()
    size = 4 * HEADER_WORDS + len(body) + 1
    size += 1 if size % 16 == 0 else 0
    words = [0] * HEADER_WORDS
    words[0] = MICROCODE_MAGIC
    words[MICROCODE_SIZE_WORD] = size
    words[WEIGHTS_SIZE_WORD] = weights_size
    words[IO_COUNT_WORDS[version][0]], words[IO_COUNT_WORDS[version][1]] = num_inputs, num_outputs
    words[RECORD_LENGTH_WORD] = len(body)
    microcode = struct.pack(f"<{HEADER_WORDS}I", *words) + body
    return microcode + b"\xa5" * (size - len(microcode))


def read_record(microcode: bytes) -> dict:
    """Returns the JSON record that make_microcode put into `microcode`."""
    length = struct.unpack_from("<I", microcode, 4 * RECORD_LENGTH_WORD)[0]
    return json.loads(microcode[4 * HEADER_WORDS : 4 * HEADER_WORDS + length])


def build_neutron_model(
    tflite: bytes,
    cctx: CompilationContext | None = None,
    *,
    payload_version: int = 1,
    reverse_inputs: bool = True,
    leftover_op: str | None = None,
) -> tuple[bytes, bytes, bytes, bytes]:
    """Returns (converted model, microcode, weights, kernels) for the int8 TFLite `tflite`.

    The converted model keeps the graph inputs and outputs (names, shapes, quantization) of `tflite` and has one
    NeutronGraph op: inputs = the graph inputs (in reverse order with `reverse_inputs`, which NXP's format allows,
    so a test proves the backend maps them by tensor and not by position) + microcode + weights + kernels;
    outputs = the graph outputs + (profile, debug when `payload_version` is 1) + scratch. `leftover_op` (a
    BuiltinOperator name) adds a second operator after the NeutronGraph, as a partial conversion would.
    """
    source = schema.ModelT.InitFromPackedBuf(tflite, 0)
    graph = source.subgraphs[0]
    weights = b"".join(bytes(b.data) for b in source.buffers if b.data is not None and len(b.data))
    weights += b"\x00" if len(weights) % 16 == 0 else b""
    kernels = KERNELS_PREFIX + hashlib.sha256(tflite).digest()[:29]
    options = cctx.compilationOpts.as_dict() if cctx is not None else {}
    target = cctx.targetOpts.name if cctx is not None and cctx.targetOpts is not None else None
    record = {"compilationOpts": options, "target": target, "input_operators": len(graph.operators or [])}
    microcode = make_microcode(len(graph.inputs), len(graph.outputs), len(weights), record, payload_version)

    buffers = [schema.BufferT()]
    tensors = [_copy_tensor(graph.tensors[i]) for i in graph.inputs]
    inputs = list(range(len(tensors)))
    outputs = []
    for i in graph.outputs:
        outputs.append(len(tensors))
        tensors.append(_copy_tensor(graph.tensors[i]))
    node_inputs = (inputs[::-1] if reverse_inputs else inputs) + [len(tensors) + k for k in range(3)]
    for name, data in (("microcode", microcode), ("weights", weights), ("kernels", kernels)):
        tensors.append(_uint8(name, data, buffers))
    extra_names = ("profile", "debug", "scratch") if payload_version == 1 else ("scratch",)
    extras = []
    for name in extra_names:
        extras.append(len(tensors))
        tensors.append(_uint8(name, b"", buffers))
        tensors[-1].shape = [64]

    neutron_outputs = list(outputs)
    opcodes = [_opcode(schema.BuiltinOperator.CUSTOM, "NeutronGraph")]
    operators = []
    if leftover_op is not None:
        # The NeutronGraph feeds copies of the outputs; the op it could not convert produces the real ones.
        neutron_outputs = []
        for i in outputs:
            neutron_outputs.append(len(tensors))
            tensors.append(_copy_tensor(tensors[i], name=b"neutron_" + (tensors[i].name or b"")))
        opcodes.append(_opcode(getattr(schema.BuiltinOperator, leftover_op)))
    neutron = schema.OperatorT()
    neutron.opcodeIndex = 0
    neutron.inputs = node_inputs
    neutron.outputs = neutron_outputs + extras
    operators.append(neutron)
    if leftover_op is not None:
        for produced, final in zip(neutron_outputs, outputs, strict=True):
            op = schema.OperatorT()
            op.opcodeIndex = 1
            op.inputs = [produced]
            op.outputs = [final]
            operators.append(op)

    subgraph = schema.SubGraphT()
    subgraph.name = "main"
    subgraph.tensors = tensors
    subgraph.inputs = inputs
    subgraph.outputs = outputs
    subgraph.operators = operators
    model = schema.ModelT()
    model.version = 3
    model.description = "TEST DOUBLE of the eIQ Neutron converter: not real microcode"
    model.operatorCodes = opcodes
    model.subgraphs = [subgraph]
    model.buffers = buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), microcode, weights, kernels


def record(tflite: bytes, microcode: bytes, weights: bytes, kernels: bytes, options: dict) -> None:
    """Writes what a conversion produced, and the calls made so far, under $FAKE_NEUTRON_RECORD_DIR, when set."""
    root = os.environ.get("FAKE_NEUTRON_RECORD_DIR")
    if not root:
        return
    directory = Path(root) / hashlib.sha256(tflite).hexdigest()[:12]
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in (("microcode.bin", microcode), ("weights.bin", weights), ("kernels.bin", kernels)):
        (directory / name).write_bytes(data)
    (directory / "options.json").write_text(json.dumps(options, sort_keys=True))
    (directory / "calls.json").write_text(json.dumps(CALLS))


def convert(model: list[int], cctx: CompilationContext, entry: str = "convertModel", **build: object) -> list[int]:
    """The double's `entry` (convertModel or compileModel): returns the converted model as a list of byte values
    (as NXP's does)."""
    CALLS.append([entry, len(model) if isinstance(model, list) else type(model).__name__])
    if not isinstance(model, list):
        raise TypeError(f"convertModel takes a list of byte values, got {type(model).__name__}")
    if cctx.targetOpts is None:
        raise ValueError("CompilationContext.targetOpts is not set")
    tflite = bytes(model)
    _log(f"converting {len(tflite)} bytes for {cctx.targetOpts.name}, options {cctx.compilationOpts.as_dict()}")
    converted, microcode, weights, kernels = build_neutron_model(tflite, cctx, **build)
    if cctx.compilationOpts.dumpKernelSelectionCode:
        # NXP's converter writes this into the current directory.
        Path("_kernel_selection.c").write_text("/* TEST DOUBLE kernel selection code */\n")
    record(tflite, microcode, weights, kernels, cctx.compilationOpts.as_dict())
    print(f"fake neutron-converter: done, {len(converted)} bytes", file=sys.stdout)
    return list(converted)
