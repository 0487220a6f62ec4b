"""Claim 2 -- memory: the source article says fine-tuning with LoRA needs far less accelerator memory
than full fine-tuning (docs/claims.md).

One training step (forward, backward, AdamW update) holds, at its peak:

    weights          4 bytes a parameter (float32), full fine-tuning or LoRA alike
    gradients        4 bytes a *trainable* parameter
    optimizer state  8 bytes a trainable parameter (AdamW's two moments, m and v)
    activations      what the forward pass saves for the backward, growing with batch x sequence
    temporaries      short-lived arrays inside the backward and the optimizer update

So full fine-tuning needs about 16 bytes a parameter before any activation, and
LoRA about 4 (the frozen weights) plus 16 for each adapter parameter. Where the
weights dominate -- a large model at a small batch -- LoRA saves most of the
memory; where activations dominate, it saves little, since LoRA still runs (and
back-propagates through) the whole frozen model.

Each base names the steps to measure (``base.memory_settings``: the judged one first) and
predicts their peak from the shapes (``base.analytic_step_memory``, following what
minilora's engine keeps alive); ``core.traced_step`` measures it with ``tracemalloc``, which
sees every NumPy allocation (on a GPU: a memory hook on CuPy's pool). The two must agree within 10%.
"""

from __future__ import annotations

from minilora.experiments.core import blas_threads, compare_verdicts, judge, traced_step

KEY, NUMBER = "memory", 2
TITLE = "Memory"
CLAIM = ("Fine-tuning with LoRA needs much less accelerator memory than full fine-tuning -- little enough to "
         "bring it within reach of consumer hardware.")
MEASURED = "peak memory of one AdamW step (tracemalloc), full vs LoRA, beside the analytic count, on both base models"
BASES = ("toy", "minilm")

# --- the verdict's thresholds -------------------------------------------------------------
# A substantial decrease: LoRA's peak at most half of full fine-tuning's where the weights
# dominate (the setting of LLM fine-tuning the article speaks of) holds; any saving of at
# least 10% is "partly". The toy base's batch sweep is reported beside it, not judged.
RATIO_HOLDS, RATIO_PARTLY = 0.5, 0.9
# The measurement is trusted when it agrees with the analytic count within this relative error.
AGREEMENT = 0.10


def memory_rows(base, settings, session=None) -> list:
    """For each setting: full fine-tuning and LoRA, measured and analytic, one row per (setting, method)
    with ``error`` = measured / analytic - 1 (of the peak)."""
    rows = []
    for setting in settings:
        for method in ("full", "lora"):
            make = base.cost_step(setting, method, session)
            with blas_threads(1):  # only faster on a shared machine: BLAS's own buffers are not NumPy arrays, not counted
                measured = traced_step(make)
            analytic = base.analytic_step_memory(setting, method, session)
            rows.append({**setting.describe, "method": method, "measured": {**setting.describe, "method": method, **measured},
                         "analytic": analytic, "error": measured["peak"] / analytic["peak"] - 1})
    return rows


def measure(base, session) -> dict:
    settings = base.memory_settings(session.quick)
    rows = memory_rows(base, settings, session)
    ratios = {s.label: lora["measured"]["peak"] / full["measured"]["peak"] for s, full, lora in zip(settings, rows[::2], rows[1::2])}
    return {"ratio": ratios[settings[0].label], "ratios": ratios, "max_error": max(abs(row["error"]) for row in rows),
            "rows": rows, "judged": settings[0].label, "models": {s.model: s.facts for s in settings},
            "facts": base.facts(session), "settings": {"lora": base.COST_LORA, "optimizer": "AdamW, float32", "tokens": "random ids"}}


def verdict(figures: dict) -> dict:
    """LoRA's peak / full fine-tuning's where the weights dominate; the agreement of measured and
    analytic peaks is reported beside it."""
    return {"verdict": judge(figures["ratio"], RATIO_HOLDS, RATIO_PARTLY, higher_is_better=False),
            "parts": {"LoRA/full peak": judge(figures["ratio"], RATIO_HOLDS, RATIO_PARTLY, higher_is_better=False)},
            "agreement": judge(figures["max_error"], AGREEMENT, 2 * AGREEMENT, higher_is_better=False),
            # one step's allocation trace is fixed by the code and the shapes (no seed, no sampling, no clock):
            # the same peak every time, so no interval (issue #21: "exact")
            "intervals": {"LoRA/full peak": "exact"},
            "thresholds": {"LoRA/full peak (judged setting), holds <=": RATIO_HOLDS, "... partly <=": RATIO_PARTLY,
                           "measured vs analytic, agreement <=": AGREEMENT}}


