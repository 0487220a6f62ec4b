"""minilora's own byte-level base models -- the toy GPT-2 and its LLaMA twin -- as bases of the claims.

Both were pre-trained by minilora on the same prose (``minilora pretrain``; docs/base_model.md),
and both are fine-tuned on two tasks made from the standard library (``minilora.tasks``):

* **classification** (``"cls"``) -- which of six packages a docstring comes from, read off
  the logits of six label bytes (accuracy on the held-out test split);
* **domain shift** (``"code"``) -- from prose to Python source code (validation loss and
  next-byte accuracy on code files never seen in training).

``GPTBase`` is the Base protocol (``protocol.py``) for such a model; ``toy.py`` and ``llama.py``
each make one, naming the checkpoint, the architecture and the target sets. Which methods a GPT
base can train beside LoRA and full fine-tuning, and their trainable counts, are in
``gpt_methods.py``; the cost of a training step, analytic and in FLOPs, is at the end of this file.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import minilora
from minilora import backend as B
from minilora.data import get_batch
from minilora.experiments.bases import gpt_methods as methods
from minilora.experiments.bases.protocol import CostSetting
from minilora.experiments.core import traced_step
from minilora.experiments.runs import Grid, RunResult, TaskGrid, metric, trained_state
from minilora.models import GPT, GPTConfig
from minilora.peft import LoraConfig, get_peft_model
from minilora.tasks import code_corpus, docstring_package_task, next_token_accuracy
from minilora.tensor import no_grad
from minilora.train import NonFiniteLossError, TrainConfig, train

# ---------------------------------------------------------------------------
# the settings (every constant the report quotes)
# ---------------------------------------------------------------------------

# The tasks. Docstrings are cut to 60 bytes, so a row is 64 tokens: half the cost of
# the 124-token rows of the default task, and the package is still guessable from
# the first sentence. 260 per class: the smallest of the six packages (importlib)
# has 269 usable docstrings; 26 per class go to test, 26 to val, 208 to train.
CLS_PROMPT_BYTES = 60
CLS_PER_CLASS = 260
CODE_BLOCK = 64  # the domain-shift windows: 64 bytes of source code
EVAL_WINDOWS = {True: 128, False: 256}  # held-out windows of CODE_BLOCK bytes for the code figures: quick, full

# Where LoRA goes. "Wq+Wv" is the LoRA paper's default: rank-r updates of the query and value
# slices of GPT-2's fused c_attn (enable_lora). "c_attn" is PEFT's GPT-2 default -- one rank-r
# pair on the whole fused q,k,v projection -- the setting PEFT can express exactly, used for the
# PyTorch reference (claim 5) and for modularity (8). On the LLaMA twin: PEFT's LLaMA default,
# and every linear layer.
TARGETS = {
    "Wq": dict(target_modules=["c_attn"], enable_lora=[True, False, False]),
    "Wv": dict(target_modules=["c_attn"], enable_lora=[False, False, True]),
    "Wq+Wv": methods.LORA_QV,
    "attn": dict(target_modules=r".*\.attn\.(c_attn|c_proj)", enable_lora={"c_attn": [True, True, True]}),
    "all": dict(target_modules=r".*\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)",
                enable_lora={"c_attn": [True, True, True]}),
    "c_attn": dict(target_modules=["c_attn"]),
    "q_proj+v_proj": dict(target_modules=["q_proj", "v_proj"]),
    "llama-all": dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
}
TARGET_LABELS = {"Wq": "Wq", "Wv": "Wv", "Wq+Wv": "Wq+Wv", "attn": "Wq,Wk,Wv,Wo",
                 "all": "attention + MLP", "c_attn": "c_attn (fused q,k,v; PEFT's default)",
                 "q_proj+v_proj": "q_proj, v_proj (PEFT's LLaMA default)", "llama-all": "attention + MLP (LLaMA)"}
RANKS = (1, 2, 4, 8, 16, 64)
WEIGHT_DECAY = 0.1  # AdamW, on matrices only (minilora.train.param_groups); as in pre-training

# Learning rates. The full run chooses them on the validation split (``runs.rates``): one seed
# at each rate of RATE_GRID for full fine-tuning and for LoRA at r = 8 and r = 64 on each
# tuned target set; every other setting takes the nearest tuned setting's rate. LR holds the
# defaults: the quick mode's rates (it does not tune), and the rate of any setting the
# selection does not cover. They are the rates an earlier sweep found on the validation split.
# The other methods' rates (METHOD_LR) were chosen by a sweep on the classification task's
# validation split (claims/expressiveness.py lists it).
LR = {"cls": {"full": 3e-4, "lora": 3e-3}, "code": {"full": 1e-3, "lora": 3e-3}}
RATE_GRID = {"cls": {"full": (1e-4, 3e-4, 1e-3), "lora": (1e-3, 3e-3, 1e-2)},
             "code": {"full": (3e-4, 1e-3, 3e-3), "lora": (1e-3, 3e-3, 1e-2)}}
METHOD_LR = {"dora": 3e-3, "ia3": 1e-1, "prompt": 3e-2, "prefix": 1e-2, "houlsby": 3e-3, "pfeiffer": 1e-2}
# AdamW's decoupled weight decay, except for (IA)³, whose (out, 1) and (1, in) vectors count as
# matrices and start at 1: decay would pull them towards 0 -- towards switching the layer off.
METHOD_WEIGHT_DECAY = {"ia3": 0.0}

# Claim 4's grid. Quick: 8 runs (+4 for claims 5 and 9), about two minutes. Full: 82 classification
# runs of 200 steps and 46 code runs of 100 steps (the judged settings' 2 more seeds included; +6 for
# claim 9, +20 or more for the rate selection); at the 0.03-0.08 s a step measured on two shared cores
# (batch 8 x 64 bytes, one BLAS thread; docs/claims.md, the cost of a full run), 20-40 minutes. Every
# task also trains LoRA on c_attn at r=8: PEFT's setting, which claims 5 and 8 read.
QUICK = Grid(seeds=(0,), batch_size=8, tasks=(
    ("cls", TaskGrid(60, (("Wq+Wv", (1, 8, 64)),), extra=(("c_attn", 8),))),
    ("code", TaskGrid(30, (("all", (8,)),), extra=(("c_attn", 8),)))))
FULL = Grid(seeds=(0, 1, 2), batch_size=8, tasks=(
    ("cls", TaskGrid(200, tuple((t, RANKS) for t in ("Wq", "Wv", "Wq+Wv", "attn")), extra=(("c_attn", 8),))),
    ("code", TaskGrid(100, tuple((t, RANKS) for t in ("Wq+Wv", "all")), extra=(("c_attn", 8),)))),
    more_seeds=(3, 4))  # the judged settings (claims 4, 11, 12) get 5 seeds (issue #21); the others are described

# The cost claims' models: the base model, and one where the weights dominate at batch 1 -- GPT-2
# small's width (768, 12 heads) at two layers and a byte vocabulary, 14.5M parameters, so a step
# stays well under a second. LoRA is r = 8 on Wq and Wv, the LoRA paper's setting.
WIDE_CONFIG = GPTConfig(vocab_size=256, block_size=128, n_layer=2, n_head=12, n_embd=768)
COST_RANK = 8
COST_BATCHES = {True: (1, 8), False: (1, 2, 4, 8, 16, 32)}  # the base model's batch sweep (memory)
TIME_BATCH = 8  # the base model's batch in the timed setting (the fine-tuning claims' order of size)
TIME_REPEATS = {True: 6, False: 16}  # even: each method goes first equally often


# ---------------------------------------------------------------------------
# the data of the two tasks: batches(rng) for training, evaluate(model) on held-out data
# ---------------------------------------------------------------------------


@no_grad()
def _logits(model, x, chunk: int = 64) -> np.ndarray:
    """Logits (N, T, V) as NumPy, ``chunk`` rows at a time."""
    return np.concatenate([B.to_numpy(model(x[i:i + chunk])[0].data) for i in range(0, len(x), chunk)])


def _target_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N, T) -log softmax(logits)[target] at each position, 0 where the target is -100 (nats)."""
    keep = targets != -100
    z = logits[keep].astype(np.float64)  # (n, V)
    z -= z.max(axis=-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    out = np.zeros(targets.shape)
    out[keep] = -log_probs[np.arange(len(z)), targets[keep]]
    return out


def _cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean -log softmax(logits)[target] over the positions whose target is not -100 (nats)."""
    return float(_target_nll(logits, targets)[targets != -100].mean())


def _per_row(values: np.ndarray, targets: np.ndarray) -> list:
    """Each row's mean of ``values`` (N, T) over its positions whose target is not -100."""
    keep = targets != -100
    return ((values * keep).sum(axis=1) / keep.sum(axis=1)).tolist()


class ClassificationData:
    """The docstring -> package task: random training rows, test-split and validation-split figures."""

    def __init__(self, task, batch_size: int, eval_split: str = "test"):
        self.task, self.batch_size, self.eval_split = task, batch_size, eval_split
        self.x_eval, self.y_eval = task.batch(eval_split, slice(None))  # (N, T) each
        self.x_val, self.y_val = task.batch("val", slice(None))  # (N, T) each: for choosing learning rates

    def batches(self, rng: np.random.Generator):
        idx = rng.integers(0, len(self.task.train), self.batch_size)  # rows drawn with replacement
        return self.task.batch("train", idx)  # (B, T), (B, T)

    def evaluate(self, model) -> dict:
        """The held-out figures ``loss`` and ``accuracy``, each row's as ``rows`` (what intervals resample),
        and the validation split's as ``val_loss``, ``val_accuracy``."""
        val = self.score(_logits(model, self.x_val), self.y_val)
        logits = _logits(model, self.x_eval)
        return {**self.score(logits), "rows": self.row_figures(logits), **{f"val_{k}": v for k, v in val.items()}}

    def row_figures(self, logits: np.ndarray) -> dict:
        """Each held-out row's loss and whether it was classified right: ``{"loss": [...], "accuracy": [0/1, ...]}``."""
        right = self.task.predict(logits, self.y_eval) == self.task.true_labels(self.y_eval)
        return {"loss": _per_row(_target_nll(logits, self.y_eval), self.y_eval), "accuracy": right.astype(float).tolist()}

    def score(self, logits: np.ndarray, targets: np.ndarray | None = None) -> dict:
        """Figures of the logits (N, T, V) of the held-out rows (also used by the PyTorch reference)."""
        targets = self.y_eval if targets is None else targets
        return {"loss": _cross_entropy(logits, targets), "accuracy": self.task.accuracy(logits, targets)}


class CodeData:
    """The prose -> code shift: random training windows, fixed held-out windows of code.

    The corpus has two splits, by file. Its held-out files give two disjoint sets of windows:
    the reported ones (``eval_windows``, spread evenly over them) and, half-way between those,
    half as many for choosing learning rates -- other bytes of the same files, so the choice
    is not blind to them as the classification task's separate split is.
    """

    def __init__(self, corpus, batch_size: int, block: int = CODE_BLOCK, eval_windows: int = 512):
        self.corpus, self.batch_size, self.block = corpus, batch_size, block
        # windows spread evenly over the whole validation split (not only its first files)
        starts = np.linspace(0, corpus.val.size - block - 1, eval_windows).astype(np.int64)  # (n,)
        self.x_eval, self.y_eval = self._windows(starts)
        between = (starts[:-1] + starts[1:]) // 2  # (n - 1,): half-way, disjoint from the reported windows
        self.x_val, self.y_val = self._windows(between[::2])  # (n // 2, T)

    def _windows(self, starts):
        index = starts[:, None] + np.arange(self.block)  # (n, T)
        return self.corpus.val[index].astype(np.int64), self.corpus.val[index + 1].astype(np.int64)

    def batches(self, rng: np.random.Generator):
        return get_batch(self.corpus.train, self.batch_size, self.block, rng)  # (B, T), (B, T)

    def evaluate(self, model) -> dict:
        """``loss`` and ``accuracy`` on the reported windows (each window's as ``rows``); ``val_loss``,
        ``val_accuracy`` on the tuning ones."""
        val = self.score(_logits(model, self.x_val), self.y_val)
        logits = _logits(model, self.x_eval)
        return {**self.score(logits), "rows": self.row_figures(logits), **{f"val_{k}": v for k, v in val.items()}}

    def row_figures(self, logits: np.ndarray) -> dict:
        """Each reported window's mean loss and next-byte accuracy (every window has ``block`` positions, so the
        mean over windows is the figure itself)."""
        right = (logits.argmax(axis=-1) == self.y_eval).astype(float)
        return {"loss": _per_row(_target_nll(logits, self.y_eval), self.y_eval), "accuracy": _per_row(right, self.y_eval)}

    def score(self, logits: np.ndarray, targets: np.ndarray | None = None) -> dict:
        """Figures of the logits (n, T, V) of the validation windows."""
        targets = self.y_eval if targets is None else targets
        return {"loss": _cross_entropy(logits, targets), "accuracy": next_token_accuracy(logits, targets)}


@dataclass
class Environment:
    """Everything a GPT base's runs share: the base model and the two tasks' data."""

    base: object  # a GPT, or the LLaMA twin
    cls: object  # ClassificationTask
    code: object  # Corpus
    provenance: dict

    def data(self, spec, eval_windows: int):
        if spec.task == "cls":
            return ClassificationData(self.cls, spec.batch_size)
        return CodeData(self.code, spec.batch_size, CODE_BLOCK, eval_windows)


def docstring_task(block_size: int = 128):
    """The classification task as every base is fine-tuned on it (MiniLM reads the same rows as text)."""
    return docstring_package_task(max_prompt_bytes=CLS_PROMPT_BYTES, per_class=CLS_PER_CLASS, block_size=block_size)


def stdlib_tasks(session=None, block_size: int = 128) -> tuple:
    """(the classification task, the code corpus), built once per session when one is given."""
    if session is None:
        return docstring_task(block_size), code_corpus()
    return (session.once(("docstring task", block_size), lambda: docstring_task(block_size)),
            session.once(("code corpus",), code_corpus))


def load_environment(arch: str = "gpt", path=None, tasks: tuple | None = None) -> Environment:
    """The shipped base model of ``arch`` (or the one at ``path``) and the two tasks, with their provenance (hashes)."""
    from minilora.pretrain import ARCHS, base_log, load_base

    path = Path(path if path is not None else ARCHS[arch][2])
    base = load_base(arch=arch, path=path)
    cls, code = tasks if tasks is not None else stdlib_tasks(block_size=base.config.block_size)
    provenance = {"base_model_sha256": hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest(),
                  "classification_task_sha256": task_sha256(cls), "code_corpus_sha256": code.sha256}
    try:
        provenance["base_model_val_loss"] = base_log(path)["val_loss"]
    except (OSError, KeyError):
        pass
    return Environment(base, cls, code, provenance)


def task_sha256(task) -> str:
    """sha256 over the rows of every split of a classification task: equal hashes, equal data."""
    h = hashlib.sha256()
    for name in ("train", "val", "test"):
        s = task.split(name)
        for array in (s.inputs, s.targets):
            h.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------


def lora_config(spec) -> LoraConfig:
    """The LoraConfig of a LoRA run."""
    return LoraConfig(r=spec.r, lora_alpha=spec.lora_alpha, use_rslora=spec.use_rslora, **copy.deepcopy(TARGETS[spec.target]))


def fresh_model(spec, base):
    """A copy of ``base`` (a GPT, or the LLaMA twin) set up for the run: its projections in NF4 if
    ``spec.quantized`` (QLoRA), then the run's method -- LoRA's adapter, another PEFT method's
    modules, or nothing (full fine-tuning).

    The method's random initialisation is drawn right after ``minilora.manual_seed(spec.seed)``
    (quantizing draws nothing), so the same spec gives the same initial adapter -- which the
    reference (claim 5) copies, and which claim 12's runs on the dense and NF4 bases share."""
    from minilora.quant import quantize_model

    model = type(base)(base.config, dtype=base.lm_head.weight.dtype)
    model.load_state_dict(base.state_dict())  # copies
    if spec.quantized:
        quantize_model(model, double_quant=True)
    minilora.manual_seed(spec.seed)
    if spec.method == "lora":
        return get_peft_model(model, lora_config(spec))
    if spec.method != "full":
        return get_peft_model(model, methods.peft_config(spec.method, spec.r or None))
    return model


def heldout(data, model) -> dict:
    """``data.evaluate`` with its keys prefixed (train() shows its training "loss" beside them)."""
    return {f"heldout_{k}": v for k, v in data.evaluate(model).items()}


def measured_run(spec, model, training) -> RunResult:
    """Run ``training()`` (a ``train`` call evaluating with ``heldout``) and collect a RunResult:
    the test figures in ``final``, the validation figures in ``val``; NaN if the loss diverged."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    try:
        history = training()
    except NonFiniteLossError:
        nan = {"loss": float("nan"), "accuracy": float("nan")}
        return RunResult(spec, [], dict(nan), trainable, 0.0, {}, dict(nan))
    figures = {k.removeprefix("heldout_"): v for k, v in history.last_eval().items() if k != "step"}
    rows = figures.pop("rows", {})
    final = {k: v for k, v in figures.items() if not k.startswith("val_")}
    val = {k.removeprefix("val_"): v for k, v in figures.items() if k.startswith("val_")}
    return RunResult(spec, history.losses, final, trainable, history.seconds, trained_state(model), val, rows=rows)


def label(spec) -> str:
    """The run's name in the report, e.g. "cls LoRA Wq+Wv r=8 alpha=16 seed 0", "cls prompt P=64 seed 0"."""
    nf4 = " on NF4" if spec.quantized else ""
    if spec.method == "full":
        return f"{spec.task} full{nf4} seed {spec.seed}"
    if spec.method == "lora":
        extra = f" alpha={spec.lora_alpha:g}" + (" rslora" if spec.use_rslora else "")
        return f"{spec.task} LoRA {spec.target} r={spec.r}{extra}{nf4} seed {spec.seed}"
    return f"{spec.task} {spec.method} {methods.size_label(spec.method, spec.r or None)}".strip() + f"{nf4} seed {spec.seed}"


def default_lr(spec) -> float:
    """The rate a run takes when none was chosen for its setting."""
    return LR[spec.task][spec.method] if spec.method in ("full", "lora") else METHOD_LR[spec.method]


def train_config(spec, progress: bool = False) -> TrainConfig:
    return TrainConfig(max_steps=spec.steps, lr=default_lr(spec) if spec.lr is None else spec.lr,
                       warmup_steps=spec.warmup_steps, weight_decay=METHOD_WEIGHT_DECAY.get(spec.method, WEIGHT_DECAY),
                       eval_interval=0, seed=spec.seed, progress=progress, desc=label(spec))


def finetune(spec, base, data, progress: bool = False) -> RunResult:
    """Train one run of ``base`` (a GPT, or the LLaMA twin) on ``data`` (a ``ClassificationData`` or
    ``CodeData``) and measure it. A run whose loss stops being finite is returned, not raised: its
    figures are NaN, and ``runs.rates.run_status`` reports it as diverged.

    Every run is scored on the test and the validation split (the failure rule reads the validation
    one); the other methods read the logits after prompt tuning's P virtual positions."""
    model = fresh_model(spec, base)
    if spec.method in ("full", "lora"):
        return measured_run(spec, model, lambda: train(model, data.batches, train_config(spec, progress),
                                                       evaluate=lambda m: heldout(data, m)))
    skip = spec.r if spec.method == "prompt" else 0  # prompt tuning's logits cover its P virtual positions first

    def score(m):
        logits = _logits(m, data.x_eval)[:, skip:]
        val = data.score(_logits(m, data.x_val)[:, skip:], data.y_val)  # what the failure rule reads
        return {f"heldout_{k}": v for k, v in {**data.score(logits), "rows": data.row_figures(logits),
                                               **{f"val_{k}": v for k, v in val.items()}}.items()}

    return measured_run(spec, model, lambda: train(model, data.batches, train_config(spec, progress), evaluate=score))


def projections(state: dict) -> dict:
    """``{"h.0.Wq": (out, in) array, ...}`` of a GPT state: Wq, Wk, Wv (slices of c_attn), Wo, W_fc, W_proj of each layer."""
    out = {}
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("transformer.h.")})
    for i in layers:
        h = f"transformer.h.{i}."
        qkv = state[h + "attn.c_attn.weight"]  # (3C, C)
        C = qkv.shape[1]
        for k, name in enumerate(("Wq", "Wk", "Wv")):
            out[f"h.{i}.{name}"] = qkv[k * C:(k + 1) * C]
        out[f"h.{i}.Wo"] = state[h + "attn.c_proj.weight"]
        out[f"h.{i}.W_fc"] = state[h + "mlp.c_fc.weight"]
        out[f"h.{i}.W_proj"] = state[h + "mlp.c_proj.weight"]
    return out


