"""The real base: fine-tuning all-MiniLM-L6-v2, a pretrained BERT, on the docstring task.

Claims 4-6 are measured on the toy GPT that minilora pre-trained itself (0.84M
parameters, 72 minutes of pre-training); whether a verdict there is LoRA's or a base
model that barely knows language, only a real pretrained model can tell. This module
trains one: sentence-transformers' all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads,
22.7M parameters; ``minilora.models.load_minilm``), as Hugging Face's
``BertForSequenceClassification``:

    logits = classifier(tanh(pooler.dense(h_[CLS])))        (B, 6)

on the same classification task as the toy (``finetune.docstring_package_task`` rows:
which of six standard-library packages a docstring's first 60 bytes come from), read
by BERT's WordPiece tokenizer, each batch padded to its longest row.

Methods, as PEFT runs them (``task_type="SEQ_CLS"``):

* **full** fine-tuning: every parameter;
* **LoRA** on ``query`` + ``value`` (PEFT's default for BERT, the LoRA paper's Wq, Wv)
  or on all four attention matrices, with the ``classifier`` trained in full as PEFT's
  ``modules_to_save``, and ``pooler`` too: this checkpoint's pooler was never trained
  (sentence-transformers pools by mean; its bias is exactly zero), while the
  classifier reads through it -- full fine-tuning trains it, and LoRA without it would
  classify through a random tanh layer;
* the **linear probe**: classifier and pooler trained, the encoder frozen -- the
  baseline a fine-tuning run must beat (``tuning``: a run that does not has failed).

Dropout is off (the toy base has none, and the PyTorch reference of claim 5 must
draw the same masks, which two libraries cannot). Learning rates are chosen on the
validation split as for the toy (``tuning``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

import minilora
from minilora import backend as B
from minilora import nn
from minilora.experiments import finetune as ft
from minilora.experiments import tuning
from minilora.peft import LoraConfig, get_peft_model
from minilora.tensor import no_grad
from minilora.train import TrainConfig, train

NAME = "all-MiniLM-L6-v2"

# LoRA's targets, by Hugging Face's module names (a name matches itself and any name ending in "." + it)
TARGETS = {"qv": ["query", "value"], "attn": ["query", "key", "value", "attention.output.dense"]}
TARGET_LABELS = {"qv": "query, value", "attn": "query, key, value, attention.output.dense"}
MODULES_TO_SAVE = ["pooler"]  # beside the classifier, which task_type="SEQ_CLS" adds (see the module docstring)
ALPHA_PER_RANK = ft.ALPHA_PER_RANK  # alpha = 2 r, as on the toy base
WEIGHT_DECAY = ft.WEIGHT_DECAY

# Learning rates: LR are the defaults (the quick mode's), RATE_GRID what the full run chooses from
# on the validation split, for the probe, full fine-tuning and LoRA at r = 8 and r = 64 on both target sets.
LR = {"probe": 3e-3, "full": 1e-4, "lora": 1e-3}
RATE_GRID = {"probe": (1e-3, 3e-3, 1e-2), "full": (3e-5, 1e-4, 3e-4), "lora": (3e-4, 1e-3, 3e-3)}
TUNED_TARGETS = ("qv", "attn")
DEFAULT_TARGET = "qv"


@dataclass(frozen=True)
class Sizes:
    steps: int  # optimizer steps per run
    batch_size: int  # rows per step
    seeds: tuple
    qv_ranks: tuple  # LoRA ranks on query + value
    attn_ranks: tuple  # LoRA ranks on the four attention matrices

    def common(self) -> dict:
        return dict(steps=self.steps, batch_size=self.batch_size, warmup_steps=max(1, self.steps // 10))


# Full: 150 steps of 16 rows (about 2 epochs of the 1,248 training rows); 31 runs with the selection.
# Quick: 8 steps, one seed, r = 8 and 64 (claim 6's adapters): a demo of the code path.
QUICK = Sizes(steps=8, batch_size=16, seeds=(0,), qv_ranks=(8, 64), attn_ranks=())
FULL = Sizes(steps=150, batch_size=16, seeds=(0, 1, 2), qv_ranks=(1, 4, 8, 64), attn_ranks=(8, 64))


def sizes(quick: bool) -> Sizes:
    return QUICK if quick else FULL


@dataclass(frozen=True)
class RunSpec:
    """One fine-tuning run of MiniLM. Frozen, so it can key the cache of runs.
    Its fields mirror ``finetune.RunSpec``'s, so ``finetune.summarize`` reads both."""

    method: str  # "full", "lora" or "probe"
    target: str | None = None  # a key of TARGETS (LoRA only)
    r: int = 0
    seed: int = 0
    steps: int = 150
    batch_size: int = 16
    warmup_steps: int = 15
    lr: float | None = None  # None: the rate chosen for the setting (``resolved``)
    alpha: float | None = None  # None: ALPHA_PER_RANK * r
    use_rslora: bool = False
    task = "cls"  # (not a field) the one task

    def __post_init__(self):
        if self.method not in ("full", "lora", "probe"):
            raise ValueError(f"minilm.RunSpec.method must be 'full', 'lora' or 'probe', got {self.method!r}")
        if self.method == "lora" and (self.target not in TARGETS or self.r < 1):
            raise ValueError(f"a LoRA RunSpec needs target in {list(TARGETS)} and r >= 1; got {self.target!r}, r={self.r}")

    @property
    def lora_alpha(self) -> float:
        return ALPHA_PER_RANK * self.r if self.alpha is None else self.alpha

    def label(self) -> str:
        if self.method != "lora":
            return f"MiniLM {self.method} seed {self.seed}"
        return f"MiniLM LoRA {self.target} r={self.r} seed {self.seed}"

    def train_config(self, progress: bool = False) -> TrainConfig:
        if self.lr is None:
            raise ValueError(f"{self.label()}: no learning rate; resolve the spec first (minilm.resolved)")
        return TrainConfig(max_steps=self.steps, lr=self.lr, warmup_steps=self.warmup_steps, weight_decay=WEIGHT_DECAY,
                           eval_interval=0, seed=self.seed, progress=progress, desc=self.label())


