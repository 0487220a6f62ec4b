"""A fine-tuned model as an ONNX file that onnxruntime runs: ``to_onnx(model, path, merged=True)``.

    ONNX (Open Neural Network Exchange), operator set 23: https://onnx.ai/onnx/operators/
    ONNX Runtime's contrib operator ``com.microsoft.MatMulBnb4`` (bitsandbytes' 4-bit formats).

A model leaves Python as a graph: nodes (``MatMul``, ``Softmax``, ``LayerNormalization`` ...)
joined by named tensors, and the weights stored beside them as *initializers*. The graph is
built here node by node with the ``onnx`` package's helper API (no torch, no tracing): each
model's forward is written out again below, in the order minilora computes it, so that the
exported logits equal minilora's -- within 1e-10 relative in float64, within the float32 error
model in float32 (tests/test_export.py). docs/export.md draws the graph.

**LoRA in the graph.** ``merged=True`` folds the active adapter into each weight,
``W' = W + s B A`` (computed for the file; the model is not changed), so the graph is the
base model's and costs nothing extra. ``merged=False`` keeps the branch as two more
``MatMul``\\ s, ``y = x W^T + b + s (x A^T) B^T``: the file holds W, A and B apart (a base
shared by several exported adapters, or an adapter to be inspected), at r (in + out) more
multiplications per token and layer.

**Shapes.** The batch and sequence axes are symbolic (``batch``, ``sequence``): one file
runs any batch of any length up to the model's positions. There is no KV cache: the graph
takes whole sequences and returns logits at every position, so generating with it recomputes
the prefix at every step (the cache's inputs and outputs are a possible extension).

**Operators.** Opset 23, standard operators: ``RMSNormalization`` (new in opset 23) for
LLaMA and ``LayerNormalization`` in float32, ``Softmax``, attention written out as
``softmax((q / sqrt(d)) k^T + mask) v``, RoPE as ``x cos + rotate_half(x) sin``. Stated
decompositions, each for a measured reason:

* GELU is written out from ``Tanh`` (onnxruntime's float64 ``Gelu`` kernel is ~6e-9 off);
* onnxruntime's CPU provider has no float64 ``Erf``, so BERT's exact GELU in a float64
  export computes minilora's own float64 erf (``nn.functional.erf``: a 60-term series below
  3, a 60-term continued fraction above) as the local function ``minilora.Erf64``;
* an ONNX float attribute is a float32, so in a float64 export the normalisations are
  written out with their epsilon as a float64 constant (``Exporter.normalize``).

**4-bit weights.** An ``NF4Linear`` (QLoRA's base, ``minilora/quant.py``) is exported as
onnxruntime's ``com.microsoft.MatMulBnb4`` with ``quant_type=1`` (NF4): the packed 4-bit codes
as stored (two per byte, first in the high nibble -- bitsandbytes' layout, which onnxruntime
reads), and the absmax constants, the double-quantized ones expanded to float32 first
(``dequantize_absmax``). The reference evaluator does not know ``com.microsoft`` operators:
such a file runs in onnxruntime only, in float32. With ``merged=True`` an adapter cannot be
folded into 4-bit weights; those layers are exported dense, W' = dequant(W) + s B A, as
``merge_and_unload`` returns them.

What cannot be expressed -- a method that is not LoRA (prompt and prefix tuning, IA3,
adapters), an Arrow router, DoRA unmerged -- is refused before anything is written, naming
the module; the file is written atomically (``minilora.io``): an error leaves no partial file.
"""

from __future__ import annotations

import math

import numpy

from minilora import backend as B
from minilora import nn
from minilora.io import atomic_write
from minilora.models.bert import GELU_TANH, BertForSequenceClassification, BertModel
from minilora.models.gpt import GPT
from minilora.models.llama import LlamaForCausalLM
from minilora.peft.lora import LoRALinear
from minilora.peft.model import PeftModel
from minilora.quant import NF4Linear, dequantize_absmax
from minilora.tensor import no_grad
from minilora.tuner import BaseTuner, ModulesToSaveWrapper, TunerLayer

OPSET = 23  # the first with RMSNormalization
MS_DOMAIN = "com.microsoft"  # onnxruntime's contrib operators: MatMulBnb4
LOCAL_DOMAIN = "minilora"  # the graph's own functions: Erf64


