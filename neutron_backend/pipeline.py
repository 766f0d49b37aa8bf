"""The whole job in one call: quantize, partition, lower to a .pte — what the CLI and the demo run.

Also what the CLI needs around it: loading a model named on the command line (`load_model`: a zoo name, a saved
ExportedProgram `.pt2`, or `file.py:function`) and sample data from a `.pt` or `.npz` file (`load_samples`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.fx import GraphModule

from neutron_backend.delegation_options import CustomDelegationOptions
from neutron_backend.int8_io import Int8IO, make_io_int8
from neutron_backend.report import DelegationReport

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """A model, file or data set named by the user cannot be used; the message says what would work."""


@dataclass
class CompiledModel:
    """A lowered model: the .pte bytes, the delegation report, and the references to check it against."""

    pte: bytes
    report: DelegationReport
    quantized: GraphModule
    edge_program: Any  # EdgeProgramManager before to_executorch (a deep copy), for the pure-Python emulator
    example_inputs: tuple[torch.Tensor, ...]
    # With int8_io: the qparams the caller applies to the .pte's int8 inputs and outputs (neutron_backend.int8_io).
    int8_io: Int8IO | None = None
    # The quantized model exported for lowering: what `save_reference` writes next to the .pte.
    quantized_program: torch.export.ExportedProgram | None = None


def compile_model(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], target: str = "imxrt700", *,
                  calibration_batches: Iterable[Sequence[torch.Tensor]] | None = None,
                  delegation_options: CustomDelegationOptions | None = None, progress: bool = True,
                  int8_io: bool = False, **compile_spec_options: Any) -> CompiledModel:
    """Quantizes `model` with NeutronQuantizer, partitions and lowers it for `target`, and returns the .pte.

    `compile_spec_options` are the keyword arguments of `generate_neutron_compile_spec` (flavor, extra_flags,
    operators_not_to_delegate, intermediates_dir, ...). Each step is logged at INFO with its duration;
    `progress` shows a calibration progress bar. With `intermediates_dir`, that directory also receives the
    quantized model (`quantized.pt2`, loadable with torch.export.load) and the report (`report.json`,
    `report.html`), next to each partition's `.tflite`. With `int8_io`, the .pte takes its float inputs as int8
    and returns int8 outputs: quantize and dequantize them with `CompiledModel.int8_io` (see
    `neutron_backend.int8_io.make_io_int8`, which raises ValueError when an input or output has no int8 form).
    """
    import executorch.kernels.quantized  # noqa: F401 - registers the out-variants to_executorch needs
    from executorch.exir import to_edge_transform_and_lower

    from neutron_backend.compile_spec import generate_neutron_compile_spec
    from neutron_backend.partitioner import NeutronPartitioner
    from neutron_backend.quantizer.calibration import quantize_model

    spec = generate_neutron_compile_spec(target, **compile_spec_options)
    partitioner = NeutronPartitioner(spec, delegation_options)
    with _step("quantizing (export, calibrate, convert)"):
        quantized = quantize_model(model, example_inputs, target=target, calibration_batches=calibration_batches,
                                   progress=progress)
    with _step(f"partitioning and lowering for {target}"):
        exported = torch.export.export(quantized, example_inputs)
        edge = to_edge_transform_and_lower(exported, partitioner=[partitioner])
        partitioner.report.add_lowering(edge)
    io = None
    if int8_io:
        edge, io = make_io_int8(edge)
    with _step("serializing the .pte"):
        edge_copy = copy.deepcopy(edge)  # to_executorch() mutates the edge program in place
        program = edge.to_executorch()
        pte = program.buffer
    partitioner.report.add_program(program, fetch_constants_to_sram=bool(compile_spec_options.get(
        "fetch_constants_to_sram", False)))
    intermediates_dir = compile_spec_options.get("intermediates_dir")
    if intermediates_dir is not None:
        _write_intermediates(Path(intermediates_dir), exported, partitioner.report)
    return CompiledModel(pte=pte, report=partitioner.report, quantized=quantized, edge_program=edge_copy,
                         example_inputs=example_inputs, int8_io=io, quantized_program=exported)


REFERENCE_SUFFIX = ".quantized.pt2"


def reference_path(pte_path: str | Path) -> Path:
    """Where `neutron compile` saves the quantized reference of a .pte: `model.pte` -> `model.quantized.pt2`."""
    pte_path = Path(pte_path)
    return pte_path.with_name(pte_path.stem + REFERENCE_SUFFIX)


def save_reference(compiled: CompiledModel, pte_path: str | Path) -> Path:
    """Saves the quantized model `compiled` was lowered from next to its .pte (`reference_path`), for
    `neutron verify`; returns the path."""
    path = reference_path(pte_path)
    torch.export.save(compiled.quantized_program, path)
    return path


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    """Logs the start of a long step and, at its end, how long it took."""
    start = time.perf_counter()
    logger.info("%s ...", what)
    yield
    logger.info("%s: done in %.1f s", what, time.perf_counter() - start)


def _write_intermediates(directory: Path, quantized: torch.export.ExportedProgram, report: DelegationReport) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.export.save(quantized, directory / "quantized.pt2")
    (directory / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (directory / "report.html").write_text(report.to_html())
    logger.info("wrote quantized.pt2, report.json and report.html to %s", directory)


# -- models named on the command line ------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model to compile: the float model, its example inputs, and calibration batches when its source gave
    some. `classifier` says whether its first output is class scores (top-1 comparisons make sense)."""

    name: str
    model: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    calibration_batches: list[tuple[torch.Tensor, ...]] | None = None
    classifier: bool = True
    description: str = ""


