"""Claim 4: LoRA fine-tunes as well as full fine-tuning ("comparable performance"), rank by rank.

    The source article (docs/claims.md, claim 4): LoRA matches full fine-tuning on the
    task while training a small share of the weights, though a very specialised task
    may still do better when every weight is trained.

Each base is fine-tuned on its tasks (the toy: docstring -> package, and prose -> code;
MiniLM: docstring -> package) in full and with LoRA at several ranks on several target sets,
with several seeds: the base's grid (``base.grid``), trained once per verify
(``runs.train``), which claims 5, 6, 8 and 9 read too.
"""

from __future__ import annotations

import numpy as np

from minilora.experiments.core import combine, judge_gap, judge_interval
from minilora.experiments.core.intervals import (interval_text, per_seed_rows, percentile_interval, plot_interval,
                                                 replicate_means)
from minilora.experiments.runs import (RunSpec, describe_failures, edge_note, fmt, metric, rates_at_edge, rates_for,
                                       rates_text, selection_table, setting_name, summarize, train)

KEY, NUMBER = "accuracy", 4
TITLE = "Comparable performance; rank vs accuracy"
CLAIM = ("LoRA reaches about the task performance of full fine-tuning while training a small share of the "
         "weights; a highly specialised task may still gain from training every weight")
MEASURED = "full fine-tuning vs LoRA across ranks, on both base models"
BASES = ("toy", "minilm")

# The verdict. Judged at the LoRA paper's default rank, r = 8, fixed in advance (not the best
# of the grid, which would pick out a lucky seed):
#  * classification, LoRA on Wq, Wv (the base's PAPER_TARGET): the accuracy gap to full
#    fine-tuning, in points;
#  * domain shift, LoRA on every matrix (ALL_TARGET): the share of full fine-tuning's improvement
#    of the code validation loss (over the base model) that LoRA recovers.
JUDGED_RANK = 8
CLS_GAP_HOLDS, CLS_GAP_PARTLY = 0.03, 0.10  # accuracy points below full fine-tuning (0.03 = 3 points)
CODE_SHARE_HOLDS, CODE_SHARE_PARTLY = 0.90, 0.60  # share of full fine-tuning's loss improvement recovered
MIN_FULL_GAIN = 0.01  # nats/byte: below this, full fine-tuning improved too little for a share to mean anything
PARTS = {"cls": "classification", "code": "domain shift"}


# ---------------------------------------------------------------------------
# measure
# ---------------------------------------------------------------------------


def judged_target(base, task: str) -> str:
    """The target set of the LoRA setting judged on ``task``: Wq, Wv (classification), every matrix (code)."""
    return base.PAPER_TARGET if task == "cls" else base.ALL_TARGET


def judged_settings(base) -> dict:
    """The setting judged on each task: LoRA at r = 8 on ``judged_target``."""
    return {task: f"{judged_target(base, task)} r={JUDGED_RANK}" for task in base.TASKS}


def judged_specs(base, grid) -> list:
    """The runs the judged settings add at the grid's ``more_seeds`` (every other setting keeps the grid's
    seeds: described, not judged): each task's full fine-tuning (and MiniLM's probe) and judged LoRA setting."""
    out = []
    for seed in grid.judged_seeds[len(grid.seeds):]:
        for task, _ in grid.tasks:
            common = dict(seed=seed, **grid.common(task))
            out += [RunSpec(task, method, **common) for method in base.BASELINE_METHODS]
            out.append(RunSpec(task, "lora", judged_target(base, task), JUDGED_RANK, **common))
    return out


def seeds_text(s: dict) -> str:
    """The seeds of the runs, and those the judged settings add, for the render."""
    more = [seed for seed in s.get("judged_seeds", s["seeds"]) if seed not in s["seeds"]]
    return f"seeds {s['seeds']}" + (f"; the judged settings (full fine-tuning and the judged LoRA setting) also seeds "
                                    f"{more}, {len(s['seeds']) + len(more)} in all (the other settings are described, "
                                    f"not judged)" if more else "")


