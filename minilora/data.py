"""Text to train on, with nothing to download: Python's own standard library.

Every machine that runs minilora has the standard library on disk, so it is the
one corpus that is always there, identical for everyone with the same Python
version, and free of licences to check. It gives two kinds of text:

* ``"prose"`` -- the docstrings of every module, class and function (about
  1.8 MB of English written by programmers for programmers);
* ``"code"``  -- the Python source files themselves (about 10 MB).

Pretraining a small GPT on the prose and then adapting it to the code with LoRA
is minilora's domain-shift experiment; both corpora share one byte-level
vocabulary (:class:`ByteTokenizer`), so the same model reads both.

Which files are read (decided once, here, and described in docs/data.md):

* every ``*.py`` under ``sysconfig.get_paths()["stdlib"]``, in sorted order of
  the relative path (with ``/`` separators), so the order never depends on the
  file system;
* skipping the directories in :data:`SKIP_DIRS` (``site-packages``, the test
  suites ``test``/``tests``/``idle_test``, the generated help text in
  ``pydoc_data``, ``__pycache__``) and any directory named ``config-*`` (build
  files such as ``python-config.py``);
* skipping files that are data rather than code: ``_sysconfigdata_*.py`` (the
  paths and flags of this machine's build) and the 65 code-page tables in
  ``encodings/`` whose docstring says they were generated with ``gencodec.py``.

The train/validation split is by *file*: a file goes to validation when a
stable hash of its relative path falls below ``val_fraction`` (see
:func:`is_validation_file`). Validation text therefore comes from files never
seen in training, and adding or removing other files never moves a file across.

Each document (one docstring, or one source file) ends with the byte
:data:`EOT` = 0, the byte-level twin of GPT-2's ``<|endoftext|>``; no ``.py``
file and no docstring contains a NUL byte, so it is unambiguous.

    >>> from minilora.data import build_corpus, ByteTokenizer, get_batch
    >>> corpus = build_corpus("prose")
    >>> x, y = get_batch(corpus.train, batch_size=8, block_size=128,
    ...                  rng=np.random.default_rng(0))         # (8, 128) each
"""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import json
import os
import platform
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minilora.io import atomic_write

# Bump when a change to this file changes the bytes a builder produces; the disk
# cache is keyed on it, so stale caches are never read.
BUILDER_VERSION = 1

CORPUS_KINDS = ("prose", "code")

# Directory names never entered while walking the standard library.
SKIP_DIRS = frozenset({"site-packages", "test", "tests", "idle_test", "pydoc_data", "__pycache__"})

# The end-of-document byte (GPT-2's <|endoftext|>, for a byte vocabulary).
EOT = 0

# Only these nodes carry docstrings in Python's grammar.
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


# ----------------------------------------------------------------------------
# The tokenizer
# ----------------------------------------------------------------------------


class ByteTokenizer:
    """Text <-> token ids, one token per UTF-8 byte (``vocab_size = 256``).

    There is no vocabulary to learn and no unknown token: every string, in any
    language or programming language, encodes to ids in ``[0, 256)``. Prose and
    code share the same 256 tokens, so a model pretrained on docstrings can be
    fine-tuned on source code without touching its embedding. The price is
    length: a sequence is as many tokens as bytes (GPT-2's BPE averages about
    four bytes a token), so a block of 256 tokens holds about 256 characters.
    """

    vocab_size = 256
    eot_token = EOT

    def encode(self, text: str) -> np.ndarray:
        """The UTF-8 bytes of ``text`` as an int64 array of shape (len(bytes),)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects text as str, got {type(text).__name__}: {text!r:.60}")
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        """The text whose UTF-8 bytes are ``ids``; invalid byte sequences become U+FFFD.

        ``ids`` is any 1-D sequence of integers (a list, a NumPy array, a CPU
        torch tensor). A sample cut at an arbitrary byte may end inside a
        multi-byte character; ``errors="replace"`` shows that as ``"\ufffd"``
        instead of failing.
        """
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"decode expects a 1-D sequence of token ids, got shape {ids.shape}")
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"decode expects integer token ids, got dtype {ids.dtype}")
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bad.any():
            raise ValueError(
                f"token id {int(ids[bad][0])} is outside the byte vocabulary [0, {self.vocab_size})"
            )
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------
# Reading the standard library
# ----------------------------------------------------------------------------


def stdlib_root() -> Path:
    """The directory of this interpreter's standard library (the base one, also in a venv)."""
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=1)
def stdlib_files() -> tuple[str, ...]:
    """Relative paths (``/``-separated, sorted) of the ``.py`` files both corpora read.

    The rule is in the module docstring: skip :data:`SKIP_DIRS`, ``config-*``,
    ``_sysconfigdata_*.py`` and the generated code-page tables.
    """
    root = stdlib_root()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith("config-")]
        for name in filenames:
            if not name.endswith(".py") or name.startswith("_sysconfigdata_"):
                continue
            path = Path(dirpath, name)
            if _is_generated_table(path):
                continue
            found.append(path.relative_to(root).as_posix())
    return tuple(sorted(found))


