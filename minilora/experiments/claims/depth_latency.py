"""Claim 10 -- latency from added depth: adapters against LoRA at inference.

    The source article (docs/claims.md, claim 10): adapter methods insert small modules
    between the layers of the frozen model, and the depth they add can slow inference
    down, where LoRA adds next to nothing.

The LoRA paper's Table 1 in miniature (Hu et al., 2021: GPT-2 medium on a GPU, adapters
+20-30% at batch 1 and sequence 128, +2-3% at batch 32): forward latency of

    base            the frozen model itself
    base again      a second copy of it: the noise control (its ratio to base is noise alone)
    LoRA merged     rank-8 LoRA on Wq, Wv folded into W (merge_and_unload): the base model's computation
    LoRA unmerged   the same adapter kept beside W: two thin products per adapted layer
    Houlsby         bottleneck adapters after attention and after the MLP of every block
    Pfeiffer        one bottleneck adapter after the MLP of every block

with the adapters' bottleneck m chosen so that each trains as many numbers as the LoRA
adapter, as nearly as the sizes allow (``methods.matched_size``). An adapter cannot be
merged (a nonlinearity sits between its two projections), so its layers run in every
forward, one after the other -- the "added depth". Timing follows claim 7
(``claims/inference.py``, ``core/timing.py``): one BLAS thread, the process's CPU time, every variant
run in each round in a rotating order, medians of each round's own ratios, each with its 95% interval
from resampling whole rounds.

Judged against the base model: an adapter's added latency is its latency over the base model's, from the
same rounds. Merged LoRA is the base model's computation, so its ratio to the base is noise (a few percent
either way); it is shown beside the others as a row, never subtracted from them.

On a GPU at batch 1 each small kernel waits for the one before it, so extra layers add their
launch and synchronisation times however little they compute. On a CPU with NumPy the
counterpart is the fixed cost of each tensor operation (Python, the Tensor object, NumPy's
call): ``count_ops`` counts the operations one forward runs, the depth an adapter adds as the
CPU sees it. How much of the time they cost depends on how heavy the base model's own
operations are; at a large batch the FLOPs and the memory traffic of the (B, T, C) arrays
dominate, and the adapter's thin products weigh little.
"""

from __future__ import annotations

import copy

import numpy as np

import minilora
from minilora import backend
from minilora.experiments.bases import gpt_methods as M
from minilora.experiments.core import combine, judge_interval, time_rounds
from minilora.experiments.core.intervals import (error_bars, excess, interval_cell, interval_text, latency_intervals, per_round_times,
                                                 percentile_interval, round_ratio_replicates)
from minilora.models import GPTConfig
from minilora.peft import get_peft_model

KEY, NUMBER = "depth_latency", 10
TITLE = "Latency from added depth: adapters vs LoRA"
CLAIM = ("Adapter methods put small extra modules between the layers of a frozen model; the depth this adds can "
         "make inference slower, while LoRA adds next to no cost.")
MEASURED = ("forward latency of base, LoRA merged/unmerged, Houlsby and Pfeiffer adapters (matched trainable "
            "counts) at batch 1 and a large batch, interleaved medians")
BASES = ("toy",)

LORA_RANK = 8  # on Wq and Wv, as in claims 2, 3 and 7
B_STD = 0.02  # LoRA's B and the adapters' W_up drawn from N(0, B_STD), as after fine-tuning (base.serving_variants)
ADAPTERS = ("houlsby", "pfeiffer")
NAMES = {"houlsby": "Houlsby", "pfeiffer": "Pfeiffer"}

# (batch, sequence length) of the forward passes: batch 1 with a short sequence (online inference,
# where per-op overhead rules), batch 1 at the full context, and a large batch (where FLOPs rule).
# The wide model (GPT-2 small's width) is slower per op: its large batch is 8, not 32.
QUICK_SHAPES = {"base": ((1, 16), (16, 128))}
FULL_SHAPES = {"base": ((1, 16), (1, 128), (32, 128)), "wide": ((1, 16), (1, 128), (8, 128))}
QUICK_REPEATS, FULL_REPEATS = 9, {"base": 31, "wide": 9}

