"""TEST DOUBLE of an eIQ Neutron converter that hangs: ``convertModel`` sleeps far longer than any test waits.

It stands in for NXP's proprietary converter (not installable here) to test the conversion timeout.
"""

from __future__ import annotations

import time

from fake_neutron_common import CompilationContext, getNeutronTarget

__all__ = ["CompilationContext", "convertModel", "getNeutronTarget"]


def convertModel(model: list[int], cctx: CompilationContext) -> list[int]:  # noqa: N802 - NXP's API name
    """Never returns in time: logs, then sleeps for an hour."""
    print("fake neutron-converter: optimizing forever", flush=True)
    time.sleep(3600)
    return model
