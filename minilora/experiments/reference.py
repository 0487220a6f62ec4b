"""Claim 5: the same fine-tuning in PyTorch + Hugging Face PEFT gives the same results.

minilora's figures in claim 4 are only worth as much as minilora itself. So claim 4's
full fine-tuning and LoRA runs are repeated with the reference libraries:

* the same base model, converted to ``transformers``' ``GPT2LMHeadModel`` (``to_transformers``);
* the same initial adapter: minilora's random A (and zero B), copied into PEFT's
  ``lora_A`` / ``lora_B``;
* the same batches, in the same order: the NumPy sampler of ``minilora.train``
  with the same seed;
* the same training loop, written again in torch: AdamW with the same betas, eps,
  weight decay on matrices only (ndim >= 2), the warm-up + cosine schedule
  (``minilora.optim.warmup_cosine_lr`` through ``LambdaLR``), gradient clipping at
  1.0, dropout 0, float32; the loss is cross-entropy over the already shifted
  targets with ``ignore_index=-100`` (not HF's ``labels=``, which would shift again).

PEFT cannot adapt the query and value slices of GPT-2's fused ``c_attn`` alone
(the LoRA paper's Wq+Wv): its adapter on ``c_attn`` is one rank-r pair for q, k
and v together. The reference therefore uses that setting -- LoRA on ``c_attn``,
PEFT's default for GPT-2 -- which claim 4 also runs, plus full fine-tuning.

The two must agree within the spread between seeds: a difference between the
libraries smaller than the difference between two seeds of one library cannot
change any conclusion of claim 4.
"""

from __future__ import annotations

import numpy as np

from minilora.experiments import finetune as ft
from minilora.experiments.common import ClaimResult, combine, judge
from minilora.optim import warmup_cosine_lr

REFERENCE_RANK = 8
TASKS = {True: ("cls",), False: ("cls", "code")}  # quick mode: classification only
QUICK_SEEDS = (0, 1)  # a spread needs two seeds, even in quick mode
CURVE_WINDOW = 10  # training losses are compared after a moving average over this many steps


# ---------------------------------------------------------------------------
# the reference run
# ---------------------------------------------------------------------------


def torch_model(spec: ft.RunSpec, base):
    """``base`` as a ``transformers`` GPT-2, with PEFT's LoRA carrying minilora's initial adapter (for a LoRA spec)."""
    import torch
    from minilora.models.hf import to_transformers

    hf = to_transformers(base).train()  # dropout is 0 in the base config: train mode changes nothing
    if spec.method == "full":
        return hf
    if spec.target != "c_attn":
        raise ValueError(f"PEFT cannot express LoRA target {spec.target!r} exactly; the reference uses 'c_attn'")
    import peft

    config = peft.LoraConfig(r=spec.r, lora_alpha=spec.lora_alpha, use_rslora=spec.use_rslora, lora_dropout=0.0,
                             target_modules=["c_attn"], fan_in_fan_out=True)  # GPT-2's Conv1D stores W as (in, out)
    model = peft.get_peft_model(hf, config).to(hf.dtype)
    init = ft.trained_state(ft.fresh_model(spec, base))  # minilora's adapter before training, PEFT's keys
    result = peft.set_peft_model_state_dict(model, {k: torch.from_numpy(v) for k, v in init.items()})
    missing_lora = [k for k in result.missing_keys if "lora_" in k]
    if missing_lora or result.unexpected_keys:
        raise RuntimeError(f"copying minilora's adapter into PEFT failed: missing {missing_lora[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model


def torch_finetune(spec: ft.RunSpec, base, data) -> dict:
    """minilora.train.train's loop, in torch. Returns {"losses": [...], "final": {"loss", "accuracy"}}."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(spec.seed)
    model = torch_model(spec, base)

    def loss_of(x, y):  # tensor() copies (the task's arrays are read-only)
        logits = model(input_ids=torch.tensor(x)).logits  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), torch.tensor(y).flatten(), ignore_index=-100)

    losses = torch_train(model, spec.train_config(), data.batches, loss_of)
    model.eval()
    with torch.no_grad():
        x_eval = torch.tensor(data.x_eval)
        logits = torch.cat([model(input_ids=x_eval[i:i + 64]).logits for i in range(0, len(x_eval), 64)])
    return {"losses": losses, "final": data.score(logits.numpy())}


def torch_train(model, config, batches, loss_of) -> list:
    """``minilora.train.train``'s loop in torch, on ``model``'s trainable parameters: AdamW with weight decay
    on matrices only, warm-up + cosine (``LambdaLR``), clipping, the batches of ``batches(rng)`` in the order
    of the same seed; ``loss_of(x, y)`` is the batch's loss tensor. Returns the training losses."""
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas, eps=1e-8)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine_lr(
        step, 1.0, config.warmup_steps, config.max_steps, config.min_lr_ratio))
    rng = np.random.default_rng(config.seed)  # the batch order of minilora.train.train
    losses = []
    for _ in range(config.max_steps):
        loss = loss_of(*batches(rng))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------
