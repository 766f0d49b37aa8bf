"""Limits that follow the converter version (neutron_backend/ops/limits.py): the compile spec's flavor selects them.

With no flavor (and with `eiq_neutron_sdk` or SDK_26_06 on) the current converter's looser limits apply; an older
flavor (SDK_25_06, via the converter test double in tests/fake_converter) gets the stricter ones, each rejection
with its reason. What the looser limits let through is checked numerically (<= 1 output step per requantizing op).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import entry_for, partition_edge, quantized_edge
from numerics import Fn, check_case
from torch import nn

from neutron_backend.ops import activation, concat, elementwise
from neutron_backend.ops.limits import VersionedLimit, applies, flavor_release

FAKE_DIR = Path(__file__).parent / "fake_converter"
OLD_FLAVOR = "SDK_25_06"
ADD, CAT, CLAMP = "aten.add.Tensor", "aten.cat.default", "aten.clamp.default"


@pytest.fixture
def old_converter(monkeypatch: pytest.MonkeyPatch) -> str:
    """The SDK_25_06 converter double made importable (a named flavor must be installed); returns the flavor."""
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FAKE_DIR), os.environ.get("PYTHONPATH")])))
    return OLD_FLAVOR


@pytest.mark.parametrize(("flavor", "release", "binds"), [
    (None, None, False), ("eiq_neutron_sdk", None, False), ("SDK_25_06", (2025, 6), True),
    ("SDK_26_03", (2026, 3), True), ("SDK_26_06", (2026, 6), False), ("SDK_26_12", (2026, 12), False),
])
def test_flavor_selects_the_constraint_set(flavor, release, binds):
    assert flavor_release(flavor) == release
    limit = VersionedLimit("x")
    assert limit.first_free_flavor == "SDK_26_06"
    assert applies(limit, flavor) is binds


def test_every_versioned_limit_is_declared_on_its_operators():
    from neutron_backend import ops

    declared = {op.name: op.versioned_limits for op in ops.operators() if op.versioned_limits}
    assert declared[CAT] == (concat.CHANNEL_MULTIPLE,)
    for name in (ADD, "aten.sub.Tensor", "aten.mul.Tensor", "aten.maximum.default", "aten.minimum.default"):
        assert declared[name] == (elementwise.ONE_FULL_OPERAND,)
    assert declared[CLAMP] == declared["aten.hardtanh.default"] == (activation.RELU_BOUNDS_ONLY,)


class _OddCat(nn.Module):
    """cat of 8 + 4 channels along channels: 4 is not a multiple of imxrt700's num_macs = 8."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 8, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


def _both_broadcast(x):
    return x[:, :, :1, :] + x[:, :1, :, :1]


def _clamp(x):
    return torch.clamp(x, -0.5, 0.75)


CASES = {  # name -> (model, input shape, target, reason with the older converter)
    "cat": (_OddCat, (1, 4, 4, 4), CAT,
            "input 1 has 4 channels, not a multiple of num_macs=8; the converter of flavor SDK_25_06 rejects this "
            "(converters from SDK_26_06 on accept it; or set CustomDelegationOptions(force_delegate_cat=True) if "
            "yours does)"),
    "add": (lambda: Fn(_both_broadcast), (1, 8, 4, 4), ADD,
            "broadcasting both inputs [1, 8, 1, 4] and [1, 1, 4, 1] to [1, 8, 4, 4]; the converter of flavor "
            "SDK_25_06 needs one input with the output's element count (converters from SDK_26_06 on do not)"),
    "clamp": (lambda: Fn(_clamp), (1, 8, 4, 4), CLAMP,
              "clamp bounds (-0.5, 0.75) are not a ReLU form [(-1.0, 1.0), (0.0, 1.0), (0.0, 6.0), (0.0, inf)]; "
              "the converter of flavor SDK_25_06 runs no other bounds (converters from SDK_26_06 on do, with equal "
              "input and output qparams)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_older_flavor_rejects_what_the_current_converter_runs(case, old_converter):
    build, shape, target, reason = CASES[case]
    torch.manual_seed(0)
    edge = quantized_edge(build(), (torch.randn(shape),))
    current = entry_for(partition_edge(edge), target)
    assert current.delegated, current.reason
    older = entry_for(partition_edge(edge, neutron_converter_flavor=old_converter), target)
    assert not older.delegated
    assert older.reason == reason


@pytest.mark.parametrize("case", sorted(CASES))
def test_what_the_looser_limits_delegate_is_within_one_step(case, tmp_path):
    # One requantizing operator on every path: the convs (cat keeps their qparams), the add, the clamp's input
    # quantize (the clamp itself keeps its input's qparams).
    build, shape, target, _ = CASES[case]
    check_case(case, build(), (shape,), (target,), tmp_path, max_error_steps=1.0)
