"""Claim 13: not every architecture responds equally well to LoRA (a limitation the article names).

    The source article (docs/claims.md, claim 13): LoRA's results depend on the model it
    is applied to; some architectures take to low-rank adaptation less well than others.

To measure *the architecture* and nothing else, two base models are compared that differ
in nothing but their block: the toy GPT-2 (the ``toy`` base, ``minilora/checkpoints/base``) and
its LLaMA twin (the ``llama`` base, ``minilora/checkpoints/llama_base``: RMSNorm, RoPE, SwiGLU,
grouped-query attention),
with about the same parameter count (842,496 and 844,928), pre-trained on the same bytes
with the same steps, schedule and seed (docs/base_model.md). Both are fine-tuned on claim 4's
classification task (docstring -> package), with claim 4's sizes, in full and with LoRA at
r = 1, 8, 64 on two target sets that mean the same thing on each architecture:

* **PEFT's default** for the model type (``target_modules=None``; ``base.PEFT_TARGET``): GPT-2's
  fused ``c_attn`` (query, key and value), LLaMA's ``q_proj`` and ``v_proj``;
* **every linear layer** of the blocks (what PEFT's ``"all-linear"`` picks; ``base.ALL_TARGET``):
  attention and MLP.

The learning rate is chosen on the validation split for each architecture alike (full
fine-tuning and the default targets at r = 8 and 64; ``runs.rates``' rule for the rest), and a
run that diverges or ends no better than its untuned base (on the validation split) is named and left out.

The figure is each architecture's **gap**: full fine-tuning's test accuracy minus LoRA's,
setting by setting. The claim holds when the two architectures' gaps differ clearly (by at
least ``DIFF_HOLDS`` and by more than ``NOISE_SE`` standard errors of the seed spread) at the
setting a user gets by default, PEFT's targets at r = 8; partly when they differ clearly
only at some other setting; not when they differ clearly nowhere.

all-MiniLM-L6-v2 (BERT) is shown beside them from claim 4's own runs, without a verdict: it
differs in size, data, objective and tokenizer, so its gap says nothing about the block alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minilora.experiments.core import FAILS, HOLDS, PARTLY
from minilora.experiments.runs import RunSpec, describe_failures, fmt, rates_for, resolved, selection_table, summarize, train

KEY, NUMBER = "compatibility", 13
TITLE = "Model compatibility: GPT-2 and LLaMA blocks"
CLAIM = ("not every architecture responds equally well to LoRA: how close it comes to full fine-tuning "
         "depends on the model it is applied to")
MEASURED = "the gap between LoRA and full fine-tuning on GPT-2 and LLaMA twins"
BASES = ("toy", "llama", "minilm")
JUDGED_BASES = ("toy", "llama")  # the twins; another base is shown beside them from claim 4's runs, without a verdict

TARGET_SET_LABELS = {"default": "PEFT's default targets", "all-linear": "every linear layer", "attention": "all attention"}

# The verdict (judged on GPT-2 and LLaMA only). A difference between the two gaps counts when it
# is at least 5 accuracy points -- the size claim 4 calls a real shortfall (its "partly" band starts
# at 3) -- and more than two standard errors of the seed spread of the four means involved.
JUDGED = ("default", 8)  # what `LoraConfig(r=8)` gives a user on either model
DIFF_HOLDS = 0.05
NOISE_SE = 2.0


@dataclass(frozen=True)
class Sizes:
    seeds: tuple
    ranks: tuple
    target_sets: tuple


# Claim 4's steps and batch (the toy's grid), so that GPT-2's full fine-tuning and c_attn r=8 runs
# are claim 4's own. Full: 21 runs an architecture, plus the learning-rate selection's 9 (3 of them
# are the chosen seed-0 runs). Quick: full and PEFT's default at r=8, one seed.
QUICK = Sizes(seeds=(0,), ranks=(8,), target_sets=("default",))
FULL = Sizes(seeds=(0, 1, 2), ranks=(1, 8, 64), target_sets=("default", "all-linear"))


def sizes(quick: bool) -> Sizes:
    return QUICK if quick else FULL


def bases(session) -> tuple:
    """The two twins always; MiniLM beside them when it is among the chosen bases."""
    return JUDGED_BASES + tuple(b for b in BASES if b not in JUDGED_BASES and b in session.bases)


def key_text(target_set: str, r: int) -> str:
    return f"{TARGET_SET_LABELS.get(target_set, target_set)} r={r}"


def target_of(base, target_set: str) -> str:
    return {"default": base.PEFT_TARGET, "all-linear": base.ALL_TARGET}[target_set]


def grid(base, quick: bool) -> list:
    """The claim's runs on one twin: full fine-tuning and LoRA on each target set at each rank, every seed."""
    s = sizes(quick)
    common = base.grid(quick).common("cls")
    specs = []
    for seed in s.seeds:
        specs.append(RunSpec("cls", "full", seed=seed, **common))
        specs += [RunSpec("cls", "lora", target_of(base, t), r, seed=seed, **common) for t in s.target_sets for r in s.ranks]
    return specs


