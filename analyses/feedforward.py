# %% [markdown]
# # The paper's feedforward claim on digits (Oktay et al., ICLR 2021, §6.1)
#
# Claim: *for a fixed memory budget, RAD converges in fewer iterations than a
# small batch* on feedforward networks. The paper tested it on MNIST with the
# 784-300-300-300-10 MLP; here the same MLP (input 64) trains on scikit-learn's
# bundled 8x8 digits, with radvar's own tools only:
#
# * memory is the saved-tensor ledger (`radvar.memory`, through the
#   `saved_bytes` column of `radvar.train.fit`'s History);
# * the budget is the ledger of the paper's RAD arm (same-sample subsampling,
#   keep 0.1, batch 150); the small batch is the largest exact batch whose
#   ledger fits it (`radvar.train.max_batch_size`), not `0.1 * 150`;
# * arms: exact batch 150; the small batch; RAD keep 0.1 at batch 150 with
#   same-sample, different-sample (per example) and Rademacher-projection
#   sketches; importance sampling keep 0.1; the plan `radvar.tradeoff.tune`
#   picks for the same budget;
# * SGD with momentum 0.9 (our choice), the learning rate tuned per arm on a
#   grid (as the paper did) with a separate tuning seed, then several seeds
#   (model init, data order and RAD draws all change with the seed);
# * the loss is the exact loss on the whole training set at the iterate; the
#   accuracy is on a held-out 20%.
#
# Run: `python analyses/feedforward.py [--quick]`; outputs go to
# `analyses/results/feedforward*` (`feedforward_quick*` with `--quick`).

# %%
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F

import radvar
from radvar import sketch, zoo
from radvar.report import write_text
from radvar.report.tables import markdown
from radvar.tradeoff import tune
from radvar.train import fit, max_batch_size, save_figure

parser = argparse.ArgumentParser(description="RAD vs small batch at equal memory on digits (paper §6.1)")
parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp",
                    help="mlp: the paper MLP (input 64); cnn: the paper CNN on 1x8x8 images (fewer steps: ~4x the cost)")
args, _ = parser.parse_known_args()

torch.set_num_threads(1)  # small matmuls: intra-op threads only add contention on shared cores
if args.quick:
    S = {"steps": 20, "tune_steps": 10, "lrs": [0.05], "seeds": [0, 1], "log_every": 10}
elif args.model == "mlp":
    S = {"steps": 400, "tune_steps": 150, "lrs": [0.01, 0.03, 0.1, 0.3], "seeds": [0, 1, 2], "log_every": 10}
else:
    S = {"steps": 300, "tune_steps": 100, "lrs": [0.03, 0.1, 0.3], "seeds": [0, 1, 2], "log_every": 10}
prefix = "feedforward" + ("_cnn" if args.model == "cnn" else "") + ("_quick" if args.quick else "")
BATCH, KEEP, TUNE_SEED = 150, 0.1, 100
args.out.mkdir(parents=True, exist_ok=True)
started = time.perf_counter()

x, y = zoo.digits()
order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
n_train = int(0.8 * len(x))
train = (x[order[:n_train]].contiguous(), y[order[:n_train]].contiguous())
test = (x[order[n_train:]].contiguous(), y[order[n_train:]].contiguous())
if args.model == "mlp":
    model_fn, TITLE = (lambda: zoo.mlp(in_features=64)), "MLP 64-300-300-300-10"
else:  # images (N, 1, 8, 8); conv sketches sample spatial positions per (example, channel) row (the paper's view)
    train, test = (train[0].view(-1, 1, 8, 8), train[1]), (test[0].view(-1, 1, 8, 8), test[1])
    model_fn, TITLE = (lambda: zoo.cnn(in_channels=1, image=8)), "CNN conv5x5 16-32-pool-32-32-pool-linear"
print(f"digits: {n_train} train, {len(x) - n_train} test; settings {S}")

# %% [markdown]
# ## The memory budget and the small batch that fits it

# %%
first = (train[0][:BATCH].clone(), train[1][:BATCH].clone())
paper_rad = sketch.Subsample(KEEP)
budget = radvar.memory.saved_bytes(radvar.convert(model_fn(), paper_rad), first[0], F.cross_entropy, first[1]).total
small = max_batch_size(model_fn(), None, first, F.cross_entropy, memory_limit=budget)
torch.manual_seed(TUNE_SEED)
tuned_plan = tune(model_fn(), first, F.cross_entropy, budget=budget, batch_size=BATCH)
ARMS = {  # name -> (plan, batch)
    "exact, batch 150": (None, BATCH),
    f"exact, small batch {small.batch_size}": (None, small.batch_size),
    "RAD same sample": (paper_rad, BATCH),
    "RAD different sample": (sketch.Subsample(KEEP, per_example=True), BATCH),
    "RAD projection": (sketch.Projection(KEEP), BATCH),
    "RAD importance": (sketch.Importance(KEEP), BATCH),
    "RAD tuned plan": (tuned_plan, BATCH),
}
print(f"budget (ledger of RAD same sample, keep {KEEP}, batch {BATCH}): {budget:,} bytes; "
      f"small batch {small.batch_size} ({small.measured_bytes:,} bytes, {small.per_example_bytes:,.1f} per example)")
