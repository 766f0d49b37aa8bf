"""The exact engine (our int8 kernels) against LiteRT's reference kernels (BUILTIN_REF): bit for bit.

Where each family of cases is checked:
- every per-operator numerics case (`numerics.check_case`, used by test_lowering_numerics.py and test_ops_*.py) and
  every fuzz graph (`fuzz_graphs.check_graph`) compares the shim (exact engine, the default) with `emulate(...,
  kernels="reference")` and runs `cross_check` on random int8 delegate inputs;
- here: every zoo model (MobileNetV2 marked slow), freshly drawn fuzz graphs, and hand-built IR at the edges of the
  integer arithmetic (saturation, zero points at the range ends, tiny and huge scales, per-channel scales, odd
  padding), run batched and per sample.
"""

from __future__ import annotations

import copy
import functools
import os
import platform
import random

import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)
import numpy as np
import pytest
import torch
from ai_edge_litert import schema_py_generated as schema
from executorch.exir import to_edge_transform_and_lower
from fuzz_graphs import FuzzModel, SeededDraw, draw_case

from neutron_backend.compile_spec import generate_neutron_compile_spec
from neutron_backend.ir import IRBuilder
from neutron_backend.models import get_model
from neutron_backend.partitioner import NeutronPartitioner
from neutron_backend.payload import EmulationPayload, PayloadError, TensorSpec
from neutron_backend.quantizer.calibration import quantize_model, random_batches
from neutron_backend.runtime import PreparedPayload, cross_check, emulate, load_pte
from neutron_backend.runtime.cross_check import delegate_payloads
from neutron_backend.runtime.exact import ExactEngine, UnsupportedOperator, native
from neutron_backend.runtime.exact.fixed_point import quantize_multiplier
from neutron_backend.runtime.exact.gemm import Int8GemmRequantize
from neutron_backend.runtime.execute import ReferenceEngine

INT8_EXTREMES = np.array([-128, -127, -1, 0, 1, 126, 127], dtype=np.int8)


def _lower(model: torch.nn.Module, example: tuple[torch.Tensor, ...]):
    quantized = quantize_model(model.eval(), example, calibration_batches=random_batches(example, 3), progress=False)
    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700"))
    edge = to_edge_transform_and_lower(torch.export.export(quantized, example), partitioner=[partitioner])
    return edge, partitioner.report


@functools.cache
def _lowered_zoo(name: str):
    """The zoo model lowered once per test session (the tests below only read it)."""
    model, example = get_model(name)
    return (*_lower(model, example), example)


