"""The target table: numbers from NXP's published target data (cores, MACs, clocks), lookups, and errors naming the
valid targets."""

import pytest

from neutron_backend import get_target, list_targets
from neutron_backend.targets import UnknownTargetError


def test_builtin_targets_are_listed_in_order():
    assert list_targets() == ["imxrt700", "mcxn94x", "imx95"]


@pytest.mark.parametrize(
    ("name", "num_macs", "macs_per_cycle"),
    [("imxrt700", 8, 64), ("mcxn94x", 8, 16), ("imx95", 8, 1024)],
)
def test_target_numbers_match_the_facts(name, num_macs, macs_per_cycle):
    target = get_target(name)
    assert target.num_macs == num_macs
    assert target.macs_per_cycle == macs_per_cycle


def test_imxrt700_is_n3_64_with_8_pipes_of_8():
    target = get_target("imxrt700")
    assert (target.npu, target.num_pipes, target.hw_version, target.subsystem) == ("eIQ Neutron N3-64", 8, "N3", False)


def test_assumed_numbers_say_so():
    assert any("assumption" in a or "derived" in a or "assumed" in a or "not public" in a
               for a in get_target("mcxn94x").assumptions)
    assert get_target("imx95").subsystem is True


@pytest.mark.parametrize("spelling", ["IMXRT700", "i.MX-RT700", "imx_rt700"])
def test_lookup_ignores_case_and_separators(spelling):
    assert get_target(spelling).name == "imxrt700"


def test_unknown_target_lists_valid_ones_and_the_closest():
    with pytest.raises(UnknownTargetError) as error:
        get_target("imxrt600")
    message = str(error.value)
    assert "'imxrt600'" in message
    assert "['imxrt700', 'mcxn94x', 'imx95']" in message
    assert "Did you mean 'imxrt700'?" in message


def test_non_string_target_is_rejected_with_its_type():
    with pytest.raises(UnknownTargetError, match="got int 700"):
        get_target(700)