def lora_config(spec: RunSpec) -> LoraConfig:
    return LoraConfig(r=spec.r, lora_alpha=spec.lora_alpha, use_rslora=spec.use_rslora, target_modules=list(TARGETS[spec.target]),
                      task_type="SEQ_CLS", modules_to_save=list(MODULES_TO_SAVE))


# ---------------------------------------------------------------------------
# the model and the data
# ---------------------------------------------------------------------------


@dataclass
class Environment:
    """The pretrained weights (NumPy, dropout-free config), the tokenizer and the task's data."""

    config: object  # BertConfig, dropout 0
    num_labels: int
    state: dict  # the pretrained encoder's parameters (the classifier's are drawn per seed)
    tokenizer: object
    cls: object  # the toy's ClassificationTask: the same rows, read as text
    provenance: dict


def load_environment(cls_task=None) -> Environment:
    """MiniLM from the installed package, and the classification task (the toy's rows, by default)."""
    from minilora.models import load_minilm
    from minilora.models.minilm import WEIGHTS_SHA256

    if cls_task is None:
        cls_task = ft.docstring_package_task(max_prompt_bytes=ft.CLS_PROMPT_BYTES, per_class=ft.CLS_PER_CLASS)
    model, tokenizer = load_minilm(num_labels=cls_task.n_classes)
    return environment_of(model, tokenizer, cls_task, {"minilm_sha256": WEIGHTS_SHA256,
                                                       "minilm_task_sha256": ft.task_sha256(cls_task)})


def environment_of(model, tokenizer, cls_task, provenance: dict | None = None) -> Environment:
    """An Environment around any ``BertForSequenceClassification`` (tests use a tiny random one)."""
    config = dataclasses.replace(model.config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                 classifier_dropout=0.0)
    state = {k: np.array(B.to_numpy(v)) for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    return Environment(config, cls_task.n_classes, state, tokenizer, cls_task, dict(provenance or {}))


def environment(ctx) -> Environment:
    if "minilm_env" not in ctx.shared:
        ctx.shared["minilm_env"] = load_environment(ft.environment(ctx).cls if "toy" in ctx.bases else None)
        ctx.shared.setdefault("provenance", {}).update(ctx.shared["minilm_env"].provenance)
    return ctx.shared["minilm_env"]


def fresh_model(spec: RunSpec, env: Environment):
    """The pretrained encoder with a classifier drawn after ``minilora.manual_seed(spec.seed)`` (the same
    for every method at one seed), then the run's method: LoRA's adapter (drawn next), the probe's
    frozen encoder, or nothing (full fine-tuning)."""
    from minilora.models import BertForSequenceClassification
    from minilora.models.bert import init_bert_weights

    dtype = env.state["bert.embeddings.word_embeddings.weight"].dtype
    model = BertForSequenceClassification(env.config, env.num_labels, dtype=dtype)
    model.load_state_dict({**env.state, **{k: v for k, v in model.state_dict().items() if k.startswith("classifier.")}})
    minilora.manual_seed(spec.seed)
    init_bert_weights(model.classifier, env.config)
    if spec.method == "lora":
        return get_peft_model(model, lora_config(spec))
    if spec.method == "probe":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(("classifier.", "bert.pooler.")))
    return model


