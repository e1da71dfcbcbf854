"""Seaborn figures of an analysis, drawn with matplotlib's Agg backend (no display needed).

Modules are labelled ``name (Type)``, and every figure stays bounded in size
whatever the depth of the model.

* :func:`memory_by_layer` — bytes kept for backward per row of the table
  (deep models grouped by block, see :mod:`radvar.report.rows`), exact vs plan;
* :func:`variance_vs_keep` — RAD variance of the layers with the most of it
  against keep for each sketch family (the rest summed in one panel), with the
  layer's data noise as a dashed line;
* :func:`frontier` — saved bytes vs total gradient variance (data + RAD) for
  uniform and tuned RAD plans, exact smaller batches and the analysed plan.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from .rows import label, shown  # noqa: E402
from .tables import format_bytes  # noqa: E402

if TYPE_CHECKING:
    from .result import Analysis

FIGURES = ("memory", "variance", "frontier")
PANELS = 9  # variance-vs-keep panels: the layers with the most RAD variance, the last one sums the rest


def _labels(analysis: "Analysis") -> dict[str, str]:
    return {r["layer"]: label(r["layer"], r["type"]) for r in analysis.per_layer.to_dict(orient="records")}


def _keep_axis(ax: Axes, keeps: list[float]) -> None:
    """Log keep axis with ticks at the scanned keeps, labelled where the text fits: a label needs a
    gap to its labelled neighbour (in decades) of at least 0.036 x the axis span (decades) x the
    mean label length (characters), so dense grids never collide."""
    ax.set_xscale("log")
    text = {k: f"{k:g}" for k in keeps}
    span = math.log10(keeps[-1] / keeps[0]) if len(keeps) > 1 else 1.0
    shown: list[float] = []
    for k in reversed(keeps):  # from the largest keep, so the top of the grid is always labelled
        if not shown or math.log10(shown[-1] / k) >= 0.036 * span * (len(text[k]) + len(text[shown[-1]])) / 2:
            shown.append(k)
    ax.set_xticks(keeps, [text[k] if k in shown else "" for k in keeps])
    ax.xaxis.set_minor_formatter(NullFormatter())


def memory_by_layer(analysis: "Analysis") -> Figure:
    """Horizontal bars: bytes kept for backward by each shown row (:func:`~radvar.report.rows.shown`), exact and plan."""
    rows, _ = shown(analysis)
    names = [label(r["layer"], r["type"]) for r in rows.to_dict(orient="records")]
    long = pd.concat([pd.DataFrame({"layer": names, "config": config, "bytes": rows[col].to_numpy()})
                      for config, col in (("exact", "bytes_exact"), ("plan", "bytes_plan"))])
    width = min(13.0, 5.0 + 0.075 * max(map(len, names)))  # room for the longest label beside 5 in of bars
    fig, ax = plt.subplots(figsize=(width, 0.32 * len(rows) + 1.6), layout="constrained")
    sns.barplot(long, y="layer", x="bytes", hue="config", ax=ax, orient="h")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_bytes(v)))
    ax.set(xlabel="bytes kept for backward (saved-tensor ledger)", ylabel="", title="Memory by layer")
    return fig


def _top_curves(analysis: "Analysis") -> tuple[pd.DataFrame, list[str]]:
    """Curves of the PANELS − 1 layers with the most RAD variance, and one curve summing the others."""
    curves = analysis.curves.assign(layer=analysis.curves["layer"].map(lambda n: _labels(analysis).get(n, n)))
    names = list(dict.fromkeys(curves["layer"]))
    if len(names) <= PANELS:
        return curves, names
    worst = curves.groupby("layer", sort=False)["rad_variance"].max().nlargest(PANELS - 1).index
    top = [n for n in names if n in set(worst)]
    rest_name = f"the other {len(names) - len(top)} layers, summed"
    rest = (curves[~curves["layer"].isin(top)].groupby(["family", "keep"], as_index=False, sort=False)["rad_variance"]
            .sum().assign(layer=rest_name))
    return pd.concat([curves[curves["layer"].isin(top)], rest]), [*top, rest_name]


def variance_vs_keep(analysis: "Analysis") -> Figure:
    """One panel per layer with the most RAD variance (the rest summed): RAD variance vs keep per family;
    dashed: the layer's data noise."""
    curves, names = _top_curves(analysis)
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False, layout="constrained")
    labels = _labels(analysis)
    noise = {labels[r["layer"]]: r["data_variance"] for r in analysis.per_layer.to_dict(orient="records")}
    keeps = sorted(curves["keep"].unique())
    for ax, name in zip(axes.flat, names):
        part = curves[curves["layer"] == name]
        sns.lineplot(part, x="keep", y="rad_variance", hue="family", marker="o", ax=ax, legend=ax is axes.flat[0])
        if noise.get(name) is not None and not pd.isna(noise.get(name)):
            ax.axhline(noise[name], ls="--", color="gray", label="data noise")
        ax.set(yscale="log", xlabel="keep", ylabel="RAD variance")
        ax.set_title(name, fontsize=9)
        _keep_axis(ax, keeps)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    first = axes.flat[0]
    handles, texts = first.get_legend_handles_labels()
    first.get_legend().remove()
    fig.legend(handles, texts, loc="outside lower center", ncols=min(len(texts), 5), fontsize=8)
    fig.suptitle("RAD variance vs keep (dashed: data noise at this batch size)")
    return fig


def frontier(analysis: "Analysis") -> Figure:
    """Saved bytes against total gradient variance: uniform and tuned RAD vs exact smaller batches."""
    front = analysis.frontier
    fig, ax = plt.subplots(figsize=(9.5, 4.8), layout="constrained")
    lines = front[front["kind"].isin(["uniform RAD", "tuned", "exact small batch"])]
    sns.lineplot(lines, x="bytes", y="variance", hue="config", style="kind", markers=True, dashes=False,
                 estimator=None, sort=True, ax=ax)
    for kind, marker, name in (("exact", "s", "exact (compact twins)"), ("plan", "*", "analysed plan")):
        point = front[front["kind"] == kind]
        ax.scatter(point["bytes"], point["variance"], s=140, marker=marker, color="black", zorder=5, label=name)
    ax.set(xscale="log", yscale="log", xlabel="bytes kept for backward",
           ylabel="total gradient variance (data + RAD)", title="Memory vs variance")
    handles, texts = ax.get_legend_handles_labels()  # without seaborn's "config"/"kind" sub-headings
    shown = [(h, t) for h, t in zip(handles, texts) if t not in ("config", "kind")]
    ax.legend(*zip(*shown), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def draw(analysis: "Analysis") -> dict[str, Figure]:
    """All figures, keyed by :data:`FIGURES` (an analysis with no curves has no variance figure)."""
    figs = {"memory": memory_by_layer(analysis)}
    if len(analysis.curves):
        figs["variance"] = variance_vs_keep(analysis)
    if len(analysis.frontier):
        figs["frontier"] = frontier(analysis)
    return figs


def png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
