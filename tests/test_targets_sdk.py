"""The SDK's target description (`targets._from_sdk`): looked up in a worker process, never in this one.

NXP's SDK is proprietary and not installable here: these tests use the TEST DOUBLES of tests/fake_converter/ and
small stand-in modules written here, which record the process they ran in.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from neutron_backend import converter, targets
from neutron_backend.compile_spec import parse_compile_spec
from neutron_backend.targets import get_target

FAKE_DIR = Path(__file__).parent / "fake_converter"
# The built-in table for imxrt700 (NXP's i.MX RT700 data: eIQ Neutron N3-64): 8 pipes x 8 MACs.
TABLE_IMXRT700 = (8, 8)


@pytest.fixture(autouse=True)
def _fresh_lookups() -> Iterator[None]:
    """Each test starts with no remembered lookups and leaves no double imported."""
    converter._target_lookups.clear()
    targets._reported_sdk_failures.clear()
    yield
    converter._target_lookups.clear()
    targets._reported_sdk_failures.clear()
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(FAKE_DIR)):
            del sys.modules[name]


def test_sdk_target_overrides_the_table_and_is_looked_up_in_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "pid"
    (tmp_path / "fake_sdk_target.py").write_text(
        "import os\n"
        "class _Npu:\n    numMacs = 16\n    numPipes = 4\n    subsystem = False\n"
        "def getNeutronTarget(name):\n"
        f"    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "    return _Npu()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    target = get_target("imxrt700", converter_module="fake_sdk_target")
    assert (target.num_macs, target.num_pipes, target.source) == (16, 4, "fake_sdk_target.getNeutronTarget")
    assert int(pid_file.read_text()) != os.getpid()
    assert "fake_sdk_target" not in sys.modules
    # Remembered: a second lookup starts no worker.
    pid_file.unlink()
    assert get_target("imxrt700", converter_module="fake_sdk_target").num_macs == 16
    assert not pid_file.exists()
    assert get_target("imxrt700", converter_module="no_such_sdk_module").num_macs == 8


def test_crashing_sdk_target_lookup_warns_and_keeps_the_table_and_this_process_survives(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    from neutron_converter_SDK_99_04 import CRASH_MESSAGE

    del sys.modules["neutron_converter_SDK_99_04"]
    with caplog.at_level(logging.WARNING, logger="neutron_backend.targets"):
        target = get_target("imxrt700", converter_module="neutron_converter_SDK_99_04")
        again = get_target("imxrt700", converter_module="neutron_converter_SDK_99_04")
    assert (target.num_macs, target.num_pipes, target.source) == (*TABLE_IMXRT700, "built-in table")
    assert again == target
    (warning,) = [r.getMessage() for r in caplog.records]  # once, not per lookup
    assert warning.startswith("Using the built-in numbers of target 'imxrt700': ")
    assert "neutron_converter_SDK_99_04.getNeutronTarget('imxrt700') crashed" in warning
    assert "SIGABRT" in warning and CRASH_MESSAGE in warning
    assert "neutron_converter_SDK_99_04" not in sys.modules


def test_crashing_sdk_behind_a_compile_spec_keeps_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from neutron_backend.compile_spec import generate_neutron_compile_spec

    monkeypatch.syspath_prepend(str(FAKE_DIR))
    spec = generate_neutron_compile_spec("imxrt700", neutron_converter_flavor="SDK_99_04")
    assert parse_compile_spec(spec).target.source == "built-in table"


@pytest.mark.parametrize(
    ("sdk_dir", "module", "version"),
    [
        (FAKE_DIR / "compiler_sdk", "eiq_neutron_sdk.neutron_compiler", "3.2.2"),
        (FAKE_DIR, "eiq_neutron_sdk.neutron_converter", "3.1.2"),
    ],
    ids=["compiler", "converter"],
)
def test_eiq_neutron_sdk_target_comes_from_its_interface_in_a_worker(
    sdk_dir: Path, module: str, version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups = tmp_path / "lookups.jsonl"
    monkeypatch.setenv("FAKE_NEUTRON_LOOKUP_LOG", str(lookups))
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    monkeypatch.syspath_prepend(str(sdk_dir))
    target = get_target("mcxn94x", converter_module="eiq_neutron_sdk")
    assert target.source == f"{module}.getNeutronTarget (SDK {version})"
    # The doubles describe mcxn94x as 2 pipes x 8 MACs, N1, no subsystem.
    assert (target.num_macs, target.num_pipes, target.subsystem) == (8, 2, False)
    (lookup,) = [json.loads(line) for line in lookups.read_text().splitlines()]
    assert lookup["pid"] != os.getpid()
    assert lookup["calls"] == [["isNeutronTarget", "mcxn94x"], ["getNeutronTarget", "mcxn94x"]]
    assert "eiq_neutron_sdk" not in sys.modules


def test_malformed_sdk_target_is_ignored_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "fake_sdk_zero.py").write_text(
        "class _Npu:\n    numMacs = 0\n    numPipes = 4\ndef getNeutronTarget(name):\n    return _Npu()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="neutron_backend.targets"):
        target = get_target("imxrt700", converter_module="fake_sdk_zero")
    assert (target.num_macs, target.num_pipes) == TABLE_IMXRT700
    assert "numMacs=0, numPipes=4 must be positive" in caplog.text
