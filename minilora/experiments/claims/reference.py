"""Claim 5: the same fine-tuning in PyTorch + Hugging Face PEFT gives the same results.

minilora's figures in claim 4 are only worth as much as minilora itself. So claim 4's
full fine-tuning and LoRA runs are repeated with the reference libraries
(``base.reference_finetune``):

* the same base model, converted to ``transformers``' model;
* the same initial adapter: minilora's random A (and zero B), copied into PEFT's
  ``lora_A`` / ``lora_B``;
* the same batches, in the same order: the NumPy sampler of ``minilora.train``
  with the same seed;
* the same training loop, written again in torch (``runs.in_torch``): AdamW with the same
  betas, eps, weight decay on matrices only, the warm-up + cosine schedule, gradient clipping
  at 1.0, dropout 0, float32.

LoRA goes where PEFT puts it by default for the model type (``base.PEFT_TARGET``): GPT-2's
fused ``c_attn`` -- PEFT cannot adapt its query and value slices alone -- and BERT's query
and value. The two must agree within the spread between seeds: a difference between the
libraries smaller than the difference between two seeds of one library cannot change any
conclusion of claim 4.

The uncertainty of that ratio is all in its denominator. The difference between the libraries is
measured, not estimated: both are deterministic given the seed (the same batches, no dropout), so the
same runs give the same difference again -- exact for these seeds. The seed spread is a standard
deviation over two or three seeds, which could be several times larger or smaller than the spread of
many seeds; its 95% interval (``core.intervals.spread_factors``: s / sigma for normal seeds, about
[0.16, 1.91] for three) gives the ratio's, and the verdict is read off that.
"""

from __future__ import annotations

import numpy as np

from minilora.experiments.core import HOLDS, combine, compare_verdicts, judge_interval, verdict_range
from minilora.experiments.core.intervals import spread_factors
from minilora.experiments.runs import RunSpec, metric, train

KEY, NUMBER = "reference", 5
TITLE = "The PyTorch reference"
CLAIM = "(minilora's own) the fine-tuning results of claim 4 are those PyTorch + Hugging Face PEFT give"
MEASURED = "the same runs in minilora and in PyTorch + PEFT, against the seed spread"
BASES = ("toy", "minilm")

REFERENCE_RANK = 8
QUICK_SEEDS = (0, 1)  # a spread needs two seeds, even in quick mode
CURVE_WINDOW = 10  # training losses are compared after a moving average over this many steps

# The verdict: every setting's library difference, as a share of its seed spread.
RATIO_HOLDS, RATIO_PARTLY = 1.0, 3.0


def bases(session) -> tuple:
    """The chosen bases, less those whose reference is too slow for quick mode (BERT in torch); the toy's
    reference stands in when none is left."""
    chosen = tuple(b for b in BASES if b in session.bases)
    if session.quick:
        from minilora.experiments.bases import get

        chosen = tuple(b for b in chosen if getattr(get(b), "REFERENCE_IN_QUICK", True))
    return chosen or BASES[:1]


def smooth(losses, window: int = CURVE_WINDOW) -> np.ndarray:
    """Moving average (valid part): single-step losses are too noisy to compare seeds by."""
    losses = np.asarray(losses, dtype=np.float64)
    window = max(1, min(window, len(losses)))
    return np.convolve(losses, np.ones(window) / window, mode="valid")


def agreement(ours: list, theirs: list, key: str) -> dict:
    """How far the libraries are apart, against how far the seeds are apart.

    ``ours`` are minilora's RunResults over every seed; ``theirs`` the reference's dicts for the
    first ``len(theirs)`` of them. ``final_ratio``: the largest per-seed difference of the final
    ``key`` over the std of minilora's finals across seeds; ``curve_ratio``: the largest per-seed
    difference of the smoothed training loss over the mean (across steps) std across seeds of
    minilora's curves. Ratios below 1 mean "agree within the seed spread"."""
    final_diff = [abs(o.final[key] - t["final"][key]) for o, t in zip(ours, theirs)]
    final_spread = float(np.std([o.final[key] for o in ours], ddof=1)) if len(ours) > 1 else 0.0
    curves_ours = np.array([smooth(o.losses) for o in ours])  # (seeds, steps)
    curves_theirs = np.array([smooth(t["losses"]) for t in theirs])
    curve_diff = float(np.abs(curves_ours[:len(theirs)] - curves_theirs).max())
    curve_spread = float(curves_ours.std(axis=0, ddof=1).mean()) if len(ours) > 1 else 0.0
    return {"final_diff": max(final_diff), "final_spread": final_spread,
            "final_ratio": _ratio(max(final_diff), final_spread),
            "curve_diff": curve_diff, "curve_spread": curve_spread,
            "curve_ratio": _ratio(curve_diff, curve_spread),
            "first_step_loss_diff": max(abs(o.losses[0] - t["losses"][0]) for o, t in zip(ours, theirs))}


def _ratio(diff: float, spread: float) -> float:
    """diff / spread; no difference is 0 even when the seeds agree too (e.g. two seeds of equal accuracy)."""
    if diff == 0:
        return 0.0
    return diff / spread if spread > 0 else float("inf")


