"""Host runtime: the C++ shim in ExecuTorch's runtime, load_pte, and the pure-Python emulator.

The real lowering (NeutronPartitioner + NeutronBackend.preprocess) is tested elsewhere; here a test-local
partitioner delegates one quantized ``add`` cluster and ``NeutronBackend.preprocess`` is patched to emit an
emulation payload whose TFLite computes that int8 ADD with the qparams read from the Q/DQ nodes. That gives a
real ``.pte`` with a real NeutronBackend delegate, independent of the lowering code.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)
import numpy as np
import pytest
import torch
from ai_edge_litert import schema_py_generated as schema
from executorch.exir import EdgeProgramManager, ExecutorchProgramManager, to_edge_transform_and_lower
from executorch.exir.backend.backend_details import PreprocessResult
from executorch.exir.backend.partitioner import DelegationSpec, Partitioner, PartitionResult
from executorch.exir.dialects._ops import ops as exir_ops
from numerics import qdq

from neutron_backend import payload as payload_module
from neutron_backend.backend import NeutronBackend
from neutron_backend.ir import IRBuilder
from neutron_backend.payload import DeployablePayload, EmulationPayload, TensorSpec
from neutron_backend.runtime import (
    NeutronRuntimeError,
    PreparedPayload,
    _build,
    _host,
    emulate,
    execute_payload,
    load_pte,
    register,
)

EDGE_ADD = exir_ops.edge.aten.add.Tensor
SHAPE = (1, 3, 4, 5)
# (scale, zero point) of x, y and the sum; deliberately different so the ADD really requantizes.
QPARAMS = ((0.02, 3), (0.03, -5), (0.04, 1))


class QuantizedAdd(torch.nn.Module):
    """What convert_pt2e makes of ``x + y``: Q/DQ around the inputs and the output."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return qdq(qdq(x, *QPARAMS[0]) + qdq(y, *QPARAMS[1]), *QPARAMS[2])


class AddPartitioner(Partitioner):
    """Tags every ``dequantize -> add -> quantize`` cluster as one NeutronBackend partition."""

    def __init__(self) -> None:
        super().__init__()
        self.delegation_spec = DelegationSpec("NeutronBackend", [])

    def partition(self, exported_program: torch.export.ExportedProgram) -> PartitionResult:
        tags = {}
        for node in exported_program.graph.nodes:
            if node.op == "call_function" and node.target == EDGE_ADD:
                tag = f"neutron_{len(tags)}"
                for member in (*node.args, node, *node.users):
                    member.meta["delegation_tag"] = tag
                tags[tag] = self.delegation_spec
        return PartitionResult(tagged_exported_program=exported_program, partition_tags=tags)


def add_payload(
    qparams: list[tuple[float, int]], shape: tuple[int, ...], channels_last: bool = True
) -> EmulationPayload:
    """Returns an emulation payload computing the int8 ADD of two ``shape`` tensors with ``qparams``."""
    tflite_shape = (shape[0], *shape[2:], shape[1]) if channels_last else shape
    builder = IRBuilder("test add")
    ids = [builder.add_tensor(f"t{i}", tflite_shape, "int8", scale=s, zero_point=z) for i, (s, z) in enumerate(qparams)]
    builder.add_operator("ADD", ids[:2], ids[2:], schema.AddOptionsT())
    builder.set_inputs(ids[:2])
    builder.set_outputs(ids[2:])
    specs = [TensorSpec(shape, "int8", s, z, channels_last, i) for i, (s, z) in enumerate(qparams)]
    outputs = (TensorSpec(shape, "int8", *qparams[2], channels_last, 0),)
    return EmulationPayload(tuple(specs[:2]), outputs, builder.finish(), "imxrt700")


def deployable_payload() -> DeployablePayload:
    """Returns a well-formed deployable payload (dummy microcode with a valid header)."""
    words = [0] * 16
    words[0] = payload_module._MICROCODE_MAGIC
    words[payload_module._MICROCODE_SIZE_WORD] = 64
    words[payload_module._WEIGHTS_SIZE_WORD] = 16
    inputs_word, outputs_word = payload_module._IO_COUNT_WORDS[payload_module.DEPLOYABLE_VERSION]
    words[inputs_word], words[outputs_word] = 2, 1
    return DeployablePayload((1, 1), (1,), (0, 1), (0,), 2, struct.pack("<16I", *words), bytes(16), bytes(16))


