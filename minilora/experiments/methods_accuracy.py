"""Claim 11 -- expressiveness: LoRA against the other methods at the same number of trained parameters.

    The source article (docs/claims.md, claim 11): prompt tuning trains only input
    embeddings, which makes it cheap but can leave it short of what harder tasks need; against
    the other methods, LoRA tends to combine results close to full fine-tuning, little cost at
    inference and few trained parameters.

Every method of ``minilora.experiments.methods`` -- LoRA, DoRA, (IA)³, prompt tuning, prefix
tuning, Houlsby and Pfeiffer adapters -- is trained on claim 4's tasks with claim 4's
training setup (``finetune.py``: the same data, steps, batches, schedule and seeds), at
matched trainable-parameter budgets (``methods.matched_size``), with full fine-tuning as the
line to reach. LoRA and full fine-tuning runs *are* claim 4's runs (the same ``RunSpec``),
reused from ``ctx.shared`` when claim 4 has trained them.

Two things differ by method, and are constants below: the learning rate (prompt and prefix
tuning and (IA)³ move few numbers a long way, and need a much higher one), and weight decay,
which is off for (IA)³: its vectors start at 1, and decay would pull them towards 0 -- towards
switching the layer off -- rather than towards the pretrained model.

Prompt tuning puts P virtual tokens in front of the input: its logits are (B, P+T, V), the
first P rows the virtual positions'. Training needs nothing special (``PromptTuningModel``
pads the targets with -100 for them); the held-out figures are read from ``logits[:, P:]``.
Prefix tuning's logits cover the real tokens only. Both need P + T <= block_size (128; the
task's rows are 64 tokens), which caps prompt tuning at 64 C = 8,192 numbers: the judged budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import minilora
from minilora.experiments import finetune as ft
from minilora.experiments import methods as M
from minilora.experiments.common import ClaimResult, combine, judge
from minilora.models import GPT
from minilora.peft import get_peft_model
from minilora.tasks import SEPARATOR
from minilora.train import TrainConfig, train

# ---------------------------------------------------------------------------
# the settings
# ---------------------------------------------------------------------------

# Learning rates per task and method. LoRA and full fine-tuning: claim 4's (finetune.LR).
# The others were chosen with a sweep on the classification task's validation split (never the
# test split; 156 rows, one row = 0.64 points), 200 steps, seed 0, at the judged budget; LoRA r=4
# at its 3e-3 reached 0.346 there. Validation accuracy by learning rate:
#   DoRA r=3        3e-3 0.321, 1e-2 0.224
#   (IA)³           1e-2 0.288, 3e-2 0.442, 1e-1 0.462, 3e-1 0.218
#   prompt P=64     1e-2 0.167, 3e-2 0.179, 1e-1 0.167, 3e-1 0.109 (vocabulary init); 3e-2 with PEFT's
#                   random init 0.179 (loss 1.97 against 2.05), with a text init 0.173 -- chance (1/6) throughout
#   prefix P=8      3e-3 0.179, 1e-2 0.218, 3e-2 0.186, 1e-1 0.205
#   Houlsby m=3     1e-3 0.250, 3e-3 0.314, 1e-2 0.301, 3e-2 0.212
#   Pfeiffer m=7    1e-3 0.199, 3e-3 0.244, 1e-2 0.276, 3e-2 0.237
# The code task uses the same rates (no separate sweep). Prefix tuning keeps PEFT's init, a random
# N(0, 1) table: a zero prefix (0.167, 0.179 at 1e-2, 3e-3) or the keys and values the frozen model
# computes for P random tokens (Li & Liang's init from real words' activations: 0.147, 0.147) did no
# better on classification. No prefix starts at the base model -- the real tokens attend to it from
# the first step -- and on the code task, in 100 steps at 1e-2, every init ended above the base model's
# loss (1.755): random 2.72, zero 2.58, activations 1.98.
LR = {"dora": 3e-3, "ia3": 1e-1, "prompt": 3e-2, "prefix": 1e-2, "houlsby": 3e-3, "pfeiffer": 1e-2}
# AdamW's decoupled weight decay (on matrices only, minilora.train.param_groups): claim 4's, except
# for (IA)³, whose (out, 1) and (1, in) vectors count as matrices and start at 1 (see the docstring).
WEIGHT_DECAY = {"ia3": 0.0}

JUDGED_BUDGET = 8192  # = 64 C: the most prompt tuning can train on this task (64 virtual tokens)
TASK_ROW = ft.CLS_PROMPT_BYTES + len(SEPARATOR)  # 64 tokens: a classification row (60 bytes + "\n=> ")


@dataclass(frozen=True)
class Grid:
    """Which runs: per task, the budgets, the methods and the seeds."""

    cls_budgets: tuple  # the first is the judged one
    cls_methods: tuple
    cls_seeds: tuple  # at the judged budget
    cls_other_seeds: tuple  # at the other budgets
    code_budgets: tuple  # () for none
    code_methods: tuple
    code_seeds: tuple


# Quick: LoRA and prompt tuning at the judged budget, one seed, a few dozen steps (full fine-tuning
# comes from claim 4's runs when it has run; LoRA at r=4 is not in claim 4's quick grid). Full: every method at two budgets on
# classification (three seeds at the judged one), and at the judged budget on code (one seed).
QUICK = Grid(cls_budgets=(JUDGED_BUDGET,), cls_methods=("lora", "prompt"), cls_seeds=(0,), cls_other_seeds=(),
             code_budgets=(), code_methods=(), code_seeds=())
FULL = Grid(cls_budgets=(JUDGED_BUDGET, 2048), cls_methods=M.METHODS, cls_seeds=(0, 1, 2), cls_other_seeds=(0,),
            code_budgets=(JUDGED_BUDGET,), code_methods=M.METHODS, code_seeds=(0,))


def grid(quick: bool) -> Grid:
    return QUICK if quick else FULL


# ---------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """One fine-tuning run of any method. Frozen, so it can key the cache of runs."""

    task: str  # "cls" or "code"
    method: str  # "full" or one of methods.METHODS
    size: int | None = None  # r, P or m (methods.SIZE_NAMES); None for full fine-tuning and (IA)³
    seed: int = 0
    steps: int = 200
    batch_size: int = 8
    warmup_steps: int = 20
    lr: float | None = None  # None: LR (or finetune.LR for LoRA and full fine-tuning)

    def __post_init__(self):
        if self.task not in ("cls", "code"):
            raise ValueError(f"MethodSpec.task must be 'cls' or 'code', got {self.task!r}")
        M.check(self.method, self.size)

    def run_spec(self) -> ft.RunSpec | None:
        """Claim 4's RunSpec of a LoRA or full fine-tuning run (the same run, shared); None for the others."""
        common = dict(seed=self.seed, steps=self.steps, batch_size=self.batch_size, warmup_steps=self.warmup_steps, lr=self.lr)
        if self.method == "full":
            return ft.RunSpec(self.task, "full", **common)
        if self.method == "lora":
            return ft.RunSpec(self.task, "lora", "Wq+Wv", self.size, **common)
        return None

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return ft.LR[self.task][self.method] if self.method in ("full", "lora") else LR[self.method]

    @property
    def weight_decay(self) -> float:
        return WEIGHT_DECAY.get(self.method, ft.WEIGHT_DECAY)

    def setting(self) -> str:
        """E.g. "prompt P=64", "ia3", "full"."""
        return f"{self.method} {M.size_label(self.method, self.size)}".strip()

    def label(self) -> str:
        return f"{self.task} {self.setting()} seed {self.seed}"

    def train_config(self, progress: bool = False) -> TrainConfig:
        return TrainConfig(max_steps=self.steps, lr=self.learning_rate, warmup_steps=self.warmup_steps,
                           weight_decay=self.weight_decay, eval_interval=0, seed=self.seed, progress=progress,
                           desc=self.label())


