"""Run a Neutron IR model on the host with LiteRT's reference kernels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType


def run_tflite(model: bytes, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` once on ``inputs`` (in subgraph input order) with LiteRT's BUILTIN_REF kernels.

    Reference kernels, never XNNPACK, so results are the TFLite reference semantics the NPU is judged against.
    A fresh interpreter is built per call; nothing is cached.

    Returns the outputs, in subgraph output order, as arrays owned by the caller.
    Raises ValueError when the number, shape or dtype of ``inputs`` does not match the model.
    """
    interpreter = Interpreter(
        model_content=bytes(model), experimental_op_resolver_type=OpResolverType.BUILTIN_REF
    )
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()
    if len(inputs) != len(details):
        raise ValueError(f"model expects {len(details)} inputs, got {len(inputs)}")
    for position, (detail, value) in enumerate(zip(details, inputs, strict=True)):
        array = np.asarray(value)
        expected_shape = tuple(int(d) for d in detail["shape"])
        expected_dtype = np.dtype(detail["dtype"])
        if array.shape != expected_shape:
            raise ValueError(
                f"input {position} ({detail['name']!r}): expected shape {expected_shape}, got {array.shape}"
            )
        if array.dtype != expected_dtype:
            raise ValueError(
                f"input {position} ({detail['name']!r}): "
                f"expected dtype {expected_dtype.name}, got {array.dtype.name}"
            )
        interpreter.set_tensor(detail["index"], np.ascontiguousarray(array))
    interpreter.invoke()
    return [interpreter.get_tensor(detail["index"]) for detail in interpreter.get_output_details()]
