"""Claim 12 -- LoRA with quantization: a 4-bit base model, LoRA trained on top (QLoRA).

    The source article (docs/claims.md, claim 12): LoRA works together with quantization
    of the base model, which makes fine-tuning cheaper still without giving up its results.

Three measurements on the shipped base model (``minilora/quant.py``; docs/qlora.md):

* **memory of the frozen weights** in float32, in NF4 (4-bit codes + a float32 absmax per 64
  weights) and in NF4 with double quantization (the absmax constants in 8 bits), measured
  twice -- the bytes of the arrays the model stores, and what ``tracemalloc`` sees the model
  hold once built -- and counted: bits per parameter x parameters. Only the four projections
  of each block are quantized; the token and position embeddings (the token embedding is
  tied to the LM head), biases and LayerNorms stay float32;
* **quantization error**: per matrix, ||W - dequant(W)||_F / ||W||_F, and what it does to
  the base model's task figures before any fine-tuning;
* **accuracy**: claim 4's judged LoRA run (Wq+Wv, r = 8, the same steps, batches and seeds)
  on the NF4 base against the same run on the dense base (``RunSpec(quantized=True)``). The
  adapter's A is drawn after the same seed, so the two runs start from the same adapter; only
  the frozen weights differ;
* **step time**: a LoRA step on the NF4 base against one on the dense base, alternated in this
  process (``core.time_steps``, as claim 3): never the runs' own training times, which may come
  from the run cache.
"""

from __future__ import annotations

import gc

import numpy as np

import minilora
from minilora.experiments.bases.gpt import WIDE_CONFIG, ClassificationData
from minilora.experiments.core import FAILS, combine, judge, judge_gap, time_steps, traced
from minilora.experiments.core.intervals import interval_text
from minilora.experiments.runs import RunSpec, train
from minilora.models import GPT, GPTConfig
from minilora.quant import NF4Linear, nominal_bits_per_parameter, quantization_error, quantize_model

KEY, NUMBER = "quantization", 12
TITLE = "LoRA with quantization (QLoRA)"
CLAIM = ("LoRA can be combined with quantization of the frozen base model (as QLoRA does), saving more memory "
         "while keeping what the adapter achieves.")
MEASURED = ("memory of the base model's weights (float32 / NF4 / NF4 + double quantization), quantization error, "
            "LoRA r=8 accuracy on the NF4 base vs the dense base")
BASES = ("toy",)

SCHEMES = ("float32", "NF4", "NF4 + double quant")
QLORA_RANK = 8  # on Wq and Wv: claim 4's judged LoRA run
STEP_REPEATS = {True: 6, False: 16}  # the alternated steps timed on each base (claim 3's counts)

# --- the verdict's thresholds -------------------------------------------------------------
# Memory: the NF4 + double-quantization model's weights over the float32 model's (measured bytes of
# the stored arrays). Quantizing every weight would give 4.127 / 32 = 0.129; the float32 embeddings
# (6% of the base model's parameters) lift it to about 0.19. A quarter holds; half is "partly".
MEMORY_HOLDS, MEMORY_PARTLY = 0.25, 0.5
# Accuracy: LoRA on the dense base minus LoRA on the NF4 base (test accuracy, mean over seeds):
# within 3 points holds, within 10 partly -- claim 4's thresholds for "comparable performance".
GAP_HOLDS, GAP_PARTLY = 0.03, 0.10
# The gap means something only if LoRA learned the task: on the dense base it must beat the base
# model (before fine-tuning) by at least this much, else the accuracy part is not measurable (NaN,
# judged "does not hold", as claim 4 does) -- what a quick run of a few dozen steps gives.
MIN_LORA_GAIN = 0.05


def _copy(base: GPT) -> GPT:
    model = GPT(base.config, dtype=base.transformer.wte.weight.dtype)
    model.load_state_dict(base.state_dict())  # copies
    return model