class ExportError(ValueError):
    """A model (or one of its modules) the exporter cannot express; nothing was written."""


def _onnx():
    try:
        import onnx
    except ImportError as err:  # the optional dependency: pip install 'minilora[onnx]'
        raise ImportError("to_onnx needs the onnx package: pip install 'minilora[onnx]' (onnx and onnxruntime)") from err
    return onnx


# ---------------------------------------------------------------------------
# the graph, node by node
# ---------------------------------------------------------------------------


class Graph:
    """Nodes and initializers of one ONNX graph, with fresh names for the tensors between nodes."""

    def __init__(self, dtype):
        self.onnx = _onnx()
        self.dtype = numpy.dtype(dtype)
        self.elem = self.onnx.helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes, self.initializers, self.functions = [], [], {}
        self._names = {}  # key -> initializer name (``weight``): a tied weight is stored once
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def weight(self, name: str, array, key=None) -> str:
        """An initializer holding ``array`` (floats in the graph's dtype), stored once per ``key``
        (default its name; a Parameter's id, so that GPT-2's tied head and embedding share one)."""
        key = name if key is None else key
        if key not in self._names:
            array = numpy.asarray(B.to_numpy(array))
            if array.dtype.kind == "f":
                array = array.astype(self.dtype)
            self.initializers.append(self.onnx.numpy_helper.from_array(array.copy(order="C"), name))  # 0-d stays 0-d
            self._names[key] = name
        return self._names[key]

    def const(self, value, dtype=None) -> str:
        """A small constant (a scalar, a shape): float values in the graph's dtype unless ``dtype``."""
        array = numpy.asarray(value, dtype=dtype or self.dtype)
        return self.weight(self.fresh("const"), array, key=("const", array.dtype.str, array.shape, array.tobytes()))

    def op(self, op_type: str, *inputs, domain: str = "", outputs: int = 1, **attrs):
        """Append one node; its output name (or names, for ``outputs > 1``)."""
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), names, domain=domain, **attrs))
        return names[0] if outputs == 1 else names


# ---------------------------------------------------------------------------
# the layers
# ---------------------------------------------------------------------------


