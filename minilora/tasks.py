"""Downstream tasks for fine-tuning a byte-level GPT with LoRA: two built from the standard library,
and the E2E NLG data set, the LoRA paper's own GPT-2 benchmark.

All pure NumPy in and out, so that minilora's GPT and Hugging Face's
``GPT2LMHeadModel`` are trained and scored by the same code:

1. **Which package is this docstring from?** (:func:`docstring_package_task`)
   A K-way classification framed as language modelling. Each row is::

       <first bytes of a docstring> + b"\\n=> " + <label byte: b"A", b"B", ...>

   The model reads the docstring and the separator; the loss is taken only at
   the last separator position, whose target is the label byte. No new head,
   no new token: LoRA adapts the pretrained LM head to answer with a letter.

2. **Domain shift: prose -> Python code.** (:func:`code_corpus`,
   :func:`next_token_accuracy`) A model pretrained on docstrings is adapted to
   source code; progress is next-token loss and accuracy on held-out files.

3. **E2E NLG: a restaurant's meaning representation -> a sentence.** (:func:`e2e_task`)
   Novikova, Dušek, Rieser (2017), shipped in ``minilora/data_files/e2e`` (CC BY-SA 4.0).
   A row is ``MR + SEPARATOR + reference + b"\n"``, e.g.::

       name[Alimentum], area[city centre], familyFriendly[no]
       => Alimentum is not a family-friendly place, located in city centre.

   The loss is on the reference and the end marker ``\n``; the model writes for the test
   set's MRs until it emits ``\n`` (``minilora.models.decoding``), and the sentences are
   scored against every reference of their MR (``minilora.nlg_metrics``).

Targets follow nanoGPT, not Hugging Face: ``targets[b, t]`` is what
``logits[b, t]`` should predict (already shifted), ``-100`` where there is
nothing to predict. With torch, take
``F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)``;
do not pass them as HF's ``labels=``, which shifts a second time.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minilora.data import Corpus, build_corpus, file_docstrings, stdlib_files
from minilora.errors import MismatchError
from minilora.loading import check_regular_file

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
    tkinter, idlelib, distutils, asyncio, email and importlib. Each class has
    ``per_class`` rows: a fifth (``per_class // 5``) in test, a tenth
    (``per_class // 10``) in val, the rest in train -- with the experiments'
    ``per_class`` = 260, 52 test, 26 validation and 182 training rows a class.

    The split is **by file**: no source file gives rows to two splits, so a test
    docstring never sits beside a training one from the same file (same author,
    same vocabulary, often the same class). ``split_by_file`` says how; tkinter,
    whose 664 docstrings come from 10 files (417 from ``tkinter/__init__.py``),
    is the tightest class. ``meta["files"]`` counts each class's files per split.
    The split keeps fine-tuning from reading a test file, not pre-training: the toy base was
    pre-trained on the docstrings of every file outside its prose validation files, and on
    CPython 3.11 (260 a class, 60-byte prompts, seed 0) 306 of the 312 test prompts occur verbatim
    in that text (docs/data.md).

    Args:
        n_classes: K, between 2 and the number of packages (at most 26).
        max_prompt_bytes: docstrings are cut to this many bytes.
        per_class: rows per class, over all three splits (at least 10).
        block_size: the model's context; a row is ``max_prompt_bytes +
            len(SEPARATOR)`` tokens and must fit in it.
        seed: drives the files' assignment, the sampling and the order of rows.
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

    # Stratified and by file: the same number of rows per class in every split, no file on two sides.
    rng = np.random.default_rng(seed)
    need = {"test": per_class // 5, "val": per_class // 10}
    need["train"] = per_class - need["test"] - need["val"]
    rows = {s: [] for s in SPLITS}  # split -> [(prompt, file, class id)]
    files = {}
    for k, package in enumerate(label_names):
        parts = split_by_file(examples[package], need, rng, package)
        files[package] = {s: len({relpath for _, relpath in parts[s]}) for s in SPLITS}
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
        "rows_per_class": dict(need),
        "split": "by file",
        "files": files,
        "block_size": block_size,
        "seed": seed,
        "min_docstring_bytes": MIN_DOCSTRING_BYTES,
        "separator": SEPARATOR.decode(),
        "available_per_package": {p: len(examples[p]) for p in ranked},
    }
    return ClassificationTask(label_names, label_tokens, splits["train"], splits["val"], splits["test"], meta)


SPLIT_ATTEMPTS = 100  # shuffles of a package's files tried by split_by_file


def split_by_file(examples: list, need: dict, rng: np.random.Generator, package: str = "the package") -> dict:
    """``{split: [(prompt, file), ...]}`` with ``need[split]`` rows each, no file in two splits.

    The files are shuffled with ``rng``; in that order each goes whole to test if it fits in what
    test still needs, else to val if it fits there, else to train (a file bigger than an evaluation
    split's need goes to train). An evaluation split still short after the pass takes its remaining
    rows from the smallest training file that holds them; that file leaves train, its other rows
    unused. Of ``SPLIT_ATTEMPTS`` shuffles the first that needs no such file is kept (else the one
    that leaves fewest rows unused); training rows are then drawn from the training files. A package whose
    files cannot fill the splits this way is refused with a ValueError naming it."""
    by_file = defaultdict(list)  # file -> its (prompt, file) rows, in source order
    for prompt, relpath in examples:
        by_file[relpath].append((prompt, relpath))
    names = list(by_file)
    best = None  # (rows lost to donors, {split: files}, {split: (donor file, rows taken)})
    for _ in range(SPLIT_ATTEMPTS):
        assigned, short, donors = {s: [] for s in SPLITS}, dict(need), {}
        for i in rng.permutation(len(names)):
            to = next((s for s in ("test", "val") if 0 < len(by_file[names[i]]) <= short[s]), "train")
            assigned[to].append(names[i])
            short[to] -= len(by_file[names[i]])
        for s in ("test", "val"):
            fits = [f for f in assigned["train"] if short[s] > 0 and len(by_file[f]) >= short[s]]
            if fits:
                donors[s] = min(fits, key=lambda f: (len(by_file[f]), f))
                assigned["train"].remove(donors[s])
        pool = sum(len(by_file[f]) for f in assigned["train"])
        if any(short[s] > 0 and s not in donors for s in ("test", "val")) or pool < need["train"]:
            continue  # this shuffle cannot fill the splits
        lost = sum(len(by_file[donors[s]]) - short[s] for s in donors)  # a donor's rows no split may take
        if best is None or lost < best[0]:
            best = (lost, assigned, {s: (donors[s], short[s]) for s in donors})
        if lost == 0:
            break
    if best is None:
        raise ValueError(f"{package}: its {len(names)} files cannot give {need['test']} test, {need['val']} validation "
                         f"and {need['train']} training rows without a file on two sides; lower per_class or n_classes")
    _, assigned, donors = best
    parts = {s: [row for f in assigned[s] for row in by_file[f]] for s in ("test", "val")}
    for s, (donor, count) in donors.items():
        parts[s] += [by_file[donor][j] for j in sorted(rng.permutation(len(by_file[donor]))[:count])]
    pool = [row for f in assigned["train"] for row in by_file[f]]
    parts["train"] = [pool[j] for j in rng.permutation(len(pool))[: need["train"]]]
    return parts


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


# ----------------------------------------------------------------------------
# Task 3: E2E NLG, meaning representation -> sentence (the LoRA paper's GPT-2 benchmark)
# ----------------------------------------------------------------------------

E2E_DIR = Path(__file__).parent / "data_files" / "e2e"
# The two files of the E2E data set shipped with minilora (CC BY-SA 4.0: E2E_DIR/README.md), and
# their sha256, checked at every load.
E2E_SHA256 = {
    "devset.csv": "fc26b78cdb849c80545f513b223d1e051138b43882eeb79e3eb153e689c864f9",
    "testset_w_refs.csv": "edc8db685e39bb9824d5bd70c18b1c9b0412d14b527aa960e2d1c8251ee15ccd",
}
E2E_END = b"\n"  # the end marker: a reference never holds a newline, so decoding stops at the first one
E2E_VAL_MRS = 55  # a tenth of the development set's 547 MRs (and their references) for validation


@dataclass(frozen=True, eq=False)
class E2ETask:
    """The E2E data set as minilora trains and scores on it.

    The official training set (42k pairs) is not shipped; the development set's pairs are split by
    meaning representation (MR) into training and validation -- no MR on both sides -- and the test
    set is grouped by MR, each with all its references, in the order its 630 MRs first appear in the
    file. A training row is ``prompt(mr) + reference + E2E_END`` (see :meth:`row`); the loss is taken
    on the reference and the end marker only.
    """

    train: tuple  # ((mr, ref), ...): the development set's pairs whose MR is not held out
    val: tuple  # ((mr, ref), ...): the pairs of E2E_VAL_MRS held-out MRs
    test_mrs: tuple  # (mr, ...): the test set's distinct MRs, in first-appearance order
    test_refs: tuple  # ((ref, ...), ...): every reference of each test MR, in file order
    meta: dict = field(repr=False)

    @staticmethod
    def prompt(mr: str) -> bytes:
        """What the model reads before it writes: ``mr + SEPARATOR`` as UTF-8 bytes."""
        return mr.encode("utf-8") + SEPARATOR

    @staticmethod
    def row(mr: str, ref: str) -> bytes:
        """A whole training example: ``prompt(mr) + ref + E2E_END``."""
        return E2ETask.prompt(mr) + ref.encode("utf-8") + E2E_END

    def batch(self, pairs, block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(x, targets)``, each (B, T) int64, for ``pairs`` of (mr, ref): rows right-padded to the
        longest (T <= block_size), targets -100 but on the reference's bytes and the end marker.

        A row longer than block_size + 1 bytes is cut to its first block_size + 1 (in the development
        set, rows reach 545 bytes: at 512 positions a few references lose their last bytes)."""
        rows = [np.frombuffer(self.row(mr, ref), dtype=np.uint8)[: block_size + 1] for mr, ref in pairs]
        T = max(len(r) for r in rows) - 1
        x = np.full((len(rows), T), PAD_TOKEN, dtype=np.int64)
        targets = np.full((len(rows), T), IGNORE_INDEX, dtype=np.int64)
        for b, ((mr, _), r) in enumerate(zip(pairs, rows)):
            x[b, : len(r) - 1] = r[:-1]
            start = len(self.prompt(mr)) - 1  # the separator's last byte predicts the reference's first
            targets[b, start : len(r) - 1] = r[start + 1 :]
        return x, targets

    def batches(self, pairs, batch_size: int, block_size: int):
        """``pairs`` in order, ``batch_size`` at a time (the last batch may be smaller), as ``batch`` lays them out."""
        for i in range(0, len(pairs), batch_size):
            yield self.batch(pairs[i : i + batch_size], block_size)

    def epoch_batches(self, batch_size: int, block_size: int, rng: np.random.Generator):
        """One pass over the training pairs in an order drawn from ``rng``, in batches of ``batch_size``."""
        return self.batches([self.train[j] for j in rng.permutation(len(self.train))], batch_size, block_size)


def read_e2e_csv(name: str, folder=E2E_DIR) -> list:
    """The (mr, ref) rows of one of the shipped E2E files, after checking its sha256.

    A file whose hash differs from the one recorded in ``E2E_SHA256`` is refused with an error
    naming the file and both hashes: every figure minilora reports on E2E rests on these bytes."""
    if name not in E2E_SHA256:
        raise ValueError(f"unknown E2E file {name!r}; the shipped files are {', '.join(E2E_SHA256)}")
    path = Path(folder) / name
    check_regular_file(path, "an E2E data file")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != E2E_SHA256[name]:
        raise MismatchError(f"{path}: sha256 {digest}, expected {E2E_SHA256[name]} -- the file is not the E2E data "
                            f"minilora ships (restore it from the repository)")
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""))
    return [(row["mr"], row["ref"]) for row in reader]


