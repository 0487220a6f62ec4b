"""The base model every experiment starts from: a small GPT-2 pre-trained on English prose.

LoRA adapts a *pretrained* model, so minilora ships one (``minilora/checkpoints/base``,
Hugging Face's GPT-2 format, under 4 MB) and ``load_base()`` reads it offline.
``minilora pretrain`` re-creates it from scratch:

    minilora pretrain --out minilora/checkpoints/base      # the shipped settings

It trains a byte-level GPT-2 (4 layers, 4 heads, width 128, 128 positions, 0.84M
parameters) on the docstrings of Python's standard library (``minilora.data``),
and writes ``pretrain_log.json`` beside the weights: the command, seed, corpus
hash, wall time and the validation loss reached (also recorded in docs/base_model.md).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

import minilora
from minilora.data import build_corpus, eval_batches, get_batch
from minilora.io import atomic_write
from minilora.models import GPT, GPTConfig
from minilora.tensor import float32
from minilora.train import TrainConfig, evaluate_loss, train

BASE_DIR = Path(__file__).parent / "checkpoints" / "base"

# The shipped model's shape: small enough to fine-tune in minutes on two CPU cores,
# large enough to have learned English spelling and some syntax.
BASE_CONFIG = GPTConfig(vocab_size=256, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0)

# How it was trained (see pretrain_log.json for the figures it reached).
BASE_TRAIN = TrainConfig(
    max_steps=3000, lr=2e-3, min_lr_ratio=0.1, warmup_steps=100, weight_decay=0.1,
    betas=(0.9, 0.99), grad_clip=1.0, eval_interval=250, seed=0, desc="pretrain",
)
BATCH_SIZE = 32


def prose_val_loss(model: GPT, corpus=None, batch_size: int = 32) -> float:
    """Mean next-byte cross-entropy (nats) over the whole prose validation split, in order."""
    corpus = corpus or build_corpus("prose")
    T = model.config.block_size
    return evaluate_loss(model, eval_batches(corpus.val, batch_size, T))


def pretrain(out: str | os.PathLike = BASE_DIR, max_steps: int = BASE_TRAIN.max_steps, seed: int = 0,
             batch_size: int = BATCH_SIZE, progress: bool = True) -> dict:
    """Train the base model from scratch and save it to ``out``; returns the log it writes."""
    out = Path(out)
    corpus = build_corpus("prose")
    T = BASE_CONFIG.block_size
    minilora.manual_seed(seed)
    model = GPT(BASE_CONFIG)
    config = replace(BASE_TRAIN, max_steps=max_steps, seed=seed, progress=progress,
                     eval_interval=min(BASE_TRAIN.eval_interval, max_steps),
                     warmup_steps=min(BASE_TRAIN.warmup_steps, max_steps),
                     checkpoint_path=str(out / "training-checkpoint.safetensors"))
    val_windows = list(eval_batches(corpus.val, batch_size, T, max_batches=4))  # a quick estimate while training

    history = train(
        model,
        lambda rng: get_batch(corpus.train, batch_size, T, rng),
        config,
        evaluate=lambda m: {"val_loss": evaluate_loss(m, val_windows)},
    )
    val_loss = prose_val_loss(model, corpus, batch_size)
    model.save_pretrained(out)
    os.remove(out / "training-checkpoint.safetensors")
    log = {
        "command": "minilora pretrain " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["pretrain"] else "pretrain()",
        "seed": seed,
        "model": asdict(BASE_CONFIG),
        "train": {**asdict(config), "batch_size": batch_size, "checkpoint_path": None},
        "corpus": {"kind": corpus.kind, "sha256": corpus.sha256, "train_bytes": int(corpus.train.size), "val_bytes": int(corpus.val.size)},
        "val_loss": val_loss,
        "final_train_loss": float(np.mean(history.losses[-50:])),
        "wall_seconds": history.seconds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "minilora": minilora.__version__},
        "curve": {"step": [r["step"] for r in history.steps[::25]], "loss": [r["loss"] for r in history.steps[::25]],
                  "evals": history.evals},
    }
    text = json.dumps(log, indent=1, allow_nan=False)
    atomic_write(out / "pretrain_log.json", lambda tmp: Path(tmp).write_text(text))
    return log


def load_base(dtype=float32, path: str | os.PathLike = BASE_DIR) -> GPT:
    """The shipped pre-trained base model (offline; Hugging Face GPT-2 format)."""
    path = Path(path)
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(
            f"no base model at {path}: the package ships one in minilora/checkpoints/base; "
            f"re-create it with `minilora pretrain --out {path}`"
        )
    return GPT.from_pretrained(path, dtype=dtype)


def base_log(path: str | os.PathLike = BASE_DIR) -> dict:
    """What ``pretrain`` recorded about the shipped model (read as a checked config: ``minilora.loading``)."""
    from minilora.loading import read_config

    return read_config(Path(path) / "pretrain_log.json", "a pretrain log")
