"""Run one emulation payload with a chosen engine: the code shared by the ExecuTorch shim callbacks and the
pure-Python emulator.

Two engines, written independently, run the payload's Neutron IR:

- ``"exact"`` (the default): our own int8 kernels (:mod:`neutron_backend.runtime.exact`), vectorized and batched,
  bit-identical to LiteRT's reference kernels;
- ``"reference"``: LiteRT's ``BUILTIN_REF`` kernels, the cross-check.

Both sit behind :class:`PreparedPayload`, which owns the layout conversions and the I/O checks, so the only thing
that differs between two runs of different engines is the kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from neutron_backend.payload import EmulationPayload, PayloadError, TensorSpec

Kernels = Literal["exact", "reference"]
KERNEL_CHOICES: tuple[str, ...] = ("exact", "reference")
DEFAULT_KERNELS: Kernels = "exact"


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


class Engine(Protocol):
    """Runs a Neutron IR model: inputs and outputs in subgraph order, TFLite layout, leading dimension any
    multiple of the model's batch."""

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class ReferenceEngine:
    """LiteRT's interpreter with its reference kernels (``BUILTIN_REF``, never XNNPACK), one model batch per
    ``invoke``."""

    def __init__(self, model: bytes) -> None:
        try:
            self._interpreter = Interpreter(
                model_content=bytes(model), experimental_op_resolver_type=OpResolverType.BUILTIN_REF
            )
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise PayloadError(f"the payload's TFLite model cannot be loaded by LiteRT: {exc}") from exc
        self.input_details = self._interpreter.get_input_details()
        self.output_details = self._interpreter.get_output_details()

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Runs the model on ``inputs``, one model batch per ``invoke`` when they hold several (the same number
        of model batches in every input)."""
        shapes = [tuple(int(d) for d in detail["shape"]) for detail in self.input_details]
        factor = inputs[0].shape[0] // shapes[0][0] if inputs and inputs[0].ndim and shapes[0] and shapes[0][0] else 1
        steps = []
        for k in range(max(factor, 1)):
            for detail, shape, value in zip(self.input_details, shapes, inputs, strict=True):
                part = value[k * shape[0]:(k + 1) * shape[0]] if factor > 1 else value
                self._interpreter.set_tensor(detail["index"], np.ascontiguousarray(part))
            self._interpreter.invoke()
            steps.append([self._interpreter.get_tensor(d["index"]) for d in self.output_details])
        return steps[0] if len(steps) == 1 else [np.concatenate(p, axis=0) for p in zip(*steps, strict=True)]


def make_engine(model: bytes, kernels: str) -> Engine:
    """Returns the engine ``kernels`` names for a Neutron IR model.

    Raises ValueError for an unknown name, PayloadError when the model cannot be read, and (exact engine)
    ``UnsupportedOperator`` (a NotImplementedError) for an operator it has no kernel for.
    """
    if kernels == "exact":
        from neutron_backend.runtime.exact import ExactEngine

        return ExactEngine(model)
    if kernels == "reference":
        return ReferenceEngine(model)
    raise ValueError(f"kernels={kernels!r} is not an engine; valid: {', '.join(KERNEL_CHOICES)}")


def _shape_and_dtype(engine: Engine) -> list[tuple[list[tuple[str, tuple[int, ...]]], str]]:
    """The (dtype name, shape) of each model input and output, as the engine read them."""
    if isinstance(engine, ReferenceEngine):
        return [([(np.dtype(d["dtype"]).name, tuple(int(x) for x in d["shape"])) for d in details], kind)
                for details, kind in ((engine.input_details, "input"), (engine.output_details, "output"))]
    return [([(t.dtype.name, t.shape) for t in tensors], kind)
            for tensors, kind in ((engine.inputs, "input"), (engine.outputs, "output"))]  # type: ignore[attr-defined]


class PreparedPayload:
    """An emulation payload with its engine built once: ``kernels="exact"`` (our int8 kernels, the default) or
    ``"reference"`` (LiteRT's reference kernels).

    TFLite input ``i`` is described by ``payload.inputs[i]``, TFLite output ``j`` by ``payload.outputs[j]``.
    Raises PayloadError when the payload's model cannot be run, ValueError for an unknown ``kernels``.
    """

    def __init__(self, payload: EmulationPayload, kernels: str = DEFAULT_KERNELS) -> None:
        self.payload = payload
        self.kernels = kernels
        self.engine = make_engine(payload.tflite, kernels)
        for (found, kind), specs in zip(_shape_and_dtype(self.engine), (payload.inputs, payload.outputs),
                                        strict=True):
            if len(specs) != len(found):
                raise PayloadError(f"the payload describes {len(specs)} {kind}s but its TFLite model has {len(found)}")
            # Checked once here, so run() only has to validate what the caller passes in.
            for position, (spec, got) in enumerate(zip(specs, found, strict=True)):
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
        """Runs the payload.

        ``inputs`` are the delegate's input arguments in ExecuTorch's logical layout (channels first); TFLite
        input ``i`` takes ``inputs[payload.inputs[i].arg_index]``. Their leading dimension may be a multiple of
        the exported one (a batch of N delegate calls at once), the same for every input.

        Returns the delegate outputs, in delegate output order, in ExecuTorch's logical layout.
        Raises ValueError when an input is missing or its dtype or shape does not match the payload.
        """
        arrays = []
        factors = set()
        for spec in self.payload.inputs:
            if not 0 <= spec.arg_index < len(inputs):
                raise ValueError(
                    f"the payload reads delegate input {spec.arg_index}, but the delegate got {len(inputs)} inputs"
                )
            array = np.asarray(inputs[spec.arg_index])
            batched = (array.ndim == len(spec.shape) and array.ndim > 0 and array.shape[1:] == spec.shape[1:]
                       and spec.shape[0] > 0 and array.shape[0] % spec.shape[0] == 0)
            if array.dtype != np.dtype(spec.dtype) or not (array.shape == spec.shape or batched):
                raise ValueError(
                    f"delegate input {spec.arg_index}: expected {spec.dtype}{list(spec.shape)}, "
                    f"got {array.dtype.name}{list(array.shape)}"
                )
            factors.add(array.shape[0] // spec.shape[0] if batched else 1)
            arrays.append(np.ascontiguousarray(to_tflite_layout(array, spec.channels_last)))
        if len(factors) > 1:
            raise ValueError(f"delegate inputs hold different multiples {sorted(factors)} of their exported batch")
        results = self.engine.run(arrays)
        outputs: list[np.ndarray] = [np.empty(0)] * self.num_outputs
        for spec, result in zip(self.payload.outputs, results, strict=True):
            outputs[spec.arg_index] = from_tflite_layout(result, spec.channels_last)
        return outputs


def execute_payload(payload: EmulationPayload | PreparedPayload, inputs: Sequence[np.ndarray],
                    kernels: str = DEFAULT_KERNELS) -> list[np.ndarray]:
    """Runs an emulation payload on the delegate's ``inputs`` (ExecuTorch logical layout, delegate input
    order). A :class:`PreparedPayload` reuses its engine (and ignores ``kernels``); an :class:`EmulationPayload`
    is prepared for this call with the ``kernels`` engine.

    Returns the delegate outputs in delegate output order and ExecuTorch logical layout.
    Raises PayloadError when the payload cannot be run, ValueError when the inputs do not match it.
    """
    prepared = payload if isinstance(payload, PreparedPayload) else PreparedPayload(payload, kernels)
    return prepared.run(inputs)