def quantized_copy(base: GPT, scheme: str) -> GPT:
    """A copy of ``base``, its projections in ``scheme`` (one of SCHEMES)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    model = _copy(base)
    if scheme != "float32":
        quantize_model(model, double_quant=scheme == "NF4 + double quant")
    return model.eval()


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------


def stored_bytes(model) -> dict:
    """Bytes of the arrays ``model`` stores: ``codes`` (packed 4-bit indices), ``constants``
    (absmax, or its 8-bit codes, scales and means), ``dense`` (every float Parameter, a tied
    one once), with the numbers of quantized and dense parameters."""
    codes = constants = quantized = 0
    for _, module in model.named_modules():
        if isinstance(module, NF4Linear):
            arrays = module.qweight.arrays()
            codes += int(arrays.pop("packed").nbytes)
            constants += sum(int(a.nbytes) for a in arrays.values())
            quantized += module.qweight.numel
    params = list(model.parameters())  # each Parameter once (the tied head is the embedding)
    dense = sum(int(p.data.nbytes) for p in params)
    return {"codes": codes, "constants": constants, "dense": dense, "total": codes + constants + dense,
            "quantized_params": quantized, "dense_params": sum(p.numel() for p in params)}


def analytic_bytes(config: GPTConfig, scheme: str) -> dict:
    """The same, counted: bits per parameter x parameters, the projections quantized
    (``nominal_bits_per_parameter``: 4.5 bits, or 4.127 with double quantization), the rest at 32 bits."""
    C, L = config.n_embd, config.n_layer
    projections = L * 12 * C * C  # c_attn 3C^2, attn.c_proj C^2, c_fc 4C^2, mlp.c_proj 4C^2
    total = config.num_parameters()
    if scheme == "float32":
        return {"bits_per_quantized": 32.0, "quantized_params": 0, "dense_params": total, "total": 4 * total}
    bits = nominal_bits_per_parameter(double_quant=scheme == "NF4 + double quant")
    return {"bits_per_quantized": bits, "quantized_params": projections, "dense_params": total - projections,
            "total": projections * bits / 8 + 4 * (total - projections)}


def traced_bytes(base: GPT, scheme: str) -> dict:
    """What ``tracemalloc`` sees (on a GPU: a hook on CuPy's pool): ``held``, the memory the built
    model holds (every array, and on the CPU every Python object, allocated while building it and
    still alive), and ``peak``, the most held while building (the float32 copy is made first, then
    quantized); ``device``, where."""
    with traced() as trace:
        trace.reset_peak()
        model = quantized_copy(base, scheme)
        gc.collect()
        held, peak = trace.current(), trace.peak()
    del model
    return {"held": held - trace.start, "peak": peak - trace.start, "device": trace.device}


def memory_table(base: GPT) -> dict:
    """{scheme: {"stored": stored_bytes, "analytic": analytic_bytes, "traced": traced_bytes,
    "bits_per_quantized_measured"}} for the three schemes."""
    out = {}
    for scheme in SCHEMES:
        stored = stored_bytes(quantized_copy(base, scheme))
        bits = 8 * (stored["codes"] + stored["constants"]) / stored["quantized_params"] if stored["quantized_params"] else 32.0
        out[scheme] = {"stored": stored, "analytic": analytic_bytes(base.config, scheme), "traced": traced_bytes(base, scheme),
                       "bits_per_quantized_measured": bits}
    return out


# ---------------------------------------------------------------------------
# error
# ---------------------------------------------------------------------------


def quantization_errors(base: GPT, double_quant: bool = True) -> dict:
    """Per quantized matrix (those ``quantize_model`` replaces): max and mean |W - Ŵ| and
    ||W - Ŵ||_F / ||W||_F; and ``overall_rel_frobenius``: the same for all of them together."""
    quantized = quantized_copy(base, "NF4 + double quant" if double_quant else "NF4")
    rows, err2, norm2 = {}, 0.0, 0.0
    for name, module in quantized.named_modules():
        if isinstance(module, NF4Linear):
            W = base.get_submodule(name).weight.data
            rows[name] = e = quantization_error(W, module.qweight)
            w2 = float((W.astype(np.float64) ** 2).sum())
            err2 += e["rel_frobenius"] ** 2 * w2
            norm2 += w2
    return {"matrices": rows, "overall_rel_frobenius": float(np.sqrt(err2 / norm2)),
            "max_abs": max(r["max_abs"] for r in rows.values()),
            "mean_rel_frobenius": float(np.mean([r["rel_frobenius"] for r in rows.values()]))}


def task_figures(base: GPT, data: dict) -> dict:
    """The base model's held-out figures before fine-tuning, for each scheme: {scheme: {task: {loss, accuracy}}}."""
    return {scheme: {task: d.evaluate(quantized_copy(base, scheme)) for task, d in data.items()} for scheme in SCHEMES}


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------


def plot_memory(tables: dict, ax=None):
    """Bytes of the weights per scheme (stacked: 4-bit codes, quantization constants, float32 rest),
    measured, with the analytic count (black tick), one group per model."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4.5))[1]
    colors = {"dense": "tab:blue", "codes": "tab:orange", "constants": "tab:red"}
    labels = {"dense": "float32 arrays", "codes": "4-bit codes", "constants": "absmax constants"}
    ticks, names = [], []
    for g, (model_name, table) in enumerate(tables.items()):
        for j, scheme in enumerate(SCHEMES):
            x = g * (len(SCHEMES) + 1) + j
            stored, bottom = table[scheme]["stored"], 0.0
            ref = table["float32"]["stored"]["total"]
            for part in ("dense", "codes", "constants"):
                ax.bar(x, stored[part] / ref, bottom=bottom, color=colors[part], width=0.7,
                       label=labels[part] if g == 0 and j == 2 else None)
                bottom += stored[part] / ref
            ax.plot([x - 0.35, x + 0.35], [table[scheme]["analytic"]["total"] / ref] * 2, color="k", lw=2,
                    label="analytic (bits x params)" if g == 0 and j == 0 else None)
            ax.text(x, bottom, f"{stored['total'] / 2**20:.2f} MiB\n{bottom:.3f}x", ha="center", va="bottom", fontsize=7)
            ticks.append(x)
            names.append(f"{model_name}\n{scheme}")
    ax.set_xticks(ticks, names, fontsize=7)
    ax.set_ylabel("weights' bytes / float32 model's")
    ax.set_ylim(0, 1.25)
    ax.set_title("Memory of the frozen weights")
    ax.legend(fontsize=7, loc="upper right")
    return ax


def plot_accuracy(dense: list, nf4: list, before: dict, ax=None, metric: str = "accuracy"):
    """Held-out figure of LoRA on the dense and the NF4 base (bars: mean; dots: seeds), beside the
    base models before fine-tuning."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5, 4.5))[1]
    groups = [("base float32\n(no tuning)", [before["float32"]]), ("base NF4+DQ\n(no tuning)", [before["NF4 + double quant"]]),
              ("LoRA on\nfloat32", dense), ("LoRA on\nNF4+DQ (QLoRA)", nf4)]
    for i, (name, values) in enumerate(groups):
        ax.bar(i, np.mean(values), color="tab:gray" if i < 2 else ("tab:blue" if i == 2 else "tab:orange"), width=0.6)
        ax.plot([i] * len(values), values, "k.", ms=8)
        ax.text(i, np.mean(values), f"{np.mean(values):.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"LoRA r={QLORA_RANK} (Wq, Wv): dense vs 4-bit base")
    return ax


def measure(base, session) -> dict:
    env = base.environment(session)
    model = env.base
    tables = {"base": memory_table(model)}
    if not session.quick:  # where the projections are nearly all the weights: GPT-2 small's width, 2 layers
        minilora.manual_seed(0)
        tables["wide"] = memory_table(GPT(WIDE_CONFIG))
    mem = tables["base"]
    errors_no_dq = quantization_errors(model, double_quant=False)
    before = task_figures(model, {"cls": ClassificationData(env.cls, 1)})

    # claim 4's judged LoRA run, at the rate claim 4 chose for it, on the dense and on the NF4 base, at every seed
    # claim 4 judges it on (``Grid.judged_seeds``: five in full mode)
    grid = base.grid(session.quick)
    specs = [RunSpec("cls", "lora", base.PAPER_TARGET, QLORA_RANK, seed=seed, **grid.common("cls"))
             for seed in grid.judged_seeds]
    dense = train(session, base, specs)
    nf4 = train(session, base, [r.spec.replace(quantized=True) for r in dense])
    acc_dense = [r.final["accuracy"] for r in dense]
    acc_nf4 = [r.final["accuracy"] for r in nf4]
    return {"memory": tables, "memory_ratio": mem["NF4 + double quant"]["stored"]["total"] / mem["float32"]["stored"]["total"],
            "errors": quantization_errors(model), "errors_without_double_quant": {k: v for k, v in errors_no_dq.items() if k != "matrices"},
            "before_finetuning": before,
            "accuracy": {"dense": acc_dense, "nf4": acc_nf4, "gap": float(np.mean(acc_dense) - np.mean(acc_nf4)),
                         "dense_gain_over_base": float(np.mean(acc_dense)) - before["float32"]["cls"]["accuracy"],
                         "rows": {"dense": [r.rows.get("accuracy") for r in dense], "nf4": [r.rows.get("accuracy") for r in nf4]}},
            "losses": {"dense": [r.final["loss"] for r in dense], "nf4": [r.final["loss"] for r in nf4]},
            "step_time": step_times(base, session, specs[0], STEP_REPEATS[session.quick]),
            "facts": {"parameters": model.config.num_parameters(), "wide_parameters": WIDE_CONFIG.num_parameters()},
            "settings": {"mode": "quick" if session.quick else "full", "quantized": "c_attn, attn.c_proj, c_fc, mlp.c_proj "
                         "(blocks of 64; double quantization: 8-bit constants in blocks of 256)",
                         "lora": f"Wq+Wv r={QLORA_RANK}, alpha {2 * QLORA_RANK}", "steps": grid.common("cls")["steps"],
                         "batch_size": grid.batch_size, "seeds": list(grid.judged_seeds), "lr": dense[0].spec.lr, "models": list(tables)}}


def step_times(base, session, spec, repeats: int) -> dict:
    """``core.time_steps`` of a LoRA training step on the dense and on the NF4 base (the run's model, batch
    and loss), alternated in this process: ``ratio`` is the NF4 step's median over the dense one's."""
    env, data = base.environment(session), base.data(spec, session)
    x, y = data.batches(np.random.default_rng(spec.seed))
    runs = {}
    for name, s in (("dense", spec), ("nf4", spec.replace(quantized=True))):
        model = base.fresh_model(s, env)
        runs[name] = (model, [p for p in model.parameters() if p.requires_grad], lambda model=model: model(x, y)[1])
    return time_steps(runs, repeats)


def verdict(figures: dict) -> dict:
    """Memory ratio (NF4 + DQ over float32) and accuracy gap (dense LoRA minus NF4 LoRA); the gap
    is not measurable (NaN) when LoRA on the dense base gained less than MIN_LORA_GAIN over the base model."""
    acc = figures["accuracy"]
    if "rows" not in acc:
        raise ValueError(f"claim {NUMBER} ({KEY}): the results hold no per-row test figures, which its interval needs; "
                         "measure it again with this version (minilora verify --only quantization)")
    if acc["dense_gain_over_base"] >= MIN_LORA_GAIN:  # on a par: non-inferiority of NF4 against dense, rows paired
        interval, on_par = judge_gap(acc["rows"]["nf4"], acc["rows"]["dense"], GAP_HOLDS, GAP_PARTLY, NUMBER, "accuracy")
    else:
        interval, on_par = None, FAILS
    parts = {"memory": judge(figures["memory_ratio"], MEMORY_HOLDS, MEMORY_PARTLY, higher_is_better=False),  # exact
             "accuracy": on_par}
    return {"verdict": combine(*parts.values()), "parts": parts, "intervals": {"gap": interval, "memory_ratio": "exact"},
            "thresholds": {"NF4+DQ / float32 weight bytes, holds <=": MEMORY_HOLDS, "weight bytes, partly <=": MEMORY_PARTLY,
                           "accuracy gap (dense LoRA - NF4 LoRA), holds <=": GAP_HOLDS, "accuracy gap, partly <=": GAP_PARTLY,
                           "dense LoRA's gain over the base model needed to judge the gap": MIN_LORA_GAIN}}


def render(figures: dict, verdict: dict, plot, quick: bool) -> dict:
    import matplotlib.pyplot as plt

    tables, s, acc, parts = figures["memory"], figures["settings"], figures["accuracy"], verdict["parts"]
    mem, before, errors = tables["base"], figures["before_finetuning"], figures["errors"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [1.6, 1]})
    plot_memory(tables, axes[0])
    plot_accuracy(acc["dense"], acc["nf4"], {k: v["cls"]["accuracy"] for k, v in before.items()}, axes[1])
    fig.tight_layout()
    plots = [plot(fig, "quantization.png")]

    kib = 1024
    table = ["| model | scheme | stored (KiB) | of which 4-bit codes / constants / float32 | bits per quantized weight | "
             "analytic (KiB) | traced held / peak while building (KiB) | vs float32 |", "|---|---|---|---|---|---|---|---|"]
    for model_name, t in tables.items():
        for scheme in SCHEMES:
            r = t[scheme]
            st = r["stored"]
            table.append(f"| {model_name} | {scheme} | {st['total'] / kib:,.0f} | {st['codes'] / kib:,.0f} / {st['constants'] / kib:,.1f} / "
                         f"{st['dense'] / kib:,.0f} | {r['bits_per_quantized_measured']:.3f} | {r['analytic']['total'] / kib:,.0f} | "
                         f"{r['traced']['held'] / kib:,.0f} / {r['traced']['peak'] / kib:,.0f} | "
                         f"{st['total'] / t['float32']['stored']['total']:.3f}x |")
    std = lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0  # noqa: E731
    judged = acc["dense_gain_over_base"] >= MIN_LORA_GAIN
    step = figures["step_time"]
    mode = "**Quick mode** (one seed, a few dozen steps): the accuracy gap is rough -- one test row is 0.3 points. " if quick else ""
    lines = [
        mode + f"**Memory.** The base model's frozen weights take {mem['float32']['stored']['total'] / kib:,.0f} KiB in float32, "
        f"{mem['NF4']['stored']['total'] / kib:,.0f} KiB in NF4 and {mem['NF4 + double quant']['stored']['total'] / kib:,.0f} KiB "
        f"in NF4 with double quantization: **{figures['memory_ratio']:.3f}x** ({parts['memory']}; thresholds "
        f"{MEMORY_HOLDS} / {MEMORY_PARTLY}). The projections ({mem['NF4']['stored']['quantized_params']:,} of the model's "
        f"{figures['facts']['parameters']:,} parameters) cost {mem['NF4 + double quant']['bits_per_quantized_measured']:.3f} bits "
        f"each (4.5 without double quantization); the float32 embeddings, tied to the head, biases and LayerNorms keep "
        f"the ratio above 4.127/32 = 0.129"
        + (f"; in the 768-wide model, where the projections are "
           f"{100 * tables['wide']['NF4']['stored']['quantized_params'] / figures['facts']['wide_parameters']:.0f}% "
           f"of the weights, it is {tables['wide']['NF4 + double quant']['stored']['total'] / tables['wide']['float32']['stored']['total']:.3f}x"
           if "wide" in tables else "")
        + f". The stored arrays, the analytic count and the memory traced on {mem['float32']['traced']['device']} agree (table); "
        "the peak while building includes the float32 copy that is quantized.",
        "",
        *table,
        "",
        f"**Error.** NF4 with double quantization moves the base model's projection weights by "
        f"{100 * errors['overall_rel_frobenius']:.3f}% in relative Frobenius norm (all matrices together; "
        f"{100 * figures['errors_without_double_quant']['overall_rel_frobenius']:.3f}% without double quantization), at most "
        f"{errors['max_abs']:.4f} in one weight. Before any fine-tuning, the classification test loss goes from "
        f"{before['float32']['cls']['loss']:.3f} (float32) to {before['NF4 + double quant']['cls']['loss']:.3f} (NF4 + DQ), accuracy from "
        f"{before['float32']['cls']['accuracy']:.3f} to {before['NF4 + double quant']['cls']['accuracy']:.3f}.",
        "",
        f"**Accuracy.** LoRA on Wq, Wv at r = {QLORA_RANK} (claim 4's judged run: {s['steps']} steps, batch {s['batch_size']}, "
        f"seeds {s['seeds']}) reaches {np.mean(acc['dense']):.3f} ± {std(acc['dense']):.3f} test accuracy on the float32 base and "
        f"{np.mean(acc['nf4']):.3f} ± {std(acc['nf4']):.3f} on the NF4 + DQ base: a gap of {100 * acc['gap']:+.1f} points"
        + (interval_text(verdict["intervals"]["gap"], 100, " points") + " (" if judged else " (")
        + (f"{parts['accuracy']}, judged as non-inferiority: the interval's upper end against thresholds "
           f"{100 * GAP_HOLDS:.0f} / {100 * GAP_PARTLY:.0f} points)" if judged else
           f"**not judged**, counted as \"{parts['accuracy']}\": LoRA on the dense base is only "
           f"{100 * acc['dense_gain_over_base']:+.1f} points above the base model, {100 * MIN_LORA_GAIN:.0f} needed, so both runs are "
           "near chance and their gap is noise)")
        + f". A training step on the 4-bit base took {step['ratio']:.2f}x the time of one on the dense base (medians of "
        f"{step['repeats']} steps each, alternated in one process; {step['clock']}): NumPy dequantizes every projection in "
        "every forward (a GPU kernel fuses that into the product). The adapter is trained against the quantized weights, "
        "and must be used with them.",
    ]
    return {"figure": f"weights {figures['memory_ratio']:.2f}x of float32; LoRA accuracy gap dense - NF4 {100 * acc['gap']:+.1f} pts"
                      + ("" if judged else " (not judged: LoRA near chance)"),
            "body": "\n".join(lines), "plots": plots}
