"""NeutronBackend: the exir BackendDetails whose id matches NXP's device runtime ("NeutronBackend")."""

from __future__ import annotations

import logging

from executorch.exir.backend.backend_details import BackendDetails, PreprocessResult
from executorch.exir.backend.compile_spec_schema import CompileSpec
from torch.export import ExportedProgram

from neutron_backend.compile_spec import NeutronCompileOptions, parse_compile_spec
from neutron_backend.lowering import LoweredPartition, lower_partition
from neutron_backend.payload import EmulationPayload

logger = logging.getLogger(__name__)

_warned_emulation = False


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


class NeutronBackend(BackendDetails):
    """Lowers one partition: Neutron IR -> converter (when a flavor is given) -> payload."""

    @staticmethod
    def preprocess(edge_program: ExportedProgram, compile_specs: list[CompileSpec]) -> PreprocessResult:
        options = parse_compile_spec(compile_specs)
        lowered = lower_partition(edge_program, options)
        _write_intermediate(options, lowered, ".tflite", lowered.tflite)
        if options.neutron_converter_flavor is None:
            _warn_emulation_once()
            payload = EmulationPayload(inputs=lowered.inputs, outputs=lowered.outputs, tflite=lowered.tflite,
                                       target=options.target.name)
            return PreprocessResult(processed_bytes=payload.to_bytes())
        from neutron_backend.converter import convert_partition

        deployable, converted = convert_partition(lowered, options)
        _write_intermediate(options, lowered, ".converted.tflite", converted)
        return PreprocessResult(processed_bytes=deployable.to_bytes())
