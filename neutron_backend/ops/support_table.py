"""The operator support table (docs/op-support.csv), generated from the registry.

`python -m neutron_backend.ops.support_table` prints it as CSV (`make ops-table` rewrites the file).
"""

from __future__ import annotations

import argparse
import csv
import io

from neutron_backend import ops

COLUMNS = ("Operator", "Compute DType", "Quantization", "Constraints")


def support_rows() -> list[tuple[str, str, str, str]]:
    """One row per registered operator, sorted by name."""
    return [(op.name, "int8", op.quantization, op.constraints) for op in ops.operators()]


def support_csv() -> str:
    """The support table as CSV text with a header row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(support_rows())
    return buffer.getvalue()


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    print(support_csv(), end="")


if __name__ == "__main__":
    main()
