"""Automated rank selection, measured: AdaLoRA against LoRA at the same final rank and at the
same trained-parameter count, on both bases' classification task (measuring only).

The source article names automated rank selection among the directions LoRA goes next;
AdaLoRA (``minilora/peft/adalora.py``, ``docs/adalora.md``) is PEFT's. One run is one base,
one method, one seed and one learning rate:

* ``"adalora"``: every matrix of every block starts at rank ``INIT_R`` = 12 and the budget
  falls to ``TARGET_R`` = 8 per matrix on average (``tinit`` a tenth of the steps, ``tfinal``
  a fifth, masking at every step in between);
* ``"lora"``: LoRA at r = 8 on the same matrices -- the same final rank;
* ``"lora_matched"``: LoRA at the rank whose trained-parameter count comes nearest AdaLoRA's.
  Masking zeroes λ_i but AdaLoRA trains all 12 triplets of every matrix to the end, so that
  is r = 12 (AdaLoRA's count is LoRA r = 12's plus one λ per triplet).

"All matrices": GPT-2's four projections (``c_attn`` as one fused matrix, PEFT's form) and
BERT's six (query, key, value, the attention output, the two feed-forward ones). On MiniLM
the classifier and the never-trained pooler are trained in full beside every method, as in
claim 4 (``experiments/bases/minilm.py``).

``run_one`` returns plain figures: the test and validation loss and accuracy, every test
row's predicted class (what a bootstrap over rows needs), the trained-parameter counts, the
wall time, and for AdaLoRA its final rank pattern as a (layer x matrix) table -- where it put
its rank, to set beside the AdaLoRA paper's finding that the feed-forward matrices and the top
layers get more. Judging the figures (seeds, intervals, verdicts) is left to the claim that
will call this (issues #20, #21).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from minilora import backend as B
from minilora.peft import AdaLoraConfig, LoraConfig, get_peft_model
from minilora.train import TrainConfig, train

INIT_R, TARGET_R = 12, 8
METHODS = ("adalora", "lora", "lora_matched")
BASES = ("toy", "minilm")

# The matrices adapted, by the suffix of their module name, in the heat map's column order.
MATRICES = {
    "toy": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    "minilm": ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
               "intermediate.dense", "output.dense"),
}
MATRIX_LABELS = {"toy": ("c_attn (q,k,v)", "attn c_proj", "mlp c_fc", "mlp c_proj"),
                 "minilm": ("query", "key", "value", "attn output", "ffn in", "ffn out")}
ALPHA_PER_RANK = 2  # alpha = 2 r, as in claim 4 (experiments/runs/spec.py)


@dataclass(frozen=True)
class Sizes:
    steps: int  # optimizer steps per run
    batch_size: int


# Full: claim 4's settings for each base. Quick: a look at the code path, seconds a run.
SIZES = {("toy", False): Sizes(200, 8), ("minilm", False): Sizes(150, 16),
         ("toy", True): Sizes(20, 8), ("minilm", True): Sizes(6, 16)}


def sizes(base: str, quick: bool) -> Sizes:
    return SIZES[(base, quick)]


def matrix_of(base: str, module_name: str) -> int:
    """The heat map's column of a module: the longest of ``MATRICES[base]`` its name ends with."""
    matches = [i for i, m in enumerate(MATRICES[base]) if module_name.endswith("." + m)]
    return max(matches, key=lambda i: len(MATRICES[base][i]))


def config(base: str, method: str, steps: int, r: int | None = None):
    """The adapter of a run: AdaLoRA 12 -> 8, or LoRA at rank ``r`` (8 if None), on every matrix."""
    extra = dict(task_type="SEQ_CLS", modules_to_save=["pooler"]) if base == "minilm" else {}
    targets = list(MATRICES[base])
    if method == "adalora":
        return AdaLoraConfig(init_r=INIT_R, target_r=TARGET_R, total_step=steps, tinit=steps // 10, tfinal=steps // 5,
                             deltaT=1, lora_alpha=ALPHA_PER_RANK * INIT_R, target_modules=targets, **extra)
    r = TARGET_R if r is None else r
    return LoraConfig(r=r, lora_alpha=ALPHA_PER_RANK * r, target_modules=targets, **extra)


def adapter_parameters(model) -> int:
    """Trained numbers in the adapter itself (A, B, λ), leaving out heads trained in full."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n)


def matched_rank(model, base: str) -> int:
    """The LoRA rank whose adapter count on ``model``'s matrices is nearest AdaLoRA's: AdaLoRA trains
    INIT_R (in + out + 1) numbers a matrix, LoRA r (in + out)."""
    from minilora.tuner import target_matches

    shapes = [(m.in_features, m.out_features) for n, m in model.named_modules()
              if target_matches(list(MATRICES[base]), n) and hasattr(m, "in_features")]
    return max(1, round(sum(INIT_R * (i + o + 1) for i, o in shapes) / sum(i + o for i, o in shapes)))


def rank_table(model, base: str) -> list:
    """AdaLoRA's kept triplets as a (layer x matrix) table of ints, from its rank pattern."""
    from minilora.tuner import layer_index

    pattern = model.peft_config[model.active_adapter].rank_pattern or {}
    layers = {layer_index(name) for name in pattern}
    table = np.zeros((max(layers, default=-1) + 1, len(MATRICES[base])), dtype=int)
    for name, kept in pattern.items():
        module = name.removesuffix(".lora_E")
        table[layer_index(module), matrix_of(base, module)] = sum(kept)
    return table.tolist()


