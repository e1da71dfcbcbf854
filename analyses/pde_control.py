# %% [markdown]
# # Reaction-diffusion control with a randomized adjoint (RAD paper §5.3)
#
# Fit the 7 source parameters of the linear reaction-diffusion problem in
# `radvar.pde` with Adam, where the backward pass keeps only a random fraction
# `keep` of each step's grid values (an independent sample per step, scaled by
# m/k). We record, per keep: the loss curve (the exact loss of each iterate),
# the bytes autograd keeps for backward (the saved-tensor ledger), and the
# gradient variance at the start point.
#
# Run as a script: `python analyses/pde_control.py [--quick]`; results go to
# `analyses/results/pde_control*` (`pde_control_quick*` with `--quick`).

# %%
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

import radvar
from radvar import pde

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
args, _ = parser.parse_known_args()

torch.set_num_threads(1)  # thousands of tiny batched matmuls per gradient: intra-op threads only add contention
KEEPS = [1.0, 0.1, 0.01, 0.005, 0.002, 0.001]
REPEATS = [0.01, 0.01]  # two more independent RAD runs at the goal keep (same start)
if args.quick:
    SETTING = {"time_steps": 256, "adam_steps": 30, "draws": 16, "dtype": torch.float32}
    prefix = "pde_control_quick"
else:
    SETTING = {"time_steps": 4096, "adam_steps": 300, "draws": 32, "dtype": torch.float32}
    prefix = "pde_control"
PAPER = {"time_steps": 40960, "adam_steps": 800, "dtype": "float32 (torch default)"}
LR, SEED = 1e-2, 0
args.out.mkdir(parents=True, exist_ok=True)
prob = pde.ReactionDiffusion(grid=33, diffusion=0.25, dt=1 / 4096, steps=SETTING["time_steps"], dtype=SETTING["dtype"])
theta0 = pde.initial_params(SEED, SETTING["dtype"])
print(prob, SETTING)

# %% [markdown]
# ## Optimisation: all keeps in one vectorised batch, same start, same Adam steps

# %%
radvar.seed(SEED)
t0 = time.perf_counter()
hist = pde.fit(prob, keep=KEEPS + REPEATS, steps=SETTING["adam_steps"], lr=LR, seed=SEED)
fit_seconds = time.perf_counter() - t0
ends = hist[hist.step == SETTING["adam_steps"]]
final = ends.groupby("keep").loss.agg(["count", "mean", "min", "max"])
exact_final = final.loc[1.0, "mean"]
start_loss = hist[hist.step == 0].loss.iloc[0]
print(f"fit: {fit_seconds:.0f} s; start loss {start_loss:.4e}")
print(final)

# %%
fig, ax = plt.subplots(figsize=(6.5, 4))
labelled = hist.assign(keep=hist.keep.map(lambda k: f"{k:g}"))
sns.lineplot(data=labelled, x="step", y="loss", hue="keep", units="run", estimator=None, ax=ax, palette="viridis", lw=1)
ax.set_yscale("log")
ax.set_xlabel("Adam step")
ax.set_ylabel("exact loss J(theta)")
ax.set_title(f"PDE control, {SETTING['time_steps']} time steps, lr {LR}")
fig.tight_layout()
fig.savefig(args.out / f"{prefix}_loss.png", dpi=120)

# %% [markdown]
# ## Backward-state memory (measured: unique storages packed by saved_tensors_hooks, parameters excluded)

# %%
rows = [{"method": "rad", "keep": k, "bytes": pde.backward_bytes(prob, theta0, keep=k)} for k in KEEPS[1:]]
rows.insert(0, {"method": "exact", "keep": 1.0, "bytes": pde.backward_bytes(prob, theta0, method="exact")})
every = math.ceil(math.sqrt(prob.steps))
rows.append({"method": f"checkpoint (every {every})", "keep": 1.0, "bytes": pde.backward_bytes(prob, theta0, method="checkpoint")})
rows.append({"method": "autograd", "keep": 1.0, "bytes": pde.backward_bytes(prob, theta0, method="autograd")})
memory = pd.DataFrame(rows)
memory["ratio_vs_exact"] = memory.bytes / memory.bytes[0]
print(memory)

# %% [markdown]
# ## Gradient variance vs keep at the start point (independent draws, one batch per keep)

# %%
_, exact_grad = prob.gradient(theta0, method="exact")
var_rows = []
for i, k in enumerate(KEEPS[1:]):
    radvar.seed(1000 + i)
    _, g = prob.gradient(theta0.expand(SETTING["draws"], 7), keep=k)
    g = g.double()
    var_rows.append(
        {
            "keep": k,
            "trace_cov": g.var(dim=0).sum().item(),
            "relative": g.var(dim=0).sum().item() / exact_grad.double().square().sum().item(),
            "max_abs_z_of_mean": ((g.mean(0) - exact_grad.double()) / (g.std(0) / math.sqrt(len(g)))).abs().max().item(),
        }
    )
