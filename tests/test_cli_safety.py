"""What radvar writes, and what it never touches: output folders, file modes, write errors, Ctrl-C, packaging."""

from __future__ import annotations

import ast
import json
import os
import signal
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

import radvar
from cli.main import cli
from radvar import report as report_lib
from radvar._atomic import atomic_folder, write_text
from radvar.sketch import Subsample
from radvar.train import History, save_figure

ROOT = Path(__file__).resolve().parents[1]
MARKER = ".radvar-report.json"
REPORT_FILES = sorted([MARKER, "analysis.json", "frontier.png", "memory.png", "report.html", "report.md",
                       "variance.png"])


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def one_line_error(result, code: int = 2) -> str:
    """The single stderr line of a failed command (checked: exit code, one line, no traceback)."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def analysis():
    """A small analysis (a 2-layer MLP on 40 synthetic examples) to write as report folders."""
    torch.manual_seed(0)
    radvar.seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    return report_lib.analyze(model, (x, y), F.cross_entropy, batch_size=10, plan=radvar.Plan.uniform(
        model, Subsample(0.5)))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set a umask for one test; restored after."""
    before = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(before)


# --- output folders -----------------------------------------------------------------------------------------

def test_out_never_deletes_files_radvar_did_not_write(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "analysis.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    line = one_line_error(run("analyze", "--out", str(out), "-q"))
    assert str(out) in line and "is not a radvar report folder: it is not empty and has no " in line
    assert sorted(p.name for p in out.iterdir()) == ["analysis.json", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "analysis.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_out_refuses_a_radvar_report_holding_other_files(tmp_path, analysis):
    out = tmp_path / "r"
    report_lib.write_report(analysis, out)
    (out / "notes.txt").write_text("mine")
    (out / "extra").mkdir()
    line = one_line_error(run("report", str(out / "analysis.json"), "--out", str(out)))
    assert str(out) in line and "it holds extra, notes.txt, which radvar did not write" in line
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES + ["extra", "notes.txt"])


@pytest.mark.parametrize("make", ["file", "symlink", "png_is_a_folder"])
def test_out_refuses_what_is_not_a_plain_report_folder(tmp_path, analysis, make):
    out = tmp_path / "r"
    if make == "file":
        out.write_text("mine")
    elif make == "symlink":
        (tmp_path / "elsewhere").mkdir()
        out.symlink_to(tmp_path / "elsewhere")
    else:
        report_lib.write_report(analysis, out)
        (out / "memory.png").unlink()
        (out / "memory.png").mkdir()
    with pytest.raises(FileExistsError, match="output folder"):
        report_lib.write_report(analysis, out)
    assert out.exists() or out.is_symlink()


def test_out_replaces_an_earlier_radvar_report_whole(tmp_path, analysis):
    out = tmp_path / "r"
    report_lib.write_report(analysis, out)
    (out / "frontier.png").unlink()  # an earlier report may hold fewer files
    (out / "report.md").write_text("stale")
    result = run("report", str(out / "analysis.json"), "--out", str(out), "-q")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == REPORT_FILES
    assert (out / "report.md").read_text().startswith("# radvar analysis")
    assert json.loads((out / MARKER).read_text()) == {"format": "radvar-report", "version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no temporary or old folder left


def test_out_accepts_an_empty_folder(tmp_path, analysis):
    (tmp_path / "r").mkdir()
    report_lib.write_report(analysis, tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == REPORT_FILES


@pytest.mark.parametrize("interrupt", [False, True], ids=["error", "ctrl_c"])
def test_failed_report_leaves_nothing_and_keeps_the_earlier_one(tmp_path, analysis, monkeypatch, interrupt):
    from radvar.report import document

    earlier = tmp_path / "earlier"
    report_lib.write_report(analysis, earlier)
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}

    def fail(*args, **kwargs):
        raise KeyboardInterrupt if interrupt else RuntimeError("disk full")

    monkeypatch.setattr(document, "html_document", fail)
    for out in (tmp_path / "new", earlier):
        with pytest.raises(KeyboardInterrupt if interrupt else RuntimeError):
            report_lib.write_report(analysis, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier"]
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before


def test_ctrl_c_during_the_final_swap_is_held_back_until_it_is_done(tmp_path, monkeypatch):
    from radvar import _atomic

    real_replace = os.replace

    def replace_interrupted(src, dst):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives in the middle of the swap
        real_replace(src, dst)

    out = tmp_path / "r"
    with atomic_folder(out, "report", ["a.txt"]) as tmp:
        (tmp / "a.txt").write_text("first")
    monkeypatch.setattr(_atomic.os, "replace", replace_interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(out, "report", ["a.txt"]) as tmp:
            (tmp / "a.txt").write_text("second")
    # the swap finished before the interrupt was raised: the new folder whole, the old one gone
    assert (out / "a.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


# --- file modes -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_written_files_and_folders_keep_the_users_umask(tmp_path, analysis, umask, mask):
    umask(mask)
    file_mode, folder_mode = 0o666 & ~mask, 0o777 & ~mask
    plan = radvar.Plan.uniform(nn.Sequential(nn.Linear(3, 2)), Subsample(0.5))
    plan.save(tmp_path / "plan.json")
    history = History({"step": [1, 2], "epoch": [0, 0], "loss": [1.0, 0.5], "step_time_s": [0.1, 0.1]})
    history.save_csv(tmp_path / "history.csv")
    import matplotlib

    matplotlib.use("Agg")
    save_figure(history.plot().figure, tmp_path / "curve.png")
    report_lib.write_report(analysis, tmp_path / "report")
    write_text(tmp_path / "analysis.json", "{}")
    for name in ("plan.json", "history.csv", "curve.png", "analysis.json"):
        assert mode(tmp_path / name) == file_mode, name
    assert mode(tmp_path / "report") == folder_mode
    assert {p.name: mode(p) for p in (tmp_path / "report").iterdir()} == {n: file_mode for n in REPORT_FILES}


def test_overwriting_a_plan_keeps_mode_0644_under_umask_022(tmp_path, umask):
    umask(0o022)
    plan = radvar.Plan.uniform(nn.Sequential(nn.Linear(3, 2)), Subsample(0.5))
    path = tmp_path / "plan.json"
    path.write_text("{}")
    os.chmod(path, 0o644)
    plan.save(path)
    assert mode(path) == 0o644 and radvar.Plan.load(path).to_dict() == plan.to_dict()


# --- write errors ---------------------------------------------------------------------------------------------

def _bad_target(kind: str, tmp_path: Path) -> Path:
    if kind == "parent_missing":
        return tmp_path / "missing" / "plan.json"
    if kind == "is_a_folder":
        (tmp_path / "plan.json").mkdir()
        return tmp_path / "plan.json"
    if kind == "parent_is_a_file":
        (tmp_path / "f").write_text("x")
        return tmp_path / "f" / "plan.json"
    if not Path("/sys").is_dir():  # read-only for every user, root included
        pytest.skip("needs Linux sysfs")
    return Path("/sys/plan.json")


BAD_TARGETS = ["parent_missing", "is_a_folder", "parent_is_a_file", "read_only"]


@pytest.mark.parametrize("kind", BAD_TARGETS)
def test_write_errors_name_the_given_path(tmp_path, kind):
    path = _bad_target(kind, tmp_path)
    plan = radvar.Plan.uniform(nn.Sequential(nn.Linear(3, 2)), Subsample(0.5))
    with pytest.raises(OSError) as info:
        plan.save(path)
    assert str(info.value).startswith(f"cannot write {str(path)!r}: ") and ".tmp" not in str(info.value)
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left


@pytest.mark.parametrize("kind", BAD_TARGETS)
def test_cli_write_errors_exit_2_naming_the_path_before_any_work(tmp_path, kind, monkeypatch):
    import cli.tune

    path = _bad_target(kind, tmp_path)
    monkeypatch.setattr(cli.tune, "load_problem", lambda *a: pytest.fail("work started before the check"))
    line = one_line_error(run("tune", "--budget", "0.5", "-o", str(path)))
    assert line.startswith(f"radvar: error: cannot write {str(path)!r}: ") and ".tmp" not in line
    line = one_line_error(run("analyze", "--json", str(path)))
    assert f"cannot write {str(path)!r}: " in line


@pytest.mark.parametrize("kind", ["parent_missing", "parent_is_a_file", "read_only"])
def test_out_folder_errors_exit_2_naming_the_folder(tmp_path, kind):
    out = _bad_target(kind, tmp_path).with_name("report")
    line = one_line_error(run("analyze", "--out", str(out)))
    assert repr(str(out)) in line and ".tmp" not in line
    assert not out.exists()


# --- Ctrl-C ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("debug", [False, True])
def test_ctrl_c_in_a_command_exits_130_with_one_line(tmp_path, monkeypatch, debug):
    import cli.analyze

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.analyze.plans, "choose", interrupted)
    out = tmp_path / "report"
    result = run("analyze", "--out", str(out), "-q", *(["--debug"] if debug else []))
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines()[-1] == "radvar: interrupted"
    assert ("Traceback" in result.stderr) == debug
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_start_up_imports_exits_130_with_one_line():
    code = ("import sys; sys.argv = ['radvar', 'zoo']; from cli.main import main; "
            "print('ready', flush=True); main()")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline() == "ready\n"
    time.sleep(0.2)  # past the call of main(), which spends seconds importing click, torch and radvar
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert (proc.returncode, stderr, stdout) == (130, "radvar: interrupted\n", ""), stderr


# --- packaging ------------------------------------------------------------------------------------------------

def test_cli_installs_as_radvar_cli_with_every_package_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["scripts"] == {"radvar": "radvar_cli.main:main"}
    assert config["tool"]["setuptools"]["package-dir"] == {"radvar_cli": "cli"}
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "radvar").rglob("__init__.py")}
    found |= {".".join(("radvar_cli",) + p.parent.relative_to(ROOT / "cli").parts)
              for p in (ROOT / "cli").rglob("__init__.py")}
    assert sorted(config["tool"]["setuptools"]["packages"]) == sorted(found)


def test_cli_imports_itself_relatively():
    for path in (ROOT / "cli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not [n for n in names if n.split(".")[0] in ("cli", "radvar_cli")], (path, node.lineno)
        assert '"cli.' not in path.read_text(), path


def test_cli_runs_as_radvar_cli_without_a_top_level_cli(tmp_path):
    (tmp_path / "radvar_cli").symlink_to(ROOT / "cli")
    code = ("import sys; from radvar_cli.main import main; sys.argv = ['radvar', 'zoo']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'cli' not in sys.modules and 'radvar_cli.commands' in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert proc.returncode == 0, proc.stderr
    assert "models:" in proc.stdout
