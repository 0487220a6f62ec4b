"""Claim 13: not every architecture responds equally well to LoRA (a limitation the article names).

    The source article (docs/claims.md, claim 13): LoRA's results depend on the model it
    is applied to; some architectures take to low-rank adaptation less well than others.

To measure *the architecture* and nothing else, two base models are compared that differ
in nothing but their block: the toy GPT-2 (``minilora/checkpoints/base``) and its LLaMA
twin (``minilora/checkpoints/llama_base``: RMSNorm, RoPE, SwiGLU, grouped-query attention),
with about the same parameter count (842,496 and 844,928), pre-trained on the same bytes
with the same steps, schedule and seed (docs/base_model.md). Both are fine-tuned on claim 4's
classification task (docstring -> package), with claim 4's sizes, in full and with LoRA at
r = 1, 8, 64 on two target sets that mean the same thing on each architecture:

* **PEFT's default** for the model type (``target_modules=None``): GPT-2's fused ``c_attn``
  (query, key and value), LLaMA's ``q_proj`` and ``v_proj``;
* **every linear layer** of the blocks (what PEFT's ``"all-linear"`` picks): attention and MLP.

The learning rate is chosen on the validation split for each architecture alike (full
fine-tuning and the default targets at r = 8 and 64; ``tuning``'s rule for the rest), and a
run that diverges or ends no better than its untuned base is named and left out.

The figure is each architecture's **gap**: full fine-tuning's test accuracy minus LoRA's,
setting by setting. The claim holds when the two architectures' gaps differ clearly (by at
least ``DIFF_HOLDS`` and by more than ``NOISE_SE`` standard errors of the seed spread) at the
setting a user gets by default, PEFT's targets at r = 8; partly when they differ clearly
only at some other setting; not when they differ clearly nowhere.

all-MiniLM-L6-v2 (BERT) is shown beside them from claim 4's own runs, without a verdict: it
differs in size, data, objective and tokenizer, so its gap says nothing about the block alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minilora.experiments import finetune as ft
from minilora.experiments import tuning
from minilora.experiments.common import FAILS, HOLDS, PARTLY, ClaimResult

ARCHS = ("gpt", "llama")
ARCH_NAMES = {"gpt": "GPT-2", "llama": "LLaMA"}

# The two target sets, as keys of finetune.TARGETS for each architecture.
TARGET_SETS = {
    "default": {"gpt": "c_attn", "llama": "q_proj+v_proj"},  # PEFT's target_modules=None for the model type
    "all-linear": {"gpt": "all", "llama": "llama-all"},  # every linear layer of the blocks
}
TARGET_SET_LABELS = {"default": "PEFT's default targets", "all-linear": "every linear layer"}

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


# Claim 4's steps and batch (``ft.sizes(quick).common("cls")``), so that GPT-2's full fine-tuning
# and c_attn r=8 runs are claim 4's own. Full: 21 runs an architecture, plus the learning-rate
# selection's 9 (3 of them are the chosen seed-0 runs). Quick: full and PEFT's default at r=8, one seed.
QUICK = Sizes(seeds=(0,), ranks=(8,), target_sets=("default",))
FULL = Sizes(seeds=(0, 1, 2), ranks=(1, 8, 64), target_sets=("default", "all-linear"))


def sizes(quick: bool) -> Sizes:
    return QUICK if quick else FULL


# ---------------------------------------------------------------------------
# the two base models and their runs
# ---------------------------------------------------------------------------


def llama_environment(gpt_env: ft.Environment, path=None) -> ft.Environment:
    """The LLaMA base with the GPT environment's tasks (the same rows, byte for byte). Its provenance
    (which keys its cached runs) names the LLaMA base's file and validation loss."""
    from minilora.pretrain import LLAMA_BASE_DIR, base_log, load_base

    path = Path(path if path is not None else LLAMA_BASE_DIR)
    base = load_base(arch="llama", path=path)
    provenance = {k: v for k, v in gpt_env.provenance.items() if not k.startswith("base_model")}
    provenance["base_model_sha256"] = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    try:
        provenance["base_model_val_loss"] = base_log(path)["val_loss"]
    except (OSError, KeyError):
        pass
    return ft.Environment(base, gpt_env.cls, gpt_env.code, provenance)


