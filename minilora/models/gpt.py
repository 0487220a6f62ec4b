"""GPT-2, written out in minilora, with Hugging Face's parameter names.

    Radford, Wu, Child, Luan, Amodei, Sutskever (2019). "Language Models are
    Unsupervised Multitask Learners." (GPT-2)
    Vaswani et al. (2017). "Attention Is All You Need." (the Transformer)

Read it top to bottom, like nanoGPT's model.py: attention, MLP, block, model,
then generation. Every module name equals the Hugging Face ``GPT2LMHeadModel``
key (``transformer.h.0.attn.c_attn`` ...), so a checkpoint or a PEFT adapter maps
one to one; loading and saving those files lives in ``minilora/models/hf.py``.
The whole model is drawn in ``docs/transformer.md``.

Three hooks for the methods built on top (LoRA, prompt and prefix tuning, IA3,
adapters):

* every projection is an ``nn.Linear`` called as a module (``self.c_attn(x)``),
  so a method can swap it for a wrapper;
* ``forward`` takes ``inputs_embeds`` (B, T, C) instead of token ids, so prompt
  tuning can prepend trained embeddings;
* ``forward`` takes a ``KVCache`` of keys and values of earlier positions, as
  Hugging Face's ``past_key_values``: generation grows it one token at a time,
  and prefix tuning passes a trainable one (gradients flow into it).

and one for batches of prompts of different lengths, left-padded to one length
(``minilora/models/decoding.py``): ``forward`` takes Hugging Face's
``attention_mask``, 1 for a real token and 0 for padding, from which each token's
position and the keys it may attend to follow (``padding_mask``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy

from minilora import backend
from minilora import nn
from minilora.nn import functional as F
from minilora.tensor import Tensor, cat, float32, no_grad


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2's byte-level BPE: 50,000 merges + 256 bytes + <|endoftext|>
    block_size: int = 1024  # the longest sequence, i.e. the number of learned positions (HF: n_positions)
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block; head_size = n_embd // n_head
    n_embd: int = 768  # the width of the residual stream, C
    dropout: float = 0.0  # one rate for embeddings, attention probabilities and residuals (GPT-2 trained with 0.1)
    bias: bool = True  # biases in the Linears and LayerNorms, as GPT-2 (False is nanoGPT's option; HF cannot load it)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must lie in [0, 1), got {self.dropout!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        """The published sizes: ``"gpt2"`` (124M), ``"gpt2-medium"`` (350M), ``"gpt2-large"`` (774M), ``"gpt2-xl"`` (1558M)."""
        if name not in PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}; known presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def num_parameters(self) -> int:
        """The closed-form count, the tied head counted once: V C + T C + L (12 C^2 + 13 C) + 2 C with biases."""
        V, T, L, C = self.vocab_size, self.block_size, self.n_layer, self.n_embd
        if self.bias:
            return V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
        return V * C + T * C + L * (12 * C * C + 2 * C) + C


PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}


# ---------------------------------------------------------------------------
# the key/value cache
# ---------------------------------------------------------------------------


class KVCache:
    """Keys and values of the P positions already seen, one ``(k, v)`` pair per layer.

    This is Hugging Face's ``past_key_values``: k and v are Tensors of shape
    (B, n_head, P, head_size) -- for LLaMA (B, num_key_value_heads, P, head_dim):
    grouped-query attention's shared heads, stored once. Attention layer i calls ``update(i, k_new, v_new)``,
    which appends the new positions *in place* and returns the whole (k, v);
    the new tokens take positions P, P+1, ... Gradients flow through the
    concatenation into the stored tensors, so prefix tuning passes a KVCache built
    from trainable tensors -- a fresh one for each forward, since every forward
    extends it (building one is cheap: it only holds references).
    """

    def __init__(self, pairs=()):
        self.layers = []
        for i, (k, v) in enumerate(pairs):
            k = k if isinstance(k, Tensor) else Tensor(k)
            v = v if isinstance(v, Tensor) else Tensor(v)
            if k.ndim != 4 or k.shape != v.shape:
                raise ValueError(
                    f"KVCache: layer {i} needs keys and values of one shape (B, n_head, P, head_size), "
                    f"got keys {k.shape} and values {v.shape}"
                )
            self.layers.append((k, v))

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def length(self) -> int:
        """P, the number of positions held (0 when empty)."""
        return self.layers[0][0].shape[2] if self.layers else 0

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple:
        """Append k, v (B, nh, T, hs) to layer ``layer_idx``; return the layer's keys and values (B, nh, P+T, hs)."""
        if layer_idx == len(self.layers):  # the first call fills an empty cache, layer by layer
            self.layers.append((k, v))
            return k, v
        if layer_idx > len(self.layers):
            raise IndexError(f"KVCache.update: layer {layer_idx} comes before layers {len(self.layers)}..{layer_idx - 1} are filled")
        past_k, past_v = self.layers[layer_idx]
        k = cat([past_k, k], dim=2)  # (B, nh, P+T, hs)
        v = cat([past_v, v], dim=2)  # (B, nh, P+T, hs)
        self.layers[layer_idx] = (k, v)
        return k, v

    def crop(self, length: int) -> None:
        """Keep only the first ``length`` positions (e.g. to reuse a prompt's cache)."""
        self.layers = [(k[:, :, :length], v[:, :, :length]) for k, v in self.layers]

    def select(self, rows) -> None:
        """Keep only the batch rows ``rows`` (an index array), e.g. when some sequences have finished
        (Hugging Face's ``batch_select_indices``)."""
        self.layers = [(k[rows], v[rows]) for k, v in self.layers]