# ---------------------------------------------------------------------------
# the base
# ---------------------------------------------------------------------------


class GPTBase:
    """A byte-level model pre-trained by minilora (``arch``: "gpt" or "llama"), as a base of the claims."""

    TASKS = ("cls", "code")
    TARGETS = TARGETS
    TARGET_LABELS = TARGET_LABELS
    BASELINE_METHODS = ("full",)
    METHODS = ("full", "lora", *methods.METHODS[1:])
    COST_LORA = f"r={COST_RANK} on Wq, Wv (enable_lora)"

    def __init__(self, name: str, arch: str, short: str, title: str, in_text: str, peft_target: str, paper_target: str,
                 all_target: str, tuned_targets: dict, counts_published: bool = False, path=None):
        self.name, self.arch, self.path = name, arch, path
        # claim 1 judges the published models' counts on this base's section: it is a GPT-2 in miniature,
        # whose family's closed forms give them (its own counts are checked beside them)
        self.COUNTS_PUBLISHED = counts_published
        self.SHORT, self.TITLE, self.IN_TEXT = short, title, in_text
        self.PEFT_TARGET = peft_target  # PEFT's default target set for the model type (target_modules=None)
        self.PAPER_TARGET = paper_target  # the LoRA paper's setting: Wq and Wv
        self.ALL_TARGET = all_target  # every linear layer of the blocks
        self.TUNED_TARGETS = tuned_targets  # {task: target sets whose rates are chosen}
        self.DEFAULT_TARGET = paper_target  # an untuned target set takes this one's rate
        # the sizes (a test sets smaller ones on a copy): claim 4's grids, the rates chosen from, the cost models
        self.grids, self.rate_grids, self.eval_windows = {True: QUICK, False: FULL}, RATE_GRID, EVAL_WINDOWS
        self.cost_models, self.cost_batches = {"wide": WIDE_CONFIG, "base": None}, COST_BATCHES
    # -- the environment ------------------------------------------------------------------------

    def environment(self, session) -> Environment:
        return session.once(("environment", self.name), lambda: load_environment(self.arch, self.path, stdlib_tasks(session)))

    def run_identity(self, session) -> dict:
        return {"code_eval_windows": self.eval_windows[session.quick]}

    def width(self, session) -> int:
        config = self.environment(session).base.config
        return getattr(config, "n_embd", None) or config.hidden_size

    def facts(self, session) -> dict:
        """The model's size and the task's classes, for the report's prose."""
        env = self.environment(session)
        return {"parameters": env.base.config.num_parameters(), "n_classes": env.cls.n_classes}

    def data(self, spec, session):
        return self.environment(session).data(spec, self.eval_windows[session.quick])

    # -- runs -----------------------------------------------------------------------------------

    def grid(self, quick: bool) -> Grid:
        return self.grids[quick]

    def check(self, spec) -> None:
        if spec.task not in self.TASKS:
            raise ValueError(f"{self.name}: a run's task must be one of {self.TASKS}, got {spec.task!r}")
        if spec.method not in self.METHODS:
            raise ValueError(f"{self.name}: a run's method must be one of {self.METHODS}, got {spec.method!r}")
        if spec.method == "lora" and (spec.target not in TARGETS or spec.r < 1):
            raise ValueError(f"a LoRA run needs target in {list(TARGETS)} and r >= 1; got {spec.target!r}, r={spec.r}")
        if spec.method not in ("full", "lora"):
            methods.check(spec.method, spec.r or None)

    label = staticmethod(label)
    default_lr = staticmethod(default_lr)

    def fresh_model(self, spec, env):
        return fresh_model(spec, env.base)

    def pretrained_state(self, session) -> dict:
        """The frozen base model's weights, on the host (NumPy)."""
        return session.once(("pretrained state", self.name), lambda: {
            k: B.to_numpy(v) for k, v in self.environment(session).base.state_dict().items()})

    def finetune(self, spec, session) -> RunResult:
        return finetune(spec, self.environment(session).base, self.data(spec, session), progress=session.progress)

    def rate_grid(self, spec) -> tuple:
        return self.rate_grids[spec.task][spec.method]

    def rate_floor(self, session, task: str, table: dict) -> float:
        """A tuned run must beat the untuned base model's validation figure."""
        return self.untuned(session)[task][f"val_{metric(task)[0]}"]

    def untuned(self, session) -> dict:
        """The base model's figures before any fine-tuning (the starting point of every run), per task."""
        def figures():
            env = self.environment(session)
            with no_grad():
                return {"cls": ClassificationData(env.cls, 1).evaluate(env.base),
                        "code": CodeData(env.code, 1, CODE_BLOCK, self.eval_windows[session.quick]).evaluate(env.base)}

        return session.once(("untuned", self.name), figures)

    baseline = untuned  # a fine-tuning run must beat the untuned base model

    # -- the cost of a training step (claims 1-3) -------------------------------------------------

    def cost_config(self, model: str) -> GPTConfig:
        """The config of a cost model: "wide" (weights dominate at batch 1), "base" (the shipped base's shape)."""
        from minilora.pretrain import BASE_CONFIG

        return self.cost_models[model] or BASE_CONFIG

    def memory_settings(self, quick: bool) -> list:
        """The 768-wide model at batch 1 (judged: the weights dominate), then the base model's batch sweep."""
        return [self.cost_setting("wide", 1)] + [self.cost_setting("base", b) for b in self.cost_batches[quick]]

    def time_settings(self, quick: bool) -> list:
        return [self.cost_setting("wide", 1, TIME_REPEATS[quick]), self.cost_setting("base", TIME_BATCH, TIME_REPEATS[quick])]

    def cost_setting(self, model: str, batch: int, repeats: int = 0) -> CostSetting:
        config = self.cost_config(model)
        describe = {"config": model, "batch": batch} if not repeats else \
            {"config": model, "batch": batch, "tokens": batch * config.block_size}
        facts = {"n_layer": config.n_layer, "n_embd": config.n_embd, "block_size": config.block_size,
                 "parameters": config.num_parameters()}
        return CostSetting(model, batch, config.block_size, repeats, f"{model} batch {batch}", describe, facts)

    def cost_step(self, setting: CostSetting, method: str, session=None):
        return step_maker(self.cost_config(setting.model), setting.batch, method)

    def analytic_step_memory(self, setting: CostSetting, method: str, session=None) -> dict:
        return analytic_step_memory(self.cost_config(setting.model), setting.batch, method)

    def step_flops(self, setting: CostSetting, method: str, session=None) -> dict:
        return step_flops(self.cost_config(setting.model), setting.batch, method)

    # -- the update's matrices (claim 6) ----------------------------------------------------------

    def projections(self, state: dict) -> dict:
        return projections(state)

    def adapter_A(self, state: dict, spec) -> dict:
        """``{"h.0.Wq": A (r, in), "h.0.Wv": ...}`` from a Wq+Wv adapter's state (PEFT keys; A is (2r, in), q rows first)."""
        return adapter_A(state, spec.r)

    def adapter_B(self, state: dict, spec) -> dict:
        """``{"h.0.Wq": B (out, r), "h.0.Wv": ...}``, the partners of ``adapter_A``."""
        return adapter_B(state, spec.r)

    # -- serving (claims 7 and 10) ------------------------------------------------------------------

    def timed_models(self, quick: bool):
        return timed_models(quick, self.arch)

    def serving_variants(self, model, **kw) -> dict:
        return serving_variants(model, **kw)

    # -- the PyTorch reference (claim 5) -----------------------------------------------------------

    def reference_finetune(self, spec, session) -> dict:
        return torch_finetune(spec, self.environment(session).base, self.data(spec, session))