def measure(base, session) -> dict:
    grid = base.grid(session.quick)
    results = train(session, base, grid.specs() + judged_specs(base, grid))
    chosen = {task: rates_for(session, base, task) for task in base.TASKS}
    baseline = base.baseline(session)
    untuned = base.untuned(session)
    summary = summarize([r for r in results if r.spec.method != "probe"], baseline)
    probe = [r for r in results if r.spec.method == "probe"]
    if probe:  # the probe's own row, judged against nothing
        summary["cls"]["probe"] = summarize(probe)["cls"]["probe"]
    judged = judged_settings(base)
    facts = base.facts(session)
    return {"summary": summary, "untuned": untuned, "baseline": baseline, "judged": judged,
               **headline(summary, untuned, judged), "rows": judged_rows(results, summary, untuned, judged),
               "learning_rates": {task: rates for task, (rates, _) in chosen.items()},
               "lr_selection": None if session.quick else {task: table for task, (_, table) in chosen.items()},
               "lr_at_edge": [] if session.quick else rates_at_edge({task: table for task, (_, table) in chosen.items()}),
               "failed": [line for task in summary for line in describe_failures(summary[task])],
               "chance": 1 / facts["n_classes"], "facts": facts, "target_labels": base.TARGET_LABELS,
               "curves": {base.label(r.spec): r.losses for r in results if r.spec.seed == grid.seeds[0]},
               "settings": {"mode": "quick" if session.quick else "full", "seeds": list(grid.seeds),
                            "judged_seeds": list(grid.judged_seeds),
                            "batch_size": grid.batch_size, "alpha": "2 r", "runs": len(results),
                            "tasks": {task: {"steps": g.steps, "targets": {t: list(ranks) for t, ranks in g.targets}}
                                      for task, g in grid.tasks},
                            "lr_grid": None if session.quick else {
                                task: {m: list(base.rate_grid(RunSpec(task, m))) for m in (*base.BASELINE_METHODS, "lora")}
                                for task in base.TASKS}}}


def headline(summary: dict, untuned: dict, judged: dict) -> dict:
    """The judged figures: the classification gap (full minus LoRA accuracy) and, with a code task,
    the share of full fine-tuning's loss improvement that LoRA recovers."""
    out = {}
    cls = summary["cls"]
    out["cls_gap"] = cls["full"]["accuracy_mean"] - cls[judged["cls"]]["accuracy_mean"]
    if "code" in summary:
        code = summary["code"]
        full_gain = untuned["code"]["loss"] - code["full"]["loss_mean"]
        lora_gain = untuned["code"]["loss"] - code[judged["code"]]["loss_mean"]
        if full_gain >= MIN_FULL_GAIN:
            out["code_share"] = lora_gain / full_gain
        else:  # full fine-tuning barely moved: LoRA "recovers all of it" if it did better, else nothing is measurable
            out["code_share"] = float("inf") if lora_gain > full_gain else float("nan")
    return out


def judged_rows(results, summary: dict, untuned: dict, judged: dict) -> dict:
    """What the intervals resample: ``{task: {"full": [...], "lora": [...], "untuned": [...]}}``, each run's
    per-row test figure (accuracy on classification, loss on code) for full fine-tuning and the judged LoRA
    setting, the runs that failed left out as they are from the means; the untuned base model's rows beside."""
    out = {}
    for task, setting in judged.items():
        key = metric(task)[0]
        arms = {"full": "full", "lora": setting}
        out[task] = {arm: [r.rows.get(key) for r in results if r.spec.task == task and r.spec.method != "probe"
                           and setting_name(r.spec) == name and r.spec.seed not in summary[task][name]["failed"]]
                     for arm, name in arms.items()}
        out[task]["untuned"] = untuned[task].get("rows", {}).get(key)
    return out


# ---------------------------------------------------------------------------
# judge
# ---------------------------------------------------------------------------


