"""Claim 8: adapters are modules -- small files, swapped in an instant, combined, served together.

    The source article (docs/claims.md, claim 8): LoRA adapters are modules -- one
    frozen base can carry an adapter per task, exchanged whenever needed, and adapters
    can be stacked or merged to mix what they learned.

Two adapters trained in claim 4 -- the classification adapter and the code
adapter, both LoRA on ``c_attn`` at r=8 -- are saved in PEFT's format and put on
one copy of the base model. Measured:

* **storage**: bytes of each adapter file against a full checkpoint of the model;
* **swap time**: ``set_adapter`` (both already loaded), ``load_adapter`` from disk,
  against loading a full checkpoint, timed in interleaved rounds (the speed-up's interval
  resamples the rounds); the file sizes are exact;
* **combination**: ``add_weighted_adapter(["cls", "code"], [1, 1], "both",
  combination_type="cat")`` -- exactly ΔW_cls + ΔW_code -- scored on both tasks,
  against each adapter alone and against the base model, for the adapters of every seed of
  claim 4's grid: the share of each adapter's gain it keeps is judged on its 95% interval
  (seeds and test rows resampled, the rows paired between the base, the adapter alone and the
  combination; ``core.intervals``);
* **mixed batch**: one forward pass in which each row picks its adapter
  (``model(x, adapter_names=[...])``), checked equal to separate passes;
* **routing** (a demonstration, not judged): the two adapters routed token by token with
  PEFT's Arrow (``minilora/peft/arrow.py``: each token goes to the adapter whose prototype
  -- the top right singular vector of its B A -- it lies along), top-1 and top-2, scored on
  both tasks beside each adapter alone and their average merge (weights 1/2, 1/2).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from minilora.experiments.bases.gpt import fresh_model
from minilora.experiments.core import combine, judge, judge_interval, now
from minilora.experiments.core.intervals import (interval_text, median_ratio_interval, percentile_interval, plot_interval,
                                                 replicate_means)
from minilora.experiments.runs import RunSpec, train
from minilora.models import GPT
from minilora.peft import BASE, PeftModel
from minilora.peft.arrow import routing_comparison
from minilora.tensor import no_grad

KEY, NUMBER = "modularity", 8
TITLE = "Modularity: several adapters on one base"
CLAIM = ("LoRA adapters are modular: one frozen base holds an adapter per task, they are exchanged quickly, "
         "and two of them can be combined (stacked or merged) into one model with both skills")
MEASURED = ("adapter file size, swap time, a weighted combination of two task adapters, a mixed-adapter batch; "
            "Arrow routing between them (not judged)")
BASES = ("toy",)

ADAPTER_RANK = 8
MIXED_ROWS = 16  # rows of each task in the mixed batch


def adapter_specs(base, quick: bool, seed: int | None = None) -> dict:
    """Claim 4's runs of PEFT's own setting (c_attn, r = 8), on each task: the grid's first seed, or ``seed``."""
    grid = base.grid(quick)
    seed = grid.seeds[0] if seed is None else seed
    return {task: RunSpec(task, "lora", base.PEFT_TARGET, ADAPTER_RANK, seed=seed, **grid.common(task))
            for task in base.TASKS}


def save_adapter(spec: RunSpec, state: dict, base: GPT, folder) -> None:
    """Write a trained adapter (its state from the runner) in PEFT's format."""
    model = fresh_model(spec, base)
    model.base_model.load_adapter_state_dict("default", state)
    model.save_pretrained(folder)


def _fresh_base(base: GPT) -> GPT:
    model = GPT(base.config, dtype=base.transformer.wte.weight.dtype)
    model.load_state_dict(base.state_dict())
    return model


def _seconds(fn) -> float:
    start = now()
    fn()
    return now() - start


def both_adapters(specs: dict, states: dict, base: GPT, folder: Path) -> PeftModel:
    """A fresh copy of ``base`` with both task adapters, written to ``folder`` in PEFT's format and loaded back."""
    for task, spec in specs.items():
        save_adapter(spec, states[task], base, folder / task)
    model = PeftModel.from_pretrained(_fresh_base(base), folder / "cls", adapter_name="cls")
    model.load_adapter(folder / "code", "code")
    return model