def _cluster_qparams(edge_program: torch.export.ExportedProgram) -> tuple[list[tuple[float, int]], tuple]:
    """Returns the (scale, zero point) of the add's inputs and output, read from its Q/DQ nodes, and its shape."""
    add = next(node for node in edge_program.graph.nodes if node.target == EDGE_ADD)
    (quantize,) = add.users
    qparams = [(float(n.args[1]), int(n.args[2])) for n in (*add.args, quantize)]
    return qparams, tuple(add.meta["val"].shape)


@dataclass
class Lowered:
    edge: EdgeProgramManager
    executorch: ExecutorchProgramManager
    pte: Path


def lower(
    tmp_path: Path,
    make_bytes: Callable[[list[tuple[float, int]], tuple], bytes],
    model: torch.nn.Module | None = None,
    example_inputs: tuple[torch.Tensor, ...] = (torch.zeros(SHAPE), torch.zeros(SHAPE)),
) -> Lowered:
    """Returns ``model`` (default QuantizedAdd) lowered with ``make_bytes(qparams, shape)`` as each delegate's
    payload: the edge program, and (lowered separately, since ``to_executorch()`` mutates its edge program) the
    ExecuTorch program and its ``.pte``."""
    model = model or QuantizedAdd()

    def preprocess(edge_program: torch.export.ExportedProgram, compile_specs: list) -> PreprocessResult:
        return PreprocessResult(processed_bytes=make_bytes(*_cluster_qparams(edge_program)))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(NeutronBackend, "preprocess", staticmethod(preprocess))
        edge, for_executorch = (
            to_edge_transform_and_lower(torch.export.export(model, example_inputs), partitioner=[AddPartitioner()])
            for _ in range(2)
        )
        executorch_program = for_executorch.to_executorch()
    pte = tmp_path / "model.pte"
    pte.write_bytes(executorch_program.buffer)
    return Lowered(edge, executorch_program, pte)


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    # Wide enough that some sums saturate the int8 output range.
    return torch.randn(SHAPE, generator=generator) * 2, torch.randn(SHAPE, generator=generator) * 2


@pytest.fixture(scope="module")
def lowered(tmp_path_factory: pytest.TempPathFactory) -> Lowered:
    return lower(tmp_path_factory.mktemp("add"), lambda q, shape: add_payload(q, shape).to_bytes())


def test_program_has_one_neutron_delegate(lowered: Lowered) -> None:
    delegates = [node for node in lowered.edge.exported_program().graph.nodes if "call_delegate" in str(node.target)]
    assert len(delegates) == 1
    module = getattr(lowered.edge.exported_program().graph_module, delegates[0].args[0].target)
    assert module.backend_id == "NeutronBackend"


def test_load_pte_matches_quantized_torch_within_one_step(lowered: Lowered, inputs: tuple) -> None:
    (out,) = load_pte(lowered.pte)(*inputs)
    reference = QuantizedAdd()(*inputs)
    steps = (out - reference).abs() / QPARAMS[2][0]
    assert out.shape == reference.shape and out.dtype == torch.float32
    assert steps.max().item() <= 1 + 1e-4
    # Not vacuous: most elements agree exactly and the output is not constant.
    assert (steps < 1e-4).float().mean() > 0.5
    assert out.std() > 0.5


def test_shim_and_emulator_agree_bit_for_bit(lowered: Lowered, inputs: tuple) -> None:
    (shim,) = load_pte(lowered.pte)(*inputs)
    (from_edge,) = emulate(lowered.edge, *inputs)
    (from_executorch,) = emulate(lowered.executorch, *inputs)
    (from_exported,) = emulate(lowered.edge.exported_program(), *inputs)
    for other in (from_edge, from_executorch, from_exported):
        assert torch.equal(shim, other)


