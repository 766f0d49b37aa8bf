"""Host execution of ``.pte`` files with Neutron delegates.

Two engines run a delegate's Neutron IR: ``kernels="exact"`` (the default), our own vectorized, batched int8
kernels (:mod:`neutron_backend.runtime.exact`), bit-identical to LiteRT's reference kernels; and
``kernels="reference"``, LiteRT's ``BUILTIN_REF`` kernels, the cross-check.

- :func:`register` puts a host ``NeutronBackend`` into this process's ExecuTorch runtime: a small C++
  shim (built once, cached) forwarding to Python, which runs each delegate's emulation payload with the engine
  chosen at registration. After it, ExecuTorch's own APIs run such ``.pte`` files unchanged.
- :func:`load_pte` returns a callable :class:`Program` over ``executorch.runtime.Runtime``.
- :func:`emulate` runs a lowered program in pure Python, with either engine: run it with the engine the shim
  does not use and the two paths are independent oracles.
- :func:`execute_payload` / :class:`PreparedPayload` run one emulation payload, also on a batch.
- :func:`cross_check` compares the two engines on every delegate of a lowered program.
"""

from neutron_backend.runtime._host import register
from neutron_backend.runtime.cross_check import CrossCheckReport, cross_check
from neutron_backend.runtime.emulator import emulate
from neutron_backend.runtime.execute import KERNEL_CHOICES, PreparedPayload, execute_payload
from neutron_backend.runtime.program import NeutronRuntimeError, Program, load_pte

__all__ = [
    "KERNEL_CHOICES",
    "CrossCheckReport",
    "NeutronRuntimeError",
    "PreparedPayload",
    "Program",
    "cross_check",
    "emulate",
    "execute_payload",
    "load_pte",
    "register",
]