# agreement
# ---------------------------------------------------------------------------


def smooth(losses, window: int = CURVE_WINDOW) -> np.ndarray:
    """Moving average (valid part): single-step losses are too noisy to compare seeds by."""
    losses = np.asarray(losses, dtype=np.float64)
    window = max(1, min(window, len(losses)))
    return np.convolve(losses, np.ones(window) / window, mode="valid")


def agreement(ours: list, theirs: list, key: str) -> dict:
    """How far the libraries are apart, against how far the seeds are apart.

    ``ours`` are minilora's RunResults, ``theirs`` the reference's dicts, seed by seed.
    ``final_ratio``: the largest per-seed difference of the final ``key`` over the std of
    minilora's finals across seeds; ``curve_ratio``: the largest per-seed difference of the
    smoothed training loss over the mean (across steps) std across seeds of those curves.
    Ratios below 1 mean "agree within the seed spread".
    """
    final_diff = [abs(o.final[key] - t["final"][key]) for o, t in zip(ours, theirs)]
    final_spread = float(np.std([o.final[key] for o in ours], ddof=1))
    curves_ours = np.array([smooth(o.losses) for o in ours])  # (seeds, steps)
    curves_theirs = np.array([smooth(t["losses"]) for t in theirs])
    curve_diff = float(np.abs(curves_ours - curves_theirs).max())
    curve_spread = float(curves_ours.std(axis=0, ddof=1).mean())
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


# The verdict: every setting's library difference, as a share of its seed spread.
RATIO_HOLDS, RATIO_PARTLY = 1.0, 3.0


def judge_reference(ratios: dict) -> tuple:
    """(verdict, parts) from ``{setting: worst of its final and curve ratios}``."""
    parts = {name: judge(ratio, RATIO_HOLDS, RATIO_PARTLY, higher_is_better=False) for name, ratio in ratios.items()}
    return combine(*parts.values()), parts


def reference_specs(quick: bool, task: str) -> list:
    s = ft.sizes(quick)
    seeds = s.seeds if len(s.seeds) >= 2 else QUICK_SEEDS
    common = s.common(task)
    full = [ft.RunSpec(task, "full", seed=seed, **common) for seed in seeds]
    lora = [ft.RunSpec(task, "lora", "c_attn", REFERENCE_RANK, seed=seed, **common) for seed in seeds]
    return [("full", full), (f"LoRA c_attn r={REFERENCE_RANK}", lora)]


