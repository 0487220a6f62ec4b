"""Claim 9: LoRA's results depend on its hyperparameters -- the rank, alpha, the target matrices.

    The source article (docs/claims.md, claim 9): LoRA is sensitive to its
    hyperparameters -- the rank and the layers it adapts change how well it does.

Read off claim 4's grid (classification accuracy by rank and by target set, code
loss by rank), plus two small sweeps on the classification task with LoRA on Wq+Wv:

* **alpha** at r = 8: the update is scaled by alpha / r, so alpha acts much like a
  second learning rate for the adapter;
* **rsLoRA** (Kalajdzievski, 2023) at a small and a large rank: scaling by
  alpha / sqrt(r) instead of alpha / r. Its alpha is chosen so that r = 8 gets the
  default scaling (2), i.e. alpha = 2 sqrt(8); then every rank takes update steps of
  the same size, where plain LoRA's steps shrink or grow with r.

"Impacts performance" is judged against noise: a hyperparameter matters when
changing it moves the result by more than the spread between seeds.
"""

from __future__ import annotations

import math

import numpy as np

from minilora.experiments.core import FAILS, PARTLY, combine, judge
from minilora.experiments.runs import ALPHA_PER_RANK, RunSpec, describe_failures, summarize, train

KEY, NUMBER = "sensitivity", 9
TITLE = "Hyperparameter sensitivity"
CLAIM = "LoRA's results depend on its hyperparameters: the rank and the choice of adapted layers change how well it does"
MEASURED = "classification accuracy across ranks, target sets and alpha; rsLoRA on/off; code loss across ranks"
BASES = ("toy",)

ALPHAS = (4, 8, 32, 64)  # at r = 8 (the default alpha is 2 r = 16, from claim 4's grid)
ALPHA_RANK = 8
RSLORA_RANKS = (1, 64)
RSLORA_ALPHA = ALPHA_PER_RANK * math.sqrt(ALPHA_RANK)  # rsLoRA scaling alpha / sqrt(8) = 2 at r = 8, as the default
TARGET_RANK = 8  # target sets are compared at this rank
EXTRA_SEEDS = (0,)  # the alpha and rsLoRA runs: one seed each (the budget); the grid's seeds give the noise


def extra_specs(base, quick: bool) -> list:
    """The alpha and rsLoRA runs (classification, Wq+Wv); quick mode: one alpha, one rsLoRA run."""
    common = base.grid(quick).common("cls")
    alphas = ALPHAS[-1:] if quick else ALPHAS
    ranks = RSLORA_RANKS[-1:] if quick else RSLORA_RANKS
    target = base.PAPER_TARGET
    specs = [RunSpec("cls", "lora", target, ALPHA_RANK, alpha=a, seed=seed, **common) for a in alphas for seed in EXTRA_SEEDS]
    specs += [RunSpec("cls", "lora", target, r, alpha=RSLORA_ALPHA, use_rslora=True, seed=seed, **common)
              for r in ranks for seed in EXTRA_SEEDS]
    return specs


def spread(rows: dict, names: list, key: str) -> dict:
    """How far the mean ``key`` moves across the settings ``names``, against the seed noise.

    ``range``: max - min of the means; ``noise``: the root-mean-square of the settings' seed
    std (0 with one seed); ``ratio``: range / noise (inf when there is no noise estimate).
    """
    means = {n: rows[n][f"{key}_mean"] for n in names if n in rows and np.isfinite(rows[n][f"{key}_mean"])}  # every seed failed: left out
    stds = [rows[n][f"{key}_std"] for n in means]
    if not means:
        return {"means": {}, "range": 0.0, "best": "(none)", "worst": "(none)", "noise": 0.0, "ratio": float("nan")}
    low, high = min(means, key=means.get), max(means, key=means.get)
    noise = float(np.sqrt(np.mean(np.square(stds)))) if stds else 0.0
    value_range = means[high] - means[low]
    return {"means": means, "range": value_range, "best": high if key == "accuracy" else low,
            "worst": low if key == "accuracy" else high, "noise": noise,
            "ratio": value_range / noise if noise > 0 else float("inf")}