def check_kv_cache(kv_cache, who: str, layers: tuple, heads: tuple, layout: str) -> int:
    """P, the positions ``kv_cache`` holds, after checking that it is a KVCache, empty or holding one
    (k, v) pair per layer of shape ``(B, heads, P, head_size)``. ``layers`` is the config field that
    counts the model's layers and its value; ``heads`` is (B, heads, head_size); ``who`` and
    ``layout`` name the caller and the expected shape in the messages."""
    if not isinstance(kv_cache, KVCache):
        raise TypeError(f"{who}: kv_cache must be a KVCache, got {type(kv_cache).__name__}")
    if len(kv_cache) == 0:
        return 0
    field, n_layers = layers
    if len(kv_cache) != n_layers:
        raise ValueError(f"{who}: kv_cache holds {len(kv_cache)} layers, the model has {field}={n_layers}")
    batch, n_heads, head_size = heads
    expected = (batch, n_heads, kv_cache.length, head_size)
    for i, (k, v) in enumerate(kv_cache.layers):
        if k.shape != expected or v.shape != expected:
            raise ValueError(f"{who}: kv_cache layer {i} has keys {k.shape} and values {v.shape}, "
                             f"expected {layout} = {expected}")
    return kv_cache.length


_causal_masks: dict = {}


def causal_mask(T: int, S: int):
    """Boolean (T, S): the T new queries sit at positions S-T .. S-1, and query i sees keys 0 .. S-T+i."""
    key = (T, S, backend.name)
    if key not in _causal_masks:
        P = S - T
        _causal_masks[key] = backend.xp.arange(S)[None, :] <= backend.xp.arange(P, S)[:, None]  # (T, S)
    return _causal_masks[key]


