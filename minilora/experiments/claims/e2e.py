"""Section 15: the LoRA paper's own GPT-2 benchmark, E2E NLG, in miniature -- full fine-tuning against
LoRA r = 4 on W_q and W_v, judged on test BLEU; other methods beside it, described.

    The LoRA paper (Hu et al., 2022, sec. 5.4, Table 3) fine-tunes GPT-2 Medium and Large on E2E NLG
    and finds LoRA at r = 4 on the query and value projections on a par with full fine-tuning (or
    better). docs/claims.md states the section in our words; it is a task of claims 4 and 11.

The table, stated before any result was seen (docs/e2e.md):

* **judged**: full fine-tuning against LoRA r = 4 on W_q and W_v (GPT-2: the q and v slices of the
  fused ``c_attn``, ``enable_lora=[True, False, True]``; LLaMA: ``q_proj`` and ``v_proj``), on both
  512-position bases (``base_512``, ``llama_base_512``), seeds 0-4, one epoch at batch 8. The figure:
  LoRA's test BLEU minus full fine-tuning's, with a two-level bootstrap interval -- the 630 test MRs
  drawn once per replicate for both arms (paired), then each arm's seeds; corpus BLEU recomputed from
  the drawn MRs' summed n-gram counts (``core.intervals.replicate_statistics``). Non-inferiority:
  holds when the interval's lower bound is above -2 BLEU, partly above -5 (``MARGIN_*``);
* **descriptive** (the GPT base, seed 0 only, no verdict): LoRA r = 8, Houlsby adapters (m = 8),
  prefix tuning (P = 8) and (IA)^3;
* **learning rates**: two per setting (``RATE_GRIDS``) on seed 0 of the GPT base, chosen by validation
  loss (``runs.rates.choose_rate``), reused on LLaMA; a grid whose best rate is at an edge is extended
  by a half-decade step that way (the next rate of ``RATE_LADDER``: ``runs.rates.choose_rate_extended``
  with its ladder), at most ``MAX_EXTENSIONS`` times, and a setting still at an edge is named;
* **failure rule** (``runs.rates.run_status``, as every claim): a run whose validation loss is not
  finite, or no better than the untuned base's, fails -- decided before its test output is read --
  and is left out of the interval (its output is still written).

The runs are ``minilora.experiments.bases.e2e``'s; every judged run's 630 test sentences are written
beside the report (``render``), one file per run, which ``sacrebleu`` re-scores as they are.

**The run cache.** With ``MINILORA_RUN_CACHE`` set, each run is kept there as JSON records
(``runs.cache.RunCache.write_record``), no weights: "validated", ``train_e2e``'s figures up to the
validation loss (what choosing a rate reads), and "tested", everything ``_run`` returns (with the
status, the test sentences and scores), each keyed by the ``E2ESpec``, the record's kind, the base's
weights' sha256, the E2E task (its files' sha256 and split: ``bases.e2e.run_identity``), the sha256
of minilora's source and the versions. A tested run found there is neither trained nor decoded; one
missing is trained once per session (``_trained``: a rate candidate already trained is reused) and
both its records written. So after ``minilora verify --only e2e`` on a cache, notebooks/e2e_nlg.ipynb
run on the same cache reads the section back in minutes (docs/e2e.md).
"""

from __future__ import annotations

import functools

import numpy as np

from minilora.experiments.bases import e2e
from minilora.experiments.core import FAILS, ONE_RUN, non_inferiority
from minilora.experiments.core.intervals import interval_text, percentile_interval, replicate_means, replicate_statistics
from minilora.experiments.runs.cache import RunCache, request, run_key, trained_provenance
from minilora.experiments.runs.rates import OK, at_edge, choose_rate_extended, run_status
from minilora.nlg_metrics import SACREBLEU, corpus_stats, rouge_l, score_from_stats

KEY, NUMBER = "e2e", 15
TITLE = "E2E NLG, the LoRA paper's own benchmark, in miniature"
CLAIM = ("on the LoRA paper's own generation benchmark -- restaurant meaning representations turned into "
         "sentences, E2E NLG -- LoRA at rank 4 on the query and value projections writes as well as full "
         "fine-tuning, by BLEU against every human reference, while training a small share of the weights")
