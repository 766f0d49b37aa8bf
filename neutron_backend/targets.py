"""The Neutron targets we know, with the source of every number.

When NXP's converter is installed, `getNeutronTarget` from it wins over this table (see `get_target`).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, replace

logger = logging.getLogger(__name__)


class UnknownTargetError(ValueError):
    """Raised for a target name not in the table."""


@dataclass(frozen=True)
class NeutronTarget:
    """One Neutron NPU configuration.

    `num_macs` is the channel granularity of one pipe (channel divisibility, the conv weight-size limit);
    `num_pipes` x `num_macs` is the MACs per cycle. `sram_bytes` and `flash_bytes` are the on-chip memory budgets
    (None: unknown, or no on-chip flash), `sram_source` and `flash_source` say where they come from.
    """

    name: str
    npu: str
    neutron_kind: str
    hw_version: str
    num_macs: int
    num_pipes: int
    subsystem: bool
    npu_clock_hz: float
    cpu: str
    cpu_clock_hz: float
    sram_bytes: int | None
    assumptions: tuple[str, ...] = ()
    source: str = "built-in table"
    # Memory budgets (neutron_backend.memory_fit): on-chip flash (None: the part has none, or it is not known) and
    # where each figure comes from.
    flash_bytes: int | None = None
    sram_source: str = ""
    flash_source: str = ""

    @property
    def macs_per_cycle(self) -> int:
        return self.num_macs * self.num_pipes


_BUILTIN: dict[str, NeutronTarget] = {
    # i.MX RT700: eIQ Neutron N3-64, 8 pipes x 8 MACs (NXP i.MX RT700 product brief and fact sheet);
    # Cortex-M33 at up to 325 MHz (same source); > 7.5 MB SRAM (same source).
    "imxrt700": NeutronTarget(
        name="imxrt700",
        npu="eIQ Neutron N3-64",
        neutron_kind="Neutron-C",
        hw_version="N3",
        num_macs=8,
        num_pipes=8,
        subsystem=False,
        npu_clock_hz=325e6,
        cpu="Cortex-M33",
        cpu_clock_hz=325e6,
        sram_bytes=7_500_000,
        assumptions=("NPU clock equal to the 325 MHz Cortex-M33 clock (no public NPU clock figure)",),
        flash_bytes=None,
        sram_source="NXP i.MX RT700 fact sheet: 7.5 MB on-chip SRAM (read as 7,500,000 B, the smaller reading)",
        flash_source="no on-chip flash (NXP i.MX RT700 fact sheet): the .pte lives in external xSPI flash, whose "
                     "size depends on the board; not checked",
    ),
    # MCX N94x (N947/N547): eIQ Neutron N1-16, 16 MACs/cycle at 150 MHz = 4.8 GOPS, 512 KB SRAM
    # (NXP MCX N94x/N54x data sheet and product page).
    "mcxn94x": NeutronTarget(
        name="mcxn94x",
        npu="eIQ Neutron N1-16",
        neutron_kind="Neutron-C",
        hw_version="N1",
        num_macs=8,
        num_pipes=2,
        subsystem=False,
        npu_clock_hz=150e6,
        cpu="Cortex-M33",
        cpu_clock_hz=150e6,
        sram_bytes=512 * 1024,
        assumptions=(
            "num_macs = 8 per pipe (pipe split not public); num_pipes = 16 / 8 = 2 derived from the total",
        ),
        flash_bytes=2 * 1024 * 1024,
        sram_source="NXP MCX N94x/N54x data sheet: 512 KB on-chip SRAM",
        flash_source="NXP MCX N94x/N54x data sheet: 2 MB on-chip flash",
    ),
    # i.MX 95: eIQ Neutron-S, subsystem with a RISC-V controller and a DMA data mover (NXP i.MX 95 fact sheet);
    # ~1024 MACs/cycle derived from 2 TOPS at ~1 GHz; TCM size not public.
    "imx95": NeutronTarget(
        name="imx95",
        npu="eIQ Neutron-S",
        neutron_kind="Neutron-S",
        hw_version="S",
        num_macs=8,
        num_pipes=128,
        subsystem=True,
        npu_clock_hz=1e9,
        cpu="Cortex-A55",
        cpu_clock_hz=1.8e9,
        sram_bytes=None,
        assumptions=(
            "num_macs = 8 per pipe (pipe split not public); num_pipes = 1024 / 8 = 128 derived",
            "1024 MACs/cycle derived from 2 TOPS at ~1 GHz",
            "NPU clock ~1 GHz",
        ),
        flash_bytes=None,
        sram_source="unknown: the Neutron-S TCM size is not public",
        flash_source="application processor: the .pte is loaded from storage into DDR; not checked",
    ),
}


def list_targets() -> list[str]:
    """Names of the built-in targets, in table order."""
    return list(_BUILTIN)


def _closest(name: str, choices: list[str]) -> list[str]:
    return difflib.get_close_matches(name.lower(), choices, n=3, cutoff=0.4)


# (converter module, target) pairs whose SDK lookup failed and was reported; it is reported once.
_reported_sdk_failures: set[tuple[str, str]] = set()


def _from_sdk(target: NeutronTarget, converter_module: str | None) -> NeutronTarget:
    """Overrides the table's numbers with the SDK's `getNeutronTarget` when the converter is installed.

    The lookup runs in a worker process (neutron_backend.converter.sdk_target), as conversions do: a native SDK
    that crashes cannot take this process down. When it fails, a warning says why and the table stands.
    """
    if converter_module is None:
        return target
    from neutron_backend.converter import ConverterNotInstalledError, TargetLookupError, sdk_target

    try:
        sdk = sdk_target(converter_module, target.name)
    except ConverterNotInstalledError as error:
        logger.debug("getNeutronTarget(%r) unavailable: %s", target.name, error)
        return target
    except TargetLookupError as error:
        if (converter_module, target.name) not in _reported_sdk_failures:
            _reported_sdk_failures.add((converter_module, target.name))
            logger.warning("Using the built-in numbers of target %r: %s", target.name, error)
        return target
    try:
        num_macs, num_pipes = int(sdk["numMacs"]), int(sdk["numPipes"])
        if num_macs <= 0 or num_pipes <= 0:
            raise ValueError(f"numMacs={num_macs}, numPipes={num_pipes} must be positive")
    except (KeyError, TypeError, ValueError) as error:
        logger.warning("Ignoring malformed getNeutronTarget(%r) from %s (%s): %s", target.name, converter_module,
                       sdk, error)
        return target
    subsystem = sdk.get("subsystem")
    return replace(
        target,
        num_macs=num_macs,
        num_pipes=num_pipes,
        subsystem=target.subsystem if subsystem is None else bool(subsystem),
        source=f"{sdk.get('module', converter_module)}.getNeutronTarget"
        + (f" (SDK {sdk['version']})" if sdk.get("version") else ""),
    )


def get_target(name: str, converter_module: str | None = None) -> NeutronTarget:
    """The target called `name` (case-insensitive).

    Raises UnknownTargetError listing the valid names and the closest match.
    """
    if not isinstance(name, str):
        raise UnknownTargetError(
            f"target must be a string, got {type(name).__name__} {name!r}; valid targets: {list_targets()}"
        )
    key = name.strip().lower().replace("-", "").replace("_", "").replace(".", "")
    if key not in _BUILTIN:
        close = _closest(key, list_targets())
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownTargetError(f"unknown Neutron target {name!r}; valid targets: {list_targets()}.{hint}")
    return _from_sdk(_BUILTIN[key], converter_module)
