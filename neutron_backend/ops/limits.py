"""Limits that depend on the version of NXP's converter (facts.md, "Limits that changed with NXP's compiler version").

NXP's MLIR-based Neutron-C flow became the only flow in eIQ Neutron SDK 3.1.2 (June 2026) and lifted several
limits of the older converters. An operator module declares each such limit as a `VersionedLimit` next to its check
and asks `applies(limit, ctx.flavor)`; the compile spec's `neutron_converter_flavor` selects the constraint set.

The one assumption mapping flavors to converter versions (no public table; correct it here):
- no flavor (emulation on this PC) and `eiq_neutron_sdk` (the package NXP ships from SDK 3.x on) get the current
  converter, so the looser limits;
- `SDK_yy_mm`, the MCUXpresso SDK release of that year and month, ships the converter of its date: flavors before
  `SDK_26_06` (June 2026, the release carrying eIQ Neutron SDK 3.1.2) get the older, stricter limits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The first MCUXpresso SDK release (year, month) whose converter runs the new flow (eIQ Neutron SDK 3.1.2).
NEW_FLOW_SINCE = (2026, 6)
NEW_FLOW_SDK = "eIQ Neutron SDK 3.1.2"
_SDK_FLAVOR = re.compile(r"SDK_(\d{2})_(\d{2})")


@dataclass(frozen=True)
class VersionedLimit:
    """A limit older converters impose: `description` says what it requires; it applies to converters released
    before `until` (year, month), i.e. flavors before SDK_yy_mm of that date."""

    description: str
    until: tuple[int, int] = NEW_FLOW_SINCE

    @property
    def first_free_flavor(self) -> str:
        year, month = self.until
        return f"SDK_{year % 100:02d}_{month:02d}"

    def text(self) -> str:
        """The limit for the support table: what, and which flavors it applies to."""
        return (f"with converter flavors before {self.first_free_flavor} (before {NEW_FLOW_SDK}) only: "
                f"{self.description}")


def flavor_release(flavor: str | None) -> tuple[int, int] | None:
    """(year, month) of the converter a flavor names, or None for the current converter (no flavor,
    `eiq_neutron_sdk`)."""
    match = _SDK_FLAVOR.fullmatch(flavor or "")
    return None if match is None else (2000 + int(match.group(1)), int(match.group(2)))


def applies(limit: VersionedLimit, flavor: str | None) -> bool:
    """Whether `limit` binds the converter of `flavor` (see the module docstring for the mapping)."""
    release = flavor_release(flavor)
    return release is not None and release < limit.until
