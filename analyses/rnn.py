# %% [markdown]
# # IRNN on sequential digits: exact batch vs small batch vs RAD (RAD paper §6)
#
# The paper trains an IRNN (hidden 100, identity recurrent init) on sequential
# MNIST, 784 steps, and compares RAD at keep 0.1 with the exact batch and with
# a small batch that fits in the same memory. Here the stand-in is
# scikit-learn's bundled 8x8 digits read pixel by pixel (`radvar.rnn.sequential_digits`,
# 64 steps of one input), so everything runs offline on a CPU in minutes.
#
# Configurations, all with Adam (lr 2e-3) and gradient-norm clipping at 1.0
# (identity-initialised ReLU RNNs diverge without it here; the clip is applied
# alike to every configuration):
#
# * **exact**: plain PyTorch loop, batch 150;
# * **small batch**: plain loop with the largest batch whose measured saved
#   bytes fit in RAD's (the ledger at batch 150 × keep 0.1);
# * **RAD sampled** / **RAD projected**: batch 150, the recurrent map `rnn.hh`
#   and the readout `head` sketched at keep 0.1 (`Subsample` / `Projection`,
#   the shared or per-example variant, whichever has the lower measured
#   gradient variance at initialisation); `rnn.ih` stays exact: its input has
#   one feature, so a keep-0.1 sketch keeps it whole anyway.
#
# Run as a script: `python analyses/rnn.py [--quick]`; results go to
# `analyses/results/rnn*` (`rnn_quick*` with `--quick`).

# %%
from __future__ import annotations

import argparse
import json
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
from radvar import Plan, rnn, variance
from radvar.memory import saved_bytes
from radvar.report import atomic_path
from radvar.sketch import Projection, Subsample

parser = argparse.ArgumentParser(description="IRNN on sequential digits: exact vs small batch vs RAD")
parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
args, _ = parser.parse_known_args()

torch.set_num_threads(1)  # 64 steps of tiny matmuls: intra-op threads only add contention on shared cores
if args.quick:
    SETTING = {"seeds": [0], "iterations": 2, "eval_every": 1, "variance_draws": 2}
    prefix = "rnn_quick"
else:
    SETTING = {"seeds": [0, 1, 2], "iterations": 150, "eval_every": 15, "variance_draws": 10}
    prefix = "rnn"
BATCH, KEEP, HIDDEN, LR, CLIP = 150, 0.1, 100, 2e-3, 1.0
args.out.mkdir(parents=True, exist_ok=True)