def torch_model(spec, base):
    """``base`` as a ``transformers`` GPT-2, with PEFT's LoRA carrying minilora's initial adapter (for a LoRA spec).

    PEFT cannot adapt the query and value slices of GPT-2's fused ``c_attn`` alone (the LoRA paper's
    Wq+Wv): its adapter on ``c_attn`` is one rank-r pair for q, k and v together -- the setting the
    reference runs (PEFT's default for GPT-2), beside full fine-tuning."""
    import torch

    from minilora.models.hf import to_transformers

    hf = to_transformers(base).train()  # dropout is 0 in the base config: train mode changes nothing
    if spec.method == "full":
        return hf
    if spec.target != "c_attn":
        raise ValueError(f"PEFT cannot express LoRA target {spec.target!r} exactly; the reference uses 'c_attn'")
    import peft

    config = peft.LoraConfig(r=spec.r, lora_alpha=spec.lora_alpha, use_rslora=spec.use_rslora, lora_dropout=0.0,
                             target_modules=["c_attn"], fan_in_fan_out=True)  # GPT-2's Conv1D stores W as (in, out)
    model = peft.get_peft_model(hf, config).to(hf.dtype)
    init = trained_state(fresh_model(spec, base))  # minilora's adapter before training, PEFT's keys
    result = peft.set_peft_model_state_dict(model, {k: torch.from_numpy(v) for k, v in init.items()})
    missing_lora = [k for k in result.missing_keys if "lora_" in k]
    if missing_lora or result.unexpected_keys:
        raise RuntimeError(f"copying minilora's adapter into PEFT failed: missing {missing_lora[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model


def torch_finetune(spec, base, data) -> dict:
    """The run again in torch + transformers + PEFT, from the same weights, initial adapter and batches
    (``runs.in_torch.torch_train``). Returns {"losses": [...], "final": {"loss", "accuracy"}}; the loss
    is cross-entropy over the already shifted targets with ``ignore_index=-100`` (not HF's ``labels=``,
    which would shift again)."""
    import torch
    import torch.nn.functional as F

    from minilora.experiments.runs.in_torch import torch_train

    torch.manual_seed(spec.seed)
    model = torch_model(spec, base)

    def loss_of(x, y):  # tensor() copies (the task's arrays are read-only)
        logits = model(input_ids=torch.tensor(x)).logits  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), torch.tensor(y).flatten(), ignore_index=-100)

    losses = torch_train(model, train_config(spec), data.batches, loss_of)
    model.eval()
    with torch.no_grad():
        x_eval = torch.tensor(data.x_eval)
        logits = torch.cat([model(input_ids=x_eval[i:i + 64]).logits for i in range(0, len(x_eval), 64)])
    return {"losses": losses, "final": data.score(logits.numpy())}


