"""Numerical verification of a lowered ``.pte`` against the quantized PyTorch model (DESIGN.md §7).

The quantized model (the GraphModule from ``convert_pt2e``) is the reference. LiteRT's reference kernels
requantize in fixed point, torch in float, so a difference of about one output quantization step is expected;
:func:`verify` measures it in those steps, plus top-1 agreement for classifiers::

    result = verify("model.pte", quantized, [(x,) for x in images], float_model=model, labels=targets)
    assert result.max_error_steps <= 1 and result.top1_agreement >= 0.99
    print(result)
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["OutputMetrics", "VerifyResult", "WorstInput", "output_scales", "top1_margin", "verify"]


@dataclass(frozen=True)
class OutputMetrics:
    """How one output of the ``.pte`` differs from the reference's over all samples (what ST Edge AI's
    ``validate`` shows per output): the largest and mean ``|pte - reference|`` in output quantization steps, the
    root-mean-square error in the output's own units, and the cosine similarity of the two outputs flattened over
    every sample (1.0 for identical outputs; 1.0 too when both are all zeros)."""

    scale: float
    max_error_steps: float
    mean_error_steps: float
    rmse: float
    cosine_similarity: float


@dataclass(frozen=True)
class WorstInput:
    """One of the samples with the largest error: its index in the inputs and its largest error in steps over
    every output."""

    index: int
    max_error_steps: float


@dataclass(frozen=True)
class VerifyResult:
    """How closely a ``.pte`` reproduces its reference over a set of inputs.

    Errors are ``|pte - reference|`` over every element of every output; "steps" divide them by the output's
    quantization scale (``max_error_steps`` rounded to 4 decimals, absorbing float32 rounding); ``outputs`` has
    them per output, with RMSE and cosine similarity; ``worst_inputs`` the samples with the largest errors,
    worst first. Top-1 figures are fractions in [0, 1] over samples: every batch item (first dim) of the first
    output, ranked over its remaining elements. A compared model agrees with its reference on a sample when every
    class it ranks top is a top class of the reference: several classes of an int8 output often share the maximum,
    and a tie only counts when the reference itself is tied the same way (a ``.pte`` tied between the reference's
    class and another does not agree: its answer is ambiguous where the reference's is not).

    ``distinct_reference_classes`` (and ``distinct_pte_classes``) count the classes that are the single top-1 of
    at least one sample. With fewer than 2, agreement says nothing (a model predicting one class agrees with
    anything predicting the same class): ``agreement_is_meaningful`` is False and the text says so instead of a
    percentage. Accuracies count a labelled sample as correct only when the label is the single top-1 class. They
    are only set when labels were given, the float-model figures only when a float model was.
    """

    num_samples: int
    max_abs_error: float
    max_error_steps: float
    mean_error_steps: float
    top1_agreement: float
    output_scales: tuple[float, ...]
    num_top1_samples: int
    distinct_reference_classes: int = 0
    distinct_pte_classes: int = 0
    outputs: tuple[OutputMetrics, ...] = ()
    worst_inputs: tuple[WorstInput, ...] = ()
    top1_agreement_with_float: float | None = None
    reference_top1_agreement_with_float: float | None = None
    pte_accuracy: float | None = None
    reference_accuracy: float | None = None
    float_accuracy: float | None = None

    @property
    def agreement_is_meaningful(self) -> bool:
        """Whether the reference predicts at least two classes, so that top-1 agreement can tell models apart."""
        return self.distinct_reference_classes >= 2

    def agreement_text(self, agreement: float) -> str:
        """`agreement` as a percentage, or why it is not shown (the reference predicts fewer than 2 classes)."""
        if self.agreement_is_meaningful:
            return f"{100 * agreement:.2f}%"
        return (f"not claimed: the reference predicts {self.distinct_reference_classes} distinct class(es) over "
                f"{self.num_top1_samples} sample(s), so agreement says nothing")

    def __str__(self) -> str:
        scales = ", ".join(f"{s:.6g}" for s in self.output_scales)
        lines = [
            f"verified on {self.num_samples} input(s) ({self.num_top1_samples} top-1 sample(s)), "
            f"output scale(s) {scales}",
            f"  max |pte - reference| = {self.max_abs_error:.6g} "
            f"({self.max_error_steps:.3g} step(s); mean {self.mean_error_steps:.3g} step(s))",
        ]
        for number, out in enumerate(self.outputs):
            lines.append(f"  output {number}: max {out.max_error_steps:.3g} step(s), mean {out.mean_error_steps:.3g}, "
                         f"RMSE {out.rmse:.4g}, cosine similarity {out.cosine_similarity:.6f}")
        if self.worst_inputs:
            worst = ", ".join(f"#{w.index} ({w.max_error_steps:.3g})" for w in self.worst_inputs)
            lines.append(f"  worst inputs (index, max error in steps): {worst}")
        lines.append(f"  classes predicted: reference {self.distinct_reference_classes}, pte "
                     f"{self.distinct_pte_classes} (distinct single top-1 classes)")
        lines.append(f"  top-1 agreement with the reference: {self.agreement_text(self.top1_agreement)}")
        if self.top1_agreement_with_float is not None:
            lines.append(f"  top-1 agreement with the float model: {100 * self.top1_agreement_with_float:.2f}% "
                         f"(reference: {100 * self.reference_top1_agreement_with_float:.2f}%)")
        if self.pte_accuracy is not None:
            accuracies = [f"pte {100 * self.pte_accuracy:.2f}%", f"reference {100 * self.reference_accuracy:.2f}%"]
            if self.float_accuracy is not None:
                accuracies.append(f"float {100 * self.float_accuracy:.2f}%")
            lines.append("  accuracy: " + ", ".join(accuracies))
        return "\n".join(lines)


# Errors in steps are rounded to this many decimals: outputs are float32 dequantized values, so a difference
# of exactly one step reads as e.g. 1.0000004 steps before rounding.
_STEP_DECIMALS = 4


def _is_dequantize(node: torch.fx.Node) -> bool:
    """A per-tensor dequantize (ATen or edge dialect)."""
    return node.op == "call_function" and "dequantize_per_tensor" in str(node.target)


def _attribute(module: torch.nn.Module, dotted: str) -> Any:
    value: Any = module
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _scale_value(module: torch.fx.GraphModule, value: Any) -> float:
    if isinstance(value, torch.fx.Node) and value.op == "get_attr":
        value = _attribute(module, value.target)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"the final dequantize has {value.numel()} scales; expected a per-tensor scale")
        value = value.item()
    if not isinstance(value, int | float):
        raise ValueError(f"cannot read a constant scale from the final dequantize (got {value!r})")
    return float(value)


def output_scales(reference: torch.nn.Module) -> tuple[float, ...]:
    """The quantization scale of each output of a quantized GraphModule (from ``convert_pt2e``), read from the
    per-tensor dequantize node that produces it.

    Raises ValueError when an output is not produced by a per-tensor dequantize (e.g. a float model, or an
    output computed in float after the last dequantize); pass ``output_scale`` to :func:`verify` then.
    """
    graph = getattr(reference, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        raise ValueError(f"cannot read output scales from a {type(reference).__name__}: the reference is not a "
                         "torch.fx.GraphModule (the output of convert_pt2e); pass output_scale explicitly")
    output_node = next(node for node in reversed(graph.nodes) if node.op == "output")
    scales = []
    for index, leaf in enumerate(_flatten(output_node.args[0])):
        if not isinstance(leaf, torch.fx.Node) or not _is_dequantize(leaf):
            described = leaf.format_node() if isinstance(leaf, torch.fx.Node) else repr(leaf)
            raise ValueError(f"output {index} of the reference is not produced by a per-tensor dequantize "
                             f"({described}); pass output_scale explicitly")
        scale_arg = leaf.args[1] if len(leaf.args) > 1 else leaf.kwargs.get("scale")
        scales.append(_scale_value(reference, scale_arg))
    return tuple(scales)


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return [leaf for item in value for leaf in _flatten(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _flatten(item)]
    return [value]


def _as_outputs(value: Any, who: str) -> tuple[torch.Tensor, ...]:
    leaves = _flatten(value)
    for index, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"{who} output {index} is a {type(leaf).__name__}, not a torch.Tensor")
    return tuple(leaves)


def _as_inputs(sample: Any, index: int) -> tuple[torch.Tensor, ...]:
    if isinstance(sample, torch.Tensor):
        return (sample,)
    if isinstance(sample, list | tuple) and all(isinstance(x, torch.Tensor) for x in sample):
        return tuple(sample)
    raise TypeError(f"input sample {index} must be a tensor or a tuple of tensors, got {type(sample).__name__}")


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def _load(pte_path_or_program: Any) -> Callable[..., tuple[torch.Tensor, ...]]:
    """A callable running the ``.pte``: from a path, raw bytes, an ExecutorchProgramManager, or a callable."""
    from neutron_backend.runtime import load_pte

    if isinstance(pte_path_or_program, str | os.PathLike):
        return load_pte(pte_path_or_program)
    buffer = getattr(pte_path_or_program, "buffer", None)
    if isinstance(pte_path_or_program, bytes | bytearray) or isinstance(buffer, bytes | bytearray):
        data = bytes(pte_path_or_program if buffer is None else buffer)
        # ExecuTorch's runtime loads programs from files; the file is kept until the process exits, since
        # the loaded program may keep reading it.
        handle = tempfile.NamedTemporaryFile(prefix="neutron_verify_", suffix=".pte", delete=False)
        with handle:
            handle.write(data)
        atexit.register(_remove_quietly, handle.name)
        logger.debug("verify: wrote the program to %s", handle.name)
        return load_pte(handle.name)
    if callable(pte_path_or_program):
        return pte_path_or_program
    raise TypeError(f"expected a .pte path, its bytes, an ExecutorchProgramManager or a loaded program, got "
                    f"{type(pte_path_or_program).__name__}")


def _top1(output: torch.Tensor) -> torch.Tensor:
    """Per batch item (first dim), a mask over the remaining elements of those holding its maximum (several
    when the maximum is tied)."""
    flat = output.reshape(1, -1) if output.dim() < 2 else output.reshape(output.shape[0], -1)
    return flat == flat.max(dim=1, keepdim=True).values


def _agreement(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    """The fraction of batch items where every top-1 class of `candidate` is a top-1 class of `reference` (a tie
    in the candidate counts only where the reference is tied over those classes too)."""
    return (candidate & ~reference).logical_not().all(dim=1).double().mean().item()


def _distinct_classes(top1: torch.Tensor) -> int:
    """How many classes are the single top-1 class of at least one batch item."""
    single = top1[top1.sum(dim=1) == 1]
    return int(single.any(dim=0).sum().item())


def top1_margin(reference: torch.Tensor, output: torch.Tensor) -> float:
    """How far, in the reference's own units, the reference ranks `output`'s top-1 below its own: the reference's
    maximum minus its lowest value among `output`'s tied maxima. 0 exactly when the two agree on top-1 as
    `verify` counts it."""
    reference, output = reference.reshape(-1), output.reshape(-1)
    return (reference.max() - reference[output == output.max()].min()).item()


def _correct(top1: torch.Tensor, targets: torch.Tensor) -> float:
    """The fraction of batch items whose single top-1 class is its target (a tie including it is not correct)."""
    hit = top1.gather(1, targets.reshape(-1, 1)).squeeze(1) & (top1.sum(dim=1) == 1)
    return hit.double().mean().item()


class _OutputAccumulator:
    """Running sums for one output's metrics, in float64."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.max_abs = 0.0
        self.sum_abs = self.sum_sq = self.dot = self.sum_sq_pte = self.sum_sq_ref = 0.0
        self.count = 0

    def add(self, got: torch.Tensor, want: torch.Tensor) -> float:
        """Adds one sample; returns its largest error in steps."""
        got, want = got.double(), want.double()
        diff = (got - want).abs()
        if not diff.numel():
            return 0.0
        worst = diff.max().item()
        self.max_abs = max(self.max_abs, worst)
        self.sum_abs += diff.sum().item()
        self.sum_sq += (diff * diff).sum().item()
        self.dot += (got * want).sum().item()
        self.sum_sq_pte += (got * got).sum().item()
        self.sum_sq_ref += (want * want).sum().item()
        self.count += diff.numel()
        return round(worst / self.scale, _STEP_DECIMALS)

    def metrics(self) -> OutputMetrics:
        norms = math.sqrt(self.sum_sq_pte * self.sum_sq_ref)
        both_zero = self.sum_sq_pte == 0 and self.sum_sq_ref == 0
        cosine = 1.0 if both_zero else (self.dot / norms if norms else 0.0)
        count = max(self.count, 1)
        return OutputMetrics(scale=self.scale, max_error_steps=round(self.max_abs / self.scale, _STEP_DECIMALS),
                             mean_error_steps=self.sum_abs / self.scale / count, rmse=math.sqrt(self.sum_sq / count),
                             cosine_similarity=cosine)


def _progress(inputs: Iterable[Any], enabled: bool) -> Iterable[Any]:
    if not enabled:
        return inputs
    from tqdm import tqdm

    total = len(inputs) if isinstance(inputs, Sized) else None
    return tqdm(inputs, total=total, desc="verifying", unit="sample", file=sys.stderr)


def verify(
    pte_path_or_program: Any,
    reference: torch.nn.Module,
    inputs: Iterable[tuple[torch.Tensor, ...]],
    *,
    float_model: torch.nn.Module | None = None,
    labels: Iterable[torch.Tensor | int] | None = None,
    output_scale: float | Sequence[float] | None = None,
    progress: bool = False,
    num_worst: int = 5,
) -> VerifyResult:
    """Runs every input sample through the ``.pte`` (on the host, :func:`neutron_backend.runtime.load_pte`)
    and through ``reference`` (the quantized GraphModule from ``convert_pt2e``) and compares them.

    ``pte_path_or_program`` is a ``.pte`` path, its bytes, an ExecutorchProgramManager or an already loaded
    program (anything callable as ``program(*inputs) -> tuple[Tensor, ...]``). Each input sample is a tuple of
    tensors (a bare tensor is taken as a 1-tuple). Output scales are read from the reference's final dequantize
    nodes unless ``output_scale`` (one float, or one per output) is given. With ``float_model``, top-1 agreement
    with it is reported too; with ``labels`` (one per sample: a class index, or a tensor of one per batch item),
    accuracies of the ``.pte``, the reference and the float model. ``progress`` shows a progress bar on stderr;
    ``num_worst`` is how many of the worst samples the result lists.

    Returns a :class:`VerifyResult`. Raises ValueError for empty inputs, a different number or shape of outputs
    between the ``.pte`` and the reference, or labels not matching the samples.
    """
    if output_scale is None:
        scales = output_scales(reference)
    else:
        scales = (float(output_scale),) if isinstance(output_scale, int | float) else tuple(map(float, output_scale))
        if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
            raise ValueError(f"output scales must be positive and finite, got {scales}")
    program = _load(pte_path_or_program)
    label_list = None if labels is None else list(labels)

    num_samples = 0
    accumulators: list[_OutputAccumulator] = []
    sample_errors: list[float] = []
    top1_pte: list[torch.Tensor] = []
    top1_ref: list[torch.Tensor] = []
    top1_float: list[torch.Tensor] = []
    with torch.no_grad():
        for index, sample in enumerate(_progress(inputs, progress)):
            args = _as_inputs(sample, index)
            actual = _as_outputs(program(*args), "the .pte")
            expected = _as_outputs(reference(*args), "the reference")
            if len(actual) != len(expected):
                raise ValueError(f"sample {index}: the .pte returned {len(actual)} output(s) but the reference "
                                 f"{len(expected)}")
            if len(scales) == 1 and len(expected) > 1:
                scales = scales * len(expected)
            if len(scales) != len(expected):
                raise ValueError(f"{len(scales)} output scale(s) given for {len(expected)} output(s)")
            if not accumulators:
                accumulators = [_OutputAccumulator(scale) for scale in scales]
            worst = 0.0
            for number, (got, want, accumulator) in enumerate(zip(actual, expected, accumulators, strict=True)):
                if got.shape != want.shape:
                    raise ValueError(f"sample {index}, output {number}: the .pte returned shape {list(got.shape)} "
                                     f"but the reference {list(want.shape)}")
                worst = max(worst, accumulator.add(got, want))
            sample_errors.append(worst)
            top1_pte.append(_top1(actual[0]))
            top1_ref.append(_top1(expected[0]))
            if float_model is not None:
                float_out = _as_outputs(float_model(*args), "the float model")
                if len(float_out) != len(expected):
                    raise ValueError(f"sample {index}: the float model returned {len(float_out)} output(s) but the "
                                     f"reference {len(expected)}")
                top1_float.append(_top1(float_out[0]))
            num_samples += 1
    if num_samples == 0:
        raise ValueError("verify() needs at least one input sample; `inputs` was empty")

    pte_top1, ref_top1 = torch.cat(top1_pte), torch.cat(top1_ref)
    float_top1 = torch.cat(top1_float) if top1_float else None
    accuracies: dict[str, float | None] = {"pte_accuracy": None, "reference_accuracy": None, "float_accuracy": None}
    if label_list is not None:
        if len(label_list) != num_samples:
            raise ValueError(f"got {len(label_list)} label(s) for {num_samples} input sample(s)")
        targets = torch.cat([torch.as_tensor(label).reshape(-1) for label in label_list])
        if targets.numel() != pte_top1.shape[0]:
            raise ValueError(f"labels hold {targets.numel()} class(es) for {pte_top1.shape[0]} top-1 sample(s)")
        num_classes = pte_top1.shape[1]
        if targets.is_floating_point() or targets.min() < 0 or targets.max() >= num_classes:
            raise ValueError(f"labels must be class indices in [0, {num_classes - 1}] (the outputs have "
                             f"{num_classes} classes), got {targets.tolist()[:10]}")
        accuracies["pte_accuracy"] = _correct(pte_top1, targets)
        accuracies["reference_accuracy"] = _correct(ref_top1, targets)
        if float_top1 is not None:
            accuracies["float_accuracy"] = _correct(float_top1, targets)
    per_output = tuple(accumulator.metrics() for accumulator in accumulators)
    num_elements = sum(a.count for a in accumulators)
    worst_first = sorted(range(num_samples), key=lambda i: (-sample_errors[i], i))[:num_worst]
    return VerifyResult(
        num_samples=num_samples,
        max_abs_error=max(a.max_abs for a in accumulators),
        max_error_steps=max(o.max_error_steps for o in per_output),
        mean_error_steps=sum(a.sum_abs / a.scale for a in accumulators) / num_elements if num_elements else 0.0,
        top1_agreement=_agreement(pte_top1, ref_top1),
        output_scales=scales,
        num_top1_samples=pte_top1.shape[0],
        distinct_reference_classes=_distinct_classes(ref_top1),
        distinct_pte_classes=_distinct_classes(pte_top1),
        outputs=per_output,
        worst_inputs=tuple(WorstInput(i, sample_errors[i]) for i in worst_first if sample_errors[i] > 0),
        top1_agreement_with_float=None if float_top1 is None else _agreement(pte_top1, float_top1),
        reference_top1_agreement_with_float=None if float_top1 is None else _agreement(ref_top1, float_top1),
        **accuracies,
    )
