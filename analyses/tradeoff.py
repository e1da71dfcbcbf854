# %% [markdown]
# # Memory/variance trade-offs: tuned plans vs uniform plans vs small exact batches
#
# On the paper's MLP (`zoo.mlp(in_features=64)`, trained a few dozen SGD steps on
# scikit-learn's digits) and the paper's CNN at 8x8 (`zoo.cnn(in_channels=1, image=8)`,
# same data), batch 150:
#
# 1. at the memory of the paper's uniform keep-0.1 plans (measured by the ledger),
#    `radvar.tune`'s plan against the best uniform plan of each family in that memory,
#    predicted (closed forms) and confirmed by Monte Carlo (`radvar.variance.empirical`);
# 2. the memory–variance frontier of the MLP: uniform plans, tuned plans, small exact batches,
#    and the question: at the memory of a small exact batch, is that batch or RAD at 150 better?
# 3. batch-size co-optimisation in the memory of an exact batch of 20.
#
# Run: `python analyses/tradeoff.py [--quick]`; outputs go to `analyses/results/tradeoff*`
# (`tradeoff_quick*` with `--quick`).

# %%
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats

import radvar
from radvar import variance, zoo
from radvar.sketch import Subsample
from radvar.tradeoff import allocate, batch, candidates, frontier
from radvar.tradeoff.tune import measured_bytes

parser = argparse.ArgumentParser(description="memory/variance trade-off analysis")
parser.add_argument("--quick", action="store_true", help="a short smoke run (fewer steps, draws, keeps)")
parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
args, _ = parser.parse_known_args()
args.out.mkdir(parents=True, exist_ok=True)
prefix = "tradeoff_quick" if args.quick else "tradeoff"
SETTING = ({"train_steps": 10, "draws": 40, "keeps": (0.05, 0.1, 0.2, 0.4)} if args.quick else
           {"train_steps": 40, "draws": 200, "keeps": candidates.DEFAULT_KEEPS})
BATCH, SEED, LOSS = 150, 0, F.cross_entropy
Z99 = float(stats.norm.ppf(0.995))  # closed form vs Monte Carlo: |pred − mean| ≤ Z99 · √(se_mc² + se_pred²)
SMALL = [5, 10, 15, 20, 30, 50, 75, 100]
torch.manual_seed(SEED)
radvar.seed(SEED)
print(SETTING)


