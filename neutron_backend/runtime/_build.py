"""Compile the host shim (``neutron_shim.cpp``) once; load it beside ExecuTorch's ``libexecutorch.so``."""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

SHIM_SOURCE = Path(__file__).with_name("neutron_shim.cpp")
CXX_FLAGS = (
    "-std=c++17",
    "-DC10_USING_CUSTOM_GENERATED_MACROS",
    "-DET_EVENT_TRACER_ENABLED",
    "-shared",
    "-fPIC",
    "-O2",
)


def executorch_root() -> Path:
    """Returns the executorch wheel's directory (a namespace package, so ``__path__``, not ``__file__``)."""
    import executorch

    return Path(list(executorch.__path__)[0])


def find_compiler() -> str:
    """Returns the path of the C++ compiler: ``$CXX``, else ``c++``, else ``g++``; RuntimeError if none."""
    for name in (os.environ.get("CXX"), "c++", "g++"):
        if name and (path := shutil.which(name)):
            return path
    raise RuntimeError(
        "no C++ compiler found (set CXX or install g++): the Neutron host runtime needs one "
        "to build its ExecuTorch backend shim"
    )


def _compiler_identity(compiler: str) -> str:
    """Returns the compiler's ``--version`` banner, so a compiler upgrade triggers a rebuild."""
    out = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False)
    return f"{compiler}\n{out.stdout}"


def cache_dir() -> Path:
    """Returns the directory holding built shims: ``$NEUTRON_BACKEND_CACHE``, else ``$XDG_CACHE_HOME`` or
    ``~/.cache``, under ``neutron_backend``."""
    if explicit := os.environ.get("NEUTRON_BACKEND_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "neutron_backend"


def compile_command(compiler: str, output: Path) -> list[str]:
    """Returns the compiler command line building the shim into ``output``."""
    et = executorch_root()
    # No rpath on purpose: the shim must bind to the libexecutorch.so the pybindings already loaded (matched
    # by soname), never to another copy found through a baked-in path.
    return [
        compiler,
        *CXX_FLAGS,
        f"-I{et / 'include'}",
        f"-I{et / 'include/executorch/runtime/core/portable_type/c10'}",
        str(SHIM_SOURCE),
        "-o",
        str(output),
        f"-L{et / 'lib'}",
        "-lexecutorch",
    ]


def build_library(name: str, description: str, source: Path, command: Callable[[str, Path], list[str]],
                  key: Sequence[str]) -> Path:
    """Returns the path of the shared library ``name`` (``description`` names it in errors) built from ``source``
    by ``command(compiler, output)``, compiling it
    unless a build for this source, compiler, command and ``key`` is cached. Raises RuntimeError carrying the
    compiler's stderr when compilation fails."""
    compiler = find_compiler()
    digest = hashlib.sha256()
    digest.update(source.read_bytes())
    digest.update(_compiler_identity(compiler).encode())
    digest.update(" ".join(command(compiler, Path("out.so"))).encode())
    for part in key:
        digest.update(part.encode())
    target = cache_dir() / f"{name}-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Parallel test processes would all compile the same file: the first one holding the lock builds, the others
    # wait and find the result. Building under a unique name and renaming (atomic) keeps the lock-free fast path
    # above from ever seeing a half-written library.
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            cmd = command(compiler, tmp)
            start = time.perf_counter()
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(
                    f"building {description} failed (exit {result.returncode}).\n"
                    f"command: {' '.join(cmd)}\n{result.stderr}"
                )
            os.replace(tmp, target)
            logger.info("built %s in %.1f s", target, time.perf_counter() - start)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def shim_path() -> Path:
    """Returns the path of the shim library, compiling it if no build for this source, executorch version and
    compiler is cached. Raises RuntimeError carrying the compiler's stderr when compilation fails."""
    return build_library("neutron_shim", "the Neutron host runtime shim", SHIM_SOURCE, compile_command,
                         (metadata.version("executorch"), str(executorch_root())))


def load_shim() -> ctypes.CDLL:
    """Returns the loaded shim library, after importing ExecuTorch's runtime and quantized kernels so that the
    shim's ``libexecutorch.so`` dependency resolves (by soname) to the copy the pybindings already use."""
    import executorch.kernels.quantized  # noqa: F401  (registers the quantize/dequantize out-variants)
    import executorch.runtime  # noqa: F401  (loads the pybindings and, with them, libexecutorch.so)

    return ctypes.CDLL(str(shim_path()))