MEASURED = "E2E test BLEU of LoRA r=4 (Wq, Wv) minus full fine-tuning's, 5 seeds, both 512-position bases"
BASES = ("toy", "llama")  # the 512-position twins of these bases: base_512 and llama_base_512

MARGIN_HOLDS, MARGIN_PARTLY = 2.0, 5.0  # BLEU points LoRA may lie below full fine-tuning (the interval's lower bound)
JUDGED = {"full": ("full", None), "LoRA r=4 (Wq, Wv)": ("lora", 4)}  # setting name: (method, size)
DESCRIPTIVE = {"LoRA r=8 (Wq, Wv)": ("lora", 8), "adapters (Houlsby) m=8": ("houlsby", 8),
               "prefix tuning P=8": ("prefix", 8), "(IA)³": ("ia3", None)}
SEEDS = {False: (0, 1, 2, 3, 4), True: (0, 1)}  # quick: two seeds, so that the interval's code runs too
# Two rates per method, on seed 0 of the GPT base. LoRA's start where phase 1 found it still improving
# (3e-2, docs/e2e.md); full fine-tuning's around the rate its first run used (1e-3).
RATE_GRIDS = {"full": (1e-3, 3e-3), "lora": (3e-2, 1e-1), "houlsby": (3e-3, 1e-2), "prefix": (1e-2, 3e-2),
              "ia3": (3e-2, 1e-1)}
MAX_EXTENSIONS = 2  # half-decade steps beyond a grid whose best rate is at its edge
RATE_LADDER = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)  # the half decades extended along
# Quick mode: QUICK_STEPS steps of QUICK_BATCH pairs per run, QUICK's handful of MRs (bases/e2e.py), each
# grid's first rate (not chosen): the code path end to end in seconds, nothing the figures could decide.
QUICK_STEPS, QUICK_BATCH = 5, 4
PAPER_TABLE3 = {  # GPT-2 Medium on the E2E test set, Hu et al. (2022), Table 3: trainable parameters, BLEU, ROUGE-L
    "FT*": ("354.92M", "68.2", "71.0"), "Adapter^L*": ("0.37M", "66.3", "69.8"), "Adapter^H": ("11.09M", "67.3 ± .6", "70.7 ± .2"),
    "FT^Top2*": ("25.19M", "68.1", "70.8"), "PreLayer*": ("0.35M", "69.7", "71.4"), "LoRA": ("0.35M", "70.4 ± .1", "71.8 ± .1")}


def bases(session) -> tuple:
    """Both bases, always: the section is defined on the pair."""
    return BASES


# ---------------------------------------------------------------------------
# measure
# ---------------------------------------------------------------------------


def _task(session):
    from minilora.tasks import e2e_task

    return session.once(("e2e", "task"), e2e_task)


def _spec(session, arch: str, method: str, size, seed: int, lr: float) -> e2e.E2ESpec:
    quick = session.quick
    return e2e.E2ESpec(base=arch, method=method, size=size, seed=seed, lr=lr, quick=quick,
                       steps=QUICK_STEPS if quick else None, batch_size=QUICK_BATCH if quick else e2e.BATCH_SIZE)


def _trained(session, spec) -> tuple:
    """(model, figures before the test split) of ``spec``, trained once per session."""
    return session.once(("e2e", "trained", spec), lambda: e2e.train_e2e(spec, session.progress, _task(session)))


def _validated(session, spec) -> dict:
    """``spec``'s figures before the test split (``_trained``'s): what choosing a rate reads."""
    return _record(session, "validated", spec, lambda: _trained(session, spec)[1])


def _run(session, spec, floor: float) -> dict:
    """``spec``'s run, tested: its figures, its status under the failure rule (read off validation before the test).
    The model is ``_trained``'s: a candidate of the rate choice is not trained again."""
    def make():
        model, figures = _trained(session, spec)
        _validated(session, spec)  # its record kept too
        status = run_status({"loss": figures["val_loss"]}, "loss", False, floor)
        return {**figures, "status": status, **e2e.measure_test(model, spec, _task(session))}
    return _record(session, "tested", spec, make)