def build_model(spec: MethodSpec, base: GPT):
    """A copy of ``base`` with the run's method applied, its random init drawn right after
    ``minilora.manual_seed(spec.seed)`` (as ``finetune.fresh_model``)."""
    model = GPT(base.config, dtype=base.transformer.wte.weight.dtype)
    model.load_state_dict(base.state_dict())  # copies
    minilora.manual_seed(spec.seed)
    if spec.method == "full":
        return model
    return get_peft_model(model, M.peft_config(spec.method, spec.size))


def virtual_positions(spec: MethodSpec) -> int:
    """How many logit rows in front of the real tokens' the method's forward returns: P for prompt tuning."""
    return spec.size if spec.method == "prompt" else 0


def heldout(data, model, skip: int = 0) -> dict:
    """``data``'s held-out figures of ``model``, reading the logits from position ``skip`` on."""
    return data.score(ft._logits(model, data.x_eval)[:, skip:])


def finetune_method(spec: MethodSpec, base: GPT, data, progress: bool = False) -> ft.RunResult:
    """Train one run on ``data`` (``finetune.ClassificationData`` or ``CodeData``) and measure it.
    LoRA and full fine-tuning go through ``finetune.finetune`` itself."""
    if spec.run_spec() is not None:
        return ft.finetune(spec.run_spec(), base, data, progress)
    model = build_model(spec, base)
    skip = virtual_positions(spec)
    history = train(model, data.batches, spec.train_config(progress),
                    evaluate=lambda m: {f"heldout_{k}": v for k, v in heldout(data, m, skip).items()})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    final = {k.removeprefix("heldout_"): v for k, v in history.last_eval().items() if k != "step"}
    return ft.RunResult(spec, history.losses, final, trainable, history.seconds, ft.trained_state(model))


