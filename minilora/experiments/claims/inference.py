"""Claim 7 -- inference overhead: the source article says LoRA costs next to nothing at
inference, since it changes the weights of existing layers instead of adding layers (docs/claims.md).

Two ways to serve a LoRA model:

* **unmerged** -- every adapted layer computes ``W x + (α/r) B (A x)``: two extra thin
  products per layer (and, on GPT-2's fused c_attn with ``enable_lora``, a split and
  a concatenation). Cheap in FLOPs (2 N r (in + out) against 2 N in out), but not free,
  and at batch 1 the extra Python and small-array calls weigh more than the FLOPs;
* **merged** -- ``W' = W + (α/r) B A`` once (``merge_and_unload``): the served model is the
  base model with other numbers in its matrices, so it must cost *exactly* what the
  base model costs, and give the unmerged model's outputs up to float32 rounding.

``merge_check`` compares the logits; the latency of the variants (``base.serving_variants``)
is timed interleaved (``core.time_rounds``: each round runs base, unmerged and merged in a
rotating order, so they share the machine's noise), on forward passes at two batch sizes and
on greedy generation with the KV cache at batch 1. Every round's seconds are kept, and each ratio's 95%
interval comes from resampling whole rounds (``core.intervals.round_ratio_replicates``; docs/claims.md).
"""

from __future__ import annotations

import numpy as np

from minilora.experiments.core import QUICK, combine, judge, judge_interval, time_rounds, worst
from minilora.experiments.core.intervals import error_bars, excess, interval_cell, interval_text, latency_intervals

KEY, NUMBER = "inference", 7
TITLE = "Inference overhead"
CLAIM = ("LoRA adds little or no cost at inference, because it changes the existing weight matrices instead of "
         "putting extra layers into the model.")
MEASURED = "latency of base, LoRA unmerged and merged, interleaved medians"
BASES = ("toy",)

LORA_RANK = 8  # on Wq and Wv, as in the cost claims

# --- the verdict's thresholds -------------------------------------------------------------
# Merged and base are one computation: their latencies may differ only by noise. How much
# noise, the control tells: "base again", a second copy of the base model, timed alongside.
# The merged model's deviation from base *beyond the control's own deviation* within 5% in
# every setting holds; within 15% partly.
MERGED_HOLDS, MERGED_PARTLY = 0.05, 0.15
# Merging must not change the model: the largest difference between merged and unmerged
# logits, relative to the largest logit, within float32 rounding over a few layers of sums.
MERGE_TOLERANCE = 1e-5


def merge_check(variants: dict, x) -> dict:
    """Logits of the variants on token ids ``x``: the largest |merged - unmerged| and
    |unmerged - base|, each relative to the largest |logit| of the unmerged model."""
    from minilora.tensor import no_grad

    with no_grad():
        logits = {name: m(x)[0].numpy().astype(np.float64) for name, m in variants.items()}
    scale = np.abs(logits["unmerged"]).max()
    return {"merged_vs_unmerged": float(np.abs(logits["merged"] - logits["unmerged"]).max() / scale),
            "unmerged_vs_base": float(np.abs(logits["unmerged"] - logits["base"]).max() / scale)}


def latency_tasks(config, batches=(1, 16), gen_tokens: int = 32, prompt_len: int = 16, seed: int = 0) -> dict:
    """``{setting: task(model)}``: a forward pass of ``(batch, block_size)`` tokens for each batch size, and
    (if ``gen_tokens``) greedy generation of ``gen_tokens`` tokens after a ``prompt_len``-token prompt at
    batch 1, with the KV cache."""
    rng = np.random.default_rng(seed)
    tasks = {}
    for b in batches:
        x = rng.integers(0, config.vocab_size, (b, config.block_size))
        tasks[f"forward B={b}"] = lambda m, x=x: m(x)
    if gen_tokens:
        prompt = rng.integers(0, config.vocab_size, (1, prompt_len))
        tasks[f"generate {gen_tokens} tokens B=1"] = lambda m: m.generate(prompt, gen_tokens, temperature=0)
    return tasks


