"""``VarianceReport``: per-layer and total variance figures, in the manner of a statsmodels result.

``per_layer`` is a tidy DataFrame, one row per (layer, keep); ``total`` one row
per keep (or a single row). ``summary()`` prints both, ``plot()`` draws
variance against keep per layer next to the data noise, ``to_dict()`` /
``from_dict()`` round-trip through JSON (NaN as null).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from .._result import Result, clean, from_records, records, table

COLUMNS = ["layer", "type", "sketch", "keep", "bytes_exact", "bytes_plan", "rad_variance", "rad_se",
           "data_variance", "grad_norm_sq", "ci_low", "ci_high", "method"]
KINDS = ("analytic", "empirical", "minibatch")


@dataclasses.dataclass
class VarianceReport(Result):
    """Result of :func:`analytic`, :func:`empirical` or :func:`minibatch`.

    ``per_layer`` columns (at least): layer, type, sketch, keep, bytes_exact,
    bytes_plan, rad_variance (E‖Ĝ − G‖²_F of the weight gradient), rad_se,
    data_variance (tr Σ_W / B), grad_norm_sq (‖G‖²), ci_low/ci_high, method.
    ``total``: sums over layers (one row per keep) plus whole-model figures.
    """

    kind: str
    per_layer: pd.DataFrame
    total: pd.DataFrame
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"VarianceReport: kind must be one of {KINDS}, got {self.kind!r}")
        missing = [c for c in COLUMNS if c not in self.per_layer.columns]
        if missing:
            raise ValueError(f"VarianceReport: per_layer lacks columns {missing}")

    # ---- text ------------------------------------------------------------
    @property
    def heading(self) -> str:
        return f"radvar variance report ({self.kind})"

    def summary(self) -> str:
        """A readable table: header facts, the per-layer rows and the totals."""
        head = [self.heading]
        head += [f"  {k}: {v}" for k, v in self.meta.items() if not isinstance(v, (dict, list))]
        return "\n".join(head + ["", table(self.per_layer), "", "total:", table(self.total)])

    # ---- figures ---------------------------------------------------------
    def plot(self, ax: Any = None) -> Any:
        """Variance against keep per layer (log-log), with each layer's data noise dashed; returns the Axes.

        Layers are labelled ``name (Type)``; the keep axis is labelled at the keeps analysed.
        With a single keep per layer: RAD and data variance side by side per layer, as horizontal bars.
        """
        import matplotlib.pyplot as plt
        import seaborn as sns
        from matplotlib.ticker import NullFormatter

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 4.5))
        frame = self.per_layer.assign(layer=[f"{n} ({t})" if t and t != n else n
                                             for n, t in zip(self.per_layer["layer"], self.per_layer["type"])])
        if frame["keep"].nunique(dropna=True) > 1:
            sns.lineplot(data=frame, x="keep", y="rad_variance", hue="layer", style="layer", markers=True, ax=ax)
            palette = dict(zip(frame["layer"].unique(), sns.color_palette(n_colors=frame["layer"].nunique())))
            for layer, rows in frame.dropna(subset=["data_variance"]).groupby("layer", sort=False):
                ax.axhline(rows["data_variance"].iloc[0], ls="--", lw=1, color=palette[layer])
            keeps = sorted(frame["keep"].dropna().unique())
            ax.set(xscale="log", yscale="log", xlabel="keep fraction", ylabel="variance  E‖Ĝ − G‖²")
            ax.set_xticks(keeps, [f"{k:g}" for k in keeps])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title("RAD variance vs keep (dashed: minibatch data noise)")
        else:
            long = frame.melt(id_vars=["layer"], value_vars=["rad_variance", "data_variance"],
                              var_name="source", value_name="variance").dropna()
            sns.barplot(data=long, y="layer", x="variance", hue="source", orient="h", ax=ax)
            ax.set(xscale="log", xlabel="variance  E‖Ĝ − G‖²", ylabel="")
        return ax

    # ---- JSON ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "per_layer": records(self.per_layer), "total": records(self.total),
                "meta": {k: clean(v) for k, v in self.meta.items()}}

    @classmethod
    def from_dict(cls, d: Any) -> "VarianceReport":
        if not isinstance(d, dict) or not {"kind", "per_layer", "total"} <= set(d):
            raise ValueError(f"VarianceReport.from_dict: need a dict with 'kind', 'per_layer' and 'total', got {d!r:.200}")
        return cls(d["kind"], from_records(d["per_layer"], None, "VarianceReport 'per_layer'"),
                   from_records(d["total"], None, "VarianceReport 'total'"), dict(d.get("meta") or {}))