def storage_and_swap(specs: dict, states: dict, base: GPT, folder: Path, repeats: int = 5) -> tuple:
    """Save both adapters and the full model; time the swaps, each round a load of the full checkpoint and 20
    switches between the loaded adapters, interleaved. Returns (figures, model with both adapters)."""
    model = both_adapters(specs, states, base, folder)
    base.save_pretrained(folder / "full")
    size = {task: sum(p.stat().st_size for p in (folder / task).iterdir()) for task in specs}
    full_bytes = sum(p.stat().st_size for p in (folder / "full").iterdir())
    weights_bytes = {task: (folder / task / "adapter_model.safetensors").stat().st_size for task in specs}

    model.delete_adapter("code")
    load = [_seconds(lambda: (model.load_adapter(folder / "code", "code"), model.set_adapter("cls"),
                              model.delete_adapter("code"))) for _ in range(repeats)]
    model.load_adapter(folder / "code", "code")
    full, swap = [], []
    for _ in range(repeats):  # interleaved rounds: a round's two timings ran moments apart
        full.append(_seconds(lambda: GPT.from_pretrained(folder / "full")))
        swap.append(_seconds(lambda: [(model.set_adapter("code"), model.set_adapter("cls")) for _ in range(10)]) / 20)
    figures = {"adapter_bytes": size, "adapter_weights_bytes": weights_bytes, "full_checkpoint_bytes": full_bytes,
               "storage_ratio": max(size.values()) / full_bytes,
               "set_adapter_seconds": float(np.median(swap)), "load_adapter_seconds": float(np.median(load)),
               "full_checkpoint_load_seconds": float(np.median(full)),
               "rounds": {"full_checkpoint_load": full, "set_adapter": swap}}
    return figures, model


@no_grad()
def combination(model: PeftModel, data: dict) -> dict:
    """Each task's figures for: base, each adapter alone, and their "cat" combination ΔW_cls + ΔW_code."""
    model.add_weighted_adapter(["cls", "code"], [1.0, 1.0], "both", combination_type="cat")
    out = {}
    with model.disable_adapter():
        out["base"] = {task: d.evaluate(model) for task, d in data.items()}
    for name in ("cls", "code", "both"):
        model.set_adapter(name)
        out[name] = {task: d.evaluate(model) for task, d in data.items()}
    model.set_adapter("cls")
    return out


# A single adapter must gain at least this much over the base model for "the share of its
# gain the combination keeps" to mean anything (NaN below: judged "does not hold").
MIN_GAIN = {"cls": 0.02, "code": 0.01}  # accuracy (2 points); nats/byte


def retained_interval(per_seed: list, combined: str = "both") -> list | None:
    """The 95% interval of the weaker task's share (``min`` of ``retained``'s two) over the seeds' ``combination``
    scores (``per_seed``: one per seed, each holding every test row's figures as ``rows``): a replicate draws each
    task's rows once for the base, the adapter alone and ``combined`` (paired), and the seeds; ``None`` for one seed.
    A replicate in which a single adapter gains too little (``MIN_GAIN``) counts as keeping nothing (-inf), as a
    share that is not measurable does not hold."""
    if len(per_seed) < 2:
        return None
    shares = {}
    for task, alone, key, sign in (("cls", "cls", "accuracy", 1), ("code", "code", "loss", -1)):
        arms = {}
        for name in ("base", alone, combined):
            runs = [scores[name][task].get("rows", {}).get(key) for scores in per_seed]
            if any(r is None for r in runs):
                raise ValueError(f"claim {NUMBER} ({KEY}): the results hold no per-row test figures of the combination, "
                                 "which its interval needs; measure it again with this version (minilora verify --only modularity)")
            arms[name] = np.asarray(runs, dtype=np.float64)
        reps = replicate_means(arms)
        gain = sign * (reps[alone] - reps["base"])
        shares[task] = np.where(gain >= MIN_GAIN[task], sign * (reps[combined] - reps["base"]) / np.where(gain == 0, 1, gain), -np.inf)
    return percentile_interval(np.minimum(shares["cls"], shares["code"]))


def mean_scores(per_seed: list) -> dict:
    """The seeds' ``combination`` scores averaged, figure by figure (their rows left out)."""
    return {name: {task: {k: float(np.mean([s[name][task][k] for s in per_seed])) for k in ("loss", "accuracy")}
                   for task in per_seed[0][name]} for name in per_seed[0]}


def retained(scores: dict, combined: str = "both") -> dict:
    """How much of each single adapter's gain over the base model the combination ``combined`` keeps, per task.

    Classification by accuracy: (combined - base) / (cls - base); code by loss: (base - combined) / (base - code).
    """
    acc = lambda name: scores[name]["cls"]["accuracy"]
    loss = lambda name: scores[name]["code"]["loss"]
    gain_cls, gain_code = acc("cls") - acc("base"), loss("base") - loss("code")
    return {"cls": (acc(combined) - acc("base")) / gain_cls if gain_cls >= MIN_GAIN["cls"] else float("nan"),
            "code": (loss("base") - loss(combined)) / gain_code if gain_code >= MIN_GAIN["code"] else float("nan")}


