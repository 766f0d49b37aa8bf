"""``load_pte``: run a ``.pte`` through ExecuTorch's runtime with Neutron partitions emulated on the host."""

from __future__ import annotations

import errno
import functools
import os
import re
from typing import Any

import torch

from neutron_backend.runtime import _host
from neutron_backend.runtime.execute import DEFAULT_KERNELS

# ExecuTorch ScalarType codes (as MethodMeta reports them) -> torch dtypes.
_TORCH_DTYPES: dict[int, torch.dtype] = {
    0: torch.uint8,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.int64,
    5: torch.float16,
    6: torch.float32,
    7: torch.float64,
    11: torch.bool,
    15: torch.bfloat16,
}


class NeutronRuntimeError(RuntimeError):
    """ExecuTorch failed to load or run a method; the message includes the Neutron emulation's reason."""


def _with_reason(action: str, exc: Exception) -> NeutronRuntimeError:
    """Returns an error for a failed ExecuTorch call, carrying the last shim callback error if any."""
    reason = _host.last_error()
    detail = f"{exc}; NeutronBackend: {reason}" if reason else str(exc)
    return NeutronRuntimeError(f"{action} failed: {detail}")


class Program:
    """One method of a loaded ``.pte``, callable as ``program(*inputs) -> tuple[torch.Tensor, ...]``; its Neutron
    delegates run with the ``kernels`` engine (``"exact"``, ours, the default; ``"reference"``, LiteRT's)."""

    def __init__(self, path: str | os.PathLike[str], method_name: str = "forward",
                 kernels: str = DEFAULT_KERNELS) -> None:
        _host.register()
        from executorch.runtime import Runtime

        self.path = os.fspath(path)
        self.method_name = method_name
        self.kernels = kernels
        if not os.path.isfile(self.path):
            raise FileNotFoundError(errno.ENOENT, "no such .pte file", self.path)
        try:
            self._program = Runtime.get().load_program(self.path)
        except RuntimeError as exc:
            raise NeutronRuntimeError(
                f"{self.path} ({os.path.getsize(self.path)} bytes) is not a loadable ExecuTorch program (truncated, "
                f"corrupted or not a .pte): {exc}") from exc
        if method_name not in self._program.method_names:
            raise ValueError(f"{self.path} has no method {method_name!r}; it has {sorted(self._program.method_names)}")
        _host.clear_last_error()
        try:
            with _host.loading_with(kernels):
                self._method = self._program.load_method(method_name)
        except RuntimeError as exc:
            raise _with_reason(f"loading method {method_name!r} of {self.path}", exc) from exc
        meta = self._method.metadata
        self.input_specs: tuple[tuple[tuple[int, ...], torch.dtype | int], ...] = tuple(
            (tuple(info.sizes()), _TORCH_DTYPES.get(info.dtype(), info.dtype()))
            for info in (meta.input_tensor_meta(i) for i in range(meta.num_inputs()))
        )

    @functools.cached_property
    def int8_io(self) -> Any:
        """The qparams of the program's int8 inputs and outputs (an `neutron_backend.int8_io.Int8IO`) when it was
        made with int8 I/O (`compile_model(..., int8_io=True)`, `neutron compile --int8-io`), else None. Read from
        the constant methods `input{i}_scale`, `input{i}_zp`, ... that `make_io_int8` stores in the .pte."""
        from neutron_backend.int8_io import Int8IO, TensorQuantization

        found: dict[str, dict[int, TensorQuantization]] = {"input": {}, "output": {}}
        for name in self._program.method_names:
            match = re.fullmatch(r"(input|output)(\d+)_scale", name)
            if match is None:
                continue
            kind, index = match.group(1), int(match.group(2))
            value = {field: self._constant(f"{kind}{index}_{field}")
                     for field in ("scale", "zp", "quant_min", "quant_max", "dtype")}
            found[kind][index] = TensorQuantization(float(value["scale"]), int(value["zp"]), int(value["quant_min"]),
                                                    int(value["quant_max"]), _TORCH_DTYPES[int(value["dtype"])])
        if not found["input"] and not found["output"]:
            return None
        return Int8IO(inputs=found["input"], outputs=found["output"])

    def _constant(self, method_name: str) -> Any:
        try:
            (value,) = self._program.load_method(method_name).execute([])
        except (RuntimeError, ValueError) as exc:
            raise NeutronRuntimeError(f"{self.path}: reading the int8 I/O constant {method_name!r} failed: "
                                      f"{exc}") from exc
        return value

    def _check_inputs(self, inputs: tuple[Any, ...]) -> None:
        """Raises ValueError (TypeError for a non-tensor) naming what the method expects and what it got."""
        if len(inputs) != len(self.input_specs):
            raise ValueError(f"{self.method_name} expects {len(self.input_specs)} inputs, got {len(inputs)}")
        for index, (value, (shape, dtype)) in enumerate(zip(inputs, self.input_specs, strict=True)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"input {index}: expected a torch.Tensor, got {type(value).__name__}")
            if tuple(value.shape) != shape:
                raise ValueError(f"input {index}: expected shape {list(shape)}, got {list(value.shape)}")
            if value.dtype != dtype:
                raise ValueError(f"input {index}: expected dtype {dtype}, got {value.dtype}")

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Runs the method once.

        Returns its outputs. Raises ValueError/TypeError for inputs not matching the method's metadata and
        NeutronRuntimeError when ExecuTorch (or the Neutron emulation inside it) fails.
        """
        self._check_inputs(inputs)
        _host.clear_last_error()
        try:
            outputs = self._method.execute([value.contiguous() for value in inputs])
        except RuntimeError as exc:
            raise _with_reason(f"running {self.method_name!r} of {self.path}", exc) from exc
        return tuple(outputs)


def load_pte(path: str | os.PathLike[str], method_name: str = "forward", kernels: str = DEFAULT_KERNELS
             ) -> Program:
    """Loads ``path`` with ExecuTorch's runtime after registering the host NeutronBackend.

    Returns a :class:`Program` running ``method_name``, its Neutron delegates on the ``kernels`` engine:
    ``"exact"`` (our int8 kernels, the default) or ``"reference"`` (LiteRT's reference kernels, the cross-check).
    Raises NeutronRuntimeError when the method cannot be loaded, e.g. because a delegate holds a deployable
    (hardware-only) or corrupted payload, ValueError for an unknown ``kernels``.
    """
    return Program(path, method_name, kernels)