class Classification:
    """The task's rows as WordPieces: random training batches padded to their longest row,
    test and validation figures."""

    def __init__(self, task, tokenizer, batch_size: int, eval_chunk: int = 64, with_val: bool = True):
        self.task, self.tokenizer, self.batch_size, self.eval_chunk = task, tokenizer, batch_size, eval_chunk
        self.with_val = with_val  # False: no validation figures (the quick mode chooses no rate)
        self.rows = {name: tokenizer.backend.encode_batch(list(task.split(name).prompts)) for name in ("train", "val", "test")}
        self.labels = {name: np.asarray(task.split(name).labels) for name in self.rows}

    def lengths(self, split: str) -> np.ndarray:
        """WordPieces per row, [CLS] and [SEP] counted."""
        return np.array([len(e.ids) for e in self.rows[split]])

    def batch(self, split: str, idx) -> tuple:
        """(inputs: input_ids, attention_mask, token_type_ids, each (B, T) with T the longest row; labels (B,))."""
        return self.tokenizer.pad([self.rows[split][i] for i in idx]), self.labels[split][idx]

    def batches(self, rng: np.random.Generator):
        return self.batch("train", rng.integers(0, len(self.labels["train"]), self.batch_size))  # drawn with replacement

    @no_grad()
    def logits(self, model, split: str) -> np.ndarray:
        """(N, num_labels) logits of a split, ``eval_chunk`` rows a batch."""
        n = len(self.labels[split])
        chunks = [np.arange(i, min(i + self.eval_chunk, n)) for i in range(0, n, self.eval_chunk)]
        return np.concatenate([B.to_numpy(model(**self.batch(split, idx)[0])[0].data) for idx in chunks])

    def score(self, logits: np.ndarray, split: str = "test") -> dict:
        """Cross-entropy (nats) and accuracy of a split's logits (N, K) (the PyTorch reference uses it too)."""
        y = self.labels[split]
        z = logits.astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return {"loss": float(-log_probs[np.arange(len(y)), y].mean()), "accuracy": float(np.mean(logits.argmax(axis=1) == y))}

    def evaluate(self, model) -> dict:
        """``loss``, ``accuracy`` on the test split; ``val_loss``, ``val_accuracy`` on the validation split."""
        val = self.score(self.logits(model, "val"), "val") if self.with_val else {}
        return {**self.score(self.logits(model, "test")), **{f"val_{k}": v for k, v in val.items()}}


