"""The convolution family's rewrites before annotation: conv1d -> conv2d, 1D pooling -> 2D, standalone batchnorm ->
depthwise conv, reshape round trips. Each on an exported graph: what it changes (sites, targets, constants) and that
the rewritten graph computes the same values as the original (float, before any quantization)."""

from __future__ import annotations

import torch
from torch import nn
from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

from neutron_backend.passes import (
    batch_norm_to_conv,
    conv1d_to_conv2d,
    pool3d_to_4d,
    reshape_round_trip,
    rewrites,
    run_all,
)
from neutron_backend.quantizer import NeutronQuantizer

aten = torch.ops.aten
# Float results of a 1D op and its 2D form may differ by summation order only.
ATOL = 1e-5


def _exported(model: nn.Module, *shapes: tuple[int, ...]) -> tuple[torch.fx.GraphModule, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    inputs = tuple(torch.randn(shape) for shape in shapes)
    return torch.export.export(model.eval(), inputs).module(), inputs


def _targets(graph_module: torch.fx.GraphModule) -> list:
    return [node.target for node in graph_module.graph.nodes if node.op == "call_function"]


def _rewritten(graph_module: torch.fx.GraphModule, rewrite) -> int:
    count = rewrite.run(graph_module)
    graph_module.graph.eliminate_dead_code()
    graph_module.graph.lint()
    graph_module.recompile()
    return count


def _assert_same_values(before, after, inputs) -> None:
    expected, got = before(*inputs), after(*inputs)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=ATOL), (got - expected).abs().max()


class _Conv1dRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, stride=2, padding=1, dilation=2)

    def forward(self, x):
        return torch.relu(self.conv(x))


def test_conv1d_becomes_conv2d_with_a_4d_constant_weight_and_its_relu_stays_fused() -> None:
    model = _Conv1dRelu()
    graph_module, inputs = _exported(model, (2, 4, 20))
    assert _rewritten(graph_module, conv1d_to_conv2d) == 1

    assert aten.conv1d.default not in _targets(graph_module)
    (conv,) = [n for n in graph_module.graph.nodes if n.target == aten.conv2d.default]
    weight = conv.args[1]
    assert weight.op == "get_attr"
    assert tuple(graph_module.get_parameter(weight.target).shape) == (8, 4, 1, 3)
    assert tuple(weight.meta["val"].shape) == (8, 4, 1, 3)
    assert conv.args[3:] == ([1, 2], [0, 1], [1, 2], 1)
    # view -> conv2d -> relu -> view: the ReLU is applied to the 4D value, right after the conv.
    assert conv.args[0].target == aten.view.default and conv.args[0].args[1] == [2, 4, 1, 20]
    (relu,) = conv.users
    assert relu.target == aten.relu.default and tuple(relu.meta["val"].shape) == (2, 8, 1, 9)
    (back,) = relu.users
    assert back.target == aten.view.default and back.args[1] == [2, 8, 9]
    # Provenance survives, so per-module quantizer settings still find the conv.
    assert list(conv.meta["nn_module_stack"].values())[-1][0] == "conv"
    _assert_same_values(model, graph_module, inputs)


def test_conv_transpose1d_becomes_conv_transpose2d() -> None:
    model = nn.ConvTranspose1d(8, 4, 3, stride=2, padding=1, output_padding=1)
    graph_module, inputs = _exported(model, (1, 8, 7))
    assert _rewritten(graph_module, conv1d_to_conv2d) == 1
    (conv,) = [n for n in graph_module.graph.nodes if n.target == aten.conv_transpose2d.input]
    assert tuple(graph_module.get_parameter(conv.args[1].target).shape) == (8, 4, 1, 3)
    assert conv.args[3:] == ([1, 2], [0, 1], [0, 1], 1, [1, 1])
    _assert_same_values(model, graph_module, inputs)