# ---------------------------------------------------------------------------
# the two bases: a fresh model with the run's adapter, training, and the held-out figures
# ---------------------------------------------------------------------------


class ToyBase:
    """The shipped toy GPT on the docstring -> package task (``experiments/bases/gpt.py``'s)."""

    name = "toy"

    def __init__(self, env=None, batch_size: int = 8):
        from minilora.experiments.bases import gpt as ft

        self.ft = ft
        self.env = env or ft.load_environment()
        self.data = ft.ClassificationData(self.env.cls, batch_size)

    def fresh(self, seed: int):
        """A copy of the base after ``manual_seed(seed)``: the adapter drawn next is the seed's."""
        from minilora.experiments.runs import RunSpec

        return self.ft.fresh_model(RunSpec("cls", "full", seed=seed), self.env.base)

    def fit(self, model, train_config: TrainConfig):
        return train(model, self.data.batches, train_config)

    def figures(self, model) -> dict:
        """Test and validation loss and accuracy, and each test row's predicted and true class."""
        task = self.env.cls
        logits = self.ft._logits(model, self.data.x_eval)
        test = self.data.score(logits)
        val = self.data.score(self.ft._logits(model, self.data.x_val), self.data.y_val)
        return {"test": test, "val": val, "test_predictions": task.predict(logits, self.data.y_eval).tolist(),
                "test_labels": task.true_labels(self.data.y_eval).tolist()}


class MiniLMBase:
    """all-MiniLM-L6-v2 on the same task read as text (``experiments/bases/minilm.py``'s)."""

    name = "minilm"

    def __init__(self, env=None, batch_size: int = 16):
        from minilora.experiments.bases import minilm

        self.minilm = minilm
        self.env = env or minilm.load_environment()
        self.data = minilm.Classification(self.env.cls, self.env.tokenizer, batch_size)

    def fresh(self, seed: int):
        """The pretrained encoder with the seed's classifier, drawn after ``manual_seed(seed)``."""
        from minilora.experiments.runs import RunSpec

        return self.minilm.fresh_model(RunSpec("cls", "full", seed=seed), self.env)

    def fit(self, model, train_config: TrainConfig):
        return train(self.minilm.TrainView(model), self.data.batches, train_config)

    def figures(self, model) -> dict:
        logits = {split: self.data.logits(model, split) for split in ("test", "val")}
        return {"test": self.data.score(logits["test"], "test"), "val": self.data.score(logits["val"], "val"),
                "test_predictions": logits["test"].argmax(axis=1).tolist(),
                "test_labels": self.data.labels["test"].tolist()}


def load_base(name: str, quick: bool = False):
    """The ``ToyBase`` or ``MiniLMBase`` of a run, with its data at the mode's batch size."""
    batch = sizes(name, quick).batch_size
    return ToyBase(batch_size=batch) if name == "toy" else MiniLMBase(batch_size=batch)


def run_one(base, method: str, seed: int, lr: float, quick: bool = False, steps: int | None = None,
            progress: bool = False) -> dict:
    """Train one run -- ``base`` a ``ToyBase`` or ``MiniLMBase``, ``method`` one of ``METHODS`` -- and
    return its figures (module docstring) as plain JSON-able values."""
    if method not in METHODS:
        raise ValueError(f"adaptive_rank.run_one: method must be one of {METHODS}, got {method!r}")
    steps = steps or sizes(base.name, quick).steps
    model = base.fresh(seed)
    r = matched_rank(model, base.name) if method == "lora_matched" else None
    model = get_peft_model(model, config(base.name, method, steps, r))
    from minilora.experiments.bases.gpt import WEIGHT_DECAY

    train_config = TrainConfig(max_steps=steps, lr=lr, warmup_steps=max(1, steps // 10), weight_decay=WEIGHT_DECAY,
                               eval_interval=0, seed=seed, progress=progress, desc=f"{base.name} {method} seed {seed}")
    start = time.perf_counter()
    history = base.fit(model, train_config)
    B.synchronize()
    seconds = time.perf_counter() - start
    out = {"base": base.name, "method": method, "seed": seed, "lr": lr, "steps": steps,
           "r": INIT_R if method == "adalora" else (r or TARGET_R),
           "trainable": int(model.get_nb_trainable_parameters()[0]), "adapter_parameters": adapter_parameters(model),
           "final_train_loss": float(history.losses[-1]), "seconds": seconds, **base.figures(model)}
    if method == "adalora":
        out["rank_table"] = rank_table(model, base.name)
        out["matrices"] = list(MATRIX_LABELS[base.name])
    return out


def mean_rank_by(table, axis: int) -> list:
    """The mean kept rank per layer (axis 1 averaged) or per matrix (axis 0 averaged) of a rank table."""
    return np.asarray(table, dtype=float).mean(axis=axis).tolist()


__all__ = ["run_one", "load_base", "config", "rank_table", "matched_rank", "METHODS", "BASES", "MATRICES"]