# --- the verdict's thresholds -------------------------------------------------------------
# Judged at batch 1 with the short sequence (the first shape), on the base model:
#  * adapters: the lighter adapter design (fewer adapters: the smaller of the two overheads) costs
#    at least ADAPTER_HOLDS more than the base model, in units of the base model's latency --
#    10 points is half the LoRA paper's lower figure (20%); 3 points is still beyond this machine's
#    noise (the control's deviation is reported beside it);
#  * merged LoRA: its deviation from the base model beyond the control's own within 5% holds,
#    15% partly (claim 7's thresholds: merged and base are one computation).
ADAPTER_HOLDS, ADAPTER_PARTLY = 0.10, 0.03
MERGED_HOLDS, MERGED_PARTLY = 0.05, 0.15


def matched_adapter_sizes(config: GPTConfig, r: int = LORA_RANK) -> dict:
    """{method: m} for the two adapter designs, matched to rank-r LoRA on Wq, Wv; and the counts."""
    budget = M.trainable_count("lora", r, config)
    sizes = {a: M.matched_size(a, budget, config) for a in ADAPTERS}
    counts = {"LoRA": budget, **{NAMES[a]: M.trainable_count(a, m, config) for a, m in sizes.items()}}
    return {"sizes": sizes, "trainable": counts}


def build_variants(base, model, r: int = LORA_RANK, b_std: float = B_STD, seed: int = 0) -> dict:
    """The six models, in eval mode, as copies of ``model`` (a minilora GPT): base, base again,
    LoRA merged and unmerged (``base.serving_variants``), Houlsby and Pfeiffer adapters of
    matched size. As for LoRA's B, the adapters' W_up is drawn from N(0, ``b_std``): a small
    update, as after fine-tuning (W_up starts near 0)."""
    lora = base.serving_variants(model, r=r, b_std=b_std, seed=seed)
    variants = {"base": lora["base"], "base again": lora["base again"], "LoRA merged": lora["merged"],
                "LoRA unmerged": lora["unmerged"]}
    sizes = matched_adapter_sizes(model.config, r)["sizes"]
    rng = np.random.default_rng(seed)
    for method in ADAPTERS:
        minilora.manual_seed(seed)
        adapted = get_peft_model(copy.deepcopy(lora["base"]), M.peft_config(method, sizes[method]))
        for _, layer in adapted.base_model.adapter_layers():
            up = layer.adapter_up[adapted.active_adapter].weight
            up.data = backend.xp.asarray((rng.standard_normal(up.shape) * b_std).astype(up.dtype))  # copied to the device once
        variants[NAMES[method]] = adapted.eval()
    return variants


def count_ops(model, x) -> int:
    """How many tensor operations one forward of ``model`` on token ids ``x`` runs: every op of the
    engine builds its output with ``Tensor._make`` (minilora/tensor.py), so calls to it are counted
    (under ``no_grad``, as when timing). The "depth" an adapter adds, as the CPU sees it."""
    from minilora.tensor import Tensor, no_grad

    make = Tensor.__dict__["_make"]  # the classmethod object, put back as it was
    calls = [0]

    def counting(cls, data, parents, backward):
        calls[0] += 1
        return make.__func__(cls, data, parents, backward)

    Tensor._make = classmethod(counting)
    try:
        with no_grad():
            model(x)
    finally:
        Tensor._make = make
    return calls[0]


def op_counts(variants: dict, batch: int = 1, seq: int = 16, seed: int = 0) -> dict:
    """``count_ops`` of each variant on a random (batch, seq) input (the count does not depend on the shape)."""
    config = variants["base"].config
    x = np.random.default_rng(seed).integers(0, config.vocab_size, (batch, seq))
    return {name: count_ops(model, x) for name, model in variants.items()}


def overheads(setting: dict) -> dict:
    """Each variant's latency over the base model's, minus 1 (e.g. 0.25 = 25% slower), in one setting."""
    return {name.removesuffix("/base"): value - 1 for name, value in setting.items() if name.endswith("/base")}


