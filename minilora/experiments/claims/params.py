"""Claim 1 -- trainable parameters: the source article says LoRA trains well under one
percent of a model's weights, some ten to ten thousand times fewer than full fine-tuning
(docs/claims.md lists every claim in these words).

A LoRA pair on a frozen matrix W of shape (out x in) is A (r x in) and B (out x r),
so it trains ``r (in + out)`` numbers where full fine-tuning trains ``in * out``.
Summed over the adapted matrices of every layer this gives a closed form per
architecture, written out below (``total_parameters``, ``lora_parameters``) for

* the GPT-2 family (GPT-2 small, medium, XL, and GPT-3 175B, which has GPT-2's
  layout at 96 layers and width 12288): one fused ``c_attn`` (d -> 3d) holding
  Wq, Wk, Wv; ``attn.c_proj`` (d -> d); a 4x MLP ``c_fc`` (d -> 4d), ``mlp.c_proj``
  (4d -> d); biases everywhere; the output head tied to the token embedding;
* LLaMA (7B, and LLaMA-2 70B): separate q, k, v, o projections, with grouped-query
  attention in the 70B (8 key/value heads, so k and v map d -> 8 * head_dim = d/8);
  a SwiGLU MLP gate/up (d -> f) and down (f -> d); RMSNorm; no biases; an untied head.

The counts are checked three ways (STYLE.md's "three oracles"): minilora's own
count after actually injecting the adapters (``minilora_count``), Hugging Face
PEFT's ``get_nb_trainable_parameters`` on the same architecture built on
PyTorch's meta device (shapes only, no memory: ``peft_count``), and the formulas.

Two targets: ``"qv"`` -- Wq and Wv, the LoRA paper's setting (inside GPT-2's fused
``c_attn`` this needs minilora's ``enable_lora``, which PEFT cannot express; PEFT is
compared on the targets it can express: ``"c_attn"`` and ``"all"``) -- and
``"all"``, every weight matrix of attention and MLP as stored (GPT-2's fused
``c_attn`` is one matrix there, with one pair).

On a base that stands for published models (the toy: a GPT-2 in miniature, whose family's
closed forms give the published sizes' counts; ``COUNTS_PUBLISHED``) the verdict is judged on
those models and the base's own counts are checked; on any other base (MiniLM) it is judged on
the base's own model as claim 4 trains it, heads included (``base.count_rows``).
"""

from __future__ import annotations

from dataclasses import dataclass

from minilora.experiments.bases.gpt import cost_lora_config as lora_config
from minilora.experiments.bases.gpt_methods import peft_counts
from minilora.experiments.core import FAILS, combine, compare_verdicts, judge

KEY, NUMBER = "params", 1
TITLE = "Trainable parameters"
CLAIM = ("LoRA trains a very small share of a model's weights -- typically under one percent of them -- so "
         "it trains between about ten and ten thousand times fewer numbers than full fine-tuning.")
MEASURED = "exact counts on published models and on both base models, checked against injected models"
BASES = ("toy", "minilm")
QUICK_DECIDES = True  # exact counts: quick mode decides them as the full run does

RANKS = (1, 2, 4, 8, 16, 64)
TARGETS = ("qv", "all")
TARGET_NAMES = {"qv": "Wq, Wv", "all": "all attention + MLP matrices", "c_attn": "GPT-2's fused c_attn"}

# --- the verdict's thresholds -------------------------------------------------------------
# "Under 1%": the article's own number, judged at the LoRA paper's usual setting (r = 8 on
# Wq and Wv) on the published models (the tiny base model is reported, not judged: the
# article speaks of LLMs). "Partly" up to 5%: still a small fraction, but not the one claimed.
FRACTION_HOLDS, FRACTION_PARTLY = 0.01, 0.05
# "Ten to ten thousand times fewer": a range claim holds when essentially every setting falls inside it
# (90% of the published-model grid: ranks 1-64, both targets); "partly" when most do.
# Settings *above* 10,000x (tiny ranks on the largest models) count as outside: the
# claim names a range, and we report which side each miss falls on.
RANGE_LOW, RANGE_HIGH = 10, 10_000
IN_RANGE_HOLDS, IN_RANGE_PARTLY = 0.9, 0.5


