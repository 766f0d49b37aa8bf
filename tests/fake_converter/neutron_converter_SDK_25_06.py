"""TEST DOUBLE standing in for NXP's proprietary eIQ Neutron converter module ``neutron_converter_SDK_25_06``.

NXP's converter cannot be installed here. This module implements only its Python API (``getNeutronTarget``,
``CompilationContext``, ``convertModel``) and returns a model shaped like the real output: one CUSTOM NeutronGraph
op with microcode, weights and kernels buffers. It produces NO real microcode; see ``fake_neutron_common``.
"""

from __future__ import annotations

from fake_neutron_common import CompilationContext, convert, getNeutronTarget

__all__ = ["CompilationContext", "convertModel", "getNeutronTarget"]


def convertModel(model: list[int], cctx: CompilationContext) -> list[int]:  # noqa: N802 - NXP's API name
    """Returns the "converted" model (one NeutronGraph op) as a list of byte values."""
    return convert(model, cctx)