# The verdict: a choice "impacts performance" when the range it spans is at least
# RATIO_HOLDS times the seed noise (and RATIO_PARTLY for "partly"). Judged for rank
# and for target set -- the two the article names -- on classification accuracy.
RATIO_HOLDS, RATIO_PARTLY = 3.0, 1.5
MIN_RANGE = 0.02  # a range under 2 accuracy points counts as no effect whatever the noise


def measure(base, session) -> dict:
    grid = base.grid(session.quick)
    runs = train(session, base, grid.specs()) + train(session, base, extra_specs(base, session.quick))
    summary = summarize(runs, baseline=base.baseline(session))  # failed runs left out of the ranges
    cls, code = summary["cls"], summary["code"]
    cls_targets, code_targets = dict(grid.task("cls").targets), dict(grid.task("code").targets)
    q = base.PAPER_TARGET
    # rank: for each target set, the range of accuracy across ranks; the article's claim uses the widest
    by_rank = {t: spread(cls, [f"{t} r={r}" for r in ranks], "accuracy") for t, ranks in cls_targets.items()}
    by_target = spread(cls, [f"{t} r={TARGET_RANK}" for t in (*cls_targets, base.PEFT_TARGET)], "accuracy")
    code_rank = {t: spread(code, [f"{t} r={r}" for r in ranks], "loss") for t, ranks in code_targets.items()}
    alpha = {a: (cls[n]["accuracy_mean"], cls[n]["accuracy_std"])
             for a, n in [(ALPHA_PER_RANK * ALPHA_RANK, f"{q} r={ALPHA_RANK}")]
             + [(a, f"{q} r={ALPHA_RANK} alpha={a:g}") for a in ALPHAS] if n in cls}
    alpha_spread = spread(cls, [f"{q} r={ALPHA_RANK}"] + [f"{q} r={ALPHA_RANK} alpha={a:g}" for a in ALPHAS], "accuracy")
    rs_name = lambda r: f"{q} r={r} alpha={RSLORA_ALPHA:g} rslora"  # noqa: E731
    rslora = {"alpha = 2r (default)": {r: (cls[f"{q} r={r}"]["accuracy_mean"], cls[f"{q} r={r}"]["accuracy_std"])
                                        for r in cls_targets[q] if f"{q} r={r}" in cls},
              f"rsLoRA, alpha = {RSLORA_ALPHA:.2f}": {r: (cls[rs_name(r)]["accuracy_mean"], cls[rs_name(r)]["accuracy_std"])
                                                      for r in RSLORA_RANKS if rs_name(r) in cls}}
    return {"rank": by_rank, "widest": max(by_rank, key=lambda t: by_rank[t]["range"]), "target": by_target,
            "alpha": {str(k): v for k, v in alpha.items()}, "alpha_spread": alpha_spread,
            "rslora": {k: {str(r): v for r, v in d.items()} for k, d in rslora.items()}, "code_rank": code_rank,
            "failed": describe_failures(cls) + describe_failures(code),
            "settings": {"alphas": [ALPHA_PER_RANK * ALPHA_RANK, *ALPHAS], "rslora_ranks": list(RSLORA_RANKS),
                         "rslora_alpha": RSLORA_ALPHA, "seeds": list(grid.seeds), "extra_seeds": list(EXTRA_SEEDS),
                         "steps": grid.task("cls").steps, "cls_ranks": list(cls_targets[q])}}


def verdict(figures: dict) -> dict:
    """The widest range over ranks and the range over target sets, each against the seed noise. With one
    seed there is no noise estimate (ratio inf): a range above MIN_RANGE then counts as "partly" only."""
    def part(row):
        if row["range"] < MIN_RANGE:
            return FAILS
        if row["ratio"] == float("inf"):
            return PARTLY
        return judge(row["ratio"], RATIO_HOLDS, RATIO_PARTLY)

    parts = {"rank": part(figures["rank"][figures["widest"]]), "target matrices": part(figures["target"])}
    return {"verdict": combine(*parts.values()), "parts": parts,
            "thresholds": {"range / noise holds >=": RATIO_HOLDS, "range / noise partly >=": RATIO_PARTLY,
                           "minimum range": MIN_RANGE}}


