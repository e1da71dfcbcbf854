# %% [markdown]
# # RAD variance vs keep on the paper MLP (scikit-learn digits)
#
# For each sketch family: the RAD variance of the weight gradients as a function
# of the keep fraction (closed forms, `radvar.variance.analytic`, averaged over
# batches), next to the minibatch data noise at batch 150 and to the exact small
# batch that fits in the same measured memory (`radvar.variance.minibatch`), at
# initialisation and after some training. Runs as a script:
# `python analyses/variance_study.py [--quick]`; writes
# analyses/results/variance_study{,_quick}.md and .png figures.

# %%
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import radvar  # noqa: E402
from radvar import variance, zoo  # noqa: E402
from radvar.report import atomic_path, write_text  # noqa: E402
from radvar.sketch import Bernoulli, Importance, Projection, Subsample  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="small grid and short training (for tests)")
args = parser.parse_args(sys.argv[1:] if __name__ == "__main__" else [])
QUICK = args.quick
OUT = Path(__file__).resolve().parent / "results"
SUFFIX = "_quick" if QUICK else ""
torch.set_num_threads(1)
torch.manual_seed(0)
radvar.seed(0)

X, Y = zoo.digits()
BATCH = 150
KEEPS = [0.05, 0.1, 0.3, 1.0] if QUICK else [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
RAD_BATCHES = 2 if QUICK else 6
TRAIN_STEPS = 30 if QUICK else 400
FAMILIES = {
    "Subsample shared": Subsample(0.1),
    "Subsample per-example": Subsample(0.1, per_example=True),
    "Bernoulli per-example": Bernoulli(0.1),
    "Projection shared": Projection(0.1),
    "Importance": Importance(0.1),
}
CE = nn.functional.cross_entropy


# %%
def rad_curves(model: nn.Module) -> pd.DataFrame:
    """Total RAD variance (sum over layers) per family and keep, averaged over disjoint batches of 150."""
    rows = []
    for family, sketch in FAMILIES.items():
        for b in range(RAD_BATCHES):
            batch = (X[b * BATCH:(b + 1) * BATCH].clone(), Y[b * BATCH:(b + 1) * BATCH].clone())
            rep = variance.analytic(model, batch, CE, sketch, keeps=KEEPS)
            for _, t in rep.total.iterrows():
                rows.append({"family": family, "keep": t["keep"], "rad_variance": t["rad_variance"] / RAD_BATCHES,
                             "bytes_plan": t["bytes_plan"] / RAD_BATCHES})
    return pd.DataFrame(rows).groupby(["family", "keep"], as_index=False).sum()


def pictures(model: nn.Module, state: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    curves = rad_curves(model)
    rows = []
    for family, sketch in FAMILIES.items():
        rep = variance.minibatch(model, (X, Y), CE, BATCH, plan=sketch, rad_batches=RAD_BATCHES)
        t = rep.total.iloc[0]
        rows.append({"state": state, "family": family, "keep": 0.1, "data_variance@150": t["data_variance"],
                     "rad_variance": t["rad_variance"], "total_variance": t["total_variance"],
                     "equivalent_batch": t["equivalent_batch_size"], "bytes_exact@150": t["bytes_exact"],
                     "bytes_plan@150": t["bytes_plan"], "small_batch_same_memory": t["small_batch_same_memory"],
                     "small_batch_variance": t["small_batch_variance"],
                     "rad_beats_small_batch": t["rad_beats_small_batch"], "trace_sigma": t["trace_sigma"]})
    summary = pd.DataFrame(rows)
    curves["data_variance@150"] = summary["data_variance@150"].iloc[0]
    curves["total_variance"] = curves["rad_variance"] + curves["data_variance@150"]
    curves["state"] = state
    return curves, summary


def train(model: nn.Module, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, X.shape[0], (BATCH,), generator=gen)
        opt.zero_grad()
        CE(model(X[idx]), Y[idx]).backward()
        opt.step()


# %%
model = zoo.mlp(in_features=64)
curves0, summary0 = pictures(model, "initialisation")
train(model, TRAIN_STEPS)
curves1, summary1 = pictures(model, f"after {TRAIN_STEPS} SGD steps")
curves = pd.concat([curves0, curves1], ignore_index=True)
summary = pd.concat([summary0, summary1], ignore_index=True)

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=False)
for ax, (state, part) in zip(axes, curves.groupby("state", sort=False)):
    part = part[part["keep"] < 1.0]
    sns.lineplot(data=part, x="keep", y="total_variance", hue="family", marker="o", ax=ax)
    s = summary[summary["state"] == state]
    ax.axhline(s["data_variance@150"].iloc[0], color="k", ls="--", lw=1, label="exact batch 150 (data noise)")
    for _, r in s.iterrows():
        ax.scatter([0.1], [r["small_batch_variance"]], marker="x", color="k", zorder=5)
    ax.scatter([], [], marker="x", color="k", label="exact small batch, same memory as keep 0.1")
    ax.set(xscale="log", yscale="log", xlabel="keep fraction", ylabel="total gradient variance (data + RAD)",
           title=state)
    ax.legend(fontsize=7)
fig.tight_layout()


def save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)


