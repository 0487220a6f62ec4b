"""Claim 13: not every architecture responds equally well to LoRA (a limitation the article names).

    The source article (docs/claims.md, claim 13): LoRA's results depend on the model it
    is applied to; some architectures take to low-rank adaptation less well than others.

To measure *the architecture* and nothing else, two base models are compared that differ
in nothing but their block: the toy GPT-2 (the ``toy`` base, ``minilora/checkpoints/base``) and
its LLaMA twin (the ``llama`` base, ``minilora/checkpoints/llama_base``: RMSNorm, RoPE, SwiGLU,
grouped-query attention),
with about the same parameter count (842,496 and 844,928), pre-trained on the same bytes
with the same steps, schedule and seed (docs/base_model.md). Both are fine-tuned on claim 4's
classification task (docstring -> package) -- the same test rows -- with claim 4's sizes, in full
and with LoRA at r = 1, 8, 64 on target sets that mean the same thing on each architecture:

* **query and value**, two separate updates (``base.PAPER_TARGET``; the judged set): GPT-2's
  ``Wq+Wv`` -- the query and value slices of the fused ``c_attn`` (``enable_lora=[True, False, True]``),
  16,384 trained numbers at r = 8 -- and LLaMA's ``q_proj`` and ``v_proj``, 14,336 (its value
  projection is narrower: grouped-query attention);
* **PEFT's default** for the model type (``target_modules=None``; ``base.PEFT_TARGET``), shown
  beside it and not judged: GPT-2's fused ``c_attn`` is *one* rank-r update of query, key and value
  together (16,384 at r = 8 too), LLaMA's is ``q_proj`` and ``v_proj`` again -- so this row sets one
  fused update against two separate ones;
* **every linear layer** of the blocks (what PEFT's ``"all-linear"`` picks; ``base.ALL_TARGET``):
  attention and MLP.

The learning rate is chosen on the validation split for each architecture alike (full
fine-tuning and each of the first two target sets at r = 8 and 64; ``runs.rates``' rule for the
rest), and a run that diverges or ends no better than its untuned base (on the validation split)
is named and left out. Full fine-tuning and the judged setting take 5 seeds, the others 3.

The figure is each architecture's **gap** -- full fine-tuning's test accuracy minus LoRA's -- and
the **difference of the gaps** (LLaMA's minus GPT-2's), setting by setting, each with its 95%
interval (``core.intervals``: a replicate draws the test rows once -- the same rows for the four
arms, full and LoRA on both architectures, which are scored on the same task rows -- and each arm's
seeds on their own). The two gaps *differ* at a setting when the whole interval of their difference
lies beyond ``DIFF_HOLDS`` on one side; they *do not differ* when it lies inside
(-``DIFF_HOLDS``, ``DIFF_HOLDS``); otherwise the data cannot tell. The claim holds when they differ
at the judged setting (query and value, r = 8), partly when they differ only at another judged-on
setting (PEFT's default row is not one), does not hold when they differ nowhere; an interval that
cannot tell makes the verdict inconclusive between the verdicts it allows.

all-MiniLM-L6-v2 (BERT) is shown beside them from claim 4's own runs, without a verdict: it
differs in size, data, objective and tokenizer, so its gap says nothing about the block alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minilora.experiments.core.judging import FAILS, HOLDS, ONE_RUN, PARTLY, from_range
from minilora.experiments.core.intervals import (interval_text, per_seed_rows, percentile_interval, plot_interval,
                                                 replicate_means)
from minilora.experiments.runs import (RunSpec, describe_failures, fmt, rates_for, resolved, selection_table,
                                       setting_name, summarize, train)

KEY, NUMBER = "compatibility", 13
TITLE = "Model compatibility: GPT-2 and LLaMA blocks"
CLAIM = ("not every architecture responds equally well to LoRA: how close it comes to full fine-tuning "
         "depends on the model it is applied to")
MEASURED = "the gap between LoRA and full fine-tuning on GPT-2 and LLaMA twins"
BASES = ("toy", "llama", "minilm")
JUDGED_BASES = ("toy", "llama")  # the twins; another base is shown beside them from claim 4's runs, without a verdict

TARGET_SET_LABELS = {"qv": "query and value", "default": "PEFT's default targets", "all-linear": "every linear layer",
                     "attention": "all attention"}
DESCRIPTIVE = ("default",)  # shown beside the verdict, not judged: GPT-2's one fused q,k,v update against LLaMA's two

# The verdict (judged on GPT-2 and LLaMA only). A difference between the two gaps counts when its
# whole 95% interval lies at least 5 accuracy points from zero -- the size claim 4 calls a real
# shortfall (its "partly" band starts at 3).
JUDGED = ("qv", 8)  # query and value as separate rank-8 updates, the LoRA paper's setting, on both
DIFF_HOLDS = 0.05


@dataclass(frozen=True)
class Sizes:
    seeds: tuple  # every setting's seeds
    judged_seeds: tuple  # full fine-tuning's and the judged setting's (issue #21: 5 where a verdict rests on them)
    ranks: tuple
    target_sets: tuple


# Claim 4's steps and batch (the toy's grid), so that GPT-2's full fine-tuning and Wq+Wv runs are
# claim 4's own. Full: 31 runs an architecture (25 on LLaMA, whose default is its query and value),
# plus the learning-rate selection's. Quick: full and query+value / PEFT's default at r=8, one seed.
QUICK = Sizes(seeds=(0,), judged_seeds=(0,), ranks=(8,), target_sets=("qv", "default"))
FULL = Sizes(seeds=(0, 1, 2), judged_seeds=(0, 1, 2, 3, 4), ranks=(1, 8, 64), target_sets=("qv", "default", "all-linear"))


def sizes(quick: bool) -> Sizes:
    return QUICK if quick else FULL


def bases(session) -> tuple:
    """The two twins always; MiniLM beside them when it is among the chosen bases."""
    return JUDGED_BASES + tuple(b for b in BASES if b not in JUDGED_BASES and b in session.bases)


def key_text(target_set: str, r: int) -> str:
    return f"{TARGET_SET_LABELS.get(target_set, target_set)} r={r}"


def target_of(base, target_set: str) -> str:
    return {"qv": base.PAPER_TARGET, "default": base.PEFT_TARGET, "all-linear": base.ALL_TARGET}[target_set]


def tuned_targets(base) -> tuple:
    """The target sets whose rates are chosen: query and value, and PEFT's default where it differs."""
    return tuple(dict.fromkeys((base.PAPER_TARGET, base.PEFT_TARGET)))