# ---------------------------------------------------------------------------
# the runs of one verify
# ---------------------------------------------------------------------------


def specs_for(g: Grid, config, common: dict) -> list:
    """The runs of grid ``g`` on a GPT of ``config``: every method at the size matched to each budget
    (``methods.matched_size``; (IA)³ at its one size, once), and full fine-tuning, for each task.
    ``common``: {task: RunSpec fields (steps, batch_size, warmup_steps)} -- ``finetune.Sizes.common``."""
    out = []
    for task, budgets, methods, seeds, other in (("cls", g.cls_budgets, g.cls_methods, g.cls_seeds, g.cls_other_seeds),
                                                 ("code", g.code_budgets, g.code_methods, g.code_seeds, g.code_seeds)):
        if not budgets:
            continue
        seq_len = TASK_ROW if task == "cls" else ft.CODE_BLOCK
        out += [MethodSpec(task, "full", seed=seed, **common[task]) for seed in seeds]
        for i, budget in enumerate(budgets):
            for method in methods:
                size = M.matched_size(method, budget, config, seq_len)
                out += [MethodSpec(task, method, size, seed=seed, **common[task]) for seed in (seeds if i == 0 else other)]
    return list(dict.fromkeys(out))  # (IA)³ has one size: listed once


def method_runs(ctx, specs) -> list:
    """The RunResult of each MethodSpec, trained once per verify run: LoRA and full fine-tuning through
    ``finetune.runs_for`` (claim 4's cache), the others cached in ``ctx.shared["method_runs"]``."""
    env = ft.environment(ctx)
    shared = [s for s in specs if s.run_spec() is not None]
    results = dict(zip(shared, ft.runs_for(ctx, [s.run_spec() for s in shared])))
    cache = ctx.shared.setdefault("method_runs", {})
    windows = ft.sizes(ctx.quick).code_eval_windows
    for spec in specs:
        if spec not in results:
            if spec not in cache:
                cache[spec] = finetune_method(spec, env.base, env.data(spec, windows), progress=ctx.progress)
            results[spec] = cache[spec]
    return [results[s] for s in specs]


