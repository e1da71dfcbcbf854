"""Report documents: Markdown, self-contained HTML (figures as base64 PNG), and the report folder.

:func:`write_report` builds the whole folder (``report.md``, ``report.html``,
``analysis.json``, one PNG per figure and the marker ``.radvar-report.json``) in a
temporary sibling folder and renames it into place at the end, so a failure or an
interrupt never leaves a partial report; it never replaces a folder holding anything
radvar did not write.
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from .._atomic import atomic_folder, check_folder
from . import tables

if TYPE_CHECKING:
    from .result import Analysis

NOTE = ("Bytes are the saved-tensor ledger: each storage counts once, under the first module that keeps it "
        "(a plain Linear's input kept by the ReLU before it shows under that ReLU). Variances are "
        "E‖Ĝ − G‖²_F of each weight gradient; data noise is tr Σ / B from per-example gradients.")
TITLES = {"memory": "Memory by layer", "variance": "RAD variance vs keep", "frontier": "Memory vs variance"}
_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3;padding:0 3px}"""


def _meta_items(analysis: "Analysis") -> list[tuple[str, str]]:
    return [(k, str(v)) for k, v in analysis.meta.items()]


def markdown(analysis: "Analysis", figure_files: Mapping[str, str] | None = None) -> str:
    """The report as Markdown; ``figure_files`` maps figure keys to image paths to link."""
    out = ["# radvar analysis", ""]
    out += [f"- **{k}**: {v}" for k, v in _meta_items(analysis)]
    out += ["", "## Totals", ""] + [f"- {line}" for line in tables.summary_lines(analysis)]
    out += ["", "## Layers", "", tables.markdown(tables.layer_table(analysis)), ""]
    out += [text for line in tables.table_notes(analysis) for text in (f"{line}.", "")] + [NOTE]
    for key, path in (figure_files or {}).items():
        out += ["", f"## {TITLES[key]}", "", f"![{TITLES[key]}]({path})"]
    return "\n".join(out) + "\n"


def html_body(analysis: "Analysis", images: Mapping[str, bytes]) -> str:
    """The report's HTML body; each PNG in ``images`` is embedded as a data URI."""
    meta = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in _meta_items(analysis))
    totals = "".join(f"<li>{html.escape(line)}</li>" for line in tables.summary_lines(analysis))
    parts = [f"<h1>radvar analysis</h1><ul>{meta}</ul><h2>Totals</h2><ul>{totals}</ul><h2>Layers</h2>",
             tables.layer_table(analysis).to_html(index=False, border=0),
             *(f"<p>{html.escape(line)}.</p>" for line in tables.table_notes(analysis)), f"<p>{html.escape(NOTE)}</p>"]
    for key, data in images.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts.append(f'<h2>{TITLES[key]}</h2><img alt="{TITLES[key]}" src="{uri}">')
    return "\n".join(parts)


def html_document(analysis: "Analysis", images: Mapping[str, bytes]) -> str:
    """A complete, self-contained HTML page."""
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>radvar analysis</title>"
            f"<style>{_CSS}</style></head><body>\n{html_body(analysis, images)}\n</body></html>\n")


def _names() -> list[str]:
    return ["analysis.json", "report.md", "report.html", *(f"{key}.png" for key in TITLES)]


def check_target(out: str | os.PathLike) -> Path:
    """Raise, naming ``out``, unless it can become a report folder: new, empty, or a report folder
    radvar wrote (marker ``.radvar-report.json``) holding nothing but report files."""
    return check_folder(out, "report", _names())


def write_report(analysis: "Analysis", out: str | os.PathLike, started: float | None = None) -> Path:
    """Write the report folder ``out`` atomically (a temporary folder renamed into place); an existing
    folder is replaced only under the conditions of :func:`check_target`.

    ``started``: a :func:`time.perf_counter` reading at the start of the command; once the
    figures are drawn, ``analysis.meta["seconds"]`` is set to the time since then, so the
    report states the run time of the whole command (figures included).
    """
    from . import figures  # seaborn/matplotlib load in seconds: only when figures are drawn

    out = check_target(out)
    pngs = {key: figures.png(fig) for key, fig in figures.draw(analysis).items()}
    if started is not None:
        analysis.meta["seconds"] = round(time.perf_counter() - started, 2)
    with atomic_folder(out, "report", _names()) as tmp:
        for key, data in pngs.items():
            (tmp / f"{key}.png").write_bytes(data)
        (tmp / "analysis.json").write_text(json.dumps(analysis.to_dict(), indent=2) + "\n")
        (tmp / "report.md").write_text(markdown(analysis, {k: f"{k}.png" for k in pngs}))
        (tmp / "report.html").write_text(html_document(analysis, pngs))
    return out
