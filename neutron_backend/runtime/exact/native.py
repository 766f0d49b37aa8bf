"""The exact engine's compiled kernels (``native_kernels.cpp``), built once with the C++ compiler the host runtime
already needs, and their ctypes signatures.

Built for the host's own CPU (``-march=native``): the cache key holds the CPU's feature flags, so a cache shared
between machines never hands one a library built for another.
"""

from __future__ import annotations

import ctypes
import functools
import platform
from pathlib import Path

import numpy as np

from neutron_backend.runtime._build import build_library

SOURCE = Path(__file__).with_name("native_kernels.cpp")
FLAGS = ("-std=c++17", "-O3", "-shared", "-fPIC", "-fno-exceptions")

_PTR = ctypes.c_void_p  # any array's data (native.pointer)
_I32 = ctypes.c_int32
_SIGNATURES = {
    "nb_requantize": (None, [_PTR, ctypes.c_int64, _I32, _PTR, _PTR, _PTR, _I32, _I32, _I32, _I32, _PTR]),
    "nb_has_gemm": (_I32, []),
    "nb_binary_table": (None, [_PTR, _PTR, ctypes.c_int64, _PTR, _PTR]),
    "nb_gemm_constants_bytes": (ctypes.c_int64, [_I32]),
    "nb_gemm_prepare": (None, [_PTR, _PTR, _PTR, _I32, _PTR]),
    "nb_gemm_requantize": (_I32, [_PTR, ctypes.c_int64, _I32, ctypes.c_int64, _PTR, _I32, _PTR, _PTR,
                                  _PTR, _PTR, _I32, _I32, _I32, _I32, _PTR]),
    "nb_depthwise_pack": (None, [_PTR, _I32, _I32, _PTR]),
    "nb_depthwise_conv": (_I32, [_PTR, _I32, _I32, _I32, _I32, _PTR, _PTR, _I32, _I32, _I32, _I32, _I32, _I32,
                                 _I32, _I32, _I32, _PTR, _PTR, _PTR, _I32, _I32, _I32, _PTR]),
    "nb_pad_hw": (None, [_PTR, _I32, _I32, _I32, _I32, _I32, _I32, _I32, _I32, _I32, _PTR]),
    "nb_transpose_2d": (None, [_PTR, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, _PTR]),
    "nb_im2col": (None, [_PTR, _I32, _I32, _I32, _I32, _I32, _I32, _I32, _I32, _I32, _I32, _I32, _I32, _PTR]),
}


def _cpu_identity() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


@functools.cache
def library(march: str = "native") -> ctypes.CDLL:
    """Returns the loaded kernel library built for ``-march=march``, compiling it on first use (about a second).
    The engine uses the host's own; tests also build a baseline one to exercise the portable loops. Raises
    RuntimeError with the compiler's message when it cannot be built."""

    def command(compiler: str, output: Path) -> list[str]:
        return [compiler, *FLAGS, f"-march={march}", str(SOURCE), "-o", str(output)]

    path = build_library(f"exact_kernels_{march}", "the exact engine's native kernels", SOURCE, command,
                         (platform.machine(), _cpu_identity()))
    lib = ctypes.CDLL(str(path))
    for name, (restype, argtypes) in _SIGNATURES.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


def pointer(array: np.ndarray) -> int:
    """The address of a C-contiguous array's data (the caller keeps the array alive during the call)."""
    if not array.flags.c_contiguous:
        raise ValueError("native kernels take C-contiguous arrays")
    return array.__array_interface__["data"][0]