def reference_specs(base, quick: bool) -> list:
    """``[(setting, [RunSpec per seed])]``: full fine-tuning and LoRA on PEFT's default target at r = 8, on each
    task (quick mode: the first task only), over the grid's seeds (at least two)."""
    grid = base.grid(quick)
    seeds = grid.seeds if len(grid.seeds) >= 2 else QUICK_SEEDS
    out = []
    for task in base.TASKS[:1] if quick else base.TASKS:
        common = grid.common(task)
        out.append((f"{task}: full", [RunSpec(task, "full", seed=seed, **common) for seed in seeds]))
        out.append((f"{task}: LoRA {base.PEFT_TARGET} r={REFERENCE_RANK}",
                    [RunSpec(task, "lora", base.PEFT_TARGET, REFERENCE_RANK, seed=seed, **common) for seed in seeds]))
    return out


def measure(base, session) -> dict:
    import importlib

    settings = {}
    for name, specs in reference_specs(base, session.quick):
        ours = train(session, base, specs)  # at the rates claim 4 chose
        repeated = ours[:getattr(base, "REFERENCE_SEEDS", None) or len(ours)]
        theirs = [base.reference_finetune(o.spec, session) for o in repeated]
        key = metric(specs[0].task)[0]
        settings[name] = {**agreement(ours, theirs, key), "metric": key, "minilora": [o.final for o in repeated],
                          "reference": [t["final"] for t in theirs], "seeds": [o.spec.seed for o in ours],
                          "curves": {"minilora": [o.losses for o in repeated], "reference": [t["losses"] for t in theirs]}}
    versions = {name: importlib.import_module(name).__version__ for name in ("torch", "peft", "transformers")}
    return {"settings": settings, "ratios": {name: max(row["final_ratio"], row["curve_ratio"]) for name, row in settings.items()},
            "versions": versions, "peft_target": base.PEFT_TARGET, "rank": REFERENCE_RANK, "curve_window": CURVE_WINDOW}


def ratio_interval(ratio: float, seeds: int) -> list | None:
    """The 95% interval of a library difference over a seed spread taken from ``seeds`` seeds: the difference is
    exact, the spread's true value lies in [s / high, s / low] (``spread_factors``), so the ratio in
    [ratio * low, ratio * high]; ``None`` for one seed. For the loss curves' spread, a mean over steps of the
    per-step spread, the one-spread interval is wider than it needs to be: an average varies less than one."""
    factors = spread_factors(seeds)
    if factors is None:
        return None
    return [0.0, 0.0] if ratio == 0 else [ratio * factors[0], ratio * factors[1]]


def verdict(figures: dict) -> dict:
    """Every setting's worst of its final and curve ratios, read off its 95% interval (the seed spread's
    uncertainty; the library difference is exact), combined."""
    intervals = {name: ratio_interval(ratio, len(figures["settings"][name]["seeds"])) for name, ratio in figures["ratios"].items()}
    parts = {name: judge_interval(ci, RATIO_HOLDS, RATIO_PARTLY, higher_is_better=False) for name, ci in intervals.items()}
    return {"verdict": combine(*parts.values()), "parts": parts, "intervals": intervals,
            "exact": "the library differences (deterministic given the seeds); the interval is the seed spread's",
            "thresholds": {"ratio holds <=": RATIO_HOLDS, "ratio partly <=": RATIO_PARTLY,
                           "ratio": "max(final-figure diff / seed std, loss-curve diff / seed std of curves), per setting, "
                                    "its 95% interval (the seed std's, from the number of seeds)"}}


