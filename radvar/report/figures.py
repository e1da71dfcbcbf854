"""Seaborn figures of an analysis, drawn with matplotlib's Agg backend (no display needed).

* :func:`memory_by_layer` — bytes kept for backward per layer, exact vs plan;
* :func:`variance_vs_keep` — RAD variance of each randomizable layer against
  keep for each sketch family, with the layer's data noise as a dashed line;
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
from matplotlib.figure import Figure  # noqa: E402

if TYPE_CHECKING:
    from .result import Analysis

FIGURES = ("memory", "variance", "frontier")


def memory_by_layer(analysis: "Analysis") -> Figure:
    """Horizontal bars: bytes kept for backward by each layer, exact and with the plan."""
    layers = analysis.layers
    long = pd.concat([
        pd.DataFrame({"layer": layers["layer"], "config": "exact", "bytes": layers["bytes_exact"]}),
        pd.DataFrame({"layer": layers["layer"], "config": "plan", "bytes": layers["bytes_plan"]}),
    ])
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(layers) + 1.5), layout="constrained")
    sns.barplot(long, y="layer", x="bytes", hue="config", ax=ax, orient="h")
    ax.set_xlabel("bytes kept for backward (saved-tensor ledger)")
    ax.set_title("Memory by layer")
    return fig


def variance_vs_keep(analysis: "Analysis") -> Figure:
    """One panel per randomizable layer: RAD variance vs keep per family; dashed: data noise."""
    curves = analysis.curves
    names = list(dict.fromkeys(curves["layer"]))
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False, layout="constrained")
    noise = dict(zip(analysis.layers["layer"], analysis.layers["data_variance"]))
    for ax, name in zip(axes.flat, names):
        part = curves[curves["layer"] == name]
        sns.lineplot(part, x="keep", y="rad_variance", hue="family", marker="o", ax=ax, legend=ax is axes.flat[0])
        if noise.get(name) is not None and not pd.isna(noise.get(name)):
            ax.axhline(noise[name], ls="--", color="gray", label="data noise")
        ax.set(xscale="log", yscale="log", title=name, xlabel="keep", ylabel="RAD variance")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle("RAD variance vs keep (dashed: data noise at this batch size)")
    return fig


def frontier(analysis: "Analysis") -> Figure:
    """Saved bytes against total gradient variance: uniform and tuned RAD vs exact smaller batches."""
    front = analysis.frontier
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    lines = front[front["kind"].isin(["uniform RAD", "tuned", "exact small batch"])]
    sns.lineplot(lines, x="bytes", y="variance", hue="config", style="kind", markers=True, dashes=False,
                 estimator=None, sort=True, ax=ax)
    for kind, marker, label in (("exact", "s", "exact (compact twins)"), ("plan", "*", "analysed plan")):
        point = front[front["kind"] == kind]
        ax.scatter(point["bytes"], point["variance"], s=140, marker=marker, color="black", zorder=5, label=label)
    ax.set(xscale="log", yscale="log", xlabel="bytes kept for backward",
           ylabel="total gradient variance (data + RAD)", title="Memory vs variance")
    ax.legend(fontsize=7)
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
