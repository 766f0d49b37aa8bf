"""The activation memory planner and the fits verdict.

The planner (neutron_backend.memory_plan) is checked against an independent reading of each zoo model's IR: tensor
lifetimes from LiteRT's own interpreter (`_get_ops_details`, `get_tensor_details`), a brute-force lower bound (the
largest total of tensors alive at one operator) that no plan can beat, and a pairwise check that no two tensors alive
at the same time share a byte.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from neutron_backend.memory_fit import memory_report
from neutron_backend.memory_plan import ALIGNMENT, Buffer, plan, plan_ir
from neutron_backend.models import get_model
from neutron_backend.pipeline import compile_model
from neutron_backend.quantizer.calibration import random_batches
from neutron_backend.targets import get_target

SMALL_ZOO = ("cifarnet", "resnet8", "ds_cnn", "mobilenet_v1_vww", "autoencoder")


def _compile(name: str, target: str = "imxrt700"):
    model, inputs = get_model(name)
    return compile_model(model, inputs, target, calibration_batches=random_batches(inputs, 1), progress=False)


def _litert_lifetimes(tflite: bytes) -> list[tuple[str, int, int, int]]:
    """(name, bytes, first, last operator) of every intermediate tensor, read with LiteRT's interpreter: not with
    the code under test."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    boundary = {t["index"] for t in interpreter.get_input_details() + interpreter.get_output_details()}
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for op in interpreter._get_ops_details():  # noqa: SLF001 - LiteRT's only per-operator view
        for index in op["outputs"]:
            first.setdefault(int(index), op["index"])
            last[int(index)] = max(last.get(int(index), op["index"]), op["index"])
        for index in op["inputs"]:
            if index >= 0:
                last[int(index)] = max(last.get(int(index), op["index"]), op["index"])
    lifetimes = []
    for index in first:
        if index in boundary:
            continue
        tensor = details[index]
        size = int(np.prod(tensor["shape"])) * np.dtype(tensor["dtype"]).itemsize
        lifetimes.append((tensor["name"], size, first[index], last[index]))
    return lifetimes


def _brute_force_lower_bound(lifetimes: list[tuple[str, int, int, int]]) -> int:
    steps = range(max((last for *_, last in lifetimes), default=-1) + 1)
    return max((sum(size for _, size, first, last in lifetimes if first <= step <= last) for step in steps),
               default=0)


def _assert_valid(placements) -> None:
    for a, b in itertools.combinations(placements, 2):
        if a.buffer.first <= b.buffer.last and b.buffer.first <= a.buffer.last:
            assert a.end <= b.offset or b.end <= a.offset, f"{a} and {b} are alive together and overlap"
    assert all(p.offset % ALIGNMENT == 0 for p in placements)


# -- the planner on hand-made lifetimes ------------------------------------------------------------------------


def test_chain_reuses_memory_of_dead_tensors():
    # a -> b -> c -> d, each read only by the next operator: at most two alive at once.
    buffers = [Buffer("a", 64, 0, 1), Buffer("b", 32, 1, 2), Buffer("c", 64, 2, 3), Buffer("d", 32, 3, 4)]
    result = plan(buffers)
    _assert_valid(result.placements)
    assert result.lower_bound_bytes == 96
    assert result.arena_bytes == 96  # a and c share [0, 64), b and d share [64, 96)


def test_a_long_lived_tensor_keeps_its_bytes():
    # A residual: "skip" is alive from operator 0 to 3 while two others come and go.
    buffers = [Buffer("skip", 48, 0, 3), Buffer("x", 80, 1, 2), Buffer("y", 80, 2, 3)]
    result = plan(buffers)
    _assert_valid(result.placements)
    assert result.lower_bound_bytes == 48 + 80 + 80
    assert result.arena_bytes == 208


def test_sizes_are_aligned():
    result = plan([Buffer("a", 5, 0, 0), Buffer("b", 5, 0, 0)])
    assert sorted(p.offset for p in result.placements) == [0, ALIGNMENT]
    assert result.arena_bytes == ALIGNMENT + 5


def test_no_buffers():
    result = plan([])
    assert (result.arena_bytes, result.lower_bound_bytes, result.peak_step) == (0, 0, None)


# -- the planner on the zoo ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SMALL_ZOO)
def test_zoo_plan_is_valid_and_above_the_brute_force_lower_bound(name: str):
    _check_plans_against_litert(_compile(name))


def _check_plans_against_litert(compiled) -> None:
    for partition in compiled.report.partitions:
        lifetimes = _litert_lifetimes(_tflite_of(compiled, partition.id))
        bound = _brute_force_lower_bound(lifetimes)
        arena = plan_ir(partition.ir)
        _assert_valid(arena.placements)
        planned = sorted((p.buffer.name, p.buffer.size, p.buffer.first, p.buffer.last) for p in arena.placements)
        assert planned == sorted(lifetimes)
        assert arena.lower_bound_bytes == bound
        # Alignment padding is the only slack the bound does not count: one ALIGNMENT per tensor at most.
        assert bound <= arena.arena_bytes
        assert arena.arena_bytes <= sum(size for _, size, *_ in lifetimes) + ALIGNMENT * len(lifetimes)


def _tflite_of(compiled, partition_id: int) -> bytes:
    """The partition's IR as stored in the .pte: the emulation payload of its delegate."""
    from neutron_backend.payload import read_payload

    module = compiled.edge_program.exported_program().graph_module
    payloads = [getattr(module, n.name).processed_bytes for n in module.graph.nodes
                if n.op == "get_attr" and n.name.startswith("lowered_module_")]
    return read_payload(payloads[partition_id]).tflite