class TwoQuantizedAdds(torch.nn.Module):
    """Two independent quantized adds of different shapes and qparams: two delegates, four inputs, two outputs."""

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, z, w = args
        first = qdq(qdq(x, *QPARAMS[0]) + qdq(y, *QPARAMS[1]), *QPARAMS[2])
        second = qdq(qdq(z, 0.05, 0) + qdq(w, 0.01, 7), 0.03, -2)
        return first, second


def test_two_delegates_keep_their_own_payloads(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(3)
    args = (
        *(torch.randn(SHAPE, generator=generator) for _ in range(2)),
        *(torch.randn(2, 5, 3, generator=generator) for _ in range(2)),
    )
    lowered = lower(tmp_path, lambda q, shape: add_payload(q, shape).to_bytes(), TwoQuantizedAdds(), args)
    outputs = load_pte(lowered.pte)(*args)
    references = TwoQuantizedAdds()(*args)
    assert len(outputs) == 2
    for out, reference, scale in zip(outputs, references, (QPARAMS[2][0], 0.03), strict=True):
        assert out.shape == reference.shape
        assert ((out - reference).abs() / scale).max().item() <= 1 + 1e-4
    for out, emulated in zip(outputs, emulate(lowered.edge, *args), strict=True):
        assert torch.equal(out, emulated)


def test_executorch_runtime_api_runs_the_pte_unchanged(lowered: Lowered, inputs: tuple) -> None:
    register()
    from executorch.runtime import Runtime

    runtime = Runtime.get()
    assert "NeutronBackend" in runtime.backend_registry.registered_backend_names
    assert runtime.backend_registry.is_available("NeutronBackend")
    method = runtime.load_program(lowered.pte).load_method("forward")
    (out,) = method.execute(list(inputs))
    assert torch.equal(out, load_pte(lowered.pte)(*inputs)[0])


def test_register_twice_is_fine() -> None:
    register()
    register()
    from executorch.runtime import Runtime

    assert Runtime.get().backend_registry.registered_backend_names.count("NeutronBackend") == 1


def test_second_native_registration_is_reported_not_fatal() -> None:
    register()
    assert _host._library is not None
    # What a second copy of the shim (or NXP's runtime) registering the same name would hit.
    assert _host._library.neutron_shim_register() != 0


def test_deployable_payload_is_a_clean_error(tmp_path: Path, lowered: Lowered, inputs: tuple) -> None:
    bad = lower(tmp_path, lambda q, shape: deployable_payload().to_bytes())
    with pytest.raises(NeutronRuntimeError, match="deployable Neutron payload.*neutron_converter_flavor"):
        load_pte(bad.pte)
    with pytest.raises(ValueError, match="deployable"):
        emulate(bad.edge, *inputs)
    # The process is alive and the runtime still works.
    assert load_pte(lowered.pte)(*inputs)[0].shape == SHAPE


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:-7], "truncated|trailing|corrupted"),
        (lambda data: data[:20] + bytes([data[20] ^ 0xFF]) + data[21:], "corrupted|CRC"),
        (lambda data: b"garbage!" * 3, "not a payload"),
    ],
    ids=["truncated", "flipped-byte", "garbage"],
)
def test_corrupted_payload_is_a_clean_error(
    tmp_path: Path, lowered: Lowered, inputs: tuple, damage: Callable[[bytes], bytes], message: str
) -> None:
    bad = lower(tmp_path, lambda q, shape: damage(add_payload(q, shape).to_bytes()))
    with pytest.raises(NeutronRuntimeError, match=message):
        load_pte(bad.pte)
    assert load_pte(lowered.pte)(*inputs)[0].shape == SHAPE


