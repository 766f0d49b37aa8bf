"""NeutronBackend: the exir BackendDetails whose id matches NXP's device runtime ("NeutronBackend")."""

from __future__ import annotations

from executorch.exir.backend.backend_details import BackendDetails, PreprocessResult
from executorch.exir.backend.compile_spec_schema import CompileSpec
from torch.export import ExportedProgram


class NeutronBackend(BackendDetails):
    """Lowers one partition: Neutron IR -> converter (when installed) -> payload."""

    @staticmethod
    def preprocess(edge_program: ExportedProgram, compile_specs: list[CompileSpec]) -> PreprocessResult:
        raise NotImplementedError("Neutron lowering is not implemented yet")