def _is_generated_table(path: Path) -> bool:
    """True for the encodings/ code-page tables, which announce themselves on line 1."""
    if path.parent.name != "encodings":
        return False
    with open(path, "rb") as f:
        return b"gencodec.py" in f.read(300)


def extract_docstrings(source: bytes | str) -> list[str]:
    """The docstrings of a module and of its classes and functions, in source order.

    Uses ``ast.get_docstring(node, clean=True)``, which removes the common
    indentation and the blank lines around the text. Nested definitions are
    included (a class's docstring is followed by those of its methods). Raises
    ``SyntaxError`` or ``ValueError`` if the source does not parse.
    """
    with warnings.catch_warnings():  # old escape sequences warn; we only read strings
        warnings.simplefilter("ignore")
        tree = ast.parse(source)
    docs = []
    stack = [tree]  # depth-first, children pushed reversed so they pop in source order
    while stack:
        node = stack.pop()
        if isinstance(node, _DOC_NODES):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                docs.append(doc)
        stack.extend(reversed(list(ast.iter_child_nodes(node))))
    return docs


@functools.lru_cache(maxsize=None)
def file_docstrings(relpath: str) -> tuple[str, ...] | None:
    """:func:`extract_docstrings` of one standard-library file, or None if it does not parse.

    Cached: the prose corpus and the classification task (minilora.tasks) read
    the same files, and parsing all of them is most of the corpus build time.
    """
    try:
        return tuple(extract_docstrings((stdlib_root() / relpath).read_bytes()))
    except (SyntaxError, ValueError):
        return None


def is_validation_file(relpath: str, val_fraction: float) -> bool:
    """Whether a file belongs to the validation split: hash(relpath) < val_fraction.

    The hash is the first 8 bytes of sha256 of the path, read as a fraction of
    2**64 -- stable across runs, machines and Python versions (unlike ``hash()``),
    and independent of which other files exist.
    """
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def _documents(kind: str, relpath: str) -> list[bytes] | None:
    """The documents one file contributes to a corpus (None if it was skipped)."""
    if kind == "code":
        return [(stdlib_root() / relpath).read_bytes()]
    docs = file_docstrings(relpath)
    return None if docs is None else [d.encode("utf-8") for d in docs]


# ----------------------------------------------------------------------------
# Corpora
# ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Corpus:
    """A train/validation pair of byte streams, with where they came from.

    ``train`` and ``val`` are read-only uint8 arrays of token ids (bytes), each
    document followed by :data:`EOT`. ``sha256`` is the hash of the train bytes
    followed by the val bytes: two machines with equal hashes train on the same
    text.
    """

    kind: str  # "prose" or "code"
    train: np.ndarray = field(repr=False)  # (N_train,) uint8
    val: np.ndarray = field(repr=False)  # (N_val,) uint8
    sha256: str
    meta: dict = field(repr=False)  # python version, file and byte counts, skipped files


