"""NeutronQuantizer: the exact qparams structure of converted graphs, configuration, calibration, numerics."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

from neutron_backend.models import get_model, list_models, warm_up_batchnorm
from neutron_backend.quantizer import (
    EXCLUDED_META_KEY,
    NeutronQuantizer,
    calibrate,
    quantize_model,
    random_batches,
)
from neutron_backend.targets import UnknownTargetError

qd = torch.ops.quantized_decomposed
aten = torch.ops.aten
Q_PER_TENSOR = qd.quantize_per_tensor.default
DQ_PER_TENSOR = qd.dequantize_per_tensor.default
DQ_PER_CHANNEL = qd.dequantize_per_channel.default
QDQ_TARGETS = {Q_PER_TENSOR, DQ_PER_TENSOR, qd.quantize_per_channel.default, DQ_PER_CHANNEL}


def _quantize(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    quantizer: NeutronQuantizer | None = None,
    num_batches: int = 4,
) -> GraphModule:
    exported = torch.export.export(model.eval(), inputs).module()
    prepared = prepare_pt2e(exported, quantizer or NeutronQuantizer("imxrt700"))
    calibrate(prepared, random_batches(inputs, num_batches), progress=False)
    return convert_pt2e(prepared)


def _nodes(gm: GraphModule, target: object) -> list[Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target == target]


def _only(gm: GraphModule, target: object) -> Node:
    found = _nodes(gm, target)
    assert len(found) == 1, f"expected one {target}, found {len(found)}"
    return found[0]


def _per_tensor_qparams(node: Node) -> tuple[float, int, int, int, torch.dtype]:
    """(scale, zero_point, qmin, qmax, dtype) of a per-tensor quantize/dequantize node."""
    assert node.target in (Q_PER_TENSOR, DQ_PER_TENSOR), node.target
    _, scale, zero_point, qmin, qmax, dtype = node.args
    return scale, zero_point, qmin, qmax, dtype


def _input_dq(node: Node, index: int = 0) -> Node:
    arg = node.args[index]
    assert isinstance(arg, Node), f"{node} input {index} is {arg!r}"
    assert arg.target in (DQ_PER_TENSOR, DQ_PER_CHANNEL), f"{node} input {index}: {arg}"
    return arg


def _output_q(node: Node) -> Node:
    (user,) = node.users
    assert user.target == Q_PER_TENSOR, f"{node} output goes to {user.target}, not quantize"
    return user


def _per_channel(gm: GraphModule, dq: Node) -> tuple[torch.Tensor, torch.Tensor, int, int, int, torch.dtype]:
    """(scales, zero_points, axis, qmin, qmax, dtype) of a dequantize_per_channel node."""
    assert dq.target == DQ_PER_CHANNEL
    _, scales, zero_points, axis, qmin, qmax, dtype = dq.args
    return getattr(gm, scales.target), getattr(gm, zero_points.target), axis, qmin, qmax, dtype


def _assert_activation(qparams: tuple[float, int, int, int, torch.dtype]) -> None:
    _, zero_point, qmin, qmax, dtype = qparams
    assert (qmin, qmax, dtype) == (-128, 127, torch.int8)
    assert -128 <= zero_point <= 127


class ConvAct(nn.Module):
    def __init__(self, act: nn.Module, conv: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = conv or nn.Conv2d(3, 8, 3, padding=1)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class Relu6Functional(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x)


IMAGE = (torch.randn(1, 3, 8, 8),)


@pytest.mark.parametrize(
    ("act", "act_target"),
    [
        (nn.ReLU(), aten.relu.default),
        (nn.ReLU6(), aten.hardtanh.default),
        (Relu6Functional(), aten.relu6.default),
        (nn.Hardtanh(0.0, 6.0), aten.hardtanh.default),
    ],
    ids=["relu", "nn.ReLU6", "F.relu6", "hardtanh_0_6"],
)
def test_conv_act_fused_per_channel_weights_derived_bias(act: nn.Module, act_target: object) -> None:
    gm = _quantize(ConvAct(act), IMAGE)
    conv = _only(gm, aten.conv2d.default)
    x_dq, w_dq, b_dq = (_input_dq(conv, i) for i in range(3))

    s_in, *_ = _per_tensor_qparams(x_dq)
    _assert_activation(_per_tensor_qparams(x_dq))

    w_scales, w_zps, axis, qmin, qmax, dtype = _per_channel(gm, w_dq)
    assert (axis, qmin, qmax, dtype) == (0, -127, 127, torch.int8)
    assert w_scales.shape == (8,) and torch.all(w_zps == 0)

    b_scales, b_zps, axis, qmin, qmax, dtype = _per_channel(gm, b_dq)
    assert (axis, qmin, qmax, dtype) == (0, -(2**31), 2**31 - 1, torch.int32)
    assert torch.all(b_zps == 0)
    torch.testing.assert_close(b_scales.float(), (s_in * w_scales).float(), rtol=1e-6, atol=0)

    # Fused: the conv feeds the activation directly, and only the activation's output is quantized.
    (act_node,) = conv.users
    assert act_node.target == act_target
    _assert_activation(_per_tensor_qparams(_output_q(act_node)))


def test_conv1d_weights_per_channel() -> None:
    gm = _quantize(ConvAct(nn.ReLU(), nn.Conv1d(3, 4, 3)), (torch.randn(1, 3, 16),))
    # Rewritten to a conv2d over a height-1 image before annotation (neutron_backend/passes/conv1d_to_conv2d.py).
    assert not _nodes(gm, aten.conv1d.default)
    conv = _only(gm, aten.conv2d.default)
    scales, zps, axis, qmin, qmax, dtype = _per_channel(gm, _input_dq(conv, 1))
    assert (scales.shape, axis, qmin, qmax, dtype) == ((4,), 0, -127, 127, torch.int8)
    assert torch.all(zps == 0)
    (relu,) = conv.users
    _output_q(relu)


def test_linear_relu_per_tensor_symmetric_weight_and_bias() -> None:
    gm = _quantize(nn.Sequential(nn.Linear(16, 8), nn.ReLU()), (torch.randn(2, 16),))
    linear = _only(gm, aten.linear.default)
    s_in, *_ = _per_tensor_qparams(_input_dq(linear, 0))
    s_w, w_zp, w_min, w_max, w_dtype = _per_tensor_qparams(_input_dq(linear, 1))
    assert (w_zp, w_min, w_max, w_dtype) == (0, -127, 127, torch.int8)
    s_b, b_zp, b_min, b_max, b_dtype = _per_tensor_qparams(_input_dq(linear, 2))
    assert (b_zp, b_min, b_max, b_dtype) == (0, -(2**31), 2**31 - 1, torch.int32)
    assert s_b == pytest.approx(s_in * s_w, rel=1e-6)
    (relu,) = linear.users
    assert relu.target == aten.relu.default
    _output_q(relu)


class Add(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


def test_add_inputs_and_output_observed_independently() -> None:
    gm = _quantize(Add(), (torch.randn(1, 4, 8, 8), 10 * torch.randn(1, 4, 8, 8)))
    add = _only(gm, aten.add.Tensor)
    scales = [_per_tensor_qparams(_input_dq(add, i))[0] for i in range(2)]
    out = _per_tensor_qparams(_output_q(add))
    _assert_activation(out)
    # Calibrated on N(0, 1) data, the inputs and the sum have different ranges, hence different scales.
    assert len({*scales, out[0]}) == 3


class ConvThen(nn.Module):
    """A conv (so the op's input is already quantized) followed by `op`."""

    def __init__(self, op: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(self.conv(x))


SHARED_CASES = [
    (nn.MaxPool2d(2), aten.max_pool2d.default),
    (nn.AvgPool2d(2), aten.avg_pool2d.default),
    (nn.AdaptiveAvgPool2d(1), aten.adaptive_avg_pool2d.default),
    (lambda t: t.mean(dim=(2, 3)), aten.mean.dim),
    (lambda t: t.mean(dim=(2, 3), keepdim=True), aten.mean.dim),
    (lambda t: t.view(1, -1), aten.view.default),
    (lambda t: t.reshape(8, -1), aten.reshape.default),
    (nn.Flatten(), aten.flatten.using_ints),
    (lambda t: t.unflatten(1, (2, 4)), aten.unflatten.int),
    (lambda t: t.view_as(t), aten.view_as.default),
    (lambda t: t.reshape_as(t), aten.reshape_as.default),
    (lambda t: t.permute(0, 2, 3, 1), aten.permute.default),
    (lambda t: t.swapaxes(1, 3), aten.swapaxes.default),
    (lambda t: t.movedim(1, 3), aten.movedim.int),
    (lambda t: t.mT, aten.mT.default),
    (lambda t: t[0, 0].t(), aten.t.default),
    (lambda t: t.clone(), aten.clone.default),
    (nn.Hardtanh(-2.0, 2.0), aten.hardtanh.default),
]


@pytest.mark.parametrize(
    ("op", "target"),
    SHARED_CASES,
    ids=[
        "max_pool2d",
        "avg_pool2d",
        "adaptive_avg_pool2d",
        "mean",
        "mean_keepdim",
        "view",
        "reshape",
        "flatten",
        "unflatten",
        "view_as",
        "reshape_as",
        "permute",
        "swapaxes",
        "movedim",
        "mT",
        "t",
        "clone",
        "hardtanh_clip",
    ],
)
def test_output_shares_input_qparams(op: object, target: object) -> None:
    gm = _quantize(ConvThen(op), IMAGE)
    node = _only(gm, target)
    in_qparams = _per_tensor_qparams(_input_dq(node))
    _assert_activation(in_qparams)
    assert _per_tensor_qparams(_output_q(node)) == in_qparams


class Cat(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(x), 5 * y], dim=1)


def test_cat_inputs_and_output_share_one_spec() -> None:
    gm = _quantize(Cat(), (torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)))
    cat = _only(gm, aten.cat.default)
    dqs = cat.args[0]
    assert len(dqs) == 2 and all(dq.target == DQ_PER_TENSOR for dq in dqs)
    qparams = {_per_tensor_qparams(dq) for dq in dqs} | {_per_tensor_qparams(_output_q(cat))}
    assert len(qparams) == 1


