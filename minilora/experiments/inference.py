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

``merge_check`` compares the logits; ``measure_latency`` times the three variants
interleaved (each round runs base, unmerged and merged in a rotating order, so they
share the machine's noise), on forward passes at two batch sizes and on greedy
generation with the KV cache at batch 1.
"""

from __future__ import annotations

import copy

import numpy as np

from minilora.experiments.common import ClaimResult, Context, combine, judge
from minilora.experiments.timing import blas_threads, clock, no_gc
from minilora.models import GPTConfig

LORA_RANK = 8  # on Wq and Wv, as in memory.py and speed.py
VARIANTS = ("base", "base again", "unmerged", "merged")

# --- the verdict's thresholds -------------------------------------------------------------
# Merged and base are one computation: their latencies may differ only by noise. How much
# noise, the control tells: "base again", a second copy of the base model, timed alongside.
# The merged model's deviation from base *beyond the control's own deviation* within 5% in
# every setting holds; within 15% partly.
MERGED_HOLDS, MERGED_PARTLY = 0.05, 0.15
# Merging must not change the model: the largest difference between merged and unmerged
# logits, relative to the largest logit, within float32 rounding over a few layers of sums.
MERGE_TOLERANCE = 1e-5


def build_variants(model=None, config: GPTConfig | None = None, r: int = LORA_RANK, b_std: float = 0.02,
                   seed: int = 0) -> dict:
    """The models to compare, in eval mode: ``base`` (a copy of the given model, or a GPT of
    ``config``), ``base again`` (another copy: the control, whose latency differs from base's
    by noise alone), ``unmerged`` (a copy with rank-r adapters on Wq and Wv) and ``merged``
    (that adapter folded into W: ``merge_and_unload``).

    The adapter is made non-zero, as after fine-tuning: A keeps its initialisation and B is
    drawn from N(0, ``b_std``), so that the update is small beside W. (A large random update
    would change the size of every activation, and NumPy's tanh and exp take different times on
    different values -- we saw 2-5x on one array -- a difference of numbers, not of computation.)
    All are copies, made alike: an original model whose arrays were allocated amid other
    work ran 2-4% slower than its own copy here, which is not what we want to measure either.
    """
    import minilora
    from minilora import backend
    from minilora.experiments.params import lora_config
    from minilora.models import GPT
    from minilora.peft import get_peft_model

    minilora.manual_seed(seed)
    base = copy.deepcopy(model if model is not None else GPT(config))
    unmerged = get_peft_model(copy.deepcopy(base), lora_config("qv", r))
    rng = np.random.default_rng(seed)
    for _, layer in unmerged.base_model.lora_layers():
        B = layer.lora_B[unmerged.active_adapter].weight
        B.data = backend.xp.asarray((rng.standard_normal(B.shape) * b_std).astype(B.dtype))  # drawn on the host, copied once
    merged = copy.deepcopy(unmerged).merge_and_unload()
    models = {"base": base, "base again": copy.deepcopy(base), "unmerged": unmerged, "merged": merged}
    return {name: m.eval() for name, m in models.items()}


def merge_check(variants: dict, x) -> dict:
    """Logits of the variants on token ids ``x``: the largest |merged - unmerged| and
    |unmerged - base|, each relative to the largest |logit| of the unmerged model."""
    from minilora.tensor import no_grad

    with no_grad():
        logits = {name: m(x)[0].numpy().astype(np.float64) for name, m in variants.items()}
    scale = np.abs(logits["unmerged"]).max()
    return {"merged_vs_unmerged": float(np.abs(logits["merged"] - logits["unmerged"]).max() / scale),
            "unmerged_vs_base": float(np.abs(logits["unmerged"] - logits["base"]).max() / scale)}


def measure_latency(variants: dict, batches=(1, 16), repeats: int = 10, gen_tokens: int = 32, prompt_len: int = 16,
                    seed: int = 0, threads: int | None = 1) -> dict:
    """Median seconds of each variant on: a forward pass of ``(batch, block_size)`` tokens for each
    batch size, and (if ``gen_tokens``) greedy generation of ``gen_tokens`` tokens after a
    ``prompt_len``-token prompt at batch 1, with the KV cache. One untimed warm-up of each first.
    Returns ``{setting: {variant: median seconds, ...}, ...}`` with ``<variant>/base`` for every
    other variant in each setting: the median over rounds of that round's ratio.
    BLAS runs on ``threads`` threads, and with one thread the clock is the process's CPU time
    (see ``minilora.experiments.timing``)."""
    from minilora.tensor import no_grad

    config = variants["base"].config
    rng = np.random.default_rng(seed)
    tasks = {}
    for b in batches:
        x = rng.integers(0, config.vocab_size, (b, config.block_size))
        tasks[f"forward B={b}"] = lambda m, x=x: m(x)
    if gen_tokens:
        prompt = rng.integers(0, config.vocab_size, (1, prompt_len))
        tasks[f"generate {gen_tokens} tokens B=1"] = lambda m: m.generate(prompt, gen_tokens, temperature=0)
    names = list(variants)
    out = {}
    with no_grad(), blas_threads(threads) as how, no_gc():
        now, clock_name = clock(how, threads)
        for setting, task in tasks.items():
            for name in names:  # warm-up: caches (masks), first-touch allocations
                task(variants[name])
            times = {name: [] for name in names}
            for i in range(repeats):
                for name in names[i % len(names):] + names[: i % len(names)]:  # rotate the order each round
                    t0 = now()
                    task(variants[name])
                    times[name].append(now() - t0)
            medians = {name: float(np.median(t)) for name, t in times.items()}
            # the ratios: medians of each round's own ratio -- a round's variants ran moments apart,
            # so a slow spell of the machine slows them all and cancels out of the ratio
            paired = {f"{name}/base": float(np.median(np.divide(times[name], times["base"]))) for name in names if name != "base"}
            out[setting] = {**medians, **paired, "repeats": repeats, "clock": clock_name}
    return out


def judge_inference(merged_ratios, control_ratios, merge_error: float) -> dict:
    """Merged vs base, per setting: |merged/base - 1| beyond the control's |base again/base - 1|
    (the noise of that setting's measurement), the worst over the settings; and the merge check."""
    excess = [max(0.0, abs(m - 1) - abs(c - 1)) for m, c in zip(merged_ratios, control_ratios)]
    worst = max(excess)
    parts = {"latency": judge(worst, MERGED_HOLDS, MERGED_PARTLY, higher_is_better=False),
             "equal outputs": judge(merge_error, MERGE_TOLERANCE, 10 * MERGE_TOLERANCE, higher_is_better=False)}
    return {"worst_merged_excess": worst, "worst_merged_deviation": max(abs(m - 1) for m in merged_ratios),
            "worst_control_deviation": max(abs(c - 1) for c in control_ratios), "parts": parts,
            "verdict": combine(*parts.values())}


def plot_latency(results: dict, ax=None, title: str = ""):
    """Latency of each variant relative to the base model, per setting (bars), with the ±5% band."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4.5))[1]
    settings = list(results)
    width = 0.27
    for j, (name, color, label) in enumerate((("base again", "tab:gray", "base again / base (noise)"),
                                              ("unmerged", "tab:red", "LoRA unmerged / base"),
                                              ("merged", "tab:green", "LoRA merged / base"))):
        values = [results[s][f"{name}/base"] for s in settings]
        bars = ax.bar(np.arange(len(settings)) + (j - 1) * width, values, width, color=color, label=label)
        for bar, value, s in zip(bars, values, settings):
            ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
    ax.axhline(1.0, color="k", lw=1)
    ax.axhspan(1 - MERGED_HOLDS, 1 + MERGED_HOLDS, color="tab:green", alpha=0.12, label="±5%")
    ax.set_xticks(range(len(settings)), [f"{s}\nbase {1000 * results[s]['base']:.1f} ms" for s in settings], fontsize=8)
    ax.set_ylabel("latency relative to the base model")
    ax.set_ylim(0, max(1.3, max(results[s]["unmerged/base"] for s in settings) * 1.15))
    ax.set_title(title or "Inference latency (medians, interleaved)")
    ax.legend(fontsize=8, loc="lower right")
    return ax


# ---------------------------------------------------------------------------
# the claim
# ---------------------------------------------------------------------------

CLAIM = ("LoRA adds little or no cost at inference, because it changes the existing weight matrices instead of "
         "putting extra layers into the model.")


def _base_model():
    """The shipped base model if its checkpoint is there; else the same architecture with random weights."""
    from minilora.models import GPT
    from minilora.pretrain import BASE_CONFIG, load_base

    try:
        return load_base(), "shipped checkpoint"
    except FileNotFoundError:
        import minilora

        minilora.manual_seed(0)
        return GPT(BASE_CONFIG), "random weights (checkpoint not present)"


def timed_models(quick: bool):
    """The models the latency claims time, and where the base model's weights came from: the
    base model, and in the full run also the 768-wide model of memory.py (random weights:
    latency does not depend on them)."""
    import minilora
    from minilora.experiments.memory import WIDE_CONFIG
    from minilora.models import GPT

    base, weights_note = _base_model()
    models = {"base": base}
    if not quick:
        minilora.manual_seed(0)
        models["wide"] = GPT(WIDE_CONFIG)
    return models, weights_note


def run(ctx: Context, models=None, batches=None, repeats: int | None = None, gen_tokens: int | None = None) -> ClaimResult:
    """``models``: {name: minilora GPT} to measure (default: the base model; in the full run also
    the 768-wide model of memory.py)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    repeats = repeats or (15 if ctx.quick else 31)
    batches = batches or ((1, 4) if ctx.quick else (1, 16))
    gen_tokens = gen_tokens if gen_tokens is not None else (16 if ctx.quick else 32)
    weights_note = "given"
    if models is None:
        models, weights_note = timed_models(ctx.quick)
    results, checks = {}, {}
    for name, model in models.items():
        variants = build_variants(model)
        x = np.random.default_rng(ctx.seed).integers(0, model.config.vocab_size, (2, model.config.block_size))
        checks[name] = merge_check(variants, x)
        # the base model in every setting; another (the wide one) at batch 1 only: a forward of 16 x 128
        # tokens through 14M parameters takes seconds, and four variants x many rounds would take minutes
        first = name == next(iter(models))
        prompt_len = max(1, min(16, model.config.block_size - gen_tokens))
        results[name] = measure_latency(variants, batches if first else batches[:1], repeats,
                                        gen_tokens if first else 0, prompt_len, seed=ctx.seed)
        del variants
    merged_ratios = [s["merged/base"] for r in results.values() for s in r.values()]
    control_ratios = [s["base again/base"] for r in results.values() for s in r.values()]
    merge_error = max(c["merged_vs_unmerged"] for c in checks.values())
    verdict = judge_inference(merged_ratios, control_ratios, merge_error)

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 4.8), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        plot_latency(res, ax, f"Inference latency, {name} model (r={LORA_RANK} on Wq, Wv)")
    fig.tight_layout()
    fig.savefig(ctx.path("inference.png"), dpi=110)
    plt.close(fig)

    lines = []
    for name, res in results.items():
        for setting, s in res.items():
            lines.append(f"| {name} | {setting} | {1000 * s['base']:.2f} | {1000 * s['unmerged']:.2f} | {1000 * s['merged']:.2f} | "
                         f"{s['base again/base']:.2f}x | {s['unmerged/base']:.2f}x | {s['merged/base']:.2f}x |")
    unmerged = [s["unmerged/base"] for r in results.values() for s in r.values()]
    body = "\n".join([
        f"Median latency over {repeats} interleaved rounds (ms; the ratios are medians of each round's own ratio), LoRA "
        f"r = {LORA_RANK} on Wq, Wv with a small random update (B ~ N(0, 0.02), as after fine-tuning); clock: "
        f"{next(iter(next(iter(results.values())).values()))['clock']}; base model: {weights_note}.",
        "",
        "| model | setting | base | LoRA unmerged | LoRA merged | base again/base (noise) | unmerged/base | merged/base |",
        "|---|---|---|---|---|---|---|---|",
        *lines,
        "",
        f"**Merged:** the served model is the base model with W + (α/r) B A in place of W -- the same computation. Its "
        f"latency is within {100 * verdict['worst_merged_deviation']:.1f}% of the base model's in every setting, where a "
        f"second copy of the base model itself strays by up to {100 * verdict['worst_control_deviation']:.1f}% (the "
        f"noise of this machine); beyond that noise, by at most {100 * verdict['worst_merged_excess']:.1f}% "
        f"({verdict['parts']['latency']}), and its logits equal the unmerged model's to {merge_error:.1e} of the largest "
        f"logit (float32; tolerance {MERGE_TOLERANCE:.0e}: {verdict['parts']['equal outputs']}), while the adapter moved them "
        f"by {max(c['unmerged_vs_base'] for c in checks.values()):.1e}.",
        "",
        f"**Unmerged:** serving the adapter beside W costs {100 * (min(unmerged) - 1):+.0f}% to {100 * (max(unmerged) - 1):+.0f}% "
        "in these settings: the adapter's products are thin, but each adapted layer adds several small operations (and, "
        "on the fused c_attn, a split and a concatenation with a zero block for Wk), which weigh most at batch 1 and in "
        "token-by-token generation. So the claim holds for a merged adapter -- which is also the article's reason -- and "
        "only partly for one kept separate (as when several adapters are served from one base model).",
    ])
    return ClaimResult(
        key="inference",
        title="Inference overhead",
        claim=CLAIM,
        measured=f"latency of base, LoRA unmerged and merged (forward at batch {' and '.join(map(str, batches))}"
                 + (", KV-cache generation" if gen_tokens else "") + "), interleaved medians",
        figure=f"merged/base within {100 * verdict['worst_merged_deviation']:.0f}% (noise {100 * verdict['worst_control_deviation']:.0f}%); unmerged {100 * (min(unmerged) - 1):+.0f}% to {100 * (max(unmerged) - 1):+.0f}%",
        verdict=verdict["verdict"],
        thresholds={"|merged/base - 1| beyond |base again/base - 1|, holds <=": MERGED_HOLDS, "... partly <=": MERGED_PARTLY,
                    "merged vs unmerged logits (relative), holds <=": MERGE_TOLERANCE},
        figures={"worst_merged_excess": verdict["worst_merged_excess"], "worst_merged_deviation": verdict["worst_merged_deviation"],
                 "worst_control_deviation": verdict["worst_control_deviation"], "merge_error": merge_error,
                 "parts": verdict["parts"], "checks": checks, "latency": results,
                 "unmerged_overhead": {"min": min(unmerged) - 1, "max": max(unmerged) - 1}},
        settings={"models": {name: vars(m.config) for name, m in models.items()}, "weights": weights_note,
                  "batches": list(batches), "sequence": "block_size tokens", "repeats": repeats,
                  "generation": f"{gen_tokens} new tokens after 16, greedy, KV cache, batch 1 (first model only)",
                  "other models": "forward at the first batch size only",
                  "lora": f"r={LORA_RANK} on Wq, Wv (enable_lora), A as initialised, B ~ N(0, 0.02)", "blas_threads": 1},
        plots=["inference.png"],
        body=body,
    )
