"""TEST DOUBLE of ``eiq_neutron_sdk.neutron_compiler`` (eIQ Neutron SDK 3.2.2), standing in for NXP's proprietary
Neutron compiler: ``getNeutronTarget``, ``CompilationContext`` (with ``useProfiling`` and ``dumpMicrocode``) and
``compileModel``; there is no ``convertModel``. It returns a payload-version-1 NeutronGraph (profile, debug and
scratch outputs) and produces no real microcode.
"""

from __future__ import annotations

import fake_neutron_common
from fake_neutron_common import COMPILER_OPTIONS, convert, getNeutronTarget

__all__ = ["CompilationContext", "compileModel", "getNeutronTarget"]

CompilationContext = fake_neutron_common.CompilationContext.for_options(COMPILER_OPTIONS)


def compileModel(model: list[int], cctx: fake_neutron_common.CompilationContext) -> list[int]:  # noqa: N802
    """Returns the "compiled" model (one NeutronGraph op) as a list of byte values."""
    return convert(model, cctx, entry="compileModel")
