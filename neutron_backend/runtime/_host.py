"""The Python side of the host shim: ctypes callbacks, the per-handle payload registry and registration."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from neutron_backend.payload import DeployablePayload, PayloadError, read_payload
from neutron_backend.runtime.execute import DEFAULT_KERNELS, KERNEL_CHOICES, PreparedPayload

logger = logging.getLogger(__name__)

# ExecuTorch ScalarType codes (runtime/core/portable_type/scalar_type.h) the emulation can meet.
SCALAR_TYPES: dict[int, np.dtype] = {
    0: np.dtype(np.uint8),
    1: np.dtype(np.int8),
    2: np.dtype(np.int16),
    3: np.dtype(np.int32),
    4: np.dtype(np.int64),
    5: np.dtype(np.float16),
    6: np.dtype(np.float32),
    7: np.dtype(np.float64),
    11: np.dtype(np.bool_),
}

# Error codes returned to the shim; any non-zero value makes ExecuTorch fail the call cleanly.
INIT_BAD_PAYLOAD = -1
INIT_DEPLOYABLE = -2
INIT_UNEXPECTED = -3
EXECUTE_FAILED = 1

DEPLOYABLE_EXPLANATION = (
    "this delegate holds a deployable Neutron payload (NXP microcode), which only runs on Neutron hardware "
    "with NXP's device runtime; recompile without a neutron_converter_flavor to get an emulation payload "
    "that runs on the host"
)

_InitFn = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_uint64)
_ExecuteFn = ctypes.CFUNCTYPE(
    ctypes.c_int32,
    ctypes.c_int64,
    ctypes.c_int32,
    ctypes.POINTER(ctypes.c_void_p),
    ctypes.POINTER(ctypes.c_int32),
    ctypes.POINTER(ctypes.c_int32),
    ctypes.POINTER(ctypes.c_int64),
    ctypes.POINTER(ctypes.c_int64),
    ctypes.POINTER(ctypes.c_int64),
)
_DestroyFn = ctypes.CFUNCTYPE(None, ctypes.c_int64)

_handles: dict[int, PreparedPayload] = {}
_handle_ids = itertools.count(1)
_errors = threading.local()
# The engine a delegate prepared in this thread gets: set around a method load by `loading_with`, else the default.
_loading = threading.local()


@contextlib.contextmanager
def loading_with(kernels: str) -> Iterator[None]:
    """Within the block, delegates initialized in this thread (ExecuTorch calls init while loading a method) run
    with the ``kernels`` engine. Raises ValueError for an unknown engine name."""
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels={kernels!r} is not an engine; valid: {', '.join(KERNEL_CHOICES)}")
    previous = getattr(_loading, "kernels", None)
    _loading.kernels = kernels
    try:
        yield
    finally:
        _loading.kernels = previous
_register_lock = threading.Lock()
_library: ctypes.CDLL | None = None


def clear_last_error() -> None:
    """Forgets the last callback error of this thread."""
    _errors.message = None


def last_error() -> str | None:
    """Returns the message of the last error a shim callback hit in this thread, or None."""
    return getattr(_errors, "message", None)


def _fail(message: str, exc: BaseException | None = None) -> None:
    """Logs a callback failure and keeps its message for the Python caller's exception."""
    _errors.message = message
    logger.error("NeutronBackend (host): %s", message, exc_info=exc)


def prepare_handle(data: bytes) -> int:
    """Reads and prepares one delegate payload.

    Returns its handle (> 0), or a negative error code after logging why the payload cannot run here.
    """
    try:
        payload = read_payload(data)
        if isinstance(payload, DeployablePayload):
            _fail(DEPLOYABLE_EXPLANATION)
            return INIT_DEPLOYABLE
        prepared = PreparedPayload(payload, getattr(_loading, "kernels", None) or DEFAULT_KERNELS)
    except NotImplementedError as exc:
        _fail(f"the exact engine cannot run this delegate: {exc}")
        return INIT_BAD_PAYLOAD
    except PayloadError as exc:
        _fail(f"invalid delegate payload ({len(data)} bytes): {exc}")
        return INIT_BAD_PAYLOAD
    except Exception as exc:  # a callback must never let an exception reach ctypes
        _fail(f"unexpected error preparing a delegate payload: {exc!r}", exc)
        return INIT_UNEXPECTED
    handle = next(_handle_ids)
    _handles[handle] = prepared
    return handle


class _CArray(Protocol):
    """A ctypes pointer as the callbacks receive it: indexable, without a length."""

    def __getitem__(self, index: int) -> Any: ...