ZOO = ["cifarnet", "resnet8", "ds_cnn", "mobilenet_v1_vww", "autoencoder",
       pytest.param("mobilenet_v2", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_is_bit_identical(name: str) -> None:
    edge, report, example = _lowered_zoo(name)
    assert report.num_partitions >= 1
    result = cross_check(edge, [example[0]] if len(example) == 1 else list(example), random_samples=4)
    assert result.identical, f"{name}: {result}"
    assert result.delegates == report.num_partitions


@pytest.mark.parametrize("name", ["resnet8", "ds_cnn"])
def test_zoo_model_is_bit_identical_on_torchs_int8_gemm(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GEMM path of hosts without AVX-512 VNNI (this host runs the compiled one by default)."""
    monkeypatch.setenv("NEUTRON_EXACT_GEMM", "torch")
    edge, report, example = _lowered_zoo(name)
    result = cross_check(edge, [example[0]] if len(example) == 1 else list(example), random_samples=4)
    assert result.identical, f"{name}: {result}"


def test_batched_run_equals_one_sample_at_a_time() -> None:
    edge, _, _ = _lowered_zoo("resnet8")
    (payload,) = delegate_payloads(edge)
    exact, reference = PreparedPayload(payload, "exact"), PreparedPayload(payload, "reference")
    assert exact.engine.batch_reason is None  # the whole batch goes through each operator at once
    rng = np.random.default_rng(3)
    (spec,) = payload.inputs
    batch = rng.integers(-128, 128, size=(7, *spec.shape[1:]), dtype=np.int8)
    (together,) = exact.run([batch])
    one_by_one = np.concatenate([reference.run([batch[i:i + 1]])[0] for i in range(7)])
    assert together.shape == (7, *payload.outputs[0].shape[1:])
    assert np.array_equal(together, one_by_one)


def test_the_shim_and_emulate_run_the_engine_they_are_given(tmp_path) -> None:
    kept, _, example = _lowered_zoo("cifarnet")
    pte = tmp_path / "model.pte"
    pte.write_bytes(copy.deepcopy(kept).to_executorch().buffer)  # to_executorch() mutates the edge program
    exact, reference = load_pte(pte), load_pte(pte, kernels="reference")
    assert (exact.kernels, reference.kernels) == ("exact", "reference")
    x = example[0]
    outputs = [exact(x)[0], reference(x)[0], emulate(kept, x)[0], emulate(kept, x, kernels="reference")[0]]
    assert all(torch.equal(outputs[0], other) for other in outputs[1:])
    with pytest.raises(ValueError, match="kernels='fast' is not an engine; valid: exact, reference"):
        load_pte(pte, kernels="fast")


# -- fuzz graphs ------------------------------------------------------------------------------------------------


FUZZ_GRAPHS = 6


def test_random_graphs_are_bit_identical() -> None:
    """Fresh seeds each run, as tests/test_fuzz.py (NEUTRON_FUZZ_SEED reproduces a run)."""
    first = int(os.environ.get("NEUTRON_FUZZ_SEED", random.SystemRandom().randrange(10**6, 10**9)))
    print(f"exact-engine fuzz seeds {first}..{first + FUZZ_GRAPHS - 1}")
    compared = 0
    for seed in range(first, first + FUZZ_GRAPHS):
        case = draw_case(SeededDraw(seed))
        example = (torch.randn(case.shape, generator=torch.Generator().manual_seed(0)),)
        edge, report = _lower(FuzzModel(case.steps), example)
        if report.num_partitions == 0:  # nothing delegated: nothing for the engines to disagree on
            continue
        compared += 1
        result = cross_check(edge, list(example), random_samples=3)
        assert result.identical, f"seed {seed}: {case}: {result}"
    # The fuzz soak delegates about 80% of drawn operators, so a graph without any delegate is rare; with fewer
    # than half of the graphs compared, this test would be checking next to nothing.
    assert compared >= FUZZ_GRAPHS // 2, f"only {compared} of {FUZZ_GRAPHS} graphs had a Neutron delegate"


# -- hand-built IR at the edges ---------------------------------------------------------------------------------


def _payload(build) -> EmulationPayload:
    """A one-input, one-output payload from ``build(ir) -> (input shape, input qparams, output id)``."""
    ir = IRBuilder("edge case")
    shape, (scale, zp), output = build(ir)
    ir.set_inputs([0])
    ir.set_outputs([output])
    out_shape = ir.tensor_shape(output)
    out_scale, out_zp = ir.tensor_quantization(output)
    return EmulationPayload(inputs=(TensorSpec(tuple(shape), "int8", scale, zp, False, 0),),
                            outputs=(TensorSpec(tuple(out_shape), "int8", out_scale, out_zp, False, 0),),
                            tflite=ir.finish(), target="imxrt700")


def _inputs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random int8 with every extreme value present, batch 3 on top of the model's batch of 1."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, size=(3, *shape[1:]), dtype=np.int8)
    flat = x.reshape(-1)
    flat[: len(INT8_EXTREMES)] = INT8_EXTREMES[: flat.size]
    return x


def _assert_identical(payload: EmulationPayload, seed: int = 0) -> np.ndarray:
    exact, reference = ExactEngine(payload.tflite), ReferenceEngine(payload.tflite)
    x = _inputs(payload.inputs[0].shape, seed)
    (got,) = exact.run([x])
    (want,) = reference.run([x])
    assert got.dtype == want.dtype == np.int8
    assert np.array_equal(got, want), f"{np.count_nonzero(got != want)} of {want.size} differ"
    return want


def _conv(in_scale: float, in_zp: int, w_scales: list[float], out_scale: float, out_zp: int,
          activation: int = schema.ActivationFunctionType.NONE, padding: int = schema.Padding.VALID,
          stride: int = 1, seed: int = 0) -> EmulationPayload:
    def build(ir: IRBuilder):
        rng = np.random.default_rng(seed)
        channels = len(w_scales)
        ir.add_tensor("x", (1, 7, 6, 5), "int8", scale=in_scale, zero_point=in_zp)
        weights = rng.integers(-127, 128, size=(channels, 3, 3, 5), dtype=np.int8)
        weights[0] = 127  # saturates
        w = ir.add_constant("w", weights, scale=w_scales, zero_point=0)
        bias = rng.integers(-5000, 5000, size=channels).astype(np.int32)
        b = ir.add_constant("b", bias, scale=[in_scale * s for s in w_scales], zero_point=0)
        out_h = (7 + stride - 1) // stride if padding == schema.Padding.SAME else (7 - 3) // stride + 1
        out_w = (6 + stride - 1) // stride if padding == schema.Padding.SAME else (6 - 3) // stride + 1
        y = ir.add_tensor("y", (1, out_h, out_w, channels), "int8", scale=out_scale, zero_point=out_zp)
        options = schema.Conv2DOptionsT()
        options.padding, options.strideH, options.strideW = padding, stride, stride
        options.fusedActivationFunction = activation
        ir.add_operator("CONV_2D", [0, w, b], [y], options)
        return (1, 7, 6, 5), (in_scale, in_zp), y

    return _payload(build)


@pytest.mark.parametrize(("in_zp", "out_zp"), [(-128, -128), (127, 127), (-128, 127), (0, 0)])
def test_conv_saturates_at_the_int8_range_ends(in_zp: int, out_zp: int) -> None:
    want = _assert_identical(_conv(0.05, in_zp, [0.01, 0.02, 0.004], 0.02, out_zp))
    assert want.min() == -128 or want.max() == 127  # a range end is reached, so saturation is exercised


def test_conv_per_channel_tiny_and_huge_scales() -> None:
    # 1e-30 flushes the multiplier to 0 (shift < -31); 1e3 needs a left shift; 1e-6 a right shift by ~30.
    _assert_identical(_conv(0.05, 3, [1e-30, 1e3, 1e-6, 0.01], 0.05, -5))


@pytest.mark.parametrize("activation", [schema.ActivationFunctionType.RELU, schema.ActivationFunctionType.RELU6,
                                        schema.ActivationFunctionType.RELU_N1_TO_1])
def test_conv_fused_activation_same_padding_stride_2(activation: int) -> None:
    _assert_identical(_conv(0.03, -7, [0.01, 0.02], 0.04, -20, activation, schema.Padding.SAME, 2))


def _depthwise(in_shape: tuple[int, int, int, int], multiplier: int, kernel: int, stride: int, dilation: int,
               padding: int, in_zp: int, out_zp: int, seed: int = 0) -> EmulationPayload:
    def build(ir: IRBuilder):
        rng = np.random.default_rng(seed)
        channels = in_shape[3] * multiplier
        ir.add_tensor("x", in_shape, "int8", scale=0.05, zero_point=in_zp)
        weights = rng.integers(-127, 128, size=(1, kernel, kernel, channels), dtype=np.int8)
        weights[..., 0] = 127  # saturates
        scales = list(rng.uniform(0.002, 0.02, channels))
        w = ir.add_constant("w", weights, scale=scales, zero_point=[0] * channels, quantized_dimension=3)
        bias = rng.integers(-5000, 5000, size=channels).astype(np.int32)
        b = ir.add_constant("b", bias, scale=[0.05 * s for s in scales], zero_point=[0] * channels)
        effective = (kernel - 1) * dilation + 1
        out_h, out_w = ((d + stride - 1) // stride if padding == schema.Padding.SAME else (d - effective) // stride + 1
                        for d in in_shape[1:3])
        y = ir.add_tensor("y", (1, out_h, out_w, channels), "int8", scale=0.1, zero_point=out_zp)
        options = schema.DepthwiseConv2DOptionsT()
        options.padding, options.strideH, options.strideW = padding, stride, stride
        options.dilationHFactor = options.dilationWFactor = dilation
        options.depthMultiplier = multiplier
        ir.add_operator("DEPTHWISE_CONV_2D", [0, w, b], [y], options)
        return in_shape, (0.05, in_zp), y

    return _payload(build)


# 37 channels: two 16-lane blocks and a tail; multiplier 2 takes the general loop; dilation 2 with SAME padding.
@pytest.mark.parametrize(("in_shape", "multiplier", "kernel", "stride", "dilation", "padding"), [
    ((1, 9, 8, 37), 1, 3, 1, 1, schema.Padding.SAME),
    ((1, 9, 8, 37), 1, 3, 2, 1, schema.Padding.SAME),
    ((1, 9, 8, 16), 1, 5, 1, 2, schema.Padding.SAME),
    ((1, 7, 7, 5), 2, 3, 1, 1, schema.Padding.VALID),
    ((1, 6, 10, 20), 1, 3, 2, 1, schema.Padding.VALID),
])
@pytest.mark.parametrize(("in_zp", "out_zp"), [(-128, 127), (127, -128), (3, -5)])
def test_depthwise_conv_geometries(in_shape, multiplier, kernel, stride, dilation, padding, in_zp, out_zp) -> None:
    _assert_identical(_depthwise(in_shape, multiplier, kernel, stride, dilation, padding, in_zp, out_zp))


def _int64_requantize(acc: np.ndarray, multipliers: np.ndarray, shifts: np.ndarray, single_rounding: bool
                      ) -> np.ndarray:
    """TFLite's two roundings on int64, written out here: an oracle independent of the compiled kernels."""
    if single_rounding:
        total = 31 - shifts
        result = (acc * multipliers + (np.int64(1) << (total - 1))) >> total
        return (result + 2**31) % 2**32 - 2**31  # the C++ cast to int32
    left, right = np.maximum(shifts, 0), np.maximum(-shifts, 0)
    shifted = ((acc << left) + 2**31) % 2**32 - 2**31  # int32 wrap
    high = (shifted * multipliers + 2**30) >> 31  # never saturates: multipliers < 2^31
    mask = (np.int64(1) << right) - 1
    return (high >> right) + ((high & mask) > ((mask >> 1) + (high < 0)))


@pytest.mark.parametrize("gemm", ["native", "torch"])
def test_int8_gemm_requantize_matches_int64_arithmetic(gemm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both GEMM paths (compiled VNNI tiles where the host has them, torch's int8 GEMM otherwise) on shapes
    around their tile sizes (4 rows, 16/64 channels, depth in groups of 4), multipliers needing left and right
    shifts, offsets pushing sums past int32, and clamped output ranges."""
    monkeypatch.setenv("NEUTRON_EXACT_GEMM", gemm)
    rng = np.random.default_rng(5)
    for trial in range(120):
        rows, depth, channels = int(rng.integers(1, 11)), int(rng.integers(1, 140)), int(rng.integers(1, 140))
        x = rng.integers(-128, 128, (rows, depth)).astype(np.int8)
        w = rng.integers(-128, 128, (channels, depth)).astype(np.int8)
        if trial % 7 == 0:
            x[:], w[:] = -128, -128  # the largest sums
        pairs = [quantize_multiplier(v) for v in rng.uniform(1e-7, 1e-3, channels) * (1e5 if trial % 5 == 0 else 1)]
        multipliers = np.array([p[0] for p in pairs], dtype=np.int64)
        shifts = np.array([p[1] for p in pairs], dtype=np.int64)
        offset = rng.integers(-5000, 5000, channels) * (10**5 if trial % 4 == 0 else 1)
        zero_point = int(rng.integers(-128, 128))
        low, high = (-128, 127) if trial % 2 else sorted(int(v) for v in rng.integers(-128, 128, 2))
        for single_rounding in (False, True):
            acc = (x.astype(np.int64) @ w.astype(np.int64).T + offset + 2**31) % 2**32 - 2**31
            want = np.clip(_int64_requantize(acc, multipliers, shifts, single_rounding) + zero_point, low, high)
            got = Int8GemmRequantize(w, offset, multipliers, shifts, zero_point, low, high, single_rounding)(x)
            assert np.array_equal(got, want), f"trial {trial}, single rounding {single_rounding}"


def test_portable_kernels_equal_the_vectorized_ones() -> None:
    """The loops a host without AVX-512 runs (a baseline x86-64-v2 build of the same source) against the
    host's build, on the depthwise convolution and the requantization."""
    if platform.machine() != "x86_64":
        pytest.skip("the baseline build is an x86-64 one")
    host, portable = native.library(), native.library("x86-64-v2")
    assert portable.nb_has_gemm() == 0
    rng = np.random.default_rng(2)
    channels = 37
    acc = rng.integers(-2**31, 2**31, (50, channels)).astype(np.int32)
    offset = rng.integers(-10**6, 10**6, channels).astype(np.int32)
    pairs = [quantize_multiplier(v) for v in rng.uniform(1e-8, 50, channels)]
    multipliers = np.array([p[0] for p in pairs], dtype=np.int32)
    shifts = np.array([p[1] for p in pairs], dtype=np.int32)
    x = rng.integers(-128, 128, (2, 9, 8, channels)).astype(np.int8)
    weight = rng.integers(-128, 128, (3, 3, channels)).astype(np.int8)
    packed = np.empty(-(-channels // 32) * 5 * 64, dtype=np.int16)
    host.nb_depthwise_pack(native.pointer(weight), 9, channels, native.pointer(packed))
    outputs = []
    for library in (host, portable):
        requantized = np.empty(acc.shape, dtype=np.int8)
        library.nb_requantize(native.pointer(acc), 50, channels, native.pointer(offset), native.pointer(multipliers),
                              native.pointer(shifts), 0, -3, -100, 120, native.pointer(requantized))
        convolved = np.empty((2, 7, 6, channels), dtype=np.int8)
        assert library.nb_depthwise_conv(
            native.pointer(x), 2, 9, 8, channels, native.pointer(weight), native.pointer(packed), 3, 3, 1, 1, 1,
            1, 1, 7, 6,
            native.pointer(offset), native.pointer(multipliers), native.pointer(shifts), -3, -100, 120,
            native.pointer(convolved)) == 0
        outputs.append((requantized, convolved))
    want = np.clip(_int64_requantize(acc.astype(np.int64) + offset, multipliers.astype(np.int64),
                                     shifts.astype(np.int64), False) - 3, -100, 120)
    assert np.array_equal(outputs[0][0], want) and np.array_equal(outputs[1][0], want)
    assert np.array_equal(outputs[0][1], outputs[1][1])


def test_large_batches_run_in_cache_sized_steps() -> None:
    edge, _, _ = _lowered_zoo("resnet8")
    (payload,) = delegate_payloads(edge)
    exact, reference = PreparedPayload(payload, "exact"), PreparedPayload(payload, "reference")
    exact.engine.step = 3  # 7 images: steps of 3, 3 and 1
    (spec,) = payload.inputs
    batch = np.random.default_rng(4).integers(-128, 128, size=(7, *spec.shape[1:]), dtype=np.int8)
    (stepped,) = exact.run([batch])
    assert np.array_equal(stepped, np.concatenate([reference.run([batch[i:i + 1]])[0] for i in range(7)]))


SAME, VALID = schema.Padding.SAME, schema.Padding.VALID


@pytest.mark.parametrize(("op", "padding", "size", "stride"),
                         [("AVERAGE_POOL_2D", SAME, 3, 2), ("AVERAGE_POOL_2D", SAME, 2, 2),
                          ("AVERAGE_POOL_2D", VALID, 3, 3), ("MAX_POOL_2D", SAME, 3, 2), ("MAX_POOL_2D", SAME, 2, 3)])
def test_pooling_with_odd_padding(op: str, padding: int, size: int, stride: int) -> None:
    def build(ir: IRBuilder):
        ir.add_tensor("x", (1, 7, 8, 3), "int8", scale=0.1, zero_point=-3)
        out = ((7 + stride - 1) // stride, (8 + stride - 1) // stride) if padding == schema.Padding.SAME else (
            (7 - size) // stride + 1, (8 - size) // stride + 1)
        y = ir.add_tensor("y", (1, *out, 3), "int8", scale=0.1, zero_point=-3)
        options = schema.Pool2DOptionsT()
        options.padding, options.strideH, options.strideW = padding, stride, stride
        options.filterHeight = options.filterWidth = size
        ir.add_operator(op, [0], [y], options)
        return (1, 7, 8, 3), (0.1, -3), y

    _assert_identical(_payload(build))


def _binary(op: str, a: tuple[float, int], b: tuple[float, int], out: tuple[float, int]) -> EmulationPayload:
    def build(ir: IRBuilder):
        ir.add_tensor("x", (1, 16, 16), "int8", scale=a[0], zero_point=a[1])
        # The constant holds every int8 value along its rows, so all 256 x 256 pairs meet.
        other = ir.add_constant("c", np.arange(-128, 128, dtype=np.int8).reshape(1, 16, 16).transpose(0, 2, 1),
                                scale=b[0], zero_point=b[1])
        y = ir.add_tensor("y", (1, 16, 16), "int8", scale=out[0], zero_point=out[1])
        options = {"ADD": schema.AddOptionsT, "SUB": schema.SubOptionsT, "MUL": schema.MulOptionsT}[op]()
        ir.add_operator(op, [0, other], [y], options)
        return (1, 16, 16), a, y

    return _payload(build)


@pytest.mark.parametrize("op", ["ADD", "SUB", "MUL"])
@pytest.mark.parametrize(("a", "b", "out"), [((0.1, 0), (0.1, 0), (0.2, 0)), ((1e-4, -128), (3.0, 127), (0.5, 5)),
                                             ((0.02, 127), (0.0005, -128), (1e-3, -128))])
def test_binary_ops_over_every_pair_of_values(op: str, a, b, out) -> None:
    payload = _binary(op, a, b, out)
    exact, reference = ExactEngine(payload.tflite), ReferenceEngine(payload.tflite)
    x = np.stack([np.arange(-128, 128, dtype=np.int8).reshape(16, 16)] * 16)[:, None].reshape(16, 16, 16)
    (got,) = exact.run([x])
    (want,) = reference.run([x])
    assert np.array_equal(got, want)


@pytest.mark.parametrize(("op", "in_q", "out_q", "options"), [
    ("LOGISTIC", (0.05, 3), (1 / 256, -128), None), ("TANH", (0.03, -10), (1 / 128, 0), None),
    ("HARD_SWISH", (0.05, -20), (0.03, -100), None), ("HARD_SWISH", (0.5, 100), (0.01, 0), None),
    ("EXP", (0.02, 0), (0.05, -128), None), ("LOG", (0.1, -128), (0.03, 30), None),
    ("RSQRT", (0.01, -128), (0.2, -128), None), ("ABS", (0.1, 7), (0.05, -128), None),
    ("RELU", (0.1, 10), (0.05, -128), None), ("RELU6", (0.1, 10), (0.03, -128), None),
    ("RELU_0_TO_1", (0.01, 0), (0.005, -128), None), ("RELU_N1_TO_1", (0.02, 0), (0.01, 0), None),
    ("LEAKY_RELU", (0.1, -5), (0.08, 20), 0.01), ("LEAKY_RELU", (0.1, 0), (0.1, 0), 2.5),
    ("SOFTMAX", (0.1, 5), (1 / 256, -128), 1.0), ("SOFTMAX", (0.02, -100), (1 / 256, -128), 1.0),
])
def test_unary_ops_over_every_value(op: str, in_q, out_q, options) -> None:
    def build(ir: IRBuilder):
        ir.add_tensor("x", (1, 16, 16), "int8", scale=in_q[0], zero_point=in_q[1])
        y = ir.add_tensor("y", (1, 16, 16), "int8", scale=out_q[0], zero_point=out_q[1])
        option = None
        if op == "LEAKY_RELU":
            option = schema.LeakyReluOptionsT()
            option.alpha = options
        elif op == "SOFTMAX":
            option = schema.SoftmaxOptionsT()
            option.beta = options
        ir.add_operator(op, [0], [y], option)
        return (1, 16, 16), in_q, y

    payload = _payload(build)
    exact, reference = ExactEngine(payload.tflite), ReferenceEngine(payload.tflite)
    every_value = np.arange(-128, 128, dtype=np.int8).reshape(1, 16, 16)
    shuffled = np.random.default_rng(0).permutation(every_value.reshape(-1)).reshape(1, 16, 16)
    x = np.concatenate([every_value, shuffled])
    if op in ("RSQRT", "LOG"):
        x = np.maximum(x, in_q[1]).astype(np.int8)
    (got,) = exact.run([x])
    (want,) = reference.run([x])
    assert np.array_equal(got, want), f"{op}: {np.count_nonzero(got != want)} of {want.size} differ"


def test_an_operator_without_a_kernel_is_refused_with_the_way_out() -> None:
    def build(ir: IRBuilder):
        ir.add_tensor("x", (1, 4), "int8", scale=0.1, zero_point=0)
        y = ir.add_tensor("y", (1, 4), "int8", scale=0.1, zero_point=0)
        ir.add_operator("NEG", [0], [y])
        return (1, 4), (0.1, 0), y

    payload = _payload(build)
    with pytest.raises(UnsupportedOperator, match=r"operator 0 \(NEG\) has no kernel .* kernels='reference'"):
        PreparedPayload(payload)
    assert PreparedPayload(payload, "reference").run([np.zeros((1, 4), np.int8)])[0].shape == (1, 4)
    with pytest.raises(ValueError, match="kernels='fast' is not an engine"):
        PreparedPayload(payload, "fast")


def test_a_corrupted_model_is_a_payload_error() -> None:
    with pytest.raises(PayloadError):
        ExactEngine(b"\x00\x00\x00\x00TFL3" + b"\xff" * 40)
