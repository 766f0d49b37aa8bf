"""Host execution of ``.pte`` files with Neutron delegates.

- :func:`register` puts a host ``NeutronBackend`` into this process's ExecuTorch runtime: a small C++
  shim (built once, cached) forwarding to Python, which runs each delegate's emulation payload with LiteRT's
  reference kernels. After it, ExecuTorch's own APIs run such ``.pte`` files unchanged.
- :func:`load_pte` returns a callable :class:`Program` over ``executorch.runtime.Runtime``.
- :func:`emulate` runs a lowered program in pure Python, a second oracle for the shim path.
- :func:`execute_payload` runs one emulation payload; both paths above use it.
"""

from neutron_backend.runtime._host import register
from neutron_backend.runtime.emulator import emulate
from neutron_backend.runtime.execute import PreparedPayload, execute_payload
from neutron_backend.runtime.program import NeutronRuntimeError, Program, load_pte

__all__ = [
    "NeutronRuntimeError",
    "PreparedPayload",
    "Program",
    "emulate",
    "execute_payload",
    "load_pte",
    "register",
]
