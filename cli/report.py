"""``radvar report``: re-render a saved analysis.json (table, Markdown, JSON, or a report folder)."""

from __future__ import annotations

import json

import click

from radvar import report as report_lib

from .options import log, runtime_options
from .specs.errors import one_line


@click.command()
@click.argument("analysis_json", metavar="ANALYSIS.json")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Write report.md, report.html (figures embedded), analysis.json and PNGs here.")
@click.option("--format", "fmt", type=click.Choice(report_lib.FORMATS), default="table", show_default=True)
@runtime_options
def report(analysis_json: str, out_dir: str | None, fmt: str) -> None:
    """Re-render a saved analysis.json (table, Markdown, report folder)."""
    if out_dir is not None:
        report_lib.check_target(out_dir)
    try:
        with open(analysis_json) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"ANALYSIS.json: file {analysis_json!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"ANALYSIS.json: {analysis_json!r} is not valid JSON ({e})") from None
    try:
        analysis = report_lib.Analysis.from_dict(data)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"ANALYSIS.json: {analysis_json!r}: {one_line(e)}") from None
    if out_dir is not None:
        log(f"report written to {report_lib.write_report(analysis, out_dir)}/")
    echo_analysis(analysis, fmt)


def echo_analysis(analysis: report_lib.Analysis, fmt: str) -> None:
    """The analysis on stdout: the JSON, or the per-layer table and the totals."""
    if fmt == "json":
        click.echo(json.dumps(analysis.to_dict(), indent=2))
        return
    click.echo(report_lib.render(report_lib.layer_table(analysis), fmt))
    for note in report_lib.table_notes(analysis):
        click.echo(note)
    click.echo("")
    click.echo("\n".join(report_lib.summary_lines(analysis)))