def measure(base, session, models=None, batches=None, repeats: int | None = None, gen_tokens: int | None = None) -> dict:
    """``models``: {name: minilora GPT} to measure (default: ``base.timed_models``: the base model; in the
    full run also the 768-wide model). The first model is timed in every setting, the others at the
    first batch size only: a forward of 16 x 128 tokens through 14M parameters takes seconds, and four
    variants x many rounds would take minutes."""
    repeats = repeats or (15 if session.quick else 31)
    batches = batches or ((1, 4) if session.quick else (1, 16))
    gen_tokens = gen_tokens if gen_tokens is not None else (16 if session.quick else 32)
    weights_note = "given"
    if models is None:
        models, weights_note = base.timed_models(session.quick)
    latency, checks = {}, {}
    for name, model in models.items():
        variants = base.serving_variants(model)
        x = np.random.default_rng(session.seed).integers(0, model.config.vocab_size, (2, model.config.block_size))
        checks[name] = merge_check(variants, x)
        first = name == next(iter(models))
        prompt_len = max(1, min(16, model.config.block_size - gen_tokens))
        tasks = latency_tasks(model.config, batches if first else batches[:1], gen_tokens if first else 0, prompt_len, session.seed)
        latency[name] = time_rounds(variants, tasks, repeats)
        del variants
    unmerged = [s["unmerged/base"] for r in latency.values() for s in r.values()]
    return {"merge_error": max(c["merged_vs_unmerged"] for c in checks.values()), "checks": checks, "latency": latency,
            "unmerged_overhead": {"min": min(unmerged) - 1, "max": max(unmerged) - 1},
            "settings": {"models": {name: vars(m.config) for name, m in models.items()}, "weights": weights_note,
                         "batches": list(batches), "sequence": "block_size tokens", "repeats": repeats, "gen_tokens": gen_tokens,
                         "generation": f"{gen_tokens} new tokens after 16, greedy, KV cache, batch 1 (first model only)",
                         "other models": "forward at the first batch size only",
                         "lora": f"r={LORA_RANK} on Wq, Wv (enable_lora), A as initialised, B ~ N(0, 0.02)", "blas_threads": 1}}


def verdict(figures: dict) -> dict:
    """Merged vs base, per setting: |merged/base - 1| beyond the control's |base again/base - 1|
    (the noise of that setting's measurement), judged on its 95% interval (rounds resampled), the worst
    verdict over the settings; and the merge check (exact: one deterministic computation)."""
    intervals, settings = {}, {}
    for model, res in figures["latency"].items():
        intervals[model] = {name: latency_intervals(s, f"{NUMBER} ({KEY})", f"{model} model, {name}") for name, s in res.items()}
        settings.update({(model, name): s for name, s in res.items()})
    points = {key: float(excess(s["merged/base"], s["base again/base"])) for key, s in settings.items()}
    judged = {key: judge_interval(intervals[key[0]][key[1]]["excess"], MERGED_HOLDS, MERGED_PARTLY, higher_is_better=False)
              for key in settings}
    worst_key = max(points, key=points.get)
    parts = {"latency": worst(*judged.values()),
             "equal outputs": judge(figures["merge_error"], MERGE_TOLERANCE, 10 * MERGE_TOLERANCE, higher_is_better=False)}
    return {"verdict": combine(*parts.values()), "parts": parts, "intervals": intervals,
            "settings_judged": {f"{model}: {name}": v for (model, name), v in judged.items()},
            "worst_merged_excess": points[worst_key], "worst_setting": list(worst_key),
            "worst_merged_excess_interval": intervals[worst_key[0]][worst_key[1]]["excess"], "merge_error": "exact",
            "worst_merged_deviation": max(abs(s["merged/base"] - 1) for s in settings.values()),
            "worst_control_deviation": max(abs(s["base again/base"] - 1) for s in settings.values()),
            "thresholds": {"|merged/base - 1| beyond |base again/base - 1|, its 95% interval, worst setting, holds <=": MERGED_HOLDS,
                           "... partly <=": MERGED_PARTLY, "merged vs unmerged logits (relative, exact), holds <=": MERGE_TOLERANCE}}


