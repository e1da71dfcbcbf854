"""Tables for terminals, Markdown and JSON: formatting only, no estimates."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from .rows import LIMIT, shown

if TYPE_CHECKING:
    from .result import Analysis

FORMATS = ("table", "markdown", "json")


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def format_bytes(n: Any) -> str:
    """Decimal units, three significant digits: ``1.23 MB``."""
    if _missing(n):
        return "-"
    n = float(n)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def format_float(v: Any) -> str:
    """Three significant digits; ``-`` for missing; ``0`` for exact zeros."""
    if _missing(v):
        return "-"
    return "0" if v == 0 else f"{float(v):.3g}"


def layer_table(analysis: "Analysis", limit: int = LIMIT) -> pd.DataFrame:
    """The per-layer table as shown: saved bytes exact -> plan, RAD variance, data noise, plan entry.

    At most ``limit`` rows (see :func:`radvar.report.rows.shown`; :func:`table_notes` says what was folded).
    """
    rows = []
    for r in shown(analysis, limit)[0].to_dict(orient="records"):
        rows.append({
            "layer": r["layer"], "type": r["type"], "shape": r["shape"],
            "saved exact -> plan": f"{format_bytes(r['bytes_exact'])} -> {format_bytes(r['bytes_plan'])}",
            "RAD variance": format_float(r["rad_variance"]) + (
                f" ± {format_float(r['rad_se'])}" if not _missing(r.get("rad_se")) and r["rad_se"] > 0 else ""),
            "data noise": format_float(r["data_variance"]),
            "plan": r["sketch"] or "exact",
        })
        if analysis.meta.get("draws"):
            rows[-1]["batch 1: closed form | Monte Carlo [99% CI]"] = (
                "-" if _missing(r["mc_variance"]) else
                f"{format_float(r['batch_rad_variance'])} | {format_float(r['mc_variance'])} "
                f"[{format_float(r['ci_low'])}, {format_float(r['ci_high'])}]")
    return pd.DataFrame(rows)


def table_notes(analysis: "Analysis", limit: int = LIMIT) -> list[str]:
    """What :func:`layer_table` folded (modules keeping 0 B, blocks, the rest summed), and how the RAD variance
    of propagating rows (activations, norms, attention, functional sites) was obtained."""
    notes = shown(analysis, limit)[1]
    layers = analysis.per_layer
    probed = layers[layers["method"].astype(str).str.startswith("propagated")]
    if len(probed):
        names = ", ".join(f"{n} ({t})" for n, t in zip(probed["layer"], probed["type"]))
        notes.append(f"RAD variance of {names}: the variance each adds to every parameter gradient upstream "
                     f"(its error propagates), {probed['method'].iloc[0]} ± one standard error; data noise '-': "
                     f"not split per module for these (the noise of their own parameters, e.g. a norm's γ and β, "
                     f"is in the data-noise total)")
    return notes


def _ratio(v: Any, fmt: str) -> str:
    return "∞" if _missing(v) or math.isinf(v) else format(v, fmt)


def summary_lines(analysis: "Analysis") -> list[str]:
    """Totals in words: memory saved, variance added, equivalent batch size."""
    t = analysis.total.to_dict(orient="records")[0]
    lines = [f"saved for backward: {format_bytes(t['bytes_exact'])} exact -> {format_bytes(t['bytes_plan'])} "
             f"with the plan ({_ratio(t['memory_ratio'], '.2f')}x less, {format_bytes(t['memory_saved'])} saved)"]
    added = "" if _missing(t["variance_added"]) else f" (+{100 * t['variance_added']:.0f}%)"
    lines.append(f"gradient variance: data noise {format_float(t['data_variance'])} (all parameters, batch "
                 f"{t['batch_size']}) + RAD {format_float(t['rad_variance'])}{added}")
    if not _missing(t.get("rad_se")) and t["rad_se"] > 0:
        lines.append(f"RAD total ± {format_float(t['rad_se'])} (one standard error of the probe estimates); "
                     f"{t.get('rad_total')}")
    eq, small = t["equivalent_batch_size"], t["small_batch_same_memory"]
    lines.append(f"equivalent exact batch size: {format_float(eq)} of {t['batch_size']}; "
                 f"the exact batch that fits in the plan's memory: {small}")
    verdict = "beats" if eq > small else "does not beat"
    lines.append(f"in the same memory, the plan {verdict} exact training at batch {small} "
                 f"(equivalent batch {format_float(eq)} vs {small})")
    if not _missing(t.get("slowdown_measured")):
        predicted = ("not predicted (no cached layer timings; tune with --max-slowdown to time the layers)"
                     if _missing(t.get("slowdown_predicted")) else
                     f"{t['slowdown_predicted']:.2f}x predicted by the per-layer cost model")
        lines.append(f"step time: {t['step_plan_ms']:.3g} ms with the plan vs {t['step_plain_ms']:.3g} ms plain, "
                     f"{t['slowdown_measured']:.2f}x measured (median of interleaved steps); {predicted}")
    return lines


def bench_table(frame: pd.DataFrame) -> pd.DataFrame:
    """``radvar.bench.compare`` output, formatted."""
    return pd.DataFrame({
        "config": frame["config"],
        "saved": [format_bytes(v) for v in frame["saved_bytes"]],
        "step ms": [f"{v:.2f}" for v in frame["step_ms"]],
        "memory ratio": [f"{v:.2f}x" for v in frame["memory_ratio"]],
        "time ratio": [f"{v:.2f}x" for v in frame["time_ratio"]],
    })


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def render(frame: pd.DataFrame, fmt: str) -> str:
    """``table`` (aligned text), ``markdown`` or ``json`` (a list of records)."""
    if fmt == "table":
        return frame.to_string(index=False)
    if fmt == "markdown":
        return markdown(frame)
    if fmt == "json":
        return json.dumps(frame.to_dict(orient="records"), indent=2)
    raise ValueError(f"render: fmt must be one of {FORMATS}, got {fmt!r}")
