"""Which rows a table or a figure shows, so that deep models stay readable.

* Modules that keep nothing for backward (0 B exact and with the plan) and that
  the plan leaves exact (Identity, Dropout, Flatten, ...) are not listed; a note
  counts them by type.
* If more than ``limit`` rows remain, rows merge by block: at the deepest name
  depth where at most ``limit`` groups remain (``blocks.3``, ``encoder.layer.3``),
  each group summed and labelled with its module type.
* If even the top-level groups are too many, the ``limit − 1`` groups that keep
  the most bytes stay, in model order, and one row sums the rest.

Rows stay in the model's module order (a container before its children).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from .result import Analysis

LIMIT = 24  # rows of a table, bars of the memory figure


def label(name: str, kind: str) -> str:
    """``name (Type)``: how figures name a row (``(loss)`` stays as is)."""
    return name if not kind or name == kind else f"{name} ({kind})"


def _sum(values: pd.Series) -> float:
    """Sum of the known values; NaN when none is known."""
    known = values.dropna()
    return float(known.sum()) if len(known) else math.nan


def _sketches(part: pd.DataFrame) -> str:
    used = part.loc[part["sketch"].fillna("exact") != "exact", "sketch"]
    if used.empty:
        return "exact"
    names = used.unique()
    return f"{len(used)}× {names[0]}" if len(names) == 1 else f"{len(used)} sketched (mixed)"


def _merged_se(part: pd.DataFrame) -> float:
    """Standard error of the sum of ``part``'s RAD variances: independent estimates add in quadrature; probe
    estimates scored against shared directions (``method`` names them) are correlated, and their standard
    errors are added (an upper bound)."""
    shared = part["method"].astype(str).str.contains("directions")
    return math.sqrt(_sum(part.loc[~shared, "rad_se"] ** 2)) + _sum(part.loc[shared, "rad_se"])


def _merge(part: pd.DataFrame, name: str, kind: str) -> dict[str, Any]:
    """One row standing for the rows of ``part`` (a single row stands for itself)."""
    if len(part) == 1:
        return part.iloc[0].to_dict()
    keeps = part["keep"].dropna().unique()
    return {
        "layer": name, "type": f"{kind}: {len(part)} modules" if kind else f"{len(part)} modules",
        "shape": part["shape"].iloc[0], "randomized": bool(part["randomized"].any()),
        "bytes_exact": int(part["bytes_exact"].sum()), "bytes_plan": int(part["bytes_plan"].sum()),
        "sketch": _sketches(part), "keep": keeps[0] if len(keeps) == 1 else math.nan,
        "rad_variance": _sum(part["rad_variance"]), "data_variance": _sum(part["data_variance"]),
        "rad_se": _merged_se(part) if "rad_se" in part else 0.0,
        "method": ", ".join(dict.fromkeys(part["method"].dropna().astype(str))),
        "batch_rad_variance": _sum(part["batch_rad_variance"]), "mc_variance": _sum(part["mc_variance"]),
        "ci_low": math.nan, "ci_high": math.nan,  # a sum of intervals is no interval
    }


def _prefix(name: str, depth: int) -> str:
    return ".".join(name.split(".")[:depth])


def shown(analysis: "Analysis", limit: int = LIMIT) -> tuple[pd.DataFrame, list[str]]:
    """The rows to display (columns of ``analysis.per_layer``) and notes saying what was folded."""
    if limit < 2:
        raise ValueError(f"shown: limit must be >= 2, got {limit}")
    layers = analysis.per_layer
    idle = ((layers["bytes_exact"] == 0) & (layers["bytes_plan"] == 0)
            & (layers["sketch"].fillna("exact") == "exact"))
    notes = []
    if idle.any():
        counts = layers.loc[idle, "type"].value_counts(sort=False)
        listed = ", ".join(f"{n} {t}" for t, n in counts.items())
        notes.append(f"not listed: {listed} (keep 0 B for backward)")
    rows = layers[~idle]
    if len(rows) <= limit:
        return rows.reset_index(drop=True), notes
    depth = max(len(n.split(".")) for n in rows["layer"])
    while depth > 1 and rows["layer"].map(lambda n: _prefix(n, depth)).nunique() > limit:
        depth -= 1
    keys = rows["layer"].map(lambda n: _prefix(n, depth))
    merged = pd.DataFrame([_merge(part, key, analysis.modules.get(key, ""))
                           for key, part in rows.groupby(keys, sort=False)], columns=layers.columns)
    notes.append(f"grouped by block: names cut after {depth} part{'s' if depth > 1 else ''}")
    if len(merged) > limit:
        top = merged.nlargest(limit - 1, "bytes_exact").index.sort_values()
        rest = merged.drop(index=top)
        others = {**_merge(rest, f"({len(rest)} others)", ""), "type": "the rest, summed"}
        merged = pd.concat([merged.loc[top], pd.DataFrame([others])])
        notes.append(f"the {len(rest)} groups keeping the fewest bytes are summed in one row")
    return merged.reset_index(drop=True), notes