def plot_overlay(curves: dict, path: str) -> None:
    """minilora's smoothed training losses (solid) and the reference's (dashed), per setting and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 3.8), squeeze=False)
    for ax, (name, (ours, theirs)) in zip(axes[0], curves.items()):
        for i, (o, t) in enumerate(zip(ours, theirs)):
            color = f"C{i}"
            ax.plot(smooth(o.losses), color=color, lw=1.5, label=f"minilora, seed {o.spec.seed}")
            ax.plot(smooth(t["losses"]), color=color, lw=1.5, ls="--", label=f"PyTorch + PEFT, seed {o.spec.seed}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(f"training loss ({CURVE_WINDOW}-step average)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


TITLE = "The PyTorch reference"
CLAIM = "(minilora's own) the fine-tuning results of claim 4 are those PyTorch + Hugging Face PEFT give"


def run(ctx) -> ClaimResult:
    """The reference on the toy base (``run_toy``) and, outside quick mode, on MiniLM (``minilm_claims.reference``)."""
    from minilora.experiments import minilm_claims
    from minilora.experiments.common import over_bases

    toy = run_toy(ctx) if "toy" in ctx.bases else None
    real = minilm_claims.reference(ctx) if "minilm" in ctx.bases and not ctx.quick else None  # no torch overlay in quick mode
    if toy is None and real is None:  # MiniLM alone, quick mode: the toy's reference stands in
        toy = run_toy(ctx)
    return over_bases("reference", TITLE, CLAIM, "the same runs in minilora and in PyTorch + PEFT, against the seed spread",
                      toy, real, minilm_claims.reference_comparison(toy, real) if toy and real else "")


def run_toy(ctx) -> ClaimResult:
    env = ft.environment(ctx)
    windows = ft.sizes(ctx.quick).code_eval_windows
    figures, ratios, curves, lines = {}, {}, {}, []
    for task in TASKS[ctx.quick]:
        key = ft.metric(task)[0]
        for name, specs in reference_specs(ctx.quick, task):
            ours = ft.runs_for(ctx, specs)
            theirs = [torch_finetune(o.spec, env.base, env.data(o.spec, windows)) for o in ours]  # at the chosen rates
            a = agreement(ours, theirs, key)
            setting = f"{task}: {name}"
            figures[setting] = {**a, "metric": key, "minilora": [o.final for o in ours], "reference": [t["final"] for t in theirs]}
            ratios[setting] = max(a["final_ratio"], a["curve_ratio"])
            curves[setting] = (ours, theirs)
            lines.append(f"| {setting} | {key} | {a['final_diff']:.1e} | {a['final_spread']:.3f} | "
                         f"{a['curve_diff']:.1e} | {a['curve_spread']:.3f} | {a['first_step_loss_diff']:.1e} |")
    verdict, parts = judge_reference(ratios)
    plot = "reference_overlay.png"
    plot_overlay(curves, ctx.path(plot))
    worst = max(ratios, key=ratios.get)
    seeds = [o.spec.seed for o in next(iter(curves.values()))[0]]
    disagree = [k for k, v in parts.items() if v != "holds"]
    body = [
        ("**Quick-mode figures** (classification only, 2 seeds, a few dozen steps). " if ctx.quick else "")
        + f"minilora and PyTorch {_version('torch')} + PEFT {_version('peft')} (transformers {_version('transformers')}) "
        f"ran the same fine-tuning from the same base weights, initial adapter and batches (seeds {seeds}). "
        "PEFT cannot adapt only the q and v slices of GPT-2's fused c_attn, so the reference uses LoRA on the whole "
        f"c_attn at r={REFERENCE_RANK} (PEFT's GPT-2 default; claim 4 runs it too) and full fine-tuning. "
        + ("They agree within the seed spread in every setting: the library difference is at most "
           f"{ratios[worst]:.1e} of the spread between seeds ({worst})." if not disagree else
           f"They do **not** agree within the seed spread in: {', '.join(disagree)} (worst ratio {ratios[worst]:.2f}, {worst}); "
           "see the table for the sizes of the differences."),
        "",
        "| setting | final figure | library diff | seed std | loss-curve diff | seed std of curve | step-0 loss diff |",
        "|---|---|---|---|---|---|---|",
        *lines,
        "",
        "The step-0 loss difference (float32 rounding) shows the two start from the same model; later differences "
        "grow from rounding alone, since every batch and hyperparameter is shared. Curves are "
        f"{CURVE_WINDOW}-step moving averages of the training loss.",
    ]
    return ClaimResult(
        key="reference",
        title=TITLE,
        claim=CLAIM,
        measured="the same runs in minilora and in PyTorch + PEFT: final figures and loss curves, against the seed spread",
        figure=f"library diff <= {ratios[worst]:.1e} x seed spread",
        verdict=verdict,
        thresholds={"ratio holds <=": RATIO_HOLDS, "ratio partly <=": RATIO_PARTLY,
                    "ratio": "max(final-figure diff / seed std, loss-curve diff / seed std of curves), per setting"},
        figures={"settings": figures, "ratios": ratios, "parts": parts},
        settings={"tasks": list(TASKS[ctx.quick]), "seeds": seeds, "rank": REFERENCE_RANK,
                  "steps": {t: ft.sizes(ctx.quick).common(t)["steps"] for t in TASKS[ctx.quick]}, "curve_window": CURVE_WINDOW},
        plots=[plot],
        body="\n".join(body),
    )


def _version(name: str) -> str:
    import importlib

    return importlib.import_module(name).__version__