def adapter_A(state: dict, r: int) -> dict:
    """``{"h.0.Wq": A (r, in), "h.0.Wv": ...}`` from a Wq+Wv adapter's state (PEFT keys; A is (2r, in), q rows first)."""
    out = {}
    prefix = "base_model.model.transformer.h."
    for i in sorted({int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}):
        A = state[f"{prefix}{i}.attn.c_attn.lora_A.weight"]  # (2r, in)
        out[f"h.{i}.Wq"], out[f"h.{i}.Wv"] = A[:r], A[r:2 * r]
    return out


def adapter_B(state: dict, r: int) -> dict:
    """``{"h.0.Wq": B (C, r), "h.0.Wv": ...}`` from a Wq+Wv adapter's state: PEFT's lora_B is (3C, 2r), block
    diagonal -- q's rows take columns 0..r, v's rows (the last C) columns r..2r, k's rows are zero."""
    out = {}
    prefix = "base_model.model.transformer.h."
    for i in sorted({int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}):
        B = state[f"{prefix}{i}.attn.c_attn.lora_B.weight"]  # (3C, 2r)
        C = B.shape[0] // 3
        out[f"h.{i}.Wq"], out[f"h.{i}.Wv"] = B[:C, :r], B[2 * C:, r:2 * r]
    return out