def plot_depth_latency(results: dict, ax=None, title: str = "", intervals: dict | None = None):
    """Latency relative to the base model, per setting (groups) and variant (bars); each bar with its 95%
    interval where ``intervals`` (``{setting: latency_intervals(...)}``) gives them."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(8, 4.5))[1]
    settings = list(results)
    variants = [("base again", "tab:gray"), ("LoRA merged", "tab:green"), ("LoRA unmerged", "tab:olive"),
                ("Pfeiffer", "tab:orange"), ("Houlsby", "tab:red")]
    width = 0.8 / len(variants)
    for j, (name, color) in enumerate(variants):
        values = [results[s][f"{name}/base"] for s in settings]
        x = np.arange(len(settings)) + (j - (len(variants) - 1) / 2) * width
        yerr = error_bars(values, [(intervals or {}).get(s, {}).get(f"{name}/base") for s in settings])
        bars = ax.bar(x, values, width, color=color, label=name, yerr=yerr, capsize=2)
        for bar, value, up in zip(bars, values, yerr[1]):  # above the interval's bar
            ax.text(bar.get_x() + bar.get_width() / 2, value + up, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="k", lw=1)
    ax.set_xticks(range(len(settings)), [f"{s}\nbase {1000 * results[s]['base']:.1f} ms" for s in settings], fontsize=8)
    ax.set_ylabel("forward latency / base model's")
    top = max([results[s][f"{n}/base"] for s in settings for n, _ in variants]
              + [ci[f"{n}/base"][1] for ci in (intervals or {}).values() for n, _ in variants if ci.get(f"{n}/base")])
    ax.set_ylim(0, max(1.3, 1.15 * top) + 0.3)  # room above the bars for the legend
    ax.set_title(title or "Forward latency (medians of interleaved rounds" + ("; bars: 95% intervals)" if intervals else ")"))
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    return ax


def forward_tasks(config, shapes, seed: int = 0) -> dict:
    """``{"B=<b> T=<t>": a forward pass on random token ids of that shape}`` for each ``(batch, seq)`` of ``shapes``."""
    rng = np.random.default_rng(seed)
    tasks = {}
    for batch, seq in shapes:
        if seq > config.block_size:
            raise ValueError(f"sequence length {seq} exceeds the model's block_size={config.block_size}")
        tasks[f"B={batch} T={seq}"] = lambda m, x=rng.integers(0, config.vocab_size, (batch, seq)): m(x)
    return tasks


def measure(base, session, models=None, shapes=None, repeats=None) -> dict:
    """``models``: {name: minilora GPT} (default: ``base.timed_models``: the base model; in the full run also
    the 768-wide model). ``shapes``: {name: ((batch, seq), ...)}; ``repeats``: {name: n}."""
    weights_note = "given"
    if models is None:
        models, weights_note = base.timed_models(session.quick)
    shapes = shapes or (QUICK_SHAPES if session.quick else FULL_SHAPES)
    repeats = repeats or ({name: QUICK_REPEATS for name in models} if session.quick else FULL_REPEATS)
    latency, matched, ops = {}, {}, {}
    for name, model in models.items():
        matched[name] = matched_adapter_sizes(model.config)
        variants = build_variants(base, model, seed=session.seed)
        ops[name] = op_counts(variants)
        latency[name] = time_rounds(variants, forward_tasks(model.config, shapes[name], session.seed), repeats[name])
        del variants
    first = next(iter(models))
    judged = next(iter(latency[first]))
    return {"latency": latency, "matched": matched, "ops": ops,
            "judged": {"model": first, "setting": judged, "overheads": overheads(latency[first][judged])},
            "settings": {"models": {name: vars(m.config) for name, m in models.items()}, "weights": weights_note,
                         "shapes": {k: [list(s) for s in v] for k, v in shapes.items() if k in models},
                         "repeats": repeats, "lora": f"r={LORA_RANK} on Wq, Wv (enable_lora), B ~ N(0, {B_STD})",
                         "adapters": f"bottleneck m matched to LoRA's count, relu, W_up ~ N(0, {B_STD})", "blas_threads": 1}}


def verdict(figures: dict) -> dict:
    """The verdict at batch 1 (short sequence), on the first model, each part read off its 95% interval (whole
    rounds resampled): the lighter adapter's latency over the base model's, minus 1 (the smaller of the two
    designs' in each replicate); and merged LoRA's deviation beyond the control's (claim 7's rule). Every
    variant's ratio to the base in every setting gets its interval too, shown, not judged."""
    claim = f"{NUMBER} ({KEY})"
    intervals = {model: {name: latency_intervals(s, claim, f"{model} model, {name}", merged="LoRA merged")
                         for name, s in res.items()} for model, res in figures["latency"].items()}
    model, setting = figures["judged"]["model"], figures["judged"]["setting"]
    judged = figures["latency"][model][setting]
    over = overheads(judged)
    adapters = {NAMES[a]: over[NAMES[a]] for a in ADAPTERS}
    lighter = min(adapters, key=adapters.get)
    rounds = per_round_times(judged, claim, f"{model} model, {setting}")
    lighter_interval = None
    if len(rounds["base"]) >= 2:
        reps = round_ratio_replicates(rounds, "base")
        lighter_interval = percentile_interval(np.minimum(*(reps[NAMES[a]] for a in ADAPTERS)) - 1)
    merged = intervals[model][setting]
    parts = {"adapters slower than the base model": judge_interval(lighter_interval, ADAPTER_HOLDS, ADAPTER_PARTLY),
             "merged LoRA as fast as the base": judge_interval(merged["excess"], MERGED_HOLDS, MERGED_PARTLY, higher_is_better=False)}
    return {"verdict": combine(*parts.values()), "parts": parts, "intervals": intervals, "lighter_adapter": lighter,
            "lighter_overhead": adapters[lighter], "lighter_overhead_interval": lighter_interval,
            "merged_overhead": over["LoRA merged"], "merged_overhead_interval": shifted(merged["LoRA merged/base"]),
            "merged_excess": float(excess(judged["LoRA merged/base"], judged["base again/base"])),
            "merged_excess_interval": merged["excess"],
            "thresholds": {"judged setting": f"{model} model, {setting}",
                           "lighter adapter's latency / base model's - 1, its 95% interval, holds >=": ADAPTER_HOLDS,
                           "... partly >=": ADAPTER_PARTLY,
                           "|merged/base - 1| beyond |base again/base - 1|, its 95% interval, holds <=": MERGED_HOLDS,
                           "... partly <=": MERGED_PARTLY}}


