"""TEST DOUBLE of ``eiq_neutron_sdk.neutron_converter``, standing in for NXP's proprietary converter.

Same behaviour as the ``neutron_converter_SDK_25_06`` double, but it converts with payload version 0 (a
NeutronGraph with a scratch output only, no profile/debug outputs). It produces no real microcode.
"""

from __future__ import annotations

from fake_neutron_common import CompilationContext, convert, getNeutronTarget

__all__ = ["CompilationContext", "convertModel", "getNeutronTarget"]


def convertModel(model: list[int], cctx: CompilationContext) -> list[int]:  # noqa: N802 - NXP's API name
    """Returns the "converted" model (one NeutronGraph op, payload version 0) as a list of byte values."""
    return convert(model, cctx, payload_version=0, reverse_inputs=False)
