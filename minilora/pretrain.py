"""The base model every experiment starts from: a small GPT-2 pre-trained on English prose.

LoRA adapts a *pretrained* model, so minilora ships one (``minilora/checkpoints/base``,
Hugging Face's GPT-2 format, under 4 MB) and ``load_base()`` reads it offline.
``minilora pretrain`` re-creates it from scratch:

    minilora pretrain --out minilora/checkpoints/base      # the shipped settings

It trains a byte-level GPT-2 (4 layers, 4 heads, width 128, 128 positions, 0.84M
parameters) on the docstrings of Python's standard library (``minilora.data``),
and writes ``pretrain_log.json`` beside the weights: the command, seed, corpus
hash, wall time and the validation loss reached (also recorded in docs/base_model.md).

``minilora pretrain --arch llama`` trains a LLaMA-style twin (``LLAMA_BASE_CONFIG``:
RMSNorm, RoPE, SwiGLU, 2 key/value heads for 4 query heads, 0.84M parameters) with
the same corpus, steps, schedule, batch and seed, into ``minilora/checkpoints/llama_base``,
so that the two bases differ in architecture alone. ``--positions 512 --batch-size 8`` trains
either with 512 positions on windows of 512 bytes (the same bytes per step): the E2E benchmark's
bases, ``checkpoints/base_512`` and ``llama_base_512`` (``load_base(positions=512)``).

A run is resumable: every evaluation writes the training state
(``minilora.train.save_training_state``) to ``training-checkpoint.safetensors`` in the output
folder, and running the same command again continues from it with the losses the
uninterrupted run would have had.
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
from minilora.models import GPT, GPTConfig, LlamaConfig, LlamaForCausalLM
from minilora.tensor import float32
from minilora.train import TrainConfig, evaluate_loss, train

BASE_DIR = Path(__file__).parent / "checkpoints" / "base"
LLAMA_BASE_DIR = Path(__file__).parent / "checkpoints" / "llama_base"

# The shipped model's shape: small enough to fine-tune in minutes on two CPU cores,
# large enough to have learned English spelling and some syntax.
BASE_CONFIG = GPTConfig(vocab_size=256, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0)

# The LLaMA-style twin, with about the same parameter count (844,928 against 842,496): the same
# width, depth, heads and context; 2 key/value heads (GQA) and a tied head; the SwiGLU MLP 400
# wide (3 matrices of 128 x 400 against GPT's 2 of 128 x 512) takes up what GQA and the absent
# position table and biases save.
LLAMA_BASE_CONFIG = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=400, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True)
ARCHS = {"gpt": (GPT, BASE_CONFIG, BASE_DIR), "llama": (LlamaForCausalLM, LLAMA_BASE_CONFIG, LLAMA_BASE_DIR)}
POSITIONS = 128  # the shipped bases' context; the E2E benchmark's bases (base_512, llama_base_512) see 512


def base_config(arch: str, positions: int = POSITIONS):
    """The shipped architecture of ``arch`` with ``positions`` byte positions (GPT's learned position
    table, LLaMA's RoPE range); everything else as the shipped base."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if not isinstance(positions, int) or positions < 1:
        raise ValueError(f"positions must be a positive int, got {positions!r}")
    config = ARCHS[arch][1]
    return replace(config, **{"block_size" if arch == "gpt" else "max_position_embeddings": positions})


CHECKPOINT_NAME = "training-checkpoint.safetensors"

# How it was trained (see pretrain_log.json for the figures it reached).
BASE_TRAIN = TrainConfig(
    max_steps=3000, lr=2e-3, min_lr_ratio=0.1, warmup_steps=100, weight_decay=0.1,
    betas=(0.9, 0.99), grad_clip=1.0, eval_interval=250, seed=0, desc="pretrain",
)
BATCH_SIZE = 32


def prose_val_loss(model, corpus=None, batch_size: int = 32) -> float:
    """Mean next-byte cross-entropy (nats) over the whole prose validation split, in order."""
    corpus = corpus or build_corpus("prose")
    T = model.config.block_size
    return evaluate_loss(model, eval_batches(corpus.val, batch_size, T))


def pretrain(out: str | os.PathLike | None = None, max_steps: int = BASE_TRAIN.max_steps, seed: int = 0,
             batch_size: int = BATCH_SIZE, progress: bool = True, arch: str = "gpt", resume: bool = True,
             positions: int = POSITIONS) -> dict:
    """Train the base model of ``arch`` ("gpt" or "llama") with ``positions`` byte positions from
    scratch, on windows of that length, and save it to ``out`` (default: the shipped folder); returns
    the log it writes. With ``resume``, a training checkpoint left in ``out`` by an interrupted run is
    continued rather than started over."""
    model_config = base_config(arch, positions)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"pretrain: batch_size must be a positive int, got {batch_size!r}")
    model_cls, _, default_out = ARCHS[arch]
    out = Path(out if out is not None else default_out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus("prose")
    T = positions
    minilora.manual_seed(seed)
    model = model_cls(model_config)
    config = replace(BASE_TRAIN, max_steps=max_steps, seed=seed, progress=progress,
                     eval_interval=min(BASE_TRAIN.eval_interval, max_steps),
                     warmup_steps=min(BASE_TRAIN.warmup_steps, max_steps),
                     checkpoint_path=str(out / CHECKPOINT_NAME), resume=resume)
    val_windows = list(eval_batches(corpus.val, batch_size, T, max_batches=4))  # a quick estimate while training

    history = train(
        model,
        lambda rng: get_batch(corpus.train, batch_size, T, rng),
        config,
        evaluate=lambda m: {"val_loss": evaluate_loss(m, val_windows)},
    )
    val_loss = prose_val_loss(model, corpus, batch_size)
    model.save_pretrained(out)
    os.remove(out / CHECKPOINT_NAME)
    log = {
        "command": "minilora pretrain " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["pretrain"] else "pretrain()",
        "seed": seed,
        "arch": arch,
        "model": asdict(model_config),
        "train": {**asdict(config), "batch_size": batch_size, "checkpoint_path": None, "resume": None},
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


def base_dir(arch: str = "gpt", positions: int = POSITIONS) -> Path:
    """The shipped folder of the base of ``arch`` with ``positions`` positions: ``checkpoints/base``
    and ``llama_base`` (128 positions, every claim), ``base_512`` and ``llama_base_512`` (512
    positions, the E2E benchmark, whose examples run to 545 bytes)."""
    base_config(arch, positions)  # checks both
    folder = ARCHS[arch][2]
    return folder if positions == POSITIONS else folder.with_name(f"{folder.name}_{positions}")


def load_base(dtype=float32, path: str | os.PathLike | None = None, arch: str = "gpt", positions: int = POSITIONS):
    """The shipped pre-trained base model of ``arch`` ("gpt": a GPT, "llama": a LlamaForCausalLM)
    with ``positions`` positions (128 or 512), offline, from Hugging Face's format; or the one
    in the folder ``path``."""
    base_config(arch, positions)  # checks both
    path = Path(path if path is not None else base_dir(arch, positions))
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"no base model at {path}: re-create it with `minilora pretrain --arch {arch} "
                                f"--positions {positions} --out {path}` (docs/base_model.md gives each base's settings)")
    return ARCHS[arch][0].from_pretrained(path, dtype=dtype)


def base_log(path: str | os.PathLike = BASE_DIR) -> dict:
    """What ``pretrain`` recorded about the shipped model (read as a checked config: ``minilora.loading``)."""
    from minilora.loading import read_config

    return read_config(Path(path) / "pretrain_log.json", "a pretrain log")