# -- the verdict -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifarnet():
    return _compile("cifarnet", "mcxn94x")


def test_memory_figures_add_up(cifarnet):
    memory = cifarnet.report.memory
    assert memory.pte_bytes == len(cifarnet.pte)
    (partition,) = cifarnet.report.partitions
    assert memory.npu_arena_bytes == plan_ir(partition.ir).arena_bytes
    # CifarNet: float input 1x3x32x32 quantized to int8 on the CPU, both planned by ExecuTorch (the logits reuse
    # memory freed by then), so ExecuTorch plans at least the two input buffers.
    assert memory.cpu_planned_bytes >= 3 * 32 * 32 * (4 + 1)
    # Weights: conv 5x5 3->32, 32->32, 32->64 and FC 1024->10 as int8; their biases as int32.
    assert memory.npu_weights.int8 == 25 * (3 * 32 + 32 * 32 + 32 * 64) + 1024 * 10
    assert memory.npu_weights.int32_bias == 4 * (32 + 32 + 64 + 10)
    sram, flash = memory.checks
    assert sram.needed_bytes == memory.cpu_planned_bytes + memory.npu_arena_bytes
    assert (sram.budget_bytes, sram.fits, sram.margin_bytes) == (512 * 1024, True, 512 * 1024 - sram.needed_bytes)
    assert (flash.budget_bytes, flash.needed_bytes, flash.fits) == (2 * 1024 * 1024, len(cifarnet.pte), True)
    assert memory.fits is True


def test_fetch_constants_to_sram_puts_the_weights_in_sram(cifarnet):
    report = cifarnet.report
    memory = report.memory
    fetched = memory_report(get_target("mcxn94x"), memory.partitions, cpu_planned_bytes=memory.cpu_planned_bytes,
                            cpu_weight_bytes=0, pte_bytes=memory.pte_bytes, fetch_constants_to_sram=True)
    assert fetched.checks[0].needed_bytes == memory.checks[0].needed_bytes + memory.npu_weights.total


def test_unknown_budget_is_unknown(cifarnet):
    memory = cifarnet.report.memory
    imx95 = memory_report(get_target("imx95"), memory.partitions, cpu_planned_bytes=memory.cpu_planned_bytes,
                          cpu_weight_bytes=0, pte_bytes=memory.pte_bytes)
    assert [(c.memory, c.budget_bytes, c.fits, c.margin_bytes) for c in imx95.checks] == [
        ("SRAM", None, None, None), ("flash", None, None, None)]
    assert imx95.fits is None
    assert "unknown" in imx95.checks[0].budget_source


@pytest.mark.slow
def test_mobilenet_v2_does_not_fit_mcxn94x_and_fits_imxrt700():
    torch.manual_seed(0)
    compiled = _compile("mobilenet_v2", "mcxn94x")
    _check_plans_against_litert(compiled)
    memory = compiled.report.memory
    sram, flash = memory.checks
    # 224x224: the first expansion (112x112x96 int8) alone is 1,204,224 B, more than the 512 KB SRAM.
    assert 112 * 112 * 96 <= memory.npu_arena_bytes
    assert sram.fits is False and sram.margin_bytes == 512 * 1024 - sram.needed_bytes < 0
    assert flash.fits is False and flash.margin_bytes == 2 * 1024 * 1024 - len(compiled.pte)
    text = compiled.report.summary()
    assert f"does NOT fit: over by {-sram.margin_bytes:,} B" in text
    assert f"the peak is at {memory.peak.operator} -> {memory.peak.output}" in text
    assert any("a smaller input: about" in advice for advice in sram.advice)
    on_rt700 = memory_report(get_target("imxrt700"), memory.partitions, cpu_planned_bytes=memory.cpu_planned_bytes,
                             cpu_weight_bytes=memory.cpu_weight_bytes, pte_bytes=memory.pte_bytes)
    assert on_rt700.checks[0].fits is True and on_rt700.checks[0].margin_bytes == 7_500_000 - sram.needed_bytes
    figures = json.loads(json.dumps(compiled.report.to_dict()))["memory"]
    assert figures["checks"][0]["margin_bytes"] == sram.margin_bytes
    assert figures["peak"]["output"] == memory.peak.output


def test_targets_command_shows_the_budgets_and_their_sources(capsys):
    from neutron_backend.cli import main
    from neutron_backend.targets import list_targets

    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "524,288 B" in out and "2,097,152 B" in out and "7,500,000 B" in out
    for name in list_targets():
        target = get_target(name)
        assert f"{name}: SRAM: {target.sram_source}; flash: {target.flash_source}" in out
        assert target.sram_source


def test_an_unknown_arena_never_fits_silently():
    from neutron_backend.memory_fit import partition_memory

    deployable = partition_memory(0, None, payload_weight_bytes=1000)
    assert (deployable.arena_bytes, deployable.weights.total) == (None, 1000)
    small = memory_report(get_target("mcxn94x"), [deployable], cpu_planned_bytes=100, cpu_weight_bytes=0,
                          pte_bytes=2000)
    sram = small.checks[0]
    assert (sram.fits, sram.margin_bytes) == (None, 512 * 1024 - 100)
    assert "not counted" in sram.advice[0]
    huge = memory_report(get_target("mcxn94x"), [deployable], cpu_planned_bytes=10**6, cpu_weight_bytes=0,
                         pte_bytes=2000)
    assert huge.checks[0].fits is False  # over budget even without the arena
    assert small.fits is None and huge.fits is False