def corpus_sha256(train: np.ndarray, val: np.ndarray) -> str:
    """sha256 of the train bytes followed by the val bytes, as hex."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(train, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(val, dtype=np.uint8).tobytes())
    return h.hexdigest()


def build_corpus(
    kind: str = "prose",
    max_bytes: int | None = None,
    val_fraction: float = 0.05,
    *,
    cache: bool = True,
) -> Corpus:
    """Build (or fetch from cache) the ``"prose"`` or ``"code"`` corpus.

    Args:
        kind: ``"prose"`` (docstrings) or ``"code"`` (source files).
        max_bytes: cap on ``len(train) + len(val)``, for quick experiments and
            tests. The validation split gets ``round(max_bytes * val_fraction)``
            bytes (at least 1), the train split the rest; each takes documents
            from its own files in sorted order until full, the last document
            cut short. None means the whole corpus.
        val_fraction: share of *files* (not bytes) held out for validation.
        cache: keep the result in memory for this process; a whole corpus
            (``max_bytes=None``) is also cached on disk under
            ``$MINILORA_CACHE_DIR`` (default ``~/.cache/minilora``), keyed by
            kind, fraction, Python version and :data:`BUILDER_VERSION`. A
            cached file is read only if its recorded sha256 matches its bytes.
            Capped corpora are quick to build and are not written to disk.
    """
    if kind not in CORPUS_KINDS:
        raise ValueError(f"kind={kind!r} is not a known corpus; known kinds: {', '.join(CORPUS_KINDS)}")
    if max_bytes is not None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)):
            raise TypeError(f"max_bytes must be an int or None, got {type(max_bytes).__name__}: {max_bytes!r}")
        if max_bytes < 2:
            raise ValueError(f"max_bytes={max_bytes} leaves no room for both splits; use at least 2 (or None)")
        max_bytes = int(max_bytes)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise TypeError(f"val_fraction must be a float, got {type(val_fraction).__name__}: {val_fraction!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must lie strictly between 0 and 1")
    val_fraction = float(val_fraction)
    if not cache:
        return _build(kind, max_bytes, val_fraction)
    return _build_cached(kind, max_bytes, val_fraction)


def _build(kind: str, max_bytes: int | None, val_fraction: float) -> Corpus:
    """Walk the files once, appending each file's documents to its split."""
    if max_bytes is None:
        budget = {"train": None, "val": None}
    else:
        val_budget = min(max(1, round(max_bytes * val_fraction)), max_bytes - 1)  # both splits non-empty
        budget = {"train": max_bytes - val_budget, "val": val_budget}
    chunks: dict[str, list[bytes]] = {"train": [], "val": []}
    size = {"train": 0, "val": 0}
    files = {"train": 0, "val": 0}
    n_documents, skipped = 0, []

    def full(split):
        return budget[split] is not None and size[split] >= budget[split]

    for relpath in stdlib_files():
        if full("train") and full("val"):
            break
        split = "val" if is_validation_file(relpath, val_fraction) else "train"
        if full(split):
            continue  # the other split still has room; skip without reading
        docs = _documents(kind, relpath)
        if docs is None:
            skipped.append(relpath)
            continue
        if docs:
            files[split] += 1
        for doc in docs:
            piece = doc + bytes([EOT])
            if budget[split] is not None:
                piece = piece[: budget[split] - size[split]]
            chunks[split].append(piece)
            size[split] += len(piece)
            n_documents += 1
            if full(split):
                break

    train = _readonly(np.frombuffer(b"".join(chunks["train"]), dtype=np.uint8))
    val = _readonly(np.frombuffer(b"".join(chunks["val"]), dtype=np.uint8))
    meta = {
        "python_version": platform.python_version(),
        "builder_version": BUILDER_VERSION,
        "stdlib": str(stdlib_root()),
        "max_bytes": max_bytes,
        "val_fraction": val_fraction,
        "n_files": files["train"] + files["val"],  # files that contributed text
        "n_train_files": files["train"],
        "n_val_files": files["val"],
        "n_documents": n_documents,
        "train_bytes": int(train.size),
        "val_bytes": int(val.size),
        "skipped_files": skipped,  # did not parse (prose only)
    }
    return Corpus(kind, train, val, corpus_sha256(train, val), meta)


def _readonly(array: np.ndarray) -> np.ndarray:
    """Mark an array read-only, so that a cached corpus cannot be changed by a caller."""
    array.flags.writeable = False
    return array


# ----------------------------------------------------------------------------
# Caching: in memory, and on disk with a hash check
# ----------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where corpora are cached on disk: ``$MINILORA_CACHE_DIR`` or ``~/.cache/minilora``."""
    return Path(os.environ.get("MINILORA_CACHE_DIR", Path.home() / ".cache" / "minilora"))


def _cache_path(kind: str, val_fraction: float) -> Path:
    name = f"corpus-{kind}-py{platform.python_version()}-v{BUILDER_VERSION}-val{val_fraction}.npz"
    return cache_dir() / name


@functools.lru_cache(maxsize=8)
def _build_cached(kind: str, max_bytes: int | None, val_fraction: float) -> Corpus:
    if max_bytes is not None:
        return _build(kind, max_bytes, val_fraction)
    path = _cache_path(kind, val_fraction)
    if path.exists():
        try:
            return load_corpus(path)
        except (ValueError, KeyError, OSError) as err:
            warnings.warn(f"ignoring corpus cache {path}: {err}; rebuilding", stacklevel=3)
    corpus = _build(kind, max_bytes, val_fraction)
    try:
        save_corpus(corpus, path)
    except OSError as err:  # a read-only home directory must not stop training
        warnings.warn(f"could not write corpus cache {path}: {err}", stacklevel=3)
    return corpus