def padding_mask(attention_mask, batch: int, past: int, new: int, who: str) -> tuple:
    """What Hugging Face's ``attention_mask`` (B, P + T) -- 1 for a real token, 0 for padding, over the
    P cached positions and the T new ones -- means for the T new tokens: the boolean attention mask
    (B, 1, T, P + T), True where a query may attend, and each new token's position (B, T), a host array.

    A token's position counts the real tokens before it, so a prompt left-padded by k positions gets
    the positions it would have alone (Hugging Face's ``generate`` derives ``position_ids`` from the
    mask the same way). A query sees the real keys up to itself -- and itself even when it is padding,
    so that a padding row's softmax has something to normalise: its output is never read, and the real
    queries give its key probability exactly 0, so no real row's result depends on the padding."""
    real = numpy.asarray(backend.to_numpy(attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask))
    if real.shape != (batch, past + new):
        raise ValueError(f"{who}: attention_mask must have shape (B, cached + new positions) = {(batch, past + new)}, "
                         f"got {real.shape}")
    if not numpy.isin(real, (0, 1)).all():
        raise ValueError(f"{who}: attention_mask must hold 0 (padding) and 1 (a real token) only, "
                         f"got {sorted(set(real[~numpy.isin(real, (0, 1))].tolist()))[:5]}")
    real = real.astype(bool)
    query = numpy.arange(past, past + new)[:, None]  # (T, 1): the new tokens' slots in the cache
    key = numpy.arange(past + new)[None, :]  # (1, S)
    allowed = (key <= query) & (real[:, None, :] | (key == query))  # (B, T, S)
    positions = numpy.maximum(numpy.cumsum(real, axis=1) - 1, 0)[:, past:]  # (B, T); padding takes position 0
    return backend.xp.asarray(allowed[:, None]), positions


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask (HF: ``GPT2Attention``), Vaswani et al. eq. 1:
    ``Attention(Q, K, V) = softmax(Q K^T / sqrt(hs)) V`` in each head, heads concatenated, then ``c_proj``."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.n_head, self.layer_idx = config.n_head, layer_idx  # layer_idx: this layer's slot in a KVCache
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one GEMM
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)  # on the attention probabilities, inside F.sdpa
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, kv_cache: KVCache | None = None, attn_mask=None):
        """``attn_mask``: None for the causal mask, or the (B, 1, T, S) one of ``padding_mask``."""
        B, T, C = x.shape  # batch, new positions, n_embd
        nh, hs = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nh, S, hs), S = P + T
        S = k.shape[2]
        p = self.attn_dropout.p if self.training else 0.0
        if attn_mask is not None:  # padded rows: the mask says it all
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)  # (B, nh, T, hs)
        elif S == T:  # no past: the plain lower-triangular mask
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, nh, T, hs)
        else:  # a past of P positions: query i sees keys 0..P+i
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, S), dropout_p=p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)


class MLP(nn.Module):
    """The position-wise feed-forward network: ``c_proj(gelu(c_fc(x)))``, 4x wide (HF: ``GPT2MLP``)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.act(self.c_fc(x))  # (B, T, 4C)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class Block(nn.Module):
    """A pre-LayerNorm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))`` (HF: ``GPT2Block``)."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache: KVCache | None = None, attn_mask=None):
        x = x + self.attn(self.ln_1(x), kv_cache, attn_mask)  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x