class CatOfInputs(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, y], dim=1)


class CatInputAlsoConvolved(nn.Module):
    """A graph input consumed by a cat and by a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([x, y], dim=1), self.conv(x)


class TwoCatsShareAnInput(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([a, b], dim=1), torch.cat([b, c], dim=1)


class MaximumMinimum(nn.Module):
    """maximum of two graph inputs; minimum of a conv output that is also a model output and a graph input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        convolved = self.conv(x)
        return torch.maximum(x, y), torch.minimum(convolved, y), convolved


class CatOfItself(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x], dim=1)


def _image(scale: float) -> torch.Tensor:
    return scale * torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(int(scale)))


SHARED_ALL_TARGETS = (aten.cat.default, aten.maximum.default, aten.minimum.default)


@pytest.mark.parametrize(
    ("model", "inputs"),
    [
        (CatOfInputs(), (_image(1), _image(3))),
        (CatInputAlsoConvolved(), (_image(1), _image(3))),
        (TwoCatsShareAnInput(), (_image(1), _image(2), _image(5))),
        (MaximumMinimum(), (_image(1), _image(3))),
        (CatOfItself(), (_image(1),)),
    ],
    ids=["cat_of_graph_inputs", "input_shared_with_conv", "two_cats_share_an_input", "maximum_minimum", "cat_x_x"],
)
def test_shared_all_inputs_and_output_one_spec_without_requantization(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], partition_model, entry_for
) -> None:
    prepared = prepare_pt2e(torch.export.export(model.eval(), inputs).module(), NeutronQuantizer("imxrt700"))
    calibrate(prepared, [inputs], progress=False)  # inputs of different ranges, so sharing is not a coincidence
    gm = convert_pt2e(prepared)
    heads = [n for n in gm.graph.nodes if n.target in SHARED_ALL_TARGETS]
    assert heads
    for head in heads:
        operands = head.args[0] if head.target == aten.cat.default else head.args[:2]
        qparams = {_per_tensor_qparams(dq) for dq in operands if dq.target == DQ_PER_TENSOR}
        qparams |= {_per_tensor_qparams(q) for q in head.users if q.target == Q_PER_TENSOR}
        assert len(qparams) == 1 and all(dq.target == DQ_PER_TENSOR for dq in operands), head.format_node()
        _output_q(head)
    requantizations = [n for n in gm.graph.nodes if n.target == Q_PER_TENSOR and n.args[0].target == DQ_PER_TENSOR]
    assert not requantizations

    report, _ = partition_model(model, inputs, calibration=[inputs])
    names = {aten.cat.default: "aten.cat.default", aten.maximum.default: "aten.maximum.default",
             aten.minimum.default: "aten.minimum.default"}
    for position, head in enumerate(heads):
        index = sum(1 for earlier in heads[:position] if earlier.target == head.target)
        entry = entry_for(report, names[head.target], index)
        assert entry.delegated, entry.reason