class Exporter:
    """Writes a model's modules into a ``Graph``: ``linear``, ``layer_norm``, ``attention`` ...
    each the ONNX twin of minilora's forward for that module."""

    def __init__(self, graph: Graph, names: dict, merged: bool):
        self.g, self.names, self.merged = graph, names, merged

    def module(self, module):
        """The module a forward runs: a modules_to_save wrapper's active copy (other tuner layers
        than LoRA's are refused by ``_unwrap`` before the graph is built)."""
        if isinstance(module, ModulesToSaveWrapper):
            return module._module_for(module.active_adapter)
        return module

    def _name(self, module) -> str:
        return self.names.get(id(module), type(module).__name__)

    def param(self, p) -> str:
        return self.g.weight(self.names.get(id(p), self.g.fresh("weight")), p.data, key=id(p))

    # --- projections -------------------------------------------------------------

    def linear(self, module, x: str) -> str:
        """``x W^T + b``, for an nn.Linear, an NF4Linear (MatMulBnb4) or a LoRALinear (merged or with its branch)."""
        module = self.module(module)
        if isinstance(module, LoRALinear):
            return self.lora(module, x)
        if isinstance(module, NF4Linear):
            return self.nf4_linear(module, x)
        if not isinstance(module, nn.Linear):
            raise ExportError(f"to_onnx cannot express {self._name(module)} ({type(module).__name__}) as a projection")
        y = self.g.op("MatMul", x, self.g.op("Transpose", self.param(module.weight), perm=[1, 0]))
        return self.g.op("Add", y, self.param(module.bias)) if module.bias is not None else y

    def nf4_linear(self, module: NF4Linear, x: str) -> str:
        """``com.microsoft.MatMulBnb4``: the 4-bit codes of W (out, in) flattened row by row, absmax in float32."""
        q, name = module.qweight, self._name(module)
        if self.g.dtype != numpy.float32:
            raise ExportError(f"to_onnx: {name} is a 4-bit NF4 layer, which onnxruntime's MatMulBnb4 runs in float32 "
                              f"only; export the model in float32, not {self.g.dtype}")
        n = q.numel
        packed = self.g.weight(f"{name}.qweight", B.to_numpy(q.packed)[: (n + 1) // 2])  # drop the block padding
        absmax = self.g.weight(f"{name}.absmax", B.to_numpy(dequantize_absmax(q)).astype(numpy.float32))
        y = self.g.op("MatMulBnb4", x, packed, absmax, domain=MS_DOMAIN, K=module.in_features, N=module.out_features,
                      block_size=q.block_size, quant_type=1)
        return self.g.op("Add", y, self.param(module.bias)) if module.bias is not None else y

    @no_grad()
    def lora(self, layer: LoRALinear, x: str) -> str:
        name, used = self._name(layer), layer.active_adapter
        if layer.merged or layer.disable_adapters or used not in layer.lora_A:  # as LoRALinear.forward: W alone
            return self.linear(layer.base_layer, x)
        if used in layer.lora_arrow:
            raise ExportError(f"to_onnx cannot express {name}'s Arrow router {used!r}: it routes token by token "
                              "among other adapters; set_adapter() to one adapter (or merge them) first")
        if self.merged:  # W' = W + s B A (DoRA: m (W + ΔW) / ||W + ΔW||), computed for the file
            step = layer.merge_steps([used])[-1] if not isinstance(layer.base_layer, NF4Linear) else None
            W = step.params["weight"] if step else layer.base_layer.dequantize() + layer.get_delta_weight(used).data
            w = self.g.weight(f"{name}.weight", W.astype(layer.base_layer.weight.dtype))
            y = self.g.op("MatMul", x, self.g.op("Transpose", w, perm=[1, 0]))
            bias = layer.base_layer.bias
            return self.g.op("Add", y, self.param(bias)) if bias is not None else y
        if used in layer.lora_magnitude_vector:
            raise ExportError(f"to_onnx cannot express {name}'s DoRA adapter {used!r} unmerged (its update divides "
                              "by a norm of W + ΔW); export it with merged=True")
        y = self.linear(layer.base_layer, x)
        A = self.g.weight(f"{name}.lora_A.{used}.weight", layer.lora_A[used].weight.data)
        Bfull = self.g.weight(f"{name}.lora_B.{used}.weight", layer.lora_B_full(used).data)
        h = self.g.op("MatMul", x, self.g.op("Transpose", A, perm=[1, 0]))  # (..., r): shrink
        h = self.g.op("Mul", h, self.g.const(float(layer.scaling[used])))  # the thin activation scaled, as minilora
        return self.g.op("Add", y, self.g.op("MatMul", h, self.g.op("Transpose", Bfull, perm=[1, 0])))  # expand

    # --- normalisation, activations ---------------------------------------------------

    def layer_norm(self, module, x: str) -> str:
        """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis: ``LayerNormalization``,
        written out in a float64 export (``normalize``)."""
        module = self.module(module)
        weight, bias = self.param(module.weight), self.param(module.bias) if module.bias is not None else None
        if self.g.dtype == numpy.float64:
            centred = self.g.op("Sub", x, self.g.op("ReduceMean", x, self.g.const([-1], numpy.int64)))
            return self.normalize(centred, module.eps, weight, bias)
        inputs = [x, weight] + ([bias] if bias else [])
        return self.g.op("LayerNormalization", *inputs, axis=-1, epsilon=float(module.eps))

    def rms_norm(self, module, x: str) -> str:
        """``x / sqrt(mean(x^2) + eps) * weight``: opset 23's ``RMSNormalization``, written out in float64."""
        module = self.module(module)
        if self.g.dtype == numpy.float64:
            return self.normalize(x, module.eps, self.param(module.weight), None)
        return self.g.op("RMSNormalization", x, self.param(module.weight), axis=-1, epsilon=float(module.eps))

    def normalize(self, x: str, eps: float, weight: str, bias: str | None) -> str:
        """``x / sqrt(mean(x^2) + eps) * weight (+ bias)`` with eps a float64 constant. An ONNX float
        attribute is a float32, so the normalisation operators' ``epsilon`` is eps rounded to 24 bits
        (1e-5 -> 9.99999974e-06): harmless in float32, but where the variance is small it moves a
        float64 result by up to |δeps| / (2 eps) ≈ 1e-8 relative."""
        g = self.g
        mean_square = g.op("ReduceMean", g.op("Mul", x, x), g.const([-1], numpy.int64))
        rstd = g.op("Reciprocal", g.op("Sqrt", g.op("Add", mean_square, g.const(eps))))
        y = g.op("Mul", g.op("Mul", x, rstd), weight)
        return g.op("Add", y, bias) if bias else y

    def gelu(self, x: str, approximate: str) -> str:
        """GELU written out, as minilora computes it: the tanh form ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715
        x^3)))`` (onnxruntime's float64 ``Gelu`` kernel is ~6e-9 off), or ``x (1 + erf(x / sqrt 2)) / 2``."""
        g, const = self.g, self.g.const
        if approximate == "tanh":
            inner = g.op("Mul", g.op("Add", g.op("Mul", g.op("Mul", x, x), const(0.044715)), const(1.0)), x)
            t = g.op("Tanh", g.op("Mul", inner, const(math.sqrt(2.0 / math.pi))))
            return g.op("Mul", g.op("Mul", g.op("Add", t, const(1.0)), x), const(0.5))
        scaled = g.op("Mul", x, const(1 / math.sqrt(2.0)))
        if g.dtype == numpy.float64:  # minilora's float64 erf (module docstring)
            g.functions.setdefault("Erf64", erf64_function(g.onnx, g.elem))
            erf = g.op("Erf64", scaled, domain=LOCAL_DOMAIN)
        else:
            erf = g.op("Erf", scaled)
        return g.op("Mul", x, g.op("Mul", g.op("Add", erf, const(1.0)), const(0.5)))

    # --- shapes and attention ------------------------------------------------------------

    def length(self, ids: str) -> str:
        """T, the sequence length of ids (B, T), as a scalar int64."""
        return self.g.op("Squeeze", self.g.op("Shape", ids, start=1, end=2), self.g.const([0], numpy.int64))

    def positions(self, ids: str) -> str:
        """0 .. T-1 (T,), int64."""
        return self.g.op("Range", self.g.const(0, numpy.int64), self.length(ids), self.g.const(1, numpy.int64))

    def causal_bias(self, ids: str) -> str:
        """(T, T): 0 where query i sees key j <= i, -inf above the diagonal (minilora's ``_causal_bias``)."""
        T = self.g.op("Shape", ids, start=1, end=2)
        square = self.g.op("Concat", T, T, axis=0)
        ones = self.g.op("ConstantOfShape", square, value=self.g.onnx.numpy_helper.from_array(numpy.ones(1, numpy.int64)))
        lower = self.g.op("Cast", self.g.op("Trilu", ones, upper=0), to=int(self.g.onnx.TensorProto.BOOL))
        return self.g.op("Where", lower, self.g.const(0.0), self.g.const(-numpy.inf))

    def heads(self, x: str, n_heads: int, head_size: int) -> str:
        """(B, T, n h) -> (B, n, T, h)."""
        split = self.g.op("Reshape", x, self.g.const([0, 0, n_heads, head_size], numpy.int64))
        return self.g.op("Transpose", split, perm=[0, 2, 1, 3])

    def merge_heads(self, y: str, width: int) -> str:
        """(B, n, T, h) -> (B, T, n h): heads side by side."""
        return self.g.op("Reshape", self.g.op("Transpose", y, perm=[0, 2, 1, 3]), self.g.const([0, 0, width], numpy.int64))

    def attention(self, q: str, k: str, v: str, bias: str, head_size: int) -> str:
        """``softmax((q / sqrt(h)) k^T + bias) v`` per head, q scaled first as minilora does."""
        q = self.g.op("Mul", q, self.g.const(1.0 / math.sqrt(head_size)))
        scores = self.g.op("MatMul", q, self.g.op("Transpose", k, perm=[0, 1, 3, 2]))  # (B, n, T, T)
        p = self.g.op("Softmax", self.g.op("Add", scores, bias), axis=-1)
        return self.g.op("MatMul", p, v)  # (B, n, T, h)


def erf64_function(onnx, elem: int):
    """The local function ``minilora.Erf64(x)``: ``nn.functional.erf``'s float64 branch, unrolled."""
    h, nodes, count = onnx.helper, [], [0]

    def op(op_type, *inputs, **attrs):
        count[0] += 1
        name = f"t{count[0]}"
        nodes.append(h.make_node(op_type, list(inputs), [name], **attrs))
        return name

    def const(value):
        return op("Constant", value=h.make_tensor("c", elem, [], [float(value)]))

    ax = op("Abs", "x")
    xs = op("Min", ax, const(3.0))  # the series, below 3
    two_x2 = op("Mul", op("Mul", xs, xs), const(2.0))
    term, total = xs, xs
    for n in range(1, 60):
        term = op("Div", op("Mul", term, two_x2), const(2 * n + 1))
        total = op("Add", total, term)
    series = op("Mul", op("Mul", const(2 / math.sqrt(math.pi)), op("Exp", op("Neg", op("Mul", xs, xs)))), total)
    xl = op("Max", ax, const(3.0))  # erfc's continued fraction, above 3
    frac = const(0.0)
    for k in range(60, 0, -1):
        frac = op("Div", const(k / 2), op("Add", xl, frac))
    tail_ratio = op("Div", op("Exp", op("Neg", op("Mul", xl, xl))), op("Mul", const(math.sqrt(math.pi)), op("Add", xl, frac)))
    tail = op("Sub", const(1.0), tail_ratio)
    chosen = op("Where", op("Less", ax, const(3.0)), series, tail)
    nodes.append(h.make_node("Mul", [op("Sign", "x"), chosen], ["y"]))
    return h.make_function(LOCAL_DOMAIN, "Erf64", ["x"], ["y"], nodes, [h.make_opsetid("", OPSET)])


# ---------------------------------------------------------------------------
# the models
# ---------------------------------------------------------------------------


def _gpt(e: Exporter, model: GPT, ids: str) -> list:
    c, t = model.config, model.transformer
    nh, hs = c.n_head, c.n_embd // c.n_head
    x = e.g.op("Gather", e.param(e.module(t.wte).weight), ids)  # (B, T, C)
    x = e.g.op("Add", x, e.g.op("Gather", e.param(e.module(t.wpe).weight), e.positions(ids)))  # + positions (T, C)
    bias = e.causal_bias(ids)
    for block in t.h:
        a = block.attn
        qkv = e.linear(a.c_attn, e.layer_norm(block.ln_1, x))  # (B, T, 3C)
        q, k, v = e.g.op("Split", qkv, e.g.const([c.n_embd] * 3, numpy.int64), axis=2, outputs=3)
        y = e.attention(*(e.heads(p, nh, hs) for p in (q, k, v)), bias, hs)
        x = e.g.op("Add", x, e.linear(a.c_proj, e.merge_heads(y, c.n_embd)))
        h = e.gelu(e.linear(block.mlp.c_fc, e.layer_norm(block.ln_2, x)), "tanh")  # (B, T, 4C)
        x = e.g.op("Add", x, e.linear(block.mlp.c_proj, h))
    return [("logits", e.linear(model.lm_head, e.layer_norm(t.ln_f, x)), ["batch", "sequence", c.vocab_size])]


def _llama(e: Exporter, model: LlamaForCausalLM, ids: str) -> list:
    c, m = model.config, model.model
    nh, kv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    x = e.g.op("Gather", e.param(e.module(m.embed_tokens).weight), ids)  # (B, T, C)
    cos_all, sin_all = m.rotary_emb.tables(e.g.dtype)  # (P, hd): minilora's tables for every position
    positions = e.positions(ids)
    cos = e.g.op("Gather", e.g.weight("rotary.cos", cos_all), positions)  # (T, hd)
    sin = e.g.op("Gather", e.g.weight("rotary.sin", sin_all), positions)
    bias = e.causal_bias(ids)

    def rope(t):  # x cos + rotate_half(x) sin, rotate_half(x) = cat(-x2, x1)
        x1, x2 = e.g.op("Split", t, e.g.const([hd // 2, hd // 2], numpy.int64), axis=-1, outputs=2)
        rotated = e.g.op("Concat", e.g.op("Neg", x2), x1, axis=-1)
        return e.g.op("Add", e.g.op("Mul", t, cos), e.g.op("Mul", rotated, sin))

    def repeat_kv(t):  # (B, kv, T, hd) -> (B, nh, T, hd): key/value head j serves query heads j g .. j g + g - 1
        if kv == nh:
            return t
        t5 = e.g.op("Unsqueeze", t, e.g.const([2], numpy.int64))  # (B, kv, 1, T, hd)
        shape = e.g.op("Shape", t5)
        grown = e.g.op("Mul", shape, e.g.const([1, 1, nh // kv, 1, 1], numpy.int64))
        return e.g.op("Reshape", e.g.op("Expand", t5, grown), e.g.const([0, nh, -1, hd], numpy.int64))

    for layer in m.layers:
        a = layer.self_attn
        h = e.rms_norm(layer.input_layernorm, x)
        q = rope(e.heads(e.linear(a.q_proj, h), nh, hd))
        k = repeat_kv(rope(e.heads(e.linear(a.k_proj, h), kv, hd)))
        v = repeat_kv(e.heads(e.linear(a.v_proj, h), kv, hd))
        x = e.g.op("Add", x, e.linear(a.o_proj, e.merge_heads(e.attention(q, k, v, bias, hd), nh * hd)))
        h = e.rms_norm(layer.post_attention_layernorm, x)
        gate = e.linear(layer.mlp.gate_proj, h)
        silu = e.g.op("Mul", gate, e.g.op("Sigmoid", gate))
        x = e.g.op("Add", x, e.linear(layer.mlp.down_proj, e.g.op("Mul", silu, e.linear(layer.mlp.up_proj, h))))
    return [("logits", e.linear(model.lm_head, e.rms_norm(m.norm, x)), ["batch", "sequence", c.vocab_size])]


def _bert_encoder(e: Exporter, bert: BertModel, ids: str, mask: str, types: str) -> str:
    c, emb = bert.config, bert.embeddings
    nh, hs = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    x = e.g.op("Gather", e.param(e.module(emb.word_embeddings).weight), ids)  # (B, T, H)
    x = e.g.op("Add", x, e.g.op("Gather", e.param(e.module(emb.token_type_embeddings).weight), types))
    x = e.g.op("Add", x, e.g.op("Gather", e.param(e.module(emb.position_embeddings).weight), e.positions(ids)))
    x = e.layer_norm(emb.LayerNorm, x)
    # (1 - mask) * the dtype's most negative number, (B, 1, 1, T): bert.extended_attention_mask
    keep = e.g.op("Cast", mask, to=e.g.elem)
    bias = e.g.op("Mul", e.g.op("Sub", e.g.const(1.0), keep), e.g.const(numpy.finfo(e.g.dtype).min))
    bias = e.g.op("Unsqueeze", bias, e.g.const([1, 2], numpy.int64))
    approximate = "tanh" if c.hidden_act in GELU_TANH else "none"
    for layer in bert.encoder.layer:
        s = layer.attention.self
        y = e.attention(*(e.heads(e.linear(p, x), nh, hs) for p in (s.query, s.key, s.value)), bias, hs)
        out = layer.attention.output
        a = e.layer_norm(out.LayerNorm, e.g.op("Add", x, e.linear(out.dense, e.merge_heads(y, c.hidden_size))))
        h = e.gelu(e.linear(layer.intermediate.dense, a), approximate)
        x = e.layer_norm(layer.output.LayerNorm, e.g.op("Add", a, e.linear(layer.output.dense, h)))
    return x


def _bert(e: Exporter, model, ids: str, mask: str, types: str) -> list:
    if isinstance(model, BertModel):
        h = _bert_encoder(e, model, ids, mask, types)
        return [("last_hidden_state", h, ["batch", "sequence", model.config.hidden_size])]
    h = _bert_encoder(e, model.bert, ids, mask, types)
    first = e.g.op("Gather", h, e.g.const(0, numpy.int64), axis=1)  # (B, H): the [CLS] position
    pooled = e.g.op("Tanh", e.linear(model.bert.pooler.dense, first))
    return [("logits", e.linear(model.classifier, pooled), ["batch", model.num_labels])]


# ---------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------


def _unwrap(model) -> tuple:
    """(the model whose forward is exported, the active adapter or None), after refusing, by name,
    every module that is not a plain layer or a LoRA layer."""
    inner, active = model, None
    if isinstance(model, PeftModel):
        tuner = model.base_model
        if not isinstance(tuner, BaseTuner):  # prompt and prefix tuning: trained virtual tokens
            name = f"prompt_encoder.{tuner.active_adapter}"
            raise ExportError(f"to_onnx cannot express {name} ({type(tuner.prompt_encoder[tuner.active_adapter]).__name__}): "
                              f"{tuner.peft_config[tuner.active_adapter].peft_type} puts trained virtual tokens before "
                              "the input (or into every layer's keys and values), which the exported graph does not "
                              "take; only LoRA adapters are exported")
        inner, active = tuner.model, tuner.active_adapter
    for name, m in inner.named_modules():
        if isinstance(m, TunerLayer) and not isinstance(m, LoRALinear):
            raise ExportError(f"to_onnx cannot express {name} ({type(m).__name__}): only LoRA layers are exported; "
                              "merge_and_unload() the adapter first where the method can merge")
    return inner, active


def build_onnx(model, merged: bool = True):
    """The ``onnx.ModelProto`` of ``model`` (module docstring), checked with ``onnx.checker``; nothing written."""
    onnx = _onnx()
    inner, active = _unwrap(model)
    kinds = {GPT: "gpt", LlamaForCausalLM: "llama", BertModel: "bert", BertForSequenceClassification: "bert"}
    kind = next((k for cls, k in kinds.items() if isinstance(inner, cls)), None)
    if kind is None:
        raise ExportError(f"to_onnx exports GPT, LlamaForCausalLM, BertModel and BertForSequenceClassification "
                          f"(with or without LoRA), not {type(inner).__name__}")
    dtype = next(p.dtype for p in inner.parameters())
    graph = Graph(dtype)
    names = {id(m): n for n, m in inner.named_modules()} | {id(p): n for n, p in inner.named_parameters()}
    e = Exporter(graph, names, merged)
    ints = onnx.TensorProto.INT64
    inputs = [onnx.helper.make_tensor_value_info("input_ids", ints, ["batch", "sequence"])]
    if kind == "bert":
        inputs += [onnx.helper.make_tensor_value_info(n, ints, ["batch", "sequence"]) for n in ("attention_mask", "token_type_ids")]
        outputs = _bert(e, inner, "input_ids", "attention_mask", "token_type_ids")
    else:
        outputs = (_gpt if kind == "gpt" else _llama)(e, inner, "input_ids")
    for name, tensor, _ in outputs:  # rename each output's last node to the output's name
        for node in graph.nodes:
            node.output[:] = [name if o == tensor else o for o in node.output]
    opsets = [onnx.helper.make_opsetid("", OPSET)]
    if any(n.domain == MS_DOMAIN for n in graph.nodes):
        opsets.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    if graph.functions:
        opsets.append(onnx.helper.make_opsetid(LOCAL_DOMAIN, 1))
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(graph.nodes, f"minilora {type(inner).__name__}", inputs,
                               [onnx.helper.make_tensor_value_info(n, graph.elem, shape) for n, _, shape in outputs],
                               graph.initializers),
        opset_imports=opsets, functions=list(graph.functions.values()), producer_name="minilora",
        doc_string=f"{type(inner).__name__}, {dtype}, adapter {active!r} {'merged' if merged else 'unmerged'}; no KV cache")
    onnx.checker.check_model(proto)
    return proto


def to_onnx(model, path, merged: bool = True):
    """Write ``model`` (a GPT, LLaMA or BERT, bare or with an active LoRA adapter) to the ONNX file
    ``path``: merged (``W + s B A``) or with the LoRA branch as explicit MatMuls (module docstring).
    The whole graph is built and checked first, then written atomically: an error leaves no file.
    Returns the ``onnx.ModelProto``."""
    proto = build_onnx(model, merged=merged)
    atomic_write(path, lambda tmp: _onnx().save_model(proto, tmp))
    return proto


__all__ = ["to_onnx", "build_onnx", "ExportError", "OPSET"]
