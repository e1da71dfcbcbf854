"""``Analysis``: the result of ``radvar analyze``, shaped like every radvar result (:mod:`radvar._result`).

Frames (one row each):

* ``per_layer`` — per module that keeps bytes for backward or has a plan
  entry, in the model's module order: ``layer``, ``type``, ``shape`` (its input), ``randomized`` (radvar
  can sketch it), ``bytes_exact``/``bytes_plan`` (the saved-tensor ledger on
  the exact and the converted model), ``sketch``/``keep`` (the plan; ``exact``
  otherwise), ``rad_variance`` (E‖Ĝ − G‖²_F added by the plan; for a propagating site — activation,
  norm, attention, functional site — the variance it adds over all parameters, a probe estimate),
  ``rad_se`` (its standard error; 0 for closed forms; optional), ``data_variance``
  (tr Σ / B, the minibatch noise of the same weight gradient), ``method``,
  ``batch_rad_variance`` (the closed form on the first batch alone; ``rad_variance``
  averages batches), and with a Monte Carlo check on that batch ``mc_variance``,
  ``ci_low``, ``ci_high`` (else null).
* ``total`` — one row: the sums and the equivalent batch size; ``rad_se`` (the RAD total's
  standard error) and ``rad_total`` (how the RAD total is formed: with propagating sites, their
  first-order sum).
* ``curves`` — RAD variance vs keep: ``layer``, ``family``, ``keep``, ``rad_variance``.
* ``frontier`` — memory vs total gradient variance (data + RAD): ``config``
  (the curve), ``kind`` (``exact``, ``uniform RAD``, ``tuned``, ``exact small
  batch``, ``plan``), ``label`` (the point), ``bytes``, ``variance``.

``meta`` holds what was analysed and how; ``modules`` the type of every module
by qualified name, in the model's order (figures and tables group by it). The
JSON form (:meth:`~Analysis.to_dict`) has a top-level ``layers`` list whose records
match ``per_layer`` and a ``totals`` object.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Mapping

import pandas as pd

from .._result import Result, from_records, records
from . import document, tables

FORMAT = "radvar.analysis"
VERSION = 1
LAYER_COLUMNS = ["layer", "type", "shape", "randomized", "bytes_exact", "bytes_plan", "sketch", "keep",
                 "rad_variance", "data_variance", "method", "batch_rad_variance", "mc_variance", "ci_low", "ci_high"]
SE_COLUMN = "rad_se"  # optional: analyses written before it existed lack it (closed forms only)
CURVE_COLUMNS = ["layer", "family", "keep", "rad_variance"]
FRONTIER_COLUMNS = ["config", "kind", "label", "bytes", "variance"]


def _frame(d: Mapping[str, Any], key: str, columns: list[str]) -> pd.DataFrame:
    return from_records(d.get(key), columns, f"analysis JSON: {key!r}")


@dataclasses.dataclass
class Analysis(Result):
    """Where the memory goes, what a plan saves, and what it costs in gradient variance.

    ``total`` may be given as a dict (one row). ``layers`` and ``totals`` (a dict) are
    deprecated aliases of ``per_layer`` and ``total``.
    """

    meta: dict[str, Any]
    per_layer: pd.DataFrame
    total: pd.DataFrame
    curves: pd.DataFrame
    frontier: pd.DataFrame
    plan: dict[str, Any] | None = None
    modules: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.total, Mapping):
            self.total = pd.DataFrame([dict(self.total)])
        if len(self.total) != 1:
            raise ValueError(f"Analysis: total must have one row, got {len(self.total)}")

    @property
    def layers(self) -> pd.DataFrame:
        warnings.warn("Analysis.layers is deprecated; use Analysis.per_layer", DeprecationWarning, stacklevel=2)
        return self.per_layer

    @property
    def totals(self) -> dict[str, Any]:
        warnings.warn("Analysis.totals is deprecated; use Analysis.total (a one-row DataFrame)",
                      DeprecationWarning, stacklevel=2)
        return self.total.to_dict(orient="records")[0]

    @property
    def heading(self) -> str:
        return "radvar analysis"

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "meta": self.meta,
                "totals": records(self.total)[0],
                "layers": records(self.per_layer[LAYER_COLUMNS + [c for c in (SE_COLUMN,) if c in self.per_layer]]),
                "curves": records(self.curves[CURVE_COLUMNS]),
                "frontier": records(self.frontier[FRONTIER_COLUMNS]),
                "plan": self.plan, "modules": self.modules}

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
        modules = d.get("modules", {})
        if not isinstance(modules, dict) or not all(isinstance(v, str) for v in modules.values()):
            raise ValueError("analysis JSON: 'modules' must be an object of module types by name")
        layers = _frame(d, "layers", LAYER_COLUMNS)
        if any(SE_COLUMN in r for r in d["layers"]):
            layers[SE_COLUMN] = pd.to_numeric([r.get(SE_COLUMN, 0.0) for r in d["layers"]], errors="coerce")
        return cls(meta=d["meta"], total=d["totals"], per_layer=layers,
                   curves=_frame(d, "curves", CURVE_COLUMNS), frontier=_frame(d, "frontier", FRONTIER_COLUMNS),
                   plan=d.get("plan"), modules=modules)

    def summary(self) -> str:
        """The per-layer table and the totals, as plain text."""
        return "\n".join([tables.render(tables.layer_table(self), "table"), *tables.table_notes(self), "",
                          *tables.summary_lines(self)])

    def _repr_html_(self) -> str:
        return document.html_body(self, images={})