def test_softmax_output_fixed_qparams() -> None:
    gm = _quantize(nn.Sequential(nn.Linear(8, 5), nn.Softmax(dim=-1)), (torch.randn(2, 8),))
    softmax = _only(gm, aten.softmax.int)
    _input_dq(softmax)
    assert _per_tensor_qparams(_output_q(softmax)) == (1.0 / 256.0, -128, -128, 127, torch.int8)


class IndexModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, wide: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = torch.index_select(x, 0, idx)
        summed = self.emb(idx) + rows
        tokens = torch.cat([idx, idx])
        return self.fc(summed), tokens, wide + wide


def test_integer_and_float64_tensors_never_quantized() -> None:
    inputs = (torch.randn(6, 8), torch.tensor([1, 3]), torch.randn(3, dtype=torch.float64))
    gm = _quantize(IndexModel(), inputs)
    for q in _nodes(gm, Q_PER_TENSOR):
        assert q.args[0].meta["val"].dtype == torch.float32, q.args[0]
    idx = next(n for n in gm.graph.nodes if n.op == "placeholder" and n.name == "idx")
    assert not any(user.target in QDQ_TARGETS for user in idx.users)
    add, add_f64 = _nodes(gm, aten.add.Tensor)
    assert add_f64.meta["val"].dtype == torch.float64
    assert not any(arg.target in QDQ_TARGETS for arg in add_f64.args)
    assert not any(user.target in QDQ_TARGETS for user in add_f64.users)
    # The float32 path is still quantized: add and linear are QDQ clusters.
    assert add.args[0].target == DQ_PER_TENSOR and add.args[1].target == DQ_PER_TENSOR
    _output_q(_only(gm, aten.linear.default))
    # ... and the converted module still exports, with the same results.
    exported = torch.export.export(gm, inputs)
    for got, want in zip(exported.module()(*inputs), gm(*inputs), strict=True):
        torch.testing.assert_close(got, want)


class Embedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embedding(idx) + x)


class IndexSelect(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.index_select(torch.relu(x), 0, idx))


class MaskedFill(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc(x).masked_fill(mask, -1.0))


class Gather(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.gather(self.fc(x), 1, idx))


class Float64Branch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wide = x.double()
        return self.fc(x), torch.relu(wide * 3.0 + wide).sum(dim=1)


class IntArithmetic(nn.Module):
    """Integer tensors through ops NeutronQuantizer annotates for float32 (add, mul, cat), and shape arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = self.fc(x)
        rows = y.shape[0] * y.shape[1] // 4
        return y.reshape(rows, 4), torch.cat([idx, idx * 2 + idx]), torch.arange(y.shape[1]) * 2


NON_FLOAT_CASES = [
    (Embedding(), (torch.randn(3, 8), torch.tensor([1, 2, 7])), "aten.embedding.default"),
    (IndexSelect(), (torch.randn(5, 8), torch.tensor([0, 3])), "aten.index_select.default"),
    (MaskedFill(), (torch.randn(2, 8), torch.rand(2, 8, generator=torch.Generator().manual_seed(0)) > 0.5),
     "aten.where.self"),
    (Gather(), (torch.randn(2, 8), torch.randint(0, 8, (2, 8), generator=torch.Generator().manual_seed(0))),
     "aten.gather.default"),
    (Float64Branch(), (torch.randn(2, 8),), "aten.sum.dim_IntList"),
    (IntArithmetic(), (torch.randn(2, 8), torch.tensor([1, 2])), "aten.cat.default"),
]


def _lower_and_run(gm: GraphModule, inputs: tuple[torch.Tensor, ...], path: Path, dynamic_shapes: object = None):
    """Lowers `gm` with NeutronPartitioner, writes and runs the .pte on the host; returns (report, outputs)."""
    import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)
    from executorch.exir import to_edge_transform_and_lower

    from neutron_backend.compile_spec import generate_neutron_compile_spec
    from neutron_backend.partitioner import NeutronPartitioner
    from neutron_backend.runtime import load_pte

    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700"))
    exported = torch.export.export(gm, inputs, dynamic_shapes=dynamic_shapes)
    edge = to_edge_transform_and_lower(exported, partitioner=[partitioner])
    path.write_bytes(edge.to_executorch().buffer)
    return partitioner.report, load_pte(path)(*inputs)


def _assert_matches_reference(gm: GraphModule, inputs: tuple[torch.Tensor, ...], got: tuple[torch.Tensor, ...]) -> None:
    """Outputs dequantized from int8 within one output step of the quantized reference; other float outputs
    (computed on the CPU, in another summation order) within torch's default tolerance for their dtype; integer
    outputs exact."""
    want = gm(*inputs)
    want = want if isinstance(want, tuple) else (want,)
    producers = gm.graph.output_node().args[0]
    producers = producers if isinstance(producers, (tuple, list)) else (producers,)
    assert len(got) == len(want) == len(producers)
    for produced_by, g, w in zip(producers, got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        if produced_by.target == DQ_PER_TENSOR:
            scale = _per_tensor_qparams(produced_by)[0]
            assert (g - w).abs().max().item() / scale <= 1.0 + 1e-4
        elif g.is_floating_point():
            torch.testing.assert_close(g, w)
        else:
            assert torch.equal(g, w), produced_by


@pytest.mark.parametrize(("model", "inputs", "cpu_target"), NON_FLOAT_CASES,
                         ids=["embedding", "index_select", "masked_fill", "gather", "float64", "int_arithmetic"])
def test_non_float32_values_stay_float_and_the_model_lowers(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], cpu_target: str, tmp_path: Path
) -> None:
    gm = _quantize(model, inputs)
    for node in gm.graph.nodes:
        if node.target in QDQ_TARGETS and node.target in (Q_PER_TENSOR, qd.quantize_per_channel.default):
            assert node.args[0].meta["val"].dtype == torch.float32, node.format_node()

    report, got = _lower_and_run(gm, inputs, tmp_path / "model.pte")
    # The float32 linear layers run on the NPU; the index/float64/integer parts stay on the CPU.
    linears = [e for e in report.nodes if e.target == "aten.addmm.default"]
    assert linears and all(e.delegated for e in linears), str(report)
    cpu_nodes = [e for e in report.nodes if e.target == cpu_target]
    assert cpu_nodes and not any(e.delegated for e in cpu_nodes), str(report)
    _assert_matches_reference(gm, inputs, got)


def test_shape_arithmetic_with_dynamic_batch_exports_and_lowers(tmp_path: Path) -> None:
    """SymInt arithmetic on a dynamic batch is never annotated; Neutron runs static shapes only, so the whole model
    stays on the CPU, and it still lowers and runs."""
    model, inputs = IntArithmetic().eval(), (torch.randn(3, 8), torch.tensor([1, 2]))
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=16)}, None)
    exported = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes)
    assert any(n.target == aten.sym_size.int for n in exported.graph.nodes)
    prepared = prepare_pt2e(exported.module(), NeutronQuantizer("imxrt700"))
    calibrate(prepared, [inputs, (torch.randn(5, 8), torch.tensor([3, 4]))], progress=False)
    gm = convert_pt2e(prepared)

    report, got = _lower_and_run(gm, inputs, tmp_path / "dynamic.pte", dynamic_shapes)
    assert report.num_partitions == 0
    _assert_matches_reference(gm, inputs, got)


class TwoLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.body(x)))


def test_set_module_name_none_leaves_linear_float_with_reason() -> None:
    inputs = (torch.randn(2, 8),)
    gm = _quantize(TwoLinears(), inputs, NeutronQuantizer("imxrt700").set_module_name("fc", None))
    body, fc = _nodes(gm, aten.linear.default)
    _input_dq(body, 1)
    assert fc.args[1].op == "get_attr", "excluded linear must keep its float weight"
    assert fc.args[2].op == "get_attr"
    assert not any(user.target == Q_PER_TENSOR for user in fc.users)
    assert fc.meta[EXCLUDED_META_KEY] == "set_module_name('fc', None)"
    assert EXCLUDED_META_KEY not in body.meta

    # The top-level key does not survive a re-export; the copy in meta["custom"] reaches the edge graph.
    from executorch.exir import to_edge

    edge = to_edge(torch.export.export(gm, inputs)).exported_program()
    reasons = [
        n.meta.get("custom", {}).get(EXCLUDED_META_KEY)
        for n in edge.graph.nodes
        if n.op == "call_function" and "addmm" in str(n.target)
    ]
    assert reasons == [None, "set_module_name('fc', None)"]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class TwoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = Block()
        self.b = Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def _conv_is_quantized(conv: Node) -> bool:
    return conv.args[1].target == DQ_PER_CHANNEL


def test_set_module_type_none_and_module_name_precedence() -> None:
    quantizer = NeutronQuantizer("imxrt700").set_module_type(nn.Conv2d, None)
    conv_a, conv_b = _nodes(_quantize(TwoBlocks(), IMAGE, quantizer), aten.conv2d.default)
    assert not _conv_is_quantized(conv_a) and not _conv_is_quantized(conv_b)
    assert conv_a.meta[EXCLUDED_META_KEY] == "set_module_type(Conv2d, None)"

    # A module name beats a module type; "a" matches its whole subtree (a.conv).
    default = NeutronQuantizer("imxrt700").global_config
    quantizer = NeutronQuantizer("imxrt700").set_module_type(nn.Conv2d, None).set_module_name("a", default)
    conv_a, conv_b = _nodes(_quantize(TwoBlocks(), IMAGE, quantizer), aten.conv2d.default)
    assert _conv_is_quantized(conv_a) and not _conv_is_quantized(conv_b)

    quantizer = NeutronQuantizer("imxrt700").set_global(None).set_module_name("b.conv", default)
    conv_a, conv_b = _nodes(_quantize(TwoBlocks(), IMAGE, quantizer), aten.conv2d.default)
    assert not _conv_is_quantized(conv_a) and _conv_is_quantized(conv_b)
    assert conv_a.meta[EXCLUDED_META_KEY] == "set_global(None)"


def test_activation_with_other_config_is_not_fused() -> None:
    quantizer = NeutronQuantizer("imxrt700").set_module_name("act", None)
    gm = _quantize(ConvAct(nn.ReLU()), IMAGE, quantizer)
    conv = _only(gm, aten.conv2d.default)
    _output_q(conv)
    relu = _only(gm, aten.relu.default)
    assert relu.meta[EXCLUDED_META_KEY] == "set_module_name('act', None)"


def test_set_node_name_beats_module_settings_and_warns_on_unknown_names(caplog: pytest.LogCaptureFixture) -> None:
    default = NeutronQuantizer("imxrt700").global_config
    quantizer = (NeutronQuantizer("imxrt700").set_module_type(nn.Linear, None).set_node_name("linear_1", default)
                 .set_node_name("lineer_1", None))
    with caplog.at_level(logging.WARNING, logger="neutron_backend.quantizer.quantizer"):
        gm = _quantize(TwoLinears(), (torch.randn(2, 8),), quantizer)
    body, fc = _nodes(gm, aten.linear.default)
    assert body.args[1].op == "get_attr" and body.meta[EXCLUDED_META_KEY] == "set_module_type(Linear, None)"
    _input_dq(fc, 1)
    _output_q(fc)
    assert EXCLUDED_META_KEY not in fc.meta
    assert "set_node_name('lineer_1', ...) matches no node of the graph; close names: ['linear_1'" in caplog.text

    gm = _quantize(TwoLinears(), (torch.randn(2, 8),), NeutronQuantizer("imxrt700").set_node_name("linear", None))
    body, fc = _nodes(gm, aten.linear.default)
    assert body.meta[EXCLUDED_META_KEY] == "set_node_name('linear', None)"
    _input_dq(fc, 1)


@pytest.mark.parametrize(
    ("quantizer", "setting"),
    [
        (NeutronQuantizer("imxrt700").set_module_name("fc", None), "set_module_name('fc', None)"),
        (NeutronQuantizer("imxrt700").set_node_name("linear_1", None), "set_node_name('linear_1', None)"),
    ],
    ids=["module_name", "node_name"],
)
def test_float_part_stays_on_cpu_with_quantizer_reason_and_runs(
    quantizer: NeutronQuantizer, setting: str, tmp_path: Path
) -> None:
    import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)
    from executorch.exir import to_edge_transform_and_lower

    from neutron_backend.compile_spec import generate_neutron_compile_spec
    from neutron_backend.partitioner import NeutronPartitioner
    from neutron_backend.runtime import load_pte

    model, inputs = TwoLinears(), (torch.randn(2, 8),)
    gm = _quantize(model, inputs, quantizer)
    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700"))
    edge = to_edge_transform_and_lower(torch.export.export(gm, inputs), partitioner=[partitioner])
    report = partitioner.report
    body, fc = [entry for entry in report.nodes if entry.target == "aten.addmm.default"]
    assert body.delegated and report.num_partitions == 1
    assert not fc.delegated
    assert fc.reason == f"left in float by the quantizer configuration ({setting})"

    pte = tmp_path / "two_linears.pte"
    pte.write_bytes(edge.to_executorch().buffer)
    (got,) = load_pte(pte)(*inputs)
    # The NPU's relu output may differ from the reference by one step s; the float fc maps that to at most
    # s * (largest absolute row sum of its weight).
    relu_scale = _per_tensor_qparams(_output_q(_only(gm, aten.relu.default)))[0]
    bound = relu_scale * model.fc.weight.abs().sum(dim=1).max().item()
    assert (got - gm(*inputs)).abs().max().item() <= bound * (1 + 1e-5)


def test_unknown_target_rejected() -> None:
    with pytest.raises(UnknownTargetError, match="imxrt700"):
        NeutronQuantizer("imxrt7000")


def test_qat_conv_batchnorm_relu_fused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(288, 4))
    inputs = (torch.randn(2, 3, 8, 8),)
    batches = random_batches(inputs, 4)
    gm = quantize_model(model, inputs, calibration_batches=batches, is_qat=True, progress=False)
    assert not _nodes(gm, aten.batch_norm.default)
    conv = _only(gm, aten.conv2d.default)
    assert _per_channel(gm, _input_dq(conv, 1))[2:] == (0, -127, 127, torch.int8)
    (relu,) = conv.users
    assert relu.target == aten.relu.default
    _output_q(relu)


def _assert_all_compute_nodes_are_clusters(gm: GraphModule) -> int:
    """Every non-Q/DQ call_function node takes its tensors from dequantize and feeds quantize (a relu fused
    after a conv/linear is checked as part of its producer). Returns the number of clusters."""
    clusters = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target in QDQ_TARGETS:
            continue
        producer_is_fused = isinstance(node.args[0], Node) and node.args[0].target in (
            aten.conv2d.default,
            aten.linear.default,
        )
        if not producer_is_fused:
            for arg in node.args:
                if isinstance(arg, Node):
                    assert arg.target in (DQ_PER_TENSOR, DQ_PER_CHANNEL), f"{node} takes {arg}"
        users = list(node.users)
        if node.target in (aten.conv2d.default, aten.linear.default) and users[0].target == aten.relu.default:
            continue
        assert all(user.target == Q_PER_TENSOR for user in users), f"{node} feeds {users}"
        clusters += 1
    return clusters


def test_cifarnet_fully_quantized() -> None:
    model, inputs = get_model("cifarnet")
    gm = _quantize(model, inputs)
    assert len(_nodes(gm, aten.conv2d.default)) == 3
    # 3 conv+relu, 3 max_pool2d, flatten, linear.
    assert _assert_all_compute_nodes_are_clusters(gm) == 8


def test_cifarnet_quantized_matches_float() -> None:
    model, inputs = get_model("cifarnet")
    generator = torch.Generator().manual_seed(123)
    calibration = [(torch.randn(1, 3, 32, 32, generator=generator),) for _ in range(32)]
    gm = quantize_model(model, inputs, calibration_batches=calibration, progress=False)
    agree, rel_errors = 0, []
    with torch.no_grad():
        for _ in range(50):
            x = torch.randn(1, 3, 32, 32, generator=generator)
            want, got = model(x), gm(x)
            agree += int(want.argmax() == got.argmax())
            rel_errors.append(float((want - got).norm() / want.norm()))
    assert agree >= 45, f"top-1 agreement {agree}/50"
    assert sum(rel_errors) / len(rel_errors) < 0.05, rel_errors


def test_calibrate_counts_batches_and_rejects_empty_data() -> None:
    prepared = prepare_pt2e(
        torch.export.export(Add(), (torch.randn(2), torch.randn(2))).module(), NeutronQuantizer("imxrt700")
    )
    assert calibrate(prepared, [(torch.randn(2), torch.randn(2))] * 3, progress=False) == 3
    with pytest.raises(ValueError, match="calibration data is empty"):
        calibrate(prepared, [], progress=False)
    with pytest.raises(ValueError, match="calibration data is empty"):
        calibrate(prepared, iter([]), progress=False)


def test_calibrate_shows_a_progress_bar_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    prepared = prepare_pt2e(
        torch.export.export(Add(), (torch.randn(2), torch.randn(2))).module(), NeutronQuantizer("imxrt700")
    )
    batches = [(torch.randn(2), torch.randn(2))] * 3
    calibrate(prepared, batches, progress=True)
    bar = capsys.readouterr().err
    assert "calibrating: 100%" in bar and "3/3" in bar
    assert calibrate(prepared, iter(batches), progress=True) == 3  # a generator: no total, batches counted
    assert "calibrating: 3batch" in capsys.readouterr().err
    calibrate(prepared, batches, progress=False)
    assert capsys.readouterr().err == ""


def test_random_batches_draw_float_tensors_and_keep_everything_else() -> None:
    indices = (torch.tensor([0, 2]), torch.tensor([1, 1]))
    mask = torch.tensor([True, False])
    example = (torch.zeros(2, 3), indices, mask, 1.5)
    first, second = random_batches(example, 2, seed=3)
    assert first[0].shape == (2, 3) and first[0].dtype == torch.float32
    assert not torch.equal(first[0], second[0]) and first[0].abs().sum() > 0
    # Nested index tensors (e.g. index_put's tuple), masks and scalars are passed through as given.
    assert first[1][0] is indices[0] and first[1][1] is indices[1]
    assert first[2] is mask and first[3] == 1.5
    torch.testing.assert_close(random_batches(example, 2, seed=3)[1][0], second[0], rtol=0, atol=0)


def _observer_of(prepared: GraphModule, node: Node) -> nn.Module:
    assert node.op == "call_module", node.format_node()
    return getattr(prepared, node.target)


def test_observers_histogram_for_activations_minmax_for_weights_fake_quantizers_for_qat() -> None:
    from torchao.quantization.pt2e import (
        FakeQuantize,
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        PerChannelMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from neutron_backend.quantizer.observers import FastHistogramObserver

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 4))
    inputs = (torch.randn(1, 3, 8, 8),)
    prepared = prepare_pt2e(torch.export.export(model.eval(), inputs).module(), NeutronQuantizer("imxrt700"))
    conv, linear = _only(prepared, aten.conv2d.default), _only(prepared, aten.linear.default)
    # torchao's histogram observer, its range search sped up (tests/test_observers.py: the same qparams).
    assert type(_observer_of(prepared, conv.args[0])) is FastHistogramObserver
    assert type(_observer_of(prepared, linear.args[0])) is FastHistogramObserver
    conv_weight = _observer_of(prepared, conv.args[1])
    assert type(conv_weight) is PerChannelMinMaxObserver and conv_weight.ch_axis == 0
    assert type(_observer_of(prepared, linear.args[1])) is MinMaxObserver

    prepared = prepare_qat_pt2e(torch.export.export(model.train(), inputs).module(),
                                NeutronQuantizer("imxrt700", is_qat=True))
    conv, linear = _only(prepared, aten.conv2d.default), _only(prepared, aten.linear.default)
    for node, observer_type in ((conv.args[0], MovingAverageMinMaxObserver),
                                (conv.args[1], MovingAveragePerChannelMinMaxObserver),
                                (linear.args[1], MovingAverageMinMaxObserver)):
        fake_quantize = _observer_of(prepared, node)
        assert type(fake_quantize) is FakeQuantize
        assert type(fake_quantize.activation_post_process) is observer_type


def test_quantize_model_warns_without_calibration_data(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="neutron_backend.quantizer.calibration"):
        gm = quantize_model(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), (torch.randn(1, 4),), progress=False)
    assert "no calibration data" in caplog.text
    assert isinstance(gm, GraphModule)
    _output_q(_only(gm, aten.relu.default))


def test_model_zoo_registry_and_determinism() -> None:
    assert "cifarnet" in list_models()
    (a, (x_a,)), (b, (x_b,)) = get_model("cifarnet"), get_model("CifarNet")
    assert not a.training
    torch.testing.assert_close(x_a, x_b)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb)
    assert a(x_a).shape == (1, 10)
    with pytest.raises(ValueError, match="cifarnet"):
        get_model("cifarnett")


def test_warm_up_batchnorm_sets_statistics_and_eval_mode() -> None:
    norm = nn.BatchNorm2d(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), norm, nn.Flatten(), nn.Linear(144, 4), nn.BatchNorm1d(4))
    out = warm_up_batchnorm(model, (torch.randn(1, 3, 8, 8),), steps=4)
    assert out is model and not model.training
    assert not torch.allclose(norm.running_var, torch.ones(4))
    assert norm.momentum == 0.1