def gaps(rows: dict, settings: dict) -> dict:
    """``{key: [gap, standard error]}``: full fine-tuning's mean test accuracy minus LoRA's, from ``summarize``
    rows; ``settings`` maps each key to the row's name. The standard error is that of a difference of two
    means over seeds (sample std / sqrt(n) of each, in quadrature)."""
    full = rows["full"]
    out = {}
    for key, name in settings.items():
        if name not in rows:
            continue
        row = rows[name]
        se = np.sqrt(full["accuracy_std"] ** 2 / max(full["n"], 1) + row["accuracy_std"] ** 2 / max(row["n"], 1))
        out[key] = [full["accuracy_mean"] - row["accuracy_mean"], float(se)]
    return out


def measure(base, session) -> dict:
    if base.name not in JUDGED_BASES:
        return measure_beside(base, session)
    s = sizes(session.quick)
    target = base.PEFT_TARGET
    results = train(session, base, resolved(session, base, grid(base, session.quick), (target,), target))
    rates, table = rates_for(session, base, "cls", (target,))
    untuned = base.untuned(session)["cls"]
    summary = summarize(results, baseline={"cls": untuned})["cls"]
    names = {key_text(t, r): f"{target_of(base, t)} r={r}" for t in s.target_sets for r in s.ranks}
    env = base.environment(session)
    return {"summary": summary, "untuned": untuned, "rates": rates, "lr_selection": table or None,
            "gaps": gaps(summary, names), "names": names, "keys": {key_text(t, r): [t, r] for t in s.target_sets for r in s.ranks},
            "failed": describe_failures(summary), "runs": len(results),
            "facts": {**base.facts(session), "val_loss": env.provenance.get("base_model_val_loss")},
            "settings": {"mode": "quick" if session.quick else "full", **base.grid(session.quick).common("cls"),
                         "seeds": list(s.seeds), "ranks": list(s.ranks),
                         "target_sets": {t: target_of(base, t) for t in s.target_sets},
                         "rate_grid": {m: list(base.rate_grid(RunSpec("cls", m))) for m in ("lora", "full")}}}


def measure_beside(base, session) -> dict:
    """Claim 4's runs on another base (MiniLM): the gap at each LoRA setting of its grid, PEFT's default
    target set and all of attention (shown without a verdict)."""
    results = train(session, base, base.grid(session.quick).specs())
    rows = summarize([r for r in results if r.spec.method != "probe"], base.baseline(session))["cls"]
    rows["probe"] = base.probe(session)
    names = {}
    for name in rows:
        for t, target in (("default", base.PEFT_TARGET), ("attention", base.ALL_TARGET)):
            if name.startswith(f"{target} r="):
                names[key_text(t, int(name.split("=")[1]))] = name
    return {"rows": rows, "gaps": gaps(rows, names), "names": names}


def is_clear(diff: float, se: float) -> bool:
    """A difference that counts: at least DIFF_HOLDS and beyond NOISE_SE standard errors."""
    return abs(diff) >= DIFF_HOLDS and abs(diff) > NOISE_SE * se


def differences(gpt: dict, llama: dict) -> dict:
    """``{setting: [LLaMA's gap - GPT-2's gap, standard error]}`` over the settings both have. A setting
    whose every run failed on one architecture only has an infinite difference (it failed there)."""
    out = {}
    for key in gpt.keys() & llama.keys():
        (g, g_se), (l, l_se) = gpt[key], llama[key]
        if np.isnan(g) and np.isnan(l):
            continue
        if np.isnan(g) or np.isnan(l):
            out[key] = [float("inf") if np.isnan(l) else float("-inf"), 0.0]
        else:
            out[key] = [l - g, float(np.hypot(g_se, l_se))]
    return out


