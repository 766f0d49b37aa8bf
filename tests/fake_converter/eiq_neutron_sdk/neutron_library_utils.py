"""TEST DOUBLE of ``eiq_neutron_sdk.neutron_library_utils``: which target names the SDK knows."""

from fake_neutron_common import getNeutronTargets, isNeutronTarget

__all__ = ["getNeutronTargets", "isNeutronTarget"]
