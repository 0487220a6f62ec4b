"""The training loop: AdamW, warm-up + cosine schedule, gradient clipping, validation.

One loop serves pre-training, full fine-tuning and every PEFT method: it trains
whatever parameters ``requires_grad`` (LoRA freezes the rest), so the optimizer
holds state for the trainable ones alone.

    history = train(model, batches, TrainConfig(max_steps=500), evaluate=val_loss)

``batches(rng)`` returns one ``(x, targets)`` pair of integer arrays; ``evaluate(model)``
returns a dict of figures (e.g. ``{"val_loss": 1.9}``). Runs are deterministic:
one ``seed`` fixes the initial weights drawn after it, dropout and the batch order.

A non-finite loss stops the run before the step's update, so a NaN never reaches the
weights or AdamW's moments; the message tells a batch with nothing to learn from (every
target -100) from divergence. A model in float16 trains in mixed precision, as practice
does it: float32 master weights and AdamW moments, float16 compute, and dynamic loss
scaling (``optim.GradScaler``), whose overflowing steps are skipped (docs/training.md).

Runs are resumable. With ``checkpoint_path``, every evaluation writes the whole
training state -- the weights, AdamW's moments and step counts, the step reached,
both random generators' states (batches and dropout) and the history so far -- in one
safetensors file (``save_training_state``); with ``resume=True`` a run finding that
file continues from it and reaches the very losses, bit for bit, of a run that was
never interrupted (``tests/test_train.py`` checks it).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import minilora
from minilora import backend as B
from minilora.io import atomic_write
from minilora.nn import Module
from minilora.optim import AdamW, GradScaler, WarmupCosine, clip_grad_norm_, grad_norm
from minilora.tensor import Tensor


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
    checkpoint_path: str | None = None  # if set, the training state is saved here (safetensors, atomically) at each evaluation
    resume: bool = False  # if the checkpoint exists, continue from it (same losses as a run never interrupted)
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
    """The loss (or, unscaled, a gradient) became NaN or infinite: training stops before the update."""


def half_precision(model: Module) -> bool:
    """Whether the model trains parameters narrower than float32 (float16): then in mixed precision."""
    return any(p.requires_grad and p.dtype.kind == "f" and p.dtype.itemsize < 4 for p in model.parameters())


def non_finite_loss(value: float, step: int, first_step: int, lr: float, targets, model: Module) -> NonFiniteLossError:
    """The error for a loss of NaN or inf at ``step``, saying which of the usual causes it is."""
    ids = None if targets is None else B.to_numpy(targets.data if isinstance(targets, Tensor) else targets)
    if ids is not None and ids.size and not (ids != -100).any():
        return NonFiniteLossError(
            f"the loss is {value} at step {step}: the batch has no target to learn from (every label is -100, "
            f"the ignore_index), so its mean is 0/0. Check the batches (a prompt filling the whole window leaves "
            f"no answer token); nothing was updated.")
    half = (" The model computes in float16, whose largest value is 65,504: a logit or the loss may have overflowed; "
            "train in float32 to tell." if half_precision(model) else "")
    if step == first_step:
        return NonFiniteLossError(f"the loss is {value} at step {step}, before any update of this run: the model's "
                                  f"weights or the batch give it, not the learning rate.{half}")
    return NonFiniteLossError(f"the loss became {value} at step {step} (lr {lr:.3g}); training stopped before updating "
                              f"the weights. Try a lower learning rate or stronger gradient clipping.{half}")


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
    # A method that acts between optimizer steps -- AdaLoRA's rank allocation -- is called after each step,
    # before the gradients are zeroed, with the step's index (PEFT's update_and_allocate(global_step))
    allocators = [m.update_and_allocate for m in model.modules() if callable(getattr(m, "update_and_allocate", None))]
    if allocators and config.checkpoint_path:
        raise ValueError("train: checkpoint_path cannot be used with an AdaLoRA model: its rank allocator's state "
                         "(the sensitivity averages) is not part of a training checkpoint, so a resumed run would "
                         "allocate differently; train without a checkpoint_path")
    minilora.manual_seed(config.seed)  # dropout masks
    rng = np.random.default_rng(config.seed)  # batch order
    if optimizer is None:
        optimizer = AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas)
    schedule = WarmupCosine(optimizer, config.warmup_steps, config.max_steps, config.min_lr_ratio)
    history = TrainHistory(config=asdict(config))
    trained = [p for p in model.parameters() if p.requires_grad]
    scaler = GradScaler() if half_precision(model) else None  # mixed precision (docs/training.md)
    first_step, seconds_before = 0, 0.0
    if config.resume and config.checkpoint_path and Path(config.checkpoint_path).exists():
        first_step, seconds_before = load_training_state(config.checkpoint_path, model, optimizer, schedule, rng, history,
                                                         scaler)
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(first_step, config.max_steps), desc=config.desc, disable=not config.progress, leave=False,
               initial=first_step, total=config.max_steps)
    for step in bar:
        x, y = batches(rng)
        _, loss = model(x, targets=y)
        optimizer.zero_grad()
        loss.backward(None if scaler is None else scaler.seed(loss))
        if scaler is not None:
            scaler.unscale_(trained)  # float32 gradients, the scale divided out
        norm = clip_grad_norm_(trained, config.grad_clip) if config.grad_clip else grad_norm(trained)
        # The step's one sync (on a GPU): loss and gradient norm come to the host together, here,
        # before the update -- so divergence is caught at the step it happens, and a NaN never
        # reaches the weights or AdamW's moments.
        loss_value, grad_norm_value = B.read_scalars(loss.data, norm.data)
        lr = optimizer.param_groups[0]["lr"]
        if not math.isfinite(loss_value):
            raise non_finite_loss(loss_value, step, first_step, lr, y, model)
        finite = math.isfinite(grad_norm_value)
        if scaler is not None:  # a scaled float16 gradient overflowed: skip the step, lower the scale
            try:
                scaler.update(finite)
            except FloatingPointError as err:
                raise NonFiniteLossError(f"at step {step}, with a finite loss ({loss_value:.4g}): {err}; training "
                                         "stopped before updating the weights") from None
        elif not finite:
            raise NonFiniteLossError(f"the gradient norm became {grad_norm_value} at step {step}, with a finite loss "
                                     f"({loss_value:.4g}); training stopped before updating the weights")
        if finite:
            optimizer.step()
            for allocate in allocators:  # on the step's gradients; a skipped step has none to read
                allocate(step)
        schedule.step()
        row = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm_value}
        if not finite:
            row["skipped"] = True  # the loss scale was too large for this step's gradients
        history.steps.append(row)
        bar.set_postfix(loss=f"{loss_value:.3f}")
        last = step == config.max_steps - 1
        if not (last or (config.eval_interval and (step + 1) % config.eval_interval == 0)):
            continue
        if evaluate is not None:
            model.eval()
            row = {"step": step + 1, **evaluate(model)}
            model.train()
            history.evals.append(row)
            # a dict, not keywords: evaluate() may report a "loss" of its own
            bar.set_postfix({"loss": f"{loss_value:.3f}", **{f"eval {k}": f"{v:.3f}" for k, v in row.items() if isinstance(v, float)}})
        if config.checkpoint_path:
            history.seconds = seconds_before + time.perf_counter() - start
            save_training_state(config.checkpoint_path, model, optimizer, step + 1, rng, history, scaler)
    bar.close()
    model.eval()
    B.synchronize()  # on a GPU the last update may still be queued: the run's time includes it
    history.seconds = seconds_before + time.perf_counter() - start
    return history


@minilora.no_grad()
def evaluate_loss(model: Module, batches) -> float:
    """Mean loss over an iterable of ``(x, targets)`` batches, weighted by the number of targets."""
    total, count = 0.0, 0  # total: on the device, read once at the end
    for x, y in batches:
        _, loss = model(x, targets=y)
        n = int((B.to_numpy(y) != -100).sum())
        total = total + loss.data * n
        count += n
    if count == 0:
        raise ValueError("evaluate_loss got no targets to score")
    return B.read_scalars(total)[0] / count


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
    from minilora.loading import load_checked, parse_json, read_header

    header = read_header(path)
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    state = load_checked(path, expected, header=header, allow_nonfinite=allow_nonfinite,
                         implied=f"the {type(model).__name__} being loaded", what=f"this {type(model).__name__}")
    metadata = {key: parse_json(text.encode(), f"{path} (metadata {key!r})")
                for key, text in header.metadata.items() if key != "format"}
    model.load_state_dict(state, strict=False)  # tied weights appear once in the file; every parameter was checked
    return metadata


# ---------------------------------------------------------------------------
# the training state: resuming a run
# ---------------------------------------------------------------------------

_OPTIMIZER = "optimizer."  # key prefix of AdamW's moments in the checkpoint: optimizer.<param name>.exp_avg
_ADAM_STATE = ("exp_avg", "exp_avg_sq", "master")  # the arrays of a parameter's AdamW state (master: float16's)
_NOT_COMPARED = ("progress", "desc", "resume")  # settings a resumed run may change


def save_training_state(path: str, model: Module, optimizer, next_step: int, batch_rng, history: TrainHistory,
                        scaler: GradScaler | None = None) -> None:
    """Everything a run needs to continue where it is, in one safetensors file, atomically.

    Tensors: the weights under their names (tied ones once), and each trained
    parameter's AdamW moments as ``optimizer.<name>.exp_avg`` / ``.exp_avg_sq`` (and a
    float16 parameter's float32 master copy as ``.master``). Metadata (JSON): ``step``
    (the next step to run), each parameter's AdamW step count, the states of the batch
    generator and of minilora's generator (dropout), the loss scaler's, the training
    config, and the history so far (losses, evaluations, seconds).
    """
    from safetensors.numpy import save_file

    named = dict(model.named_parameters())
    tensors = {name: np.ascontiguousarray(B.to_numpy(p.data)) for name, p in named.items()}
    adam_steps = {}
    for name, p in named.items():
        state = optimizer.state.get(p)
        if state:
            adam_steps[name] = state["step"]
            for key in _ADAM_STATE:
                if key in state:
                    tensors[f"{_OPTIMIZER}{name}.{key}"] = np.ascontiguousarray(B.to_numpy(state[key]))
    meta = {
        "step": next_step,
        "adam_steps": adam_steps,
        "batch_rng": batch_rng.bit_generator.state,
        "minilora_rng": B.rng().bit_generator.state,
        "loss_scaler": scaler.state_dict() if scaler is not None else None,
        "config": history.config,
        "history": {"steps": history.steps, "evals": history.evals, "seconds": history.seconds},
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={k: json.dumps(v) for k, v in meta.items()}))


def _same_setting(key: str, now, then) -> bool:
    """Whether a setting of the resumed run equals the checkpoint's; a path is compared resolved
    (``pt2/ckpt`` and ``$PWD/pt2/ckpt`` are one file)."""
    if key == "checkpoint_path" and now is not None and isinstance(then, str):
        return os.path.realpath(now) == os.path.realpath(then)
    return json.loads(json.dumps(now)) == then


def load_training_state(path: str, model: Module, optimizer, schedule, batch_rng, history: TrainHistory,
                        scaler: GradScaler | None = None) -> tuple:
    """Put the state ``save_training_state`` wrote back into the model, optimizer, schedule, generators
    and history; returns (the next step, the seconds already spent). The training config must be
    the one the checkpoint was written with (progress and desc aside), or a ValueError names the fields."""
    from minilora.loading import load_checked, read_header

    header = read_header(path)
    if "step" not in header.metadata:
        raise ValueError(f"{path} holds weights but no training state (written by save_checkpoint or an older "
                         f"minilora); delete it to start over")
    meta = {k: json.loads(v) for k, v in header.metadata.items() if k != "format"}
    saved, current = meta["config"], history.config
    differ = [k for k in current if k not in _NOT_COMPARED and not _same_setting(k, current[k], saved.get(k))]
    if differ:
        raise ValueError(f"{path} was written by a run with other settings: "
                         + ", ".join(f"{k}={saved.get(k)!r} there, {current[k]!r} now" for k in differ)
                         + "; resume with the same settings or delete the checkpoint to start over")
    named = dict(model.named_parameters())
    moments = {f"{_OPTIMIZER}{name}.{key}": tuple(named[name].shape) if name in named else None
               for name in meta["adam_steps"] for key in _ADAM_STATE}
    tensors = load_checked(path, {name: tuple(p.shape) for name, p in named.items()}, header=header, buffers=moments,
                           implied=f"the {type(model).__name__} being trained", what=f"this {type(model).__name__}")
    model.load_state_dict({k: v for k, v in tensors.items() if k in named}, strict=False)  # a tied weight is saved once
    for name, count in meta["adam_steps"].items():
        p = named[name]
        optimizer.state[p] = {"step": count, **{key: B.xp.asarray(tensors[f"{_OPTIMIZER}{name}.{key}"])
                                                for key in _ADAM_STATE if f"{_OPTIMIZER}{name}.{key}" in tensors}}
    if scaler is not None and meta.get("loss_scaler"):
        scaler.load_state_dict(meta["loss_scaler"])
    batch_rng.bit_generator.state = meta["batch_rng"]
    B.rng().bit_generator.state = meta["minilora_rng"]
    schedule.last_step = meta["step"]
    schedule._apply()
    history.steps[:], history.evals[:] = meta["history"]["steps"], meta["history"]["evals"]
    return meta["step"], meta["history"]["seconds"]