def grid(base, quick: bool) -> list:
    """The claim's runs on one twin: full fine-tuning and LoRA on each target set at each rank, ``seeds``
    each; full fine-tuning and the judged setting ``judged_seeds`` (a run two sets share is trained once)."""
    s = sizes(quick)
    common = base.grid(quick).common("cls")
    judged_target = target_of(base, JUDGED[0])
    specs = []
    for seed in s.judged_seeds:
        specs.append(RunSpec("cls", "full", seed=seed, **common))
        specs += [RunSpec("cls", "lora", target_of(base, t), r, seed=seed, **common) for t in s.target_sets for r in s.ranks
                  if seed in s.seeds or (target_of(base, t), r) == (judged_target, JUDGED[1])]
    return list(dict.fromkeys(specs))


def gaps(rows: dict, settings: dict) -> dict:
    """``{key: gap}``: full fine-tuning's mean test accuracy minus LoRA's, from ``summarize`` rows (NaN where
    every run of a setting failed); ``settings`` maps each key to the row's name."""
    return {key: rows["full"]["accuracy_mean"] - rows[name]["accuracy_mean"] for key, name in settings.items() if name in rows}


def kept_rows(results, summary: dict) -> dict:
    """``{setting: [each kept run's per-row test accuracy]}``: what the intervals resample (failed runs left out)."""
    out = {}
    for r in results:
        name = setting_name(r.spec)
        if r.spec.seed not in summary[name]["failed"]:
            out.setdefault(name, []).append(r.rows.get("accuracy"))
    return out