variance = pd.DataFrame(var_rows)
print(variance)

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
axes[0].loglog(variance.keep, variance.relative, "o-", label="measured")
shape = 1 / variance.keep - 1
ref = shape * float(np.exp(np.mean(np.log(variance.relative) - np.log(shape))))  # least-squares fit in log space
axes[0].loglog(variance.keep, ref, "--", color="grey", label="∝ 1/keep − 1")
axes[0].set_xlabel("keep")
axes[0].set_ylabel("tr Cov(ĝ) / ‖g‖²")
axes[0].legend()
axes[0].set_title("gradient variance at the start point")
mem = memory[memory.method.isin(["exact", "rad"])]
axes[1].loglog(mem.keep, mem.bytes, "o-")
axes[1].set_xlabel("keep")
axes[1].set_ylabel("bytes kept for backward")
axes[1].set_title("measured backward-state memory")
fig.tight_layout()
fig.savefig(args.out / f"{prefix}_variance_memory.png", dpi=120)

# %% [markdown]
# ## Summary table

# %%
summary = pd.DataFrame({"keep": KEEPS})
summary["runs"] = summary.keep.map(final["count"])
summary["final_loss"] = summary.keep.map(final["mean"])
summary["ratio_vs_exact"] = summary.final_loss / exact_final
summary["worst_ratio"] = summary.keep.map(final["max"]) / exact_final
summary["within_10pct"] = summary.worst_ratio <= 1.10
late = hist[hist.step >= 0.8 * SETTING["adam_steps"]]
per_step_exact = late[late.keep == 1.0].set_index("step").loss
late_ratio = late.assign(ratio=late.loss / late.step.map(per_step_exact)).groupby("keep").ratio.max()
summary["late_max_ratio"] = summary.keep.map(late_ratio)
summary["backward_bytes"] = [memory.bytes[0]] + [memory.bytes[i] for i in range(1, len(KEEPS))]
summary["memory_ratio"] = summary.backward_bytes / memory.bytes[0]
summary = summary.merge(variance[["keep", "relative"]].rename(columns={"relative": "relative_grad_variance"}), how="left")
print(summary)


def _table(df: pd.DataFrame) -> str:
    """A Markdown table (no tabulate dependency); floats to 4 significant digits."""
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


text = f"""# PDE control with a randomized adjoint (`analyses/pde_control.py{' --quick' if args.quick else ''}`)

Setting here vs the paper (Oktay et al., ICLR 2021, §5.3):

| | here | paper |
|---|---|---|
| grid, D, dt | 33x33, 0.25, 1/4096 | same |
| time steps T | {SETTING['time_steps']} ({SETTING['time_steps'] / 4096:g} time units) | {PAPER['time_steps']} (10 time units) |
| Adam steps, lr | {SETTING['adam_steps']}, {LR} | {PAPER['adam_steps']}, 1e-2 |
| dtype | {str(SETTING['dtype']).replace('torch.', '')} | {PAPER['dtype']} |
| start | constant 4.932, others U(-0.1, 0.1), seed {SEED} | same distribution |
| runs | one Adam run per keep ({len(REPEATS) + 1} independent RAD runs at keep 0.01), same start; radvar.seed({SEED}) | |

The horizon and Adam-step count are cut so the whole study runs in about ten
minutes on 2 CPU cores (fit took {fit_seconds:.0f} s); dt is the paper's, so the
explicit scheme is as stable as there. Start loss {start_loss:.4e}.

## Final loss after {SETTING['adam_steps']} Adam steps, memory, variance

`final_loss` is the exact loss of the last iterate (mean over `runs`; `worst_ratio`
uses the worst run; `within_10pct` means every run ended within 10% of the exact
run); `late_max_ratio` is the largest loss / exact-run loss at the same step over the
last 20% of steps (spikes from gradient noise); `backward_bytes` is measured by
the saved-tensor ledger (keep 1 = the exact adjoint storing every state);
`relative_grad_variance` = tr Cov(ĝ) / ‖g‖² at the start point from {SETTING['draws']} draws.

{_table(summary)}

## Backward-state memory by method

{_table(memory)}

Checkpointing keeps ceil(T/c) states (c = ceil(sqrt T)) and recomputes c states per
segment in backward (transient, not kept across the pass). Autograd through the
slicing solver keeps several tensors per step.

## Gradient variance at the start point

{_table(variance)}

`max_abs_z_of_mean`: the largest per-parameter z of the mean of the draws against
the exact gradient (unbiased estimator: roughly |z| < 3.2 for 7 parameters at
family level 1e-2).

Figures: `{prefix}_loss.png`, `{prefix}_variance_memory.png`.
"""
(args.out / f"{prefix}.md").write_text(text)
print(f"wrote {args.out / (prefix + '.md')}")
