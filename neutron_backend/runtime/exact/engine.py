"""The exact engine: runs a Neutron IR subgraph with our int8 kernels, on a whole batch at once when it can."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from neutron_backend.payload import PayloadError
from neutron_backend.runtime.exact.kernels import KERNELS, Kernel, UnsupportedOperator
from neutron_backend.runtime.exact.model import Graph, Operator, Tensor, read_graph

logger = logging.getLogger(__name__)

_CACHE_BYTES = 1 << 20


def _batch_safe(op: Operator, batch: int, constant: set[int]) -> str | None:
    """Returns why ``op`` cannot take a larger leading (batch) dimension than the model's, or None.
    ``constant`` holds the tensors computed from constants only (they keep the model's batch)."""
    if op.name == "CONCATENATION":
        axis = int(op.options.axis)
        if axis in (0, -len(op.outputs[0].shape)):
            return "it concatenates along the batch axis"
        if any(t is not None and t.index in constant for t in op.inputs):
            return "it concatenates a constant, which does not broadcast over a batch"
    if op.name in ("MEAN", "REDUCE_MAX", "REDUCE_MIN"):
        rank = len(op.inputs[0].shape)
        if any(int(a) % rank == 0 for a in op.inputs[1].data.reshape(-1)):
            return "it reduces the batch axis"
    if op.name == "TRANSPOSE" and int(op.inputs[1].data.reshape(-1)[0]) != 0:
        return "it moves the batch axis"
    if op.name == "SLICE":
        begin, size = int(op.inputs[1].data.reshape(-1)[0]), int(op.inputs[2].data.reshape(-1)[0])
        if begin != 0 or size not in (-1, batch):
            return "it slices the batch axis"
    if op.name in ("PAD", "PADV2", "MIRROR_PAD") and any(op.inputs[1].data.reshape(-1, 2)[0]):
        return "it pads the batch axis"
    if op.name == "SOFTMAX" and len(op.inputs[0].shape) < 2:
        return "its only axis is the batch axis"
    for tensor in op.inputs:
        if tensor is not None and tensor.index in constant and op.name not in ("RESHAPE", "TRANSPOSE", "SLICE"):
            # A constant operand broadcasts over a larger batch only if its leading dimension is 1 or absent.
            if len(tensor.shape) >= len(op.outputs[0].shape) and tensor.shape and tensor.shape[0] != 1 and (
                    op.name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED")):
                return f"its constant operand {tensor.name!r} has a batch dimension"
    return None


class ExactEngine:
    """A Neutron IR model prepared for our exact int8 kernels.

    ``run`` takes the subgraph inputs in TFLite layout; their leading dimension may be any multiple of the
    model's batch. Several model batches (``step``) run through each operator at once when every operator keeps
    the leading axis as a batch axis; otherwise the model's own batch size is run in a loop.
    Raises PayloadError at construction when the model cannot be read, UnsupportedOperator when it holds an
    operator (or a form of one) the engine has no kernel for.
    """

    def __init__(self, model: bytes) -> None:
        self.graph: Graph = read_graph(model)
        self._kernels: list[Kernel] = []
        for position, op in enumerate(self.graph.operators):
            prepare = KERNELS.get(op.name)
            if prepare is None:
                raise UnsupportedOperator(
                    f"operator {position} ({op.name}) has no kernel in the exact engine; supported: "
                    f"{', '.join(sorted(KERNELS))}. Run it with kernels='reference' (LiteRT's reference kernels)")
            try:
                self._kernels.append(prepare(op))
            except UnsupportedOperator as exc:
                raise UnsupportedOperator(f"operator {position} ({op.name}): {exc}") from exc
            except (TypeError, ValueError, AttributeError, IndexError) as exc:
                raise PayloadError(f"operator {position} ({op.name}) is malformed: {exc!r}") from exc
        self.inputs: tuple[Tensor, ...] = tuple(self.graph.tensors[i] for i in self.graph.inputs)
        self.outputs: tuple[Tensor, ...] = tuple(self.graph.tensors[i] for i in self.graph.outputs)
        shapes = [t.shape for t in (*self.inputs, *self.outputs)]
        self.batch = shapes[0][0] if shapes and shapes[0] else 1
        self.batch_reason = self._batch_reason()
        largest = max((int(np.prod(t.shape, dtype=np.int64)) * t.dtype.itemsize for t in self.graph.tensors
                       if t.data is None), default=1)
        # Model batches run through the graph at once: as many as keep its largest activation cache-sized (a
        # whole large batch through each operator would stream every activation through memory).
        self.step = max(1, _CACHE_BYTES // max(largest, 1))
        if self.batch_reason:
            logger.debug("exact engine: runs in steps of batch %d because %s", self.batch, self.batch_reason)

    def _batch_reason(self) -> str | None:
        """Why the model cannot run a larger batch in one pass, or None."""
        for tensor in self.graph.tensors:
            if tensor.data is None and (not tensor.shape or tensor.shape[0] != self.batch):
                return f"tensor {tensor.name!r} of shape {list(tensor.shape)} has no leading batch dimension"
        constant = {t.index for t in self.graph.tensors if t.data is not None}
        for op in self.graph.operators:
            if all(t is None or t.index in constant for t in op.inputs):
                constant.update(t.index for t in op.outputs)
        for position, op in enumerate(self.graph.operators):
            reason = _batch_safe(op, self.batch, constant)
            if reason:
                return f"operator {position} ({op.name}): {reason}"
        return None

    def _run_once(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        values: dict[int, np.ndarray] = dict(zip(self.graph.inputs, inputs, strict=True))
        for op, kernel in zip(self.graph.operators, self._kernels, strict=True):
            arguments = [None if t is None else (t.data if t.data is not None else values[t.index])
                         for t in op.inputs]
            values[op.outputs[0].index] = kernel(arguments)
        return [values[i] if i in values else self.graph.tensors[i].data for i in self.graph.outputs]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Returns the subgraph outputs for ``inputs`` (subgraph input order, TFLite layout, int8).

        Each input's leading dimension is the model's times the same factor k (k delegate calls at once).
        Raises ValueError when an input's dtype or trailing shape does not match the model, or the factors differ.
        """
        if len(inputs) != len(self.inputs):
            raise ValueError(f"the model has {len(self.inputs)} inputs, got {len(inputs)}")
        arrays = [np.ascontiguousarray(x) for x in inputs]
        factors = set()
        for position, (x, spec) in enumerate(zip(arrays, self.inputs, strict=True)):
            if (x.dtype != spec.dtype or x.ndim != len(spec.shape) or x.shape[1:] != spec.shape[1:]
                    or (x.ndim and (not spec.shape[0] or x.shape[0] % spec.shape[0]))):
                raise ValueError(f"input {position}: expected {spec.dtype.name}{list(spec.shape)} or a multiple of "
                                 f"its leading dimension, got {x.dtype.name}{list(x.shape)}")
            factors.add(x.shape[0] // spec.shape[0] if x.ndim else 1)
        if len(factors) > 1:
            raise ValueError(f"inputs hold different numbers of model batches {sorted(factors)}")
        factor = factors.pop() if factors else 1
        step = 1 if self.batch_reason else self.step
        if factor <= step:
            return self._run_once(arrays)
        steps = []
        for k in range(0, factor, step):
            steps.append(self._run_once([x[k * spec.shape[0]:(k + step) * spec.shape[0]]
                                         for x, spec in zip(arrays, self.inputs, strict=True)]))
        return [np.concatenate(parts, axis=0) for parts in zip(*steps, strict=True)]
