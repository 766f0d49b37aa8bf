"""The rewrites behind binary arithmetic and matrix products (neutron_backend/passes): each one on a real exported
graph, on both sides of its conditions, with the rewritten module computing what the original did.

div_to_mul, scalars_to_constants, linear_add_to_bias, matmul_by_constant_to_linear, matmul_to_bmm,
flatten_linear_input.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
import torch
from numerics import Fn
from torch import nn
from torch.fx import GraphModule

from neutron_backend.passes import (
    div_to_mul,
    flatten_linear_input,
    linear_add_to_bias,
    matmul_by_constant_to_linear,
    matmul_to_bmm,
    rewrites,
    scalars_to_constants,
)

aten = torch.ops.aten


class WithConstant(nn.Module):
    """`fn(x, constant)` with a constant parameter of `shape`."""

    def __init__(self, fn: Callable, shape: tuple[int, ...], positive: bool = False) -> None:
        super().__init__()
        value = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        self.constant = nn.Parameter(value.abs() + 0.5 if positive else value)
        self.fn = fn

    def forward(self, x):
        return self.fn(x, self.constant)


class LinearThen(nn.Module):
    """`fn(linear(x), constant)` with a constant of `shape` (None: no constant, fn gets the linear output only)."""

    def __init__(self, fn: Callable, shape: tuple[int, ...] | None, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 6, bias=bias)
        generator = torch.Generator().manual_seed(2)
        self.constant = None if shape is None else nn.Parameter(torch.randn(shape, generator=generator))
        self.fn = fn

    def forward(self, x):
        y = self.linear(x)
        return self.fn(y) if self.constant is None else self.fn(y, self.constant)


def _rewrite(model: nn.Module, rewrite: ModuleType, *shapes: tuple[int, ...]) -> tuple[GraphModule, int]:
    """The exported module of `model` after `rewrite`, the sites it changed, and its outputs equal to the original's
    (within float32 rounding: a reciprocal or a folded bias rounds once more)."""
    inputs = tuple(torch.randn(shape, generator=torch.Generator().manual_seed(7)) for shape in shapes)
    graph_module = torch.export.export(model.eval(), inputs).module()
    expected = graph_module(*inputs)
    changed = rewrite.run(graph_module)
    torch.testing.assert_close(graph_module(*inputs), expected, rtol=1e-6, atol=1e-6)
    return graph_module, changed


def _targets(graph_module: GraphModule) -> list:
    return [node.target for node in graph_module.graph.nodes if node.op == "call_function"]


def _constant(graph_module: GraphModule, node) -> torch.Tensor:
    assert node.op == "get_attr", node
    return getattr(graph_module, node.target)


def test_rewrites_run_in_order_after_the_ones_they_depend_on() -> None:
    order = [module.__name__.rsplit(".", 1)[-1] for module in rewrites()]
    # Divisions become multiplications by a number, numbers become constants, constants fold into biases, and
    # linear layers (including those made from matmuls) are flattened last.
    for earlier, later in [("div_to_mul", "scalars_to_constants"), ("scalars_to_constants", "linear_add_to_bias"),
                           ("matmul_by_constant_to_linear", "linear_add_to_bias"),
                           ("linear_add_to_bias", "flatten_linear_input"),
                           ("matmul_by_constant_to_linear", "flatten_linear_input")]:
        assert order.index(earlier) < order.index(later), order


# -- div_to_mul --------------------------------------------------------------------------------------------------


def test_division_by_a_number_becomes_multiplication_by_its_reciprocal() -> None:
    graph_module, changed = _rewrite(Fn(lambda x: x / 4.0), div_to_mul, (2, 5))
    assert changed == 1
    (mul,) = [n for n in graph_module.graph.nodes if n.op == "call_function"]
    assert mul.target == aten.mul.Tensor and mul.args[1] == 0.25


def test_division_by_a_constant_tensor_multiplies_by_its_reciprocal() -> None:
    graph_module, changed = _rewrite(WithConstant(torch.div, (5,), positive=True), div_to_mul, (2, 5))
    assert changed == 1
    (mul,) = [n for n in graph_module.graph.nodes if n.op == "call_function"]
    assert mul.target == aten.mul.Tensor
    torch.testing.assert_close(_constant(graph_module, mul.args[1]),
                               torch.reciprocal(graph_module.constant.detach()))


@pytest.mark.parametrize("fn", [lambda x, y: x / y, lambda x, y: x / 0.0,
                                lambda x, y: torch.div(x, 2.0, rounding_mode="floor")],
                         ids=["by-activation", "by-zero", "rounding-mode"])
def test_other_divisions_stay(fn) -> None:
    graph_module, changed = _rewrite(Fn(fn), div_to_mul, (2, 5), (2, 5))
    assert changed == 0
    assert aten.mul.Tensor not in _targets(graph_module)


# -- scalars_to_constants ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fn", "target", "value", "constant_first"), [
    (lambda x: x + 3.0, aten.add.Tensor, 3.0, False),
    (lambda x: x * 0.5, aten.mul.Tensor, 0.5, False),
    (lambda x: x - 2, aten.sub.Tensor, 2.0, False),
    (lambda x: torch.add(x, 2.0, alpha=3), aten.add.Tensor, 6.0, False),
    (lambda x: 1.0 - x, aten.sub.Tensor, 1.0, True),
], ids=["add", "mul", "sub-int", "add-alpha", "rsub"])
def test_scalar_operand_becomes_a_constant_tensor(fn, target, value: float, constant_first: bool) -> None:
    graph_module, changed = _rewrite(Fn(fn), scalars_to_constants, (2, 5))
    assert changed == 1
    (node,) = [n for n in graph_module.graph.nodes if n.op == "call_function"]
    assert node.target == target and node.kwargs == {}
    constant = node.args[0] if constant_first else node.args[1]
    tensor = _constant(graph_module, constant)
    assert tensor.shape == () and tensor.dtype == torch.float32 and tensor.item() == value
    assert constant.meta["val"].shape == ()


def test_tensor_operands_stay() -> None:
    graph_module, changed = _rewrite(Fn(lambda x, y: x * y + y), scalars_to_constants, (2, 5), (2, 5))
    assert changed == 0
    assert not [n for n in graph_module.graph.nodes if n.op == "get_attr"]


# -- linear_add_to_bias ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fn", "shape", "bias", "sign"), [
    (torch.add, (6,), False, 1.0), (torch.add, (1, 6), True, 1.0), (torch.sub, (6,), True, -1.0),
    (lambda y, c: c + y, (6,), True, 1.0),
], ids=["add-no-bias", "add-row", "sub", "constant-first"])
def test_constant_addition_folds_into_the_linear_bias(fn, shape, bias: bool, sign: float) -> None:
    model = LinearThen(fn, shape, bias=bias)
    graph_module, changed = _rewrite(model, linear_add_to_bias, (3, 8))
    assert changed == 1
    assert _targets(graph_module) == [aten.linear.default]
    (linear,) = [n for n in graph_module.graph.nodes if n.op == "call_function"]
    expected = sign * model.constant.detach().reshape(6)
    if bias:
        expected = expected + model.linear.bias.detach()
    torch.testing.assert_close(_constant(graph_module, linear.args[2]), expected)


def test_scalar_addition_folds_after_scalars_to_constants() -> None:
    graph_module, _ = _rewrite(LinearThen(lambda y: y + 0.25, None), scalars_to_constants, (3, 8))
    assert linear_add_to_bias.run(graph_module) == 1
    assert _targets(graph_module) == [aten.linear.default]


@pytest.mark.parametrize(("model", "shapes"), [
    (LinearThen(torch.add, (3, 6)), ((3, 8),)),  # a constant per row, not per feature
    (Fn(lambda x, y: nn.functional.linear(x, y) + x[:, :1]), ((3, 8), (8, 8))),  # an activation
    (LinearThen(lambda y, c: (y + c) * y, (6,)), ((3, 8),)),  # the linear output has a second user
    (LinearThen(lambda y, c: torch.add(y, c, alpha=2), (6,)), ((3, 8),)),
], ids=["per-row", "activation", "two-users", "alpha"])
def test_other_additions_stay(model: nn.Module, shapes) -> None:
    graph_module, changed = _rewrite(model, linear_add_to_bias, *shapes)
    assert changed == 0
    assert aten.add.Tensor in _targets(graph_module)


# -- matmul_by_constant_to_linear --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 8), (2, 4, 8)], ids=["rank2", "rank3"])
def test_product_with_a_constant_becomes_linear(shape) -> None:
    model = WithConstant(torch.matmul, (8, 5))
    graph_module, changed = _rewrite(model, matmul_by_constant_to_linear, shape)
    assert changed == 1
    (linear,) = [n for n in graph_module.graph.nodes if n.op == "call_function"]
    assert linear.target == aten.linear.default
    assert torch.equal(_constant(graph_module, linear.args[1]), model.constant.detach().t())


def test_product_of_activations_is_not_linear() -> None:
    _, changed = _rewrite(Fn(torch.matmul), matmul_by_constant_to_linear, (4, 8), (8, 5))
    assert changed == 0


# -- matmul_to_bmm -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shapes", "targets"), [
    (((2, 4, 8), (2, 8, 5)), [aten.bmm.default]),
    (((2, 3, 4, 8), (2, 3, 8, 5)), [aten.reshape.default, aten.reshape.default, aten.bmm.default,
                                    aten.reshape.default]),
    (((4, 8), (8, 5)), [aten.reshape.default, aten.reshape.default, aten.bmm.default, aten.reshape.default]),
], ids=["rank3", "rank4", "rank2"])
def test_product_of_activations_becomes_bmm(shapes, targets) -> None:
    graph_module, changed = _rewrite(Fn(torch.matmul), matmul_to_bmm, *shapes)
    assert changed == 1
    assert _targets(graph_module) == targets
    (bmm,) = [n for n in graph_module.graph.nodes if n.target == aten.bmm.default]
    batch = shapes[0][0] * shapes[0][1] if len(shapes[0]) == 4 else (shapes[0][0] if len(shapes[0]) == 3 else 1)
    assert tuple(bmm.meta["val"].shape) == (batch, shapes[0][-2], shapes[1][-1])


@pytest.mark.parametrize("shapes", [((2, 4, 8), (1, 8, 5)), ((2, 4, 8), (8, 5))], ids=["broadcast", "ranks"])
def test_broadcasting_products_stay(shapes) -> None:
    graph_module, changed = _rewrite(Fn(torch.matmul), matmul_to_bmm, *shapes)
    assert changed == 0
    assert aten.bmm.default not in _targets(graph_module)


# -- flatten_linear_input ----------------------------------------------------------------------------------------


def test_linear_on_rank3_input_is_flattened() -> None:
    graph_module, changed = _rewrite(nn.Linear(8, 6), flatten_linear_input, (2, 4, 8))
    assert changed == 1
    assert _targets(graph_module) == [aten.reshape.default, aten.linear.default, aten.reshape.default]
    flat, linear, back = [n for n in graph_module.graph.nodes if n.op == "call_function"]
    assert flat.args[1] == [8, 8] and tuple(linear.meta["val"].shape) == (8, 6) and back.args[1] == [2, 4, 6]
    # The module stack survives, so set_module_name/set_module_type still configure the new linear.
    assert linear.meta["nn_module_stack"]


def test_linear_on_rank2_input_stays() -> None:
    graph_module, changed = _rewrite(nn.Linear(8, 6), flatten_linear_input, (4, 8))
    assert changed == 0
    assert _targets(graph_module) == [aten.linear.default]