# ---------------------------------------------------------------------------
# render
# ---------------------------------------------------------------------------

PARTS = ("weights", "optimizer", "gradients", "activations", "temporaries")
COLORS = {"weights": "tab:blue", "optimizer": "tab:orange", "gradients": "tab:green", "activations": "tab:red",
          "temporaries": "tab:gray"}


def plot_breakdown(rows, ax=None):
    """What memory holds at the peak of a step (stacked: the analytic count's parts at its
    peak moment) and the measured peak (black bar), one bar per setting."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4.5))[1]
    labels = []
    for i, row in enumerate(rows):
        bottom = 0.0
        for part in PARTS:
            value = row["analytic"]["at_peak"][part] / 2**20
            ax.bar(i, value, bottom=bottom, color=COLORS[part], width=0.6, label=part if i == 0 else None)
            bottom += value
        ax.plot([i - 0.35, i + 0.35], [row["measured"]["peak"] / 2**20] * 2, color="k", lw=2.5,
                label="measured peak" if i == 0 else None)
        labels.append(f"{row['config']}\nB={row['batch']}\n{row['method']}")
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("MiB")
    ax.set_title("At the peak of one AdamW step (bars: analytic parts; black: measured)")
    ax.legend(fontsize=8)
    return ax


def plot_batch_sweep(rows, config_name: str = "base", ax=None):
    """Peak memory against batch size for one config: measured (dots) and analytic (lines),
    full fine-tuning and LoRA, with the weights + gradients + optimizer floor of each."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4.5))[1]
    for method, color in (("full", "tab:purple"), ("lora", "tab:cyan")):
        sel = sorted((row for row in rows if row["config"] == config_name and row["method"] == method), key=lambda row: row["batch"])
        if not sel:
            continue
        batches = [row["batch"] for row in sel]
        ax.plot(batches, [row["analytic"]["peak"] / 2**20 for row in sel], "-", color=color, label=f"{method}: analytic")
        ax.plot(batches, [row["measured"]["peak"] / 2**20 for row in sel], "o", color=color, label=f"{method}: measured")
        floor = [(row["measured"]["weights"] + row["measured"]["optimizer"] + row["measured"]["gradients"]) / 2**20 for row in sel]
        ax.plot(batches, floor, ":", color=color, label=f"{method}: weights + grads + AdamW")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size (sequences of 128 tokens)")
    ax.set_ylabel("peak MiB")
    ax.set_title(f"Peak memory of a step, {config_name} model: activations take over")
    ax.legend(fontsize=7)
    ax.grid(True, which="major", alpha=0.3)
    return ax


def table_cells(row: dict) -> str:
    """The cells every memory table shares, in MiB: weights | grads | AdamW | activations measured /
    analytic | peak measured | peak analytic | error | peak set by |."""
    m, a, mib = row["measured"], row["analytic"], 2**20
    return (f"{m['weights'] / mib:.1f} | {m['gradients'] / mib:.1f} | {m['optimizer'] / mib:.1f} | "
            f"{m['activations'] / mib:.1f} / {a['activations'] / mib:.1f} | {m['peak'] / mib:.1f} | {a['peak'] / mib:.1f} | "
            f"{100 * row['error']:+.1f}% | {a['peak_phase']} |")


def render(figures: dict, verdict: dict, plot, quick: bool) -> dict:
    if len(figures["ratios"]) > 1:
        return render_sweep(figures, verdict, plot)
    return render_one(figures, verdict, quick)


