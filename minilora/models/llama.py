"""LLaMA, written out in minilora, with Hugging Face's parameter names.

    Touvron et al. (2023). "LLaMA: Open and Efficient Foundation Language Models." arXiv:2302.13971.
    Zhang & Sennrich (2019). "Root Mean Square Layer Normalization." (RMSNorm)
    Su et al. (2021). "RoFormer: Enhanced Transformer with Rotary Position Embedding." (RoPE)
    Shazeer (2020). "GLU Variants Improve Transformer." (SwiGLU)
    Ainslie et al. (2023). "GQA: Training Generalized Multi-Query Transformer Models." (grouped-query attention)

The block LLaMA, Mistral, Qwen and SmolLM share. Against GPT-2 (``gpt.py``), four
things change, each explained in ``docs/llama.md``:

* RMSNorm instead of LayerNorm: no centring, no bias (``F.rms_norm``);
* no learned positions: queries and keys are rotated by an angle proportional to
  their position (RoPE, ``F.rotary_embedding``), so q.k depends on the distance;
* the MLP is SwiGLU, ``down_proj(silu(gate_proj(x)) * up_proj(x))``, three matrices;
* grouped-query attention: ``num_key_value_heads`` key/value heads, each shared by
  ``num_attention_heads / num_key_value_heads`` query heads (the KV cache shrinks
  by that factor).

No Linear has a bias. Module names equal ``transformers.LlamaForCausalLM``'s keys
(``model.layers.0.self_attn.q_proj`` ...): LoRA targets ``q_proj`` and ``v_proj``
by default, as PEFT does. Checkpoints in Hugging Face's format are read and
written by ``minilora/models/llama_hf.py``; generation (``generate``) and the
``KVCache`` are shared with GPT (``gpt.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy

from minilora import backend
from minilora import nn
from minilora.models.gpt import GenerationMixin, KVCache, _as_ids, causal_mask, check_kv_cache, lm_loss, padding_mask
from minilora.nn import functional as F
from minilora.tensor import Tensor, float32


@dataclass
class LlamaConfig:
    vocab_size: int = 32000  # LLaMA's SentencePiece vocabulary
    hidden_size: int = 4096  # the width of the residual stream, C
    intermediate_size: int = 11008  # the SwiGLU MLP's inner width (about 8/3 C, rounded)
    num_hidden_layers: int = 32  # decoder layers
    num_attention_heads: int = 32  # query heads; head_dim = hidden_size // num_attention_heads
    num_key_value_heads: int | None = None  # key/value heads (GQA), dividing num_attention_heads; None: as many as query heads
    max_position_embeddings: int = 2048  # the longest sequence (no learned positions: the rotary tables' length)
    rms_norm_eps: float = 1e-6  # added to the mean square in RMSNorm (LLaMA-1 1e-6, LLaMA-2 and later 1e-5)
    rope_theta: float = 10000.0  # RoPE's base: pair i turns by position * rope_theta^(-2i / head_dim)
    tie_word_embeddings: bool = False  # lm_head shares embed_tokens' weight (SmolLM: True; LLaMA: False)
    initializer_range: float = 0.02  # the standard deviation of the initial weights

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LlamaConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"LlamaConfig.num_attention_heads={self.num_attention_heads} must divide "
                             f"hidden_size={self.hidden_size}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"LlamaConfig.num_key_value_heads={self.num_key_value_heads} must divide "
                             f"num_attention_heads={self.num_attention_heads} (each key/value head serves a group of query heads)")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim = hidden_size / num_attention_heads = {self.head_dim} must be even "
                             f"(RoPE rotates pairs of features)")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"LlamaConfig.rms_norm_eps must be positive, got {self.rms_norm_eps!r}")
        if not self.rope_theta > 1:
            raise ValueError(f"LlamaConfig.rope_theta must be greater than 1, got {self.rope_theta!r}")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(f"LlamaConfig.tie_word_embeddings must be True or False, got {self.tie_word_embeddings!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def block_size(self) -> int:
        """The context length under GPT's name, so data and generation code serve both models."""
        return self.max_position_embeddings

    @classmethod
    def preset(cls, name: str, **overrides) -> "LlamaConfig":
        """Published sizes: ``"llama-7b"``, ``"llama-2-7b"``, ``"tinyllama-1.1b"``, ``"smollm-135m"``."""
        if name not in PRESETS:
            raise ValueError(f"unknown LLaMA preset {name!r}; known presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def num_parameters(self) -> int:
        """The closed-form count: V C (twice if untied) + L (2 C^2 + 2 C kv hd + 3 C I + 2 C) + C.

        q_proj and o_proj are C x C; k_proj and v_proj C x (kv hd), kv = num_key_value_heads,
        hd = head_dim -- GQA's saving; the MLP's three matrices C x I; two RMSNorm gains a layer.
        """
        V, C, I, L = self.vocab_size, self.hidden_size, self.intermediate_size, self.num_hidden_layers
        kv = self.num_key_value_heads * self.head_dim
        embeddings = V * C * (1 if self.tie_word_embeddings else 2)
        return embeddings + L * (2 * C * C + 2 * C * kv + 3 * C * I + 2 * C) + C


PRESETS = {
    "llama-7b": dict(rms_norm_eps=1e-6),  # the defaults: 6.74B
    "llama-2-7b": dict(max_position_embeddings=4096, rms_norm_eps=1e-5),  # 6.74B
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, rms_norm_eps=1e-5),  # 1.10B
    "smollm-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                        num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5,
                        tie_word_embeddings=True),  # 135M
}


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------


