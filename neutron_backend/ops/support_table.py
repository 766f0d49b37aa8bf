"""The operator support table (docs/op-support.csv), generated from the registry; and per target.

`python -m neutron_backend.ops.support_table` prints it as CSV (`make ops-table` rewrites the file). With
`--target T` the constraints are evaluated for that target: `num_macs` becomes the target's number, and an operator
that declares `target_limits` adds the limits in numbers (e.g. the largest input channel count per kernel size).
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import textwrap

from neutron_backend import ops
from neutron_backend.ops.base import QParamsContract
from neutron_backend.targets import NeutronTarget, get_target, list_targets

COLUMNS = ("Operator", "Compute DType", "Quantization", "Constraints", "QParams contract", "Also written as")
TARGET_COLUMNS = (*COLUMNS[:4], "Limits on target", *COLUMNS[4:])

_TARGET_NUMBERS = re.compile(r"\b(num_macs|num_pipes)\b")


def _evaluate(text: str, target: NeutronTarget) -> str:
    return _TARGET_NUMBERS.sub(lambda match: str(getattr(target, match.group(1))), text)


def _constraints(operator: ops.NeutronOperator) -> str:
    """The operator's constraints, then each limit that only older converters impose (neutron_backend.ops.limits)."""
    return "; ".join([operator.constraints, *(limit.text() for limit in operator.versioned_limits)])


def support_rows(target: str | NeutronTarget | None = None) -> list[tuple[str, ...]]:
    """One row per registered operator, sorted by name (COLUMNS); with a target, constraints evaluated for it and
    its limits in numbers after them (TARGET_COLUMNS)."""
    if target is None:
        return [(op.name, "int8", op.quantization, _constraints(op), *_declared(op)) for op in ops.operators()]
    chosen = target if isinstance(target, NeutronTarget) else get_target(target)
    return [(op.name, "int8", op.quantization, _evaluate(_constraints(op), chosen),
             op.target_limits(chosen) if op.target_limits is not None else "", *_declared(op))
            for op in ops.operators()]


def _declared(op: ops.NeutronOperator) -> tuple[str, str]:
    """The qparams contract (the partitioner enforces it) and the names a user may write for the operator."""
    contract = op.qparams.value if isinstance(op.qparams, QParamsContract) else "depends on the node (see constraints)"
    return contract, " ".join(op.aliases)


def support_csv(target: str | NeutronTarget | None = None) -> str:
    """The support table as CSV text with a header row (generic, or evaluated for `target`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS if target is None else TARGET_COLUMNS)
    writer.writerows(support_rows(target))
    return buffer.getvalue()


def support_text(target: str | NeutronTarget | None = None, width: int = 120) -> str:
    """The support table for reading in a terminal: one block per operator, constraints wrapped to `width`."""
    chosen = None if target is None else (target if isinstance(target, NeutronTarget) else get_target(target))
    if chosen is None:
        lines = ["Neutron operator support (all targets; `neutron ops --target T` evaluates the limits for one)"]
    else:
        lines = [f"Neutron operator support on {chosen.name} ({chosen.npu}: num_macs = {chosen.num_macs}, "
                 f"num_pipes = {chosen.num_pipes}, {chosen.macs_per_cycle} MACs/cycle)"]
    lines.append("Only int8-quantized operators are delegated; anything else stays on the CPU with a reason.")
    for row in support_rows(chosen):
        lines += ["", row[0], *textwrap.wrap(f"quantization: {row[2]}", width, initial_indent="  ",
                                             subsequent_indent="    ")]
        lines += textwrap.wrap(f"constraints: {row[3]}", width, initial_indent="  ", subsequent_indent="    ")
        contract, aliases = row[-2:]
        lines.append(f"  qparams contract: {contract}")
        if aliases:
            lines.append(f"  also written as: {aliases}")
        if chosen is not None and row[4]:
            lines += textwrap.wrap(f"limits: {row[4]}", width, initial_indent="  ", subsequent_indent="    ")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=list_targets(), default=None,
                        help="evaluate the constraints for this target")
    args = parser.parse_args()
    print(support_csv(args.target), end="")


if __name__ == "__main__":
    main()