def render_sweep(figures: dict, verdict: dict, plot) -> dict:
    """A base measured at a weights-dominated setting (judged) and over a batch sweep of its own model."""
    import matplotlib.pyplot as plt

    rows, by, mib = figures["rows"], figures["ratios"], 2**20
    wide_name = rows[0]["config"]
    base_name = rows[-1]["config"]
    batches = [row["batch"] for row in rows if row["config"] == base_name and row["method"] == "full"]
    wide = figures["models"][wide_name]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [1, 1]})
    plot_breakdown([row for row in rows if (row["config"] == wide_name) or row["batch"] in (batches[0], batches[-1])], axes[0])
    plot_batch_sweep(rows, base_name, axes[1])
    fig.tight_layout()
    plots = [plot(fig, "memory.png")]

    w = {row["method"]: row for row in rows if row["config"] == wide_name}
    cross = [b for b in batches if by[f"{base_name} batch {b}"] > RATIO_PARTLY]
    table = ["| model | batch | method | weights | grads | AdamW | activations measured / analytic | peak measured | "
             "peak analytic | error | peak set by |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        table.append(f"| {row['config']} | {row['batch']} | {row['method']} | {table_cells(row)}")
    body = "\n".join([
        f"Peak memory of one AdamW step measured on {rows[0]['measured']['device']}, MiB -- the parts a GPU "
        f"holds: weights, gradients, optimizer state, activations, temporaries. Where the weights dominate "
        f"({wide_name}: {wide['n_layer']} layers, width {wide['n_embd']}, {wide['parameters'] / 1e6:.1f}M parameters, batch 1 x "
        f"{wide['block_size']} tokens) full fine-tuning holds {w['full']['measured']['peak'] / mib:.0f} MiB -- weights, gradients "
        f"and AdamW's two moments, 16 bytes a parameter, plus AdamW's scratch array -- and LoRA ({figures['settings']['lora']}) "
        f"{w['lora']['measured']['peak'] / mib:.0f} MiB: **{figures['ratio']:.2f}x**. At the base model's size the ratio is "
        + ", ".join(f"{by[f'{base_name} batch {b}']:.2f}x at batch {b}" for b in batches) + ". "
        + (f"From batch {cross[0]} on, LoRA saves less than {100 * (1 - RATIO_PARTLY):.0f}% (or needs more): the activations "
           "dominate, and LoRA keeps all of them -- it back-propagates through the whole frozen model -- plus its own "
           "(with `enable_lora` on the fused c_attn, 6 N d floats a layer: the adapter's output B A x and the sum W x + B A x, "
           "each (N, 3d)). **The claim does not hold there.**" if cross else
           "LoRA's saving shrinks as the batch grows and activations take over."),
        "",
        "The analytic count (`analytic_step_memory`: weights + AdamW state + the largest of the step's moments -- the "
        "loss's backward, each block's GELU and attention backward, the end of the backward, the optimizer update -- "
        f"following what minilora's engine keeps alive) agrees with the measurement within {100 * figures['max_error']:.1f}% "
        f"everywhere (threshold {100 * AGREEMENT:.0f}%: {verdict['agreement']}). Which moment sets the peak is in the last column: "
        "the optimizer update for full fine-tuning at small batches, the top of the backward once activations dominate. "
        "One engine fact shows here: as in PyTorch, the backward frees each op's output and saved arrays as soon as it "
        "has passed that op, so an activation-bound step peaks early in the backward, while nearly every activation is "
        "still alive; the gradients, which grow as the backward goes down, set the peak only where the weights dominate.",
        "",
        *table,
    ])
    return {"figure": f"LoRA/full peak {figures['ratio']:.2f}x (768-wide, batch 1); "
                      f"{by[f'{base_name} batch {batches[-1]}']:.2f}x (base, batch {batches[-1]})",
            "body": body, "plots": plots}


def render_one(figures: dict, verdict: dict, quick: bool) -> dict:
    """A base measured at one setting (a pretrained classifier at a short batch)."""
    rows, facts, mib = figures["rows"], figures["facts"], 2**20
    by = {row["method"]: row for row in rows}
    batch, T = rows[0]["batch"], rows[0]["tokens"]
    table = ["| method | weights | grads | AdamW | activations measured / analytic | peak measured | peak analytic | error | peak set by |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        table.append(f"| {row['method']} | {table_cells(row)}")
    body = "\n".join([
        ("**Quick-mode figures** (a short batch): rough, for a demo only. " if quick else "")
        + f"One AdamW step of {facts['name']} as a classifier, batch {batch} x {T} tokens, "
        f"measured on {rows[0]['measured']['device']} (MiB): full fine-tuning {by['full']['measured']['peak'] / mib:.0f} MiB, LoRA "
        f"({figures['settings']['lora']}) {by['lora']['measured']['peak'] / mib:.0f} MiB: **{figures['ratio']:.2f}x** "
        f"({verdict['verdict']}; thresholds {RATIO_HOLDS} / {RATIO_PARTLY}, as on the toy base). The analytic count "
        f"(`bert_analytic_step_memory`) agrees within {100 * figures['max_error']:.1f}% ({verdict['agreement']}). Here the weights "
        f"({by['full']['measured']['weights'] / mib:.0f} MiB, half of them the {facts['vocab']:,}-word embedding table) are a "
        "large share of a full step, with AdamW's moments twice that; LoRA keeps the weights and every activation "
        "but trains a hundredth of the parameters.",
        "", *table])
    return {"figure": f"LoRA/full peak {figures['ratio']:.2f}x (B={batch}, T={T})", "body": body, "plots": []}


def render_comparison(claim: dict) -> str:
    return compare_verdicts(claim) + (
        " Memory follows what dominates the step: on MiniLM the 22.7M weights (16 bytes each under full fine-tuning: "
        "weights, gradient, two AdamW moments) against the activations of a short batch.")