def _tensor_view(
    pointer: int | None, dtype: np.dtype, sizes: list[int], dim_order: list[int], nbytes: int
) -> np.ndarray:
    """Returns a writable numpy view of an ExecuTorch tensor in its logical (dim 0, 1, ...) order.

    Raises ValueError when the shape does not account for exactly ``nbytes`` bytes or the data pointer is
    null, rather than reading or writing memory the tensor does not own.
    """
    physical_shape = [sizes[d] for d in dim_order]
    size = int(np.prod(physical_shape, dtype=np.int64)) * dtype.itemsize
    if size != nbytes:
        raise ValueError(f"tensor of {dtype.name}{sizes} should hold {size} bytes, ExecuTorch reports {nbytes}")
    if size == 0:
        return np.empty(sizes, dtype=dtype)
    if not pointer:
        raise ValueError(f"tensor of {dtype.name}{sizes} has no data")
    physical = np.frombuffer((ctypes.c_byte * size).from_address(pointer), dtype=dtype).reshape(physical_shape)
    # The memory is laid out in dim order; transposing by its inverse gives the logical view without a copy.
    return physical.transpose(np.argsort(dim_order))


def _execute(
    handle: int,
    nargs: int,
    data: _CArray,
    scalar_types: _CArray,
    ndims: _CArray,
    sizes: _CArray,
    dim_orders: _CArray,
    nbytes: _CArray,
) -> int:
    """The execute callback: reads the delegate's inputs, runs the payload, writes the pre-allocated outputs.

    Returns 0 on success, EXECUTE_FAILED after logging the reason.
    """
    try:
        prepared = _handles.get(handle)
        if prepared is None:
            raise ValueError(f"unknown delegate handle {handle}")
        num_inputs = nargs - prepared.num_outputs
        if num_inputs < 0:
            raise ValueError(f"the delegate got {nargs} arguments, its payload has {prepared.num_outputs} outputs")
        views: list[np.ndarray] = []
        offset = 0
        for i in range(nargs):
            code, ndim = scalar_types[i], ndims[i]
            if code not in SCALAR_TYPES:
                raise ValueError(f"delegate argument {i} is not a tensor of a supported dtype (ScalarType {code})")
            tensor_sizes = [sizes[offset + d] for d in range(ndim)]
            order = [dim_orders[offset + d] for d in range(ndim)]
            offset += ndim
            views.append(_tensor_view(data[i], SCALAR_TYPES[code], tensor_sizes, order, nbytes[i]))
        results = prepared.run(views[:num_inputs])
        for index, (result, out) in enumerate(zip(results, views[num_inputs:], strict=True)):
            if result.shape != out.shape or result.dtype != out.dtype:
                raise ValueError(
                    f"delegate output {index}: ExecuTorch allocated {out.dtype.name}{list(out.shape)}, the "
                    f"payload produced {result.dtype.name}{list(result.shape)}"
                )
            out[...] = result
        return 0
    except ValueError as exc:  # the payload does not match the program: the message says it all
        _fail(f"emulating delegate {handle} failed: {exc}")
        return EXECUTE_FAILED
    except Exception as exc:  # a callback must never let an exception reach ctypes
        _fail(f"emulating delegate {handle} failed: {exc!r}", exc)
        return EXECUTE_FAILED


def _init(data: int | None, nbytes: int) -> int:
    """The init callback: copies the processed bytes and prepares them. Returns a handle or an error code."""
    try:
        return prepare_handle(ctypes.string_at(data, nbytes) if nbytes else b"")
    except Exception as exc:  # a callback must never let an exception reach ctypes
        _fail(f"unexpected error reading a delegate payload: {exc!r}", exc)
        return INIT_UNEXPECTED


def _destroy(handle: int) -> None:
    """The destroy callback: forgets the handle's interpreter."""
    _handles.pop(handle, None)


# Module-level references keep the ctypes thunks alive for as long as the shim may call them.
_INIT_CALLBACK = _InitFn(_init)
_EXECUTE_CALLBACK = _ExecuteFn(_execute)
_DESTROY_CALLBACK = _DestroyFn(_destroy)

_ERROR_NAMES = {0x12: "InvalidArgument", 0x16: "RegistrationAlreadyRegistered"}


def register() -> None:
    """Registers the host ``NeutronBackend`` in this process's ExecuTorch runtime (idempotent).

    Builds the shim on first use. Raises RuntimeError when the shim cannot be built or when another library
    already registered a backend named ``NeutronBackend``.
    """
    global _library
    with _register_lock:
        if _library is not None:
            return
        from neutron_backend.runtime._build import load_shim

        library = load_shim()
        library.neutron_shim_set_callbacks.argtypes = [_InitFn, _ExecuteFn, _DestroyFn]
        library.neutron_shim_set_callbacks.restype = None
        library.neutron_shim_register.argtypes = []
        library.neutron_shim_register.restype = ctypes.c_int32
        library.neutron_shim_set_callbacks(_INIT_CALLBACK, _EXECUTE_CALLBACK, _DESTROY_CALLBACK)
        code = library.neutron_shim_register()
        if code != 0:
            name = _ERROR_NAMES.get(code, f"0x{code:x}")
            raise RuntimeError(
                f"ExecuTorch refused to register the host NeutronBackend (Error::{name}): another "
                "library in this process (e.g. NXP's runtime) already registered a backend named "
                "'NeutronBackend'"
            )
        _library = library
        logger.debug("registered the host NeutronBackend")