def compare(slots: dict) -> dict:
    """The two twins' gaps set against each other, and the verdict: holds when the judged setting's
    difference is clear, partly when only others' are, does not hold when none is."""
    toy, llama = slots["toy"]["figures"], slots["llama"]["figures"]
    diffs = differences(toy["gaps"], llama["gaps"])
    order = lambda key: tuple(toy["keys"][key])  # noqa: E731  (target set, r)
    diffs = {key: diffs[key] for key in sorted(diffs, key=order)}
    clear = [key for key, (d, se) in diffs.items() if is_clear(d, se)]
    judged = key_text(*JUDGED)
    verdict = HOLDS if judged in clear else (PARTLY if clear else FAILS)
    return {"verdict": verdict, "differences": diffs, "clear": clear, "judged": judged,
            "thresholds": {"judged setting": judged, "difference counts >= (accuracy)": DIFF_HOLDS,
                           "and > standard errors": NOISE_SE}}


def plot_gaps(per_arch: dict, keys: dict, bert: dict | None, ax) -> None:
    """Each architecture's gap (full fine-tuning minus LoRA, accuracy points) against rank."""
    styles = {"toy": "C0", "llama": "C1"}
    for arch, (label, g) in per_arch.items():
        for t, ls in (("default", "-"), ("all-linear", "--")):
            ranks = sorted(keys[k][1] for k in g if keys[k][0] == t and np.isfinite(g[k][0]))
            if ranks:
                y = np.array([100 * g[key_text(t, r)][0] for r in ranks])
                e = np.array([100 * g[key_text(t, r)][1] for r in ranks])
                ax.errorbar(ranks, y, yerr=e, fmt="o" + ls, color=styles.get(arch, "C2"), capsize=3,
                            label=f"{label}, {TARGET_SET_LABELS[t]}")
    if bert is not None:
        points = sorted((int(k.split("r=")[1]), v[0]) for k, v in bert["gaps"].items()
                        if k.startswith(TARGET_SET_LABELS["default"]) and np.isfinite(v[0]))
        if points:
            ax.plot([r for r, _ in points], [100 * g for _, g in points], "s:", color="gray",
                    label="all-MiniLM-L6-v2 (BERT), query + value (no verdict)")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel("full fine-tuning minus LoRA\n(test accuracy, points; ±1 s.e.)")
    ax.set_title("How far LoRA falls short of full fine-tuning, by architecture")
    if ax.get_legend_handles_labels()[0]:  # a setting whose every run failed has no point
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


ARCH_NAMES = {"toy": "GPT-2", "llama": "LLaMA"}