class TrainView(nn.Module):
    """``minilora.train.train`` calls ``model(x, targets=y)``; a classifier takes ``(**inputs, labels=)``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs: dict, targets=None):
        return self.model(**inputs, labels=targets)


def finetune(spec: RunSpec, env: Environment, data: Classification, progress: bool = False) -> ft.RunResult:
    """Train one run and measure it (``finetune.measured_run``: a diverged run is returned with NaN figures).
    Full fine-tuning keeps every weight only for seed 0 (claim 6 reads it); other runs keep what they trained."""
    model = fresh_model(spec, env)
    result = ft.measured_run(spec, model, lambda: train(TrainView(model), data.batches, spec.train_config(progress),
                                                       evaluate=lambda m: ft.heldout(data, model)))
    if spec.method == "probe" or (spec.method == "full" and spec.seed != 0):
        result.state = {k: v for k, v in result.state.items() if k.startswith(("classifier.", "bert.pooler."))}
    return result


# ---------------------------------------------------------------------------
# the runs of one verify: the learning-rate selection, the grid, the baseline
# ---------------------------------------------------------------------------


def data_for(ctx) -> Classification:
    if "minilm_data" not in ctx.shared:
        env = environment(ctx)
        ctx.shared["minilm_data"] = Classification(env.cls, env.tokenizer, sizes(ctx.quick).batch_size, with_val=not ctx.quick)
    return ctx.shared["minilm_data"]


def run_specs(ctx, specs) -> list:
    """The RunResult of each spec (rates resolved first), each trained once per verify run."""
    cache = ctx.shared.setdefault("minilm_runs", {})
    env, data = environment(ctx), data_for(ctx)
    specs = resolved(ctx, specs)
    key = "|".join(f"{k}={v}" for k, v in sorted(env.provenance.items()))
    for spec in specs:
        if spec not in cache:
            cache[spec] = tuning.cached_run(spec, key, lambda spec=spec: finetune(spec, env, data, ctx.progress))
    return [cache[s] for s in specs]


def tuned_specs(quick: bool) -> dict:
    """``{setting: RunSpec without a rate}``: the probe, full fine-tuning, LoRA at r = 8, 64 on each tuned target."""
    common = dict(seed=sizes(quick).seeds[0], **sizes(quick).common())
    specs = [RunSpec("probe", **common), RunSpec("full", **common)]
    specs += [RunSpec("lora", t, r, **common) for t in TUNED_TARGETS for r in tuning.TUNED_RANKS]
    return {ft.setting_name(s): s for s in specs}


def learning_rates(ctx) -> dict:
    """``{setting: rate}``, chosen once per verify run on the validation split (quick mode: ``LR``).

    The probe is chosen first, by validation accuracy alone; the other settings then keep the best
    rate among their runs that beat the probe's validation accuracy (``tuning.choose_rate``).
    The table of every candidate goes to ``ctx.shared["minilm_lr_selection"]``.
    """
    if "minilm_learning_rates" in ctx.shared:
        return ctx.shared["minilm_learning_rates"]
    settings = tuned_specs(ctx.quick)
    rates = {name: LR[spec.method] for name, spec in settings.items()}
    if not ctx.quick:
        table = ctx.shared.setdefault("minilm_lr_selection", {})
        floor = None
        for name, spec in settings.items():  # the probe first: its validation accuracy is the others' floor
            runs = run_specs(ctx, [dataclasses.replace(spec, lr=lr) for lr in RATE_GRID[spec.method]])
            rates[name], rows = tuning.choose_rate({r.spec.lr: r.val for r in runs}, "accuracy", True, floor)
            table[name] = (rates[name], rows)
            if spec.method == "probe":
                floor = rows[rates[name]]["accuracy"]
    ctx.shared["minilm_learning_rates"] = rates
    return rates


def rate_for(rates: dict, spec: RunSpec) -> float:
    """The chosen rate of ``spec``'s setting, or of the nearest tuned one (``tuning``'s rule)."""
    return tuning.nearest_setting_rate(rates, spec, TUNED_TARGETS, DEFAULT_TARGET)


def resolved(ctx, specs) -> list:
    """``specs`` with each missing learning rate filled in from ``learning_rates(ctx)``."""
    return tuning.with_rates(specs, lambda: learning_rates(ctx), rate_for)


def grid(quick: bool) -> list:
    """Claim 4's runs on MiniLM: the probe, full fine-tuning and LoRA over ranks and targets, every seed."""
    s = sizes(quick)
    specs = []
    for seed in s.seeds:
        common = dict(seed=seed, **s.common())
        specs += [RunSpec("probe", **common), RunSpec("full", **common)]
        specs += [RunSpec("lora", "qv", r, **common) for r in s.qv_ranks]
        specs += [RunSpec("lora", "attn", r, **common) for r in s.attn_ranks]
    return specs


def grid_runs(ctx) -> tuple:
    """(summary, results, baseline): claim 4's MiniLM grid trained once, summarized with the probe as the
    baseline a run must beat (the probe's own row is judged against nothing). Quick mode's runs are too
    short for that (a dozen steps move a head faster than an encoder): there the baseline is the untrained model."""
    results = run_specs(ctx, grid(ctx.quick))
    probe = ft.summarize([r for r in results if r.spec.method == "probe"])["cls"]["probe"]
    floor = untrained_figures(ctx) if ctx.quick else {"accuracy": probe["accuracy_mean"], "loss": probe["loss_mean"]}
    baseline = {"cls": {"accuracy": floor["accuracy"], "loss": floor["loss"]}}
    summary = ft.summarize([r for r in results if r.spec.method != "probe"], baseline)
    summary["cls"]["probe"] = probe
    return summary, results, baseline


def untrained_figures(ctx) -> dict:
    """The pretrained encoder with seed 0's random classifier, before any training (for the record)."""
    if "minilm_untrained" not in ctx.shared:
        model = fresh_model(RunSpec("full", seed=0), environment(ctx))
        model.eval()
        ctx.shared["minilm_untrained"] = data_for(ctx).evaluate(model)
    return ctx.shared["minilm_untrained"]