ROUTED = ("merged", "routed_top1", "routed_top2")  # routing_comparison's names: the average merge, Arrow top-1, top-2
ROUTED_LABELS = {"merged": "average merge (1/2, 1/2)", "routed_top1": "Arrow, top-1", "routed_top2": "Arrow, top-2"}


def routing(model: PeftModel, data: dict, seed: int = 0) -> dict:
    """Arrow routing between the two adapters against each alone and their average merge, on both tasks
    (``arrow.routing_comparison``), with the share of each adapter's gain each combination keeps."""
    out = routing_comparison(model, ["cls", "code"], lambda m: {task: d.evaluate(m) for task, d in data.items()}, seed=seed)
    return {**out, "seed": seed, "retained": {name: retained(out["figures"], name) for name in ROUTED}}


@no_grad()
def mixed_batch(model: PeftModel, data: dict, rows: int = MIXED_ROWS) -> dict:
    """One batch: classification rows with "cls", code rows with "code", and a few base rows;
    the largest difference from running each group on its own."""
    x_cls, x_code = data["cls"].x_eval[:rows], data["code"].x_eval[:rows]  # (rows, 64) each
    x = np.concatenate([x_cls, x_code, x_cls[:2]])  # (2 rows + 2, 64)
    names = ["cls"] * len(x_cls) + ["code"] * len(x_code) + [BASE] * 2
    start = now()
    mixed = model(x, adapter_names=names)[0].numpy()  # (N, T, V), on the host
    mixed_seconds = now() - start
    separate = []
    for name, part in (("cls", x_cls), ("code", x_code)):
        model.set_adapter(name)
        separate.append(model(part)[0].numpy())
    with model.disable_adapter():
        separate.append(model(x_cls[:2])[0].numpy())
    model.set_adapter("cls")
    separate = np.concatenate(separate)
    return {"max_abs_diff": float(np.abs(mixed - separate).max()), "rows": len(x), "seconds": mixed_seconds,
            "logit_scale": float(np.abs(separate).max())}


# The verdict, part by part.
STORAGE_HOLDS, STORAGE_PARTLY = 0.10, 0.50  # adapter file / full checkpoint, bytes
SPEEDUP_HOLDS, SPEEDUP_PARTLY = 10.0, 2.0  # full-checkpoint load time / set_adapter time
RETAINED_HOLDS, RETAINED_PARTLY = 0.80, 0.50  # the combination keeps this share of each adapter's gain (worse task)
MIXED_TOLERANCE = 1e-4  # mixed batch vs separate runs, max |logit difference| (float32)


def measure(base, session) -> dict:
    seeds = base.grid(session.quick).seeds
    specs = adapter_specs(base, session.quick)
    runs = dict(zip(specs, train(session, base, list(specs.values()))))
    env = base.environment(session)
    data = {task: base.data(spec, session) for task, spec in specs.items()}
    with tempfile.TemporaryDirectory() as tmp:
        store, model = storage_and_swap(specs, {t: r.state for t, r in runs.items()}, env.base, Path(tmp))
        per_seed = [combination(model, data)]
        for seed in seeds[1:]:  # the combination again with each other seed's adapters: its interval's seeds
            other = adapter_specs(base, session.quick, seed)
            states = {t: r.state for t, r in zip(other, train(session, base, list(other.values())))}
            per_seed.append(combination(both_adapters(other, states, env.base, Path(tmp) / f"seed{seed}"), data))
    scores = per_seed[0]
    return {**store, "swap_speedup": store["full_checkpoint_load_seconds"] / store["set_adapter_seconds"],
            "combination": scores, "retained": retained(mean_scores(per_seed)),
            "combination_seeds": {"seeds": list(seeds), "scores": per_seed[1:]},
            "mixed_batch": mixed_batch(model, data), "routing": routing(model, data, session.seed),
            "settings": {"adapters": {t: base.label(s) for t, s in specs.items()}, "combination": "cat, weights [1, 1]",
                         "seeds": list(seeds)}}


