"""Reports on deep models stay bounded and readable: rows folded by block, named figures, no colliding ticks,
and report.html rendered in headless Chromium is not blank.

The analyses here are hand-made from real module trees (names and types from
``named_modules``) with fixed byte and variance figures: these tests check
rendering, not estimates (tests/test_cli.py checks a real analysis).
"""

from __future__ import annotations

import itertools
import shutil
import subprocess

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import radvar
from radvar import report
from radvar._result import Result
from radvar.report import figures, rows, tables
from radvar.report.result import CURVE_COLUMNS, FRONTIER_COLUMNS, LAYER_COLUMNS
from radvar.variance import VarianceReport

DPI = 110


class Block(nn.Module):
    """A transformer-like block: norm, MLP, dropout and an identity skip."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.skip, self.norm, self.fc1 = nn.Identity(), nn.LayerNorm(d), nn.Linear(d, 2 * d)
        self.act, self.fc2, self.drop = nn.GELU(), nn.Linear(2 * d, d), nn.Dropout(0.1)


class Net(nn.Module):
    """12 residual blocks between an embedding and a head (a ModuleList, so the forward is custom)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.blocks = nn.ModuleList([Block() for _ in range(12)])
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for b in self.blocks:
            x = b.skip(x) + b.drop(b.fc2(b.act(b.fc1(b.norm(x)))))
        return self.head(x)


