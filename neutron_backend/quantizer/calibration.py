"""Calibration and the one-call PTQ/QAT-style quantization flow: export -> prepare -> calibrate -> convert."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.fx import GraphModule
from torch.utils._pytree import tree_map
from torchao.quantization.pt2e import move_exported_model_to_eval
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from tqdm import tqdm

from neutron_backend.quantizer.quantizer import NeutronQuantizer

logger = logging.getLogger(__name__)

# Random batches used when quantize_model gets no calibration data.
DEFAULT_RANDOM_BATCHES = 16

Batch = torch.Tensor | Sequence[torch.Tensor]


def calibrate(prepared_module: torch.nn.Module, batches: Iterable[Batch], progress: bool = True) -> int:
    """Runs every batch through `prepared_module` (the output of `prepare_pt2e`) under `torch.no_grad`, so its
    observers record activation ranges. A batch is a tensor or a tuple/list of the model's positional inputs.

    Returns the number of batches run. Raises ValueError if `batches` is empty.
    """
    total = len(batches) if isinstance(batches, Sequence) else None
    count = 0
    with torch.no_grad():
        for batch in tqdm(batches, total=total, desc="calibrating", unit="batch", disable=not progress):
            inputs = (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)
            try:
                prepared_module(*inputs)
            except RuntimeError as error:
                if "not finite" not in str(error):
                    raise
                # The histogram observer cannot place NaN/inf; torch's message does not say where they came from.
                raise ValueError(
                    f"calibration batch {count} produced non-finite activations (NaN or inf), which observers "
                    f"cannot record: calibrate with data from the model's input domain (e.g. no negative inputs "
                    f"to a log or sqrt); torch said: {error}"
                ) from error
            count += 1
    if count == 0:
        raise ValueError(
            "calibration data is empty: pass at least one batch (a tensor or a tuple of the model's inputs) "
            "so the observers can record activation ranges"
        )
    return count


def random_batches(
    example_inputs: tuple[Any, ...], count: int = DEFAULT_RANDOM_BATCHES, seed: int = 0
) -> list[tuple[Any, ...]]:
    """Returns `count` seeded batches shaped like `example_inputs`: float tensors drawn from N(0, 1), anything else
    (indices, masks, scalars) reused as given, since its valid range is unknown. Inputs may nest tensors in
    tuples, lists and dicts (e.g. index_put's tuple of indices)."""
    generator = torch.Generator().manual_seed(seed)

    def draw(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return torch.randn(value.shape, generator=generator, dtype=value.dtype)
        return value

    return [tuple(tree_map(draw, tuple(example_inputs))) for _ in range(count)]


def quantize_model(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    target: str = "imxrt700",
    calibration_batches: Iterable[Batch] | None = None,
    is_qat: bool = False,
    progress: bool = True,
) -> GraphModule:
    """Quantizes `model` for `target` with NeutronQuantizer: export, prepare, calibrate, convert.

    PTQ (default) puts the model in eval mode and exports it. With `is_qat` it is exported in train mode and
    prepared with fake quantizers (conv+batchnorm fused as in QAT), then switched to eval and calibrated; no
    training happens here, so fine-tune between `prepare_qat_pt2e` and `convert_pt2e` yourself for real QAT.
    Without `calibration_batches`, random N(0, 1) batches shaped like `example_inputs` are used (with a
    warning: ranges from random data rarely match real data). `progress` shows a calibration progress bar.

    Returns the converted `torch.fx.GraphModule` with quantize/dequantize nodes, ready for `torch.export`.
    """
    quantizer = NeutronQuantizer(target, is_qat=is_qat)
    if is_qat:
        exported = torch.export.export(model.train(), example_inputs).module()
        prepared = prepare_qat_pt2e(exported, quantizer)
        move_exported_model_to_eval(prepared)
    else:
        exported = torch.export.export(model.eval(), example_inputs).module()
        prepared = prepare_pt2e(exported, quantizer)
    if calibration_batches is None:
        logger.warning(
            "quantize_model: no calibration data given; calibrating on %d random N(0, 1) batches. "
            "Pass calibration_batches from your dataset for accurate activation ranges.",
            DEFAULT_RANDOM_BATCHES,
        )
        calibration_batches = random_batches(example_inputs)
    calibrate(prepared, calibration_batches, progress=progress)
    return convert_pt2e(prepared)