def plot_overlay(curves: dict, ax_row) -> None:
    """minilora's smoothed training losses (solid) and the reference's (dashed), per setting and seed:
    ``curves`` is ``{setting: {"minilora": [losses per seed], "reference": [...], "seeds": [...]}}``."""
    for ax, (name, c) in zip(ax_row, curves.items()):
        for i, (o, t) in enumerate(zip(c["minilora"], c["reference"])):
            color = f"C{i}"
            ax.plot(smooth(o), color=color, lw=1.5, label=f"minilora, seed {c['seeds'][i]}")
            ax.plot(smooth(t), color=color, lw=1.5, ls="--", label=f"PyTorch + PEFT, seed {c['seeds'][i]}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(f"training loss ({CURVE_WINDOW}-step average)")
        ax.legend(fontsize=7)


def plot_ratios(ratios: dict, intervals: dict, ax=None):
    """Each setting's library difference / seed spread (a point) with its 95% interval (a bar), on a log scale,
    beside the thresholds. A ratio of 0 (no difference at all) is drawn at the axis' left end."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 0.5 + 0.45 * len(ratios)))[1]
    positive = [v for name in ratios for v in [ratios[name], *(intervals[name] or [])] if 0 < v < float("inf")]
    floor = min(positive + [RATIO_HOLDS]) / 10
    for y, (name, ratio) in enumerate(ratios.items()):
        ci = intervals[name]
        if ci is not None:
            ax.plot([max(ci[0], floor), max(ci[1], floor)], [y, y], "|-", color="tab:blue", ms=10,
                    label="95% interval" if y == 0 else None)
        ax.plot([max(ratio, floor)], [y], "o", color="tab:blue", label="library diff / seed spread" if y == 0 else None)
    for x, style, name in ((RATIO_HOLDS, "--", "holds"), (RATIO_PARTLY, ":", "partly")):
        ax.axvline(x, color="k", ls=style, lw=1, label=f"{name} {x:g}")
    ax.set_xscale("log")
    ax.set_yticks(range(len(ratios)), list(ratios), fontsize=8)
    ax.set_xlabel("library difference / spread between seeds (log scale)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def render(figures: dict, verdict: dict, plot, quick: bool) -> dict:
    import matplotlib.pyplot as plt

    rows, ratios, parts = figures["settings"], figures["ratios"], verdict["parts"]
    fig, axes = plt.subplots(1, len(rows), figsize=(5.2 * len(rows), 3.8), squeeze=False)
    plot_overlay({name: {**row["curves"], "seeds": row["seeds"]} for name, row in rows.items()}, axes[0])
    fig.tight_layout()
    plots = [plot(fig, "reference_overlay.png")]
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.45 * len(rows)))
    plot_ratios(ratios, verdict["intervals"], ax)
    fig.tight_layout()
    plots.append(plot(fig, "reference_ratios.png"))
    worst = max(ratios, key=ratios.get)
    seeds = next(iter(rows.values()))["seeds"]
    repeated = len(next(iter(rows.values()))["reference"])
    disagree = [k for k, v in parts.items() if verdict_range(v)[1] != HOLDS]  # not even possibly within the spread
    undecided = [k for k, v in parts.items() if v != HOLDS and k not in disagree]
    v = figures["versions"]
    lines = [f"| {name} | {row['metric']} | {row['final_diff']:.1e} | {row['final_spread']:.3f} | "
             f"{row['curve_diff']:.1e} | {row['curve_spread']:.3f} | {row['first_step_loss_diff']:.1e} | "
             f"{ratios[name]:.1e}{_bracket(verdict['intervals'][name])} |" for name, row in rows.items()]
    body = [
        ("**Quick-mode figures** (classification only, 2 seeds, a few dozen steps). " if quick else "")
        + f"minilora and PyTorch {v['torch']} + PEFT {v['peft']} (transformers {v['transformers']}) "
        f"ran the same fine-tuning from the same base weights, initial adapter and batches (seeds {seeds[:repeated]}"
        + (f"; the seed spread is minilora's over seeds {seeds}" if repeated < len(seeds) else "") + "). "
        f"LoRA sits where PEFT puts it by default ({figures['peft_target']}, r={figures['rank']}"
        + ("; PEFT cannot adapt only the q and v slices of GPT-2's fused c_attn, and claim 4 runs this setting too"
           if figures["peft_target"] == "c_attn" else "") + "), beside full fine-tuning. "
        + ("They agree within the seed spread in every setting: the library difference is at most "
           f"{ratios[worst]:.1e} of the spread between seeds ({worst}; 95% interval{_bracket(verdict['intervals'][worst])})."
           if not disagree and not undecided else
           f"They do **not** agree within the seed spread in: {', '.join(disagree)} (worst ratio {ratios[worst]:.2f}, {worst}); "
           "see the table for the sizes of the differences." if disagree else
           f"Whether they agree within the seed spread is not decided in: {', '.join(undecided)} (worst ratio "
           f"{ratios[worst]:.2f}, 95% interval{_bracket(verdict['intervals'][worst])}, {worst})."),
        "",
        "The library differences are exact: both libraries are deterministic given the seed, so the same runs give the "
        "same differences. The seed spread is estimated from "
        f"{len(seeds)} seeds, and could be several times larger or smaller than many seeds' would be: each ratio's 95% "
        "interval is the spread's (its sampling distribution for normal seed-to-seed variation, `core.intervals."
        "spread_factors`), and the verdict is read off it.",
        "",
        "| setting | final figure | library diff (exact) | seed std | loss-curve diff (exact) | seed std of curve | "
        "step-0 loss diff | ratio (95% interval) |",
        "|---|---|---|---|---|---|---|---|",
        *lines,
        "",
        "The step-0 loss difference (float32 rounding) shows the two start from the same model; later differences "
        "grow from rounding alone, since every batch and hyperparameter is shared. Curves are "
        f"{figures['curve_window']}-step moving averages of the training loss.",
    ]
    return {"figure": f"library diff <= {ratios[worst]:.1e} x seed spread{_bracket(verdict['intervals'][worst])}",
            "body": "\n".join(body), "plots": plots}


def _bracket(interval) -> str:
    """A ratio's interval in a table cell or the figure line, in the ratios' own notation (they span decades)."""
    return "" if interval is None else f" [{interval[0]:.1e}, {interval[1]:.1e}]"


def render_comparison(claim: dict) -> str:
    return compare_verdicts(claim) + (
        " On both bases the two libraries start from the same weights and draw the same batches; what differs is "
        "float32 rounding, which grows with the model (a MiniLM layer sums over 384 and 1,536 inputs where the toy's "
        "sum over 128 and 512) and through training.")