def summarize(specs, results) -> dict:
    """``{task: {setting: row}}``, a setting per (method, size), e.g. "prompt P=64": the mean, sample std
    (ddof 1; 0 for one seed) and values over seeds of the held-out loss and accuracy, with
    ``method``, ``size``, ``trainable`` and ``seeds``."""
    groups = {}
    for spec, res in zip(specs, results):
        groups.setdefault((spec.task, spec.setting()), []).append((spec, res))
    out = {}
    for (task, setting), runs in groups.items():
        spec = runs[0][0]
        row = {"method": spec.method, "size": spec.size, "trainable": runs[0][1].trainable,
               "seeds": [s.seed for s, _ in runs], "n": len(runs), "seconds": float(np.mean([r.seconds for _, r in runs]))}
        for key in ("loss", "accuracy"):
            values = np.array([r.final[key] for _, r in runs])
            row[f"{key}_mean"] = float(values.mean())
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            row[f"{key}_all"] = values.tolist()
        out.setdefault(task, {})[setting] = row
    return out


# ---------------------------------------------------------------------------
# the verdict
# ---------------------------------------------------------------------------

# Judged on classification test accuracy at the judged budget (8,192 numbers: LoRA r=4 on Wq, Wv and
# prompt tuning with P=64 train exactly as many), means over the seeds:
#  * prompt tuning falls short of LoRA: LoRA beats it by at least 5 points holds, 2 points partly
#    (one test row is 0.64 points; 2 points is three rows);
#  * LoRA on a par with full fine-tuning: claim 4's thresholds -- LoRA within 3 points of full
#    fine-tuning holds, within 10 partly.
PROMPT_GAP_HOLDS, PROMPT_GAP_PARTLY = 0.05, 0.02
FULL_GAP_HOLDS, FULL_GAP_PARTLY = ft.CLS_GAP_HOLDS, ft.CLS_GAP_PARTLY
# LoRA beating prompt tuning means something only if LoRA learned the task: it must beat the base
# model by at least this much, else that part is not measurable (NaN, "does not hold", as claim 4
# does) -- what a quick run of a few dozen steps may give.
MIN_LORA_GAIN = 0.05


def headline(summary: dict, config, budget: int = JUDGED_BUDGET) -> dict:
    """The judged figures: LoRA's, prompt tuning's and full fine-tuning's accuracy at ``budget``, and the gaps."""
    cls = summary["cls"]
    lora = cls[f"lora {M.size_label('lora', M.matched_size('lora', budget, config, TASK_ROW))}"]
    prompt = cls[f"prompt {M.size_label('prompt', M.matched_size('prompt', budget, config, TASK_ROW))}"]
    full = cls["full"]
    return {"lora": lora["accuracy_mean"], "prompt": prompt["accuracy_mean"], "full": full["accuracy_mean"],
            "lora_trainable": lora["trainable"], "prompt_trainable": prompt["trainable"],
            "lora_minus_prompt": lora["accuracy_mean"] - prompt["accuracy_mean"],
            "full_minus_lora": full["accuracy_mean"] - lora["accuracy_mean"]}


def judge_expressiveness(lora_minus_prompt: float, full_minus_lora: float, lora_gain: float = 1.0) -> dict:
    """LoRA minus prompt tuning (not measurable when LoRA's gain over the base model is under
    MIN_LORA_GAIN) and full fine-tuning minus LoRA, accuracy at the judged budget."""
    if lora_gain < MIN_LORA_GAIN:
        lora_minus_prompt = float("nan")
    parts = {"LoRA above prompt tuning": judge(lora_minus_prompt, PROMPT_GAP_HOLDS, PROMPT_GAP_PARTLY),
             "LoRA near full fine-tuning": judge(full_minus_lora, FULL_GAP_HOLDS, FULL_GAP_PARTLY, higher_is_better=False)}
    return {"parts": parts, "verdict": combine(*parts.values())}


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------