class _ExportedModule(torch.nn.Module):
    """A saved ExportedProgram as a module: its graph was fixed at export, so train/eval switches nothing."""

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        self.program = program.module()

    def train(self, mode: bool = True) -> _ExportedModule:
        self.training = mode  # the exported graph module refuses train()/eval(); its graph has one mode
        return self

    def forward(self, *args: torch.Tensor) -> Any:
        return self.program(*args)


MODEL_FORMS = ("a zoo model name or torchvision:NAME (see `neutron models`), a saved ExportedProgram FILE.pt2, or "
               "FILE.py:FUNCTION")


def load_model(spec: str) -> LoadedModel:
    """The model named by `spec`: a zoo name, `torchvision:NAME` (neutron_backend.models.torchvision_garden), a
    `.pt2` file from `torch.export.save`, or `file.py:function` where the function takes no arguments and returns
    `(model, example_inputs[, calibration_batches])`.

    Raises InputError naming the problem and the accepted forms.
    """
    path_text, _, function = spec.rpartition(":")
    if path_text.endswith(".py") and function:
        return _load_python(Path(path_text), function)
    if spec.endswith(".pt2"):
        return _load_exported(Path(spec))
    from neutron_backend.models import torchvision_garden, zoo_entry

    if spec.startswith(torchvision_garden.PREFIX):
        name = spec[len(torchvision_garden.PREFIX):]
        try:
            model, example_inputs = torchvision_garden.build(name)
        except (ImportError, ValueError) as error:
            raise InputError(str(error)) from error
        return LoadedModel(name, model, example_inputs,
                           description=f"torchvision.models.{name}(weights=None), seeded, batchnorm warmed up")

    try:
        entry = zoo_entry(spec)
    except ValueError as error:
        raise InputError(f"{error} A model can also be given as {MODEL_FORMS}") from error
    model, example_inputs = entry.build()
    calibration = entry.calibration() if entry.calibration is not None else None
    return LoadedModel(entry.name, model, tuple(example_inputs), calibration, classifier=entry.classifier,
                       description=entry.description)


def load_exported_program(path: str | Path) -> torch.export.ExportedProgram:
    """A saved ExportedProgram (torch.export.save), quantized ones included (e.g. compile's `quantized.pt2`).

    Raises InputError when `path` is missing or not such a file.
    """
    import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers quantized_decomposed ops for loading

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such file: {path} (a .pt2 model is written by torch.export.save)")
    try:
        return torch.export.load(path)
    except Exception as error:  # noqa: BLE001 - any failure means the file is not a loadable ExportedProgram
        raise InputError(f"{path} is not a saved ExportedProgram (torch.export.save): {error}") from error


def _load_exported(path: Path) -> LoadedModel:
    program = load_exported_program(path)
    args = program.example_inputs[0] if program.example_inputs else None
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise InputError(f"{path} holds no example inputs; save it with torch.export.save from torch.export.export "
                         "of the model and a tuple of example tensors")
    return LoadedModel(path.stem, _ExportedModule(program), tuple(args), description=f"ExportedProgram {path}")


def _load_python(path: Path, function: str) -> LoadedModel:
    if not path.is_file():
        raise InputError(f"no such file: {path} (expected FILE.py:FUNCTION, e.g. mymodel.py:build)")
    module_name = f"_neutron_user_model_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    builder = getattr(module, function, None)
    if not callable(builder):
        functions = sorted(name for name, value in vars(module).items()
                           if callable(value) and not name.startswith("_") and getattr(value, "__module__", "") ==
                           module_name)
        raise InputError(f"{path} has no function {function!r}; its functions: {functions}")
    result = builder()
    where = f"{path}:{function}()"
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise InputError(f"{where} must return (model, example_inputs) or (model, example_inputs, "
                         f"calibration_batches); it returned {type(result).__name__}")
    model, example_inputs = result[0], result[1]
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"{where} returned a {type(model).__name__} as the model; expected a torch.nn.Module")
    example_inputs = _as_tensor_tuple(example_inputs, f"{where} example_inputs")
    batches = None
    if len(result) == 3 and result[2] is not None:
        batches = [_as_tensor_tuple(batch, f"{where} calibration batch {i}") for i, batch in enumerate(result[2])]
        if not batches:
            raise InputError(f"{where} returned no calibration batches; return at least one, or return only "
                             "(model, example_inputs)")
    return LoadedModel(path.stem, model, example_inputs, batches, description=where)