def environments(ctx) -> dict:
    """``{"gpt": Environment, "llama": Environment}`` of this verify run, loaded once."""
    if "compat_envs" not in ctx.shared:
        gpt = ft.environment(ctx)
        llama = llama_environment(gpt)
        ctx.shared["compat_envs"] = {"gpt": gpt, "llama": llama}
        ctx.shared.setdefault("provenance", {}).update(
            {f"llama_{k}": v for k, v in llama.provenance.items() if k.startswith("base_model")})
    return ctx.shared["compat_envs"]


def _run_cache(ctx, arch: str) -> dict:
    # GPT-2's runs are claim 4's: the same dict, so a run both claims need is trained once
    return ctx.shared.setdefault("finetune_runs" if arch == "gpt" else "compat_llama_runs", {})


def _train(ctx, arch: str, specs) -> list:
    env = environments(ctx)[arch]
    return ft.run_specs(specs, env, ft.sizes(ctx.quick).code_eval_windows, _run_cache(ctx, arch), ctx.progress)


def untuned_figures(ctx, arch: str) -> dict:
    """An architecture's base model on the task before fine-tuning (test and validation figures)."""
    key = f"compat_untuned_{arch}"
    if key not in ctx.shared:
        env = environments(ctx)[arch]
        ctx.shared[key] = ft.ClassificationData(env.cls, 1).evaluate(env.base)
    return ctx.shared[key]


def tuned_specs(quick: bool, arch: str) -> dict:
    """``{setting: RunSpec without a rate}``: full fine-tuning and PEFT's default targets at r = 8 and 64."""
    common = dict(seed=sizes(quick).seeds[0], **ft.sizes(quick).common("cls"))
    target = TARGET_SETS["default"][arch]
    specs = [ft.RunSpec("cls", "full", **common)] + [ft.RunSpec("cls", "lora", target, r, **common) for r in tuning.TUNED_RANKS]
    return {ft.setting_name(s): s for s in specs}


def learning_rates(ctx, arch: str) -> dict:
    """``{setting: rate}`` of one architecture, chosen once on the validation split (quick mode:
    claim 4's defaults ``ft.LR``). The runs must beat the untuned base's validation accuracy."""
    key = f"compat_rates_{arch}"
    if key in ctx.shared:
        return ctx.shared[key]
    settings = tuned_specs(ctx.quick, arch)
    rates = {name: ft.LR["cls"][spec.method] for name, spec in settings.items()}
    if not ctx.quick:
        floor = untuned_figures(ctx, arch)["val_accuracy"]
        table = ctx.shared.setdefault("compat_lr_selection", {}).setdefault(arch, {})
        for name, spec in settings.items():
            runs = _train(ctx, arch, [dataclasses.replace(spec, lr=lr) for lr in ft.RATE_GRID["cls"][spec.method]])
            rates[name], rows = tuning.choose_rate({r.spec.lr: r.val for r in runs}, "accuracy", True, floor)
            table[name] = (rates[name], rows)
    ctx.shared[key] = rates
    return rates


def grid(quick: bool, arch: str) -> list:
    """The claim's runs on one architecture: full fine-tuning and LoRA on each target set at each rank, every seed."""
    s = sizes(quick)
    common = ft.sizes(quick).common("cls")
    specs = []
    for seed in s.seeds:
        specs.append(ft.RunSpec("cls", "full", seed=seed, **common))
        specs += [ft.RunSpec("cls", "lora", TARGET_SETS[t][arch], r, seed=seed, **common)
                  for t in s.target_sets for r in s.ranks]
    return specs


def runs(ctx, arch: str) -> list:
    """``grid``'s runs of one architecture, at the chosen rates."""
    default = TARGET_SETS["default"][arch]
    specs = tuning.with_rates(grid(ctx.quick, arch), lambda: learning_rates(ctx, arch),
                              lambda rates, spec: tuning.nearest_setting_rate(rates, spec, (default,), default))
    return _train(ctx, arch, specs)


# ---------------------------------------------------------------------------
# the figures and the verdict
# ---------------------------------------------------------------------------


def gaps(rows: dict, settings: dict) -> dict:
    """``{(target set, r): (gap, standard error)}``: full fine-tuning's mean test accuracy minus LoRA's,
    from ``summarize`` rows; ``settings`` maps ``(target set, r)`` to the row's name. The standard
    error is that of a difference of two means over seeds (sample std / sqrt(n) of each, in quadrature)."""
    full = rows["full"]
    out = {}
    for key, name in settings.items():
        if name not in rows:
            continue
        row = rows[name]
        se = np.sqrt(full["accuracy_std"] ** 2 / max(full["n"], 1) + row["accuracy_std"] ** 2 / max(row["n"], 1))
        out[key] = (full["accuracy_mean"] - row["accuracy_mean"], float(se))
    return out


