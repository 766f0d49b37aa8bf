"""The whole job in one call: quantize, partition, lower to a .pte — what the CLI and the demo run."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule

from neutron_backend.delegation_options import CustomDelegationOptions
from neutron_backend.report import DelegationReport

logger = logging.getLogger(__name__)


@dataclass
class CompiledModel:
    """A lowered model: the .pte bytes, the delegation report, and the references to check it against."""

    pte: bytes
    report: DelegationReport
    quantized: GraphModule
    edge_program: Any  # EdgeProgramManager before to_executorch (a deep copy), for the pure-Python emulator
    example_inputs: tuple[torch.Tensor, ...]


def compile_model(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], target: str = "imxrt700", *,
                  calibration_batches: Iterable[Sequence[torch.Tensor]] | None = None,
                  delegation_options: CustomDelegationOptions | None = None, progress: bool = True,
                  **compile_spec_options: Any) -> CompiledModel:
    """Quantizes `model` with NeutronQuantizer, partitions and lowers it for `target`, and returns the .pte.

    `compile_spec_options` are the keyword arguments of `generate_neutron_compile_spec` (flavor, extra_flags,
    operators_not_to_delegate, intermediates_dir, ...).
    """
    import executorch.kernels.quantized  # noqa: F401 - registers the out-variants to_executorch needs
    from executorch.exir import to_edge_transform_and_lower

    from neutron_backend.compile_spec import generate_neutron_compile_spec
    from neutron_backend.partitioner import NeutronPartitioner
    from neutron_backend.quantizer.calibration import quantize_model

    spec = generate_neutron_compile_spec(target, **compile_spec_options)
    partitioner = NeutronPartitioner(spec, delegation_options)
    quantized = quantize_model(model, example_inputs, target=target, calibration_batches=calibration_batches,
                               progress=progress)
    logger.info("lowering for %s", target)
    edge = to_edge_transform_and_lower(torch.export.export(quantized, example_inputs), partitioner=[partitioner])
    edge_copy = copy.deepcopy(edge)  # to_executorch() mutates the edge program in place
    pte = edge.to_executorch().buffer
    return CompiledModel(pte=pte, report=partitioner.report, quantized=quantized, edge_program=edge_copy,
                         example_inputs=example_inputs)