class LlamaRotaryEmbedding(nn.Module):
    """The tables of RoPE: ``cos(p theta_i)`` and ``sin(p theta_i)`` for positions p, with
    ``theta_i = rope_theta^(-2i / head_dim)``, i < head_dim / 2, each angle written in both
    halves of a head (Hugging Face's ``rotate_half`` layout). No parameters.

    Computed in float64 and cast to the model's dtype (Hugging Face computes them in
    float32 whatever the model's dtype); kept per dtype, for all positions at once.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        d = config.head_dim
        self.inv_freq = 1.0 / config.rope_theta ** (numpy.arange(0, d, 2, dtype=numpy.float64) / d)  # (hd/2,)
        self.max_positions = config.max_position_embeddings
        self._tables = {}

    def forward(self, positions, dtype) -> tuple:
        """cos and sin for ``positions``: each (T, head_dim) for positions (T,) shared by the batch,
        (B, 1, T, head_dim) -- one per row, broadcast over the heads -- for positions (B, T)."""
        cos, sin = self.tables(dtype)
        positions = backend.xp.asarray(positions)
        if positions.ndim == 2:
            return cos[positions][:, None], sin[positions][:, None]  # (B, 1, T, hd) each
        return cos[positions], sin[positions]  # (T, hd) each

    def tables(self, dtype) -> tuple:
        """cos and sin for every position, each (max_position_embeddings, head_dim)."""
        key = (numpy.dtype(dtype).str, backend.name)
        if key not in self._tables:
            angles = numpy.arange(self.max_positions, dtype=numpy.float64)[:, None] * self.inv_freq  # (T_max, hd/2)
            angles = numpy.concatenate([angles, angles], axis=1)  # (T_max, hd): theta_i in both halves
            self._tables[key] = (backend.xp.asarray(numpy.cos(angles), dtype=dtype),
                                 backend.xp.asarray(numpy.sin(angles), dtype=dtype))
        return self._tables[key]


class LlamaAttention(nn.Module):
    """Causal self-attention with RoPE and grouped-query heads (HF: ``LlamaAttention``):
    ``softmax(R_p q (R_s k)^T / sqrt(hd)) v`` per head, R_p the rotation at position p."""

    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        C, hd = config.hidden_size, config.head_dim
        self.num_heads, self.num_key_value_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, hd
        self.layer_idx = layer_idx  # this layer's slot in a KVCache
        self.q_proj = nn.Linear(C, self.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(C, self.num_key_value_heads * hd, bias=False)  # (kv hd) wide: GQA's smaller K
        self.v_proj = nn.Linear(C, self.num_key_value_heads * hd, bias=False)  # and V
        self.o_proj = nn.Linear(self.num_heads * hd, C, bias=False)

    def forward(self, x, cos, sin, kv_cache: KVCache | None = None, attn_mask=None):
        """``attn_mask``: None for the causal mask, or the (B, 1, T, S) one of ``padding_mask``."""
        B, T, C = x.shape  # batch, new positions, hidden_size
        nh, kv, hd = self.num_heads, self.num_key_value_heads, self.head_dim
        q = self.q_proj(x).view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, kv, hd).transpose(1, 2)  # (B, kv, T, hd)
        v = self.v_proj(x).view(B, T, kv, hd).transpose(1, 2)  # (B, kv, T, hd)
        q = F.rotary_embedding(q, cos, sin)  # (B, nh, T, hd): each pair turned by its position's angle
        k = F.rotary_embedding(k, cos, sin)  # (B, kv, T, hd)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, kv, S, hd), S = P + T: the grouped heads, once
        S = k.shape[2]
        if attn_mask is not None:  # padded rows: the mask says it all
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=True)  # (B, nh, T, hd)
        elif S == T:  # no past: the plain lower-triangular mask
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # (B, nh, T, hd)
        else:  # a past of P positions: query i sees keys 0..P+i
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, S), enable_gqa=True)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, nh * hd)  # (B, T, C): heads side by side
        return self.o_proj(y)  # (B, T, C)


class LlamaMLP(nn.Module):
    """SwiGLU (Shazeer, 2020, eq. 6 with Swish_1 = SiLU): ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        C, I = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(C, I, bias=False)
        self.up_proj = nn.Linear(C, I, bias=False)
        self.down_proj = nn.Linear(I, C, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        h = self.act_fn(self.gate_proj(x)) * self.up_proj(x)  # (B, T, I): the gate times the value
        return self.down_proj(h)  # (B, T, C)


class LlamaDecoderLayer(nn.Module):
    """A pre-norm block: ``x + attn(rms(x))``, then ``x + mlp(rms(x))`` (HF: ``LlamaDecoderLayer``)."""

    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx)  # (in Hugging Face's order, so the state dicts list alike)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, cos, sin, kv_cache: KVCache | None = None, attn_mask=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, attn_mask)  # (B, T, C)
        x = x + self.mlp(self.post_attention_layernorm(x))  # (B, T, C)
        return x