def render_claim(claim: dict, plot, quick: bool) -> dict:
    """The whole section: both twins, their difference, and another base beside them."""
    import matplotlib.pyplot as plt

    slots, comp = claim["bases"], claim["comparison"]
    f = {arch: slots[arch]["figures"] for arch in JUDGED_BASES}
    bert = next((slot["figures"] for name, slot in slots.items() if name not in JUDGED_BASES), None)
    fig, ax = plt.subplots(figsize=(8.6, 4.2))
    plot_gaps({arch: (ARCH_NAMES[arch], f[arch]["gaps"]) for arch in JUDGED_BASES}, f["toy"]["keys"], bert, ax)
    fig.tight_layout()
    plots = [plot(fig, "compatibility_gaps.png")]
    judged_key = comp["judged"]
    judged = {arch: f[arch]["gaps"].get(judged_key, [float("nan"), 0.0]) for arch in JUDGED_BASES}
    d, se = comp["differences"].get(judged_key, [float("nan"), 0.0])
    s = f["toy"]["settings"]

    def loss_text(arch):
        loss = f[arch]["facts"]["val_loss"]
        return "not recorded" if loss is None else f"{loss:.4f} nats/byte"

    lines = [
        ("**Quick-mode figures** (one seed, a few dozen steps, PEFT's default targets at r=8 only): rough, for a demo "
         "only. " if quick else "")
        + "Two base models that differ only in their block -- GPT-2's (LayerNorm, learned positions, GELU MLP, "
        "multi-head attention) and LLaMA's (RMSNorm, RoPE, SwiGLU, grouped-query attention) -- with "
        f"{f['toy']['facts']['parameters']:,} and {f['llama']['facts']['parameters']:,} parameters, "
        "pre-trained on the same bytes with the same steps, schedule and seed; prose validation loss "
        f"{loss_text('toy')} (GPT-2) and {loss_text('llama')} (LLaMA). Both fine-tuned on claim 4's classification task "
        f"(chance {1 / f['toy']['facts']['n_classes']:.3f}; untuned: GPT-2 {f['toy']['untuned']['accuracy']:.3f}, "
        f"LLaMA {f['llama']['untuned']['accuracy']:.3f}) with its sizes: {s['steps']} AdamW steps of "
        f"{s['batch_size']} rows of 64 bytes, seeds {s['seeds']}, alpha = 2 r.",
        "",
        f"At PEFT's default targets and r=8 (GPT-2: c_attn; LLaMA: q_proj, v_proj), LoRA falls "
        f"{100 * judged['toy'][0]:.1f} ± {100 * judged['toy'][1]:.1f} points short of full fine-tuning on GPT-2 and "
        f"{100 * judged['llama'][0]:.1f} ± {100 * judged['llama'][1]:.1f} on LLaMA (± one standard error): a difference of "
        f"**{100 * d:+.1f} ± {100 * se:.1f} points** (LLaMA minus GPT-2). A difference counts when it is at least "
        f"{100 * DIFF_HOLDS:.0f} points and more than {NOISE_SE:g} standard errors; it does at "
        + (", ".join(comp["clear"]) if comp["clear"] else "no setting") + ".",
        "",
        ("**Learning rates** (quick mode: claim 4's defaults, not chosen): " if quick else
         "**Learning rates**, chosen on the validation split for each architecture alike (one seed at each of "
         f"{', '.join(f'{r:g}' for r in s['rate_grid']['lora'])} for LoRA and "
         f"{', '.join(f'{r:g}' for r in s['rate_grid']['full'])} for full fine-tuning; every other setting takes "
         "the nearest tuned one's): ")
        + "; ".join(f"{ARCH_NAMES[a]} " + ", ".join(f"{n} {r:g}" for n, r in f[a]["rates"].items()) for a in JUDGED_BASES) + ".",
    ]
    if not quick and all(f[a]["lr_selection"] for a in JUDGED_BASES):
        lines += ["", *selection_table({ARCH_NAMES[a]: f[a]["lr_selection"] for a in JUDGED_BASES}, first="architecture")]
    failed = [f"{ARCH_NAMES[a]} {line}" for a in JUDGED_BASES for line in f[a]["failed"]]
    lines += ["", "**Failed runs** (left out of every mean): a run fails when its loss diverges or it ends no better "
              "than its untuned base on the validation split: " + ("; ".join(failed) if failed else "none") + ".",
              "", "| architecture | setting | lr | trainable | test accuracy | gap to full (points) |",
              "|---|---|---|---|---|---|"]
    for arch in JUDGED_BASES:
        by_name = {name: key for key, name in f[arch]["names"].items()}
        for name, row in f[arch]["summary"].items():
            key = by_name.get(name)
            gap = "" if key is None or key not in f[arch]["gaps"] else \
                f"{100 * f[arch]['gaps'][key][0]:.1f} ± {100 * f[arch]['gaps'][key][1]:.1f}"
            lr = ", ".join(f"{v:g}" for v in row["lr"])
            lines.append(f"| {ARCH_NAMES[arch]} | {name} | {lr} | {row['trainable']:,} | {fmt(row, 'accuracy')} | {gap} |")
    lines += ["", "| setting | GPT-2 gap | LLaMA gap | difference (LLaMA - GPT-2) | counts? |", "|---|---|---|---|---|"]
    for key, (dd, ss) in comp["differences"].items():
        g, l = f["toy"]["gaps"][key], f["llama"]["gaps"][key]
        lines.append(f"| {key} | {100 * g[0]:.1f} ± {100 * g[1]:.1f} | {100 * l[0]:.1f} ± {100 * l[1]:.1f} | "
                     f"{100 * dd:+.1f} ± {100 * ss:.1f} | {'yes' if is_clear(dd, ss) else 'no'} |")
    if bert is not None:
        rows = bert["rows"]
        lines += ["", "**all-MiniLM-L6-v2 (BERT), shown without a verdict** (claim 4's runs on the real model: "
                  "22.7M parameters, a different corpus, objective and tokenizer, and a classifier head; its baseline "
                  f"is the linear probe, {rows['probe']['accuracy_mean']:.3f}): full fine-tuning "
                  f"{fmt(rows['full'], 'accuracy')}; the gap to it "
                  + ", ".join(f"{'query+value' if k.startswith(TARGET_SET_LABELS['default']) else 'all attention'} "
                              f"r={k.split('r=')[1]} {100 * g:.1f} ± {100 * e:.1f} points" for k, (g, e) in
                              sorted(bert["gaps"].items(), key=lambda kv: (not kv[0].startswith(TARGET_SET_LABELS["default"]),
                                                                           int(kv[0].split("r=")[1]))))
                  + "."]
    return {"figure": f"gap at default r=8: GPT-2 {100 * judged['toy'][0]:.1f}, LLaMA {100 * judged['llama'][0]:.1f} pts "
                      f"(diff {100 * d:+.1f} ± {100 * se:.1f})",
            "measured": MEASURED + ", r in " + ", ".join(map(str, s["ranks"])), "body": "\n".join(lines), "plots": plots}