def intervals(figures: dict) -> dict:
    """The judged figures' intervals: the storage ratio and the mixed batch are exact (bytes; one comparison of
    logits), the swap speed-up's is over the interleaved rounds, the combination's over seeds and test rows."""
    if "rounds" not in figures or "combination_seeds" not in figures:
        raise ValueError(f"claim {NUMBER} ({KEY}): the results hold no timing rounds or per-seed combination scores, "
                         "which its intervals need; measure it again with this version (minilora verify --only modularity)")
    rounds = figures["rounds"]
    return {"storage": "exact", "mixed batch": "exact",
            "swap": median_ratio_interval(rounds["full_checkpoint_load"], rounds["set_adapter"]),
            "combination": retained_interval([figures["combination"], *figures["combination_seeds"]["scores"]])}


def verdict(figures: dict) -> dict:
    """Storage and the mixed batch on their exact figures; the swap speed-up and the weaker task's retained share on
    their 95% intervals (``judge_interval``; "inconclusive (one run)" for one seed's combination, or one round).
    A share that is not measurable (a single adapter gained too little) does not hold, as before."""
    worst_keep = float(np.min(list(figures["retained"].values())))  # NaN if either adapter gained too little
    ci = intervals(figures)
    parts = {"storage": judge(figures["storage_ratio"], STORAGE_HOLDS, STORAGE_PARTLY, higher_is_better=False),
             "swap": judge_interval(ci["swap"], SPEEDUP_HOLDS, SPEEDUP_PARTLY),
             "combination": judge(worst_keep, RETAINED_HOLDS, RETAINED_PARTLY) if worst_keep != worst_keep else
             judge_interval(ci["combination"], RETAINED_HOLDS, RETAINED_PARTLY),
             "mixed batch": judge(figures["mixed_batch"]["max_abs_diff"], MIXED_TOLERANCE, MIXED_TOLERANCE, higher_is_better=False)}
    return {"verdict": combine(*parts.values()), "parts": parts, "worst_retained": worst_keep, "intervals": ci,
            "thresholds": {"storage ratio holds <=": STORAGE_HOLDS, "storage ratio partly <=": STORAGE_PARTLY,
                           "swap speed-up holds >=": SPEEDUP_HOLDS, "swap speed-up partly >=": SPEEDUP_PARTLY,
                           "combination retained holds >=": RETAINED_HOLDS, "combination retained partly >=": RETAINED_PARTLY,
                           "mixed batch max |diff| <=": MIXED_TOLERANCE, "minimum single-adapter gain": MIN_GAIN}}


def render(figures: dict, verdict: dict, plot, quick: bool) -> dict:
    f, parts, scores, keep, mixed = figures, verdict["parts"], figures["combination"], figures["retained"], figures["mixed_batch"]
    ci = verdict["intervals"]

    def row(name):
        return f"| {name} | {scores[name]['cls']['accuracy']:.3f} | {scores[name]['code']['loss']:.3f} | {scores[name]['code']['accuracy']:.3f} |"

    quick_note = "**Quick-mode figures** (adapters from a few dozen steps). " if quick else ""
    body = [
        quick_note + f"Each adapter file (LoRA on c_attn, r={ADAPTER_RANK}, PEFT's format) takes "
        f"{max(f['adapter_bytes'].values()) / 1024:.0f} KiB against {f['full_checkpoint_bytes'] / 1024:.0f} KiB "
        f"for a full checkpoint ({100 * f['storage_ratio']:.1f}%; {parts['storage']}). Switching between two loaded "
        f"adapters (`set_adapter`) takes {1e6 * f['set_adapter_seconds']:.0f} µs, loading one from disk "
        f"(`load_adapter`) {1e3 * f['load_adapter_seconds']:.1f} ms, loading a full checkpoint "
        f"{1e3 * f['full_checkpoint_load_seconds']:.1f} ms ({f['swap_speedup']:.0f}x the switch"
        f"{interval_text(ci['swap'], 1, 'x', 0)}, medians over {len(f['rounds']['set_adapter'])} interleaved rounds; "
        f"{parts['swap']}). The file sizes are exact.",
        "",
        f"The combination ΔW_cls + ΔW_code (`add_weighted_adapter`, \"cat\", weights 1 and 1), averaged over the "
        f"adapters of seeds {f['settings']['seeds']}, keeps {_share(keep['cls'])} of the classification adapter's accuracy "
        f"gain and {_share(keep['code'])} of the code adapter's loss improvement; the weaker task keeps "
        f"{_kept(verdict['worst_retained'], ci['combination'], 'its gain')} (seeds and test rows "
        f"resampled, rows paired between the base, the adapter alone and the combination; {parts['combination']}). "
        f"Seed {f['settings']['seeds'][0]}'s adapters:",
        "",
        "| adapter | classification accuracy | code val loss | code next-byte accuracy |", "|---|---|---|---|",
        row("base"), row("cls"), row("code"), row("both"),
        "",
        f"Alone, the classification adapter -- trained only to answer a letter after `=> ` -- moves the code loss from "
        f"{scores['base']['code']['loss']:.3f} to {scores['cls']['code']['loss']:.3f}, and the code adapter moves the "
        f"classification accuracy from {scores['base']['cls']['accuracy']:.3f} to {scores['code']['cls']['accuracy']:.3f}: "
        "what one adapter does to the other task is what the sum inherits.",
        "",
        f"A mixed batch of {mixed['rows']} rows (classification rows with the classification adapter, code rows with "
        f"the code adapter, two rows with none) gives the logits of separate runs to within "
        f"{mixed['max_abs_diff']:.1e} (tolerance {MIXED_TOLERANCE:g}; {parts['mixed batch']}).",
        "", *routing_lines(figures["routing"]),
    ]
    kept = _kept(verdict["worst_retained"], ci["combination"], "the weaker task's gain")
    return {"figure": f"adapter {100 * f['storage_ratio']:.1f}% of a checkpoint; swap {1e6 * f['set_adapter_seconds']:.0f} µs; "
                      f"combination keeps {kept}", "body": "\n".join(body),
            "plots": [plot(plot_intervals(f, verdict), "modularity_intervals.png")]}


