"""TEST DOUBLE of an eIQ Neutron converter that crashes: ``convertModel`` prints a log and aborts the process.

It stands in for NXP's proprietary converter (not installable here) to test that a native crash is isolated and
its log surfaces in the error. It produces no microcode.
"""

from __future__ import annotations

import os

from fake_neutron_common import CompilationContext, getNeutronTarget

__all__ = ["CompilationContext", "convertModel", "getNeutronTarget"]

CRASH_MESSAGE = "fake neutron-converter: FATAL: unsupported tensor layout in subgraph_000, aborting"


def convertModel(model: list[int], cctx: CompilationContext) -> list[int]:  # noqa: N802 - NXP's API name
    """Never returns: writes CRASH_MESSAGE to stderr and aborts (SIGABRT), as a failing native converter does."""
    os.write(2, f"fake neutron-converter: importing {len(model)} bytes\n{CRASH_MESSAGE}\n".encode())
    os.abort()