def save_text(path: Path, text: str) -> None:
    """Write atomically: a temp file in the same folder renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_figure(fig: plt.Figure, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


# %% [markdown]
# ## Models: a few dozen SGD steps on digits (batch 150, lr 0.1, momentum 0.9)

# %%
x, y = zoo.digits()
images = x.reshape(-1, 1, 8, 8)


def train(model: torch.nn.Module, inputs: torch.Tensor, steps: int) -> torch.nn.Module:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(steps):
        idx = torch.randint(0, len(inputs), (BATCH,), generator=gen)
        opt.zero_grad()
        LOSS(model(inputs[idx]), y[idx]).backward()
        opt.step()
    return model


models = {"MLP 64-300-300-300-10": (train(zoo.mlp(in_features=64), x, SETTING["train_steps"]), x),
          "CNN 8x8 (16/32/32/32)": (train(zoo.cnn(in_channels=1, image=8), images, SETTING["train_steps"]), images)}
for name, (model, inputs) in models.items():
    with torch.no_grad():
        print(f"{name}: loss on the first batch {float(LOSS(model(inputs[:BATCH]), y[:BATCH])):.4f}")

# %% [markdown]
# ## 1. Tuned vs uniform at the memory of the paper's keep-0.1 plans
#
# Budget M = ledger bytes of `convert(model, Subsample(0.1))` (the same for `Subsample(0.1, per_example=True)`
# and `Projection(0.1)`: all keep k = ceil(0.1 n) values per row). Every uniform plan is scored at its
# best keep within M; "tuned" is `radvar.tune(..., budget=M)`. Monte Carlo: `variance.empirical` with
# fresh RAD draws on the fixed batch (99% Student-t intervals).

# %%
rows, empirical_rows, tuned_plans = [], [], {}
for name, (model, inputs) in models.items():
    t0 = time.perf_counter()
    data = (inputs, y)
    fixed_batch = ((inputs[:BATCH].clone(),), y[:BATCH].clone())
    cands = candidates.candidates(model, fixed_batch, LOSS, keeps=SETTING["keeps"])
    paper = allocate.uniform(cands, Subsample.family(), 0.1)
    budget = measured_bytes(model, paper.plan(), fixed_batch, LOSS)
    plan = radvar.tune(model, data, LOSS, budget=budget, batch_size=BATCH, keeps=SETTING["keeps"], stats=cands.capture)
    tuned_plans[name] = plan
    prov = plan.provenance
    entries = {"tuned": (plan, prov["predicted_bytes"], prov["predicted_rad_variance"], prov["predicted_rad_variance_se"])}
    for template in candidates.DEFAULT_FAMILIES:
        best = allocate.best_uniform(cands, template, budget, SETTING["keeps"])
        entries[f"uniform {candidates.family_name(template)}"] = (best.plan(), best.bytes, best.variance, best.se)
    for label, (p, predicted, var, se) in entries.items():
        rep = variance.empirical(model, fixed_batch, LOSS, p, draws=SETTING["draws"])
        tot = rep.total.iloc[0]
        keep = "mixed" if label == "tuned" else f"{next(iter(p.values())).keep:g}"
        rows.append({"model": name, "plan": label, "keep": keep, "budget_bytes": budget,
                     "predicted_bytes": predicted, "measured_bytes": measured_bytes(model, p, fixed_batch, LOSS),
                     "predicted_variance": var, "predicted_se": se, "empirical_variance": tot.rad_variance,
                     "ci_low": tot.ci_low, "ci_high": tot.ci_high,
                     "z": (var - tot.rad_variance) / np.hypot(tot.rad_se, se),
                     "agrees_99": bool(abs(var - tot.rad_variance) <= Z99 * np.hypot(tot.rad_se, se))})
    print(f"{name}: {time.perf_counter() - t0:.0f} s")
    print(plan)
table = pd.DataFrame(rows)
paper_labels = [f"uniform {candidates.family_name(t)}" for t in candidates.PAPER_FAMILIES]
ratios = []
for name, g in table.groupby("model", sort=False):
    tuned = g[g.plan == "tuned"].iloc[0]
    best_paper = g[g.plan.isin(paper_labels)].sort_values("predicted_variance").iloc[0]
    best_any = g[g.plan != "tuned"].sort_values("predicted_variance").iloc[0]
    ratios.append({"model": name, "budget_bytes": int(tuned.budget_bytes), "tuned_measured_bytes": int(tuned.measured_bytes),
                   "best_paper_uniform": best_paper.plan, "ratio_vs_best_paper_predicted":
                       best_paper.predicted_variance / tuned.predicted_variance,
                   "ratio_vs_best_paper_empirical": best_paper.empirical_variance / tuned.empirical_variance,
                   "ratio_vs_best_paper_empirical_worst_case": best_paper.ci_low / tuned.ci_high,
                   "best_uniform_any_family": best_any.plan,
                   "ratio_vs_best_any_predicted": best_any.predicted_variance / tuned.predicted_variance,
                   "ratio_vs_best_any_empirical": best_any.empirical_variance / tuned.empirical_variance})
ratios = pd.DataFrame(ratios)
pd.set_option("display.width", 200)
print(table.drop(columns=["budget_bytes"]).to_string(index=False))
print(ratios.T.to_string())

# %%
fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4))
for ax, (name, g) in zip(np.atleast_1d(axes), table.groupby("model", sort=False)):
    ax.errorbar(g.plan, g.empirical_variance, yerr=[g.empirical_variance - g.ci_low, g.ci_high - g.empirical_variance],
                fmt="o", capsize=3, label="Monte Carlo (99% CI)")
    ax.plot(g.plan, g.predicted_variance, "x", color="k", label="closed form")
    ax.set_yscale("log")
    ax.set_ylabel("total RAD variance Σ E‖Ĝ − G‖²")
    ax.set_title(f"{name}, {int(g.budget_bytes.iloc[0]):,} bytes")
    ax.tick_params(axis="x", rotation=30)
    ax.legend()
fig.tight_layout()
save_figure(fig, args.out / f"{prefix}_same_memory.png")

# %% [markdown]
# ## 2. Frontier of the MLP: uniform plans, tuned plans, small exact batches
#
# Total variance = data noise tr Σ / B (tr Σ: covariance trace of per-example gradients of all
# parameters over all 1,797 digits, `variance.minibatch`) + RAD variance. Small exact batches: ledger bytes of
# the all-exact model measured at each batch size.

# %%
mlp_name = next(iter(models))
mlp, _ = models[mlp_name]
mlp_batch = ((x[:BATCH].clone(),), y[:BATCH].clone())
trace_sigma = float(variance.minibatch(mlp, (x, y), LOSS, BATCH).total["trace_sigma"].iloc[0])
mlp_cands = candidates.candidates(mlp, mlp_batch, LOSS, keeps=SETTING["keeps"])
front = frontier.frontier(mlp, (x, y), LOSS, mlp_cands, trace_sigma, small_batches=SMALL)
answers = []
for b in SMALL:
    m_b = int(front.table.loc[front.table.plan == f"exact batch {b}", "bytes"].iloc[0])
    if m_b < mlp_cands.fixed + int(mlp_cands.table.groupby("layer")["bytes"].min().sum()):
        answers.append({"small_batch": b, "bytes": m_b, "small_batch_variance": trace_sigma / b,
                        "rad150_tuned_variance": np.nan, "better": "small batch (RAD at 150 does not fit)"})
        continue
    best = front.at(m_b).set_index("curve")
    tuned_total = float(best.loc["tuned", "total_variance"])
    uniform_best = best[best.index.str.startswith("uniform")]["total_variance"]
    answers.append({"small_batch": b, "bytes": m_b, "small_batch_variance": trace_sigma / b,
                    "rad150_tuned_variance": tuned_total,
                    "rad150_best_uniform_variance": float(uniform_best.min()) if len(uniform_best) else np.nan,
                    "better": "RAD at 150 (tuned)" if tuned_total < trace_sigma / b else "small exact batch",
                    "ratio_small_over_rad": trace_sigma / b / tuned_total})
answers = pd.DataFrame(answers)
print(f"tr Σ = {trace_sigma:.6g}; exact bytes at 150: {front.exact_bytes:,}")
print(answers.to_string(index=False))

# %%
fig, ax = plt.subplots(figsize=(8, 5))
front.plot(ax)
save_figure(fig, args.out / f"{prefix}_frontier.png")

# %% [markdown]
# ## 3. Batch-size co-optimisation in the memory of an exact batch of 20
#
# The RAD variance at other batch sizes comes from the model of `radvar.tradeoff.batch`
# (per-example sketches scale as 1/B exactly; shared ones as c + d/B fitted from 10 sub-batches).

# %%
budget20 = int(front.table.loc[front.table.plan == "exact batch 20", "bytes"].iloc[0])
sizes = [20, 30, 50, 75, 100, 150, 200, 300] if not args.quick else [20, 50, 150, 300]
co = batch.co_optimize(mlp, (x, y), LOSS, budget20, sizes, trace_sigma, keeps=SETTING["keeps"], groups=10)
print(co.summary())
fig, ax = plt.subplots(figsize=(6.5, 4))
feasible = co.table[np.isfinite(co.table.total_variance)]
ax.plot(feasible.batch_size, feasible.total_variance, "o-", label="tuned RAD plan in the budget")
ax.plot(feasible.batch_size, feasible.data_variance, ":", color="grey", label="data noise tr Σ / B")
fits = co.table[co.table.exact_fits]
ax.plot(fits.batch_size, fits.data_variance, "s", color="C3", label="exact batch that fits")
ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="total gradient variance",
       title=f"budget = exact batch 20 ({budget20:,} bytes)")
ax.legend()
fig.tight_layout()
save_figure(fig, args.out / f"{prefix}_batch.png")

# %% [markdown]
# ## Results table (markdown)

# %%
def md(frame: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub Markdown table; floats as ``floatfmt``, ints with thousands separators."""
    def cell(v: object) -> str:
        if isinstance(v, (bool, np.bool_)):
            return str(bool(v))
        if isinstance(v, (int, np.integer)):
            return f"{int(v):,}"
        if isinstance(v, (float, np.floating)):
            return f"{float(v):{floatfmt}}"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


