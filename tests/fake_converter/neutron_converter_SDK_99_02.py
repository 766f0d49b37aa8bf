"""TEST DOUBLE of an eIQ Neutron converter that converts only part of a partition.

It stands in for NXP's proprietary converter (not installable here): ``convertModel`` returns a NeutronGraph op
followed by a MAX_POOL_2D it "could not convert", as an older converter does with an operator it does not know.
It produces no real microcode.
"""

from __future__ import annotations

from fake_neutron_common import CompilationContext, convert, getNeutronTarget

__all__ = ["CompilationContext", "convertModel", "getNeutronTarget"]


def convertModel(model: list[int], cctx: CompilationContext) -> list[int]:  # noqa: N802 - NXP's API name
    """Returns a two-operator model (NeutronGraph + MAX_POOL_2D) as a list of byte values."""
    return convert(model, cctx, leftover_op="MAX_POOL_2D")
