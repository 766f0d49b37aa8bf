"""TEST DOUBLE of ``eiq_neutron_sdk.neutron_converter`` (eIQ Neutron SDK 3.1.2), standing in for NXP's proprietary
converter.

Same behaviour as the ``neutron_converter_SDK_25_06`` double, but it converts with payload version 0 (a
NeutronGraph with a scratch output only, no profile/debug outputs), and its compilation options have no
``useProfiling`` (added in SDK 3.2.1). It produces no real microcode.
"""

from __future__ import annotations

import fake_neutron_common
from fake_neutron_common import OPTIONS_BEFORE_PROFILING, convert, getNeutronTarget

__all__ = ["CompilationContext", "convertModel", "getNeutronTarget"]

CompilationContext = fake_neutron_common.CompilationContext.for_options(OPTIONS_BEFORE_PROFILING)


def convertModel(model: list[int], cctx: fake_neutron_common.CompilationContext) -> list[int]:  # noqa: N802
    """Returns the "converted" model (one NeutronGraph op, payload version 0) as a list of byte values."""
    return convert(model, cctx, payload_version=0, reverse_inputs=False)