OUT.mkdir(parents=True, exist_ok=True)
save_figure(fig, OUT / f"variance_study{SUFFIX}_keep.png")

# %%
fig2, ax2 = plt.subplots(figsize=(9, 4.5))
bars = summary.melt(id_vars=["state", "family"], value_vars=["total_variance", "small_batch_variance"],
                    var_name="estimator", value_name="variance")
bars["estimator"] = bars["estimator"].map({"total_variance": "RAD keep 0.1, batch 150",
                                           "small_batch_variance": "exact small batch, same memory"})
bars["case"] = bars["state"].str.slice(0, 14) + " | " + bars["family"]
sns.barplot(data=bars, y="case", x="variance", hue="estimator", ax=ax2, orient="h")
ax2.set(xscale="log", xlabel="total gradient variance", ylabel="")
fig2.tight_layout()
save_figure(fig2, OUT / f"variance_study{SUFFIX}_keep01.png")

# %% [markdown]
# ## Findings (computed from the table below)

# %%
def markdown(frame: pd.DataFrame) -> str:
    """A pipe table (numbers to 4 significant digits)."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def verdict(s: pd.DataFrame, family: str) -> str:
    r = s[s["family"] == family].iloc[0]
    word = "beats" if r["rad_beats_small_batch"] else "does not beat"
    return (f"{family} at keep 0.1 {word} the memory-equivalent exact batch of {int(r['small_batch_same_memory'])} "
            f"(total variance {r['total_variance']:.3g} vs {r['small_batch_variance']:.3g}; "
            f"equivalent batch {r['equivalent_batch']:.1f})")


lines = [f"# Variance study{' (quick)' if QUICK else ''}: paper MLP 64-300-300-300-10 on scikit-learn digits",
         "", f"Batch {BATCH}; RAD variance averaged over {RAD_BATCHES} disjoint batches; data noise from "
         f"per-example gradients of all {X.shape[0]} examples; training: {TRAIN_STEPS} SGD steps (lr 0.1).",
         f"Command: `python analyses/variance_study.py{' --quick' if QUICK else ''}`.", "",
         "Figures: `variance_study" + SUFFIX + "_keep.png` (total variance vs keep, data noise dashed, "
         "memory-equivalent small batch as x), `variance_study" + SUFFIX + "_keep01.png` (keep 0.1 vs small batch).",
         "", "## Verdicts (keep 0.1)", ""]
for state, s in summary.groupby("state", sort=False):
    lines.append(f"* {state}:")
    for family in FAMILIES:
        lines.append(f"  * {verdict(s, family)}")
uni = summary[summary["family"] == "Subsample shared"]["total_variance"].to_numpy()
imp = summary[summary["family"] == "Importance"]["total_variance"].to_numpy()
rad_uni = summary[summary["family"] == "Subsample shared"]["rad_variance"].to_numpy()
rad_imp = summary[summary["family"] == "Importance"]["rad_variance"].to_numpy()
lines += ["", "Importance vs uniform shared subsampling at keep 0.1: RAD variance lower by "
          + ", ".join(f"{u / i:.1f}x" for u, i in zip(rad_uni, rad_imp)) + " (initialisation, trained); total variance "
          "lower by " + ", ".join(f"{u / i:.1f}x" for u, i in zip(uni, imp)) + ".", "",
          "## Table (keep 0.1)", "", markdown(summary), "",
          "## RAD variance vs keep (sum over layers)", "",
          markdown(curves.pivot_table(index=["state", "family"], columns="keep", values="rad_variance",
                                      sort=False).reset_index()), ""]
text = "\n".join(lines)
write_text(OUT / f"variance_study{SUFFIX}.md", text)
print(text)
