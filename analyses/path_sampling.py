# %% [markdown]
# # Path sampling on linearized computational graphs
#
# Variance of randomized Jacobian estimators (radvar.paths) on random
# MLP-like LCGs and on the LCG of a reaction–diffusion stencil, as depth
# and width grow. Estimators (Oktay et al., ICLR 2021):
#
# * **path/uniform**, **path/weight** — `n` i.i.d. scalar paths, uniform or
#   proportional to |path weight|;
# * **edge** — keep each scalar edge with probability `p`, scale by `1/p`;
# * **inject/all** — `Q = Diag(b)/p` at every hidden node (keep a fraction `p`
#   of every intermediate value); **inject/rademacher** — `Q = R Rᵀ` with
#   `k = ⌈p·width⌉` at every hidden node;
# * **inject/one** — the same diagonal sampling at a single middle node: the
#   structure RAD exploits in networks, where a layer's sketch touches only
#   its own weight gradient and does not compound with depth.
#
# Budget at keep fraction `p`: path sampling draws `n = p · (scalar edges per
# layer)` paths, so it touches about as many edges per layer as `edge` keeps.
# The metric is the relative variance `E‖Ĵ − J‖²_F / ‖J‖²_F` of one estimate,
# computed exactly (closed forms and the node-pair dynamic program of
# `radvar.paths.moments`) and checked against Monte Carlo.
#
# Run as a script: `python analyses/path_sampling.py` (full, a few minutes on
# 2 cores) or `--quick` (a smoke run, written to a temporary folder unless
# `--out` is given).

# %%
from __future__ import annotations

import argparse
import math
import pathlib
import sys
import tempfile
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from radvar.paths import (  # noqa: E402
    LCG, EdgeBernoulli, Estimator, Injection, PathSampling, from_jacobians, jacobian, trace,
)

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--quick", action="store_true", help="small sweep for tests")
parser.add_argument("--out", type=pathlib.Path, default=None, help="output folder (default analyses/results)")
args, _ = parser.parse_known_args()
OUT = args.out or (pathlib.Path(tempfile.mkdtemp()) if args.quick else pathlib.Path(__file__).parent / "results")
OUT.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(2)
DT = torch.float64
KEEP = 0.25
SEEDS = [0] if args.quick else [0, 1, 2, 3]
DEPTHS = [1, 2, 3] if args.quick else [1, 2, 3, 4, 6, 8, 12, 16]
WIDTHS = [2, 4] if args.quick else [2, 4, 8, 16, 32]
STEPS = [1, 2, 3] if args.quick else [1, 2, 4, 8, 16, 24]
GRID = 4 if args.quick else 8
MC_DRAWS = 500 if args.quick else 4000
START = time.time()


# %% [markdown]
# ## Graphs
# An MLP-like layer Jacobian is `Diag(tanh'(z)) W` with `W ~ N(0, 2/w)` and
# `z ~ N(0, 1)`; the stencil step is one explicit Euler step of
# `u_t = D Δu + r u` on a periodic `GRID × GRID` grid (`D dt/h² = 0.2`,
# `r dt = 0.02`), traced with `radvar.paths.trace` and collapsed to one
# Jacobian per time step (5 nonzeros per row).

# %%
def mlp_lcg(depth: int, width: int, seed: int) -> LCG:
    gen = torch.Generator().manual_seed(1000 * seed + 17 * depth + width)
    layers = []
    for _ in range(depth):
        w = torch.randn(width, width, generator=gen, dtype=DT) * math.sqrt(2.0 / width)
        slope = 1 - torch.tanh(torch.randn(width, generator=gen, dtype=DT)) ** 2
        layers.append(slope[:, None] * w)
    return from_jacobians(layers)


def stencil_step(u: torch.Tensor) -> torch.Tensor:
    lap = torch.roll(u, 1, 0) + torch.roll(u, -1, 0) + torch.roll(u, 1, 1) + torch.roll(u, -1, 1) - 4 * u
    return u + 0.2 * lap + 0.02 * u


STEP_LCG = trace(stencil_step, torch.rand(GRID, GRID, dtype=DT, generator=torch.Generator().manual_seed(0)))
STEP_JACOBIAN = jacobian(STEP_LCG)


def stencil_lcg(steps: int) -> LCG:
    return from_jacobians([STEP_JACOBIAN] * steps)