def _as_tensor_tuple(value: Any, what: str) -> tuple[torch.Tensor, ...]:
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, list | tuple) and value and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(value)
    raise InputError(f"{what} must be a tensor or a tuple of tensors, got {type(value).__name__}")


# -- sample data files ---------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Batches shaped like a model's inputs, and their labels when the file had some (one tensor per batch)."""

    batches: list[tuple[torch.Tensor, ...]]
    labels: list[torch.Tensor] | None = None


DATA_FORMS = ("a .pt file (torch.save) holding a tensor, a tuple of tensors (one per model input), a list of "
              "batches, or a dict with 'inputs' and optional 'labels'; or a .npz file with one array per model "
              "input (in order) and an optional 'labels' array. Samples are stacked on the first dimension")


def load_samples(path: str | Path, input_shapes: Sequence[Sequence[int]],
                 input_dtypes: Sequence[torch.dtype] | None = None) -> Samples:
    """Batches for a model whose inputs have `input_shapes` (batch dimension first) read from `path` (see
    `DATA_FORMS`). Stacked samples are split into batches of the model's batch size; floating data is cast to
    the input dtype (float32 by default).

    Raises InputError naming the file, the shapes found and the shapes that would fit.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such data file: {path}")
    shapes = [tuple(int(d) for d in s) for s in input_shapes]
    dtypes = list(input_dtypes or [torch.float32] * len(shapes))
    inputs, labels = _read_data(path)
    if isinstance(inputs, list):
        batches = [_as_tensor_tuple(batch, f"{path}: batch {i}") for i, batch in enumerate(inputs)]
        for number, batch in enumerate(batches):
            _check_batch(path, number, batch, shapes)
    else:
        batches = _split(path, _as_tensor_tuple(inputs, f"{path}: inputs"), shapes)
    batches = [tuple(_cast(t, d) for t, d in zip(batch, dtypes, strict=True)) for batch in batches]
    if not batches:
        raise InputError(f"{path} holds no samples")
    return Samples(batches, _split_labels(path, labels, len(batches)) if labels is not None else None)


def _read_data(path: Path) -> tuple[Any, torch.Tensor | None]:
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path) as archive:
            arrays = {name: torch.from_numpy(archive[name].copy()) for name in archive.files}
        labels = arrays.pop("labels", None)
        if not arrays:
            raise InputError(f"{path} has no input arrays (only {sorted(archive.files)}); expected {DATA_FORMS}")
        return tuple(arrays.values()), labels
    if path.suffix != ".pt":
        raise InputError(f"{path}: unsupported data file type {path.suffix!r}; expected {DATA_FORMS}")
    try:
        data = torch.load(path, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means the file is not plain tensor data
        raise InputError(f"{path} is not a tensor file written by torch.save: {error}") from error
    if isinstance(data, dict):
        if "inputs" not in data:
            raise InputError(f"{path} holds a dict without 'inputs' (keys: {sorted(data)}); expected {DATA_FORMS}")
        labels = data.get("labels")
        return data["inputs"], None if labels is None else torch.as_tensor(labels)
    return data, None


def _describe(shapes: Sequence[Sequence[int]]) -> str:
    return ", ".join(str(list(s)) for s in shapes)


def _check_batch(path: Path, number: int, batch: tuple[torch.Tensor, ...], shapes: list[tuple[int, ...]]) -> None:
    found = [tuple(t.shape) for t in batch]
    if found != shapes:
        raise InputError(f"{path}: batch {number} has shape(s) {_describe(found)}; the model takes "
                         f"{_describe(shapes)}")


def _split(path: Path, stacked: tuple[torch.Tensor, ...], shapes: list[tuple[int, ...]]) -> list[tuple]:
    if len(stacked) != len(shapes):
        raise InputError(f"{path} holds {len(stacked)} input array(s); the model takes {len(shapes)} input(s) "
                         f"shaped {_describe(shapes)}")
    per_input = []
    for index, (tensor, shape) in enumerate(zip(stacked, shapes, strict=True)):
        found = tuple(tensor.shape)
        if found[1:] == shape[1:] and shape and found[0] % shape[0] == 0:
            per_input.append(list(torch.split(tensor, shape[0])))
        elif found[1:] == shape:
            per_input.append(list(tensor))
        else:
            batch = shape[0] if shape else 1
            raise InputError(
                f"{path}: input {index} has shape {list(found)}; the model's input {index} is {list(shape)}, so "
                f"expected [N*{batch}, {', '.join(map(str, shape[1:]))}] or [N, {', '.join(map(str, shape))}]")
    counts = {len(chunks) for chunks in per_input}
    if len(counts) != 1:
        raise InputError(f"{path}: the inputs hold different numbers of samples ({sorted(counts)} batches)")
    return list(zip(*per_input, strict=True))


def _split_labels(path: Path, labels: torch.Tensor, num_batches: int) -> list[torch.Tensor]:
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.numel() % num_batches:
        raise InputError(f"{path}: {labels.numel()} labels do not divide into {num_batches} batches")
    return list(torch.split(labels, labels.numel() // num_batches))


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() or dtype.is_floating_point else tensor