def plot_intervals(figures: dict, verdict: dict):
    """The two judged figures that have intervals -- the swap speed-up and the weaker task's retained share -- against
    their thresholds."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8.6, 3.6))
    plot_interval(ax1, figures["swap_speedup"], verdict["intervals"]["swap"],
                  {"holds": SPEEDUP_HOLDS, "partly": SPEEDUP_PARTLY}, "full checkpoint load / set_adapter (x)")
    if figures["retained"] and verdict["worst_retained"] == verdict["worst_retained"]:
        plot_interval(ax2, verdict["worst_retained"], verdict["intervals"]["combination"],
                      {"holds": RETAINED_HOLDS, "partly": RETAINED_PARTLY}, "% of the weaker task's gain the combination keeps",
                      scale=100)
    fig.tight_layout()
    return fig


def routing_lines(r: dict) -> list:
    """The routing demonstration: a table of each way to use the two adapters on both tasks, and what it keeps."""
    f, keep = r["figures"], r["retained"]

    def row(name, label):
        return f"| {label} | {f[name]['cls']['accuracy']:.3f} | {f[name]['code']['loss']:.3f} |"

    top1, top2, merged = keep["routed_top1"], keep["routed_top2"], keep["merged"]
    return [
        "**Routing by context** (a demonstration, not judged): the two adapters on one base, each token sent by "
        "PEFT's Arrow to the adapter whose prototype (the top right singular vector of its B A, by power iteration) "
        f"it lies along -- no router is trained; softmax temperature {r['temperature']:g}, seed {r['seed']} -- "
        f"against each adapter alone and their average merge. Arrow top-1 keeps {_share(top1['cls'])} of the "
        f"classification adapter's accuracy gain and {_share(top1['code'])} of the code adapter's loss improvement; "
        f"top-2 {_share(top2['cls'])} and {_share(top2['code'])}; the average merge {_share(merged['cls'])} and "
        f"{_share(merged['code'])}.",
        "",
        "| adapters | classification accuracy | code val loss |", "|---|---|---|",
        row("base", "none (base model)"), row("cls", "classification adapter alone"), row("code", "code adapter alone"),
        *(row(name, ROUTED_LABELS[name]) for name in ROUTED),
    ]


def _share(x: float) -> str:
    if x != x:
        return "(not measurable: the single adapter gained too little)"
    return "none (worse than the base model)" if x < 0 else f"{100 * x:.0f}%"


def _kept(share: float, interval, gain: str) -> str:
    """The weaker task's retained share of ``gain`` (what it is a share of), with its interval. A share whose
    whole interval is below zero (the combination ends worse than the base model) is told as the multiple of
    that gain it loses: "-1172%" is a true share, but "worse by 9.1x that gain" is read at once."""
    if share == share and share < 0 and isinstance(interval, (list, tuple)) and interval[1] < 0:
        return (f"none of {gain}: it ends worse than the base model, by {-share:.1f}x that gain "
                f"(95% interval [{-interval[1]:.1f}, {-interval[0]:.1f}]x)")
    return f"{_share(share)}{interval_text(interval, 100, '%', 0)} of {gain}"