def _record(session, kind: str, spec, make) -> dict:
    """``spec``'s figures of ``kind`` ("validated", "tested"), once per session: read back from the run cache
    (``MINILORA_RUN_CACHE``, when set), or ``make()``'s and kept there; counted in the claim's provenance as
    ``runs.runner`` counts a run (trained now, or read back), once."""
    def read_or_make():
        cache = session.once(("run cache",), RunCache.from_env)
        req = request(e2e.base_folder(spec.base), spec, {"record": kind, **e2e.run_identity(spec, _task(session))})
        found = cache.read_record(req) if cache is not None else None
        if found is not None:
            return found[0], {**found[1], "run": run_key(req)}
        record = make()
        origin = trained_provenance(req, record["train_seconds"] + record.get("decode_seconds", 0.0))
        if cache is not None:
            cache.write_record(req, record, origin)
        return record, origin
    record, origin = session.once(("e2e", kind, spec), read_or_make)
    if session.claim is not None:  # one entry a run: a tested run's "tested" record, read after its "validated" one
        session.used.setdefault(session.claim, {})[("e2e", spec)] = origin
    return record


def _untuned(session, arch: str) -> float:
    return session.once(("e2e", "untuned", arch, session.quick),
                        lambda: e2e.untuned_val_loss(arch, session.quick, _task(session)))


def choose_rates(session) -> dict:
    """``{setting: {"lr", "table", "edge"}}``: each setting's rate, chosen on seed 0 of the GPT base by
    validation loss among its runs that did not fail; the grid extended along RATE_LADDER while its best
    rate is at an edge (``runs.rates.choose_rate_extended``, at most MAX_EXTENSIONS steps). Quick mode:
    each grid's first rate, nothing chosen."""
    def make():
        settings = {**JUDGED, **DESCRIPTIVE}
        if session.quick:
            return {name: {"lr": RATE_GRIDS[method][0], "table": None, "edge": None} for name, (method, _) in settings.items()}
        floor, out = _untuned(session, "gpt"), {}
        for name, (method, size) in settings.items():
            def validate(lr, method=method, size=size):
                return {"loss": _validated(session, _spec(session, "gpt", method, size, 0, lr))["val_loss"]}

            best, table = choose_rate_extended(RATE_GRIDS[method], validate, "loss", False, floor, MAX_EXTENSIONS, RATE_LADDER)
            edge = ("top" if best == max(table) else "bottom") if at_edge(best, table) else None
            out[name] = {"lr": best, "table": {f"{lr:g}": row for lr, row in table.items()}, "edge": edge}
        return out
    return session.once(("e2e", "rates", session.quick), make)


def measure(base, session) -> dict:
    arch = base.arch
    rates, floor, seeds = choose_rates(session), _untuned(session, arch), SEEDS[session.quick]
    settings = {name: (method, size, seeds) for name, (method, size) in JUDGED.items()}
    if arch == "gpt":
        settings.update({name: (method, size, (0,)) for name, (method, size) in DESCRIPTIVE.items()})
    runs = {name: [_run(session, _spec(session, arch, method, size, seed, rates[name]["lr"]), floor) for seed in ss]
            for name, (method, size, ss) in settings.items()}
    task = _task(session)
    n_mrs = len(next(iter(runs.values()))[0]["generations"])
    return {"arch": arch, "base_name": e2e.BASES[arch], "untuned_val_loss": floor, "runs": runs,
            "judged": list(JUDGED), "descriptive": [n for n in DESCRIPTIVE if n in runs],
            "rates": {name: rates[name] for name in runs},
            "examples": {"mrs": task.test_mrs[:3], "references": [refs[:2] for refs in task.test_refs[:3]]},
            "settings": {"mode": "quick" if session.quick else "full", "seeds": list(seeds), "test_mrs": n_mrs,
                         "batch_size": e2e.BATCH_SIZE, "positions": e2e.POSITIONS, "alpha": "2 r",
                         "max_new_tokens": e2e.MAX_NEW_TOKENS, "rate_grids": {m: list(g) for m, g in RATE_GRIDS.items()},
                         "margins_bleu": {"holds": MARGIN_HOLDS, "partly": MARGIN_PARTLY}}}


# ---------------------------------------------------------------------------
# judge
# ---------------------------------------------------------------------------