def differences(gpt: dict, llama: dict) -> dict:
    """``{setting: (LLaMA's gap - GPT-2's gap, standard error)}`` over the settings both have. A setting
    whose every run failed on one architecture only has an infinite difference (it failed there)."""
    out = {}
    for key in gpt.keys() & llama.keys():
        (g, g_se), (l, l_se) = gpt[key], llama[key]
        if np.isnan(g) and np.isnan(l):
            continue
        if np.isnan(g) or np.isnan(l):
            out[key] = (float("inf") if np.isnan(l) else float("-inf"), 0.0)
        else:
            out[key] = (l - g, float(np.hypot(g_se, l_se)))
    return out


def is_clear(diff: float, se: float) -> bool:
    """A difference that counts: at least DIFF_HOLDS and beyond NOISE_SE standard errors."""
    return abs(diff) >= DIFF_HOLDS and abs(diff) > NOISE_SE * se


def judge_compatibility(diffs: dict) -> tuple:
    """(verdict, the settings whose difference is clear): holds when the judged setting's is,
    partly when only others' are, does not hold when none is."""
    clear = sorted((key for key, (d, se) in diffs.items() if is_clear(d, se)), key=lambda k: (k[0], k[1]))
    if JUDGED in clear:
        return HOLDS, clear
    return (PARTLY if clear else FAILS), clear


def setting_names(arch: str, s: Sizes) -> dict:
    """``{(target set, r): the summarize row's name}`` of one architecture."""
    return {(t, r): f"{TARGET_SETS[t][arch]} r={r}" for t in s.target_sets for r in s.ranks}


def bert_rows(ctx) -> dict | None:
    """MiniLM's claim-4 figures beside them (None when MiniLM is not among the bases): the gap at
    each LoRA setting of its grid, query + value being PEFT's default for BERT."""
    if "minilm" not in ctx.bases:
        return None
    from minilora.experiments import minilm as M

    summary, _, _ = M.grid_runs(ctx)
    rows = summary["cls"]
    names = {("default", int(n.split("=")[1])): n for n in rows if n.startswith("qv r=")}
    names |= {("attention", int(n.split("=")[1])): n for n in rows if n.startswith("attn r=")}
    return {"rows": rows, "gaps": gaps(rows, names), "names": names}


def plot_gaps(per_arch: dict, bert: dict | None, path: str) -> None:
    """Each architecture's gap (full fine-tuning minus LoRA, accuracy points) against rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.6, 4.2))
    styles = {"gpt": "C0", "llama": "C1"}
    for arch, g in per_arch.items():
        for t, ls in (("default", "-"), ("all-linear", "--")):
            ranks = sorted(r for (tt, r) in g if tt == t and np.isfinite(g[(tt, r)][0]))
            if ranks:
                y = np.array([100 * g[(t, r)][0] for r in ranks])
                e = np.array([100 * g[(t, r)][1] for r in ranks])
                ax.errorbar(ranks, y, yerr=e, fmt="o" + ls, color=styles[arch], capsize=3,
                            label=f"{ARCH_NAMES[arch]}, {TARGET_SET_LABELS[t]}")
    if bert is not None:
        ranks = sorted(r for (t, r) in bert["gaps"] if t == "default" and np.isfinite(bert["gaps"][(t, r)][0]))
        if ranks:
            ax.plot(ranks, [100 * bert["gaps"][("default", r)][0] for r in ranks], "s:", color="gray",
                    label="all-MiniLM-L6-v2 (BERT), query + value (no verdict)")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel("full fine-tuning minus LoRA\n(test accuracy, points; ±1 s.e.)")
    ax.set_title("How far LoRA falls short of full fine-tuning, by architecture")
    if ax.get_legend_handles_labels()[0]:  # a setting whose every run failed has no point
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def measure(ctx) -> dict:
    """Every figure of the claim: per architecture its summary, gaps, rates and untuned figures;
    the differences; MiniLM's rows (or None)."""
    s = sizes(ctx.quick)
    out = {"summary": {}, "gaps": {}, "rates": {}, "untuned": {}, "failed": [], "train_seconds": 0.0, "runs": 0}
    for arch in ARCHS:
        results = runs(ctx, arch)
        untuned = untuned_figures(ctx, arch)
        summary = ft.summarize(results, baseline={"cls": untuned})["cls"]
        out["summary"][arch], out["untuned"][arch] = summary, untuned
        out["gaps"][arch] = gaps(summary, setting_names(arch, s))
        out["rates"][arch] = learning_rates(ctx, arch)
        out["failed"] += [f"{ARCH_NAMES[arch]} {line}" for line in tuning.describe_failures(summary)]
        out["train_seconds"] += sum(r.seconds for r in results)
        out["runs"] += len(results)
    out["differences"] = differences(out["gaps"]["gpt"], out["gaps"]["llama"])
    out["verdict"], out["clear"] = judge_compatibility(out["differences"])
    out["bert"] = bert_rows(ctx)
    return out