best_co, best_exact = co.best, co.best_exact
lines = [
    f"# Memory/variance trade-offs ({'quick' if args.quick else 'full'} run)",
    "",
    f"Setting: {SETTING}; batch {BATCH}; seed {SEED}; torch {torch.__version__}, CPU. "
    "Produced by `python analyses/tradeoff.py" + (" --quick" if args.quick else "") + "`.",
    "",
    "## 1. Same memory as the paper's uniform keep-0.1 plans",
    "",
    "Bytes: ledger after `convert` (measured) and the tuner's prediction; variances: closed form (predicted, with "
    "its Monte Carlo SE for conv projections) and `variance.empirical` (mean of ‖Ĝ − G‖² over draws, 99% CI).",
    "",
    md(table.drop(columns=["budget_bytes"])),
    "",
    md(ratios, ".3g"),
    "",
    f"![same memory]({prefix}_same_memory.png)",
    "",
    "## 2. MLP frontier: at the memory of a small exact batch, which is better?",
    "",
    f"tr Σ (per-example gradient covariance, all parameters) = {trace_sigma:.5g}; "
    f"all-exact bytes at batch {BATCH}: {front.exact_bytes:,}.",
    "",
    md(answers),
    "",
    f"![frontier]({prefix}_frontier.png)",
    "",
    f"## 3. Batch-size co-optimisation, budget = exact batch 20 ({budget20:,} bytes)",
    "",
    md(co.table),
    "",
    f"Best pair: batch {int(best_co.batch_size)}, total variance {best_co.total_variance:.4g}; "
    + (f"best exact batch that fits: {int(best_exact.batch_size)}, variance {best_exact.data_variance:.4g} "
       f"({best_exact.data_variance / best_co.total_variance:.2f}x)." if best_exact is not None else "no exact batch fits."),
    "",
    f"![batch]({prefix}_batch.png)",
    "",
]
save_text(args.out / f"{prefix}.md", "\n".join(lines))
for name, plan in tuned_plans.items():
    plan.save(args.out / f"{prefix}_plan_{'mlp' if name.startswith('MLP') else 'cnn'}.json")
print("wrote", args.out / f"{prefix}.md")