def kept(runs: list) -> list:
    """The runs that did not fail (decided on validation)."""
    return [r for r in runs if r["status"] == OK]


@functools.lru_cache(maxsize=1)
def _references() -> list:
    from minilora.tasks import e2e_task

    return e2e_task().test_refs


def mr_rows(run: dict, metric: str):
    """A run's per-MR figures for ``metric``: sacrebleu's statistics (BLEU, chrF: (N, k) counts) or each MR's ROUGE-L
    (N,), recomputed from its sentences and the shipped test references (sha256-checked at load) -- results.json
    keeps the 630 sentences of a run, not the 630 x 29 numbers derived from them. A quick run has the first N MRs."""
    generations = run["generations"]
    references = _references()[: len(generations)]
    return corpus_stats(metric, generations, references) if metric in SACREBLEU else 100 * rouge_l(generations, references)


def replicates(arms: dict, metric: str = "bleu") -> dict:
    """Two-level bootstrap replicates of each arm's mean score over seeds (``{arm: [runs]}``, scored on the same MRs):
    BLEU and chrF recomputed from the drawn MRs' summed statistics, ROUGE-L a mean over the drawn MRs."""
    rows = {arm: [mr_rows(r, metric) for r in runs] for arm, runs in arms.items()}
    if metric in SACREBLEU:
        return replicate_statistics(rows, functools.partial(score_from_stats, metric))
    return replicate_means(rows)


def mean_score(runs: list, metric: str = "bleu") -> float:
    """The mean over ``runs`` of their test ``metric`` ("bleu", "chrf", "rouge_l"); NaN for no run."""
    return float(np.mean([r["scores"][metric]["score"] for r in runs])) if runs else float("nan")


def judge_bleu(lora: list, full: list) -> tuple:
    """(LoRA - full fine-tuning's mean BLEU, its 95% interval or None, the non-inferiority verdict) from the kept runs."""
    if not lora or not full:  # every run of an arm failed: nothing to compare
        return float("nan"), None, FAILS
    difference = mean_score(lora) - mean_score(full)
    if min(len(lora), len(full)) < 2:
        return difference, None, ONE_RUN
    reps = replicates({"lora": lora, "full": full})
    interval = percentile_interval(reps["lora"] - reps["full"])
    return difference, interval, non_inferiority(interval, MARGIN_HOLDS, MARGIN_PARTLY)


def verdict(figures: dict) -> dict:
    full_name, lora_name = figures["judged"]
    difference, interval, v = judge_bleu(kept(figures["runs"][lora_name]), kept(figures["runs"][full_name]))
    return {"verdict": v, "parts": {"BLEU, LoRA r=4 against full fine-tuning": v}, "bleu_difference": difference,
            "intervals": {"bleu_difference": interval},
            "thresholds": {"LoRA - full BLEU, the interval's low end: holds above": -MARGIN_HOLDS,
                           "partly above": -MARGIN_PARTLY}}


# ---------------------------------------------------------------------------
# render
# ---------------------------------------------------------------------------

GENERATIONS = "e2e-generations"  # the report's folder of test outputs, one file per run


def generations_name(arch: str, setting: str, seed: int) -> str:
    """E.g. "e2e-generations/gpt_lora-r4_seed0.txt"."""
    slug = {"full": "full", "LoRA r=4 (Wq, Wv)": "lora-r4", "LoRA r=8 (Wq, Wv)": "lora-r8",
            "adapters (Houlsby) m=8": "houlsby-m8", "prefix tuning P=8": "prefix-p8", "(IA)³": "ia3"}[setting]
    return f"{GENERATIONS}/{arch}_{slug}_seed{seed}.txt"


def setting_row(name: str, runs: list, judged: bool, rate: dict) -> str:
    """One row of the table: the kept runs' mean of each score with its 95% interval -- several seeds: the two-level
    interval of their mean (``replicates``); one run: its own interval over MRs (``nlg_metrics.score_corpus``)."""
    good = kept(runs)
    n = f"{len(good)} of {len(runs)}" if judged else "1 (descriptive)"
    if not good:
        return f"| {name} | {rate['lr']:g} | {runs[0]['trainable']:,} | {n} | no run kept | | | |"

    def cell(metric):
        interval = (percentile_interval(replicates({"arm": good}, metric)["arm"]) if len(good) > 1
                    else good[0]["scores"][metric]["interval"])
        return f"{mean_score(good, metric):.1f} [{interval[0]:.1f}, {interval[1]:.1f}]"

    return (f"| {name} | {rate['lr']:g} | {runs[0]['trainable']:,} | {n} | {np.mean([r['val_loss'] for r in good]):.3f} | "
            f"{cell('bleu')} | {cell('chrf')} | {cell('rouge_l')} |")


