"""NeutronBackend: the exir BackendDetails whose id matches NXP's device runtime ("NeutronBackend")."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from executorch.exir.backend.backend_details import BackendDetails, PreprocessResult
from executorch.exir.backend.compile_spec_schema import CompileSpec
from torch._subclasses.fake_tensor import FakeTensor
from torch.export import ExportedProgram
from torch.fx import Node

from neutron_backend.compile_spec import NeutronCompileOptions, parse_compile_spec
from neutron_backend.lowering import LoweredPartition, lower_partition
from neutron_backend.payload import EmulationPayload

logger = logging.getLogger(__name__)

_warned_emulation = False

# The partitioner's trial conversion (neutron_backend.fallback) processes the program preprocess gets next, so
# preprocess takes the trial's result: by program fingerprint (everything lowering reads, constants' bytes
# included), and for the converter, the slow step, also by the sha256 of the Neutron IR.
_CACHE_SIZE = 8


@dataclass(frozen=True)
class _Processed:
    lowered: LoweredPartition
    payload: bytes
    converted: bytes | None  # the converter's output model, None for an emulation payload


_processed: OrderedDict[tuple[str, NeutronCompileOptions], _Processed] = OrderedDict()
_converted: OrderedDict[tuple[str, NeutronCompileOptions], tuple[bytes, bytes]] = OrderedDict()


def _remember(cache: OrderedDict, key: Any, value: Any) -> None:
    cache[key] = value
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)


def _warn_emulation_once() -> None:
    global _warned_emulation
    if not _warned_emulation:
        _warned_emulation = True
        logger.warning(
            "No Neutron converter flavor was given, so Neutron partitions are written as emulation payloads: they "
            "run on the host (neutron_backend.runtime) but not on a device. For a deployable .pte, install NXP's "
            "eIQ Neutron converter for your MCUXpresso SDK (module neutron_converter_SDK_<yy>_<mm> or "
            "eiq_neutron_sdk) and pass neutron_converter_flavor='SDK_25_06' (your SDK version) to "
            "generate_neutron_compile_spec.")


def _write_intermediate(options: NeutronCompileOptions, lowered: LoweredPartition, suffix: str, data: bytes) -> None:
    if options.intermediates_dir is None:
        return
    options.intermediates_dir.mkdir(parents=True, exist_ok=True)
    path = options.intermediates_dir / f"{lowered.file_stem}{suffix}"
    path.write_bytes(data)
    logger.info("wrote %s", path)


def _render(value: Any) -> str:
    if isinstance(value, Node):
        return f"%{value.name}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_render(v)}" for k, v in value.items()) + "}"
    return repr(value)


def program_fingerprint(program: Any) -> str | None:
    """A digest of everything lowering reads from a partition's program: nodes in order (name, target, arguments,
    shape and dtype), inputs and outputs, each constant's kind, dtype, shape and bytes. None when a constant has
    no real value (a FakeTensor): such a program cannot be told apart from another by its values."""
    signature = program.graph_signature
    kinds = {"parameter": signature.inputs_to_parameters, "buffer": signature.inputs_to_buffers,
             "constant": signature.inputs_to_lifted_tensor_constants}
    digest = hashlib.sha256()
    for node in program.graph.nodes:
        value = node.meta.get("val")
        layout = f"{tuple(value.shape)}:{value.stride()}:{value.dtype}" if isinstance(value, torch.Tensor) else ""
        digest.update(f"{node.op}|{node.name}|{node.target}|{_render(node.args)}|{_render(node.kwargs)}|"
                      f"{layout}\n".encode())
        if node.op != "placeholder":
            continue
        for kind, names in kinds.items():
            if node.name not in names:
                continue
            key = names[node.name]
            tensor = program.state_dict.get(key, program.constants.get(key))
            if not isinstance(tensor, torch.Tensor) or isinstance(tensor, FakeTensor):
                return None
            data = tensor.detach().contiguous().cpu()
            digest.update(f"{kind}|{key}|{data.dtype}|{tuple(data.shape)}\n".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(f"inputs {list(signature.user_inputs)}".encode())
    return digest.hexdigest()


def _convert(lowered: LoweredPartition, options: NeutronCompileOptions) -> tuple[bytes, bytes]:
    """(deployable payload bytes, converted model) for `lowered`, from the cache when this IR was converted."""
    key = (hashlib.sha256(lowered.tflite).hexdigest(), options)
    if key in _converted:
        _converted.move_to_end(key)
        return _converted[key]
    from neutron_backend.converter import convert_partition

    deployable, converted = convert_partition(lowered, options)
    _remember(_converted, key, (deployable.to_bytes(), converted))
    return _converted[key]


def _process(program: Any, options: NeutronCompileOptions) -> _Processed:
    lowered = lower_partition(program, options)
    if options.neutron_converter_flavor is None:
        payload = EmulationPayload(inputs=lowered.inputs, outputs=lowered.outputs, tflite=lowered.tflite,
                                   target=options.target.name)
        return _Processed(lowered, payload.to_bytes(), None)
    deployable, converted = _convert(lowered, options)
    return _Processed(lowered, deployable, converted)


def process_partition(program: Any, options: NeutronCompileOptions, *, trial: bool = False) -> bytes:
    """The delegate payload of one partition's program: Neutron IR -> converter (when a flavor is set) -> payload.

    `program` is the partition's ExportedProgram (or a stand-alone view of a partition with the same interface,
    see neutron_backend.fallback). A `trial` run, the partitioner checking that a partition converts, keeps its
    result for the preprocess that follows and writes no intermediates. Raises whatever lowering or conversion
    raises.
    """
    fingerprint = program_fingerprint(program)
    key = None if fingerprint is None else (fingerprint, options)
    processed = _processed.pop(key, None) if key is not None else None
    if processed is None:
        processed = _process(program, options)
    if trial:
        if key is not None:
            _remember(_processed, key, processed)
        return processed.payload
    _write_intermediate(options, processed.lowered, ".tflite", processed.lowered.tflite)
    if processed.converted is None:
        _warn_emulation_once()
    else:
        _write_intermediate(options, processed.lowered, ".converted.tflite", processed.converted)
    return processed.payload


class NeutronBackend(BackendDetails):
    """Lowers one partition: Neutron IR -> converter (when a flavor is given) -> payload."""

    @staticmethod
    def preprocess(edge_program: ExportedProgram, compile_specs: list[CompileSpec]) -> PreprocessResult:
        return PreprocessResult(processed_bytes=process_partition(edge_program, parse_compile_spec(compile_specs)))
