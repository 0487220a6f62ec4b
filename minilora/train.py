"""The training loop: AdamW, warm-up + cosine schedule, gradient clipping, validation.

One loop serves pre-training, full fine-tuning and every PEFT method: it trains
whatever parameters ``requires_grad`` (LoRA freezes the rest), so the optimizer
holds state for the trainable ones alone.

    history = train(model, batches, TrainConfig(max_steps=500), evaluate=val_loss)

``batches(rng)`` returns one ``(x, targets)`` pair of integer arrays; ``evaluate(model)``
returns a dict of figures (e.g. ``{"val_loss": 1.9}``). Runs are deterministic:
one ``seed`` fixes the initial weights drawn after it, dropout and the batch order.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm.auto import tqdm

import minilora
from minilora import backend as B
from minilora.io import atomic_write
from minilora.nn import Module
from minilora.optim import AdamW, WarmupCosine, clip_grad_norm_


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer steps
    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1  # decoupled (AdamW), on matrices only, never on biases or gains
    betas: tuple = (0.9, 0.99)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_interval: int = 100  # evaluate every this many steps (and at the end); 0: only at the end
    seed: int = 0
    progress: bool = True  # a tqdm progress bar
    checkpoint_path: str | None = None  # if set, the weights are saved here (safetensors, atomically) at each evaluation
    desc: str = "train"


@dataclass
class TrainHistory:
    """What a run measured: one row per step, one per evaluation, and the wall time."""

    steps: list = field(default_factory=list)  # {"step", "loss", "lr", "grad_norm"}
    evals: list = field(default_factory=list)  # {"step", **evaluate(model)}
    seconds: float = 0.0
    config: dict = field(default_factory=dict)

    @property
    def losses(self) -> list:
        return [row["loss"] for row in self.steps]

    def last_eval(self) -> dict:
        return self.evals[-1] if self.evals else {}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite: training stops rather than corrupting the weights."""


def param_groups(model: Module, weight_decay: float) -> list:
    """AdamW groups as in GPT-2/nanoGPT: decay matrices (ndim >= 2), never biases or LayerNorm gains."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no parameter that requires grad: nothing to train")
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def train(model: Module, batches, config: TrainConfig = TrainConfig(), evaluate=None, optimizer=None) -> TrainHistory:
    """Train ``model`` for ``config.max_steps`` steps on ``batches(rng)``; see the module docstring."""
    minilora.manual_seed(config.seed)  # dropout masks
    rng = np.random.default_rng(config.seed)  # batch order
    if optimizer is None:
        optimizer = AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas)
    schedule = WarmupCosine(optimizer, config.warmup_steps, config.max_steps, config.min_lr_ratio)
    history = TrainHistory(config=asdict(config))
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(config.max_steps), desc=config.desc, disable=not config.progress, leave=False)
    for step in bar:
        x, y = batches(rng)
        _, loss = model(x, targets=y)
        loss_value = float(loss.data)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"the loss became {loss_value} at step {step} (lr {optimizer.param_groups[0]['lr']:.3g}); "
                f"training stopped. Try a lower learning rate or stronger gradient clipping."
            )
        optimizer.zero_grad()
        loss.backward()
        grad_norm = float(clip_grad_norm_(model.parameters(), config.grad_clip)) if config.grad_clip else float("nan")
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        schedule.step()
        history.steps.append({"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm})
        bar.set_postfix(loss=f"{loss_value:.3f}")
        last = step == config.max_steps - 1
        if evaluate is not None and (last or (config.eval_interval and (step + 1) % config.eval_interval == 0)):
            model.eval()
            row = {"step": step + 1, **evaluate(model)}
            model.train()
            history.evals.append(row)
            if config.checkpoint_path:
                save_checkpoint(model, config.checkpoint_path, metadata=row)
            # a dict, not keywords: evaluate() may report a "loss" of its own
            bar.set_postfix({"loss": f"{loss_value:.3f}", **{f"eval {k}": f"{v:.3f}" for k, v in row.items() if k != "step"}})
    bar.close()
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


@minilora.no_grad()
def evaluate_loss(model: Module, batches) -> float:
    """Mean loss over an iterable of ``(x, targets)`` batches, weighted by the number of targets."""
    total, count = 0.0, 0
    for x, y in batches:
        _, loss = model(x, targets=y)
        n = int((np.asarray(y) != -100).sum())
        total += float(loss.data) * n
        count += n
    if count == 0:
        raise ValueError("evaluate_loss got no targets to score")
    return total / count


def save_checkpoint(model: Module, path: str, metadata: dict | None = None) -> None:
    """Write the model's parameters (tied ones once) as safetensors, atomically."""
    from safetensors.numpy import save_file

    tensors = {name: np.ascontiguousarray(B.to_numpy(p.data)) for name, p in model.named_parameters()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_checkpoint(model: Module, path: str, allow_nonfinite: bool = False) -> dict:
    """Read a checkpoint written by ``save_checkpoint`` into ``model``; return its metadata.

    One file, replaced by one rename, so a killed save leaves the old checkpoint whole.
    Its header is checked against the model's own parameter names and shapes before
    anything is read (``minilora.loading.load_checked``); NaN or inf is refused unless
    ``allow_nonfinite=True``. Errors: ``minilora.errors``, naming the file and the key."""
    from minilora.errors import WeightsError
    from minilora.loading import load_checked, read_header

    header = read_header(path)
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    state = load_checked(path, expected, header=header, allow_nonfinite=allow_nonfinite,
                         implied=f"the {type(model).__name__} being loaded", what=f"this {type(model).__name__}")
    metadata = {}
    for key, text in header.metadata.items():
        if key in ("format",):
            continue
        try:
            metadata[key] = json.loads(text)
        except ValueError:
            raise WeightsError(f"{path}: metadata {key!r} is not JSON: {text[:80]!r}") from None
    model.load_state_dict(state, strict=False)  # tied weights appear once in the file; every parameter was checked
    return metadata
