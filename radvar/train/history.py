"""``History``: the tidy record of a training run, one row per logged step.

Columns: ``step`` (optimizer steps done), ``epoch``, ``loss`` (mean minibatch
loss since the previous row, averaged over ranks), ``lr``, ``step_time_s``
(mean wall time of those steps), ``saved_bytes`` (the saved-tensor ledger of
one training forward, :func:`radvar.memory.saved_bytes`), and where they
apply ``cuda_peak_bytes`` (max of ``torch.cuda.max_memory_allocated`` over
those steps), ``eval_loss`` and ``eval_accuracy``. Run settings are in
``History.attrs``.
"""

from __future__ import annotations

import os

import pandas as pd

from .._atomic import atomic_path


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically (temp file renamed into place) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)


class History(pd.DataFrame):
    """A pandas DataFrame of a run, with :meth:`steps_to`, :meth:`summary`, :meth:`plot` and :meth:`save_csv`."""

    @property
    def _constructor(self) -> type["History"]:
        return History

    def steps_to(self, target: float, column: str = "loss") -> int | None:
        """First logged step at which ``column`` is at or below ``target`` (None if never)."""
        if column not in self.columns:
            raise ValueError(f"History.steps_to: column {column!r} not recorded; have {list(self.columns)}")
        hit = self.loc[self[column] <= target, "step"]
        return int(hit.iloc[0]) if len(hit) else None

    def summary(self) -> str:
        """Settings, the last row, and the mean step time."""
        settings = ", ".join(f"{k}={v}" for k, v in self.attrs.items())
        if self.empty:
            return f"History({settings}): no rows"
        last = self.iloc[-1]
        lines = [f"History: {len(self)} rows, {int(last['step'])} steps ({settings})"]
        lines += [f"  {c}: {last[c]:.6g}" for c in self.columns if c not in ("step", "epoch")]
        lines.append(f"  mean step time: {self['step_time_s'].mean() * 1e3:.3f} ms")
        return "\n".join(lines)

    def plot(self, ax=None, columns: tuple[str, ...] = ("loss", "eval_loss")):
        """Learning curves against ``step`` (matplotlib Axes)."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        for c in columns:
            if c in self.columns:
                ax.plot(self["step"], self[c], label=c)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        return ax

    def save_csv(self, path: str | os.PathLike) -> None:
        """Write CSV atomically (temp file renamed into place)."""
        with atomic_path(path) as tmp:
            self.to_csv(tmp, index=False)