# ---------------------------------------------------------------------------
# the cost of a training step: the model, analytic memory, FLOPs
# ---------------------------------------------------------------------------


def config_name(config: GPTConfig) -> str:
    """A short name for the figures: "wide", "base", or the shape."""
    from minilora.pretrain import BASE_CONFIG

    if config == WIDE_CONFIG:
        return "wide"
    if config == BASE_CONFIG:
        return "base"
    return f"L{config.n_layer}-d{config.n_embd}-h{config.n_head}-T{config.block_size}-V{config.vocab_size}"


def cost_lora_config(target: str, r: int, lora_alpha: float | None = None):
    """minilora's ``LoraConfig`` for a target on a GPT: "qv" adapts Wq and Wv inside the fused
    c_attn (``enable_lora``); "c_attn" the whole c_attn; "all" every attention and MLP matrix."""
    alpha = r if lora_alpha is None else lora_alpha
    if target == "qv":
        return LoraConfig(r=r, lora_alpha=alpha, target_modules=["c_attn"], enable_lora=[True, False, True])
    if target == "c_attn":
        return LoraConfig(r=r, lora_alpha=alpha, target_modules=["c_attn"])
    if target == "all":  # "c_proj" matches both attn.c_proj and mlp.c_proj
        return LoraConfig(r=r, lora_alpha=alpha, target_modules=["c_attn", "c_proj", "c_fc"])
    raise ValueError(f"unknown LoRA target {target!r}; known: 'qv', 'c_attn', 'all'")


