"""docs/op-support.csv is generated from the operator registry; this fails when it is stale."""

import csv
import io
from pathlib import Path

from neutron_backend import ops
from neutron_backend.ops.support_table import COLUMNS, support_csv

TABLE = Path(__file__).resolve().parent.parent / "docs" / "op-support.csv"


def test_op_support_csv_is_up_to_date():
    assert TABLE.read_text() == support_csv(), "docs/op-support.csv is stale: run `make ops-table`"


def test_table_lists_every_registered_operator_once():
    rows = list(csv.reader(io.StringIO(support_csv())))
    assert tuple(rows[0]) == COLUMNS
    names = [row[0] for row in rows[1:]]
    assert names == sorted({op.name for op in ops.operators()})
    assert "aten.convolution.default" in names and "aten._softmax.default" in names


def test_every_operator_has_constraints_a_check_and_a_conversion():
    for operator in ops.operators():
        assert operator.constraints and operator.check is not None, operator.name
        assert operator.convert is not None, f"{operator.name} is delegable but cannot be converted"