def save_corpus(corpus: Corpus, path: str | os.PathLike) -> None:
    """Write a corpus to an ``.npz`` file atomically (``minilora.io``).

    A reader never sees a half-written file: either the old one or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        train=corpus.train,
        val=corpus.val,
        kind=np.array(corpus.kind),
        sha256=np.array(corpus.sha256),
        meta=np.array(json.dumps(corpus.meta, sort_keys=True)),
    )
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


CORPUS_MEMBERS = ("train.npy", "val.npy", "kind.npy", "sha256.npy", "meta.npy")


def load_corpus(path: str | os.PathLike) -> Corpus:
    """Read a corpus written by :func:`save_corpus`, checked before it is read.

    The cache is a regular file (``minilora.loading``), a zip of exactly the five arrays
    ``save_corpus`` writes, each declaring no more bytes than its member holds (so a
    damaged header cannot make NumPy allocate a huge array), and its bytes must hash to
    the recorded sha256. Any failure is a ``minilora.errors.WeightsError`` (a ValueError)
    or an OSError naming the file; the caller rebuilds the corpus."""
    import zipfile

    from minilora.errors import LoadError, WeightsError
    from minilora.loading import check_regular_file, parse_json, read_header_of_npz_member

    check_regular_file(path, "a corpus cache")
    try:
        with zipfile.ZipFile(path) as z:
            members = {info.filename: info for info in z.infolist()}
            if sorted(members) != sorted(CORPUS_MEMBERS):
                raise WeightsError(f"corpus file {path} is corrupt: it holds {sorted(members)}, not {list(CORPUS_MEMBERS)}")
            for name, info in members.items():
                with z.open(info) as member:
                    read_header_of_npz_member(member, info.file_size, path, name)
        with np.load(path, allow_pickle=False) as f:
            train, val = f["train"], f["val"]
            kind, recorded, meta = str(f["kind"]), str(f["sha256"]), parse_json(str(f["meta"]).encode(), path)
    except LoadError:
        raise
    except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError, RuntimeError) as err:
        raise WeightsError(f"corpus file {path} is corrupt: {type(err).__name__}: {err}") from None
    actual = corpus_sha256(train, val)
    if actual != recorded:
        raise WeightsError(f"corpus file {path} is corrupt: its bytes hash to {actual}, but it records {recorded}")
    return Corpus(kind, _readonly(train), _readonly(val), recorded, meta)


# ----------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < 1:
        raise ValueError(f"{name}={value} must be at least 1")
    return int(value)


def _check_stream(data, block_size: int) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim != 1:
        raise ValueError(f"data must be a 1-D array of token ids, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer):
        raise TypeError(f"data must hold integer token ids, got dtype {data.dtype}")
    if data.size < block_size + 1:
        raise ValueError(
            f"data has {data.size} tokens, too few for one window of block_size={block_size} "
            f"plus its shifted target (needs at least {block_size + 1})"
        )
    return data


def get_batch(data, batch_size: int, block_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``batch_size`` random windows of the token stream ``data`` and their next tokens.

    As in nanoGPT: offsets ``i ~ U{0, ..., len(data) - block_size - 1}``,
    ``x[b] = data[i : i+T]`` and ``y[b] = data[i+1 : i+T+1]``, so ``y[b, t]``
    is the token that follows ``x[b, t]``. The offsets come from ``rng`` only,
    so the same generator state gives the same batch.

    Returns (x, y), int64 arrays of shape (B, T).
    """
    batch_size = _check_positive_int("batch_size", batch_size)
    block_size = _check_positive_int("block_size", block_size)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    data = _check_stream(data, block_size)
    starts = rng.integers(0, data.size - block_size, size=batch_size)  # (B,)
    index = starts[:, None] + np.arange(block_size)  # (B, T)
    x = data[index].astype(np.int64)  # (B, T)
    y = data[index + 1].astype(np.int64)  # (B, T)
    return x, y


def eval_batches(
    data, batch_size: int, block_size: int, max_batches: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Walk ``data`` in order in non-overlapping windows, ``batch_size`` windows a batch.

    Window k is ``x = data[k*T : (k+1)*T]``, ``y = data[k*T+1 : (k+1)*T+1]``;
    the tail too short for a whole window is dropped, and the last batch may
    hold fewer than ``batch_size`` windows. Deterministic, so validation losses
    of two runs are comparable. ``max_batches`` stops early (None: all).

    Yields (x, y), int64 arrays of shape (b, T) with b <= batch_size.
    """
    batch_size = _check_positive_int("batch_size", batch_size)
    block_size = _check_positive_int("block_size", block_size)
    if max_batches is not None:
        max_batches = _check_positive_int("max_batches", max_batches)
    data = _check_stream(data, block_size)
    n_windows = (data.size - 1) // block_size
    starts = np.arange(n_windows) * block_size  # (n_windows,)
    for n, first in enumerate(range(0, n_windows, batch_size)):
        if max_batches is not None and n >= max_batches:
            return
        index = starts[first : first + batch_size, None] + np.arange(block_size)  # (b, T)
        yield data[index].astype(np.int64), data[index + 1].astype(np.int64)