def shifted(interval, by: float = -1.0):
    """A ratio's interval as an overhead's (ratio - 1); ``None`` stays ``None``."""
    return None if interval is None else [v + by for v in interval]


def render(figures: dict, verdict: dict, plot, quick: bool) -> dict:
    import matplotlib.pyplot as plt

    results, matched, ops, s = figures["latency"], figures["matched"], figures["ops"], figures["settings"]
    first, judged_setting = figures["judged"]["model"], figures["judged"]["setting"]
    over = figures["judged"]["overheads"]
    fig, axes = plt.subplots(1, len(results), figsize=(7.5 * len(results), 4.8), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        counts = matched[name]["trainable"]
        plot_depth_latency(res, ax, f"{name} model: LoRA r={LORA_RANK} ({counts['LoRA']:,}) vs adapters "
                                    f"(H {counts['Houlsby']:,}, P {counts['Pfeiffer']:,}); bars: 95% intervals",
                           verdict["intervals"][name])
    fig.tight_layout()
    plots = [plot(fig, "depth_latency.png")]

    variant_names = ("base again", "LoRA merged", "LoRA unmerged", "Pfeiffer", "Houlsby")
    table = ["| model | setting | base (ms) | " + " | ".join(variant_names) + " |", "|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        table.append(f"| {name} | tensor ops per forward | {ops[name]['base']} | "
                     + " | ".join(f"{ops[name][v]} ({100 * (ops[name][v] / ops[name]['base'] - 1):+.0f}%)" for v in variant_names) + " |")
        for setting, t in res.items():
            o, ci = overheads(t), verdict["intervals"][name][setting]
            table.append(f"| {name} | {setting} | {1000 * t['base']:.2f} | "
                         + " | ".join(f"{100 * o[v]:+.1f}%{interval_cell(shifted(ci[f'{v}/base']), 100, 1)}" for v in variant_names) + " |")
    sizes_text = "; ".join(
        f"{name}: LoRA r={LORA_RANK} on Wq, Wv trains {m['trainable']['LoRA']:,}, Houlsby m={m['sizes']['houlsby']} "
        f"{m['trainable']['Houlsby']:,}, Pfeiffer m={m['sizes']['pfeiffer']} {m['trainable']['Pfeiffer']:,}"
        for name, m in matched.items())
    judged = results[first][judged_setting]
    per_op = 1e6 * judged["base"] / ops[first]["base"]
    added = {v: ops[first][v] - ops[first]["base"] for v in ("Houlsby", "Pfeiffer", "LoRA unmerged")}
    lines = [
        ("**Quick mode** (few rounds, base model only): the ratios are rough, to a few percent. " if quick else "")
        + f"Forward latency relative to the base model (medians over interleaved rounds, one BLAS thread, "
        f"{judged['clock']}; in brackets each overhead's 95% interval, whole rounds resampled), and the number of "
        f"tensor operations one forward runs (exact); matched trainable counts (exact) -- {sizes_text}. Base model "
        f"weights: {s['weights']}.",
        "",
        *table,
        "",
        f"At batch 1 with a {judged_setting.split('T=')[1]}-token sequence, the {first} model's forward takes "
        f"{1000 * judged['base']:.2f} ms; Houlsby adapters add {100 * over['Houlsby']:+.1f}%, "
        f"Pfeiffer adapters {100 * over['Pfeiffer']:+.1f}%, while LoRA merged is at {100 * over['LoRA merged']:+.1f}% "
        f"(the control, a second copy of the base model: {100 * over['base again']:+.1f}%) and LoRA unmerged at "
        f"{100 * over['LoRA unmerged']:+.1f}%. Judged against the base model: the lighter adapter design "
        f"({verdict['lighter_adapter']}) adds {100 * verdict['lighter_overhead']:+.1f}% of the base model's latency"
        f"{interval_text(verdict['lighter_overhead_interval'], 100, '%')} "
        f"({verdict['parts']['adapters slower than the base model']}: thresholds {100 * ADAPTER_HOLDS:.0f} / "
        f"{100 * ADAPTER_PARTLY:.0f} points). Merged LoRA is the base model's computation, so its "
        f"{100 * verdict['merged_overhead']:+.1f}%{interval_text(verdict['merged_overhead_interval'], 100, '%')} is "
        "the noise of the measurement, shown as a row and never subtracted from the adapters'; beyond the control's "
        f"own deviation it strays by {100 * verdict['merged_excess']:.1f}%"
        f"{interval_text(verdict['merged_excess_interval'], 100, '%')} "
        f"({verdict['parts']['merged LoRA as fast as the base']}).",
        "",
        f"Where the time goes. Merged LoRA runs exactly the base model's {ops[first]['base']} operations. The adapters add "
        f"{added['Houlsby']} (Houlsby) and {added['Pfeiffer']} (Pfeiffer) -- a linear, a ReLU, a linear and an add per "
        f"adapter -- and unmerged LoRA {added['LoRA unmerged']}: the depth is real, {100 * added['Houlsby'] / ops[first]['base']:.0f}% "
        f"more operations for Houlsby. The base model's operations average {per_op:.0f} µs here, and an adapter's "
        "are thin (arrays of (B, T, m) and (B, T, C), m far below C), so the time grows "
        + ("less than" if over["Houlsby"] < added["Houlsby"] / ops[first]["base"] else "as much as")
        + " the count. At the large "
        "batch the overheads are " + "; ".join(
            f"{name} ({setting}) Houlsby {100 * (res[setting]['Houlsby/base'] - 1):+.1f}%, Pfeiffer "
            f"{100 * (res[setting]['Pfeiffer/base'] - 1):+.1f}%, LoRA unmerged {100 * (res[setting]['LoRA unmerged/base'] - 1):+.1f}%"
            for name, res in results.items() for setting in list(res)[-1:])
        + ": there the block's products (12 C^2 multiply-adds a token) and its elementwise passes over (B, T, C) arrays "
        "dominate, and the adapter's (2 C m per adapter) weigh little, though its residual add is a full (B, T, C) pass. "
        "The LoRA paper's Table 1 (+20-30% at batch 1, +2-3% at batch 32) was measured on a GPU, where at batch 1 each "
        "small kernel waits for the one before it and the extra kernels add up; on a CPU the per-operation cost is "
        "lower relative to the work, and the batch-1 penalty is smaller.",
    ]
    return {"figure": f"batch 1, T={judged_setting.split('T=')[1]}, over the base model: Houlsby {100 * over['Houlsby']:+.0f}%, "
                      f"Pfeiffer {100 * over['Pfeiffer']:+.0f}% (the lighter, {verdict['lighter_adapter']}, 95% interval"
                      f"{interval_cell(verdict['lighter_overhead_interval'], 100, 0) or ': one round'}), LoRA merged "
                      f"{100 * over['LoRA merged']:+.0f}%{interval_cell(verdict['merged_overhead_interval'], 100, 0)} "
                      f"(noise {100 * over['base again']:+.0f}%)",
            "body": "\n".join(lines), "plots": plots}
