"""Int8 model inputs and outputs (`compile_model(..., int8_io=True)`): the .pte takes and returns int8 tensors and,
given the returned qparams, computes exactly what the float-I/O .pte computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from neutron_backend.int8_io import Int8IO
from neutron_backend.pipeline import CompiledModel, compile_model
from neutron_backend.quantizer import random_batches
from neutron_backend.runtime import load_pte

SAMPLES = 8
Q_PER_TENSOR = torch.ops.quantized_decomposed.quantize_per_tensor.default
DQ_PER_TENSOR = torch.ops.quantized_decomposed.dequantize_per_tensor.default


class TwoBranches(nn.Module):
    """Two float inputs, two outputs: an image branch and a vector branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)
        self.side = nn.Linear(6, 5)

    def forward(self, image: torch.Tensor, vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(image)), 1), 1)
        return self.fc(features), torch.relu(self.side(vector))


class WithIndices(nn.Module):
    """A float input and an int64 index input (an embedding lookup, left on the CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.fc(x + self.embedding(indices))


def _compile_both(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[CompiledModel, CompiledModel]:
    batches = random_batches(inputs, 8)
    float_io = compile_model(model.eval(), inputs, calibration_batches=batches, progress=False)
    int8_io = compile_model(model.eval(), inputs, calibration_batches=batches, progress=False, int8_io=True)
    return float_io, int8_io


def _boundary_qparams(compiled: CompiledModel) -> tuple[list[tuple], list[tuple]]:
    """(scale, zero_point, qmin, qmax, dtype) of the quantize node after each float placeholder and of the
    dequantize node before each output, in the quantized reference model."""
    graph = compiled.quantized.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder" and n.meta["val"].dtype == torch.float32]
    inputs = [tuple(user.args[1:]) for n in placeholders for user in n.users if user.target == Q_PER_TENSOR]
    outputs = [tuple(n.args[1:]) for n in graph.output_node().args[0] if n.target == DQ_PER_TENSOR]
    return inputs, outputs


def _as_tuples(io: Int8IO) -> tuple[list[tuple], list[tuple]]:
    def row(q):
        return (q.scale, q.zero_point, q.quant_min, q.quant_max, q.dtype)

    return [row(io.inputs[i]) for i in sorted(io.inputs)], [row(io.outputs[i]) for i in sorted(io.outputs)]


def _max_error_steps(float_io: CompiledModel, int8_io: CompiledModel, samples: list[tuple[torch.Tensor, ...]],
                     tmp_path: Path) -> float:
    """Largest |dequantized int8-I/O output - float-I/O output| over all samples, in output quantization steps."""
    (tmp_path / "float.pte").write_bytes(float_io.pte)
    (tmp_path / "int8.pte").write_bytes(int8_io.pte)
    float_program, int8_program = load_pte(tmp_path / "float.pte"), load_pte(tmp_path / "int8.pte")
    io = int8_io.int8_io
    worst = 0.0
    for sample in samples:
        want = float_program(*sample)
        got_int8 = int8_program(*io.quantize_inputs(*sample))
        assert [y.dtype for i, y in enumerate(got_int8) if i in io.outputs] == [torch.int8] * len(io.outputs)
        for index, (got, expected) in enumerate(zip(io.dequantize_outputs(*got_int8), want, strict=True)):
            worst = max(worst, ((got - expected).abs().max() / io.outputs[index].scale).item())
    return worst


def test_int8_io_pte_takes_int8_and_matches_float_io(tmp_path: Path) -> None:
    from executorch.runtime import Runtime

    inputs = (torch.randn(1, 3, 8, 8), torch.randn(1, 6))
    float_io, int8_io = _compile_both(TwoBranches(), inputs)
    assert float_io.int8_io is None
    io = int8_io.int8_io
    # The qparams handed to the caller are those of the quantize/dequantize nodes the .pte no longer runs.
    assert _as_tuples(io) == _boundary_qparams(float_io)
    assert set(io.inputs) == {0, 1} and set(io.outputs) == {0, 1}

    (tmp_path / "int8.pte").write_bytes(int8_io.pte)
    assert [dtype for _, dtype in load_pte(tmp_path / "int8.pte").input_specs] == [torch.int8, torch.int8]
    # The .pte carries them too, as constant methods.
    program = Runtime.get().load_program(tmp_path / "int8.pte")
    assert program.load_method("input1_scale").execute([]) == [io.inputs[1].scale]
    assert program.load_method("output0_zp").execute([]) == [io.outputs[0].zero_point]

    generator = torch.Generator().manual_seed(1)
    samples = [tuple(torch.randn(x.shape, generator=generator) for x in inputs) for _ in range(SAMPLES)]
    # Both run the same int8 partitions on the same int8 values: the results agree exactly.
    assert _max_error_steps(float_io, int8_io, samples, tmp_path) == 0.0


def test_int8_io_leaves_integer_inputs_alone(tmp_path: Path) -> None:
    inputs = (torch.randn(1, 8), torch.tensor([3]))
    float_io, int8_io = _compile_both(WithIndices(), inputs)
    io = int8_io.int8_io
    assert set(io.inputs) == {0} and set(io.outputs) == {0}
    (tmp_path / "int8.pte").write_bytes(int8_io.pte)
    assert [dtype for _, dtype in load_pte(tmp_path / "int8.pte").input_specs] == [torch.int8, torch.int64]
    generator = torch.Generator().manual_seed(2)
    samples = [(torch.randn(1, 8, generator=generator), torch.tensor([i])) for i in range(SAMPLES)]
    assert _max_error_steps(float_io, int8_io, samples, tmp_path) == 0.0


class FloatOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.fc(x))


class FloatUseOfInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + torch.sin(x)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (FloatOutput(), r"int8 I/O: output 0 is computed in float by 'aten_sin_default' \(aten.sin.default\), not "
                        r"dequantized from int8"),
        (FloatUseOfInput(), r"int8 I/O: float input 0 \('x'\) must feed exactly one quantize_per_tensor node, but "
                            r"it feeds \[.*'aten_sin_default' \(aten.sin.default\)"),
    ],
    ids=["float_output", "input_used_in_float"],
)
def test_int8_io_refuses_values_without_an_int8_form(model: nn.Module, message: str) -> None:
    inputs = (torch.randn(1, 8),)
    with pytest.raises(ValueError, match=message):
        compile_model(model.eval(), inputs, calibration_batches=random_batches(inputs, 2), progress=False,
                      int8_io=True)
