"""radvar.report rendering: JSON round trip, tables, Markdown/HTML, atomic report folders.

These tests check rendering only, on a small hand-made Analysis; the numbers of
a real analysis are checked in tests/test_cli.py against the library.
"""

from __future__ import annotations

import base64
import io
import json
import re

import pandas as pd
import pytest
from PIL import Image

from radvar import report
from radvar.report import document, figures, tables
from radvar.report.result import CURVE_COLUMNS, FRONTIER_COLUMNS, LAYER_COLUMNS


def small_analysis() -> report.Analysis:
    layers = pd.DataFrame([
        ["fc|1", "Linear", "8x4", True, 128, 32, "Subsample(0.25, shared)", 0.25, 0.5, 0.1, "closed form",
         0.4, None, None, None],
        ["act", "ReLU", "8x3", False, 96, 8, "exact", None, 0.0, float("nan"), "exact", 0.0, None, None, None],
        ["(loss)", "(loss)", "", False, 40, 40, "exact", None, 0.0, float("nan"), "exact", 0.0, None, None, None],
    ], columns=LAYER_COLUMNS)
    curves = pd.DataFrame([["fc|1", fam, k, v / k] for fam in ("A", "B") for k, v in ((0.1, 1.0), (0.5, 0.3))],
                          columns=CURVE_COLUMNS)
    frontier = pd.DataFrame([
        ["uniform A", "uniform RAD", "A 0.1", 100, 2.0], ["uniform A", "uniform RAD", "A 0.5", 200, 1.0],
        ["exact, smaller batch", "exact small batch", "b 4", 130, 1.5], ["exact", "exact", "exact", 264, 0.2],
        ["plan", "plan", "the analysed plan (measured)", 80, 0.6],
    ], columns=FRONTIER_COLUMNS)
    totals = {"batch_size": 8, "bytes_exact": 264, "bytes_plan": 80, "memory_saved": 184, "memory_ratio": 3.3,
              "data_variance": 0.1, "rad_variance": 0.5, "variance_added": 5.0, "equivalent_batch_size": 1.33,
              "small_batch_same_memory": 2}
    return report.Analysis({"model": "m", "draws": 0}, layers, totals, curves, frontier, plan=None)


def test_json_round_trip_keeps_every_record():
    a = small_analysis()
    d = json.loads(json.dumps(a.to_dict()))  # strictly JSON: NaN became null
    assert d["layers"][1]["data_variance"] is None and d["layers"][0]["layer"] == "fc|1"
    back = report.Analysis.from_dict(d)
    assert back.to_dict() == d
    assert "saved for backward: 264 B exact -> 80 B" in back.summary()


def test_probed_rows_show_their_standard_error_and_round_trip():
    a = small_analysis()
    a.per_layer.loc[1, ["sketch", "rad_variance", "method"]] = ["Quantize(2 bits, per-row)", 0.25,
                                                              "propagated (64 probes)"]
    a.per_layer["rad_se"] = [0.0, 0.02, 0.0]
    d = json.loads(json.dumps(a.to_dict()))
    assert d["layers"][1]["rad_se"] == 0.02
    back = report.Analysis.from_dict(d)
    assert back.to_dict() == d
    text = back.summary()
    assert re.search(r"^\s*act\s+ReLU\s.*0\.25 ± 0\.02", text, re.M)
    assert "RAD variance of act (ReLU): the variance each adds to every parameter gradient upstream" in text


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format="radvar.plan"), "not a radvar analysis"),
    (lambda d: d.update(version=99), "unsupported analysis version 99"),
    (lambda d: d["layers"][0].pop("bytes_plan"), "'layers' records lack \\['bytes_plan'\\]"),
    (lambda d: d.update(curves={}), "'curves' must be a list of objects"),
])
def test_from_dict_names_what_is_wrong(mutate, message):
    d = small_analysis().to_dict()
    mutate(d)
    with pytest.raises(ValueError, match=message):
        report.Analysis.from_dict(d)


def test_tables_and_formats():
    assert [tables.format_bytes(v) for v in (0, 999, 1000, 1_234_567, 3e9)] == [
        "0 B", "999 B", "1 kB", "1.23 MB", "3 GB"]
    frame = tables.layer_table(small_analysis())
    assert list(frame.columns) == ["layer", "type", "shape", "saved exact -> plan", "RAD variance", "data noise",
                                   "plan"]
    md = tables.render(frame, "markdown").splitlines()
    assert md[0].startswith("| layer |") and md[2].startswith("| fc\\|1 | Linear |")  # pipes escaped
    assert json.loads(tables.render(frame, "json"))[1]["data noise"] == "-"
    with pytest.raises(ValueError, match="fmt must be one of \\('table', 'markdown', 'json'\\), got 'xml'"):
        tables.render(frame, "xml")


def test_html_embeds_png_figures():
    a = small_analysis()
    pngs = {key: figures.png(fig) for key, fig in figures.draw(a).items()}
    assert sorted(pngs) == ["frontier", "memory", "variance"]
    page = report.html_document(a, pngs)
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(found) == 3
    for data in found:
        assert Image.open(io.BytesIO(base64.b64decode(data))).format == "PNG"
    assert page.startswith("<!DOCTYPE html>") and "fc|1" in page


def test_write_report_is_atomic(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "draw", lambda a: {"memory": figures.memory_by_layer(a)})  # one figure: faster
    out = tmp_path / "rep"
    report.write_report(small_analysis(), out)
    first = (out / "analysis.json").read_text()
    changed = small_analysis()
    changed.meta["model"] = "other"

    real_html = document.html_document

    def broken(analysis, images):  # fails after the figures, JSON and Markdown are in the temp folder
        raise OSError("disk full")

    monkeypatch.setattr(document, "html_document", broken)
    with pytest.raises(OSError, match="disk full"):
        report.write_report(changed, out)
    assert (out / "analysis.json").read_text() == first  # the old report is intact
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # no temp folder left
    monkeypatch.setattr(document, "html_document", real_html)
    report.write_report(changed, out)  # an earlier report is replaced
    assert json.loads((out / "analysis.json").read_text())["meta"]["model"] == "other"
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_write_report_refuses_foreign_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="is not a radvar report folder|was not written by radvar"):
        report.write_report(small_analysis(), tmp_path)
    with pytest.raises(FileNotFoundError, match="parent folder"):
        report.check_target(tmp_path / "no" / "such")