def build(config: GPTConfig, method: str, r: int = COST_RANK, seed: int = 0):
    """A GPT of ``config`` for ``method`` ("full": every parameter trained; "lora": rank-r
    adapters on Wq and Wv, the rest frozen) and the list of parameters to optimize."""
    if method not in ("full", "lora"):
        raise ValueError(f"method must be 'full' or 'lora', got {method!r}")
    minilora.manual_seed(seed)
    model = GPT(config)
    if method == "lora":
        model = get_peft_model(model, cost_lora_config("qv", r))
    return model, [p for p in model.parameters() if p.requires_grad]


def step_maker(config: GPTConfig, batch: int, method: str):
    """``make()`` -> (model, trained parameters, loss_fn) of one training step of a GPT of ``config`` on random token ids."""
    def make():
        model, params = build(config, method)
        x, y = random_batch(config, batch)
        return model, params, lambda: model(x, y)[1]

    return make


def measure_step_memory(config: GPTConfig, batch: int, method: str) -> dict:
    """The bytes of one AdamW step of a GPT of ``config`` (``core.traced_step``), named by config, batch and method."""
    return {"config": config_name(config), "batch": batch, "method": method, **traced_step(step_maker(config, batch, method))}


def random_batch(config: GPTConfig, batch: int, seed: int = 0):
    """Random token ids (x, y), each (batch, block_size): a step costs the same whatever the tokens."""
    rng = np.random.default_rng(seed)
    shape = (batch, config.block_size)
    return rng.integers(0, config.vocab_size, shape), rng.integers(0, config.vocab_size, shape)


