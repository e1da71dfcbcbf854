"""The feedforward analysis runs end to end in --quick mode and writes its tables and figures."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pandas as pd
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 30 s, mostly imports and per-run setup: kept out of the default suite's budget
def test_feedforward_quick_run(tmp_path: pathlib.Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "analyses" / "feedforward.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("curves.png", "steps.png", "runs.csv", "tuning.csv", "summary.csv", ".md"):
        assert (tmp_path / f"feedforward_quick{'_' if not name.startswith('.') else ''}{name}").stat().st_size > 0
    summary = pd.read_csv(tmp_path / "feedforward_quick_summary.csv")
    assert summary["arm"].tolist().count("exact, small batch 20") == 1  # chosen from the ledger, as in the paper
    assert set(summary["rank"]) == set(range(1, 8))
    assert (summary.loc[summary["arm"] == "RAD same sample", "memory / budget"] == 1.0).all()