print(f"tuned plan: {tuned_plan!r}")


# %%
def run(arm: str, lr: float, seed: int, steps: int) -> pd.DataFrame:
    """One training run of an arm: same init for a given seed across arms; the plan applied to exact twins."""
    plan, batch = ARMS[arm]
    torch.manual_seed(seed)
    model = radvar.convert(model_fn(), plan)
    try:
        hist = fit(model, train, loss_fn=F.cross_entropy, optimizer=lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9),
                   steps=steps, batch_size=batch, eval_data={"train": train, "test": test}, seed=seed,
                   log_every=S["log_every"], progress=False)
    except FloatingPointError:  # diverged: no history worth keeping
        return pd.DataFrame({"arm": [arm], "lr": [lr], "seed": [seed], "train_loss": [math.inf]})
    return hist.assign(arm=arm, lr=lr, seed=seed, batch=batch)


# %% [markdown]
# ## Learning rate per arm (tuning seed, half the steps; score: mean training loss over the last quarter)

# %%
tuning = []
for arm in ARMS:
    for lr in S["lrs"]:
        h = run(arm, lr, TUNE_SEED, S["tune_steps"])
        tail = h["train_loss"].iloc[-max(1, len(h) // 4):]
        tuning.append({"arm": arm, "lr": lr, "score": float(tail.mean())})
tuning = pd.DataFrame(tuning)
best_lr = tuning.loc[tuning.groupby("arm", sort=False)["score"].idxmin()].set_index("arm")["lr"]
print(tuning.pivot(index="arm", columns="lr", values="score").loc[list(ARMS)].round(4))

# %% [markdown]
# ## Runs: every arm at its learning rate, several seeds

# %%
runs = pd.concat([run(arm, float(best_lr[arm]), seed, S["steps"]) for arm in ARMS for seed in S["seeds"]],
                 ignore_index=True)
exact_runs = runs[runs["arm"] == "exact, batch 150"]
if exact_runs["train_loss"].isin([math.inf]).any():
    raise SystemExit("exact batch 150 diverged at its tuned learning rate: no target can be set")
# target: the training loss exact batch 150 reaches at a quarter of the run (median over seeds)
TARGET_STEP = max(S["log_every"], S["steps"] // 4 // S["log_every"] * S["log_every"])
quarter = exact_runs[exact_runs["step"] == TARGET_STEP]
target = float(quarter["train_loss"].median())


def steps_to_target(h: pd.DataFrame) -> float:
    hit = h.loc[h["train_loss"] <= target, "step"]
    return float(hit.iloc[0]) if len(hit) else math.inf


per_seed = (runs.groupby(["arm", "seed"], sort=False)
            .apply(lambda h: pd.Series({"steps_to_target": steps_to_target(h),
                                        "final_train_loss": h["train_loss"].iloc[-1],
                                        "final_test_accuracy": h["test_accuracy"].iloc[-1]}),
                   include_groups=False)
            .reset_index())
print(f"target training loss: {target:.4f}")

# %% [markdown]
# ## Summary: memory, iterations to target (mean, sd over seeds; inf = not reached), and the claim

# %%
small_name = f"exact, small batch {small.batch_size}"
small_seeds = per_seed[per_seed["arm"] == small_name].set_index("seed")
bytes_of = runs.groupby("arm")["saved_bytes"].max()  # a diverged run has no row; any run of the arm has it


def spread(g: pd.DataFrame, col: str, fmt: str) -> str:
    """Mean ± sd over the seeds that did not diverge, and how many did."""
    ok = g.loc[g["final_train_loss"] < math.inf, col]
    text = f"{ok.mean():{fmt}} ± {ok.std(ddof=1):{fmt}}" if len(ok) > 1 else f"{ok.iloc[0]:{fmt}}" if len(ok) else "—"
    diverged = len(g) - len(ok)
    return text + (f" ({diverged}/{len(g)} seeds diverged)" if diverged else "")


rows = []
for arm, g in per_seed.groupby("arm", sort=False):
    s = g.set_index("seed")["steps_to_target"]
    reached = s[s < math.inf]
    row = {"arm": arm, "batch": ARMS[arm][1], "saved bytes (max over seeds)": int(bytes_of[arm]),
           "memory / budget": round(bytes_of[arm] / budget, 3), "lr": float(best_lr[arm]),
           "steps to target": f"{s.mean():.0f} ± {s.std(ddof=1):.0f}" if len(reached) == len(s)
           else f"{len(reached)}/{len(s)} seeds reached" + (f" ({reached.mean():.0f})" if len(reached) else ""),
           "final train loss": spread(g, "final_train_loss", ".4f"),
           "final test acc": spread(g, "final_test_accuracy", ".3f"),
           "_mean_steps": s.mean()}
    # the claim, seed by seed (same init and data order as the small batch): fewer iterations to the
    # target (a tie, including neither reaching it, is not fewer), and a lower final training loss
    fewer = int((s < small_seeds.loc[s.index, "steps_to_target"]).sum())
    lower = int((g.set_index("seed")["final_train_loss"] < small_seeds.loc[s.index, "final_train_loss"]).sum())
    verdict = "holds" if fewer == len(s) else "refuted" if fewer == 0 else "mixed"
    row["claim: fewer steps than small batch"] = f"{verdict} ({fewer}/{len(s)} seeds)" if arm != small_name else ""
    row["lower final loss than small batch"] = f"{lower}/{len(s)} seeds" if arm != small_name else ""
    rows.append(row)
summary = pd.DataFrame(rows).sort_values("_mean_steps", kind="stable").drop(columns="_mean_steps")
summary.insert(0, "rank", range(1, len(summary) + 1))
print(summary.to_string(index=False))

# %% [markdown]
# ## Figures: training loss and test accuracy vs iteration (line: mean over seeds; band: min–max)

# %%
sns.set_theme(style="whitegrid")
fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
curves = runs.dropna(subset=["step"])
for ax, col, label in ((axes[0], "train_loss", "training loss (whole training set)"),
                       (axes[1], "test_accuracy", "test accuracy")):
    sns.lineplot(data=curves, x="step", y=col, hue="arm", hue_order=list(ARMS), errorbar=("pi", 100), ax=ax,
                 legend=ax is axes[1])
    ax.set_ylabel(label)
    ax.set_xlabel("iteration")
axes[0].set_yscale("log")
axes[0].axhline(target, color="k", lw=0.8, ls="--")
axes[1].legend(fontsize=8, loc="lower right")
fig.suptitle(f"{TITLE} on digits; memory budget {budget:,} bytes; {len(S['seeds'])} seeds")
save_figure(fig, args.out / f"{prefix}_curves.png")

fig, ax = plt.subplots(figsize=(7, 4))
sns.stripplot(data=per_seed.replace(math.inf, S["steps"] * 1.05), x="steps_to_target", y="arm", order=list(ARMS), ax=ax)
ax.axvline(S["steps"], color="k", lw=0.8, ls=":")
ax.set_xlabel(f"iterations to training loss {target:.3f} (right of the dotted line: not reached)")
save_figure(fig, args.out / f"{prefix}_steps.png")

# %%
elapsed = time.perf_counter() - started
write_text(args.out / f"{prefix}_runs.csv", runs.to_csv(index=False))
write_text(args.out / f"{prefix}_tuning.csv", tuning.to_csv(index=False))
write_text(args.out / f"{prefix}_summary.csv", summary.to_csv(index=False))
lr_table = tuning.pivot(index="arm", columns="lr", values="score").loc[list(ARMS)].round(4).reset_index()
lr_table.columns = [str(c) for c in lr_table.columns]
flags = (" --model cnn" if args.model == "cnn" else "") + (" --quick" if args.quick else "")
report = f"""# Feedforward claim on digits, {TITLE} ({'quick run' if args.quick else 'full run'})

Generated by `python analyses/feedforward.py{flags}` in {elapsed:.0f} s
(torch {torch.__version__}, 1 CPU thread). Settings: {S}.

Memory budget: the ledger of RAD same-sample keep {KEEP} at batch {BATCH}: **{budget:,} bytes**
(exact batch {BATCH}: {int(bytes_of['exact, batch 150']):,} bytes).
Largest exact batch within it: **{small.batch_size}** ({small.measured_bytes:,} bytes; {small.per_example_bytes:,.1f}
bytes per example). Tuned plan (`radvar.tradeoff.tune`, budget {budget:,} bytes): `{tuned_plan!r}`.

Target: training loss **{target:.4f}** (median over seeds of exact batch {BATCH} at iteration
{TARGET_STEP}), checked every {S['log_every']} iterations.

{markdown(summary)}

Learning-rate tuning (mean training loss over the last quarter of a {S['tune_steps']}-step run, seed {TUNE_SEED}):

{markdown(lr_table)}

![curves]({prefix}_curves.png)
![steps]({prefix}_steps.png)
"""
write_text(args.out / f"{prefix}.md", report)
print(report)