def saved_activations(config: GPTConfig, batch: int, method: str, r: int = COST_RANK) -> list:
    """What the forward pass leaves alive for the backward, op by op in the order the ops run:
    rows of ``(op, bytes of the op's output, bytes its backward keeps besides)``.

    Three facts about minilora's engine decide it (``minilora/tensor.py``):

    * an op's output lives as long as its node, and the backward's topological order holds
      every node until the backward reaches it -- so when the forward pass ends, every
      output is alive, though few backward rules read their output;
    * each fused op's backward closure keeps a few arrays of its own (layer_norm: the
      normalized input ``xhat`` and ``1/std``; attention: the probabilities ``P``; GELU:
      ``tanh(...)``; cross-entropy: the shifted logits);
    * the backward visits the ops in reverse and frees each one -- output and closure --
      once it has passed its gradient on: when it reaches the op of row i, rows 1..i are
      alive and the rows after it are gone (``analytic_step_memory`` reads the list so).

    Views (split, view, transpose) cost nothing. An op none of whose inputs needs a gradient
    builds no node and keeps nothing but its output, and only while a later node holds it:
    with LoRA, the embeddings and the first ``ln_1`` (all frozen, fed by token ids) save
    nothing for the backward.
    """
    B, T, d, h, V, L = batch, config.block_size, config.n_embd, config.n_head, config.vocab_size, config.n_layer
    N, f = B * T, 4  # tokens; bytes per float32
    lora = method == "lora"
    rows = []
    if not lora:  # the embeddings are trained: their outputs are nodes
        rows += [("wte(idx)", N * d * f, 0), ("wpe(pos)", T * d * f, 0)]
    rows.append(("tok + pos", N * d * f, 0))
    for i in range(L):
        first_frozen = lora and i == 0  # ln_1 of layer 0 sees no gradient under LoRA
        rows += [
            (f"h.{i}.ln_1", N * d * f, 0 if first_frozen else (N * d + N) * f),  # y; xhat and 1/std
            (f"h.{i}.c_attn", 3 * N * d * f, 0),  # with LoRA the frozen W x, held by the sum below
        ]
        if lora:  # h = A x and h * s (N, 2r); B_full h and W x + B_full h (N, 3d); B_full (3d, 2r) and
            # the pieces it is built from (two block rows (d, 2r), zeros 4 d r): 14 d r floats
            rows.append((f"h.{i}.c_attn LoRA (Wq, Wv)", (2 * N * 2 * r + 2 * 3 * N * d) * f, 14 * d * r * f))
        rows += [
            (f"h.{i}.attention", N * d * f, B * h * T * T * f),  # output; P, (B, h, T, T)
            (f"h.{i}.merge heads", N * d * f, 0),  # transpose + reshape: a copy
            (f"h.{i}.attn.c_proj", N * d * f, 0),
            (f"h.{i}.residual 1", N * d * f, 0),
            (f"h.{i}.ln_2", N * d * f, (N * d + N) * f),
            (f"h.{i}.c_fc", 4 * N * d * f, 0),
            (f"h.{i}.gelu", 4 * N * d * f, 4 * N * d * f),  # output; tanh(...)
            (f"h.{i}.mlp.c_proj", N * d * f, 0),
            (f"h.{i}.residual 2", N * d * f, 0),
        ]
    rows += [
        ("ln_f", N * d * f, (N * d + N) * f),
        ("lm_head (logits)", N * V * f, 0),
        # shifted logits (N, V) and logsumexp (N) in float32; row and target indices (int64), valid mask (bool)
        ("cross_entropy", 0, (N * V + N) * f + N * (8 + 8 + 1)),
    ]
    return rows


def _param_sizes(config: GPTConfig, method: str, r: int) -> list:
    """Numbers of elements of the optimized parameters, in the order the optimizer visits them."""
    d, L = config.n_embd, config.n_layer
    if method == "lora":  # per layer A (2r, d) and B (2d, r)
        return [2 * r * d, 2 * d * r] * L
    block = [d, d, 3 * d * d, 3 * d, d * d, d, d, d, 4 * d * d, 4 * d, 4 * d * d, d]  # ln_1, c_attn, c_proj, ln_2, c_fc, mlp.c_proj
    return [config.vocab_size * d, config.block_size * d] + block * L + [d, d]  # wte (tied to lm_head), wpe, ..., ln_f


def analytic_step_memory(config: GPTConfig, batch: int, method: str, r: int = COST_RANK) -> dict:
    """The peak of one training step predicted from the shapes (bytes), and what it is made of.

    peak = weights + optimizer state + the largest of these moments (``phases``), each the
    sum of the activations still alive, the gradients of the parameters done so far, and
    temporaries (gradients on their way down, arrays inside one op's backward or update):

    loss backward       all activations (``saved_activations``) + the softmax gradient
                        (N, V) and the temporary ``shifted - logsumexp`` it is made from
    h.i GELU backward   for each block i from the top: the activations up to block i's GELU
                        (the backward has freed those after it) and the gradients of the
                        weights above it; the residual stream's gradient (N, d), GELU's
                        incoming gradient (N, 4d), its result and ``1 - tanh^2`` (N, 4d)
    h.i attention       likewise at block i's attention: the residual stream's and the
      backward          incoming gradient (N, d), dP (B, h, T, T) and its row sums (B, h, T),
                        dq, dk, dv (N, d) and the temporary one of them is scaled in
    backward end        all gradients; with full fine-tuning the embeddings' backward too:
                        their outputs, the incoming gradient (N, d), and the tied wte's second
                        gradient (V, d) with the sum of the two
    optimizer           all gradients + AdamW's scratch, the size of the largest parameter
                        (m, v and the weights are updated in place through it)

    ``backend.parallel_for`` splits GELU's and AdamW's temporaries into per-thread chunks
    with the same bytes in all; they are counted whole, although GELU's ``1 - tanh^2``
    chunks often do not live at the same time. Left out: Python's own objects (modules,
    the graph's nodes and closures: tens of KB) and the cached causal mask (T, T) -- why
    the measurement runs a few % higher on the smallest models.
    """
    B, T, d, h, V, L = batch, config.block_size, config.n_embd, config.n_head, config.vocab_size, config.n_layer
    N, f = B * T, 4
    sizes = _param_sizes(config, method, r)
    trainable = sum(sizes)
    n_params = config.num_parameters() + (trainable if method == "lora" else 0)
    weights, gradients, optimizer = n_params * f, trainable * f, 2 * trainable * f
    rows = saved_activations(config, batch, method, r)
    names = [name for name, _, _ in rows]
    A = sum(out + extra for _, out, extra in rows)

    def alive(op):
        """The activations of the ops up to and including ``op``: those the backward has not yet passed."""
        return sum(out + extra for _, out, extra in rows[: names.index(op) + 1])

    # the gradients the backward has produced, in its order (with LoRA, only the adapters' exist)
    full = method == "full"
    head_grads = (V * d + 2 * d) * f if full else 0  # wte (as lm_head), ln_f
    mlp_c_proj = (4 * d * d + d) * f if full else 0
    below_attention = (4 * d * d + 4 * d + 2 * d + d * d + d) * f if full else 0  # c_fc, ln_2, attn.c_proj
    block_grads = (12 * d * d + 13 * d) * f if full else 4 * d * r * f  # a whole block; LoRA: its A and B
    # temporaries: gradients on their way down, and the arrays one backward rule makes
    gelu_temps = (N * d  # the residual stream's gradient, waiting for the block's branch
                  + 4 * N * d  # GELU's incoming gradient
                  + 2 * 4 * N * d) * f  # its result and 1 - tanh^2
    attention_temps = (2 * N * d  # the residual stream's and the incoming gradient
                       + B * h * T * T + B * h * T  # dP (dS is made in its place) and its row sums
                       + 4 * N * d) * f  # dv, dq, dk and the product dk is scaled from
    phases = {"loss backward": (A, 0, 2 * N * V * f)}
    done = head_grads  # gradients of the parameters the backward has passed so far
    for i in reversed(range(L)):
        phases[f"h.{i} GELU backward"] = (alive(f"h.{i}.gelu"), done + mlp_c_proj, gelu_temps)
        phases[f"h.{i} attention backward"] = (alive(f"h.{i}.attention"), done + mlp_c_proj + below_attention, attention_temps)
        done += block_grads
    phases["backward end"] = (alive("wpe(pos)"), gradients, (N * d + 2 * V * d) * f) if full else (0, gradients, 0)
    phases["optimizer"] = (0, gradients, max(sizes) * f)
    phase = max(phases, key=lambda k: sum(phases[k]))
    act, grads, temp = phases[phase]
    return {"config": config_name(config), "batch": batch, "method": method, "peak": weights + optimizer + act + grads + temp,
            "peak_phase": phase, "weights": weights, "optimizer": optimizer, "gradients": gradients, "activations": A,
            "at_peak": {"weights": weights, "optimizer": optimizer, "gradients": grads, "activations": act, "temporaries": temp},
            "phases": {k: sum(v) for k, v in phases.items()}}