class _SharedWeight(nn.Module):
    """Two 1D convs reading one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4, 3))

    def forward(self, x):
        return nn.functional.conv1d(nn.functional.conv1d(x, self.weight, padding=1), self.weight)


def test_conv1d_with_a_shared_weight_gets_its_own_4d_constant() -> None:
    torch.manual_seed(0)
    model = _SharedWeight()
    graph_module, inputs = _exported(model, (1, 4, 12))
    assert _rewritten(graph_module, conv1d_to_conv2d) == 2
    weights = [n.args[1] for n in graph_module.graph.nodes if n.target == aten.conv2d.default]
    assert len({w.target for w in weights}) == 2
    assert all(tuple(graph_module.get_parameter(w.target).shape) == (4, 4, 1, 3) for w in weights)
    _assert_same_values(model, graph_module, inputs)


class _ComputedWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4, 3))

    def forward(self, x):
        return nn.functional.conv1d(x, self.weight * 2)


def test_conv1d_left_1d_when_its_weight_is_computed_its_output_feeds_a_batchnorm_or_it_is_unbatched() -> None:
    # Computed weight (QAT's conv+batchnorm fusion scales it): stays a 1D conv the partitioner lowers itself.
    graph_module, _ = _exported(_ComputedWeight(), (1, 4, 12))
    assert _rewritten(graph_module, conv1d_to_conv2d) == 0
    # Feeding a batchnorm: QAT fuses the pair after annotation by matching the 1D pattern.
    model = nn.Sequential(nn.Conv1d(4, 4, 3), nn.BatchNorm1d(4)).train()
    graph_module = torch.export.export(model, (torch.randn(2, 4, 12),)).module()
    assert _rewritten(graph_module, conv1d_to_conv2d) == 0
    # Unbatched [C, L] input.
    graph_module, _ = _exported(nn.Conv1d(4, 4, 3), (4, 12))
    assert _rewritten(graph_module, conv1d_to_conv2d) == 0


def test_1d_pools_become_2d_pools_over_a_height_1_image() -> None:
    cases = [
        (nn.MaxPool1d(3, stride=2, padding=1), aten.max_pool2d.default, ([1, 3], [1, 2], [0, 1], [1, 1], False)),
        (nn.MaxPool1d(2), aten.max_pool2d.default, ([1, 2], [1, 2], [0, 0], [1, 1], False)),
        (nn.AvgPool1d(4, stride=2, padding=2, count_include_pad=False), aten.avg_pool2d.default,
         ([1, 4], [1, 2], [0, 2], False, False, None)),
        (nn.AdaptiveAvgPool1d(5), aten.adaptive_avg_pool2d.default, ([1, 5],)),
    ]
    for model, target, args in cases:
        graph_module, inputs = _exported(model, (2, 3, 20))
        assert _rewritten(graph_module, pool3d_to_4d) == 1, model
        (pool,) = [n for n in graph_module.graph.nodes if n.target == target]
        assert tuple(pool.args[1:]) == args, model
        _assert_same_values(model, graph_module, inputs)


class _View(nn.Module):
    def forward(self, x):
        return (x.view(2, 3, 1, 5) + 0).view(2, 15).view(2, 3, 5)


def test_reshape_round_trips_are_removed() -> None:
    wav = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(8, 8, 3), nn.ReLU())
    graph_module, inputs = _exported(wav, (1, 4, 16))
    assert _rewritten(graph_module, conv1d_to_conv2d) == 2
    assert _rewritten(graph_module, pool3d_to_4d) == 1
    assert _targets(graph_module).count(aten.view.default) == 6
    # Between two 1D ops the view back to 3D and the view to 4D cancel: the stack stays 4D end to end.
    assert _rewritten(graph_module, reshape_round_trip) == 2
    assert _targets(graph_module) == [aten.view.default, aten.conv2d.default, aten.relu.default,
                                      aten.max_pool2d.default, aten.conv2d.default, aten.relu.default,
                                      aten.view.default]
    _assert_same_values(wav, graph_module, inputs)

    # A reshape pair that does not restore the original shape stays.
    graph_module, inputs = _exported(_View(), (2, 3, 5))
    assert _rewritten(graph_module, reshape_round_trip) == 0


class _Standalone(nn.Module):
    """A batchnorm on the model input (nothing to fold it into), then a ReLU."""

    def __init__(self, kind: type[nn.Module], channels: int) -> None:
        super().__init__()
        self.bn = kind(channels)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)
        self.bn.weight.data.uniform_(0.5, 2)
        self.bn.bias.data.uniform_(-1, 1)

    def forward(self, x):
        return torch.relu(self.bn(x))


def test_standalone_batchnorm_becomes_a_depthwise_1x1_conv() -> None:
    for kind, shape in ((nn.BatchNorm2d, (2, 6, 4, 5)), (nn.BatchNorm1d, (2, 6, 7)), (nn.BatchNorm1d, (2, 6))):
        torch.manual_seed(0)
        model = _Standalone(kind, 6).eval()
        graph_module, inputs = _exported(model, shape)
        assert _rewritten(graph_module, batch_norm_to_conv) == 1, shape
        assert aten.batch_norm.default not in _targets(graph_module)
        (conv,) = [n for n in graph_module.graph.nodes if n.target == aten.conv2d.default]
        weight = graph_module.get_buffer(conv.args[1].target)
        assert tuple(weight.shape) == (6, 1, 1, 1) and conv.args[6] == 6  # depthwise: groups = channels
        bn = model.bn
        expected_scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        assert torch.allclose(weight.flatten(), expected_scale, atol=1e-6)
        assert [user.target for user in conv.users] == [aten.relu.default], shape  # the ReLU stays fused
        _assert_same_values(model, graph_module, inputs)


def test_batchnorm_after_a_conv_or_in_training_is_left_to_torchao() -> None:
    # After a conv: prepare_pt2e folds it (below), prepare_qat_pt2e fuses it after annotation.
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6))
    graph_module, _ = _exported(model, (1, 3, 8, 8))
    assert _rewritten(graph_module, batch_norm_to_conv) == 0
    # Training mode: the statistics are not constants.
    graph_module = torch.export.export(_Standalone(nn.BatchNorm2d, 6).train(), (torch.randn(2, 6, 4, 4),)).module()
    assert _rewritten(graph_module, batch_norm_to_conv) == 0


class _ConvBnLinearBn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(8 * 6 * 6, 16), nn.BatchNorm1d(16), nn.ReLU())

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def test_prepare_pt2e_folds_batchnorm_after_conv_and_linear() -> None:
    graph_module, inputs = _exported(_ConvBnLinearBn(), (2, 3, 8, 8))
    prepared = prepare_pt2e(graph_module, NeutronQuantizer("imxrt700"))
    targets = _targets(prepared)
    assert aten.batch_norm.default not in targets
    assert targets.count(aten.conv2d.default) == 1 and targets.count(aten.linear.default) == 1


def test_the_rewrites_run_in_order_inside_the_quantizer() -> None:
    names = [module.__name__.rsplit(".", 1)[-1] for module in rewrites()]
    assert names.index("reshape_round_trip") > max(names.index("conv1d_to_conv2d"), names.index("pool3d_to_4d"),
                                                   names.index("batch_norm_to_conv"))
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.ReLU(), nn.MaxPool1d(2))
    graph_module, inputs = _exported(model, (1, 4, 16))
    changed = run_all(graph_module)
    assert {name: changed[name] for name in ("conv1d_to_conv2d", "pool3d_to_4d", "reshape_round_trip")} == {
        "conv1d_to_conv2d": 1, "pool3d_to_4d": 1, "reshape_round_trip": 1}
    _assert_same_values(model, graph_module, inputs)