COLORS = {"lora": "tab:blue", "dora": "tab:cyan", "ia3": "tab:purple", "prompt": "tab:red", "prefix": "tab:orange",
          "houlsby": "tab:brown", "pfeiffer": "tab:olive"}


def plot_methods(summary: dict, task: str, ax=None, base: dict | None = None):
    """Held-out accuracy (classification) or loss (code) against trainable parameters, one line per
    method (mean; bars: ±1 std over seeds), full fine-tuning as a horizontal line."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(8, 4.5))[1]
    key, _ = ft.metric(task)
    rows = summary[task]
    full = rows["full"]
    ax.axhline(full[f"{key}_mean"], color="k", lw=1.5, label=f"full fine-tuning ({full['trainable']:,} trained)")
    ax.axhspan(full[f"{key}_mean"] - full[f"{key}_std"], full[f"{key}_mean"] + full[f"{key}_std"], color="k", alpha=0.08)
    if base is not None:
        ax.axhline(base[task][key], color="gray", ls=":", label="base model (no fine-tuning)")
    for method in M.METHODS:
        points = sorted((row["trainable"], row[f"{key}_mean"], row[f"{key}_std"], name)
                        for name, row in rows.items() if row["method"] == method)
        if not points:
            continue
        x, y, e, names = zip(*points)
        ax.errorbar(x, y, yerr=e, fmt="o-", color=COLORS[method], capsize=3, label=M.LABELS[method])
        for xi, yi, name in zip(x, y, names):
            ax.annotate(name.split(" ", 1)[1] if " " in name else "", (xi, yi), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=COLORS[method])
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel({"accuracy": "test accuracy", "loss": "code validation loss (nats/byte)"}[key])
    ax.set_title({"cls": "Docstring -> package: methods at matched budgets",
                  "code": "Prose -> code: methods at matched budgets"}[task])
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


# ---------------------------------------------------------------------------
# the claim
# ---------------------------------------------------------------------------

CLAIM = ("Prompt tuning, which trains only input embeddings, is cheap but can fall short on harder tasks; among "
         "the parameter-efficient methods LoRA tends to offer the best mix of results close to full fine-tuning, "
         "little inference cost and few trained parameters.")


def code_shares(rows: dict, base_loss: float) -> dict:
    """{setting: share of full fine-tuning's improvement of the code validation loss (over the base model)
    that the setting recovers}; NaN when full fine-tuning improved less than finetune.MIN_FULL_GAIN."""
    full_gain = base_loss - rows["full"]["loss_mean"]
    if full_gain < ft.MIN_FULL_GAIN:
        return {name: float("nan") for name in rows if name != "full"}
    return {name: (base_loss - row["loss_mean"]) / full_gain for name, row in rows.items() if name != "full"}


def code_summary(rows: dict, base_loss: float) -> str:
    """One paragraph on the domain-shift task (reported, not judged)."""
    shares = code_shares(rows, base_loss)
    order = sorted(shares, key=lambda n: -np.nan_to_num(shares[n], nan=-np.inf))
    worse = [n for n in order if rows[n]["loss_mean"] > base_loss]
    return (f"Domain shift (code validation loss, reported, not judged; one seed): the base model is at {base_loss:.3f} "
            f"nats/byte, full fine-tuning reaches {rows['full']['loss_mean']:.3f}; the share of that improvement each "
            "method recovers, best first: " + ", ".join(
                f"{n} ({rows[n]['trainable']:,}) {rows[n]['loss_mean']:.3f} = {100 * shares[n]:.0f}%" for n in order) + "."
            + ("" if not worse else f" Worse than the base model at the end: {', '.join(worse)}"
               + (" -- prompt and prefix tuning do not start at the base model (the real tokens attend to the virtual "
                  "ones from the first step), and these steps did not bring it back."
                  if all(n.split()[0] in M.VIRTUAL for n in worse) else ".")))


def _fmt(row: dict, key: str) -> str:
    return f"{row[f'{key}_mean']:.3f} ± {row[f'{key}_std']:.3f}"


def run(ctx, g: Grid | None = None) -> ClaimResult:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = g or grid(ctx.quick)
    s = ft.sizes(ctx.quick)
    env = ft.environment(ctx)
    config = env.base.config
    specs = specs_for(g, config, {task: s.common(task) for task in ("cls", "code")})
    results = method_runs(ctx, specs)
    summary = summarize(specs, results)
    base = ctx.shared.get("finetune_base_figures") or ft.base_figures(env, ctx.quick)
    budget = g.cls_budgets[0]
    head = headline(summary, config, budget)
    head["lora_gain_over_base"] = head["lora"] - base["cls"]["accuracy"]
    verdict = judge_expressiveness(head["lora_minus_prompt"], head["full_minus_lora"], head["lora_gain_over_base"])

    tasks = [t for t in ("cls", "code") if t in summary]
    fig, axes = plt.subplots(1, len(tasks), figsize=(9.5 * len(tasks), 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        plot_methods(summary, task, ax, base)
    fig.tight_layout()
    fig.savefig(ctx.path("methods_accuracy.png"), dpi=110)
    plt.close(fig)

    cls = summary["cls"]
    judged = [n for n, row in cls.items() if n != "full" and (row["seeds"] == list(g.cls_seeds))]
    ranking = sorted(judged, key=lambda n: -cls[n]["accuracy_mean"])
    ahead = [n for n in ranking if cls[n]["accuracy_mean"] > head["lora"]]
    table = ["| task | method | setting | trainable | loss | accuracy | seeds | s / run |", "|---|---|---|---|---|---|---|---|"]
    for task in tasks:
        for name, row in sorted(summary[task].items(), key=lambda kv: (kv[1]["method"] != "full", -kv[1]["trainable"])):
            table.append(f"| {task} | {M.LABELS[row['method']]} | {name} | {row['trainable']:,} | {_fmt(row, 'loss')} | "
                         f"{_fmt(row, 'accuracy')} | {len(row['seeds'])} | {row['seconds']:.0f} |")
    lrs = ", ".join(f"{M.LABELS[m]} {LR[m]:g}" for m in LR)
    mode = ("**Quick mode** (one seed, a few dozen steps, LoRA and prompt tuning only): far too rough to rank "
            "methods; the full run trains every method. " if ctx.quick else "")
    lines = [
        mode + f"Classification (chance {1 / env.cls.n_classes:.3f}, base model {base['cls']['accuracy']:.3f}) at the judged "
        f"budget of {budget:,} trained numbers: LoRA on Wq, Wv ({head['lora_trainable']:,}) reaches "
        f"{head['lora']:.3f} test accuracy, prompt tuning ({head['prompt_trainable']:,}, the most this task leaves room "
        f"for: {M.matched_size('prompt', budget, config, TASK_ROW)} virtual tokens before {TASK_ROW}-token rows in a {config.block_size}-token context) {head['prompt']:.3f}: LoRA ahead by "
        f"{100 * head['lora_minus_prompt']:+.1f} points ("
        + (f"{verdict['parts']['LoRA above prompt tuning']}; thresholds {100 * PROMPT_GAP_HOLDS:.0f} / "
           f"{100 * PROMPT_GAP_PARTLY:.0f})" if head["lora_gain_over_base"] >= MIN_LORA_GAIN else
           f"**not judged**, counted as \"{verdict['parts']['LoRA above prompt tuning']}\": LoRA is only "
           f"{100 * head['lora_gain_over_base']:+.1f} points above the base model, {100 * MIN_LORA_GAIN:.0f} needed -- "
           "neither has learned the task yet)")
        + f". Full fine-tuning ({cls['full']['trainable']:,}) reaches "
        f"{head['full']:.3f}, {100 * head['full_minus_lora']:+.1f} points above LoRA ({verdict['parts']['LoRA near full fine-tuning']}; "
        f"thresholds {100 * FULL_GAP_HOLDS:.0f} / {100 * FULL_GAP_PARTLY:.0f}).",
        "",
        "At that budget, best first: " + ", ".join(f"{n} {cls[n]['accuracy_mean']:.3f}" for n in ranking)
        + f". LoRA ranks {1 + [n.startswith('lora ') for n in ranking].index(True)} of {len(ranking)}"
        + (f"; ahead of it: {', '.join(ahead)}" if ahead else "") + ".",
        "",
        *([code_summary(summary["code"], base["code"]["loss"]), ""] if "code" in summary else []),
        f"Every run: claim 4's setup ({s.cls_steps} classification / {s.code_steps} code AdamW steps of {s.batch_size} rows, "
        f"warm-up a tenth, cosine decay; seeds {list(g.cls_seeds)} at the judged budget"
        + (f", {list(g.cls_other_seeds)} at {', '.join(f'{b:,}' for b in g.cls_budgets[1:])}" if g.cls_budgets[1:] else "")
        + f"). Learning rates: LoRA {', '.join(sorted({f'{r.spec.lr:g}' for r in results if r.spec.method == 'lora'}))}, full "
        f"{', '.join(sorted({f'{r.spec.lr:g}' for r in results if r.spec.method == 'full'}))} (the rates claim 4 chose), {lrs} "
        "(chosen on the validation split); weight decay 0.1, except (IA)³ 0. Sizes matched to each budget "
        "(`methods.matched_size`): DoRA on the fused c_attn (DoRA has no per-slice enable_lora) trains its rank's "
        "LoRA count plus a magnitude per output; adapters carry two biases; (IA)³ has one size.",
        "",
        *table,
    ]
    figures = {"summary": summary, "headline": head, "parts": verdict["parts"], "base": base, "ranking": ranking,
               "code_shares": code_shares(summary["code"], base["code"]["loss"]) if "code" in summary else {},
               "curves": {spec.label(): res.losses for spec, res in zip(specs, results) if spec.seed == g.cls_seeds[0]}}
    return ClaimResult(
        key="expressiveness",
        title="Expressiveness: the methods at matched budgets",
        claim=CLAIM,
        measured="test accuracy of LoRA, DoRA, (IA)³, prompt and prefix tuning, Houlsby and Pfeiffer adapters at "
                 "matched trainable-parameter budgets, against full fine-tuning",
        figure=f"at {budget:,} params: LoRA {head['lora']:.3f}, prompt {head['prompt']:.3f}, full {head['full']:.3f}",
        verdict=verdict["verdict"],
        thresholds={"judged budget (trained numbers)": budget, "LoRA - prompt tuning, holds >=": PROMPT_GAP_HOLDS,
                    "... partly >=": PROMPT_GAP_PARTLY, "full - LoRA, holds <=": FULL_GAP_HOLDS, "... partly <=": FULL_GAP_PARTLY},
        figures=figures,
        settings={"mode": "quick" if ctx.quick else "full", "grid": vars(g), "cls_steps": s.cls_steps, "code_steps": s.code_steps,
                  "batch_size": s.batch_size, "lr": {**LR, **{m: sorted({r.spec.lr for r in results if r.spec.method == m})
                                                          for m in ("lora", "full")}},
                  "weight_decay": {"default": ft.WEIGHT_DECAY, **WEIGHT_DECAY}, "prompt_init": M.PROMPT_INIT,
                  "runs": len(results), "train_seconds": round(sum(r.seconds for r in results), 1)},
        plots=["methods_accuracy.png"],
        body="\n".join(lines),
    )