def e2e_task(val_mrs: int = E2E_VAL_MRS, seed: int = 0, folder=E2E_DIR) -> E2ETask:
    """The E2E task (see ``E2ETask``): ``val_mrs`` of the development set's MRs, drawn with
    ``np.random.default_rng(seed)``, and their pairs for validation, the others' for training."""
    dev = read_e2e_csv("devset.csv", folder)
    dev_mrs = list(dict.fromkeys(mr for mr, _ in dev))
    if isinstance(val_mrs, bool) or not isinstance(val_mrs, int) or not 1 <= val_mrs < len(dev_mrs):
        raise ValueError(f"val_mrs must be an int in [1, {len(dev_mrs) - 1}], got {val_mrs!r}")
    held_out = {dev_mrs[i] for i in np.random.default_rng(seed).permutation(len(dev_mrs))[:val_mrs]}
    train = tuple(pair for pair in dev if pair[0] not in held_out)
    val = tuple(pair for pair in dev if pair[0] in held_out)
    refs: dict = defaultdict(list)  # mr -> its references; a dict keeps first-appearance order
    for mr, ref in read_e2e_csv("testset_w_refs.csv", folder):
        refs[mr].append(ref)
    meta = {"val_mrs": val_mrs, "seed": seed, "train_mrs": len(dev_mrs) - val_mrs, "train_pairs": len(train),
            "val_pairs": len(val), "test_mrs": len(refs), "test_pairs": sum(len(r) for r in refs.values()),
            "separator": SEPARATOR.decode(), "end": E2E_END.decode(), "sha256": dict(E2E_SHA256)}
    return E2ETask(train, val, tuple(refs), tuple(tuple(r) for r in refs.values()), meta)
