"""The path-sampling analysis runs end to end in --quick mode and writes its figures and table."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_analysis_quick_run(tmp_path: pathlib.Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "analyses" / "path_sampling.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("path_sampling_variance.png", "path_sampling_structure.png", "path_sampling.md"):
        assert (tmp_path / name).stat().st_size > 0
    table = (tmp_path / "path_sampling.md").read_text()
    assert "| depth | path/uniform | path/weight | edge |" in table
