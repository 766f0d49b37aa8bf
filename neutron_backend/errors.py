"""Errors shared by modules that must not import each other."""

from __future__ import annotations


class NeutronConfigError(ValueError):
    """Raised for an invalid Neutron configuration: the message names the bad value and the valid choices."""
