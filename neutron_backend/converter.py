"""Finding and calling NXP's eIQ Neutron converter (or compiler) for a flavor, isolated from its crashes.

NXP ships two Python interfaces, both behind :func:`convert_partition`:

| flavor | module | entry point |
|---|---|---|
| ``SDK_<yy>_<mm>`` | ``neutron_converter_SDK_<yy>_<mm>`` | ``convertModel`` |
| ``eiq_neutron_sdk``, SDK >= ~3.2.2 | ``eiq_neutron_sdk.neutron_compiler`` | ``compileModel`` |
| ``eiq_neutron_sdk``, older | ``eiq_neutron_sdk.neutron_converter`` | ``convertModel`` |

Each takes ``(list(tflite_bytes), CompilationContext())`` with ``targetOpts = getNeutronTarget(name)`` and
returns a TFLite model whose single operator is a CUSTOM ``NeutronGraph`` op; the last three inputs of that op hold
the microcode, weights and kernels that go into the deployable payload. ``eiq_neutron_sdk`` also has
``neutron_library_utils`` (``isNeutronTarget``, ``getNeutronTargets``), asked before the SDK sees a target name.

The SDK is native code that can abort the process on bad input, so it never runs in this process: conversions
and target lookups (:func:`sdk_target`) start ``sys.executable`` on a small worker (``_worker_main`` below), hand
it a JSON job description (and the Neutron IR) in a temporary directory, capture everything it prints, and read
the result back from a file. Any failure (exception, non-zero exit, signal, timeout, missing or malformed output)
becomes a :class:`ConversionError` carrying the SDK's log. Which interface an ``eiq_neutron_sdk`` offers is found
here without importing it (its submodules are looked up as files).

``extra_flags`` reach the converter as ``CompilationContext().compilationOpts`` attributes: each flag is
``--name=value``, ``--name value`` or a bare ``--name`` (True, for a bool option). ``name`` is matched against the
attribute names ignoring case, ``-`` and ``_``, so ``--excludeGraphPasses=A,B`` and ``--fetch-constants-to-sram``
both work; the value is converted to the type of the attribute's default. An unknown name is an error listing the
converter's valid option names. ``--useProfiling`` needs eIQ Neutron SDK >= 3.2.1 (an error names it otherwise)
and, as in NXP's flow, also turns on the console dumps and verbose output.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ai_edge_litert import schema_py_generated as schema

from neutron_backend.payload import DeployablePayload, PayloadError, TensorSpec


# The converter sits below the compile spec and the lowering (targets.py uses its isolated SDK lookup), so it names
# only what it reads of them instead of importing them.
class _Named(Protocol):
    name: str


class NeutronCompileOptions(Protocol):
    """What a conversion reads of neutron_backend.compile_spec.NeutronCompileOptions."""

    target: _Named  # a neutron_backend.targets.NeutronTarget
    neutron_converter_flavor: str | None
    converter_module: str | None
    extra_flags: tuple[str, ...]
    intermediates_dir: Path | None
    fetch_constants_to_sram: bool
    dump_kernel_selection_code: bool


class LoweredPartition(Protocol):
    """What a conversion reads of neutron_backend.lowering.LoweredPartition."""

    tflite: bytes
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    num_operators: int
    file_stem: str

logger = logging.getLogger(__name__)

# A large model takes NXP's converter minutes, not hours; a hung converter must not hang the export forever.
DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "NEUTRON_CONVERTER_TIMEOUT"

NEUTRON_GRAPH = "NeutronGraph"
# Graph passes NXP's own flow switches off in the converter; extra_flags (--excludeGraphPasses=...) override it.
NXP_EXCLUDED_GRAPH_PASSES = "HoistSliceAboveTranspose,MergeTranspose"
# Where NXP publishes the converter wheels (examples/nxp/setup.sh in ExecuTorch installs from it).
EIQ_PIP_INDEX = "https://eiq.nxp.com/repository"

# The error message keeps the end of the log (where a converter reports what killed it) within this budget.
_LOG_TAIL_LINES = 200
_LOG_TAIL_CHARS = 20_000

# Files of the job directory that are ours; anything else there was written by the converter.
_JOB_FILE = "job.json"
_INPUT_FILE = "input.tflite"
_OUTPUT_FILE = "output.tflite"
_ERROR_FILE = "error.txt"
_LOG_FILE = "converter.log"
_OWN_FILES = frozenset({_JOB_FILE, _INPUT_FILE, _OUTPUT_FILE, _ERROR_FILE, _LOG_FILE})

# Runs in the child: make it import from the same places as this process (a converter found by find_spec here
# may live on a sys.path entry added at run time), then hand over to _worker_main. Only stdlib before that.
_BOOTSTRAP = (
    "import json, sys\n"
    "job = json.loads(open(sys.argv[1], encoding='utf-8').read())\n"
    "sys.path[:] = job['sys_path'] + [p for p in sys.path if p not in job['sys_path']]\n"
    "from neutron_backend.converter import _worker_main\n"
    "sys.exit(_worker_main(job))\n"
)


class ConverterNotInstalledError(ImportError):
    """The converter module of the requested flavor cannot be imported; the message says how to install it."""


class ConversionError(RuntimeError):
    """The converter failed, or its result is not one fully converted NeutronGraph.

    ``log`` holds everything the converter process printed (stdout and stderr, interleaved); ``returncode`` its
    exit status (negative: killed by that signal; None: it did not exit by itself, or it did not run).
    """

    def __init__(self, message: str, log: str = "", returncode: int | None = None) -> None:
        super().__init__(message)
        self.log = log
        self.returncode = returncode


class TargetLookupError(ConversionError):
    """The SDK's ``getNeutronTarget`` failed, crashed, or returned something without the target's numbers."""


@dataclass(frozen=True)
class ConverterInterface:
    """Which of NXP's Python interfaces a flavor's SDK offers, found without importing (running) any of it.

    ``module`` holds ``getNeutronTarget``, ``CompilationContext`` and the entry point ``entry``
    (``convertModel`` or ``compileModel``); ``library_utils`` (``isNeutronTarget``, ``getNeutronTargets``) is
    None where the SDK has none; ``package`` is the distribution whose version the worker reports.
    """

    package: str
    module: str
    entry: str
    library_utils: str | None = None


# The eIQ Neutron SDK package, newest interface first: from about 3.2.2 the Neutron compiler, before it the
# converter (reference/facts.md). A per-release `neutron_converter_SDK_<yy>_<mm>` module has the converter API.
EIQ_NEUTRON_SDK = "eiq_neutron_sdk"
_EIQ_APIS = (("neutron_compiler", "compileModel"), ("neutron_converter", "convertModel"))
_EIQ_LIBRARY_UTILS = "neutron_library_utils"
_CONVERTER_ENTRY = "convertModel"
# compilationOpts.useProfiling exists from this eIQ Neutron SDK version on.
USE_PROFILING_MIN_SDK = "3.2.1"


# -- finding the converter ------------------------------------------------------------------------------------


def _install_hint(module: str) -> str:
    """Returns how to get the converter `module` and what to do without one."""
    package = module.split(".")[0]
    return (
        f"NXP ships the eIQ Neutron converter with the MCUXpresso SDK / eIQ Toolkit as a Python wheel: install "
        f"the one matching the SDK you build firmware with into this Python environment ({sys.executable}), "
        f"e.g. `pip install {package}-<version>-<platform>.whl` from the SDK, or `pip install --index-url "
        f"{EIQ_PIP_INDEX} {package}` (newer SDKs ship `{EIQ_NEUTRON_SDK}`: use neutron_converter_flavor="
        f"'{EIQ_NEUTRON_SDK}'). Without a converter, omit neutron_converter_flavor: partitions are then written "
        f"as emulation payloads that run on the host (neutron_backend.runtime) but not on a device."
    )


def _find_spec(name: str) -> tuple[importlib.machinery.ModuleSpec | None, BaseException | None]:
    """Returns (the spec of top-level module `name` or None, the error finding it); imports nothing."""
    try:
        return importlib.util.find_spec(name), None
    except (ImportError, ValueError) as error:
        return None, error


def find_converter(converter_module: str, flavor: str | None = None) -> ConverterInterface:
    """Returns the interface of the SDK `converter_module` (a module name, or the package ``eiq_neutron_sdk``).

    Nothing of the SDK is imported here (a native SDK may crash its importer): the package's submodules are
    looked up as files. For ``eiq_neutron_sdk`` the Neutron compiler (``neutron_compiler.compileModel``) wins
    over the older converter (``neutron_converter.convertModel``). Raises ConverterNotInstalledError naming the
    module, the flavor and how to install it.
    """
    named = f"neutron_converter_flavor={flavor!r}" if flavor is not None else f"module {converter_module!r}"
    spec, cause = _find_spec(converter_module)
    if spec is not None and converter_module != EIQ_NEUTRON_SDK:
        return ConverterInterface(converter_module, converter_module, _CONVERTER_ENTRY)
    if spec is not None:
        locations = list(spec.submodule_search_locations or [])
        found = {
            name for name in (*(api for api, _ in _EIQ_APIS), _EIQ_LIBRARY_UTILS)
            if importlib.machinery.PathFinder.find_spec(name, locations) is not None
        }
        for api, entry in _EIQ_APIS:
            if api in found:
                utils = f"{EIQ_NEUTRON_SDK}.{_EIQ_LIBRARY_UTILS}" if _EIQ_LIBRARY_UTILS in found else None
                return ConverterInterface(EIQ_NEUTRON_SDK, f"{EIQ_NEUTRON_SDK}.{api}", entry, utils)
        apis = " or ".join(f"{EIQ_NEUTRON_SDK}.{api}" for api, _ in _EIQ_APIS)
        raise ConverterNotInstalledError(
            f"The Neutron converter for {named} is not installed: package {EIQ_NEUTRON_SDK!r} "
            f"({', '.join(locations)}) has neither {apis}. {_install_hint(converter_module)}",
            name=converter_module,
        )
    why = "" if cause is None or isinstance(cause, ModuleNotFoundError) else f" ({type(cause).__name__}: {cause})"
    raise ConverterNotInstalledError(
        f"The Neutron converter for {named} is not installed: Python cannot import module "
        f"{converter_module!r}{why}. {_install_hint(converter_module)}",
        name=converter_module,
    ) from cause


def require_converter(options: NeutronCompileOptions) -> ConverterInterface:
    """Returns the interface of the converter for ``options.neutron_converter_flavor`` once it is known to exist.

    Raises ConverterNotInstalledError (naming the module, the flavor and how to install it) when it does not,
    and ValueError when no flavor is set (there is then no converter to look for).
    """
    module = options.converter_module
    flavor = options.neutron_converter_flavor
    if module is None or flavor is None:
        raise ValueError("no neutron_converter_flavor is set, so there is no converter to call")
    return find_converter(module, flavor)


# -- running it -----------------------------------------------------------------------------------------------


def _timeout(timeout: float | None) -> float:
    """Returns the timeout in seconds: `timeout`, else $NEUTRON_CONVERTER_TIMEOUT, else DEFAULT_TIMEOUT_S."""
    if timeout is None:
        raw = os.environ.get(TIMEOUT_ENV)
        if raw is None:
            return DEFAULT_TIMEOUT_S
        try:
            timeout = float(raw)
        except ValueError as error:
            raise ValueError(f"${TIMEOUT_ENV}={raw!r} must be a number of seconds") from error
    if not timeout > 0:
        raise ValueError(f"converter timeout must be > 0 seconds, got {timeout!r}")
    return timeout


def _tail(log: str) -> str:
    """Returns the end of `log` that fits the error-message budget, saying how much was left out."""
    lines = log.rstrip().splitlines()
    kept = lines[-_LOG_TAIL_LINES:]
    while len(kept) > 1 and sum(len(line) + 1 for line in kept) > _LOG_TAIL_CHARS:
        kept = kept[1:]
    text = "\n".join(kept)[-_LOG_TAIL_CHARS:]
    omitted = len(lines) - len(kept)
    return (f"[... {omitted} earlier lines omitted ...]\n" if omitted else "") + text


def _exit_status(returncode: int | None) -> str:
    """Returns a readable exit status: 'exit code 3' or 'killed by signal SIGABRT (6)'."""
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {name} ({-returncode})"
    return f"exit code {returncode}"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Kills the worker and anything it started (it leads its own process group), then reaps it."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    except ProcessLookupError:
        pass
    process.wait()


def _run_worker(job_dir: Path, timeout: float) -> tuple[int | None, str, bool]:
    """Runs the worker on the job in `job_dir`; returns (exit status or None, its log, whether it timed out)."""
    log_path = job_dir / _LOG_FILE
    # The log goes to a file, not a pipe: a pipe held open by something the converter spawned would block us
    # after a timeout, and a file keeps stdout/stderr interleaved as the converter wrote them. -u keeps
    # Python-level output unbuffered, so it survives an abort; faulthandler prints where a crash happened.
    command = [sys.executable, "-u", "-X", "faulthandler", "-c", _BOOTSTRAP, str(job_dir / _JOB_FILE)]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=job_dir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=hasattr(os, "killpg"),
        )
        try:
            returncode: int | None = process.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            _stop(process)
            returncode, timed_out = None, True
        except BaseException:
            # Ctrl-C: the converter must not outlive the export that started it.
            _stop(process)
            raise
    return returncode, log_path.read_text(encoding="utf-8", errors="replace"), timed_out


@dataclass
class _Outcome:
    """What one isolated SDK job left behind: its output (None when there is none) or why it failed."""

    output: bytes | None
    log: str
    returncode: int | None
    elapsed: float
    failure: str | None


def _run_job(
    job: dict[str, Any],
    input_bytes: bytes,
    limit: float,
    keep: Callable[[Path, str], None] | None = None,
) -> _Outcome:
    """Runs `job` in the worker with `input_bytes` as its input file, for at most `limit` seconds.

    `keep(job_dir, log)` runs before the job directory is removed (to save files the SDK wrote). The outcome's
    `failure` says what went wrong (timeout, the worker's error, a crash, no output), or is None.
    """
    job = {
        **job,
        # The child runs in the job directory, so relative entries ('' is the current directory) are made absolute.
        "sys_path": [os.path.abspath(p) for p in sys.path if isinstance(p, str)],
        "input": _INPUT_FILE,
        "output": _OUTPUT_FILE,
        "error": _ERROR_FILE,
    }
    with tempfile.TemporaryDirectory(prefix="neutron_convert_") as tmp:
        job_dir = Path(tmp)
        (job_dir / _INPUT_FILE).write_bytes(input_bytes)
        (job_dir / _JOB_FILE).write_text(json.dumps(job), encoding="utf-8")
        started = time.monotonic()
        returncode, log, timed_out = _run_worker(job_dir, limit)
        elapsed = time.monotonic() - started
        if keep is not None:
            keep(job_dir, log)
        output_path, error_path = job_dir / _OUTPUT_FILE, job_dir / _ERROR_FILE
        output = output_path.read_bytes() if output_path.exists() else None
        if timed_out:
            failure = f"did not finish within {limit:g} s (set ${TIMEOUT_ENV} to wait longer) and was killed"
        elif error_path.exists():
            failure = f"failed: {error_path.read_text(encoding='utf-8', errors='replace').strip()}"
        elif returncode != 0:
            failure = "crashed" if returncode is not None and returncode < 0 else "failed"
        elif not output:
            failure = "exited without writing its result"
        else:
            failure = None
    return _Outcome(output if failure is None else None, log, returncode, elapsed, failure)


def _failure_message(what: str, outcome: _Outcome, saved: str = "") -> str:
    return (
        f"{what} {outcome.failure} (after {outcome.elapsed:.1f} s; {_exit_status(outcome.returncode)}){saved}\n"
        f"--- converter log ---\n{_tail(outcome.log) or '(the converter printed nothing)'}"
    )


def _keep_artifacts(job_dir: Path, lowered: LoweredPartition, options: NeutronCompileOptions, log: str) -> None:
    """Saves the converter log and the files the converter wrote (e.g. its kernel selection code).

    They go to intermediates_dir, or, for files the user asked for with dump_kernel_selection_code, to the
    current directory (where NXP's flow leaves them), named after the partition so partitions do not collide.
    """
    produced = sorted(p for p in job_dir.iterdir() if p.name not in _OWN_FILES and p.is_file())
    destination = options.intermediates_dir
    if destination is None and produced and options.dump_kernel_selection_code:
        destination = Path.cwd()
    if destination is None:
        return
    destination.mkdir(parents=True, exist_ok=True)
    stem = lowered.file_stem
    if options.intermediates_dir is not None:
        (destination / f"{stem}.converter.log").write_text(log, encoding="utf-8")
    for path in produced:
        target = destination / f"{stem}_{path.name.lstrip('_')}"
        shutil.copyfile(path, target)
        logger.info("converter wrote %s", target)


def _interface_job(interface: ConverterInterface) -> dict[str, Any]:
    return {
        "package": interface.package,
        "module": interface.module,
        "entry": interface.entry,
        "library_utils": interface.library_utils,
    }


def convert_partition(
    lowered: LoweredPartition, options: NeutronCompileOptions, *, timeout: float | None = None
) -> tuple[DeployablePayload, bytes]:
    """Converts one lowered partition with the converter of ``options.neutron_converter_flavor``.

    The converter runs in a separate process for at most `timeout` seconds (default: $NEUTRON_CONVERTER_TIMEOUT,
    else DEFAULT_TIMEOUT_S). With intermediates_dir set, its log and any files it wrote are saved there.

    Returns (the deployable payload, the converted TFLite model bytes).
    Raises ConverterNotInstalledError when the converter module cannot be imported, ConversionError (with the
    converter's log) when it fails, crashes, times out or does not convert the whole partition into one
    NeutronGraph, and ValueError for a bad timeout.
    """
    interface = require_converter(options)
    limit = _timeout(timeout)
    job = {
        "kind": "convert",
        **_interface_job(interface),
        "target": options.target.name,
        "compilation_opts": {
            # One NeutronGraph per partition, however small: the partitioner already decided it is worth it.
            "minNumOpsPerGraph": 1,
            "excludeGraphPasses": NXP_EXCLUDED_GRAPH_PASSES,
            "fetchConstantsToSRAM": options.fetch_constants_to_sram,
            "dumpKernelSelectionCode": options.dump_kernel_selection_code,
        },
        "extra_flags": list(options.extra_flags),
    }
    what = f"Neutron converter {interface.module}.{interface.entry} (target {options.target.name})"
    logger.info("running %s on a %d-operator partition", what, lowered.num_operators)
    outcome = _run_job(job, lowered.tflite, limit, lambda job_dir, log: _keep_artifacts(job_dir, lowered, options, log))
    saved = (
        f" (full log: {options.intermediates_dir / (lowered.file_stem + '.converter.log')})"
        if options.intermediates_dir is not None
        else ""
    )
    if outcome.failure is not None or outcome.output is None:
        raise ConversionError(_failure_message(what, outcome, saved), log=outcome.log, returncode=outcome.returncode)
    converted, log = outcome.output, outcome.log
    logger.info("%s converted the partition in %.1f s", what, outcome.elapsed)
    if log.strip():
        logger.debug("converter log:\n%s", _tail(log))
    try:
        payload = extract_deployable(converted, lowered)
    except ConversionError as error:
        # The converter's log says why it left operators out of the NeutronGraph.
        raise ConversionError(
            f"{what}: {error}{saved}\n--- converter log ---\n{_tail(log) or '(the converter printed nothing)'}",
            log=log,
            returncode=outcome.returncode,
        ) from error
    return payload, converted


# -- the SDK's target description -----------------------------------------------------------------------------

# A target lookup only reads a table; a minute means the SDK hangs.
TARGET_LOOKUP_TIMEOUT_S = 60.0
# Lookups already made in this process: (converter module, target, sys.path) -> numbers or the error.
_target_lookups: dict[tuple[str, str, tuple[str, ...]], dict[str, Any] | TargetLookupError] = {}


def sdk_target(converter_module: str, name: str) -> dict[str, Any]:
    """Returns the SDK's description of target `name`: ``numMacs``, ``numPipes``, ``subsystem`` (and, where the
    SDK has them, ``numUnits``, ``hwVersion``), ``module`` (the SDK module asked) and ``version`` (the SDK's, or
    None), from ``getNeutronTarget`` of `converter_module`, run in a worker process like a conversion, so a
    crashing native SDK cannot take this process down. Results (and failures) are remembered per module,
    target and sys.path.

    Raises ConverterNotInstalledError when the SDK is not installed, TargetLookupError (with the SDK's log) when
    the lookup fails, crashes, times out, or names no such target.
    """
    interface = find_converter(converter_module)
    key = (converter_module, name, tuple(p for p in sys.path if isinstance(p, str)))
    if key not in _target_lookups:
        job = {"kind": "target", **_interface_job(interface), "target": name}
        outcome = _run_job(job, b"", TARGET_LOOKUP_TIMEOUT_S)
        what = f"{interface.module}.getNeutronTarget({name!r})"
        result: dict[str, Any] | TargetLookupError
        if outcome.failure is not None or outcome.output is None:
            result = TargetLookupError(_failure_message(what, outcome), log=outcome.log, returncode=outcome.returncode)
        else:
            result = json.loads(outcome.output)
        _target_lookups[key] = result
    result = _target_lookups[key]
    if isinstance(result, TargetLookupError):
        raise result
    return dict(result)


# -- reading its result ---------------------------------------------------------------------------------------


_BUILTIN_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


def _op_name(model: Any, operator: Any) -> str:
    """Returns the custom code or builtin name of `operator`."""
    code = model.operatorCodes[operator.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = code.customCode
        return custom.decode("utf-8", "replace") if isinstance(custom, bytes) else str(custom)
    return _BUILTIN_NAMES.get(builtin, f"builtin {builtin}")


def _ints(values: Any) -> list[int]:
    """Returns a flatbuffer index vector (a numpy array, a list or None when absent) as a list of ints."""
    return [] if values is None else [int(v) for v in values]


def _tensor_name(tensor: Any) -> str:
    name = tensor.name
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or "")


def _parse(tflite: bytes, what: str) -> Any:
    """Returns the unpacked ModelT of `tflite`; raises ConversionError if it is not a TFLite model."""
    if len(tflite) < 8 or tflite[4:8] != b"TFL3":
        raise ConversionError(f"the {what} is not a TFLite flatbuffer (no 'TFL3' identifier)")
    try:
        return schema.ModelT.InitFromPackedBuf(tflite, 0)
    except Exception as error:  # noqa: BLE001 - any decoding failure means a corrupt flatbuffer
        raise ConversionError(f"the {what} is not a readable TFLite model: {error}") from error


def _constant_bytes(converted: bytes, model: Any, tensor_index: int, what: str) -> bytes:
    """Returns the data of a constant uint8 tensor; raises ConversionError for anything else."""
    tensor = model.subgraphs[0].tensors[tensor_index]
    if tensor.type != schema.TensorType.UINT8:
        raise ConversionError(f"NeutronGraph {what} tensor {_tensor_name(tensor)!r} is not uint8")
    buffer = model.buffers[tensor.buffer] if 0 < tensor.buffer < len(model.buffers) else None
    if buffer is not None and buffer.data is not None and len(buffer.data):
        return bytes(buffer.data)
    # Models over 2 GB keep buffers after the flatbuffer, addressed by offset and size (offset 1 = unset).
    if buffer is not None and buffer.offset > 1 and buffer.offset + buffer.size <= len(converted):
        return converted[buffer.offset : buffer.offset + buffer.size]
    raise ConversionError(f"NeutronGraph {what} tensor {_tensor_name(tensor)!r} is not a constant buffer")


def _map_io(
    tensors: list[int], graph: Any, graph_io: list[int], names: list[str], specs: tuple[TensorSpec, ...], what: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Returns (map, formats) of the Neutron inputs or outputs `tensors` (tensor indices in the converted `graph`).

    The map holds the delegate argument/output index of each tensor, the formats 1 where that delegate tensor is
    channels-last. The converter keeps tensor names, so a tensor is matched by name to the partition IR's
    `names` (NXP's flow matches formats by name too); its place among the converted graph's `graph_io` is the
    fallback when a name is not found.
    Raises ConversionError for a tensor that is not a graph input/output or matches none of the partition's.
    """
    mapping, formats = [], []
    for tensor in tensors:
        if tensor not in graph_io:
            raise ConversionError(f"{NEUTRON_GRAPH} {what} tensor {tensor} is not an {what} of the converted model")
        name, position = _tensor_name(graph.tensors[tensor]), graph_io.index(tensor)
        if names.count(name) == 1:
            spec = specs[names.index(name)]
        elif len(graph_io) == len(specs):
            logger.warning("the converter renamed %s %r; mapping it by its position %d", what, name, position)
            spec = specs[position]
        else:
            raise ConversionError(f"{NEUTRON_GRAPH} {what} {name!r} matches no {what} of the partition ({names})")
        mapping.append(spec.arg_index)
        formats.append(1 if spec.channels_last else 0)
    return tuple(mapping), tuple(formats)


def extract_deployable(converted: bytes, lowered: LoweredPartition) -> DeployablePayload:
    """Returns the deployable payload for the converter's output `converted` of partition `lowered`.

    `converted` must hold one subgraph with exactly one operator, a CUSTOM NeutronGraph whose last three inputs are
    constant uint8 buffers (microcode, weights, kernels). Its other inputs are the Neutron inputs, its outputs the
    Neutron outputs followed by a scratch tensor (payload version 0) or by profile, debug and scratch tensors
    (version 1). Each Neutron input/output is mapped to its delegate argument/output through the tensor names of
    the partition's IR; a channels-last delegate tensor gets format 1 (the device runtime transposes it).

    Raises ConversionError when the partition was not fully converted or the result is malformed.
    """
    model = _parse(converted, "converted model")
    source = _parse(lowered.tflite, "partition IR")
    if len(model.subgraphs or []) != 1:
        raise ConversionError(f"converted model has {len(model.subgraphs or [])} subgraphs, expected 1")
    graph = model.subgraphs[0]
    operators = graph.operators or []
    found = [_op_name(model, op) for op in operators]
    if found != [NEUTRON_GRAPH]:
        raise ConversionError(
            f"partition not fully convertible: the converter must turn it into one {NEUTRON_GRAPH} operator, "
            f"found ops {found}. Keep the unconvertible operators on the CPU (operators_not_to_delegate), or use "
            f"the converter of the SDK version the backend targets"
        )
    node = operators[0]
    node_inputs, node_outputs = _ints(node.inputs), _ints(node.outputs)
    if len(node_inputs) < 3:
        raise ConversionError(f"{NEUTRON_GRAPH} has {len(node_inputs)} inputs, expected at least 3")
    microcode, weights, kernels = (
        _constant_bytes(converted, model, index, what)
        for index, what in zip(node_inputs[-3:], ("microcode", "weights", "kernels"), strict=True)
    )

    graph_inputs, graph_outputs = _ints(graph.inputs), _ints(graph.outputs)
    source_graph = source.subgraphs[0]
    source_inputs = [_tensor_name(source_graph.tensors[i]) for i in _ints(source_graph.inputs)]
    source_outputs = [_tensor_name(source_graph.tensors[i]) for i in _ints(source_graph.outputs)]

    # Trailing outputs that are not graph outputs are the converter's own: scratch, or profile, debug, scratch.
    extra = 0
    while extra < len(node_outputs) and node_outputs[-1 - extra] not in graph_outputs:
        extra += 1
    versions = {1: 0, 3: 1}
    if extra not in versions:
        raise ConversionError(
            f"{NEUTRON_GRAPH} has {extra} trailing non-graph outputs, expected 1 (scratch) or 3 "
            f"(profile, debug, scratch)"
        )

    input_map, input_formats = _map_io(node_inputs[:-3], graph, graph_inputs, source_inputs, lowered.inputs, "input")
    output_map, output_formats = _map_io(
        node_outputs[: len(node_outputs) - extra], graph, graph_outputs, source_outputs, lowered.outputs, "output"
    )

    try:
        return DeployablePayload(
            input_formats=input_formats,
            output_formats=output_formats,
            input_map=input_map,
            output_map=output_map,
            num_model_inputs=len(lowered.inputs),
            microcode=microcode,
            weights=weights,
            kernels=kernels,
            version=versions[extra],
        )
    except PayloadError as error:
        raise ConversionError(f"the converter's NeutronGraph does not form a valid payload: {error}") from error


# -- the worker (runs in the child process) -------------------------------------------------------------------


def _normalized(name: str) -> str:
    return name.replace("-", "").replace("_", "").lower()


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _typed(flag: str, text: str | None, default: object) -> object:
    """Returns the value of flag `flag` (`text`, None for a bare flag) as the type of the option's `default`.

    Raises ValueError when the value does not fit that type.
    """
    if isinstance(default, bool):
        if text is None or text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"--{flag} takes true/false, got {text!r}")
    if text is None:
        if default is None:
            return True
        raise ValueError(f"--{flag} needs a value (--{flag}=VALUE)")
    if isinstance(default, int | float):
        try:
            return type(default)(text)
        except ValueError as error:
            kind = "an integer" if isinstance(default, int) else "a number"
            raise ValueError(f"--{flag} takes {kind}, got {text!r}") from error
    if isinstance(default, str):
        return text
    # No usable default (None, or a converter-specific type): read the literal.
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_extra_flags(flags: list[str] | tuple[str, ...]) -> list[tuple[str, str | None]]:
    """Returns (name, value) per flag; '--a=1' and '--a 1' give ('a', '1'), a bare '--a' gives ('a', None).

    Raises ValueError for an item that is neither a '--name' flag nor the value following one.
    """
    parsed: list[tuple[str, str | None]] = []
    index = 0
    while index < len(flags):
        item = flags[index]
        if not item.startswith("--") or len(item) == 2:
            raise ValueError(f"extra flag {item!r} is not of the form --name=value, --name value or --name")
        name, sep, value = item[2:].partition("=")
        index += 1
        if sep:
            parsed.append((name, value))
        elif index < len(flags) and not flags[index].startswith("--"):
            parsed.append((name, flags[index]))
            index += 1
        else:
            parsed.append((name, None))
    return parsed


def apply_extra_flags(compilation_opts: object, flags: list[str] | tuple[str, ...]) -> list[str]:
    """Sets each flag on the converter's `compilation_opts`; returns the attribute names it set.

    Raises ValueError naming the converter's valid options for an unknown flag, and for a value of the wrong type.
    """
    valid = sorted(
        name
        for name in dir(compilation_opts)
        if not name.startswith("_") and not callable(getattr(compilation_opts, name, None))
    )
    by_key = {_normalized(name): name for name in valid}
    changed = []
    for flag, text in parse_extra_flags(flags):
        attribute = by_key.get(_normalized(flag))
        if attribute is None:
            raise ValueError(f"unknown converter flag --{flag}; this converter's compilation options are: {valid}")
        setattr(compilation_opts, attribute, _typed(flag, text, getattr(compilation_opts, attribute)))
        changed.append(attribute)
    return changed


def _sdk_version(package: str) -> str | None:
    """Returns the installed version of SDK `package` (its __version__, else its distribution's), or None."""
    version = getattr(sys.modules.get(package), "__version__", None)
    if isinstance(version, str):
        return version
    from importlib import metadata

    for distribution in (package, package.replace("_", "-")):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def _check_target_name(job: dict[str, Any]) -> None:
    """Raises ValueError listing the SDK's targets when its library utils do not know ``job['target']``.

    NXP's SDK crashes on a target it does not know, so it is asked first where it can be.
    """
    if job["library_utils"] is None:
        return
    utils = importlib.import_module(job["library_utils"])
    if not utils.isNeutronTarget(job["target"]):
        valid = [getattr(target, "name", target) for target in utils.getNeutronTargets()]
        raise ValueError(f"{job['package']} does not know Neutron target {job['target']!r}; its targets: {valid}")


def _target_numbers(module: Any, name: str) -> dict[str, Any]:
    """Returns what `module.getNeutronTarget(name)` says about the target, as JSON-ready values."""
    description = module.getNeutronTarget(name)
    npu = getattr(description, "npu", description)
    numbers: dict[str, Any] = {}
    for field, kind in (("numMacs", int), ("numPipes", int), ("subsystem", bool), ("numUnits", int),
                        ("hwVersion", str)):
        value = getattr(npu, field, None)
        numbers[field] = None if value is None else kind(value)
    return numbers


def _check_profiling(opts: Any, job: dict[str, Any], version: str | None) -> None:
    """Raises ValueError naming the SDK version needed when --useProfiling is asked of an SDK without it."""
    asked = any(_normalized(flag) == "useprofiling" for flag, _ in parse_extra_flags(job["extra_flags"]))
    if asked and not hasattr(opts, "useProfiling"):
        installed = f"{job['package']} {version}" if version else job["module"]
        hint = "" if job["package"] == EIQ_NEUTRON_SDK else f" (neutron_converter_flavor='{EIQ_NEUTRON_SDK}')"
        raise ValueError(
            f"--useProfiling needs eIQ Neutron SDK >= {USE_PROFILING_MIN_SDK}{hint}; the installed {installed} "
            f"has no useProfiling option. Install {EIQ_NEUTRON_SDK} >= {USE_PROFILING_MIN_SDK} or drop the flag"
        )


# What NXP's flow sets along with useProfiling: the imported and generated graphs dumped to the console, verbose
# output, and the microcode dump where the SDK has it.
_PROFILING_COMPANIONS = {"dumpAfterImport": "console", "dumpAfterGenerate": "console", "verbose": True,
                         "dumpMicrocode": True}


def _set_profiling_companions(opts: Any, flags_set: list[str]) -> None:
    """With useProfiling on, sets the options NXP's flow sets with it, except those the user's flags set."""
    if getattr(opts, "useProfiling", False) is not True:
        return
    for name, value in _PROFILING_COMPANIONS.items():
        if hasattr(opts, name) and name not in flags_set and isinstance(getattr(opts, name), type(value)):
            setattr(opts, name, value)


def _worker_main(job: dict[str, Any]) -> int:
    """Runs one SDK job in the worker process; returns the process exit code (0 on success).

    A "convert" job converts the input model; a "target" job writes the SDK's target description as JSON.
    On failure the error is written to the job's error file and its traceback to stderr (the captured log).
    """
    import traceback

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="neutron_backend worker: %(message)s")
    try:
        module = importlib.import_module(job["module"])
        version = _sdk_version(job["package"])
        _check_target_name(job)
        if job["kind"] == "target":
            numbers = _target_numbers(module, job["target"])
            numbers["module"], numbers["version"] = job["module"], version
            Path(job["output"]).write_text(json.dumps(numbers), encoding="utf-8")
            return 0
        cctx = module.CompilationContext()
        cctx.targetOpts = module.getNeutronTarget(job["target"])
        opts = cctx.compilationOpts
        for name, value in job["compilation_opts"].items():
            # An older converter may lack an option; that only matters when the option is asked for.
            if hasattr(opts, name):
                setattr(opts, name, value)
            elif value:
                raise ValueError(f"{job['module']} has no compilation option {name!r}, which was requested")
        _check_profiling(opts, job, version)
        changed = apply_extra_flags(opts, job["extra_flags"])
        _set_profiling_companions(opts, changed)
        shown = sorted(set(job["compilation_opts"]) | set(changed) | set(_PROFILING_COMPANIONS))
        logger.info(
            "%s.%s (%s) for %s with %s",
            job["module"],
            job["entry"],
            version or "version unknown",
            job["target"],
            ", ".join(f"{n}={getattr(opts, n)!r}" for n in shown if hasattr(opts, n)),
        )
        tflite = Path(job["input"]).read_bytes()
        result = getattr(module, job["entry"])(list(tflite), cctx)
        Path(job["output"]).write_bytes(bytes(result))
    except Exception as error:  # noqa: BLE001 - every failure is reported to the parent, with its traceback
        traceback.print_exc()
        Path(job["error"]).write_text(f"{type(error).__name__}: {error}", encoding="utf-8")
        return 1
    return 0
