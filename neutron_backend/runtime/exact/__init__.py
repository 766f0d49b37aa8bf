"""Our exact int8 emulator of the Neutron IR: bit-identical to LiteRT's reference (BUILTIN_REF) kernels.

:class:`ExactEngine` reads the IR flatbuffer, prepares one kernel per operator (``kernels.py``) and runs batches.
"""

from neutron_backend.runtime.exact.engine import ExactEngine
from neutron_backend.runtime.exact.kernels import KERNELS, UnsupportedOperator

__all__ = ["KERNELS", "ExactEngine", "UnsupportedOperator"]