def intervals(figures: dict) -> dict:
    """The 95% intervals of the judged figures (``core.intervals``: seeds and test rows resampled, rows
    paired between the arms): ``{"cls_gap": ([low, high] or None, its verdict), "code_share": [low, high] or None}``;
    ``None`` where an arm rests on one run (or, for the gap, every run of an arm failed: "does not hold"); no
    share where it is not measurable."""
    if "rows" not in figures:
        raise ValueError(f"claim {NUMBER} ({KEY}): the results hold no per-row test figures, which its intervals "
                         "need; measure it again with this version (minilora verify --only accuracy)")
    rows, out = figures["rows"], {}
    cls = rows["cls"]
    out["cls_gap"] = judge_gap(cls["lora"], cls["full"], CLS_GAP_HOLDS, CLS_GAP_PARTLY, NUMBER, "classification")
    code = rows.get("code")
    if code and code["full"] and code["lora"] and np.isfinite(figures["code_share"]):
        what = "domain shift"
        full, lora = per_seed_rows(code["full"], NUMBER, what), per_seed_rows(code["lora"], NUMBER, what)
        if min(len(full), len(lora)) < 2:
            out["code_share"] = None
        else:
            reps = replicate_means({"full": full, "lora": lora, "untuned": per_seed_rows([code["untuned"]], NUMBER, what)})
            out["code_share"] = percentile_interval((reps["untuned"] - reps["lora"]) / (reps["untuned"] - reps["full"]))
    return out


def verdict(figures: dict) -> dict:
    """Classification is an "on a par" part: judged as non-inferiority on LoRA - full fine-tuning's interval
    (``core.non_inferiority``). Domain shift: the share's interval against its thresholds (``judge_interval``).
    A figure that is not measurable (NaN: every run of an arm failed, or full fine-tuning barely moved) does
    not hold, as before; one that rests on one run is "inconclusive (one run)"."""
    judged = intervals(figures)
    ci = {key: value[0] if key == "cls_gap" else value for key, value in judged.items()}
    parts = {"classification": judged["cls_gap"][1]}
    thresholds = {"judged settings": figures["judged"], "classification gap holds <=": CLS_GAP_HOLDS,
                  "classification gap partly <=": CLS_GAP_PARTLY}
    if "code_share" in figures:
        share = figures["code_share"]
        interval = ci.get("code_share", [share, share])  # not measurable, or infinite: the point, as before
        parts["domain shift"] = judge_interval(interval, CODE_SHARE_HOLDS, CODE_SHARE_PARTLY)
        thresholds.update({"code share holds >=": CODE_SHARE_HOLDS, "code share partly >=": CODE_SHARE_PARTLY,
                           "minimum full fine-tuning gain (nats)": MIN_FULL_GAIN})
    return {"verdict": combine(*parts.values()), "parts": parts, "intervals": ci, "thresholds": thresholds}


# ---------------------------------------------------------------------------
# render
# ---------------------------------------------------------------------------


