"""Graphs from other quantizers (tests/cross_quantizer.py): each node is delegated within its declared tolerance or
kept on the CPU with a reason; never a wrong delegated result, never a crash.

A CI run draws GRAPHS_PER_QUANTIZER fresh (operator, seed) pairs per quantizer kind (seeds printed;
NEUTRON_CROSS_SEED reproduces a run); bench/cross_quantizer_soak.py covers every registered operator thousands of
times. A failing case goes into REGRESSIONS for good.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
from cross_quantizer import QUANTIZERS, check, draw, operator_names

# 12 lowerings through the host runtime: slow, still run in CI.
pytestmark = pytest.mark.slow
GRAPHS_PER_QUANTIZER = 4
# (seed, operator, quantizer) of cases that once failed, with what went wrong.
REGRESSIONS: dict[tuple[int, str, str], str] = {
    (520, "aten.exp.default", "hand"): "input scale 10: float32 exp table infinite, the .pte failed to load",
    (796, "aten.exp.default", "hand"): "input scale 10: float32 exp table infinite, the .pte failed to load",
    (1902, "aten.hardswish.default", "hand"): "output scale 1e-4 below input scale / 128: delegated, and the .pte "
                                               "failed to load (TFLite's HARD_SWISH refuses that multiplier)",
    # The checker, not the backend: relu6 left in float after a delegated convolution, 1 step of the convolution's
    # output taken for a float error (tolerance 1e-5).
    (749, "aten.convolution.default", "xnnpack_per_tensor"): "float relu6 after a delegated conv: 1 step flagged",
    (1715, "aten.convolution.default", "xnnpack_per_tensor"): "float relu6 after a delegated conv: 1 step flagged",
    (1807, "aten.convolution.default", "xnnpack_per_channel"): "float relu6 after a delegated conv: 1 step flagged",
}


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_graphs_from_another_quantizer_are_delegated_right_or_kept_with_a_reason(quantizer: str) -> None:
    first = int(os.environ.get("NEUTRON_CROSS_SEED", random.SystemRandom().randrange(10**6, 10**9)))
    rng = random.Random(first)
    names = operator_names()
    print(f"cross-quantizer {quantizer}: NEUTRON_CROSS_SEED={first} reproduces this run")
    checked = 0
    for seed in range(first, first + 4 * GRAPHS_PER_QUANTIZER):
        if checked == GRAPHS_PER_QUANTIZER:
            break
        operator = rng.choice(names)
        case = draw(seed, operator, quantizer)
        if case is None:
            continue
        with tempfile.TemporaryDirectory() as directory:
            try:
                check(case, Path(directory))
            except Exception as error:
                raise AssertionError(f"{case} failed (add ({seed}, {operator!r}, {quantizer!r}) to REGRESSIONS)") \
                    from error
        checked += 1
    assert checked == GRAPHS_PER_QUANTIZER


@pytest.mark.parametrize(("seed", "operator", "quantizer"), sorted(REGRESSIONS))
def test_cases_that_once_failed(seed: int, operator: str, quantizer: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        check(draw(seed, operator, quantizer), Path(directory))
