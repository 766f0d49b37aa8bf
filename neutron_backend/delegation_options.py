"""Custom delegation options: opt-ins to opportunistic delegation, and partition controls.

Defensive by default: with no options, nothing is delegated whose success cannot be decided statically. Each
boolean field is one documented opt-in that trades that safety for more work on the NPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from neutron_backend.errors import NeutronConfigError


@dataclass(frozen=True)
class CustomDelegationOptions:
    """How far the partitioner may go beyond what it can prove the converter compiles."""

    force_delegate_cat: bool = False
    """Delegate `cat` even when its channels are not a multiple of the target's `num_macs`.

    Risk: older SDK converters reject such a concatenation, and the whole partition then fails to compile.
    """

    allow_no_op_partitions: bool = False
    """Delegate partitions made only of no-op and shape operators (view, permute, squeeze, ...).

    Risk: each such partition costs a delegate call (and possibly a layout transpose) for no computation.
    """

    min_compute_ops_per_partition: int = 1
    """Partitions with fewer compute (non-shape) operators than this stay on the CPU; at least 1.

    Risk of raising it: small partitions that would have run faster on the NPU stay on the CPU; of 1: a lone
    operator between CPU ops may cost more in delegate calls and transfers than it saves.
    """

    def __post_init__(self) -> None:
        for field in ("force_delegate_cat", "allow_no_op_partitions"):
            value = getattr(self, field)
            if not isinstance(value, bool):
                raise NeutronConfigError(
                    f"{field} must be True or False, got {type(value).__name__} {value!r}"
                )
        minimum = self.min_compute_ops_per_partition
        # bool is an int subclass, but True as a count is a mistake worth reporting.
        if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
            raise NeutronConfigError(
                f"min_compute_ops_per_partition must be an int >= 1, got {type(minimum).__name__} {minimum!r}"
            )