class GenerationMixin:
    """``generate`` for a causal language model (Hugging Face's name for the same mixin).

    The model needs ``config.block_size`` (its context length) and a forward
    ``model(idx, kv_cache=...) -> (logits, loss)`` that extends a ``KVCache``; GPT and
    LlamaForCausalLM both have them.
    """

    @no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None, use_cache: bool = True) -> Tensor:
        """Append ``max_new_tokens`` tokens to each row of ``idx`` (B, T); returns ids (B, T + max_new_tokens).

        ``temperature == 0`` is greedy decoding (argmax, Hugging Face's ``do_sample=False``);
        otherwise sample from ``softmax(logits / temperature)``, restricted to the
        ``top_k`` most likely tokens if given. ``seed`` makes sampling reproducible
        (without it, minilora's global generator is used). With ``use_cache`` the
        prompt is run once (prefill) and then one token per step through a KVCache;
        without, the whole sequence is recomputed each step -- the same tokens.
        The whole sequence must fit in ``block_size``: never cropped, an error instead.
        Runs in eval mode (no dropout) and restores the mode afterwards.
        """
        idx = backend.xp.asarray(_as_ids(idx, "idx"))  # on the device: the sampled ids join it there
        T = idx.shape[1]
        if max_new_tokens < 0:
            raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
        if T + max_new_tokens > self.config.block_size:
            raise ValueError(
                f"generate: prompt length {T} + max_new_tokens={max_new_tokens} = {T + max_new_tokens} exceeds "
                f"block_size={self.config.block_size}; crop the prompt or generate fewer tokens"
            )
        if temperature < 0:
            raise ValueError(f"generate: temperature must be >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"generate: top_k must be a positive int or None, got {top_k}")
        rng = backend.xp.random.default_rng(seed) if seed is not None else backend.rng()
        was_training = self.training
        self.eval()
        try:
            cache = KVCache() if use_cache else None
            tokens = [idx]
            logits, _ = self(idx, kv_cache=cache)  # prefill: (B, T, V)
            for step in range(max_new_tokens):
                next_id = sample_next(logits.data[:, -1, :], temperature, top_k, rng)  # (B, 1)
                tokens.append(next_id)
                if step + 1 == max_new_tokens:
                    break
                if use_cache:
                    logits, _ = self(next_id, kv_cache=cache)  # (B, 1, V)
                else:
                    logits, _ = self(backend.xp.concatenate(tokens, axis=1))  # (B, T', V)
        finally:
            self.train(was_training)
        return Tensor(backend.xp.concatenate(tokens, axis=1))


class GPT(GenerationMixin, nn.Module):
    """GPT-2: token + position embeddings, ``n_layer`` blocks, a final LayerNorm, and a head tied to ``wte``."""

    # The projections Hugging Face stores as ``Conv1D`` (W as (in, out)); minilora's are nn.Linear.
    # Checkpoints transpose them (``models/hf.py``), and PEFT treats them apart (``fan_in_fan_out``;
    # LoHa and LoKr refuse them): a module name ending in one of these is such a layer.
    hf_conv1d = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")

    def __init__(self, config: GPTConfig, dtype=None):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying (Press & Wolf, 2017): one Parameter, read by the embedding and the head
        self.lm_head.weight = self.transformer.wte.weight
        self._init_weights()
        if dtype is not None:
            self.to(dtype)

    def _init_weights(self):
        """GPT-2's initialisation: N(0, 0.02) for weights and embeddings, zero biases, LayerNorm 1 and 0,
        and the two projections that write into the residual stream (``c_proj``) scaled by 1/sqrt(2 n_layer)."""
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            elif ".ln_" in name:
                nn.init.ones_(p)
            elif name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx=None, targets=None, *, inputs_embeds=None, kv_cache: KVCache | None = None,
                attention_mask=None):
        """Logits (B, T, V) at every position, and the mean cross-entropy against ``targets`` (or None).

        ``idx``: int token ids (B, T), a NumPy/backend array or a Tensor; or instead
        ``inputs_embeds``: a Tensor (B, T, C) of token embeddings (prompt tuning).
        ``targets``: int (B, T), the token that should follow each position (already
        shifted, as nanoGPT; Hugging Face's ``labels`` are shifted inside), -100 = ignore.
        ``kv_cache``: the keys and values of P earlier positions; the new tokens take
        positions P .. P+T-1, and the cache is extended with them in place.
        ``attention_mask``: (B, P+T), 1 for a real token and 0 for (left) padding, over the cached
        and the new positions (Hugging Face's); positions then count real tokens only (``padding_mask``).
        """
        if (idx is None) == (inputs_embeds is None):
            raise ValueError("GPT.forward: pass exactly one of idx (token ids) and inputs_embeds")
        if inputs_embeds is None:
            idx = _as_ids(idx, "idx")
            tok_emb = self.transformer.wte(idx)  # (B, T, C)
        else:
            tok_emb = inputs_embeds if isinstance(inputs_embeds, Tensor) else Tensor(inputs_embeds)
            if tok_emb.ndim != 3 or tok_emb.shape[2] != self.config.n_embd:
                raise ValueError(f"GPT.forward: inputs_embeds must have shape (B, T, n_embd={self.config.n_embd}), got {tok_emb.shape}")
        B, T, _ = tok_emb.shape
        P = self._check_cache(kv_cache, B) if kv_cache is not None else 0
        if P + T > self.config.block_size:
            raise ValueError(
                f"GPT.forward: {P} cached + {T} new positions = {P + T} exceed block_size={self.config.block_size} "
                f"(the number of learned positions); crop the input"
            )
        mask, positions = None, numpy.arange(P, P + T)  # (T,): positions P .. P+T-1, made on the host (F._ids)
        if attention_mask is not None:
            mask, positions = padding_mask(attention_mask, B, P, T, "GPT.forward")  # (B, 1, T, P+T), (B, T)
        pos_emb = self.transformer.wpe(positions)  # (T, C) or (B, T, C)
        x = self.transformer.drop(tok_emb + pos_emb)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, kv_cache, mask)  # (B, T, C)
        x = self.transformer.ln_f(x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        return logits, lm_loss(logits, targets, "GPT.forward")

    def _check_cache(self, kv_cache: KVCache, batch: int) -> int:
        """P, after checking that the cache is empty or holds one (B, nh, P, hs) pair per layer."""
        c = self.config
        return check_kv_cache(kv_cache, "GPT.forward", ("n_layer", c.n_layer), (batch, c.n_head, c.n_embd // c.n_head),
                              "(B, n_head, P, head_size)")

    # --- checkpoints (the work is in minilora/models/hf.py) -------------------------

    @classmethod
    def from_pretrained(cls, path, dtype=float32, dropout: float | None = None, allow_nonfinite: bool = False) -> "GPT":
        """Load a Hugging Face GPT-2 folder (``config.json`` + ``model.safetensors``) in ``dtype``;
        ``dropout`` overrides the checkpoint's rate; NaN/inf weights are refused unless
        ``allow_nonfinite``. See ``minilora.models.hf.from_pretrained``."""
        from minilora.models import hf

        return hf.from_pretrained(path, dtype=dtype, dropout=dropout, allow_nonfinite=allow_nonfinite)

    def save_pretrained(self, path) -> None:
        """Write ``config.json`` and ``model.safetensors`` that ``transformers.GPT2LMHeadModel`` loads."""
        from minilora.models import hf

        hf.save_pretrained(self, path)


def sample_next(logits, temperature: float, top_k: int | None, rng):
    """One token id per row of ``logits`` (B, V), a backend array: argmax when temperature is 0,
    else inverse-CDF sampling from ``softmax(logits / temperature)`` (top-k if given)."""
    xp = backend.xp
    if temperature == 0:
        return logits.argmax(axis=-1)[:, None].astype(xp.int64)  # (B, 1)
    logits = logits / temperature  # (B, V)
    if top_k is not None:
        kth = xp.sort(logits, axis=-1)[:, -min(top_k, logits.shape[-1])][:, None]  # (B, 1)
        logits = xp.where(logits < kth, -xp.inf, logits)
    probs = xp.exp(logits - logits.max(axis=-1, keepdims=True))  # (B, V), unnormalised
    cdf = xp.cumsum(probs, axis=-1)  # (B, V)
    u = rng.random((logits.shape[0], 1)) * cdf[:, -1:]  # (B, 1), uniform on [0, total)
    next_id = (cdf <= u).sum(axis=-1, keepdims=True)  # (B, 1): the first index whose cdf exceeds u
    return xp.minimum(next_id, logits.shape[-1] - 1).astype(xp.int64)


def lm_loss(logits: Tensor, targets, caller: str) -> Tensor | None:
    """The mean next-token cross-entropy of logits (B, T, V) against targets (B, T), -100 ignored; None without targets."""
    if targets is None:
        return None
    B, T, V = logits.shape
    targets = _as_ids(targets, "targets")
    if targets.shape != (B, T):
        raise ValueError(f"{caller}: targets must have shape (B, T) = {(B, T)}, got {targets.shape}")
    return F.cross_entropy(logits.view(B * T, V), targets.reshape(B * T), ignore_index=-100)


def _as_ids(ids, name: str):
    """Token ids of shape (B, T), an integer array where they are: ids from the host stay there
    until the embedding (or the loss) has checked their range -- for free, before the one copy
    to the device (``F._ids``)."""
    ids = ids.data if isinstance(ids, Tensor) else ids if backend.is_device_array(ids) else numpy.asarray(ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer token ids of shape (B, T), got dtype {ids.dtype} and shape {ids.shape}")
    return ids