def measure(base, session) -> dict:
    if base.name not in JUDGED_BASES:
        return measure_beside(base, session)
    s = sizes(session.quick)
    tuned = tuned_targets(base)
    results = train(session, base, resolved(session, base, grid(base, session.quick), tuned, base.PAPER_TARGET))
    rates, table = rates_for(session, base, "cls", tuned)
    untuned = base.untuned(session)["cls"]
    summary = summarize(results, baseline={"cls": untuned})["cls"]
    names = {key_text(t, r): f"{target_of(base, t)} r={r}" for t in s.target_sets for r in s.ranks}
    env = base.environment(session)
    return {"summary": summary, "untuned": untuned, "rates": rates, "lr_selection": table or None,
            "gaps": gaps(summary, names), "names": names, "keys": {key_text(t, r): [t, r] for t in s.target_sets for r in s.ranks},
            "rows": kept_rows(results, summary), "failed": describe_failures(summary), "runs": len(results),
            "facts": {**base.facts(session), "val_loss": env.provenance.get("base_model_val_loss")},
            "settings": {"mode": "quick" if session.quick else "full", **base.grid(session.quick).common("cls"),
                         "seeds": list(s.seeds), "judged_seeds": list(s.judged_seeds), "ranks": list(s.ranks),
                         "target_sets": {t: target_of(base, t) for t in s.target_sets},
                         "rate_grid": {m: list(base.rate_grid(RunSpec("cls", m))) for m in ("lora", "full")}}}


def measure_beside(base, session) -> dict:
    """Claim 4's runs on another base (MiniLM): the gap at each LoRA setting of its grid, PEFT's default
    target set and all of attention (shown without a verdict)."""
    results = [r for r in train(session, base, base.grid(session.quick).specs()) if r.spec.method != "probe"]
    rows = summarize(results, base.baseline(session))["cls"]
    kept = kept_rows(results, rows)
    rows["probe"] = base.probe(session)
    names = {}
    for name in rows:
        for t, target in (("default", base.PEFT_TARGET), ("attention", base.ALL_TARGET)):
            if name.startswith(f"{target} r="):
                names[key_text(t, int(name.split("=")[1]))] = name
    return {"rows": rows, "gaps": gaps(rows, names), "names": names, "test_rows": kept}


# ---------------------------------------------------------------------------
# judge
# ---------------------------------------------------------------------------


def arms(figures: dict, key: str, arch: str) -> dict | None:
    """``{"full": (seeds, rows), "lora": (seeds, rows)}`` of one architecture's setting ``key``, or ``None`` when
    an arm has no run kept; a ValueError naming the claim when the per-row figures are missing."""
    rows = figures.get("rows") if arch in JUDGED_BASES else figures.get("test_rows")
    if rows is None:
        raise ValueError(f"claim {NUMBER} ({KEY}): {arch}'s results hold no per-row test figures, which its intervals "
                         "need; measure it again with this version (minilora verify --only compatibility)")
    name = figures["names"][key]
    if not rows.get("full") or not rows.get(name):
        return None
    what = f"{arch} {name}"
    return {"full": per_seed_rows(rows["full"], NUMBER, what), "lora": per_seed_rows(rows[name], NUMBER, what)}


def gap_interval(arm: dict | None) -> list | None:
    """The 95% interval of one architecture's gap (full minus LoRA, rows paired); ``None`` for one run."""
    if arm is None or min(len(arm["full"]), len(arm["lora"])) < 2:
        return None
    reps = replicate_means(arm)
    return percentile_interval(reps["full"] - reps["lora"])