def plot_rank_curves(summary: dict, task: str, ax, base: dict | None = None, target_labels: dict | None = None,
                     base_label: str = "base model (no fine-tuning)", title: str | None = None) -> None:
    """The headline figure against rank, one line (mean, band = ±1 std over seeds) per target
    set, full fine-tuning as a horizontal line, ``base`` (``{task: figures}``) as a dotted one."""
    key, higher = metric(task)
    rows = summary[task]
    full = rows["full"]
    ax.axhline(full[f"{key}_mean"], color="k", lw=1.5, label="full fine-tuning (±1 std)")
    ax.axhspan(full[f"{key}_mean"] - full[f"{key}_std"], full[f"{key}_mean"] + full[f"{key}_std"], color="k", alpha=0.1)
    if base is not None:
        ax.axhline(base[task][key], color="gray", ls=":", label=base_label)
    labels = target_labels or {}
    targets = sorted({n.split(" r=")[0] for n in rows if " r=" in n and "alpha" not in n and "rslora" not in n},
                     key=lambda t: list(labels).index(t) if t in labels else len(labels))
    for t in targets:
        ranks = sorted(int(n.split(" r=")[1]) for n in rows if n.startswith(t + " r=") and n.split(" r=")[1].isdigit()
                       and np.isfinite(rows[n][f"{key}_mean"]))  # a setting whose every run failed has no point
        if not ranks:
            continue
        means = np.array([rows[f"{t} r={r}"][f"{key}_mean"] for r in ranks])
        stds = np.array([rows[f"{t} r={r}"][f"{key}_std"] for r in ranks])
        line, = ax.plot(ranks, means, "o-", label=f"LoRA on {labels.get(t, t)}")
        ax.fill_between(ranks, means - stds, means + stds, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel({"accuracy": "test accuracy", "loss": "code validation loss (nats/byte)"}[key])
    ax.set_title(title or {"cls": "Docstring -> package (6 classes)", "code": "Domain shift: prose -> Python code"}[task])
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _pct(share: float, verdict: dict | None = None) -> str:
    if share != share:
        return "(not measurable: full fine-tuning barely improved)"
    if share == float("inf"):
        return "all (full fine-tuning barely improved; LoRA improved more)"
    return f"{100 * share:.0f}%" + _interval_text((verdict or {}).get("intervals", {}), "code_share", 100, "%")


def _gap_points(gap: float, verdict: dict | None = None) -> str:
    """An accuracy gap in points with its 95% interval, or why there is none: every run of the LoRA setting
    failed (its mean is NaN), or one of the two arms rests on one run."""
    if gap != gap:
        return "not measurable (every run of that setting failed; see the failed runs)"
    return f"{100 * gap:.1f} points" + _interval_text((verdict or {}).get("intervals", {}), "cls_gap", 100, " points")


def _over(row: dict) -> str:
    """" (mean ± std over n seeds)" where there is a spread to show (``fmt`` labels a single run itself)."""
    return f" (mean ± std over {row['n']} seeds)" if row["n"] > 1 else ""


def _interval_text(intervals: dict, key: str, scale: float, unit: str) -> str:
    """The interval of a judged figure, or "" for one judged on its point alone (not measurable, infinite)."""
    return interval_text(intervals[key], scale, unit) if key in intervals else ""


def render(figures: dict, verdict: dict, plot, quick: bool) -> dict:
    if "probe" in figures["summary"]["cls"]:
        return _render_encoder(figures, verdict, plot, quick)
    return _render_decoder(figures, verdict, plot, quick)


def _interval_plot(figures: dict, verdict: dict, plot) -> str:
    """The judged figures with their 95% intervals against their thresholds (one panel each; a gap that is not
    measurable leaves its panel empty, a share that is not measurable has none)."""
    import matplotlib.pyplot as plt

    panels = [("cls_gap", f"accuracy points LoRA (r={JUDGED_RANK}) is below full fine-tuning",
               {"holds": CLS_GAP_HOLDS, "partly": CLS_GAP_PARTLY})]
    if np.isfinite(figures.get("code_share", float("nan"))):
        panels.append(("code_share", "% of full fine-tuning's code-loss gain LoRA recovers",
                       {"holds": CODE_SHARE_HOLDS, "partly": CODE_SHARE_PARTLY}))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.6, 1.6 * len(panels) + 0.4), squeeze=False)
    for ax, (key, label, thresholds) in zip(axes[:, 0], panels):
        plot_interval(ax, figures[key], verdict["intervals"].get(key), thresholds, label, scale=100)
    fig.tight_layout()
    return plot(fig, "accuracy_intervals.png")


def _rank_plot(figures, task, plot, name, **kw) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.6, 4.2))
    plot_rank_curves(figures["summary"], task, ax, target_labels=figures["target_labels"], **kw)
    fig.tight_layout()
    return plot(fig, name)


def _table(figures: dict, with_task: bool) -> list:
    head = "| task | setting | lr | trainable | loss | accuracy |" if with_task else "| setting | lr | trainable | test loss | test accuracy |"
    lines = ["", head, "|---|---|---|---|---|---|" if with_task else "|---|---|---|---|---|"]
    for task, rows in figures["summary"].items():
        for name, row in rows.items():
            lr = ", ".join(f"{v:g}" for v in row["lr"])
            lines.append((f"| {task} " if with_task else "") + f"| {name} | {lr} | {row['trainable']:,} | {fmt(row, 'loss')} | "
                         f"{fmt(row, 'accuracy')} |")
    return lines