def plot_bleu_vs_params(figures: dict, ax) -> None:
    """Test BLEU against trained parameters (log scale): a dot per kept run, a larger one for each setting's mean."""
    for name, runs in figures["runs"].items():
        good = kept(runs)
        if not good:
            continue
        points = ax.scatter([runs[0]["trainable"]] * len(good), [r["scores"]["bleu"]["score"] for r in good], alpha=0.4, s=12)
        ax.plot([runs[0]["trainable"]], [mean_score(good)], "o", color=points.get_facecolor()[0][:3], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("trained parameters")
    ax.set_ylabel("test BLEU (sacrebleu)")
    ax.set_title(f"E2E NLG on {figures['base_name']}" + (" (quick: rough)" if figures["settings"]["mode"] == "quick" else ""))
    ax.legend(fontsize=7)


def _plot(figures: dict, plot) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4))
    plot_bleu_vs_params(figures, ax)
    fig.tight_layout()
    return plot(fig, f"e2e_{figures['arch']}_bleu_vs_params.png")


def write_outputs(figures: dict, plot) -> list:
    """Every run's test sentences beside the report (``plot.file``: the report folder), one file per run."""
    names = []
    for name, runs in figures["runs"].items():
        for r in runs:
            path = generations_name(figures["arch"], name, r["spec"]["seed"])
            e2e.write_generations(plot.file(path), r["generations"])
            names.append(path)
    return names