def difference_interval(gpt: dict | None, llama: dict | None) -> list | None:
    """The 95% interval of LLaMA's gap minus GPT-2's: both architectures are scored on the same test rows,
    so one draw of the rows serves the four arms (and each arm's seeds are drawn on their own)."""
    if gpt is None or llama is None or min(len(a) for arm in (gpt, llama) for a in arm.values()) < 2:
        return None
    reps = replicate_means({"gf": gpt["full"], "gl": gpt["lora"], "lf": llama["full"], "ll": llama["lora"]})
    return percentile_interval((reps["lf"] - reps["ll"]) - (reps["gf"] - reps["gl"]))


def differs(difference: float, interval) -> list:
    """[at worst, at best]: whether the two gaps differ by at least DIFF_HOLDS. Certain when the whole interval
    lies beyond it on one side (or the setting failed on one architecture only: an infinite difference), ruled out
    when it lies inside (-DIFF_HOLDS, DIFF_HOLDS); otherwise -- or with no interval (one run) -- open."""
    if not np.isfinite(difference):
        return [True, True]
    if interval is None:
        return [False, True]
    low, high = interval
    return [bool(low >= DIFF_HOLDS or high <= -DIFF_HOLDS), not (-DIFF_HOLDS < low and high < DIFF_HOLDS)]


def differences(toy: dict, llama: dict) -> dict:
    """``{setting: {"difference": LLaMA's gap - GPT-2's, "interval", "differs": [worst, best]}}`` over the settings
    both have, in (target set, r) order. A setting whose every run failed on one architecture only has an infinite
    difference (it failed there); one that failed on both is left out."""
    out = {}
    order = list(TARGET_SET_LABELS)  # the judged set first
    for key in sorted(toy["gaps"].keys() & llama["gaps"].keys(), key=lambda k: (order.index(toy["keys"][k][0]), toy["keys"][k][1])):
        g, l = toy["gaps"][key], llama["gaps"][key]
        if np.isnan(g) and np.isnan(l):
            continue
        if np.isnan(g) or np.isnan(l):
            d, interval = (float("inf") if np.isnan(l) else float("-inf")), None
        else:
            d, interval = l - g, difference_interval(arms(toy, key, "toy"), arms(llama, key, "llama"))
        out[key] = {"difference": d, "interval": interval, "differs": differs(d, interval)}
    return out


def compare(slots: dict) -> dict:
    """The two twins' gaps set against each other, and the verdict read off the intervals of their difference:
    holds when they differ at the judged setting, partly when only at another judged-on setting (not PEFT's default
    row), does not hold when nowhere; inconclusive between the best and the worst the intervals allow."""
    figures = {name: slot["figures"] for name, slot in slots.items()}
    toy, llama = figures["toy"], figures["llama"]
    diffs = differences(toy, llama)
    judged = key_text(*JUDGED)
    others = [k for k in diffs if k != judged and toy["keys"][k][0] not in DESCRIPTIVE]

    def level(i: int) -> str:  # i = 0: the worst the intervals allow, 1: the best
        if judged in diffs and diffs[judged]["differs"][i]:
            return HOLDS
        return PARTLY if any(diffs[k]["differs"][i] for k in others) else FAILS

    verdict = from_range(level(0), level(1))
    if (level(0), level(1)) == (FAILS, HOLDS) and diffs.get(judged, {}).get("interval", 0) is None:
        verdict = ONE_RUN
    gap_intervals = {name: {key: gap_interval(arms(f, key, name)) for key in f["gaps"] if np.isfinite(f["gaps"][key])}
                     for name, f in figures.items()}
    return {"verdict": verdict, "differences": diffs, "gap_intervals": gap_intervals, "judged": judged,
            "clear": [k for k, v in diffs.items() if v["differs"][0] and k in (judged, *others)],
            "descriptive": [k for k in diffs if toy["keys"][k][0] in DESCRIPTIVE],
            "thresholds": {"judged setting": judged, "a difference counts when its 95% interval lies beyond +- (accuracy)": DIFF_HOLDS}}