def _render_decoder(figures: dict, verdict: dict, plot, quick: bool) -> dict:
    """A GPT base: classification and domain shift against the untuned base model."""
    s, parts, judged = figures["settings"], verdict["parts"], figures["judged"]
    base = figures["untuned"]
    plots = [_rank_plot(figures, "cls", plot, "accuracy_vs_rank.png", base=base),
             _rank_plot(figures, "code", plot, "code_loss_vs_rank.png", base=base), _interval_plot(figures, verdict, plot)]
    cls, code = figures["summary"]["cls"], figures["summary"]["code"]
    best_cls = max((n for n in cls if n != "full"), key=lambda n: cls[n]["accuracy_mean"])
    best_code = min((n for n in code if n != "full"), key=lambda n: code[n]["loss_mean"])
    total = figures["facts"]["parameters"]
    rates = figures["learning_rates"]
    steps = {task: t["steps"] for task, t in s["tasks"].items()}
    mode = "**Quick-mode figures** (one seed, a few dozen steps): rough, for a demo only. " if quick else ""
    lines = [
        mode + f"Classification (chance {figures['chance']:.3f}, base model {base['cls']['accuracy']:.3f}): "
        f"full fine-tuning reaches {fmt(cls['full'], 'accuracy')} test accuracy{_over(cls['full'])}; "
        f"LoRA on Wq+Wv at r=8 reaches {fmt(cls[judged['cls']], 'accuracy')} with "
        f"{cls[judged['cls']]['trainable']:,} trainable parameters ({100 * cls[judged['cls']]['trainable'] / total:.2f}% of "
        f"{total:,}); the gap to full fine-tuning: {_gap_points(figures['cls_gap'], verdict)} ({parts['classification']}). "
        f"The best LoRA setting is {best_cls} at {fmt(cls[best_cls], 'accuracy')}.",
        "",
        f"Domain shift (code validation loss, base model {base['code']['loss']:.3f} nats/byte): full fine-tuning "
        f"reaches {fmt(code['full'], 'loss')}, LoRA on every matrix at r=8 {fmt(code[judged['code']], 'loss')}, "
        f"which recovers {_pct(figures['code_share'], verdict)} of full fine-tuning's improvement ({parts['domain shift']}); "
        f"next-byte accuracy {code['full']['accuracy_mean']:.3f} (full) vs {code[judged['code']]['accuracy_mean']:.3f} (LoRA). "
        f"The best LoRA setting is {best_code} at {fmt(code[best_code], 'loss')}.",
        "",
        f"Every run: {steps['cls']} (classification) or {steps['code']} (code) AdamW steps of {s['batch_size']} rows of "
        "64 bytes, warm-up a tenth of the steps then cosine decay to a tenth of the peak; alpha = 2 r (scaling "
        f"alpha/r = 2), weight decay 0.1, gradient clipping 1.0, {seeds_text(s)}. Ranks count per adapted matrix: "
        "Wq+Wv at r=8 has a rank-8 update of Wq and another of Wv.",
        "",
        ("**Learning rates** (quick mode: not chosen again; the defaults, which an earlier sweep found on the "
         "validation split): " if quick else
         "**Learning rates**, chosen on the validation split (one seed at each rate; the best among the runs that beat "
         "the untuned base model there; other settings take the nearest tuned one's, see "
         "`minilora/experiments/runs/rates.py`): ")
        + f"classification {rates_text(rates['cls'])}; code {rates_text(rates['code'])}.",
    ]
    if figures["lr_selection"]:
        lines += ["", *selection_table(figures["lr_selection"]), *edge_note(figures["lr_selection"])]
    failures = figures["failed"]
    lines += ["", "**Failed runs** (left out of every mean, and of claim 9's ranges; decided on the validation split, "
              "before the test split is read): a run fails when its loss diverges or it ends no better than the untuned "
              f"base model there (classification accuracy {base['cls']['val_accuracy']:.3f}, code loss "
              f"{base['code']['val_loss']:.3f}): "
              + ("; ".join(failures) if failures else "none") + "."]
    return {"figure": f"cls gap (Wq+Wv r=8) {_gap_points(figures['cls_gap'], verdict)}; code: LoRA recovers "
                      f"{_pct(figures['code_share'], verdict)} of full FT's gain",
            "body": "\n".join(lines + _table(figures, True)), "plots": plots}