class Gate(nn.Module):
    """A container that keeps bytes itself: the product saves both of its factors."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.drop = nn.Linear(6, 6), nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc(x)) * x


def analysis_of(model: nn.Module) -> report.Analysis:
    """An Analysis with one row per leaf of ``model`` (0 B for Identity/Dropout) and a curve per Linear."""
    layer_rows, curves = [], []
    leaves = [(n, m) for n, m in model.named_modules() if n and next(m.children(), None) is None]
    for i, (name, module) in enumerate(leaves):
        kind = type(module).__name__
        linear = isinstance(module, nn.Linear)
        idle = isinstance(module, (nn.Identity, nn.Dropout))
        exact = 0 if idle else 1000 + 10 * i
        layer_rows.append([name, kind, "16x8", linear, exact, exact // 4 if linear else exact,
                           "Subsample(0.25, shared)" if linear else "exact", 0.25 if linear else None,
                           0.1 + i / 100 if linear else 0.0, 0.05 if linear else float("nan"),
                           "closed form" if linear else "exact", 0.0, None, None, None])
        if linear:
            curves += [[name, fam, k, (1 + i) * s / k] for fam, s in (("Subsample(shared)", 1.0), ("Importance", 0.3))
                       for k in (0.02, 0.05, 0.1, 0.2, 0.5)]
    layer_rows.append(["(loss)", "(loss)", "", False, 40, 40, "exact", None, 0.0, float("nan"), "exact", 0.0,
                       None, None, None])
    per_layer = pd.DataFrame(layer_rows, columns=LAYER_COLUMNS)
    bytes_exact, bytes_plan = int(per_layer["bytes_exact"].sum()), int(per_layer["bytes_plan"].sum())
    frontier = pd.DataFrame([["uniform A", "uniform RAD", f"A {k}", int(bytes_exact * k), 1 / k] for k in (0.1, 0.3)]
                            + [["exact", "exact", "exact", bytes_exact, 0.2],
                               ["plan", "plan", "the analysed plan (measured)", bytes_plan, 0.6]],
                            columns=FRONTIER_COLUMNS)
    total = {"batch_size": 16, "bytes_exact": bytes_exact, "bytes_plan": bytes_plan,
             "memory_saved": bytes_exact - bytes_plan, "memory_ratio": bytes_exact / bytes_plan,
             "data_variance": 0.1, "rad_variance": 0.5, "variance_added": 5.0, "equivalent_batch_size": 2.7,
             "small_batch_same_memory": 5}
    return report.Analysis({"model": type(model).__name__, "draws": 0, "keeps": [0.02, 0.05, 0.1, 0.2, 0.5]},
                           per_layer, total, pd.DataFrame(curves, columns=CURVE_COLUMNS), frontier,
                           modules={n: type(m).__name__ for n, m in model.named_modules() if n})


def deep() -> report.Analysis:
    """12 transformer-like blocks between an embedding Linear and a head: 74 leaf rows."""
    model = nn.Module()
    model.embed = nn.Linear(8, 8)
    model.blocks = nn.Sequential(*[Block() for _ in range(12)])
    model.head = nn.Linear(8, 5)
    return analysis_of(model)


def test_deep_table_folds_idle_modules_and_groups_blocks():
    a = deep()
    assert len(a.per_layer) == 12 * 6 + 3
    shown, notes = rows.shown(a)
    assert list(shown["layer"]) == ["embed", *[f"blocks.{i}" for i in range(12)], "head", "(loss)"]  # tree order
    assert shown["type"].iloc[1] == "Block: 4 modules" and shown["sketch"].iloc[1] == "2× Subsample(0.25, shared)"
    assert notes[0] == "not listed: 12 Identity, 12 Dropout (keep 0 B for backward)"
    assert shown["bytes_exact"].sum() == a.total["bytes_exact"].iloc[0]  # folding keeps every byte
    assert shown["bytes_plan"].sum() == a.total["bytes_plan"].iloc[0]
    assert shown["rad_variance"].sum() == pytest.approx(a.per_layer["rad_variance"].sum())
    table = tables.layer_table(a)
    assert len(table) == len(shown) <= rows.LIMIT
    text = a.summary()
    assert "blocks.3" in text and "blocks.3.fc1" not in text and "Identity  " not in text


def _analyze(model: nn.Module) -> report.Analysis:
    radvar.seed(0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    return report.analyze(model.eval(), (x, y), F.cross_entropy, batch_size=8,
                          plan=radvar.Plan.uniform(model, radvar.sketch.Subsample(0.5)))


def test_a_real_analysis_of_a_deep_model_stays_bounded():
    a = _analyze(Net())
    assert len(a.per_layer) == 12 * 6 + 3  # the JSON keeps every module
    assert a.modules["blocks.4"] == "Block" and list(a.modules)[:3] == ["embed", "blocks", "blocks.0"]
    table = tables.layer_table(a)
    assert list(table["layer"]) == ["embed", *[f"blocks.{i}" for i in range(12)], "head", "(loss)"]
    assert set(table["type"].iloc[1:13]) == {"Block: 4 modules"}
    assert tables.table_notes(a)[0] == "not listed: 12 Identity, 12 Dropout (keep 0 B for backward)"
    shown, _ = rows.shown(a)
    assert shown["bytes_exact"].sum() == a.total["bytes_exact"].iloc[0]
    width, height = figures.memory_by_layer(a).get_size_inches() * DPI
    assert height < 800 and width < 1000


def test_a_container_that_keeps_bytes_comes_before_its_children():
    a = _analyze(nn.Sequential(nn.Linear(6, 6), Gate(), nn.Identity(), nn.Linear(6, 3)))
    assert list(a.per_layer["layer"]) == ["0", "1", "1.fc", "1.drop", "2", "3", "(loss)"]
    assert a.per_layer.set_index("layer").loc["1", ["type", "randomized"]].tolist() == ["Gate", False]
    assert a.per_layer.set_index("layer").loc["1", "bytes_exact"] > 0
    assert list(tables.layer_table(a)["layer"]) == ["0", "1", "1.fc", "3", "(loss)"]


def test_a_flat_deep_model_keeps_the_largest_rows_and_sums_the_rest():
    a = analysis_of(nn.Sequential(*[nn.Linear(8, 8) for _ in range(60)]))
    shown, notes = rows.shown(a, limit=10)
    assert len(shown) == 10 and shown["layer"].iloc[-1] == "(52 others)"
    kept = [int(n) for n in shown["layer"].iloc[:-1] if n != "(loss)"]
    assert kept == sorted(kept) and kept[-1] == 59  # the largest rows, in model order
    assert shown["bytes_exact"].sum() == a.total["bytes_exact"].iloc[0]
    assert "summed in one row" in notes[-1]
    with pytest.raises(ValueError, match="limit must be >= 2, got 1"):
        rows.shown(a, limit=1)


def test_small_models_list_every_row_by_name_and_type():
    a = analysis_of(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)))
    shown, notes = rows.shown(a)
    assert list(shown["layer"]) == ["0", "1", "2", "(loss)"] and notes == []
    fig = figures.memory_by_layer(a)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
        "0 (Linear)", "1 (ReLU)", "2 (Linear)", "(loss)"]
    panels = [ax.get_title() for ax in figures.variance_vs_keep(a).axes if ax.get_visible() and ax.get_title()]
    assert panels == ["0 (Linear)", "2 (Linear)"]


def _overlaps(fig) -> list[str]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = []
    for ax in (ax for ax in fig.axes if ax.get_visible()):
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
            boxes = [t.get_window_extent(renderer) for t in labels]
            found += [f"{ax.get_title()!r}: {labels[i].get_text()!r} / {labels[j].get_text()!r}"
                      for i, j in itertools.combinations(range(len(boxes)), 2) if boxes[i].overlaps(boxes[j])]
    return found


@pytest.mark.parametrize("keeps", [[0.02, 0.05, 0.1, 0.2, 0.5],
                                   [0.02, 0.03125, 0.05, 0.0625, 0.1, 0.125, 0.2, 0.25, 0.5],  # + Quantize bits/32
                                   [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]])
def test_keep_axis_labels_never_collide_on_dense_grids(keeps):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for ax in axes:
        ax.plot(keeps, keeps)
        figures._keep_axis(ax, keeps)
    labelled = [t.get_text() for t in axes[0].xaxis.get_ticklabels() if t.get_text()]
    assert _overlaps(fig) == [] and labelled[-1] == f"{keeps[-1]:g}" and len(labelled) >= 3
    plt.close(fig)


@pytest.mark.parametrize("make", [deep, lambda: analysis_of(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)))],
                         ids=["deep", "small"])
def test_figures_are_bounded_labelled_and_ticks_do_not_collide(make):
    a = make()
    drawn = figures.draw(a)
    assert sorted(drawn) == ["frontier", "memory", "variance"]
    for key, fig in drawn.items():
        width, height = fig.get_size_inches() * DPI
        assert width <= 1500 and height <= 1300, (key, width, height)
        assert _overlaps(fig) == [], key
    memory_labels = [t.get_text() for t in drawn["memory"].axes[0].get_yticklabels()]
    assert all("(" in t for t in memory_labels)  # every bar says what it is
    titles = [ax.get_title() for ax in drawn["variance"].axes if ax.get_visible() and ax.get_title()]
    assert len(titles) <= figures.PANELS
    if len(a.curves["layer"].unique()) > figures.PANELS:
        assert titles[-1].startswith("the other ") and titles[-1].endswith(" layers, summed")
    keep_ticks = [t.get_text() for t in drawn["variance"].axes[0].get_xticklabels() if t.get_text()]
    assert keep_ticks == ["0.02", "0.05", "0.1", "0.2", "0.5"]
    for fig in drawn.values():
        figures.png(fig)


def test_results_share_one_shape():
    a = deep()
    v = VarianceReport("analytic", pd.DataFrame([{
        "layer": "fc", "type": "Linear", "sketch": "Subsample(0.25, shared)", "keep": 0.25, "bytes_exact": 64,
        "bytes_plan": 16, "rad_variance": 0.5, "rad_se": 0.0, "data_variance": None, "grad_norm_sq": 2.0,
        "ci_low": None, "ci_high": None, "method": "closed form"}]), pd.DataFrame([{"rad_variance": 0.5}]))
    for result in (a, v):
        assert isinstance(result, Result)
        assert isinstance(result.per_layer, pd.DataFrame) and isinstance(result.total, pd.DataFrame)
        assert str(result) == result.summary() and "<table" in result._repr_html_()
        assert type(result).from_dict(result.to_dict()).to_dict() == result.to_dict()
    with pytest.warns(DeprecationWarning, match="use Analysis.per_layer"):
        assert a.layers is a.per_layer
    with pytest.warns(DeprecationWarning, match="use Analysis.total"):
        assert a.totals["bytes_plan"] == a.total["bytes_plan"].iloc[0]


def test_report_states_the_run_time_of_the_whole_command(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "draw", lambda a: {"memory": figures.memory_by_layer(a)})
    a = deep()
    report.write_report(a, tmp_path / "rep", started=-1e9)  # a start far in the past
    assert a.meta["seconds"] > 1e8 and f"**seconds**: {a.meta['seconds']}" in (tmp_path / "rep" / "report.md").read_text()


CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")
def test_report_html_renders_in_headless_chromium(tmp_path):
    out = report.write_report(deep(), tmp_path / "rep")
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,2400", (out / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 2400)
    dark = sum(image.histogram()[:128]) / (image.size[0] * image.size[1])
    assert 0.01 < dark < 0.5  # text, table rules and figures are drawn; the page is neither blank nor black
    top = image.crop((0, 0, 1200, 200))
    assert sum(top.histogram()[:128]) > 200  # the heading renders at the top


@pytest.mark.parametrize("keeps", [[0.02, 0.05, 0.1, 0.2, 0.5], [0.1]])
def test_variance_report_plot_names_layers_and_ticks_do_not_collide(keeps):
    rows_ = [{"layer": name, "type": "Linear", "sketch": "Subsample", "keep": k, "bytes_exact": 64, "bytes_plan": 16,
              "rad_variance": 1 / k, "rad_se": 0.0, "data_variance": 0.5, "grad_norm_sq": 1.0, "ci_low": None,
              "ci_high": None, "method": "closed form"} for name in ("fc1", "fc2") for k in keeps]
    ax = VarianceReport("analytic", pd.DataFrame(rows_), pd.DataFrame([{"rad_variance": 1.0}])).plot()
    names = [t.get_text() for t in ax.get_legend().get_texts()] + [t.get_text() for t in ax.get_yticklabels()]
    assert "fc1 (Linear)" in names and "fc2 (Linear)" in names
    assert _overlaps(ax.figure) == []
    figures.plt.close(ax.figure)