# ---------------------------------------------------------------------------
# render
# ---------------------------------------------------------------------------


def plot_gaps(per_arch: dict, keys: dict, bert: dict | None, ax) -> None:
    """Each architecture's gap (full fine-tuning minus LoRA, accuracy points) against rank, with its 95% interval
    (``per_arch``: ``{arch: (label, gaps, intervals)}``); none drawn for one run."""
    styles = {"toy": "C0", "llama": "C1"}
    for arch, (label, g, ci) in per_arch.items():
        for t, ls in (("qv", "o-"), ("default", "s:"), ("all-linear", "^--")):
            ranks = sorted(keys[k][1] for k in g if keys[k][0] == t and np.isfinite(g[k]))
            if not ranks or (arch == "llama" and t == "default"):  # LLaMA's default is its query and value
                continue
            names = [key_text(t, r) for r in ranks]
            y = np.array([100 * g[n] for n in names])
            err = np.array([[100 * (g[n] - ci[n][0]), 100 * (ci[n][1] - g[n])] if ci.get(n) else [0.0, 0.0] for n in names]).T
            ax.errorbar(ranks, y, yerr=err, fmt=ls, color=styles.get(arch, "C2"), capsize=3,
                        label=f"{label}, {TARGET_SET_LABELS[t]}")
    if bert is not None:
        points = sorted((int(k.split("r=")[1]), v) for k, v in bert["gaps"].items()
                        if k.startswith(TARGET_SET_LABELS["default"]) and np.isfinite(v))
        if points:
            ax.plot([r for r, _ in points], [100 * g for _, g in points], "s:", color="gray",
                    label="all-MiniLM-L6-v2 (BERT), query + value (no verdict)")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel("full fine-tuning minus LoRA\n(test accuracy, points; 95% interval)")
    ax.set_title("How far LoRA falls short of full fine-tuning, by architecture")
    if ax.get_legend_handles_labels()[0]:  # a setting whose every run failed has no point
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


ARCH_NAMES = {"toy": "GPT-2", "llama": "LLaMA"}


def points(value: float, interval=False, sign: str = "") -> str:
    """An accuracy figure in points with its 95% interval ("one run: no interval" where an arm rests on one run;
    none at all for ``interval=False``)."""
    if not np.isfinite(value):
        return "not measurable (every run of one architecture failed)" if np.isinf(value) else "not measurable (every run failed)"
    return f"{100 * value:{sign}.1f} points" + ("" if interval is False else interval_text(interval, 100))


def differs_text(flags: list) -> str:
    return {(True, True): "yes", (False, False): "no", (False, True): "cannot tell"}[tuple(flags)]


def edge_settings(figures: dict) -> list:
    """The tuned settings whose chosen rate is the lowest or the highest one tried: a rate further out might do better."""
    out = []
    for name, (rate, rows) in (figures["lr_selection"] or {}).items():
        tried = sorted(float(r) for r in rows)
        if len(tried) > 1 and float(rate) in (tried[0], tried[-1]):
            out.append(f"{name} ({float(rate):g}, the {'top' if float(rate) == tried[-1] else 'bottom'} of {', '.join(f'{r:g}' for r in tried)})")
    return out


def difference_plot(comp: dict, ax) -> None:
    """The judged difference of the gaps with its 95% interval, against +-DIFF_HOLDS."""
    d = comp["differences"].get(comp["judged"], {"difference": float("nan"), "interval": None})
    if np.isfinite(d["difference"]):
        plot_interval(ax, d["difference"], d["interval"], {"counts above": DIFF_HOLDS, "counts below": -DIFF_HOLDS},
                      f"LLaMA's gap minus GPT-2's, {comp['judged']} (accuracy points)", scale=100)


