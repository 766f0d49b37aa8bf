"""NeutronBackend: the exir BackendDetails whose id matches NXP's device runtime ("NeutronBackend")."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Any

from executorch.exir.backend.backend_details import BackendDetails, PreprocessResult
from executorch.exir.backend.compile_spec_schema import CompileSpec
from torch.export import ExportedProgram

from neutron_backend.compile_spec import NeutronCompileOptions, parse_compile_spec
from neutron_backend.lowering import LoweredPartition, lower_partition
from neutron_backend.payload import EmulationPayload

logger = logging.getLogger(__name__)

_warned_emulation = False

# Converter results by (sha256 of the Neutron IR, options): the partitioner's trial conversion and preprocess
# convert the same IR, and NXP's converter is the slow step. A few entries suffice: preprocess follows the trial.
_CONVERTED_CACHE_SIZE = 16
_converted: OrderedDict[tuple[str, NeutronCompileOptions], tuple[bytes, bytes]] = OrderedDict()


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


def _convert(lowered: LoweredPartition, options: NeutronCompileOptions) -> tuple[bytes, bytes]:
    """(deployable payload bytes, converted model) for `lowered`, from the cache when this IR was converted."""
    key = (hashlib.sha256(lowered.tflite).hexdigest(), options)
    if key in _converted:
        _converted.move_to_end(key)
        return _converted[key]
    from neutron_backend.converter import convert_partition

    deployable, converted = convert_partition(lowered, options)
    _converted[key] = (deployable.to_bytes(), converted)
    while len(_converted) > _CONVERTED_CACHE_SIZE:
        _converted.popitem(last=False)
    return _converted[key]


def process_partition(program: Any, options: NeutronCompileOptions, *, trial: bool = False) -> bytes:
    """The delegate payload of one partition's program: Neutron IR -> converter (when a flavor is set) -> payload.

    `program` is the partition's ExportedProgram (or a stand-alone view of a partition with the same interface,
    see neutron_backend.fallback). A `trial` run, the partitioner checking that a partition converts, writes no
    intermediates and gives no warnings. Raises whatever lowering or conversion raises.
    """
    lowered = lower_partition(program, options)
    if not trial:
        _write_intermediate(options, lowered, ".tflite", lowered.tflite)
    if options.neutron_converter_flavor is None:
        if not trial:
            _warn_emulation_once()
        payload = EmulationPayload(inputs=lowered.inputs, outputs=lowered.outputs, tflite=lowered.tflite,
                                   target=options.target.name)
        return payload.to_bytes()
    deployable, converted = _convert(lowered, options)
    if not trial:
        _write_intermediate(options, lowered, ".converted.tflite", converted)
    return deployable


class NeutronBackend(BackendDetails):
    """Lowers one partition: Neutron IR -> converter (when a flavor is given) -> payload."""

    @staticmethod
    def preprocess(edge_program: ExportedProgram, compile_specs: list[CompileSpec]) -> PreprocessResult:
        return PreprocessResult(processed_bytes=process_partition(edge_program, parse_compile_spec(compile_specs)))