QUICK_NOTE = "**Quick-mode figures** ({steps} steps, one seed, no learning-rate selection): rough, for a demo only. "
POOLER_NOTE = (
    "`pooler` is in `modules_to_save` beside the classifier (which `task_type=\"SEQ_CLS\"` adds): this checkpoint's "
    "pooler was never trained -- sentence-transformers pools by mean, and its `pooler.dense.bias` is exactly zero -- "
    "while Hugging Face's `BertForSequenceClassification` classifies through it, tanh(pooler(h_[CLS])). Full "
    "fine-tuning trains it; LoRA without it would classify through a random layer. The linear probe trains the same "
    "two modules with the encoder frozen, so it is the floor LoRA must rise above.")


def sizes_text(facts: dict) -> str:
    """A pretrained encoder's sizes and the task's rows, from ``base.facts``."""
    rows = facts["rows"]
    return (f"{facts['name']}: {facts['layers']} layers, hidden {facts['hidden']}, {facts['heads']} heads, intermediate "
            f"{facts['intermediate']}, vocabulary {facts['vocab']:,}, {facts['parameters']:,} parameters in the encoder and "
            f"pooler (+ a {facts['hidden']} x {facts['num_labels']} classifier). The task's rows "
            f"({rows['train']:,} train, {rows['val']} validation, {rows['test']} test) "
            f"are {facts['median_length']} WordPieces at the median and {facts['max_length']} at most, [CLS] and [SEP] counted")


def _render_encoder(figures: dict, verdict: dict, plot, quick: bool) -> dict:
    """A pretrained encoder with a classifier head: classification against the linear probe."""
    facts, s, judged_name = figures["facts"], figures["settings"], figures["judged"]["cls"]
    rows = figures["summary"]["cls"]
    steps = s["tasks"]["cls"]["steps"]
    v = verdict["parts"]["classification"]
    probe_line = {"cls": {"accuracy": rows["probe"]["accuracy_mean"]}}
    plots = [_rank_plot(figures, "cls", plot, "accuracy_vs_rank.png", base=probe_line,
                        base_label="linear probe (head + pooler; encoder frozen)",
                        title=f"{facts['name']}: docstring -> package (6 classes)"), _interval_plot(figures, verdict, plot)]
    best = max((n for n in rows if n not in ("full", "probe") and np.isfinite(rows[n]["accuracy_mean"])),
               key=lambda n: rows[n]["accuracy_mean"], default=judged_name)
    judged = rows[judged_name]
    hidden, labels = facts["hidden"], facts["num_labels"]
    lines = [
        (QUICK_NOTE.format(steps=steps) if quick else "") + sizes_text(facts) + ".",
        "",
        f"Test accuracy (chance {figures['chance']:.3f}; the pretrained encoder with a random classifier "
        f"{figures['untuned']['cls']['accuracy']:.3f}): the linear probe reaches {fmt(rows['probe'], 'accuracy')}, full fine-tuning "
        f"{fmt(rows['full'], 'accuracy')}{_over(rows['full'])}, LoRA on query + value at r=8 "
        f"{fmt(judged, 'accuracy')} with {judged['trainable']:,} trained parameters "
        f"({100 * judged['trainable'] / (facts['parameters'] + hidden * labels + labels):.2f}%"
        f" of the model, pooler and classifier included): a gap of **{_gap_points(figures['cls_gap'], verdict)}** to full fine-tuning "
        f"({v}; thresholds {100 * CLS_GAP_HOLDS:.0f} / {100 * CLS_GAP_PARTLY:.0f} points, as on the toy base). "
        f"The best LoRA setting is {best} at {fmt(rows[best], 'accuracy')}.",
        "",
        f"Every run: {steps} AdamW steps of {s['batch_size']} rows, each batch padded to its longest row; warm-up a tenth "
        f"of the steps, cosine decay to a tenth; alpha = 2 r; weight decay 0.1; gradient "
        f"clipping 1.0; dropout 0; {seeds_text(s)}. " + POOLER_NOTE,
        "",
        ("**Learning rates** (quick mode: the defaults, not chosen): " if quick else
         "**Learning rates**, chosen on the validation split (one seed at each rate; the probe by validation accuracy, "
         "then each setting's best among its runs that beat the probe there; other ranks take the nearest tuned rank's): ")
        + rates_text(figures["learning_rates"]["cls"]) + ".",
    ]
    if figures["lr_selection"]:
        lines += ["", *selection_table(figures["lr_selection"]), *edge_note(figures["lr_selection"])]
    floor = "the untrained model's (quick mode: too few steps to set against the probe)" if quick else "the linear probe's mean"
    lines += ["", "**Failed runs** (left out of every mean; decided on the validation split, before the test split is "
              f"read): a run fails when its loss diverges or it ends no better than {floor} validation accuracy "
              f"({figures['baseline']['cls']['val_accuracy']:.3f}): "
              + ("; ".join(figures["failed"]) if figures["failed"] else "none") + "."]
    return {"figure": f"gap {_gap_points(figures['cls_gap'], verdict)} (query+value r=8)", "body": "\n".join(lines + _table(figures, False)),
            "plots": plots}