def render_claim(claim: dict, plot, quick: bool) -> dict:
    """The whole section: both twins, their difference, and another base beside them."""
    import matplotlib.pyplot as plt

    slots, comp = claim["bases"], claim["comparison"]
    f = {arch: slots[arch]["figures"] for arch in JUDGED_BASES}
    ci = comp["gap_intervals"]
    bert_name = next((name for name in slots if name not in JUDGED_BASES), None)
    bert = slots[bert_name]["figures"] if bert_name else None
    fig, (ax, ax_d) = plt.subplots(2, 1, figsize=(8.6, 6.0), gridspec_kw={"height_ratios": [4, 1]})
    plot_gaps({arch: (ARCH_NAMES[arch], f[arch]["gaps"], ci[arch]) for arch in JUDGED_BASES}, f["toy"]["keys"], bert, ax)
    difference_plot(comp, ax_d)
    fig.tight_layout()
    plots = [plot(fig, "compatibility_gaps.png")]
    judged_key = comp["judged"]
    judged = {arch: f[arch]["gaps"].get(judged_key, float("nan")) for arch in JUDGED_BASES}
    d = comp["differences"].get(judged_key, {"difference": float("nan"), "interval": None, "differs": [False, True]})
    s = f["toy"]["settings"]
    trained = {arch: f[arch]["summary"][f[arch]["names"][judged_key]]["trainable"] for arch in JUDGED_BASES}

    def loss_text(arch):
        loss = f[arch]["facts"]["val_loss"]
        return "not recorded" if loss is None else f"{loss:.4f} nats/byte"

    lines = [
        ("**Quick-mode figures** (one seed, a few dozen steps, r=8 only): rough, for a demo only. " if quick else "")
        + "Two base models that differ only in their block -- GPT-2's (LayerNorm, learned positions, GELU MLP, "
        "multi-head attention) and LLaMA's (RMSNorm, RoPE, SwiGLU, grouped-query attention) -- with "
        f"{f['toy']['facts']['parameters']:,} and {f['llama']['facts']['parameters']:,} parameters, "
        "pre-trained on the same bytes with the same steps, schedule and seed; prose validation loss "
        f"{loss_text('toy')} (GPT-2) and {loss_text('llama')} (LLaMA). Both fine-tuned on claim 4's classification task "
        f"and scored on the same test rows (chance {1 / f['toy']['facts']['n_classes']:.3f}; untuned: GPT-2 "
        f"{f['toy']['untuned']['accuracy']:.3f}, LLaMA {f['llama']['untuned']['accuracy']:.3f}) with its sizes: "
        f"{s['steps']} AdamW steps of {s['batch_size']} rows of 64 bytes, alpha = 2 r; seeds {s['judged_seeds']} for full "
        f"fine-tuning and the judged setting, {s['seeds']} for the others.",
        "",
        f"Judged: query and value as two separate rank-8 updates on both (GPT-2: the q and v slices of c_attn, "
        f"`enable_lora=[True, False, True]`, {trained['toy']:,} trained numbers; LLaMA: q_proj and v_proj, "
        f"{trained['llama']:,}). LoRA falls {points(judged['toy'], ci['toy'].get(judged_key))} short of full fine-tuning on "
        f"GPT-2 and {points(judged['llama'], ci['llama'].get(judged_key))} on LLaMA: a difference of "
        f"**{points(d['difference'], d['interval'], '+')}** (LLaMA minus GPT-2; the test rows paired across all four arms). "
        f"A difference counts when its whole 95% interval lies at least {100 * DIFF_HOLDS:.0f} points from zero, and is "
        f"ruled out when it lies inside ±{100 * DIFF_HOLDS:.0f}; here: {differs_text(d['differs'])}. It counts at "
        + (", ".join(comp["clear"]) if comp["clear"] else "no setting") + ". "
        "PEFT's default row (GPT-2's one fused q,k,v update against LLaMA's two) is shown, not judged.",
        "",
        ("**Learning rates** (quick mode: claim 4's defaults, not chosen): " if quick else
         "**Learning rates**, chosen on the validation split for each architecture alike (one seed at each of "
         f"{', '.join(f'{r:g}' for r in s['rate_grid']['lora'])} for LoRA and "
         f"{', '.join(f'{r:g}' for r in s['rate_grid']['full'])} for full fine-tuning; every other setting takes "
         "the nearest tuned one's): ")
        + "; ".join(f"{ARCH_NAMES[a]} " + ", ".join(f"{n} {r:g}" for n, r in f[a]["rates"].items()) for a in JUDGED_BASES) + ".",
    ]
    if not quick and all(f[a]["lr_selection"] for a in JUDGED_BASES):
        edges = [f"{ARCH_NAMES[a]} {e}" for a in JUDGED_BASES for e in edge_settings(f[a])]
        lines += ["", *selection_table({ARCH_NAMES[a]: f[a]["lr_selection"] for a in JUDGED_BASES}, first="architecture"),
                  "", "Still at an end of the rates tried (a rate further out might do better): "
                  + ("; ".join(edges) if edges else "none") + "."]
    failed = [f"{ARCH_NAMES[a]} {line}" for a in JUDGED_BASES for line in f[a]["failed"]]
    lines += ["", "**Failed runs** (left out of every mean and interval): a run fails when its loss diverges or it ends "
              "no better than its untuned base on the validation split: " + ("; ".join(failed) if failed else "none") + ".",
              "", "| architecture | setting | lr | trainable | test accuracy | gap to full (points, 95% interval) |",
              "|---|---|---|---|---|---|"]
    for arch in JUDGED_BASES:
        by_name = {name: key for key, name in f[arch]["names"].items()}
        for name, row in f[arch]["summary"].items():
            key = by_name.get(name)
            gap = "" if key is None or key not in f[arch]["gaps"] else points(f[arch]["gaps"][key], ci[arch].get(key)).replace(" points", "")
            lr = ", ".join(f"{v:g}" for v in row["lr"])
            lines.append(f"| {ARCH_NAMES[arch]} | {name} | {lr} | {row['trainable']:,} | {fmt(row, 'accuracy')} | {gap} |")
    lines += ["", "| setting | GPT-2 gap | LLaMA gap | difference (LLaMA - GPT-2), 95% interval | counts? |", "|---|---|---|---|---|"]
    for key, dd in comp["differences"].items():
        g, l = f["toy"]["gaps"][key], f["llama"]["gaps"][key]
        counts = "shown, not judged" if key in comp["descriptive"] else differs_text(dd["differs"])
        lines.append(f"| {key} | {points(g, ci['toy'].get(key)).replace(' points', '')} | "
                     f"{points(l, ci['llama'].get(key)).replace(' points', '')} | "
                     f"{points(dd['difference'], dd['interval'], '+').replace(' points', '')} | {counts} |")
    if bert is not None:
        rows = bert["rows"]
        ordered = sorted(bert["gaps"].items(), key=lambda kv: (not kv[0].startswith(TARGET_SET_LABELS["default"]),
                                                               int(kv[0].split("r=")[1])))
        lines += ["", "**all-MiniLM-L6-v2 (BERT), shown without a verdict** (claim 4's runs on the real model: "
                  "22.7M parameters, a different corpus, objective and tokenizer, and a classifier head; its baseline "
                  f"is the linear probe, {rows['probe']['accuracy_mean']:.3f}): full fine-tuning "
                  f"{fmt(rows['full'], 'accuracy')}; the gap to it "
                  + ", ".join(f"{'query+value' if k.startswith(TARGET_SET_LABELS['default']) else 'all attention'} "
                              f"r={k.split('r=')[1]} {points(g, ci[bert_name].get(k))}" for k, g in ordered) + "."]
    return {"figure": f"gap at query+value r=8: GPT-2 {points(judged['toy'])}, LLaMA {points(judged['llama'])}; "
                      f"difference {points(d['difference'], d['interval'], '+')}",
            "measured": MEASURED + ", r in " + ", ".join(map(str, s["ranks"])), "body": "\n".join(lines), "plots": plots}