def plot_latency(results: dict, ax=None, title: str = "", intervals: dict | None = None):
    """Latency of each variant relative to the base model, per setting (bars), with the ±5% band; each bar with
    its 95% interval where ``intervals`` (``{setting: latency_intervals(...)}``) gives them."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4.5))[1]
    settings = list(results)
    width = 0.27
    for j, (name, color, label) in enumerate((("base again", "tab:gray", "base again / base (noise)"),
                                              ("unmerged", "tab:red", "LoRA unmerged / base"),
                                              ("merged", "tab:green", "LoRA merged / base"))):
        values = [results[s][f"{name}/base"] for s in settings]
        yerr = error_bars(values, [(intervals or {}).get(s, {}).get(f"{name}/base") for s in settings])
        bars = ax.bar(np.arange(len(settings)) + (j - 1) * width, values, width, color=color, label=label, yerr=yerr, capsize=3)
        for bar, value, up in zip(bars, values, yerr[1]):  # above the interval's bar
            ax.text(bar.get_x() + bar.get_width() / 2, value + up, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
    ax.axhline(1.0, color="k", lw=1)
    ax.axhspan(1 - MERGED_HOLDS, 1 + MERGED_HOLDS, color="tab:green", alpha=0.12, label="±5%")
    ax.set_xticks(range(len(settings)), [f"{s}\nbase {1000 * results[s]['base']:.1f} ms" for s in settings], fontsize=8)
    ax.set_ylabel("latency relative to the base model")
    tops = [results[s]["unmerged/base"] for s in settings] + [i[1] for s in settings for i in (intervals or {}).get(s, {}).values() if i]
    ax.set_ylim(0, max(1.3, max(tops) * 1.15))
    ax.set_title(title or "Inference latency (medians, interleaved" + ("; bars: 95% intervals)" if intervals else ")"))
    ax.legend(fontsize=8, loc="lower right")
    return ax


def render(figures: dict, verdict: dict, plot, quick: bool) -> dict:
    import matplotlib.pyplot as plt

    results, s = figures["latency"], figures["settings"]
    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 4.8), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        plot_latency(res, ax, f"Inference latency, {name} model (r={LORA_RANK} on Wq, Wv; bars: 95% intervals)", verdict["intervals"][name])
    fig.tight_layout()
    plots = [plot(fig, "inference.png")]

    lines = []
    for name, res in results.items():
        for setting, t in res.items():
            ci = verdict["intervals"][name][setting]
            lines.append(f"| {name} | {setting} | {1000 * t['base']:.2f} | {1000 * t['unmerged']:.2f} | {1000 * t['merged']:.2f} | "
                         + " | ".join(f"{t[k]:.2f}x{interval_cell(ci[k])}" for k in ("base again/base", "unmerged/base", "merged/base"))
                         + f" | {100 * float(excess(t['merged/base'], t['base again/base'])):.1f}%{interval_cell(ci['excess'], 100, 1)} "
                         f"({QUICK if quick else verdict['settings_judged'][f'{name}: {setting}']}) |")
    over = figures["unmerged_overhead"]
    body = "\n".join([
        f"Median latency over {s['repeats']} interleaved rounds (ms; the ratios are medians of each round's own ratio), LoRA "
        f"r = {LORA_RANK} on Wq, Wv with a small random update (B ~ N(0, 0.02), as after fine-tuning); clock: "
        f"{next(iter(next(iter(results.values())).values()))['clock']}; base model: {s['weights']}. In brackets, each "
        "ratio's 95% interval, whole rounds resampled (a round's variants ran moments apart); the judged figure is the "
        "last column, merged/base's deviation from 1 beyond the control's, judged in each setting on its interval, "
        "the worst setting deciding.",
        "",
        "| model | setting | base | LoRA unmerged | LoRA merged | base again/base (noise) | unmerged/base | merged/base | "
        "merged beyond the noise (judged) |",
        "|---|---|---|---|---|---|---|---|---|",
        *lines,
        "",
        f"**Merged:** the served model is the base model with W + (α/r) B A in place of W -- the same computation. Its "
        f"latency is within {100 * verdict['worst_merged_deviation']:.1f}% of the base model's in every setting, where a "
        f"second copy of the base model itself strays by up to {100 * verdict['worst_control_deviation']:.1f}% (the "
        f"noise of this machine); beyond that noise, by at most {100 * verdict['worst_merged_excess']:.1f}%"
        f"{interval_text(verdict['worst_merged_excess_interval'], 100, '%')} ({', '.join(verdict['worst_setting'])}; "
        f"{verdict['parts']['latency']}), and its logits equal the unmerged model's to {figures['merge_error']:.1e} of the largest "
        f"logit (exact: one deterministic float32 computation; tolerance {MERGE_TOLERANCE:.0e}: "
        f"{verdict['parts']['equal outputs']}), while the adapter moved them "
        f"by {max(c['unmerged_vs_base'] for c in figures['checks'].values()):.1e}.",
        "",
        f"**Unmerged:** serving the adapter beside W costs {100 * over['min']:+.0f}% to {100 * over['max']:+.0f}% "
        "in these settings: the adapter's products are thin, but each adapted layer adds several small operations (and, "
        "on the fused c_attn, a split and a concatenation with a zero block for Wk), which weigh most at batch 1 and in "
        "token-by-token generation. So the claim holds for a merged adapter -- which is also the article's reason -- and "
        "only partly for one kept separate (as when several adapters are served from one base model).",
    ])
    return {"figure": f"merged/base within {100 * verdict['worst_merged_deviation']:.0f}% (noise "
                      f"{100 * verdict['worst_control_deviation']:.0f}%), beyond the noise {100 * verdict['worst_merged_excess']:.0f}%"
                      f"{interval_cell(verdict['worst_merged_excess_interval'], 100, 0)}; unmerged {100 * over['min']:+.0f}% to "
                      f"{100 * over['max']:+.0f}%",
            "measured": f"latency of base, LoRA unmerged and merged (forward at batch {' and '.join(map(str, s['batches']))}"
                        + (", KV-cache generation" if s["gen_tokens"] else "") + "), interleaved medians",
            "body": body, "plots": plots}
