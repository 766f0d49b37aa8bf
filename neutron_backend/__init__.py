"""neutron-backend: an ExecuTorch backend delegating int8-quantized PyTorch models to the NXP eIQ Neutron NPU.

Public API (imported lazily, so `import neutron_backend` and `neutron --help` stay fast):
NeutronQuantizer, NeutronPartitioner, generate_neutron_compile_spec, NeutronCompileSpecBuilder,
CustomDelegationOptions, NeutronBackend, DelegationReport, NeutronTarget, get_target, list_targets.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "NeutronQuantizer": "neutron_backend.quantizer",
    "NeutronPartitioner": "neutron_backend.partitioner",
    "generate_neutron_compile_spec": "neutron_backend.compile_spec",
    "NeutronCompileSpecBuilder": "neutron_backend.compile_spec",
    "NeutronCompileOptions": "neutron_backend.compile_spec",
    "NeutronConfigError": "neutron_backend.compile_spec",
    "CustomDelegationOptions": "neutron_backend.delegation_options",
    "NeutronBackend": "neutron_backend.backend",
    "DelegationReport": "neutron_backend.report",
    "NeutronTarget": "neutron_backend.targets",
    "get_target": "neutron_backend.targets",
    "list_targets": "neutron_backend.targets",
}

__all__ = [
    "CustomDelegationOptions",
    "DelegationReport",
    "NeutronBackend",
    "NeutronCompileOptions",
    "NeutronCompileSpecBuilder",
    "NeutronConfigError",
    "NeutronPartitioner",
    "NeutronQuantizer",
    "NeutronTarget",
    "generate_neutron_compile_spec",
    "get_target",
    "list_targets",
]

if TYPE_CHECKING:
    from neutron_backend.backend import NeutronBackend
    from neutron_backend.compile_spec import (
        NeutronCompileOptions,
        NeutronCompileSpecBuilder,
        NeutronConfigError,
        generate_neutron_compile_spec,
    )
    from neutron_backend.delegation_options import CustomDelegationOptions
    from neutron_backend.partitioner import NeutronPartitioner
    from neutron_backend.quantizer import NeutronQuantizer
    from neutron_backend.report import DelegationReport
    from neutron_backend.targets import NeutronTarget, get_target, list_targets


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'neutron_backend' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