def estimators(lcg: LCG) -> dict[str, Estimator]:
    hidden = lcg.order[1:-1]
    edges_per_layer = lcg.scalar_edge_count() / max(1, len(lcg.order) - 1)
    n = max(1, round(KEEP * edges_per_layer))
    out: dict[str, Estimator] = {
        "path/uniform": PathSampling(n, "uniform"),
        "path/weight": PathSampling(n, "weight"),
        "edge": EdgeBernoulli(KEEP),
    }
    if hidden:
        out["inject/all"] = Injection(hidden, KEEP, "bernoulli")
        out["inject/rademacher"] = Injection(hidden, KEEP, "rademacher")
        out["inject/one"] = Injection([hidden[len(hidden) // 2]], KEEP, "bernoulli")
    return out


def relative_variances(lcg: LCG, **labels: object) -> list[dict]:
    norm = float(jacobian(lcg).square().sum())
    return [
        {**labels, "estimator": name, "relvar": est.total_variance(lcg) / norm}
        for name, est in estimators(lcg).items()
    ]


# %% [markdown]
# ## Variance vs depth and width (random MLP-like LCGs)

# %%
rows = []
for seed in SEEDS:
    rows += [r for d in DEPTHS for r in relative_variances(mlp_lcg(d, 8, seed), sweep="depth", depth=d, width=8, seed=seed)]
    rows += [r for w in WIDTHS for r in relative_variances(mlp_lcg(4, w, seed), sweep="width", depth=4, width=w, seed=seed)]
mlp = pd.DataFrame(rows)
mlp_mean = mlp.groupby(["sweep", "depth", "width", "estimator"], as_index=False)["relvar"].apply(
    lambda s: math.exp(s.apply(math.log).mean())  # geometric mean over random graphs
)
print(mlp_mean.pivot_table(index=["sweep", "depth", "width"], columns="estimator", values="relvar").to_string(float_format="%.3g"))

# %% [markdown]
# ## The reaction–diffusion stencil

# %%
stencil = pd.DataFrame([r for t in STEPS for r in relative_variances(stencil_lcg(t), steps=t)])
traced = pd.DataFrame(relative_variances(STEP_LCG, steps=1))
print(stencil.pivot_table(index="steps", columns="estimator", values="relvar").to_string(float_format="%.3g"))
print("traced single step (fine-grained LCG):", dict(zip(traced.estimator, traced.relvar.round(4))))

# %% [markdown]
# ## Exact variance vs Monte Carlo
# The sample mean of `‖Ĵ − J‖²_F` over `MC_DRAWS` draws estimates the exact
# total variance; `z` = (Monte Carlo − exact) / standard error should look standard normal.

# %%
checks = []
for label, lcg in [("mlp d=4 w=8", mlp_lcg(4, 8, 0)), (f"stencil T=4 {GRID}x{GRID}", stencil_lcg(4))][: 1 if args.quick else 2]:
    exact_j = jacobian(lcg)
    gen = torch.Generator().manual_seed(5)
    for name, est in estimators(lcg).items():
        err = torch.cat([(est.sample(lcg, 500, gen) - exact_j).square().sum((1, 2)) for _ in range(MC_DRAWS // 500 or 1)])
        exact = est.total_variance(lcg)
        se = float(err.std()) / err.numel() ** 0.5
        checks.append({"graph": label, "estimator": name, "draws": err.numel(), "exact": exact,
                       "monte_carlo": float(err.mean()), "std_error": se, "z": (float(err.mean()) - exact) / se,
                       "max/mean": float(err.max() / err.mean())})
checks = pd.DataFrame(checks)
print(checks.to_string(float_format="%.4g"))

# %% [markdown]
# ## Figures

# %%
sns.set_theme(style="whitegrid", context="paper")
order = ["path/uniform", "path/weight", "edge", "inject/rademacher", "inject/all", "inject/one"]
fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
for ax, sweep, x in [(axes[0], "depth", "depth"), (axes[1], "width", "width")]:
    data = mlp[mlp.sweep == sweep]
    sns.lineplot(data=data, x=x, y="relvar", hue="estimator", hue_order=order, marker="o", estimator="median",
                 errorbar=("pi", 100), ax=ax, legend=ax is axes[0])
    ax.set(yscale="log", ylabel="relative variance  E‖Ĵ−J‖² / ‖J‖²",
           title=f"MLP-like LCG, {'width 8' if sweep == 'depth' else 'depth 4'}, keep {KEEP}")
    if sweep == "width":
        ax.set_xscale("log", base=2)
sns.lineplot(data=stencil, x="steps", y="relvar", hue="estimator", hue_order=order, marker="o", ax=axes[2], legend=False)
axes[2].set(yscale="log", ylabel="", title=f"reaction–diffusion, {GRID}×{GRID} grid, keep {KEEP}", xlabel="time steps (depth)")
axes[0].axhline(1.0, color="k", lw=0.8, ls=":")
axes[0].legend(title="estimator", fontsize=7)
fig.tight_layout()
fig.savefig(OUT / "path_sampling_variance.png", dpi=130)

# %% [markdown]
# ## Where naive path sampling blows up, and what structure buys

# %%
depth_view = mlp_mean[mlp_mean.sweep == "depth"].pivot(index="depth", columns="estimator", values="relvar")
step_view = stencil.pivot(index="steps", columns="estimator", values="relvar")


def first_above(series: pd.Series, level: float) -> str:
    above = series[series > level]
    return str(int(above.index[0])) if len(above) else f"> {int(series.index[-1])}"


blowup = pd.DataFrame([
    {"estimator": name,
     "MLP: relvar > 1 from depth": first_above(depth_view[name], 1.0),
     "MLP: relvar > 100 from depth": first_above(depth_view[name], 100.0),
     f"MLP: relvar at depth {DEPTHS[-1]}": float(depth_view[name].iloc[-1]),
     "stencil: relvar > 1 from step": first_above(step_view[name], 1.0),
     f"stencil: relvar at {STEPS[-1]} steps": float(step_view[name].iloc[-1])}
    for name in order
])
print(blowup.to_string(float_format="%.3g"))

# %%
fig, ax = plt.subplots(figsize=(5.5, 4))
ratio = pd.DataFrame({
    "÷ path/weight (importance)": depth_view["path/uniform"] / depth_view["path/weight"],
    "÷ edge (same edges kept)": depth_view["path/uniform"] / depth_view["edge"],
    "÷ inject/one (one sketched node, as RAD per layer)": depth_view["path/uniform"] / depth_view["inject/one"],
})
ratio.plot(ax=ax, marker="o", logy=True)
ax.legend(fontsize=7)
ax.set(xlabel="depth", ylabel="variance of path/uniform ÷ variance of …", title=f"MLP-like LCG, width 8, keep {KEEP}")
fig.tight_layout()
fig.savefig(OUT / "path_sampling_structure.png", dpi=130)

# %% [markdown]
# ## Markdown table

# %%
def md(frame: pd.DataFrame) -> str:
    """A GitHub markdown table (floats to 3 significant digits)."""
    cell = lambda v: ("—" if math.isnan(v) else f"{v:.3g}") if isinstance(v, float) else str(v)  # noqa: E731
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


lines = [
    "# Path sampling on LCGs: variance of one estimate",
    "",
    f"Keep fraction {KEEP}; path sampling draws n = {KEEP} × (scalar edges per layer) paths. Relative variance "
    "= E‖Ĵ − J‖²_F / ‖J‖²_F, exact (closed forms / node-pair dynamic program), geometric mean over "
    f"{len(SEEDS)} random graphs. Generated by `analyses/path_sampling.py`{' --quick' if args.quick else ''}.",
    "",
    "## Random MLP-like LCGs: depth sweep (width 8)",
    "",
    md(depth_view.reset_index()[["depth", *order]]),
    "",
    "## Random MLP-like LCGs: width sweep (depth 4)",
    "",
    md(mlp_mean[mlp_mean.sweep == "width"].pivot(index="width", columns="estimator", values="relvar").reset_index()[["width", *order]]),
    "",
    f"## Reaction–diffusion stencil ({GRID}×{GRID}, periodic), T steps",
    "",
    md(step_view.reset_index()[["steps", *order]]),
    "",
    f"Traced single step as a fine-grained LCG ({len(STEP_LCG.order)} nodes, {STEP_LCG.scalar_edge_count()} scalar edges): "
    + ", ".join(f"{k} {v:.3g}" for k, v in zip(traced.estimator, traced.relvar)),
    "",
    "## Where it blows up",
    "",
    md(blowup),
    "",
    f"## Exact total variance vs Monte Carlo ({MC_DRAWS} draws)",
    "",
    md(checks),
    "",
    "`max/mean` is the largest single-draw squared error over the mean: where it is large, the error is",
    "heavy-tailed (1/p factors multiply along paths), rare large draws are under-sampled, and the",
    "standard error underestimates the true spread, so |z| of 3–4 there is expected; the exact",
    "formulas are also checked against full enumeration in tests/test_paths_estimators.py.",
    "",
]
(OUT / "path_sampling.md").write_text("\n".join(lines))
print(f"wrote {OUT} in {time.time() - START:.1f}s")