class LlamaForCausalLM(GenerationMixin, nn.Module):
    """LLaMA: token embeddings, ``num_hidden_layers`` decoder layers, a final RMSNorm, and ``lm_head``
    (tied to ``embed_tokens`` if ``tie_word_embeddings``)."""

    def __init__(self, config: LlamaConfig, dtype=None):
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.hidden_size),
            layers=nn.ModuleList([LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)]),
            norm=nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps),
            rotary_emb=LlamaRotaryEmbedding(config),
        ))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:  # one Parameter, read by the embedding and the head
            self.lm_head.weight = self.model.embed_tokens.weight
        self._init_weights()
        if dtype is not None:
            self.to(dtype)

    def _init_weights(self):
        """Hugging Face's initialisation for LLaMA: N(0, initializer_range) for every matrix, RMSNorm gains 1."""
        for name, p in self.named_parameters():
            if p.ndim == 1:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, std=self.config.initializer_range)

    def forward(self, idx=None, targets=None, *, inputs_embeds=None, kv_cache: KVCache | None = None,
                attention_mask=None):
        """Logits (B, T, V) at every position, and the mean cross-entropy against ``targets`` (or None).

        The arguments mean what they mean in ``GPT.forward``: ``idx`` (B, T) token ids or
        ``inputs_embeds`` (B, T, C); ``targets`` (B, T) already shifted, -100 ignored;
        ``kv_cache`` holds P earlier positions, the new tokens take positions P .. P+T-1;
        ``attention_mask`` (B, P+T) marks padding with 0, and each row's RoPE positions then
        count its real tokens only (``padding_mask`` in gpt.py).
        """
        c = self.config
        if (idx is None) == (inputs_embeds is None):
            raise ValueError("LlamaForCausalLM.forward: pass exactly one of idx (token ids) and inputs_embeds")
        if inputs_embeds is None:
            x = self.model.embed_tokens(_as_ids(idx, "idx"))  # (B, T, C)
        else:
            x = inputs_embeds if isinstance(inputs_embeds, Tensor) else Tensor(inputs_embeds)
            if x.ndim != 3 or x.shape[2] != c.hidden_size:
                raise ValueError(f"LlamaForCausalLM.forward: inputs_embeds must have shape (B, T, hidden_size={c.hidden_size}), "
                                 f"got {x.shape}")
        B, T, _ = x.shape
        P = self._check_cache(kv_cache, B) if kv_cache is not None else 0
        if P + T > c.max_position_embeddings:
            raise ValueError(f"LlamaForCausalLM.forward: {P} cached + {T} new positions = {P + T} exceed "
                             f"max_position_embeddings={c.max_position_embeddings}; crop the input")
        mask, positions = None, numpy.arange(P, P + T)  # (T,): positions P .. P+T-1
        if attention_mask is not None:
            mask, positions = padding_mask(attention_mask, B, P, T, "LlamaForCausalLM.forward")  # (B, 1, T, S), (B, T)
        cos, sin = self.model.rotary_emb(positions, x.dtype)  # (T, hd) or (B, 1, T, hd) each
        for layer in self.model.layers:
            x = layer(x, cos, sin, kv_cache, mask)  # (B, T, C)
        x = self.model.norm(x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        return logits, lm_loss(logits, targets, "LlamaForCausalLM.forward")

    def _check_cache(self, kv_cache: KVCache, batch: int) -> int:
        """P, after checking that the cache is empty or holds one (B, kv, P, hd) pair per layer."""
        c = self.config
        return check_kv_cache(kv_cache, "LlamaForCausalLM.forward", ("num_hidden_layers", c.num_hidden_layers),
                              (batch, c.num_key_value_heads, c.head_dim), "(B, num_key_value_heads, P, head_dim)")

    # --- checkpoints (the work is in minilora/models/llama_hf.py) ---------------------

    @classmethod
    def from_pretrained(cls, path, dtype=float32) -> "LlamaForCausalLM":
        """Load a Hugging Face LLaMA folder (``config.json`` + ``model.safetensors``) in ``dtype``."""
        from minilora.models import llama_hf

        return llama_hf.from_pretrained(path, dtype=dtype)

    def save_pretrained(self, path) -> None:
        """Write ``config.json`` and ``model.safetensors`` that ``transformers.LlamaForCausalLM`` loads."""
        from minilora.models import llama_hf

        llama_hf.save_pretrained(self, path)


def kv_cache_bytes(config: LlamaConfig, batch: int, length: int, dtype=float32) -> int:
    """Bytes of a full KVCache: 2 (k and v) x layers x B x num_key_value_heads x length x head_dim.
    Grouped-query attention divides it by num_attention_heads / num_key_value_heads."""
    c = config
    return 2 * c.num_hidden_layers * batch * c.num_key_value_heads * length * c.head_dim * numpy.dtype(dtype).itemsize


__all__ = ["LlamaConfig", "LlamaForCausalLM", "PRESETS", "kv_cache_bytes"]