def step_flops(config: GPTConfig, batch: int, method: str, r: int = COST_RANK) -> dict:
    """Matrix-product FLOPs of one training step (2 per multiply-add), and AdamW's elementwise passes.

    forward   2 N M + 4 B T^2 d L                       (M = 12 d^2 L + V d: the weight matrices' sizes)
    backward  full: 4 N M + 8 B T^2 d L
              LoRA: 2 N (M - 3 d^2) + 8 B T^2 d L       (no dW; nor dX into layer 0's c_attn, whose input
                                                         comes from the frozen embeddings)
    adapter   LoRA on Wq, Wv: P = 4 r d parameters a layer; forward 2 N P, backward 4 N P a layer
              (dA, dB, and the input gradients through B and A -- less 2 N 2 r d in layer 0)
    optimizer 14 elementwise passes over each trainable parameter (not FLOPs that a GEMM would count)
    """
    B, T, d, V, L = batch, config.block_size, config.n_embd, config.vocab_size, config.n_layer
    N = B * T
    M = 12 * d * d * L + V * d
    attention_forward, attention_backward = 4 * B * T * T * d * L, 8 * B * T * T * d * L
    forward = 2 * N * M + attention_forward
    if method == "full":
        backward = 4 * N * M + attention_backward
        trainable = config.num_parameters()
    elif method == "lora":
        P = 4 * r * d
        forward += 2 * N * P * L
        backward = 2 * N * (M - 3 * d * d) + attention_backward + 4 * N * P * L - 2 * N * 2 * r * d
        trainable = P * L
    else:
        raise ValueError(f"method must be 'full' or 'lora', got {method!r}")
    return {"forward": forward, "backward": backward, "total": forward + backward, "optimizer_passes": 14 * trainable}


# ---------------------------------------------------------------------------
# serving (claims 7 and 10): the models timed, and the LoRA variants of one
# ---------------------------------------------------------------------------


def timed_models(quick: bool, arch: str = "gpt"):
    """The models the latency claims time, and where the base model's weights came from: the
    base model (the shipped checkpoint; random weights if it is not there), and in the full run
    also the 768-wide model of the cost claims (random weights: latency does not depend on them)."""
    from minilora.pretrain import ARCHS, load_base

    try:
        base, weights_note = load_base(arch=arch), "shipped checkpoint"
    except FileNotFoundError:
        minilora.manual_seed(0)
        base, weights_note = ARCHS[arch][0](ARCHS[arch][1]), "random weights (checkpoint not present)"
    models = {"base": base}
    if not quick:
        minilora.manual_seed(0)
        models["wide"] = GPT(WIDE_CONFIG)
    return models, weights_note


def serving_variants(model=None, config: GPTConfig | None = None, r: int = COST_RANK, b_std: float = 0.02,
                     seed: int = 0) -> dict:
    """The models to compare, in eval mode: ``base`` (a copy of the given model, or a GPT of
    ``config``), ``base again`` (another copy: the control, whose latency differs from base's
    by noise alone), ``unmerged`` (a copy with rank-r adapters on Wq and Wv) and ``merged``
    (that adapter folded into W: ``merge_and_unload``).

    The adapter is made non-zero, as after fine-tuning: A keeps its initialisation and B is
    drawn from N(0, ``b_std``), so that the update is small beside W. (A large random update
    would change the size of every activation, and NumPy's tanh and exp take different times on
    different values -- we saw 2-5x on one array -- a difference of numbers, not of computation.)
    All are copies, made alike: an original model whose arrays were allocated amid other
    work ran 2-4% slower than its own copy here, which is not what we want to measure either.
    """
    minilora.manual_seed(seed)
    base = copy.deepcopy(model if model is not None else GPT(config))
    unmerged = get_peft_model(copy.deepcopy(base), cost_lora_config("qv", r))
    rng = np.random.default_rng(seed)
    for _, layer in unmerged.base_model.lora_layers():
        weight = layer.lora_B[unmerged.active_adapter].weight
        weight.data = B.xp.asarray((rng.standard_normal(weight.shape) * b_std).astype(weight.dtype))  # drawn on the host, copied once
    merged = copy.deepcopy(unmerged).merge_and_unload()
    models = {"base": base, "base again": copy.deepcopy(base), "unmerged": unmerged, "merged": merged}
    return {name: m.eval() for name, m in models.items()}
