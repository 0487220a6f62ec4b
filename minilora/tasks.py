"""Downstream tasks for fine-tuning a byte-level GPT with LoRA, built from the standard library.

Two tasks, both pure NumPy in and out, so that minilora's GPT and Hugging
Face's ``GPT2LMHeadModel`` are trained and scored by the same code:

1. **Which package is this docstring from?** (:func:`docstring_package_task`)
   A K-way classification framed as language modelling. Each row is::

       <first bytes of a docstring> + b"\\n=> " + <label byte: b"A", b"B", ...>

   The model reads the docstring and the separator; the loss is taken only at
   the last separator position, whose target is the label byte. No new head,
   no new token: LoRA adapts the pretrained LM head to answer with a letter.

2. **Domain shift: prose -> Python code.** (:func:`code_corpus`,
   :func:`next_token_accuracy`) A model pretrained on docstrings is adapted to
   source code; progress is next-token loss and accuracy on held-out files.

Targets follow nanoGPT, not Hugging Face: ``targets[b, t]`` is what
``logits[b, t]`` should predict (already shifted), ``-100`` where there is
nothing to predict. With torch, take
``F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)``;
do not pass them as HF's ``labels=``, which shifts a second time.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from minilora.data import Corpus, build_corpus, file_docstrings, stdlib_files

SEPARATOR = b"\n=> "  # between the prompt and the label byte
LABEL_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # class k answers with LABEL_BYTES[k]
PAD_TOKEN = 0  # right padding; never a target (GPT-2 likewise pads with its end-of-text token)
IGNORE_INDEX = -100  # "no target here", as in torch.nn.functional.cross_entropy
MIN_DOCSTRING_BYTES = 32  # shorter docstrings ("Return self.") say too little to classify
SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------
# Task 1: docstring -> package
# ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TaskSplit:
    """One split of a classification task: N fixed-length rows, right-padded."""

    inputs: np.ndarray  # (N, T) int64: prompt bytes, separator, then PAD_TOKEN
    targets: np.ndarray  # (N, T) int64: IGNORE_INDEX except one label token per row
    labels: np.ndarray  # (N,) int64 class ids, 0..K-1
    prompts: tuple[str, ...] = field(repr=False)  # the (truncated) docstring of each row
    sources: tuple[str, ...] = field(repr=False)  # the stdlib file each row came from

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, eq=False)
class ClassificationTask:
    """A K-way classification task posed as next-byte prediction (see the module docstring).

    Rows are right-padded: the prompt starts at position 0 and the padding
    comes after the label position. Under causal attention a position sees
    only itself and earlier positions, so the prediction at the label position
    is the same with or without padding, and no attention mask or position
    offsets are needed (left padding would need both in Hugging Face's GPT-2).
    """

    label_names: tuple[str, ...]  # the package of each class, e.g. ("tkinter", "idlelib", ...)
    label_tokens: np.ndarray  # (K,) int64 byte id answering each class (65 = "A", ...)
    train: TaskSplit = field(repr=False)
    val: TaskSplit = field(repr=False)
    test: TaskSplit = field(repr=False)
    meta: dict = field(repr=False)

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    @property
    def seq_len(self) -> int:
        """T, the length of every row: max_prompt_bytes + len(SEPARATOR)."""
        return self.train.inputs.shape[1]

    @property
    def chance_accuracy(self) -> float:
        """1/K: the classes are balanced in every split."""
        return 1.0 / self.n_classes

    def split(self, name: str) -> TaskSplit:
        if name not in SPLITS:
            raise ValueError(f"split={name!r} is not a split of this task; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def batch(self, split: str, idx) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``idx`` (an int, index array or slice) of a split: (x, targets), each (B, T) int64."""
        s = self.split(split)
        if isinstance(idx, (int, np.integer)):
            idx = [idx]
        return s.inputs[idx], s.targets[idx]

    def predict(self, logits, targets) -> np.ndarray:
        """Class ids predicted by ``logits``, reading only the K label tokens.

        ``logits`` (B, T, V) come from the model run on ``x``; ``targets`` (B, T)
        is the batch's target array, which marks the label position of each
        row. At that position the prediction is the argmax over the K logits
        of the label tokens -- the other V - K bytes are ignored, so the answer
        is always a valid class.

        Returns (B,) int64 class ids.
        """
        logits = np.asarray(logits)
        position = _label_positions(targets)  # (B,)
        if logits.ndim != 3 or logits.shape[:2] != np.shape(targets):
            raise ValueError(f"logits must have shape (B, T, V) = {np.shape(targets) + ('V',)}, got {logits.shape}")
        at_label = logits[np.arange(len(position)), position]  # (B, V)
        return np.argmax(at_label[:, self.label_tokens], axis=-1).astype(np.int64)  # (B,)

    def true_labels(self, targets) -> np.ndarray:
        """The (B,) class ids that ``targets`` asks for (the inverse of ``label_tokens``)."""
        targets = np.asarray(targets)
        tokens = targets[np.arange(len(targets)), _label_positions(targets)]  # (B,)
        lookup = {int(t): k for k, t in enumerate(self.label_tokens)}
        unknown = sorted({int(t) for t in tokens} - lookup.keys())
        if unknown:
            raise ValueError(f"targets hold token {unknown[0]}, which is not one of this task's label tokens")
        return np.array([lookup[int(t)] for t in tokens], dtype=np.int64)

    def accuracy(self, logits, targets) -> float:
        """Share of rows whose :meth:`predict` equals the class in ``targets``."""
        predicted = self.predict(logits, targets)
        return float(np.mean(predicted == self.true_labels(targets)))


def _label_positions(targets) -> np.ndarray:
    """The one position per row where ``targets`` (B, T) is not IGNORE_INDEX; ValueError otherwise."""
    targets = np.asarray(targets)
    if targets.ndim != 2:
        raise ValueError(f"targets must have shape (B, T), got {targets.shape}")
    marked = targets != IGNORE_INDEX  # (B, T)
    per_row = marked.sum(axis=1)  # (B,)
    if not np.all(per_row == 1):
        row = int(np.flatnonzero(per_row != 1)[0])
        raise ValueError(f"row {row} of targets has {per_row[row]} label positions; each row needs exactly 1")
    return np.argmax(marked, axis=1)  # (B,) the first (and only) marked position


def _package_examples(max_prompt_bytes: int) -> dict[str, list[tuple[bytes, str]]]:
    """Usable (prompt, source file) pairs of each top-level package, in file and source order.

    Only packages (directories) count, not single-file modules. A docstring is
    usable if it has at least MIN_DOCSTRING_BYTES bytes; its prompt is its
    first ``max_prompt_bytes`` bytes, cut back to a whole UTF-8 character.
    A prompt that occurs twice in one package is kept once; one that occurs in
    two packages is dropped everywhere, since no model could tell them apart.
    """
    found: dict[bytes, dict[str, str]] = defaultdict(dict)  # prompt -> {package: first file}
    for relpath in stdlib_files():
        package, sep, _ = relpath.partition("/")
        if not sep:
            continue  # a single-file module, not a package
        for doc in file_docstrings(relpath) or ():
            raw = doc.encode("utf-8")
            if len(raw) < MIN_DOCSTRING_BYTES:
                continue
            prompt = raw[:max_prompt_bytes].decode("utf-8", errors="ignore").encode("utf-8")
            found[prompt].setdefault(package, relpath)
    examples: dict[str, list[tuple[bytes, str]]] = defaultdict(list)
    for prompt, packages in found.items():  # dicts keep insertion (= file) order
        if len(packages) == 1:
            (package, relpath), = packages.items()
            examples[package].append((prompt, relpath))
    return examples


def docstring_package_task(
    n_classes: int = 6,
    max_prompt_bytes: int = 120,
    per_class: int = 200,
    block_size: int = 128,
    seed: int = 0,
) -> ClassificationTask:
    """Classify a docstring by the standard-library package it comes from.

    The classes are the ``n_classes`` top-level packages with the most usable
    docstrings (ties broken by name); on CPython 3.11 the first six are
    tkinter, idlelib, distutils, asyncio, email and importlib. From each
    package ``per_class`` docstrings are drawn with ``np.random.default_rng(seed)``,
    so every class has the same number of examples; a tenth of them
    (``per_class // 10``) go to test, as many to val, the rest to train. The
    split is by example, not by file: tkinter keeps most of its docstrings in
    one file, so a split by file could not be balanced.

    Args:
        n_classes: K, between 2 and the number of packages (at most 26).
        max_prompt_bytes: docstrings are cut to this many bytes.
        per_class: examples per class, over all three splits (at least 10).
        block_size: the model's context; a row is ``max_prompt_bytes +
            len(SEPARATOR)`` tokens and must fit in it.
        seed: drives the sampling and the order of rows.
    """
    for name, value, low in (("n_classes", n_classes, 2), ("max_prompt_bytes", max_prompt_bytes, 1),
                             ("per_class", per_class, 10), ("block_size", block_size, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
        if value < low:
            raise ValueError(f"{name}={value} must be at least {low}")
    seq_len = max_prompt_bytes + len(SEPARATOR)
    if seq_len > block_size:
        raise ValueError(
            f"max_prompt_bytes={max_prompt_bytes} plus the {len(SEPARATOR)}-byte separator needs {seq_len} "
            f"positions, more than block_size={block_size}; use max_prompt_bytes <= "
            f"{block_size - len(SEPARATOR)} or a larger block_size"
        )

    examples = _package_examples(max_prompt_bytes)
    ranked = sorted(examples, key=lambda p: (-len(examples[p]), p))
    if n_classes > min(len(ranked), len(LABEL_BYTES)):
        raise ValueError(
            f"n_classes={n_classes} is more than the {min(len(ranked), len(LABEL_BYTES))} classes available"
        )
    label_names = tuple(ranked[:n_classes])
    smallest = label_names[-1]  # the ranking is by size, largest first
    if len(examples[smallest]) < per_class:
        raise ValueError(
            f"per_class={per_class} is more than package {smallest!r} has ({len(examples[smallest])} usable "
            f"docstrings); lower per_class or n_classes"
        )

    # Stratified split: the same number of rows per class in every split.
    rng = np.random.default_rng(seed)
    n_eval = per_class // 10
    rows = {s: [] for s in SPLITS}  # split -> [(prompt, file, class id)]
    for k, package in enumerate(label_names):
        chosen = [examples[package][i] for i in rng.permutation(len(examples[package]))[:per_class]]
        parts = {"test": chosen[:n_eval], "val": chosen[n_eval : 2 * n_eval], "train": chosen[2 * n_eval :]}
        for s in SPLITS:
            rows[s] += [(prompt, relpath, k) for prompt, relpath in parts[s]]

    label_tokens = np.frombuffer(LABEL_BYTES[:n_classes], dtype=np.uint8).astype(np.int64)  # (K,)
    splits = {}
    for s in SPLITS:
        order = rng.permutation(len(rows[s]))  # mix the classes
        splits[s] = _encode_rows([rows[s][i] for i in order], label_tokens, seq_len)

    meta = {
        "max_prompt_bytes": max_prompt_bytes,
        "per_class": per_class,
        "block_size": block_size,
        "seed": seed,
        "min_docstring_bytes": MIN_DOCSTRING_BYTES,
        "separator": SEPARATOR.decode(),
        "available_per_package": {p: len(examples[p]) for p in ranked},
    }
    return ClassificationTask(label_names, label_tokens, splits["train"], splits["val"], splits["test"], meta)


def _encode_rows(rows: list[tuple[bytes, str, int]], label_tokens: np.ndarray, seq_len: int) -> TaskSplit:
    """Lay out each (prompt, file, class) row as ``prompt + SEPARATOR``, right-padded to ``seq_len``.

    The full sequence is ``prompt + SEPARATOR + label``; ``inputs`` is it
    without the label byte and ``targets`` the same shifted left by one, masked
    to IGNORE_INDEX everywhere except the last separator position, whose target
    is the label byte.
    """
    inputs = np.full((len(rows), seq_len), PAD_TOKEN, dtype=np.int64)  # (N, T)
    targets = np.full((len(rows), seq_len), IGNORE_INDEX, dtype=np.int64)  # (N, T)
    for i, (prompt, _, k) in enumerate(rows):
        ids = np.frombuffer(prompt + SEPARATOR, dtype=np.uint8)
        inputs[i, : len(ids)] = ids
        targets[i, len(ids) - 1] = label_tokens[k]
    for array in (inputs, targets):
        array.flags.writeable = False
    labels = np.array([k for _, _, k in rows], dtype=np.int64)
    labels.flags.writeable = False
    prompts = tuple(prompt.decode("utf-8") for prompt, _, _ in rows)
    sources = tuple(relpath for _, relpath, _ in rows)
    return TaskSplit(inputs, targets, labels, prompts, sources)


# ----------------------------------------------------------------------------
# Task 2: domain shift, prose -> code
# ----------------------------------------------------------------------------


def code_corpus(max_bytes: int | None = None, val_fraction: float = 0.05) -> Corpus:
    """The target domain of the shift task: the Python source corpus, ``build_corpus("code", ...)``.

    Validation files are never seen in training (the split is by file), so the
    validation loss measures code the model has not read.
    """
    return build_corpus("code", max_bytes=max_bytes, val_fraction=val_fraction)


def next_token_accuracy(logits, targets, ignore_index: int = IGNORE_INDEX) -> float:
    """Share of positions where ``argmax(logits[..., :])`` equals ``targets``.

    ``logits`` has shape (..., V) and ``targets`` the same shape without V
    (e.g. (B, T, V) and (B, T) from :func:`minilora.data.get_batch`).
    Positions whose target is ``ignore_index`` are left out.
    """
    logits, targets = np.asarray(logits), np.asarray(targets)
    if logits.ndim < 1 or logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits must have shape targets.shape + (V,) = {targets.shape + ('V',)}, got {logits.shape}"
        )
    keep = targets != ignore_index
    if not keep.any():
        raise ValueError(f"every target equals ignore_index={ignore_index}; there is nothing to score")
    predicted = np.argmax(logits, axis=-1)
    return float(np.mean(predicted[keep] == targets[keep]))
