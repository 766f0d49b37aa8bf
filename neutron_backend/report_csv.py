"""The CSV rendering of the per-layer profile (`neutron compile --per-layer FILE.csv`): one row per layer, the
columns of neutron_backend.layer_profile.COLUMNS; shapes as `1x112x112x32`, several separated by spaces."""

from __future__ import annotations

import csv
import io

from neutron_backend.cost_model import LatencyEstimate
from neutron_backend.layer_profile import COLUMNS, per_layer


def per_layer_csv(estimate: LatencyEstimate) -> str:
    """The per-layer profile of `estimate` as CSV text with a header row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in per_layer(estimate):
        values = row.to_dict()
        for key in ("input_shapes", "output_shapes"):
            values[key] = " ".join("x".join(map(str, shape)) for shape in values[key])
        values["partition"] = "" if row.partition is None else row.partition
        writer.writerow([values[column] for column in COLUMNS])
    return out.getvalue()