TITLE = "Model compatibility: GPT-2 and LLaMA blocks"
CLAIM = ("not every architecture responds equally well to LoRA: how close it comes to full fine-tuning "
         "depends on the model it is applied to")


def _key_text(key) -> str:
    return f"{TARGET_SET_LABELS.get(key[0], key[0])} r={key[1]}"


def run(ctx) -> ClaimResult:
    f = measure(ctx)
    s = sizes(ctx.quick)
    envs = environments(ctx)
    plot = "compatibility_gaps.png"
    plot_gaps(f["gaps"], f["bert"], ctx.path(plot))
    losses = {arch: envs[arch].provenance.get("base_model_val_loss") for arch in ARCHS}
    judged = {arch: f["gaps"][arch].get(JUDGED, (float("nan"), 0.0)) for arch in ARCHS}
    d, se = f["differences"].get(JUDGED, (float("nan"), 0.0))
    common = ft.sizes(ctx.quick).common("cls")

    def loss_text(arch):
        return "not recorded" if losses[arch] is None else f"{losses[arch]:.4f} nats/byte"

    lines = [
        ("**Quick-mode figures** (one seed, a few dozen steps, PEFT's default targets at r=8 only): rough, for a demo "
         "only. " if ctx.quick else "")
        + "Two base models that differ only in their block -- GPT-2's (LayerNorm, learned positions, GELU MLP, "
        "multi-head attention) and LLaMA's (RMSNorm, RoPE, SwiGLU, grouped-query attention) -- with "
        f"{envs['gpt'].base.config.num_parameters():,} and {envs['llama'].base.config.num_parameters():,} parameters, "
        "pre-trained on the same bytes with the same steps, schedule and seed; prose validation loss "
        f"{loss_text('gpt')} (GPT-2) and {loss_text('llama')} (LLaMA). Both fine-tuned on claim 4's classification task "
        f"(chance {1 / envs['gpt'].cls.n_classes:.3f}; untuned: GPT-2 {f['untuned']['gpt']['accuracy']:.3f}, "
        f"LLaMA {f['untuned']['llama']['accuracy']:.3f}) with its sizes: {common['steps']} AdamW steps of "
        f"{common['batch_size']} rows of 64 bytes, seeds {list(s.seeds)}, alpha = {ft.ALPHA_PER_RANK} r.",
        "",
        f"At PEFT's default targets and r=8 (GPT-2: c_attn; LLaMA: q_proj, v_proj), LoRA falls "
        f"{100 * judged['gpt'][0]:.1f} ± {100 * judged['gpt'][1]:.1f} points short of full fine-tuning on GPT-2 and "
        f"{100 * judged['llama'][0]:.1f} ± {100 * judged['llama'][1]:.1f} on LLaMA (± one standard error): a difference of "
        f"**{100 * d:+.1f} ± {100 * se:.1f} points** (LLaMA minus GPT-2). A difference counts when it is at least "
        f"{100 * DIFF_HOLDS:.0f} points and more than {NOISE_SE:g} standard errors; it does at "
        + (", ".join(_key_text(k) for k in f["clear"]) if f["clear"] else "no setting") + ".",
        "",
        ("**Learning rates** (quick mode: claim 4's defaults, not chosen): " if ctx.quick else
         "**Learning rates**, chosen on the validation split for each architecture alike (one seed at each of "
         f"{', '.join(f'{r:g}' for r in ft.RATE_GRID['cls']['lora'])} for LoRA and "
         f"{', '.join(f'{r:g}' for r in ft.RATE_GRID['cls']['full'])} for full fine-tuning; every other setting takes "
         "the nearest tuned one's): ")
        + "; ".join(f"{ARCH_NAMES[a]} " + ", ".join(f"{n} {r:g}" for n, r in f["rates"][a].items()) for a in ARCHS) + ".",
    ]
    if not ctx.quick and "compat_lr_selection" in ctx.shared:
        lines += ["", *ft.selection_table({ARCH_NAMES[a]: t for a, t in ctx.shared["compat_lr_selection"].items()},
                                          first="architecture")]
    lines += ["", "**Failed runs** (left out of every mean): a run fails when its loss diverges or it ends no better "
              "than its untuned base: " + ("; ".join(f["failed"]) if f["failed"] else "none") + ".",
              "", "| architecture | setting | lr | trainable | test accuracy | gap to full (points) |",
              "|---|---|---|---|---|---|"]
    for arch in ARCHS:
        rows = f["summary"][arch]
        for name, row in rows.items():
            key = next((k for k, n in setting_names(arch, s).items() if n == name), None)
            gap = "" if key is None or key not in f["gaps"][arch] else \
                f"{100 * f['gaps'][arch][key][0]:.1f} ± {100 * f['gaps'][arch][key][1]:.1f}"
            lr = ", ".join(f"{v:g}" for v in row["lr"])
            lines.append(f"| {ARCH_NAMES[arch]} | {name} | {lr} | {row['trainable']:,} | {ft._fmt(row, 'accuracy')} | {gap} |")
    lines += ["", "| setting | GPT-2 gap | LLaMA gap | difference (LLaMA - GPT-2) | counts? |", "|---|---|---|---|---|"]
    for key in sorted(f["differences"], key=lambda k: (k[0], k[1])):
        dd, ss = f["differences"][key]
        g, l = f["gaps"]["gpt"][key], f["gaps"]["llama"][key]
        lines.append(f"| {_key_text(key)} | {100 * g[0]:.1f} ± {100 * g[1]:.1f} | {100 * l[0]:.1f} ± {100 * l[1]:.1f} | "
                     f"{100 * dd:+.1f} ± {100 * ss:.1f} | {'yes' if is_clear(dd, ss) else 'no'} |")
    if f["bert"] is not None:
        rows = f["bert"]["rows"]
        lines += ["", "**all-MiniLM-L6-v2 (BERT), shown without a verdict** (claim 4's runs on the real model: "
                  "22.7M parameters, a different corpus, objective and tokenizer, and a classifier head; its baseline "
                  f"is the linear probe, {rows['probe']['accuracy_mean']:.3f}): full fine-tuning "
                  f"{ft._fmt(rows['full'], 'accuracy')}; the gap to it "
                  + ", ".join(f"{'query+value' if t == 'default' else 'all attention'} r={r} "
                              f"{100 * g:.1f} ± {100 * e:.1f} points" for (t, r), (g, e) in
                              sorted(f["bert"]["gaps"].items(), key=lambda item: (item[0][0] != "default", item[0][1])))
                  + "."]
    figures = {k: v for k, v in f.items() if k not in ("gaps", "differences", "bert", "clear")}
    figures["gaps"] = {arch: {_key_text(k): v for k, v in g.items()} for arch, g in f["gaps"].items()}
    figures["differences"] = {_key_text(k): v for k, v in f["differences"].items()}
    figures["clear"] = [_key_text(k) for k in f["clear"]]
    figures["base_val_loss"] = losses
    if f["bert"] is not None:
        figures["minilm_gaps"] = {f"{t} r={r}": v for (t, r), v in f["bert"]["gaps"].items()}
    return ClaimResult(
        key="compatibility",
        title=TITLE,
        claim=CLAIM,
        measured="the gap between LoRA and full fine-tuning on GPT-2 and LLaMA twins, r in "
                 + ", ".join(map(str, s.ranks)),
        figure=f"gap at default r=8: GPT-2 {100 * judged['gpt'][0]:.1f}, LLaMA {100 * judged['llama'][0]:.1f} pts "
               f"(diff {100 * d:+.1f} ± {100 * se:.1f})",
        verdict=f["verdict"],
        thresholds={"judged setting": _key_text(JUDGED), "difference counts >= (accuracy)": DIFF_HOLDS,
                    "and > standard errors": NOISE_SE},
        figures=figures,
        settings={"mode": "quick" if ctx.quick else "full", **common, "seeds": list(s.seeds), "ranks": list(s.ranks),
                  "target_sets": {t: TARGET_SETS[t] for t in s.target_sets}, "runs": f["runs"],
                  "train_seconds": round(f["train_seconds"], 1)},
        plots=[plot],
        body="\n".join(lines),
    )
