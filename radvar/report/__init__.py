"""Reports shared by notebooks and the CLI: the per-layer analysis, tables, seaborn figures, documents.

``analyze(model, (x, y), loss_fn, batch_size=..., plan=...)`` -> :class:`Analysis`
(``per_layer``, ``total`` and more tidy frames, ``.summary()``, ``.to_dict()``/``.from_dict()``;
the shape of every radvar result); :func:`write_report`
writes report.md, a self-contained report.html and analysis.json; :mod:`radvar.report.figures`
draws the seaborn figures (imported on first use: it loads matplotlib).
"""

from .analysis import FAMILIES, analyze
from .._atomic import atomic_folder, atomic_path, check_writable, write_text
from .coverage import Coverage, coverage
from .document import check_target, html_document, markdown, write_report
from .result import Analysis
from .tables import FORMATS, bench_table, format_bytes, layer_table, render, summary_lines, table_notes

__all__ = [
    "Analysis", "analyze", "FAMILIES", "Coverage", "coverage",
    "atomic_folder", "atomic_path", "check_target", "check_writable", "write_report", "write_text", "markdown", "html_document",
    "FORMATS", "render", "layer_table", "table_notes", "summary_lines", "bench_table", "format_bytes",
]