def render_comparison(claim: dict) -> str:
    """Claim 4 on the toy and on a pretrained encoder: the judged gaps, and why they differ where they do."""
    slots = claim["bases"]
    if not {"toy", "minilm"} <= set(slots):
        return ""
    toy, real = slots["toy"], slots["minilm"]
    t, r = toy["figures"], real["figures"]
    toy_cls, rows = t["summary"]["cls"], r["summary"]["cls"]
    from minilora.experiments.core import verdicts_differ_text

    text = ["Classification, the task both bases run (the toy's verdict also weighs its code task): "
            + verdicts_differ_text({toy["in_text"]: toy["verdict"]["parts"]["classification"], real["in_text"]: real["verdict"]["verdict"]})
            + f" At r=8 on Wq, Wv (query, value), LoRA is {100 * t['cls_gap']:.1f} points below full fine-tuning on the toy base "
            f"({toy_cls[t['judged']['cls']]['accuracy_mean']:.3f} against {toy_cls['full']['accuracy_mean']:.3f}) and "
            f"{100 * r['cls_gap']:.1f} points on MiniLM ({rows[r['judged']['cls']]['accuracy_mean']:.3f} against "
            f"{rows['full']['accuracy_mean']:.3f})."]
    known = (f"The frozen weights know different amounts: the toy base answers at {t['untuned']['cls']['accuracy']:.3f} before "
             f"fine-tuning (chance {r['chance']:.3f}, the same six classes), so fine-tuning must build features that "
             f"tell the packages apart; MiniLM's frozen encoder, read by a trained head alone (the linear probe), already "
             f"reaches {rows['probe']['accuracy_mean']:.3f}, so fine-tuning adjusts features that exist -- the setting in "
             "which the LoRA paper measured parity (RoBERTa, DeBERTa, GPT-2, GPT-3, all pretrained at scale).")
    toy_gap, real_gap = t["cls_gap"], r["cls_gap"]
    if not (np.isfinite(toy_gap) and np.isfinite(real_gap)):
        text.append(known + " One base's judged runs all failed (see its failed runs above): the gaps cannot be compared.")
    elif real_gap < toy_gap - CLS_GAP_HOLDS:
        text.append(known + " LoRA comes closer to full fine-tuning on MiniLM, so the toy's shortfall says more about a "
                    "base model that barely knows language than about LoRA on a pretrained one.")
    elif real_gap > toy_gap + CLS_GAP_HOLDS:
        text.append(known + " Even so LoRA falls further short on MiniLM: the toy's shortfall was not only its base's "
                    "weakness (see the learning rates and the failed runs above before reading more into it).")
    else:
        text.append(known + " The gaps are alike on both bases (within the holds threshold of each other): at this budget "
                    "(150-200 steps, r=8 on two matrices) the shortfall is LoRA's, not only the toy base's.")
    text.append("The toy's verdict also has a code-task half (prose -> code), which has no counterpart on MiniLM: an "
                "encoder does not predict the next token.")
    return "\n\n".join(text)
