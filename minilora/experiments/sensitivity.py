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

from minilora.experiments import finetune as ft
from minilora.experiments.common import FAILS, PARTLY, ClaimResult, combine, judge

ALPHAS = (4, 8, 32, 64)  # at r = 8 (the default alpha is 2 r = 16, from claim 4's grid)
ALPHA_RANK = 8
RSLORA_RANKS = (1, 64)
RSLORA_ALPHA = ft.ALPHA_PER_RANK * math.sqrt(ALPHA_RANK)  # rsLoRA scaling alpha / sqrt(8) = 2 at r = 8, as the default
TARGET_RANK = 8  # target sets are compared at this rank
EXTRA_SEEDS = (0,)  # the alpha and rsLoRA runs: one seed each (the budget); the grid's seeds give the noise


def extra_specs(quick: bool) -> list:
    """The alpha and rsLoRA runs (classification, Wq+Wv); quick mode: one alpha, one rsLoRA run."""
    common = ft.sizes(quick).common("cls")
    alphas = ALPHAS[-1:] if quick else ALPHAS
    ranks = RSLORA_RANKS[-1:] if quick else RSLORA_RANKS
    seeds = EXTRA_SEEDS
    specs = [ft.RunSpec("cls", "lora", "Wq+Wv", ALPHA_RANK, alpha=a, seed=seed, **common) for a in alphas for seed in seeds]
    specs += [ft.RunSpec("cls", "lora", "Wq+Wv", r, alpha=RSLORA_ALPHA, use_rslora=True, seed=seed, **common)
              for r in ranks for seed in seeds]
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


def judge_sensitivity(rank_ratio: float, rank_range: float, target_ratio: float, target_range: float) -> tuple:
    """With one seed there is no noise estimate (ratio inf): a range above MIN_RANGE then counts as "partly" only."""
    def part(ratio, value_range):
        if value_range < MIN_RANGE:
            return FAILS
        if ratio == float("inf"):
            return PARTLY
        return judge(ratio, RATIO_HOLDS, RATIO_PARTLY)

    parts = {"rank": part(rank_ratio, rank_range), "target matrices": part(target_ratio, target_range)}
    return combine(*parts.values()), parts


