"""Run one emulation payload: the code shared by the ExecuTorch shim callbacks and the pure-Python emulator.

Both paths go through :func:`execute_payload` (or a :class:`PreparedPayload` reused across calls), so the shim
and the emulator cannot drift apart: same layout conversions, same LiteRT reference kernels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from neutron_backend.payload import EmulationPayload, PayloadError, TensorSpec


def to_tflite_layout(array: np.ndarray, channels_last: bool) -> np.ndarray:
    """Returns ``array`` (ExecuTorch's channels-first ``(N, C, *spatial)``) as TFLite expects it: moved to
    ``(N, *spatial, C)`` when ``channels_last``, unchanged otherwise."""
    return np.moveaxis(array, 1, -1) if channels_last and array.ndim > 2 else array


def from_tflite_layout(array: np.ndarray, channels_last: bool) -> np.ndarray:
    """Returns a TFLite ``(N, *spatial, C)`` result moved back to ExecuTorch's ``(N, C, *spatial)`` when
    ``channels_last``, unchanged otherwise."""
    return np.moveaxis(array, -1, 1) if channels_last and array.ndim > 2 else array


def tflite_shape(spec: TensorSpec) -> tuple[int, ...]:
    """Returns the shape the TFLite model sees for a delegate tensor described by ``spec``."""
    shape = spec.shape
    return (shape[0], *shape[2:], shape[1]) if spec.channels_last and len(shape) > 2 else shape


class PreparedPayload:
    """An emulation payload with its LiteRT interpreter built once (reference kernels, never XNNPACK).

    TFLite input ``i`` is described by ``payload.inputs[i]``, TFLite output ``j`` by ``payload.outputs[j]``.
    """

    def __init__(self, payload: EmulationPayload) -> None:
        self.payload = payload
        try:
            self._interpreter = Interpreter(
                model_content=bytes(payload.tflite), experimental_op_resolver_type=OpResolverType.BUILTIN_REF
            )
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise PayloadError(f"the payload's TFLite model cannot be loaded by LiteRT: {exc}") from exc
        self._inputs = self._interpreter.get_input_details()
        self._outputs = self._interpreter.get_output_details()
        for kind, specs, details in (
            ("input", payload.inputs, self._inputs),
            ("output", payload.outputs, self._outputs),
        ):
            if len(specs) != len(details):
                raise PayloadError(
                    f"the payload describes {len(specs)} {kind}s but its TFLite model has {len(details)}"
                )
            # Checked once here, so run() only has to validate what the caller passes in.
            for position, (spec, detail) in enumerate(zip(specs, details, strict=True)):
                got = (np.dtype(detail["dtype"]).name, tuple(int(d) for d in detail["shape"]))
                if got != (spec.dtype, tflite_shape(spec)):
                    raise PayloadError(
                        f"TFLite {kind} {position} is {got[0]}{list(got[1])}, the payload "
                        f"describes {spec.dtype}{list(tflite_shape(spec))} in TFLite layout"
                    )
        indices = sorted(spec.arg_index for spec in payload.outputs)
        if indices != list(range(len(indices))):
            raise PayloadError(f"output arg_index values {indices} are not a permutation of 0..{len(indices) - 1}")

    @property
    def num_outputs(self) -> int:
        """Returns the number of delegate outputs."""
        return len(self.payload.outputs)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Runs the payload once.

        ``inputs`` are the delegate's input arguments in ExecuTorch's logical layout (channels first); TFLite
        input ``i`` takes ``inputs[payload.inputs[i].arg_index]``.

        Returns the delegate outputs, in delegate output order, in ExecuTorch's logical layout.
        Raises ValueError when an input is missing or its dtype or shape does not match the payload.
        """
        for spec, detail in zip(self.payload.inputs, self._inputs, strict=True):
            if not 0 <= spec.arg_index < len(inputs):
                raise ValueError(
                    f"the payload reads delegate input {spec.arg_index}, but the delegate got {len(inputs)} inputs"
                )
            array = np.asarray(inputs[spec.arg_index])
            if array.dtype != np.dtype(spec.dtype) or array.shape != spec.shape:
                raise ValueError(
                    f"delegate input {spec.arg_index}: expected {spec.dtype}{list(spec.shape)}, "
                    f"got {array.dtype.name}{list(array.shape)}"
                )
            self._interpreter.set_tensor(
                detail["index"], np.ascontiguousarray(to_tflite_layout(array, spec.channels_last))
            )
        self._interpreter.invoke()
        outputs: list[np.ndarray] = [np.empty(0)] * self.num_outputs
        for spec, detail in zip(self.payload.outputs, self._outputs, strict=True):
            result = self._interpreter.get_tensor(detail["index"])
            outputs[spec.arg_index] = from_tflite_layout(result, spec.channels_last)
        return outputs


def execute_payload(payload: EmulationPayload | PreparedPayload, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Runs an emulation payload on the delegate's ``inputs`` (ExecuTorch logical layout, delegate input
    order). A :class:`PreparedPayload` reuses its interpreter; an :class:`EmulationPayload` is prepared for
    this call.

    Returns the delegate outputs in delegate output order and ExecuTorch logical layout.
    Raises PayloadError when the payload cannot be run, ValueError when the inputs do not match it.
    """
    prepared = payload if isinstance(payload, PreparedPayload) else PreparedPayload(payload)
    return prepared.run(inputs)
