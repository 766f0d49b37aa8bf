"""TEST DOUBLE of an eIQ Neutron converter whose target lookup crashes: ``getNeutronTarget`` aborts the process.

It stands in for NXP's proprietary converter (not installable here) to test that the target lookup
(``neutron_backend.targets._from_sdk``) runs isolated and that a native crash there cannot take the process down.
"""

from __future__ import annotations

import os

from fake_neutron_common import CompilationContext, convert

__all__ = ["CompilationContext", "convertModel", "getNeutronTarget"]

CRASH_MESSAGE = "fake neutron-converter: FATAL: target table corrupt, aborting"


def getNeutronTarget(name: str) -> object:  # noqa: N802 - NXP's API name
    """Never returns: writes CRASH_MESSAGE to stderr and aborts (SIGABRT), as a failing native SDK does."""
    os.write(2, f"{CRASH_MESSAGE} (looking up {name!r})\n".encode())
    os.abort()


def convertModel(model: list[int], cctx: CompilationContext) -> list[int]:  # noqa: N802 - NXP's API name
    """Converts like the SDK_25_06 double (never reached: a context needs getNeutronTarget first)."""
    return convert(model, cctx)