# ---------------------------------------------------------------------------
# the architectures
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    """The shapes that decide a parameter count (from each model's published config)."""

    name: str
    family: str  # "gpt2" (fused c_attn, 4x MLP, biases, tied head) or "llama" (see the module docstring)
    n_layer: int
    n_embd: int  # d, the residual width
    n_head: int
    vocab_size: int
    n_positions: int = 0  # learned positions (GPT-2 family); LLaMA's rotary positions have no parameters
    n_kv_head: int = 0  # LLaMA: key/value heads (= n_head without grouped-query attention)
    intermediate_size: int = 0  # LLaMA: f, the MLP's width

    @property
    def kv_dim(self) -> int:
        """Output width of the k and v projections: n_kv_head * head_dim (LLaMA)."""
        return self.n_kv_head * (self.n_embd // self.n_head)


def _base_arch() -> Arch:
    from minilora.pretrain import BASE_CONFIG as c

    return Arch("minilora base", "gpt2", c.n_layer, c.n_embd, c.n_head, c.vocab_size, c.block_size)


ARCHS = {
    "base": _base_arch(),
    "gpt2": Arch("GPT-2 small", "gpt2", 12, 768, 12, 50257, 1024),
    "gpt2-medium": Arch("GPT-2 medium", "gpt2", 24, 1024, 16, 50257, 1024),
    "gpt2-xl": Arch("GPT-2 XL", "gpt2", 48, 1600, 25, 50257, 1024),
    "llama-7b": Arch("LLaMA-7B", "llama", 32, 4096, 32, 32000, n_kv_head=32, intermediate_size=11008),
    "llama-70b": Arch("LLaMA-2-70B", "llama", 80, 8192, 64, 32000, n_kv_head=8, intermediate_size=28672),
    "gpt3-175b": Arch("GPT-3 175B", "gpt2", 96, 12288, 96, 50257, 2048),
}
PUBLISHED = [k for k in ARCHS if k != "base"]


# ---------------------------------------------------------------------------
# the closed forms
# ---------------------------------------------------------------------------


def total_parameters(arch: Arch) -> int:
    """Every parameter of the model, i.e. what full fine-tuning trains.

    GPT-2 family (V vocab, T positions, L layers, width d, tied head):
        V d + T d + L (12 d^2 + 13 d) + 2 d
        -- per layer: c_attn 3d^2 + 3d, attn.c_proj d^2 + d, c_fc 4d^2 + 4d,
           mlp.c_proj 4d^2 + d, two LayerNorms 4d; then ln_f 2d.
    LLaMA (kv = n_kv_head * head_dim, MLP width f, untied head, no biases):
        2 V d + L (2 d^2 + 2 d kv + 3 d f + 2 d) + d
        -- per layer: q, o d^2 each; k, v d kv each; gate, up, down d f each; two RMSNorms.
    """
    V, L, d = arch.vocab_size, arch.n_layer, arch.n_embd
    if arch.family == "gpt2":
        return V * d + arch.n_positions * d + L * (12 * d * d + 13 * d) + 2 * d
    if arch.family == "llama":
        kv, f = arch.kv_dim, arch.intermediate_size
        return 2 * V * d + L * (2 * d * d + 2 * d * kv + 3 * d * f + 2 * d) + d
    raise ValueError(f"unknown architecture family {arch.family!r}; known: 'gpt2', 'llama'")


def lora_parameters(arch: Arch, r: int, target: str) -> int:
    """What LoRA trains: r (in + out) for every adapted (out x in) matrix, in every layer.

    GPT-2 family:
        "qv"     Wq (d -> d) and Wv (d -> d):                        L r (2d + 2d)           = 4 L d r
        "c_attn" the fused c_attn (d -> 3d), one pair:               L r (d + 3d)            = 4 L d r
        "all"    c_attn, attn.c_proj, c_fc, mlp.c_proj:              L r (4d + 2d + 5d + 5d) = 16 L d r
    ("qv" and "c_attn" train the same number of parameters -- two thin pairs or one
    wider one -- but not the same update: "c_attn" also moves Wk.)
    LLaMA (kv = n_kv_head * head_dim, f = MLP width):
        "qv"     q (d -> d), v (d -> kv):                            L r (2d + d + kv)       = L r (3d + kv)
        "all"    q, k, v, o, gate, up, down:                         L r (9d + 2 kv + 3 f)
    """
    L, d = arch.n_layer, arch.n_embd
    known = ("qv", "c_attn", "all") if arch.family == "gpt2" else ("qv", "all")
    if target not in known:
        raise ValueError(f"unknown LoRA target {target!r} for a {arch.family} model; known: {', '.join(known)}")
    if arch.family == "gpt2":
        return {"qv": 4 * L * d * r, "c_attn": 4 * L * d * r, "all": 16 * L * d * r}[target]
    kv, f = arch.kv_dim, arch.intermediate_size
    return {"qv": L * r * (3 * d + kv), "all": L * r * (9 * d + 2 * kv + 3 * f)}[target]


def count_grid(archs=None, ranks=RANKS, targets=TARGETS) -> list:
    """One row per (model, target, rank): trainable count, the model's size, the fraction
    trained (LoRA / model) and the reduction factor (model / LoRA), all from the closed forms."""
    rows = []
    for key in archs or list(ARCHS):
        arch = ARCHS[key]
        total = total_parameters(arch)
        for target in targets:
            for r in ranks:
                lora = lora_parameters(arch, r, target)
                rows.append({"model": key, "name": arch.name, "target": target, "r": r, "lora": lora,
                             "total": total, "fraction": lora / total, "reduction": total / lora})
    return rows


# ---------------------------------------------------------------------------
# the counts, measured
# ---------------------------------------------------------------------------


def minilora_count(model, r: int, target: str) -> tuple:
    """(trainable, all) as minilora's ``PeftModel.get_nb_trainable_parameters`` reports them after
    injecting the adapters into ``model`` (a minilora GPT); the model is restored afterwards."""
    from minilora.peft import get_peft_model

    flags = [(p, p.requires_grad) for p in model.parameters()]
    peft_model = get_peft_model(model, lora_config(target, r))
    try:
        return peft_model.get_nb_trainable_parameters()
    finally:
        peft_model.unload()  # the model's own layers back in place, and its trainable flags:
        for p, flag in flags:
            p.requires_grad_(flag)


PEFT_TARGETS = {  # what PEFT's target_modules are for our targets, where PEFT can express them
    ("gpt2", "c_attn"): ["c_attn"],
    ("gpt2", "all"): ["c_attn", "c_proj", "c_fc"],
    ("llama", "qv"): ["q_proj", "v_proj"],
    ("llama", "all"): ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def peft_available() -> bool:
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def hf_meta_model(arch: Arch):
    """The Hugging Face model of ``arch`` on PyTorch's meta device: every parameter has its
    shape and no storage, so even GPT-3 175B costs no memory (needs torch and transformers)."""
    import torch
    import transformers

    if arch.family == "gpt2":
        config = transformers.GPT2Config(vocab_size=arch.vocab_size, n_positions=arch.n_positions, n_embd=arch.n_embd,
                                         n_layer=arch.n_layer, n_head=arch.n_head, bos_token_id=None, eos_token_id=None)
        model_cls = transformers.GPT2LMHeadModel
    else:
        config = transformers.LlamaConfig(vocab_size=arch.vocab_size, hidden_size=arch.n_embd, num_hidden_layers=arch.n_layer,
                                          num_attention_heads=arch.n_head, num_key_value_heads=arch.n_kv_head,
                                          intermediate_size=arch.intermediate_size, tie_word_embeddings=False)
        model_cls = transformers.LlamaForCausalLM
    with torch.device("meta"):
        return model_cls(config)


def peft_count(arch: Arch, r: int, target: str, model=None) -> tuple:
    """(trainable, all) from PEFT's ``get_nb_trainable_parameters`` on ``hf_meta_model(arch)``
    (or on ``model``, which is restored afterwards with PEFT's ``unload``)."""
    import peft

    key = (arch.family, target)
    if key not in PEFT_TARGETS:
        raise ValueError(f"PEFT cannot express target {target!r} on a {arch.family} model; it can: "
                         f"{', '.join(t for f, t in PEFT_TARGETS if f == arch.family)}")
    model = hf_meta_model(arch) if model is None else model
    return peft_counts(model, r, target_modules=PEFT_TARGETS[key], fan_in_fan_out=arch.family == "gpt2")


def minilora_checks(ranks, targets=("qv", "c_attn", "all"), config=None) -> list:
    """minilora's counts after injecting into the shipped base model's architecture (random
    weights: a count does not depend on them) -- or into a GPT of ``config`` -- beside the formulas."""
    from minilora import manual_seed
    from minilora.models import GPT
    from minilora.pretrain import BASE_CONFIG

    config = config or BASE_CONFIG
    arch = ARCHS["base"] if config == BASE_CONFIG else Arch("GPT", "gpt2", config.n_layer, config.n_embd,
                                                            config.n_head, config.vocab_size, config.block_size)
    manual_seed(0)
    model = GPT(config)
    return [_row("minilora", arch, target, r, minilora_count(model, r, target)) for target in targets for r in ranks]


def peft_checks(models, ranks) -> list:
    """PEFT's counts on each model built on the meta device, for every target PEFT can express."""
    rows = []
    for key in models:
        arch = ARCHS[key]
        hf_model = hf_meta_model(arch)
        for family, target in PEFT_TARGETS:
            if family == arch.family:
                rows += [_row("peft", arch, target, r, peft_count(arch, r, target, hf_model)) for r in ranks]
    return rows


def _row(source, arch, target, r, counts) -> dict:
    """One check: the measured (trainable, all) beside the formulas; "all" includes the adapter."""
    trainable, total = counts
    formula, formula_total = lora_parameters(arch, r, target), total_parameters(arch)
    return {"source": source, "model": arch.name, "target": target, "r": r, "trainable": trainable,
            "total": total - trainable, "formula": formula, "formula_total": formula_total,
            "match": trainable == formula and total - trainable == formula_total}


# ---------------------------------------------------------------------------
# the verdict
# ---------------------------------------------------------------------------


def published_figures(rows) -> dict:
    """The judged figures of a ``count_grid``: the largest fraction trained at r = 8 on Wq, Wv among the
    published models, and the share of the published grid whose reduction factor lies in [10x, 10,000x]."""
    published = [row for row in rows if row["model"] in PUBLISHED]
    at_r8 = [row for row in published if row["r"] == 8 and row["target"] == "qv"]
    inside = [RANGE_LOW <= row["reduction"] <= RANGE_HIGH for row in published]
    return {"max_fraction_r8_qv": max(row["fraction"] for row in at_r8) if at_r8 else float("nan"),
            "share_in_range": sum(inside) / len(inside) if inside else float("nan")}


# ---------------------------------------------------------------------------
# plots (used by run() and the notebook)
# ---------------------------------------------------------------------------


def plot_reduction(rows, ax=None):
    """Reduction factor (model / LoRA) against rank, one line per model and target, the
    claimed 10x-10,000x band shaded."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4.5))[1]
    ax.axhspan(RANGE_LOW, RANGE_HIGH, color="tab:green", alpha=0.12, label="claimed: 10x-10,000x")
    for i, key in enumerate(dict.fromkeys(row["model"] for row in rows)):
        for target, style in (("qv", "-"), ("all", "--")):
            sel = [row for row in rows if row["model"] == key and row["target"] == target]
            if sel:
                ax.plot([row["r"] for row in sel], [row["reduction"] for row in sel], style, marker="o", ms=3,
                        color=f"C{i}", label=f"{ARCHS[key].name}, {TARGET_NAMES[target]}" if target == "qv" else None)
    _rank_axis(ax)
    ax.set_ylabel("parameters of full fine-tuning / LoRA's")
    ax.set_title("Reduction in trainable parameters (solid: Wq, Wv; dashed: all matrices)")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(True, which="major", alpha=0.3)
    return ax


def _rank_axis(ax):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(RANKS, [str(r) for r in RANKS])
    ax.set_xlabel("rank r")


def plot_fraction(rows, ax=None):
    """Fraction of the model trained, at each rank, one line per model (Wq, Wv), with the 1% line."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4.5))[1]
    for i, key in enumerate(dict.fromkeys(row["model"] for row in rows)):
        for target, style in (("qv", "-"), ("all", "--")):
            sel = [row for row in rows if row["model"] == key and row["target"] == target]
            if sel:
                ax.plot([row["r"] for row in sel], [100 * row["fraction"] for row in sel], style, marker="o", ms=3,
                        color=f"C{i}", label=ARCHS[key].name if target == "qv" else None)
    ax.axhline(1.0, color="k", lw=1, ls=":", label="1%")
    _rank_axis(ax)
    ax.set_ylabel("% of the model trained")
    ax.set_title("Fraction trained (solid: Wq, Wv; dashed: all matrices)")
    ax.legend(fontsize=7)
    ax.grid(True, which="major", alpha=0.3)
    return ax


# ---------------------------------------------------------------------------
# the claim
# ---------------------------------------------------------------------------

COUNT_RANKS = {True: (8,), False: RANKS}  # a base's own counts: quick, full
COUNT_TARGETS = {True: ("qv",), False: ("qv", "attn", "all")}


def measure(base, session) -> dict:
    """The published models' counts (a base that stands for them: ``COUNTS_PUBLISHED``), or the base's own."""
    # PEFT's counts in the full run only: importing torch, transformers and PEFT alone takes 5-15 s, and the
    # quick run's budget is the whole demo's (the tests check PEFT's counts on small models and LLaMA-7B).
    with_peft = not session.quick and peft_available()
    if getattr(base, "COUNTS_PUBLISHED", False):
        return measure_published(with_peft)
    rows = base.count_rows(session, COUNT_RANKS[session.quick], COUNT_TARGETS[session.quick], with_peft)
    r8 = next(row for row in rows if row["target"] == "qv" and row["r"] == 8)
    inside = [RANGE_LOW <= row["reduction"] <= RANGE_HIGH for row in rows]
    return {"rows": rows, "share_in_range": sum(inside) / len(inside), "fraction_r8_qv": r8["fraction"],
            "mismatches": sum(not row["match"] for row in rows), "facts": base.facts(session),
            "settings": {"ranks": [row["r"] for row in rows], "peft_checked": with_peft}}


def measure_published(with_peft: bool) -> dict:
    rows = count_grid()
    # Measured counts: minilora on the base model at every rank, always; PEFT on every model built on the meta
    # device, in the full run only: every model at r = 8 (the 70B and 175B take ~10 s each), the small ones at r = 1, 64 too
    check_models = list(ARCHS) if with_peft else []
    checks = minilora_checks(RANKS)
    if with_peft:
        checks += peft_checks(check_models, (8,)) + peft_checks(["base", "gpt2"], (1, 64))
    return {**published_figures(rows), "grid": rows, "checks": checks, "mismatches": sum(not c["match"] for c in checks),
            "settings": {"ranks": list(RANKS), "targets": list(TARGETS), "models": {k: vars(a) for k, a in ARCHS.items()},
                         "peft_checked_models": check_models,
                         "peft_ranks": "8 (all models); 1, 64 (base, gpt2)" if with_peft else None}}


def verdict(figures: dict) -> dict:
    """Under 1% at r = 8 on Wq, Wv, and the share of settings in [10x, 10,000x]; a count that disagrees
    with its formula voids the claim's figures."""
    fraction = figures["max_fraction_r8_qv"] if "grid" in figures else figures["fraction_r8_qv"]
    parts = {"under 1%": judge(fraction, FRACTION_HOLDS, FRACTION_PARTLY, higher_is_better=False),
             "10x-10,000x": judge(figures["share_in_range"], IN_RANGE_HOLDS, IN_RANGE_PARTLY)}
    published = "grid" in figures
    thresholds = {f"{'max ' if published else ''}fraction at r=8, Wq+Wv{' (published models)' if published else ' + heads'}, "
                  "holds <=": FRACTION_HOLDS, "... partly <=": FRACTION_PARTLY, "reduction range": f"[{RANGE_LOW}, {RANGE_HIGH}]",
                  f"share of {'published grid' if published else 'settings'} in range, holds >=": IN_RANGE_HOLDS,
                  "... partly >=": IN_RANGE_PARTLY}
    return {"verdict": combine(*parts.values()) if not figures["mismatches"] else FAILS, "parts": parts, "thresholds": thresholds}


def render(figures: dict, verdict: dict, plot, quick: bool) -> dict:
    if "grid" in figures:
        return render_published(figures, verdict, plot)
    return render_own(figures, verdict)


def render_published(figures: dict, verdict: dict, plot) -> dict:
    import matplotlib.pyplot as plt

    rows, checks, s = figures["grid"], figures["checks"], figures["settings"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    plot_fraction(rows, axes[0])
    plot_reduction(rows, axes[1])
    fig.tight_layout()
    plots = [plot(fig, "params.png")]
    mismatches = [c for c in checks if not c["match"]]
    published = [row for row in rows if row["model"] in PUBLISHED]
    outside_low = [row for row in rows if row["reduction"] < RANGE_LOW]
    outside_high = [row for row in rows if row["reduction"] > RANGE_HIGH]
    base_r8 = next(row for row in rows if row["model"] == "base" and row["r"] == 8 and row["target"] == "qv")
    lo = min(published, key=lambda row: row["reduction"])
    hi = max(published, key=lambda row: row["reduction"])
    gpt3 = next(row for row in rows if row["model"] == "gpt3-175b" and row["r"] == 8 and row["target"] == "qv")
    with_peft = bool(s["peft_checked_models"])

    def describe(sel):
        return "; ".join(f"{ARCHS[row['model']].name} {row['target']} r={row['r']} ({row['reduction']:,.0f}x)" for row in sel)

    body = "\n".join([
        f"Counted exactly for {len(s['models'])} architectures x ranks {s['ranks']} x two targets (Wq, Wv; all attention "
        f"and MLP matrices) from closed-form formulas (`minilora.experiments.claims.params.lora_parameters`: r (in + out) per "
        f"adapted matrix), and checked against {len(checks)} measured counts: minilora's own count after injecting "
        f"the adapters into the shipped base model"
        + (", and Hugging Face PEFT's `get_nb_trainable_parameters` on the same architectures built on PyTorch's "
           f"meta device ({', '.join(s['peft_checked_models'])})" if with_peft else
           " (PEFT's own count is compared in the full run and in `tests/test_experiments_cost.py`)")
        + f": {len(checks) - len(mismatches)} of {len(checks)} agree exactly"
        + ("." if not mismatches else f"; MISMATCHES: {mismatches}."),
        "",
        f"**Under 1%:** at r = 8 on Wq, Wv the largest fraction among the published models is "
        f"{100 * figures['max_fraction_r8_qv']:.3f}% (GPT-3 175B: {100 * gpt3['fraction']:.4f}%, {gpt3['lora']:,} of "
        f"{gpt3['total']:,}). It does **not** hold for minilora's tiny base model: {100 * base_r8['fraction']:.2f}% at the "
        f"same setting: a pair on a square d x d matrix trains r (d + d) of its d^2 numbers, a share 2r/d -- 1/8 at "
        f"d = 128, r = 8, against 1/768 at GPT-3's d = 12,288.",
        "",
        f"**10x-10,000x:** across the published models the reduction runs from {lo['reduction']:,.0f}x "
        f"({ARCHS[lo['model']].name}, {lo['target']}, r={lo['r']}) to {hi['reduction']:,.0f}x ({ARCHS[hi['model']].name}, "
        f"{hi['target']}, r={hi['r']}); {100 * figures['share_in_range']:.0f}% of that grid lies inside the claimed range. "
        f"Below 10x: {describe(outside_low) or 'none'}. Above 10,000x: {describe(outside_high) or 'none'}.",
    ])
    return {"figure": f"{100 * figures['max_fraction_r8_qv']:.2f}% max at r=8 (Wq,Wv); {lo['reduction']:,.0f}x-{hi['reduction']:,.0f}x",
            "body": body, "plots": plots}


def render_own(figures: dict, verdict: dict) -> dict:
    rows, facts, parts = figures["rows"], figures["facts"], verdict["parts"]
    peft = figures["settings"]["peft_checked"]
    r8 = next(row for row in rows if row["target"] == "qv" and row["r"] == 8)
    inside = [RANGE_LOW <= row["reduction"] <= RANGE_HIGH for row in rows]
    outside = [f"{row['target']} r={row['r']} ({row['reduction']:,.1f}x)" for row, ok in zip(rows, inside) if not ok]
    H, K = facts["hidden"], facts["num_labels"]
    table = ["| target | r | adapters | + pooler, classifier | % of the model | reduction | minilora | PEFT |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        table.append(f"| {row['target']} | {row['r']} | {row['adapters']:,} | {row['formula']:,} | {100 * row['fraction']:.2f}% | "
                     f"{row['reduction']:,.0f}x | {row['minilora']:,} | {format(row['peft'], ',') if 'peft' in row else '-'} |")
    body = "\n".join([
        f"Counted on {facts['name']} as claim 4 trains it ({r8['total']:,} parameters with the classifier): r (in + out) per "
        f"adapted matrix, plus the pooler ({H ** 2 + H:,}) and the classifier ({H * K + K:,}) that `modules_to_save` trains "
        f"in full; checked against minilora's count after injecting the adapters"
        + (" and PEFT's on transformers' model (meta device)" if peft else "")
        + f": {len(rows) - figures['mismatches']} of {len(rows)} agree.",
        "",
        f"**Under 1%:** at r=8 on query, value LoRA trains {r8['formula']:,} parameters, **{100 * r8['fraction']:.2f}%** of the "
        f"model ({parts['under 1%']}); the adapters alone are {100 * r8['adapter_fraction']:.2f}%, the untrained pooler "
        "that must be trained too is two thirds of it. **10x-10,000x:** the reduction runs from "
        f"{min(row['reduction'] for row in rows):,.1f}x to {max(row['reduction'] for row in rows):,.0f}x; "
        f"{100 * figures['share_in_range']:.0f}% of the settings lie inside ({parts['10x-10,000x']})"
        + (f"; outside: {', '.join(outside)}" if outside else "") + ".",
        "", *table])
    return {"figure": f"{100 * r8['fraction']:.2f}% at r=8 (query, value + heads); "
                      f"{min(row['reduction'] for row in rows):,.0f}x-{max(row['reduction'] for row in rows):,.0f}x",
            "body": body, "plots": []}


def render_comparison(claim: dict) -> str:
    return compare_verdicts(claim) + (
        " The share LoRA trains falls with width: a pair on a d x d matrix trains 2 r d of its d^2 numbers, 1/8 of it "
        "at the toy's d = 128 and r = 8, 1/24 at MiniLM's 384; what the toy's verdict judges are the published models' "
        "closed-form counts, which the MiniLM counts confirm on a real checkpoint.")
