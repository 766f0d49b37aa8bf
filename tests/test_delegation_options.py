"""CustomDelegationOptions: defensive defaults and validation messages."""

from __future__ import annotations

import dataclasses

import pytest

from neutron_backend.compile_spec import NeutronConfigError
from neutron_backend.delegation_options import CustomDelegationOptions


def test_defaults_are_defensive():
    options = CustomDelegationOptions()
    assert options.force_delegate_cat is False
    assert options.allow_no_op_partitions is False
    assert options.min_compute_ops_per_partition == 1


def test_opt_ins_are_kept():
    options = CustomDelegationOptions(
        force_delegate_cat=True, allow_no_op_partitions=True, min_compute_ops_per_partition=3
    )
    assert (options.force_delegate_cat, options.allow_no_op_partitions) == (True, True)
    assert options.min_compute_ops_per_partition == 3


def test_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CustomDelegationOptions().force_delegate_cat = True


@pytest.mark.parametrize("field", ["force_delegate_cat", "allow_no_op_partitions"])
@pytest.mark.parametrize("value", ["True", 1, None])
def test_flags_must_be_bool(field, value):
    with pytest.raises(NeutronConfigError) as error:
        CustomDelegationOptions(**{field: value})
    message = str(error.value)
    assert field in message
    assert repr(value) in message
    assert "True or False" in message


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "2", None])
def test_min_compute_ops_must_be_a_positive_int(value):
    with pytest.raises(NeutronConfigError) as error:
        CustomDelegationOptions(min_compute_ops_per_partition=value)
    message = str(error.value)
    assert "min_compute_ops_per_partition" in message
    assert repr(value) in message
    assert "int >= 1" in message


def test_min_compute_ops_boundary():
    assert CustomDelegationOptions(min_compute_ops_per_partition=1).min_compute_ops_per_partition == 1