def render(figures: dict, verdict: dict, plot, quick: bool) -> dict:
    s, arch = figures["settings"], figures["arch"]
    full_name, lora_name = figures["judged"]
    files = write_outputs(figures, plot)
    runs = figures["runs"]
    d, interval = verdict["bleu_difference"], verdict["intervals"]["bleu_difference"]
    figure = f"LoRA r=4 - full: {d:+.1f} BLEU" + interval_text(interval, unit=" BLEU")
    mode = (f"**Quick-mode figures** ({QUICK_STEPS} steps of {QUICK_BATCH} pairs, {s['test_mrs']} test MRs, seeds {s['seeds']}, rates not chosen, "
            "sentences cut short): "
            "rough, for a demo only. ") if quick else ""
    lines = [
        mode + f"{figures['base_name']}, {runs[full_name][0]['steps']} steps at batch {runs[full_name][0]['spec']['batch_size']} (one "
        f"epoch in full mode), greedy decoding of {s['test_mrs']} test MRs (cap {runs[full_name][0]['max_new_tokens']} bytes). Full fine-tuning reaches {mean_score(kept(runs[full_name])):.1f} BLEU, LoRA r=4 on "
        f"W_q and W_v {mean_score(kept(runs[lora_name])):.1f} with {runs[lora_name][0]['trainable']:,} trained parameters "
        f"(of {runs[full_name][0]['trainable']:,}): **{figure}** ({verdict['verdict']}; non-inferiority, margins "
        f"{MARGIN_HOLDS:g} / {MARGIN_PARTLY:g} BLEU). The interval: two-level bootstrap, the test MRs drawn once per "
        "replicate for both arms and each arm's seeds drawn, corpus BLEU recomputed from the drawn MRs' n-gram counts.",
        "",
        "| setting | lr | trained | runs kept | val loss | BLEU [95% interval] | chrF [95%] | ROUGE-L [95%] |",
        "|---|---|---|---|---|---|---|---|",
        *[setting_row(name, runs[name], name in figures["judged"], figures["rates"][name]) for name in runs],
        "",
        "BLEU and chrF: sacrebleu, corpus-level against every reference of each MR; ROUGE-L: rouge-score, best reference, "
        "mean over MRs. Intervals: a judged setting's, two-level over its kept seeds and the test MRs; a single run's, "
        "over the test MRs. Descriptive rows: seed 0 only, no verdict.",
        "",
        f"**Failure rule** (on validation, before the test output is read): a run fails when its validation loss is not "
        f"finite or no better than the untuned base's ({figures['untuned_val_loss']:.3f} nats/byte). Failed: "
        + ("; ".join(f"{n} seed {r['spec']['seed']} ({r['status']}, {r['val_loss']:.3f})" for n, rs in runs.items()
                      for r in rs if r["status"] != OK) or "none") + ".",
    ]
    if not quick and arch == "gpt":
        lines += ["", "**Learning rates** (seed 0 of this base, by validation loss; reused on LLaMA):", "",
                  "| setting | rate: validation loss (status) | chosen |", "|---|---|---|"]
        for name, rate in figures["rates"].items():
            cells = "; ".join(f"{lr}: {row['loss']:.3f}" + ("" if row["status"] == OK else f" ({row['status']})")
                              for lr, row in rate["table"].items())
            lines.append(f"| {name} | {cells} | {rate['lr']:g}" + (f" (still at the {rate['edge']} edge)" if rate["edge"] else "") + " |")
    elif not quick:
        lines += ["", "**Learning rates**: those chosen on the GPT base, reused."]
    lines += ["", f"Every run's test output is in `{GENERATIONS}/` beside this report ({len(files)} files, one UTF-8 "
              f"sentence per line in the order of the test file's MRs; `sacrebleu` re-scores each as it is)."]
    if arch == "gpt":
        example = runs[lora_name][0]["generations"][0]
        lines += ["", f"The first test MR, `{figures['examples']['mrs'][0]}`: full fine-tuning wrote "
                  f"\"{runs[full_name][0]['generations'][0]}\"; LoRA r=4 wrote \"{example}\"; a reference: "
                  f"\"{figures['examples']['references'][0][0]}\"."]
        lines += ["", "**The paper's Table 3** (GPT-2 Medium, E2E test set; * the paper's figures from earlier work), beside "
                  "ours: 354.92M against 0.89M parameters, BPE against bytes, WebText against 1.7 MB of docstrings, 42,061 "
                  "training pairs for 5 epochs against 4,153 for one, beam search (width 10) against greedy decoding, "
                  "e2e-metrics (ROUGE-L with beta 1.2) against sacrebleu and rouge-score (docs/e2e.md):", "",
                  "| method (paper) | trainable | BLEU | ROUGE-L |", "|---|---|---|---|",
                  *[f"| {m} | {p} | {b} | {r} |" for m, (p, b, r) in PAPER_TABLE3.items()]]
    return {"figure": figure, "body": "\n".join(lines), "plots": [_plot(figures, plot)]}


def compare(slots: dict) -> dict:
    """No verdict of its own (the section's is the bases' combined): the thresholds, which both bases share."""
    return {"thresholds": next(iter(slots.values()))["verdict"]["thresholds"]}


def render_claim(claim: dict, plot, quick: bool) -> dict:
    """The section over both bases, each under its own name (base_512, llama_base_512: the 512-position twins of
    the bases verify knows as toy and llama), then the two compared."""
    from minilora.experiments.core import verdicts_differ_text

    body, plots, figures = [], [], []
    for slot in claim["bases"].values():
        f, v = slot["figures"], slot["verdict"]
        part = render(f, v, plot, quick)
        body += [f"### On {f['base_name']}", "", f"**Verdict on {f['base_name']}: {v['verdict']}.** {part['body'].strip()}", ""]
        plots += part["plots"]
        figures.append(f"{f['base_name']}: {part['figure']} ({v['verdict']})")
    names = {slot["figures"]["base_name"]: slot["verdict"]["verdict"] for slot in claim["bases"].values()}
    if len(names) > 1:
        body += ["### The bases compared", "", verdicts_differ_text(names) + " The learning rates were chosen on the GPT "
                 "base and reused on LLaMA, so a gap on LLaMA may partly be a rate that suits it less."]
    return {"figure": " · ".join(figures), "measured": claim["measured"], "body": "\n".join(body).strip(), "plots": plots}


__all__ = ["measure", "verdict", "render", "judge_bleu", "choose_rates", "generations_name", "plot_bleu_vs_params", "setting_row", "render_claim"]
