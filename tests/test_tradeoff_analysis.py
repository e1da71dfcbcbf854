"""The trade-off analysis runs end to end in --quick mode and writes its figures, plans and table (slow: minutes)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

import radvar

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_analysis_quick_run(tmp_path: pathlib.Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "analyses" / "tradeoff.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("tradeoff_quick.md", "tradeoff_quick_frontier.png", "tradeoff_quick_same_memory.png",
                 "tradeoff_quick_batch.png"):
        assert (tmp_path / name).stat().st_size > 0
    for which in ("mlp", "cnn"):
        plan = radvar.Plan.load(tmp_path / f"tradeoff_quick_plan_{which}.json")
        assert plan.provenance["measured_bytes"] <= plan.provenance["budget"]["bytes"]
    assert "| small_batch | bytes |" in (tmp_path / "tradeoff_quick.md").read_text()
