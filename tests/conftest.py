"""Shared test helpers: quantize a model, lower it to edge and partition it for Neutron."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import pytest
import torch

from neutron_backend.report import DelegationReport, NodeEntry

CALIBRATION_BATCHES = 3

# The test models are small: one intra-op thread avoids OpenMP spin-waits that make small ops orders of magnitude
# slower when the cores are shared (measured on tests/test_models.py: 65 s with 1 thread, 6 min with 2 under load).
torch.set_num_threads(1)


def quantized_edge(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], target: str = "imxrt700",
                   calibration: Iterable[Sequence[torch.Tensor]] | None = None):
    """The edge program of `model` quantized with NeutronQuantizer(target), calibrated on `calibration`
    (default: a few seeded N(0, 1) batches shaped like `example_inputs`), not yet partitioned."""
    from executorch.exir import to_edge
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from neutron_backend.quantizer import NeutronQuantizer, calibrate, random_batches

    torch.manual_seed(0)
    exported = torch.export.export(model.eval(), example_inputs)
    prepared = prepare_pt2e(exported.module(), NeutronQuantizer(target))
    calibrate(prepared, calibration or random_batches(example_inputs, CALIBRATION_BATCHES), progress=False)
    quantized = convert_pt2e(prepared)
    return to_edge(torch.export.export(quantized, example_inputs)).exported_program()


def partition_edge(edge_program, target: str = "imxrt700", delegation_options=None,
                   **spec_kwargs) -> DelegationReport:
    """Runs NeutronPartitioner on `edge_program` (tagging it in place) and returns its report."""
    from neutron_backend.compile_spec import generate_neutron_compile_spec
    from neutron_backend.partitioner import NeutronPartitioner

    partitioner = NeutronPartitioner(generate_neutron_compile_spec(target, **spec_kwargs), delegation_options)
    partitioner.partition(edge_program)
    return partitioner.report


def partition_model(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], target: str = "imxrt700",
                    delegation_options=None, calibration=None, **spec_kwargs):
    """Quantizes `model`, lowers it to edge and partitions it; returns (report, edge_program)."""
    edge_program = quantized_edge(model, example_inputs, target, calibration)
    return partition_edge(edge_program, target, delegation_options, **spec_kwargs), edge_program


def entry_for(report: DelegationReport, target: str, index: int = 0) -> NodeEntry:
    """The report entry of the `index`-th node (in graph order) whose edge target is `target`,
    e.g. 'aten.convolution.default'."""
    found = [entry for entry in report.nodes if entry.target == target]
    if len(found) <= index:
        raise KeyError(f"no node #{index} with target {target!r}; targets: {sorted({e.target for e in report.nodes})}")
    return found[index]


@pytest.fixture(name="partition_model")
def _partition_model_fixture() -> Callable:
    return partition_model


@pytest.fixture(name="entry_for")
def _entry_for_fixture() -> Callable:
    return entry_for
