"""Neutron IR builder: tiny int8 models run through LiteRT's reference kernels against float math."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ai_edge_litert import schema_py_generated as schema

from neutron_backend.ir import (
    NCHW_TO_NHWC,
    NHWC_TO_NCHW,
    IRBuilder,
    channels_first_perm,
    conv_weight_to_ohwi,
    run_tflite,
    to_channels_first_shape,
    to_channels_last_shape,
)

RNG_SEED = 1234


def dequantize(q: np.ndarray, scale: float | np.ndarray, zero_point: int) -> np.ndarray:
    return (q.astype(np.float64) - zero_point) * scale


def quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)


def qparams_for(x: np.ndarray) -> tuple[float, int]:
    """Asymmetric int8 parameters covering exactly the range of ``x`` (so outputs span the int8 range)."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0
    return scale, int(np.clip(round(-128 - lo / scale), -128, 127))


def random_int8(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


def assert_within_one_step(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == np.int8
    assert got.shape == expected.shape
    diff = np.abs(got.astype(np.int32) - expected.astype(np.int32))
    assert diff.max() <= 1, f"max difference {diff.max()} quantization steps"
    # Guard against a degenerate test: the expected output must use a good part of the int8 range.
    assert int(expected.max()) - int(expected.min()) > 100


def read_model(model: bytes) -> schema.ModelT:
    return schema.ModelT.InitFromObj(schema.Model.GetRootAs(model, 0))


def test_add_with_different_qparams() -> None:
    rng = np.random.default_rng(RNG_SEED)
    a_q, b_q = random_int8(rng, (1, 4, 4, 3)), random_int8(rng, (1, 4, 4, 3))
    a_s, a_zp, b_s, b_zp = 0.05, 10, 0.03, -20
    expected_f = dequantize(a_q, a_s, a_zp) + dequantize(b_q, b_s, b_zp)
    out_s, out_zp = qparams_for(expected_f)

    ir = IRBuilder()
    a = ir.add_tensor("a", a_q.shape, "int8", scale=a_s, zero_point=a_zp)
    b = ir.add_tensor("b", b_q.shape, "int8", scale=b_s, zero_point=b_zp)
    out = ir.add_tensor("out", a_q.shape, "int8", scale=out_s, zero_point=out_zp)
    ir.add_operator("ADD", [a, b], [out], schema.AddOptionsT())
    ir.set_inputs([a, b])
    ir.set_outputs([out])

    (got,) = run_tflite(ir.finish(), [a_q, b_q])
    assert_within_one_step(got, quantize(expected_f, out_s, out_zp))


def test_conv2d_per_channel_weights_and_int32_bias() -> None:
    rng = np.random.default_rng(RNG_SEED)
    x_nchw = random_int8(rng, (1, 3, 7, 7))
    x_s, x_zp = 0.04, -5
    w_oihw = rng.integers(-127, 128, size=(4, 3, 3, 3), dtype=np.int8)
    w_s = np.array([0.01, 0.02, 0.005, 0.03])
    bias_f = np.array([0.5, -1.0, 0.25, 2.0])
    bias_s = x_s * w_s
    bias_q = np.round(bias_f / bias_s).astype(np.int32)

    expected_f = torch.nn.functional.conv2d(
        torch.from_numpy(dequantize(x_nchw, x_s, x_zp)),
        torch.from_numpy(dequantize(w_oihw, w_s[:, None, None, None], 0)),
        torch.from_numpy(bias_q * bias_s),
        stride=1,
        padding=1,
    ).numpy()
    out_s, out_zp = qparams_for(expected_f)

    ir = IRBuilder()
    x = ir.add_tensor("x", to_channels_last_shape(x_nchw.shape), "int8", scale=x_s, zero_point=x_zp)
    w = ir.add_constant("w", conv_weight_to_ohwi(w_oihw), scale=list(w_s), zero_point=0)
    b = ir.add_constant("b", bias_q, "int32", scale=list(bias_s), zero_point=[0, 0, 0, 0])
    out_shape = to_channels_last_shape(expected_f.shape)
    out = ir.add_tensor("out", out_shape, "int8", scale=out_s, zero_point=out_zp)
    options = schema.Conv2DOptionsT()
    options.padding = schema.Padding.SAME
    options.strideW = options.strideH = 1
    ir.add_operator("CONV_2D", [x, w, b], [out], options)
    ir.set_inputs([x])
    ir.set_outputs([out])
    assert ir.tensor_shape(w) == (4, 3, 3, 3)
    assert ir.tensor_shape(out) == (1, 7, 7, 4)

    (got,) = run_tflite(ir.finish(), [np.transpose(x_nchw, NCHW_TO_NHWC).copy()])
    assert_within_one_step(np.transpose(got, NHWC_TO_NCHW), quantize(expected_f, out_s, out_zp))


def test_fully_connected_keep_num_dims() -> None:
    rng = np.random.default_rng(RNG_SEED)
    x_q = random_int8(rng, (2, 3, 8))
    x_s, x_zp = 0.05, 7
    w_q = rng.integers(-127, 128, size=(5, 8), dtype=np.int8)
    w_s = 0.02
    bias_q = np.array([100, -200, 0, 300, -50], dtype=np.int32)
    expected_f = dequantize(x_q, x_s, x_zp) @ dequantize(w_q, w_s, 0).T + bias_q * (x_s * w_s)
    out_s, out_zp = qparams_for(expected_f)

    ir = IRBuilder()
    x = ir.add_tensor("x", x_q.shape, "int8", scale=x_s, zero_point=x_zp)
    w = ir.add_constant("w", w_q, scale=w_s, zero_point=0)
    b = ir.add_constant("b", bias_q, scale=x_s * w_s, zero_point=0)
    out = ir.add_tensor("out", (2, 3, 5), "int8", scale=out_s, zero_point=out_zp)
    options = schema.FullyConnectedOptionsT()
    options.keepNumDims = True
    ir.add_operator("FULLY_CONNECTED", [x, w, b], [out], options)
    ir.set_inputs([x])
    ir.set_outputs([out])

    (got,) = run_tflite(ir.finish(), [x_q])
    assert_within_one_step(got, quantize(expected_f, out_s, out_zp))


def test_fully_connected_without_bias_uses_optional_input() -> None:
    rng = np.random.default_rng(RNG_SEED)
    x_q = random_int8(rng, (4, 8))
    w_q = rng.integers(-127, 128, size=(6, 8), dtype=np.int8)
    expected_f = dequantize(x_q, 0.05, 0) @ dequantize(w_q, 0.02, 0).T
    out_s, out_zp = qparams_for(expected_f)

    ir = IRBuilder()
    x = ir.add_tensor("x", x_q.shape, "int8", scale=0.05, zero_point=0)
    w = ir.add_constant("w", w_q, scale=0.02)
    out = ir.add_tensor("out", (4, 6), "int8", scale=out_s, zero_point=out_zp)
    ir.add_operator("FULLY_CONNECTED", [x, w, -1], [out], schema.FullyConnectedOptionsT())
    ir.set_inputs([x])
    ir.set_outputs([out])

    (got,) = run_tflite(ir.finish(), [x_q])
    assert_within_one_step(got, quantize(expected_f, out_s, out_zp))


@pytest.mark.parametrize(
    ("op", "perm_or_shape", "out_shape"),
    [("RESHAPE", (1, 6, 4), (1, 6, 4)), ("TRANSPOSE", (0, 2, 3, 1), (1, 3, 4, 2))],
)
def test_reshape_and_transpose_are_exact(op: str, perm_or_shape: tuple[int, ...], out_shape: tuple) -> None:
    rng = np.random.default_rng(RNG_SEED)
    x_q = random_int8(rng, (1, 2, 3, 4))
    ir = IRBuilder()
    x = ir.add_tensor("x", x_q.shape, "int8", scale=0.1, zero_point=-3)
    param = ir.add_constant("param", np.array(perm_or_shape), "int32")
    out = ir.add_tensor("out", out_shape, "int8", scale=0.1, zero_point=-3)
    ir.add_operator(op, [x, param], [out])
    ir.set_inputs([x])
    ir.set_outputs([out])

    (got,) = run_tflite(ir.finish(), [x_q])
    expected = x_q.reshape(out_shape) if op == "RESHAPE" else np.transpose(x_q, perm_or_shape)
    np.testing.assert_array_equal(got, expected)
    assert_within_one_step(got, expected)


def test_max_pool_2d() -> None:
    rng = np.random.default_rng(RNG_SEED)
    x_nhwc = random_int8(rng, (1, 6, 6, 3))
    expected_f = torch.nn.functional.max_pool2d(
        torch.from_numpy(dequantize(np.transpose(x_nhwc, NHWC_TO_NCHW), 0.1, 4)), kernel_size=2, stride=2
    ).numpy()

    ir = IRBuilder()
    x = ir.add_tensor("x", x_nhwc.shape, "int8", scale=0.1, zero_point=4)
    out = ir.add_tensor("out", (1, 3, 3, 3), "int8", scale=0.1, zero_point=4)
    options = schema.Pool2DOptionsT()
    options.padding = schema.Padding.VALID
    options.strideW = options.strideH = options.filterWidth = options.filterHeight = 2
    ir.add_operator("MAX_POOL_2D", [x], [out], options)
    ir.set_inputs([x])
    ir.set_outputs([out])

    (got,) = run_tflite(ir.finish(), [x_nhwc])
    assert_within_one_step(np.transpose(got, NHWC_TO_NCHW), quantize(expected_f, 0.1, 4))


def test_softmax() -> None:
    x_q = np.array([np.linspace(-128, 127, 12).round(), np.linspace(60, -60, 12).round()], dtype=np.int8)
    x_s, x_zp = 0.03, 0
    expected_f = torch.softmax(torch.from_numpy(dequantize(x_q, x_s, x_zp)), dim=-1).numpy()

    ir = IRBuilder()
    x = ir.add_tensor("x", x_q.shape, "int8", scale=x_s, zero_point=x_zp)
    out = ir.add_tensor("out", x_q.shape, "int8", scale=1 / 256, zero_point=-128)
    options = schema.SoftmaxOptionsT()
    options.beta = 1.0
    ir.add_operator("SOFTMAX", [x], [out], options)
    ir.set_inputs([x])
    ir.set_outputs([out])

    (got,) = run_tflite(ir.finish(), [x_q])
    assert_within_one_step(got, quantize(expected_f, 1 / 256, -128))


def test_model_structure() -> None:
    ir = IRBuilder("structure test")
    a = ir.add_tensor("a", (1, 4), "int8", scale=0.1, zero_point=0)
    c = ir.add_constant("c", np.arange(4, dtype=np.int8).reshape(1, 4), scale=0.1, zero_point=0)
    bias = ir.add_constant("bias", np.arange(3, dtype=np.int32))
    t1 = ir.add_tensor("t1", (1, 4), "int8", scale=0.1, zero_point=0)
    t2 = ir.add_tensor("t2", (1, 4), "int8", scale=0.1, zero_point=0)
    t3 = ir.add_tensor("t3", (1, 4), "int8", scale=0.1, zero_point=0)
    ir.add_operator("ADD", [a, c], [t1], schema.AddOptionsT())
    ir.add_operator("ADD", [t1, c], [t2], schema.AddOptionsT())
    ir.add_operator("RELU_0_TO_1", [t2], [t3])
    ir.set_inputs([a])
    ir.set_outputs([t3])
    data = ir.finish()

    assert data[4:8] == b"TFL3"
    model = read_model(data)
    assert model.version == 3
    assert model.description == b"structure test"
    assert len(model.subgraphs) == 1
    # Buffer 0 is the empty sentinel; only the two constants own a buffer.
    assert model.buffers[0].data is None
    assert len(model.buffers) == 3
    tensors = model.subgraphs[0].tensors
    assert [t.buffer for t in tensors] == [0, 1, 2, 0, 0, 0]
    # Constant data starts on a 16-byte boundary of the file.
    packed = schema.Model.GetRootAs(data, 0)
    for index in (c, bias):
        buffer = packed.Buffers(tensors[index].buffer)
        assert buffer.DataLength() > 0
        assert buffer._tab.Vector(buffer._tab.Offset(4)) % 16 == 0
    # Operator codes are deduplicated; codes past 127 keep the placeholder in the deprecated field.
    codes = [(op.builtinCode, op.deprecatedBuiltinCode) for op in model.operatorCodes]
    assert codes == [(schema.BuiltinOperator.ADD, schema.BuiltinOperator.ADD), (152, 127)]
    ops = model.subgraphs[0].operators
    assert [op.opcodeIndex for op in ops] == [0, 0, 1]
    assert ops[0].builtinOptionsType == schema.BuiltinOptions.AddOptions
    assert ops[2].builtinOptionsType == schema.BuiltinOptions.NONE


def test_per_channel_zero_point_broadcast_and_dimension() -> None:
    ir = IRBuilder()
    w = ir.add_constant(
        "w", np.zeros((2, 3), np.int8), scale=[0.1, 0.2, 0.3], zero_point=0, quantized_dimension=1
    )
    out = ir.add_tensor("o", (2, 3), "int8")
    ir.set_outputs([out])
    quant = read_model(ir.finish()).subgraphs[0].tensors[w].quantization
    assert list(quant.zeroPoint) == [0, 0, 0]
    assert quant.quantizedDimension == 1
    np.testing.assert_allclose(quant.scale, [0.1, 0.2, 0.3], rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (2,), "dtype": "float16"}, "dtype 'float16' is not supported"),
        ({"shape": (2, 2), "dtype": "int8", "data": np.zeros((4,), np.int8)}, "does not match tensor shape"),
        ({"shape": (2,), "dtype": "int8", "data": np.array([1, 200])}, "does not fit int8"),
        ({"shape": (3, 2), "dtype": "int8", "scale": [0.1, 0.2]}, "2 per-channel scales"),
        ({"shape": (2, 2), "dtype": "int8", "scale": [0.1, 0.2], "zero_point": [0, 0, 0]}, "3 zero points"),
        ({"shape": (2,), "dtype": "int8", "scale": [0.1, 0.2], "quantized_dimension": 1}, "out of range"),
        ({"shape": (2,), "dtype": "int8", "scale": 0.0}, "must be finite and > 0"),
        ({"shape": (2,), "dtype": "int8", "scale": 0.1, "zero_point": 128}, "outside the int8 range"),
        ({"shape": (2,), "dtype": "int8", "zero_point": 1}, "without a scale"),
        ({"shape": (2,), "dtype": "float32", "scale": 0.1}, "cannot be quantized"),
        ({"shape": (2, -1), "dtype": "int8"}, "non-negative integers"),
    ],
)
def test_add_tensor_rejects(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IRBuilder().add_tensor("t", **kwargs)


def test_add_operator_and_graph_rejects() -> None:
    ir = IRBuilder()
    x = ir.add_tensor("x", (1,), "int8", scale=0.1)
    c = ir.add_constant("c", np.zeros((1,), np.int8), scale=0.1)
    with pytest.raises(ValueError, match="not a TFLite BuiltinOperator"):
        ir.add_operator("CONV2D", [x], [x])
    with pytest.raises(ValueError, match="tensor index 5 out of range"):
        ir.add_operator("ADD", [x, 5], [x])
    with pytest.raises(ValueError, match="not a schema"):
        ir.add_operator("ADD", [x, x], [x], options={"fused": 0})
    with pytest.raises(ValueError, match="is a constant tensor"):
        ir.set_inputs([c])
    with pytest.raises(ValueError, match="no outputs"):
        ir.finish()
    with pytest.raises(ValueError, match="out of range"):
        ir.tensor_shape(9)


def test_run_tflite_validates_inputs() -> None:
    ir = IRBuilder()
    x = ir.add_tensor("x", (1, 2), "int8", scale=0.1)
    out = ir.add_tensor("out", (2,), "int8", scale=0.1)
    ir.add_operator("RESHAPE", [x, ir.add_constant("s", np.array([2], np.int32))], [out])
    ir.set_inputs([x])
    ir.set_outputs([out])
    model = ir.finish()
    with pytest.raises(ValueError, match="expects 1 inputs, got 2"):
        run_tflite(model, [np.zeros((1, 2), np.int8)] * 2)
    with pytest.raises(ValueError, match=r"expected shape \(1, 2\), got \(2,\)"):
        run_tflite(model, [np.zeros((2,), np.int8)])
    with pytest.raises(ValueError, match="expected dtype int8, got uint8"):
        run_tflite(model, [np.zeros((1, 2), np.uint8)])


def test_layout_helpers() -> None:
    assert to_channels_last_shape((1, 3, 8, 9)) == (1, 8, 9, 3)
    assert to_channels_last_shape((2, 5, 7)) == (2, 7, 5)
    assert to_channels_last_shape((1, 3, 4, 5, 6)) == (1, 4, 5, 6, 3)
    assert to_channels_first_shape((1, 8, 9, 3)) == (1, 3, 8, 9)
    assert channels_first_perm(4) == NHWC_TO_NCHW
    for rank in (3, 4, 5):
        shape = tuple(range(2, 2 + rank))
        assert to_channels_first_shape(to_channels_last_shape(shape)) == shape
    with pytest.raises(ValueError, match="rank 2"):
        to_channels_last_shape((1, 3))
    w = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(conv_weight_to_ohwi(w), np.transpose(w, (0, 2, 3, 1)))


def test_scalar_constant_is_accepted():
    builder = IRBuilder("t")
    index = builder.add_tensor("a", [], "int8", scale=0.1, zero_point=0, data=np.array(-5, np.int8))
    assert builder.tensor_shape(index) == ()