def write_atomic(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: never a half-written result."""
    with atomic_path(path) as tmp:
        write(tmp)


x_all, y_all = rnn.sequential_digits()
split = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(1234))
x_train, y_train = x_all[split[:1437]].contiguous(), y_all[split[:1437]]
x_test, y_test = x_all[split[1437:]].contiguous(), y_all[split[1437:]]
steps = x_train.shape[1]
print(f"train {tuple(x_train.shape)}, test {tuple(x_test.shape)}, {SETTING}")


def rad_plan(sketch) -> Plan:
    """``sketch`` on every randomizable map but ``rnn.ih`` (one input feature: nothing to drop)."""
    return Plan({"rnn.ih": None, "rnn.hh": sketch, "head": sketch})


# %% [markdown]
# ## Memory per step: the saved-tensor ledger over the whole sequence / steps
#
# The plain loop keeps every hidden state h_t (the ReLU output, which is also the
# next step's matmul input): 4·B·H bytes a step. RAD keeps a sketch of h_{t-1}
# (4·B·ceil(0.1·H)) and a 1-bit ReLU mask (B·H/8).

# %%
model0 = rnn.irnn(hidden_size=HIDDEN)
xb = x_train[:BATCH].clone()
variants = {
    "sampled (shared)": Subsample(KEEP),
    "sampled (per-example)": Subsample(KEEP, per_example=True),
    "projected (shared)": Projection(KEEP),
    "projected (per-example)": Projection(KEEP, per_example=True),
}
rows = [{"config": "plain PyTorch loop", "rnn_bytes": saved_bytes(model0.rnn, xb).total,
         "model_bytes": saved_bytes(model0, xb, F.cross_entropy, y_train[:BATCH]).total}]
for name, sk in variants.items():
    rad = radvar.convert(model0, rad_plan(sk))
    rows.append({"config": f"RAD {name}", "rnn_bytes": saved_bytes(rad.rnn, xb).total,
                 "model_bytes": saved_bytes(rad, xb, F.cross_entropy, y_train[:BATCH]).total})
memory = pd.DataFrame(rows)
memory["bytes_per_step"] = memory["rnn_bytes"] / steps
memory["ratio_vs_plain"] = memory["rnn_bytes"][0] / memory["rnn_bytes"]
print(memory.to_string(index=False))

# the largest exact batch whose whole-model ledger fits in RAD's at batch 150
rad_budget = int(memory["model_bytes"][1:].max())
def fits(b: int) -> bool:
    return saved_bytes(model0, x_train[:b].clone(), F.cross_entropy, y_train[:b]).total <= rad_budget


lo, hi = 1, BATCH  # bisection: the ledger grows with the batch; fits(lo) holds, fits(hi) does not
while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
small = lo
print(f"memory-equivalent small batch: {small} (RAD model ledger {rad_budget:,} bytes)")

# %% [markdown]
# ## Gradient variance at initialisation
#
# For each configuration, E‖ĝ − ∇L‖² over all parameters, where ∇L is the exact
# full-training-set gradient and ĝ the configuration's stochastic gradient (a
# random batch, and for RAD a random sketch), estimated from independent draws.
# Data noise and RAD noise are both in it; the per-step RAD variances of the
# recurrent weight add up over the 64 steps (tests/test_rnn.py checks that sum).

# %%


def flat_grad(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


full = flat_grad(model0, x_train, y_train)
batches = torch.Generator().manual_seed(99)
radvar.seed(99)
configs_var = {"exact": (model0, BATCH), "small batch": (model0, small)}
configs_var.update({f"RAD {n}": (radvar.convert(model0, rad_plan(sk)), BATCH) for n, sk in variants.items()})
var_rows = []
for name, (model, b) in configs_var.items():
    errs = []
    for _ in range(SETTING["variance_draws"]):
        idx = torch.randint(0, len(x_train), (b,), generator=batches)
        errs.append(float((flat_grad(model, x_train[idx], y_train[idx]) - full).square().sum()))
    errs_t = torch.tensor(errs, dtype=torch.float64)
    se = float(errs_t.std()) / math.sqrt(len(errs)) if len(errs) > 1 else float("nan")
    var_rows.append({"config": name, "batch": b, "variance": float(errs_t.mean()), "std_error": se})
total_var = pd.DataFrame(var_rows)
total_var["relative_to_exact"] = total_var["variance"] / total_var["variance"][0]
print(total_var.to_string(index=False))


# %% [markdown]
# The closed forms of `radvar.variance` (one capture call per step of each map,
# per-step forms summed) give the RAD part alone, on one batch of 150 at init:

# %%
analytic_rows = []
for name, sk in variants.items():
    report = variance.analytic(model0, (xb, y_train[:BATCH]), F.cross_entropy, rad_plan(sk))
    for _, r in report.per_layer.iterrows():
        if r["layer"] != "rnn.ih":
            analytic_rows.append({"config": f"RAD {name}", "layer": r["layer"],
                                  "rad_variance": float(r["rad_variance"]), "method": r["method"]})
analytic_frame = pd.DataFrame(analytic_rows)
print(analytic_frame.to_string(index=False))

# %%


def pick(family: str) -> str:
    sub = total_var[total_var["config"].str.startswith(f"RAD {family}")]
    return str(sub.loc[sub["variance"].idxmin(), "config"])


chosen = {"RAD sampled": pick("sampled"), "RAD projected": pick("projected")}
print("trained RAD variants:", chosen)

# %% [markdown]
# ## Learning curves over seeds
#
# Same initial weights for every configuration of a seed; the exact and RAD
# runs see the same batches (the small batch draws its own, from the same seed).

# %%


def evaluate(model: torch.nn.Module) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x_test)
    return float(F.cross_entropy(logits, y_test)), float((logits.argmax(1) == y_test).float().mean())


def train(config: str, seed: int) -> tuple[list[dict], float]:
    torch.manual_seed(seed)
    model = rnn.irnn(hidden_size=HIDDEN)
    if config.startswith("RAD"):
        model = radvar.convert(model, rad_plan(variants[chosen[config].removeprefix("RAD ")]), inplace=True)
    b = small if config == "small batch" else BATCH
    order = torch.Generator().manual_seed(seed)
    radvar.seed(seed)
    opt = torch.optim.Adam(model.parameters(), LR)
    curve, seconds = [], 0.0
    for it in range(SETTING["iterations"] + 1):
        if it % SETTING["eval_every"] == 0:
            loss, acc = evaluate(model)
            curve.append({"config": config, "seed": seed, "iteration": it, "test_loss": loss, "test_accuracy": acc})
        if it == SETTING["iterations"]:
            break
        idx = torch.randint(0, len(x_train), (b,), generator=order)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        seconds += time.perf_counter() - start
    return curve, seconds / SETTING["iterations"]


CONFIGS = ["exact", "small batch", "RAD sampled", "RAD projected"]
curves, step_ms = [], {c: [] for c in CONFIGS}
t0 = time.perf_counter()
for seed in SETTING["seeds"]:
    for config in CONFIGS:
        curve, sec = train(config, seed)
        curves += curve
        step_ms[config].append(sec * 1e3)
        print(f"seed {seed} {config:14s} final acc {curve[-1]['test_accuracy']:.3f} "
              f"loss {curve[-1]['test_loss']:.3f} ({sec * 1e3:.0f} ms/step)", flush=True)
history = pd.DataFrame(curves)
print(f"training took {time.perf_counter() - t0:.0f} s")

# %%
labels = {"exact": f"exact, batch {BATCH}", "small batch": f"small batch {small} (same memory as RAD)",
          "RAD sampled": f"{chosen['RAD sampled']}, keep {KEEP}", "RAD projected": f"{chosen['RAD projected']}, keep {KEEP}"}
plot_frame = history.assign(config=history["config"].map(labels))
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
for ax, metric in zip(axes, ["test_loss", "test_accuracy"]):
    sns.lineplot(data=plot_frame, x="iteration", y=metric, hue="config", errorbar=("pi", 100), ax=ax)
    ax.set_title(f"{metric.replace('_', ' ')} (mean over {len(SETTING['seeds'])} seeds; band: min–max)")
axes[0].set_yscale("log")
axes[0].legend(fontsize=8)
axes[1].get_legend().remove()
fig.suptitle(f"IRNN (hidden {HIDDEN}) on sequential 8x8 digits ({steps} steps), Adam lr {LR}, clip {CLIP}")
fig.tight_layout()
write_atomic(args.out / f"{prefix}_curves.png", lambda p: fig.savefig(p, dpi=120, format="png"))

# %% [markdown]
# ## Results table

# %%
final = history[history["iteration"] == SETTING["iterations"]].groupby("config")
summary = pd.DataFrame({
    "config": CONFIGS,
    "label": [labels[c] for c in CONFIGS],
    "final_test_accuracy_mean": [float(final.get_group(c)["test_accuracy"].mean()) for c in CONFIGS],
    "final_test_accuracy_min": [float(final.get_group(c)["test_accuracy"].min()) for c in CONFIGS],
    "final_test_accuracy_max": [float(final.get_group(c)["test_accuracy"].max()) for c in CONFIGS],
    "final_test_loss_mean": [float(final.get_group(c)["test_loss"].mean()) for c in CONFIGS],
    "step_ms_median": [float(pd.Series(step_ms[c]).median()) for c in CONFIGS],
})
print(summary.to_string(index=False))


def md(frame: pd.DataFrame, formats: dict[str, str] | None = None) -> str:
    """A markdown table; floats as ``formats[column]`` (default 3 significant digits), ints with separators."""
    formats = formats or {}
    cols = list(frame.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in frame.iterrows():
        cells = [format(v, formats.get(c, ".3g")) if isinstance(v, float) else f"{v:,}" if isinstance(v, int)
                 else str(v) for c, v in zip(cols, r)]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


plain_step = float(memory["bytes_per_step"][0])
text = f"""# IRNN on sequential digits: exact vs small batch vs RAD

Produced by `python analyses/rnn.py{' --quick' if args.quick else ''}` (torch {torch.__version__}, CPU, 1 thread).
Setting: {json.dumps(SETTING)}; batch {BATCH}, hidden {HIDDEN}, keep {KEEP}, Adam lr {LR}, clip {CLIP};
{len(x_train)} train / {len(x_test)} test sequences of {steps} steps.

## Memory per step (saved-tensor ledger of the IRNN over the whole sequence / {steps}, batch {BATCH})

{md(memory, {"bytes_per_step": ",.1f", "ratio_vs_plain": ".2f"})}

Plain loop: {plain_step:,.0f} bytes a step. Memory-equivalent small batch (whole model incl. loss fits in RAD's
{rad_budget:,} bytes): **{small}**.

## Gradient variance at initialisation (E‖ĝ − ∇L_train‖², {SETTING['variance_draws']} draws each)

{md(total_var, {"relative_to_exact": ".2f"})}

RAD variance alone, closed forms of `radvar.variance.analytic` (per-step forms summed over the {steps} steps),
same model, one batch of {BATCH}:

{md(analytic_frame)}

Trained RAD variants (lowest measured variance per family): {chosen['RAD sampled']}, {chosen['RAD projected']}.

## Learning curves ({len(SETTING['seeds'])} seeds × {SETTING['iterations']} iterations): `{prefix}_curves.png`

{md(summary.drop(columns=["config"]))}
"""
write_atomic(args.out / f"{prefix}.md", lambda p: Path(p).write_text(text))
payload = {"setting": SETTING, "small_batch": small, "memory": memory.to_dict(orient="records"),
           "variance": total_var.to_dict(orient="records"), "analytic": analytic_frame.to_dict(orient="records"),
           "chosen": chosen,
           "summary": summary.to_dict(orient="records"), "history": history.to_dict(orient="records")}
write_atomic(args.out / f"{prefix}.json", lambda p: Path(p).write_text(json.dumps(payload, indent=1)))
print(f"wrote {args.out / prefix}.md, {prefix}.json, {prefix}_curves.png")