def plot_sweeps(alpha: dict, rslora: dict, path: str) -> None:
    """Accuracy against alpha (r = 8) and against rank with and without rsLoRA."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(ctx) -> ClaimResult:
    s = ft.sizes(ctx.quick)
    grid = ft.runs_for(ctx, ft.grid(ctx.quick))
    extras = ft.runs_for(ctx, extra_specs(ctx.quick))
    summary = ft.summarize(grid + extras, baseline=ft.shared_base_figures(ctx))  # failed runs left out of the ranges
    cls, code = summary["cls"], summary["code"]

    # rank: for each target set, the range of accuracy across ranks; the article's claim uses the widest
    by_rank = {t: spread(cls, [f"{t} r={r}" for r in s.cls_ranks], "accuracy") for t in s.cls_targets}
    widest = max(by_rank, key=lambda t: by_rank[t]["range"])
    by_target = spread(cls, [f"{t} r={TARGET_RANK}" for t in s.cls_targets + ("c_attn",)], "accuracy")
    code_rank = {t: spread(code, [f"{t} r={r}" for r in s.code_ranks], "loss") for t in s.code_targets}
    alpha = {a: (cls[n]["accuracy_mean"], cls[n]["accuracy_std"])
             for a, n in [(ft.ALPHA_PER_RANK * ALPHA_RANK, f"Wq+Wv r={ALPHA_RANK}")]
             + [(a, f"Wq+Wv r={ALPHA_RANK} alpha={a:g}") for a in ALPHAS] if n in cls}
    alpha_spread = spread(cls, [f"Wq+Wv r={ALPHA_RANK}"] + [f"Wq+Wv r={ALPHA_RANK} alpha={a:g}" for a in ALPHAS], "accuracy")
    rs_name = lambda r: f"Wq+Wv r={r} alpha={RSLORA_ALPHA:g} rslora"
    rslora = {"alpha = 2r (default)": {r: (cls[f"Wq+Wv r={r}"]["accuracy_mean"], cls[f"Wq+Wv r={r}"]["accuracy_std"])
                                        for r in s.cls_ranks if f"Wq+Wv r={r}" in cls},
              f"rsLoRA, alpha = {RSLORA_ALPHA:.2f}": {r: (cls[rs_name(r)]["accuracy_mean"], cls[rs_name(r)]["accuracy_std"])
                                                      for r in RSLORA_RANKS if rs_name(r) in cls}}
    failed = ft.tuning.describe_failures(cls) + ft.tuning.describe_failures(code)
    verdict, parts = judge_sensitivity(by_rank[widest]["ratio"], by_rank[widest]["range"],
                                       by_target["ratio"], by_target["range"])
    plot = "sensitivity.png"
    plot_sweeps(alpha, rslora, ctx.path(plot))

    def pts(x):
        return f"{100 * x:.1f} points"

    quick = ("**Quick-mode figures** (one seed, so no estimate of the seed noise: a range above the minimum "
             "counts as \"partly\" at most; a few dozen steps). ") if ctx.quick else ""
    rank_lines = "; ".join(f"{t}: best r={by_rank[t]['best'].split(' r=')[-1]}, worst r={by_rank[t]['worst'].split(' r=')[-1]}, "
                           f"range {pts(by_rank[t]['range'])}" for t in s.cls_targets)
    body = [
        quick + f"**Rank** (classification accuracy across r in {list(s.cls_ranks)}): {rank_lines}. "
        f"The seed noise (RMS of the seed std) is {pts(by_rank[widest]['noise'])}; the widest range is "
        f"{by_rank[widest]['ratio']:.1f}x the noise ({parts['rank']}).",
        "",
        f"**Target matrices** at r={TARGET_RANK}: " + ", ".join(f"{n.split(' r=')[0]} {v:.3f}" for n, v in by_target["means"].items())
        + f" -- a range of {pts(by_target['range'])}, {by_target['ratio']:.1f}x the noise ({parts['target matrices']}).",
        "",
        f"**Alpha** at r={ALPHA_RANK}: " + ", ".join(f"{a:g}: {v[0]:.3f}" for a, v in sorted(alpha.items()))
        + f" (range {pts(alpha_spread['range'])}). **rsLoRA**: "
        + ", ".join(f"r={r}: {v[0]:.3f} (plain: {rslora['alpha = 2r (default)'].get(r, (float('nan'),))[0]:.3f})"
                    for r, v in sorted(rslora[f'rsLoRA, alpha = {RSLORA_ALPHA:.2f}'].items())) + ".",
        "",
        "**Code** (validation loss across ranks): " + "; ".join(
            f"{t}: range {code_rank[t]['range']:.3f} nats, {code_rank[t]['ratio']:.1f}x the noise" for t in s.code_targets) + ".",
        "",
        f"A choice counts as mattering when the range it spans is at least {RATIO_HOLDS:g}x the seed noise "
        f"({RATIO_PARTLY:g}x: partly) and at least {pts(MIN_RANGE)}. Each setting ran at the learning rate chosen for "
        "it (claim 4). Runs that diverged or ended no better than the untuned base model are left out of the means and "
        "ranges (a training failure says nothing of what a rank or a target set can reach): "
        + ("; ".join(failed) if failed else "none") + ".",
    ]
    return ClaimResult(
        key="sensitivity",
        title="Hyperparameter sensitivity",
        claim="LoRA's results depend on its hyperparameters: the rank and the choice of adapted layers change how well it does",
        measured="classification accuracy across ranks, target sets and alpha; rsLoRA on/off; code loss across ranks",
        figure=f"rank range {pts(by_rank[widest]['range'])} ({widest}), target range {pts(by_target['range'])} at r={TARGET_RANK}",
        verdict=verdict,
        thresholds={"range / noise holds >=": RATIO_HOLDS, "range / noise partly >=": RATIO_PARTLY,
                    "minimum range": MIN_RANGE},
        figures={"rank": by_rank, "target": by_target, "alpha": {str(k): v for k, v in alpha.items()},
                 "alpha_spread": alpha_spread, "rslora": {k: {str(r): v for r, v in d.items()} for k, d in rslora.items()},
                 "code_rank": code_rank, "parts": parts, "failed": failed},
        settings={"alphas": [ft.ALPHA_PER_RANK * ALPHA_RANK, *ALPHAS], "rslora_ranks": list(RSLORA_RANKS),
                  "rslora_alpha": RSLORA_ALPHA, "seeds": list(s.seeds), "extra_seeds": list(EXTRA_SEEDS),
                  "steps": s.cls_steps},
        plots=[plot],
        body="\n".join(body),
    )