def plot_sweeps(alpha: dict, rslora: dict):
    """Accuracy against alpha (r = 8) and against rank with and without rsLoRA (keys: numbers, or their text)."""
    import matplotlib.pyplot as plt

    alpha = {float(a): v for a, v in alpha.items()}
    rslora = {name: {int(r): v for r, v in points.items()} for name, points in rslora.items()}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.6))
    xs = sorted(alpha)
    ax1.errorbar(xs, [alpha[a][0] for a in xs], yerr=[alpha[a][1] for a in xs], fmt="o-", capsize=3)
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel(f"alpha (r = {ALPHA_RANK}; scaling alpha / r)")
    ax1.set_ylabel("test accuracy")
    ax1.set_title("LoRA on Wq+Wv: alpha", fontsize=9)
    for name, points in rslora.items():
        rs = sorted(points)
        ax2.errorbar(rs, [points[r][0] for r in rs], yerr=[points[r][1] for r in rs], fmt="o-", capsize=3, label=name)
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("rank r")
    ax2.set_title("LoRA on Wq+Wv: plain vs rsLoRA scaling", fontsize=9)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def render(figures: dict, verdict: dict, plot, quick: bool) -> dict:
    f, parts = figures, verdict["parts"]
    by_rank, by_target, widest, s = f["rank"], f["target"], f["widest"], f["settings"]
    plots = [plot(plot_sweeps(f["alpha"], f["rslora"]), "sensitivity.png")]
    rs_name = f"rsLoRA, alpha = {s['rslora_alpha']:.2f}"

    def pts(x):
        return f"{100 * x:.1f} points"

    quick_note = ("**Quick-mode figures** (one seed, so no estimate of the seed noise: a range above the minimum "
                  "counts as \"partly\" at most; a few dozen steps). ") if quick else ""
    rank_lines = "; ".join(f"{t}: best r={row['best'].split(' r=')[-1]}, worst r={row['worst'].split(' r=')[-1]}, "
                           f"range {pts(row['range'])}" for t, row in by_rank.items())
    body = [
        quick_note + f"**Rank** (classification accuracy across r in {s['cls_ranks']}): {rank_lines}. "
        f"The seed noise (RMS of the seed std) is {pts(by_rank[widest]['noise'])}; the widest range is "
        f"{by_rank[widest]['ratio']:.1f}x the noise ({parts['rank']}).",
        "",
        f"**Target matrices** at r={TARGET_RANK}: " + ", ".join(f"{n.split(' r=')[0]} {v:.3f}" for n, v in by_target["means"].items())
        + f" -- a range of {pts(by_target['range'])}, {by_target['ratio']:.1f}x the noise ({parts['target matrices']}).",
        "",
        f"**Alpha** at r={ALPHA_RANK}: " + ", ".join(f"{float(a):g}: {v[0]:.3f}" for a, v in sorted(f["alpha"].items(), key=lambda kv: float(kv[0])))
        + f" (range {pts(f['alpha_spread']['range'])}). **rsLoRA**: "
        + ", ".join(f"r={r}: {v[0]:.3f} (plain: {f['rslora']['alpha = 2r (default)'].get(r, (float('nan'),))[0]:.3f})"
                    for r, v in sorted(f["rslora"][rs_name].items(), key=lambda kv: int(kv[0]))) + ".",
        "",
        "**Code** (validation loss across ranks): " + "; ".join(
            f"{t}: range {row['range']:.3f} nats, {row['ratio']:.1f}x the noise" for t, row in f["code_rank"].items()) + ".",
        "",
        f"A choice counts as mattering when the range it spans is at least {RATIO_HOLDS:g}x the seed noise "
        f"({RATIO_PARTLY:g}x: partly) and at least {pts(MIN_RANGE)}. Each setting ran at the learning rate chosen for "
        "it (claim 4). Runs that diverged or ended no better than the untuned base model on the validation split are left "
        "out of the means and "
        "ranges (a training failure says nothing of what a rank or a target set can reach): "
        + ("; ".join(f["failed"]) if f["failed"] else "none") + ".",
    ]
    return {"figure": f"rank range {pts(by_rank[widest]['range'])} ({widest}), target range {pts(by_target['range'])} "
                      f"at r={TARGET_RANK}", "body": "\n".join(body), "plots": plots}
