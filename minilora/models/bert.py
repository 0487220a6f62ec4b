"""BERT, written out in minilora, with Hugging Face's module and parameter names.

    Devlin, Chang, Lee, Toutanova (2019). "BERT: Pre-training of Deep Bidirectional
    Transformers for Language Understanding." NAACL.
    Vaswani et al. (2017). "Attention Is All You Need." (the post-LN Transformer encoder)
    Reimers, Gurevych (2019). "Sentence-BERT." (mean pooling into sentence embeddings)

Read it top to bottom: embeddings, self-attention, the two sub-layers with their
residual and LayerNorm, the layer, the model, the classifier. It is GPT-2's
(``gpt.py``) sibling with three differences, drawn in ``docs/bert.md``:

* **post-LN**: each sub-layer is ``LayerNorm(x + sublayer(x))`` (Vaswani et al.'s
  placement), where GPT-2 is pre-LN, ``x + sublayer(LayerNorm(x))``;
* **bidirectional** attention: every position sees every other, and an
  ``attention_mask`` (B, T) of 1s and 0s hides the padding of a batch;
* three embeddings summed: word, position and **token type** (segment A or B).

Every module name equals the Hugging Face ``BertModel`` key
(``encoder.layer.0.attention.self.query`` ...), so a checkpoint or a PEFT adapter
maps one to one; reading and writing those files is ``minilora/models/bert_hf.py``,
and the real pretrained model (all-MiniLM-L6-v2) with its tokenizer is
``minilora/models/minilm.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from minilora import backend
from minilora import nn
from minilora.nn import functional as F
from minilora.tensor import Tensor, float32, no_grad

GELU_EXACT = ("gelu",)  # x Phi(x), with erf
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")  # the tanh approximation, under its two HF names


@dataclass
class BertConfig:
    """BERT's sizes, with ``transformers.BertConfig``'s field names and defaults (BERT-base's)."""

    vocab_size: int = 30522  # WordPiece vocabulary (uncased English)
    hidden_size: int = 768  # the width of the residual stream, H
    num_hidden_layers: int = 12  # encoder layers, L
    num_attention_heads: int = 12  # heads per layer; head size = H / heads
    intermediate_size: int = 3072  # the feed-forward network's inner width (4 H in BERT-base)
    hidden_act: str = "gelu"  # "gelu": exact x Phi(x); "gelu_new"/"gelu_pytorch_tanh": the tanh form
    hidden_dropout_prob: float = 0.1  # on embeddings, sub-layer outputs and the classifier's input
    attention_probs_dropout_prob: float = 0.1  # on the attention probabilities
    max_position_embeddings: int = 512  # learned positions: the longest input
    type_vocab_size: int = 2  # token types (segments A and B)
    initializer_range: float = 0.02  # std of the normal initialisation
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0  # [PAD]: its word embedding starts at zero
    classifier_dropout: float | None = None  # None: hidden_dropout_prob

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BertConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig: hidden_size={self.hidden_size} must be divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.hidden_act not in GELU_EXACT + GELU_TANH:
            raise ValueError(f"BertConfig.hidden_act must be one of {GELU_EXACT + GELU_TANH}, got {self.hidden_act!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"BertConfig.{name} must lie in [0, 1), got {value!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"BertConfig.pad_token_id must lie in [0, vocab_size={self.vocab_size}), got {self.pad_token_id!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "BertConfig":
        """``"bert-base"`` (110M), ``"bert-large"`` (335M), ``"all-MiniLM-L6-v2"`` (22.7M)."""
        if name not in PRESETS:
            raise ValueError(f"unknown BERT preset {name!r}; known presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def num_parameters(self, pooler: bool = True) -> int:
        """The closed-form count: V H + P H + S H + 2 H (embeddings and their LayerNorm),
        L (4 H^2 + 2 H I + 9 H + I) (the layers), H^2 + H (the pooler)."""
        V, P, S, H, L, I = (self.vocab_size, self.max_position_embeddings, self.type_vocab_size,
                            self.hidden_size, self.num_hidden_layers, self.intermediate_size)
        n = (V + P + S + 2) * H + L * (4 * H * H + 2 * H * I + 9 * H + I)
        return n + (H * H + H if pooler else 0)


PRESETS = {
    "bert-base": dict(),  # 110M
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),  # 335M
    "all-MiniLM-L6-v2": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),  # 22.7M
}


def extended_attention_mask(attention_mask, dtype):
    """The (B, T) mask of 1s (a token) and 0s (padding) as an additive (B, 1, 1, T) bias:
    0 where a key may be seen, the dtype's most negative number where it is padding.

    Added to the scores q k^T / sqrt(d) before the softmax, it makes exp(score) exactly 0
    for every padded key, so a real token's output does not depend on how much padding
    its row has. A finite number rather than -inf, as Hugging Face does: a row that is all
    padding then gets uniform weights instead of 0/0 = NaN.
    """
    xp = backend.xp
    keep = xp.asarray(attention_mask).astype(dtype)  # (B, T)
    return ((1 - keep) * xp.finfo(dtype).min)[:, None, None, :]  # (B, 1, 1, T)


# ---------------------------------------------------------------------------
# the modules, one per Hugging Face class
# ---------------------------------------------------------------------------


class BertEmbeddings(nn.Module):
    """``LayerNorm(word[id] + position[t] + token_type[type])``, then dropout (HF: ``BertEmbeddings``)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, H, padding_idx=config.pad_token_id)  # [PAD] never trains
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, H)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, H)
        self.LayerNorm = nn.LayerNorm(H, eps=config.layer_norm_eps)  # HF's capitalised name, kept for the keys
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        T = input_ids.shape[1]
        x = self.word_embeddings(input_ids)  # (B, T, H)
        x = x + self.token_type_embeddings(token_type_ids)  # (B, T, H)
        x = x + self.position_embeddings(backend.xp.arange(T))  # (T, H) broadcast over the batch
        return self.dropout(self.LayerNorm(x))  # (B, T, H)


class BertSelfAttention(nn.Module):
    """Bidirectional multi-head attention, ``softmax(Q K^T / sqrt(d) + mask) V`` in each head
    (Vaswani et al., eq. 1); the heads come out side by side (HF: ``BertSelfAttention``).
    Unlike GPT-2's fused ``c_attn``, q, k and v are three Linears -- LoRA's targets by name."""

    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        self.num_attention_heads = config.num_attention_heads
        self.query = nn.Linear(H, H)
        self.key = nn.Linear(H, H)
        self.value = nn.Linear(H, H)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)  # on the probabilities, inside F.sdpa

    def forward(self, x: Tensor, mask=None) -> Tensor:
        B, T, H = x.shape
        nh = self.num_attention_heads
        hs = H // nh
        q = self.query(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.key(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        p = self.dropout.p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, nh, T, hs); mask (B, 1, 1, T)
        return y.transpose(1, 2).reshape(B, T, H)  # (B, T, H): heads side by side


class BertSelfOutput(nn.Module):
    """The attention sub-layer's output, post-LN: ``LayerNorm(x + dropout(dense(y)))``, H -> H."""

    def __init__(self, config: BertConfig, in_features: int | None = None):
        super().__init__()
        self.dense = nn.Linear(in_features or config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        return self.LayerNorm(x + self.dropout(self.dense(y)))  # (B, T, H): residual, then normalise


class BertAttention(nn.Module):
    """Self-attention and its output sub-layer (HF: ``BertAttention``, whose child is named ``self``)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: Tensor, mask=None) -> Tensor:
        return self.output(self.self(x, mask), x)  # (B, T, H)


class BertIntermediate(nn.Module):
    """The feed-forward network's first half: ``gelu(dense(x))``, H -> I."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = nn.GELU(approximate="tanh" if config.hidden_act in GELU_TANH else "none")

    def forward(self, x: Tensor) -> Tensor:
        return self.intermediate_act_fn(self.dense(x))  # (B, T, I)


class BertOutput(BertSelfOutput):
    """The feed-forward sub-layer's output, post-LN: ``LayerNorm(x + dropout(dense(h)))``, I -> H
    (the same computation as ``BertSelfOutput``, from the FFN's width)."""

    def __init__(self, config: BertConfig):
        super().__init__(config, in_features=config.intermediate_size)


class BertLayer(nn.Module):
    """One encoder layer, post-LN (HF: ``BertLayer``):

        a = LayerNorm(x + Attention(x))
        y = LayerNorm(a + W_2 gelu(W_1 a))
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x: Tensor, mask=None) -> Tensor:
        a = self.attention(x, mask)  # (B, T, H)
        return self.output(self.intermediate(a), a)  # (B, T, H)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, x: Tensor, mask=None) -> Tensor:
        for layer in self.layer:
            x = layer(x, mask)  # (B, T, H)
        return x


class BertPooler(nn.Module):
    """``tanh(dense(h[:, 0]))``: the [CLS] position's state, through one more layer (HF: ``BertPooler``).
    BERT trained it on next-sentence prediction; sentence-transformers' models never use it."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, h: Tensor) -> Tensor:
        return self.activation(self.dense(h[:, 0]))  # (B, H)


# ---------------------------------------------------------------------------
# the models
# ---------------------------------------------------------------------------


class BertModel(nn.Module):
    """The encoder: embeddings, ``num_hidden_layers`` post-LN layers, and the pooler (HF: ``BertModel``).

    ``forward`` returns the last hidden state (B, T, H); the pooler is applied by the
    classifier. ``encode`` turns texts into sentence embeddings (needs a tokenizer:
    ``minilora.models.load_minilm`` attaches one).
    """

    def __init__(self, config: BertConfig, dtype=None, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        if add_pooling_layer:
            self.pooler = BertPooler(config)
        else:
            self.pooler = None
        self.tokenizer = None  # set by load_minilm: what encode() tokenizes with
        self.max_seq_length = config.max_position_embeddings  # encode() truncates here (256 for all-MiniLM-L6-v2)
        init_bert_weights(self, config)
        if dtype is not None:
            self.to(dtype)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> Tensor:
        """The last hidden state (B, T, H).

        ``input_ids``: int (B, T). ``attention_mask``: (B, T), 1 for a token and 0 for
        padding (None: no padding). ``token_type_ids``: int (B, T), the segment of each
        token (None: all 0). Any of them a NumPy/backend array or a Tensor.
        """
        input_ids = _as_ids(input_ids, "input_ids")
        B, T = input_ids.shape
        if T > self.config.max_position_embeddings:
            raise ValueError(
                f"BertModel: input_ids has {T} positions, more than max_position_embeddings="
                f"{self.config.max_position_embeddings} (the learned positions); tokenize with truncation=True to cut it"
            )
        token_type_ids = (Tensor(backend.xp.zeros((B, T), dtype=backend.xp.int64)) if token_type_ids is None
                          else _check_like(_as_ids(token_type_ids, "token_type_ids"), input_ids, "token_type_ids"))
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        mask = None
        if attention_mask is not None:
            mask = _check_like(attention_mask, input_ids, "attention_mask")
            mask = extended_attention_mask(mask.data, x.dtype)  # (B, 1, 1, T)
        return self.encoder(x, mask)  # (B, T, H)

    @no_grad()
    def encode(self, texts, batch_size: int = 32, tokenizer=None):
        """Sentence embeddings, as sentence-transformers computes them for all-MiniLM-L6-v2:
        the last hidden states averaged over each text's tokens (the mask's 1s),

            e = sum_t m_t h_t / sum_t m_t,      then e / ||e||_2,

        texts cut at ``self.max_seq_length`` tokens. A NumPy array (N, H) of unit rows, in
        the model's dtype. Runs in eval mode (no dropout) and restores the mode afterwards.
        """
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError("BertModel.encode needs a tokenizer: pass tokenizer=, or load the model with "
                             "minilora.models.load_minilm(), which attaches one")
        if isinstance(texts, str):
            raise TypeError("BertModel.encode takes a list of texts; wrap a single text in a list")
        texts = list(texts)
        if batch_size < 1:
            raise ValueError(f"BertModel.encode: batch_size must be a positive int, got {batch_size!r}")
        was_training = self.training
        self.eval()
        out = []
        try:
            for i in range(0, len(texts), batch_size):
                batch = tokenizer(texts[i:i + batch_size], truncation=True, max_length=self.max_seq_length)
                h = self(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).data  # (b, T, H)
                out.append(mean_pool_normalize(h, backend.xp.asarray(batch["attention_mask"])))
        finally:
            self.train(was_training)
        xp = backend.xp
        H = self.config.hidden_size
        return backend.to_numpy(xp.concatenate(out) if out else xp.zeros((0, H), dtype=self.embeddings.word_embeddings.weight.dtype))

    # --- checkpoints (the work is in minilora/models/bert_hf.py) -------------------------

    @classmethod
    def from_pretrained(cls, path, dtype=float32) -> "BertModel":
        """Load a Hugging Face BERT folder (``config.json`` + ``model.safetensors``), in eval mode."""
        from minilora.models import bert_hf

        return bert_hf.from_pretrained(path, cls, dtype=dtype)

    def save_pretrained(self, path) -> None:
        """Write ``config.json`` and ``model.safetensors`` that ``transformers.BertModel`` loads."""
        from minilora.models import bert_hf

        bert_hf.save_pretrained(self, path)


def mean_pool_normalize(h, mask):
    """``sum_t m_t h_t / max(sum_t m_t, 1e-9)``, then divided by ``max(||.||_2, 1e-12)``: (B, T, H) -> (B, H).
    The clamps are sentence-transformers' and ``torch.nn.functional.normalize``'s."""
    xp = backend.xp
    m = mask.astype(h.dtype)[:, :, None]  # (B, T, 1)
    e = (h * m).sum(axis=1) / xp.maximum(m.sum(axis=1), 1e-9)  # (B, H)
    return e / xp.maximum(xp.sqrt((e * e).sum(axis=1, keepdims=True)), 1e-12)  # (B, H), unit rows


class BertForSequenceClassification(nn.Module):
    """BERT with a classifier on the pooled [CLS] state (HF: ``BertForSequenceClassification``):

        logits = classifier(dropout(pooler(bert(x))))        (B, num_labels)

    The encoder is ``self.bert``, so parameters are named ``bert.encoder.layer.0...`` and
    ``classifier.weight``, as in Hugging Face's checkpoints and PEFT's adapter files.
    """

    def __init__(self, config: BertConfig, num_labels: int = 2, dtype=None):
        super().__init__()
        if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1:
            raise ValueError(f"BertForSequenceClassification: num_labels must be a positive int, got {num_labels!r}")
        self.config, self.num_labels = config, num_labels
        self.bert = BertModel(config)
        rate = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(rate)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_bert_weights(self.classifier, config)
        if dtype is not None:
            self.to(dtype)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> tuple:
        """``(logits (B, num_labels), loss)``, loss None without ``labels``.

        ``labels``: int class ids (B,) -> cross-entropy; with ``num_labels == 1``, float
        targets (B,) -> mean squared error (Hugging Face's "regression").
        """
        h = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        logits = self.classifier(self.dropout(self.bert.pooler(h)))  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = self._loss(logits, labels)
        return logits, loss

    def _loss(self, logits: Tensor, labels) -> Tensor:
        labels = labels if isinstance(labels, Tensor) else Tensor(backend.xp.asarray(labels))
        B = logits.shape[0]
        if labels.shape != (B,):
            raise ValueError(f"BertForSequenceClassification: labels must have shape (B,) = {(B,)}, got {labels.shape}")
        if self.num_labels == 1:
            diff = logits.view(B) - labels.data.astype(logits.dtype)
            return (diff * diff).mean()
        if labels.dtype.kind not in "iu":
            raise ValueError(f"BertForSequenceClassification: labels must be integer class ids for num_labels="
                             f"{self.num_labels}, got dtype {labels.dtype} (float targets only with num_labels=1)")
        return F.cross_entropy(logits, labels)

    @classmethod
    def from_pretrained(cls, path, num_labels: int | None = None, dtype=float32) -> "BertForSequenceClassification":
        """Load a Hugging Face folder: a ``BertForSequenceClassification`` (its classifier too), or a
        bare ``BertModel`` -- whose classifier is then new and random, as transformers does."""
        from minilora.models import bert_hf

        return bert_hf.from_pretrained(path, cls, dtype=dtype, num_labels=num_labels)

    def save_pretrained(self, path) -> None:
        """Write a folder that ``transformers.BertForSequenceClassification`` loads."""
        from minilora.models import bert_hf

        bert_hf.save_pretrained(self, path)


@no_grad()
def init_bert_weights(module: nn.Module, config: BertConfig) -> None:
    """BERT's initialisation (HF's ``_init_weights``): Linear and Embedding weights from
    N(0, initializer_range), biases 0, LayerNorm 1 and 0, the [PAD] embedding row 0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=config.initializer_range)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if getattr(m, "padding_idx", None) is not None:
            m.weight.data[m.padding_idx] = 0


def _as_ids(ids, name: str) -> Tensor:
    """Token ids (or types) as an integer Tensor of shape (B, T)."""
    ids = ids if isinstance(ids, Tensor) else Tensor(backend.xp.asarray(ids))
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ValueError(f"BertModel: {name} must be integers of shape (B, T), got dtype {ids.dtype} and shape {ids.shape}")
    return ids


def _check_like(t, input_ids: Tensor, name: str) -> Tensor:
    """``t`` as a Tensor of input_ids' shape (B, T), or an error naming both shapes; a mask holds only 0s and 1s."""
    t = t if isinstance(t, Tensor) else Tensor(backend.xp.asarray(t))
    if t.shape != input_ids.shape:
        raise ValueError(f"BertModel: {name} has shape {t.shape}, but input_ids has shape {input_ids.shape}; "
                         f"they must be equal, (B, T)")
    if name == "attention_mask" and t.numel() and not bool(((t.data == 0) | (t.data == 1)).all()):
        raise ValueError("BertModel: attention_mask must hold 1 (a token) and 0 (padding) only")
    return t
