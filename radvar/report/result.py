"""``Analysis``: the result of ``radvar analyze``, as tidy frames plus a JSON form.

Frames (one row each):

* ``layers`` — per leaf module that keeps bytes for backward or has a plan
  entry: ``layer``, ``type``, ``shape`` (its input), ``randomized`` (radvar
  can sketch it), ``bytes_exact``/``bytes_plan`` (the saved-tensor ledger on
  the exact and the converted model), ``sketch``/``keep`` (the plan; ``exact``
  otherwise), ``rad_variance`` (E‖Ĝ − G‖²_F added by the plan), ``data_variance``
  (tr Σ / B, the minibatch noise of the same weight gradient), ``method``,
  ``batch_rad_variance`` (the closed form on the first batch alone; ``rad_variance``
  averages batches), and with a Monte Carlo check on that batch ``mc_variance``,
  ``ci_low``, ``ci_high`` (else null).
* ``curves`` — RAD variance vs keep: ``layer``, ``family``, ``keep``, ``rad_variance``.
* ``frontier`` — memory vs total gradient variance (data + RAD): ``config``
  (the curve), ``kind`` (``exact``, ``uniform RAD``, ``tuned``, ``exact small
  batch``, ``plan``), ``label`` (the point), ``bytes``, ``variance``.

``totals`` holds the sums and the equivalent batch size; ``meta`` what was
analysed and how. The JSON form (:meth:`to_dict`) has a top-level ``layers``
list whose records match the table.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd

from . import document, tables

FORMAT = "radvar.analysis"
VERSION = 1
LAYER_COLUMNS = ["layer", "type", "shape", "randomized", "bytes_exact", "bytes_plan", "sketch", "keep",
                 "rad_variance", "data_variance", "method", "batch_rad_variance", "mc_variance", "ci_low", "ci_high"]
CURVE_COLUMNS = ["layer", "family", "keep", "rad_variance"]
FRONTIER_COLUMNS = ["config", "kind", "label", "bytes", "variance"]


def _clean(value: Any) -> Any:
    """JSON-safe scalars: NaN -> None, numpy scalars -> Python."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _clean(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _frame(records: Any, columns: list[str], what: str) -> pd.DataFrame:
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"analysis JSON: {what!r} must be a list of objects, got {type(records).__name__}")
    missing = {c for r in records for c in columns if c not in r}
    if missing:
        raise ValueError(f"analysis JSON: {what!r} records lack {sorted(missing)}; expected columns {columns}")
    return pd.DataFrame(records, columns=columns)


@dataclasses.dataclass
class Analysis:
    """Where the memory goes, what a plan saves, and what it costs in gradient variance."""

    meta: dict[str, Any]
    layers: pd.DataFrame
    totals: dict[str, Any]
    curves: pd.DataFrame
    frontier: pd.DataFrame
    plan: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "meta": self.meta,
                "totals": {k: _clean(v) for k, v in self.totals.items()},
                "layers": _records(self.layers[LAYER_COLUMNS]),
                "curves": _records(self.curves[CURVE_COLUMNS]),
                "frontier": _records(self.frontier[FRONTIER_COLUMNS]),
                "plan": self.plan}

    @classmethod
    def from_dict(cls, d: Any) -> "Analysis":
        """Inverse of :meth:`to_dict`; names what is wrong with a foreign or damaged file."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not a radvar analysis: expected format {FORMAT!r}, got {got!r}")
        if d.get("version") != VERSION:
            raise ValueError(f"unsupported analysis version {d.get('version')!r}; this radvar reads {VERSION}")
        for key in ("meta", "totals"):
            if not isinstance(d.get(key), dict):
                raise ValueError(f"analysis JSON: {key!r} must be an object")
        return cls(meta=d["meta"], totals=d["totals"],
                   layers=_frame(d.get("layers"), LAYER_COLUMNS, "layers"),
                   curves=_frame(d.get("curves"), CURVE_COLUMNS, "curves"),
                   frontier=_frame(d.get("frontier"), FRONTIER_COLUMNS, "frontier"),
                   plan=d.get("plan"))

    def summary(self) -> str:
        """The per-layer table and the totals, as plain text."""
        return tables.render(tables.layer_table(self), "table") + "\n\n" + "\n".join(tables.summary_lines(self))

    def _repr_html_(self) -> str:
        return document.html_body(self, images={})