def test_payload_not_matching_the_program_fails_at_execute(tmp_path: Path, lowered: Lowered, inputs: tuple) -> None:
    wrong_shape = (*SHAPE[:-1], SHAPE[-1] + 1)
    bad = lower(tmp_path, lambda q, shape: add_payload(q, wrong_shape).to_bytes())
    program = load_pte(bad.pte)
    with pytest.raises(NeutronRuntimeError, match=r"expected int8\[1, 3, 4, 6\], got int8\[1, 3, 4, 5\]"):
        program(*inputs)
    assert load_pte(lowered.pte)(*inputs)[0].shape == SHAPE


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.zeros(1, 3, 4, 4), torch.zeros(SHAPE)), r"input 0: expected shape \[1, 3, 4, 5\], got \[1, 3, 4, 4\]"),
        (
            (torch.zeros(SHAPE), torch.zeros(SHAPE, dtype=torch.float64)),
            "input 1: expected dtype torch.float32, got torch.float64",
        ),
        ((torch.zeros(SHAPE),), "expects 2 inputs, got 1"),
    ],
    ids=["shape", "dtype", "count"],
)
def test_wrong_inputs_raise_value_error(lowered: Lowered, args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_pte(lowered.pte)(*args)


def test_missing_method_is_a_value_error(lowered: Lowered) -> None:
    with pytest.raises(ValueError, match="no method 'predict'.*forward"):
        load_pte(lowered.pte, method_name="predict")


@pytest.mark.parametrize("channels_last", [True, False])
def test_execute_payload_matches_integer_reference(channels_last: bool) -> None:
    rng = np.random.default_rng(1)
    qparams = [(0.05, 0), (0.05, 0), (0.05, 0)]
    # Distinct shape per axis so a wrong permute cannot go unnoticed.
    shape = (1, 2, 3, 4)
    x = rng.integers(-60, 60, size=shape, dtype=np.int8)
    y = rng.integers(-60, 60, size=shape, dtype=np.int8)
    payload = add_payload(qparams, shape, channels_last=channels_last)
    (out,) = execute_payload(payload, [x, y])
    # Same scale everywhere and no saturation: the quantized sum is the integer sum.
    np.testing.assert_array_equal(out, x.astype(np.int16) + y)
    (again,) = execute_payload(PreparedPayload(payload), [x, y])
    np.testing.assert_array_equal(out, again)


def test_execute_payload_rejects_mismatched_inputs() -> None:
    payload = add_payload([(0.05, 0)] * 3, (1, 2, 3, 4))
    x = np.zeros((1, 2, 3, 4), np.int8)
    with pytest.raises(ValueError, match=r"delegate input 1: expected int8\[1, 2, 3, 4\], got float32"):
        execute_payload(payload, [x, x.astype(np.float32)])
    with pytest.raises(ValueError, match="got 1 inputs"):
        execute_payload(payload, [x])


def test_tensor_view_follows_dim_order() -> None:
    logical = np.arange(24, dtype=np.int8).reshape(1, 2, 3, 4)
    physical = np.ascontiguousarray(logical.transpose(0, 2, 3, 1))  # channels-last memory
    view = _host._tensor_view(physical.ctypes.data, np.dtype(np.int8), [1, 2, 3, 4], [0, 2, 3, 1], 24)
    np.testing.assert_array_equal(view, logical)
    view[0, 1, 2, 3] = -1  # writes go to the tensor's memory
    assert physical[0, 2, 3, 1] == -1
    with pytest.raises(ValueError, match="ExecuTorch reports 23"):
        _host._tensor_view(physical.ctypes.data, np.dtype(np.int8), [1, 2, 3, 4], [0, 1, 2, 3], 23)
    with pytest.raises(ValueError, match="no data"):
        _host._tensor_view(None, np.dtype(np.int8), [1, 2, 3, 4], [0, 1, 2, 3], 24)


def test_init_callback_survives_any_bytes() -> None:
    for data in (b"", b"NTRN", bytes(64), b"\xff" * 33):
        buffer = ctypes.create_string_buffer(data, len(data))
        assert _host._init(ctypes.addressof(buffer), len(data)) < 0
        assert _host.last_error()


def test_shim_build_is_cached() -> None:
    first = _build.shim_path()
    assert first.exists() and first.parent == _build.cache_dir()
    assert _build.shim_path() == first


def test_compiler_failure_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++;\n")
    monkeypatch.setattr(_build, "SHIM_SOURCE", broken)
    monkeypatch.setenv("NEUTRON_BACKEND_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="building the Neutron host runtime shim failed(.|\n)*error"):
        _build.shim_path()
    assert not list((tmp_path / "cache").glob("*.so"))  # no half-written library left behind
