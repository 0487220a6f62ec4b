"""Properties of the newer methods -- AdaLoRA, VeRA, LoHa, LoKr, and LoRA on Embedding layers, with
a lora_bias, or started by OLoRA / PiSSA's randomized SVD -- over every kind of target.

Hypothesis draws the method, the base (GPT-2, whose projections are Conv1D in transformers; BERT;
LLaMA), the width and depth, the targets (the projections of each base, its embeddings for LoRA),
ranks, alphas, and one to three adapters, every trained array random (for AdaLoRA only the first
adapter trains; the others are added for inference, PEFT's rule). It then checks, in float64:

* merged == unmerged, and merge then unmerge gives W (and b) back;
* merge_and_unload() is the adapted model;
* at its default initialisation an adapter is the base model exactly (λ_b = 0, λ = 0, W2b = 0 ...),
  and OLoRA / PiSSA's starts keep the output (W_res + s B A = W to rounding);
* a mixed batch equals each row run alone.

Tolerances as in ``test_peft_ia3_dora.py``: float64 outputs are sums of O(10^3) roundings of
size 2^-53 times O(1) magnitudes, so 1e-10 separates rounding from any real difference; merge then
unmerge gives fl(fl(W + D) - D) = W + O(u (|W| + |D|)), within 1e-12 here. In float32, one layer
at a time against the rounding bound derived at ``test_layer_merged_equals_unmerged_in_float32``.
"""

import copy
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minilora import Tensor, manual_seed, nn
from minilora.models import GPT, BertConfig, BertForSequenceClassification, GPTConfig, LlamaConfig, LlamaForCausalLM
from minilora.peft import BASE, AdaLoraConfig, LoHaConfig, LoKrConfig, LoraConfig, VeraConfig, get_peft_model
from minilora.peft.adalora import SVDLinear
from minilora.peft.lora import LoRAEmbedding
from minilora.peft.lycoris import LoHaLinear, LoKrLinear
from minilora.peft.vera import VeraLinear, draw_projections

pytestmark = pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning")

PROJECTIONS = {"gpt": ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"],
               "bert": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
               "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
EMBEDDINGS = {"gpt": ["wpe"], "bert": ["word_embeddings", "position_embeddings", "token_type_embeddings"],
              "llama": ["embed_tokens"]}
METHODS = ["adalora", "vera", "loha", "lokr", "lora-embedding", "lora-bias", "lora-olora", "lora-pissa-niter"]
ARCHS = {"loha": ["bert", "llama"], "lokr": ["bert", "llama"], "lora-bias": ["gpt", "bert"]}  # Conv1D refused; biases


@dataclass
class Case:
    method: str
    arch: str
    width: int
    depth: int
    configs: list
    batch: int
    length: int
    seed: int

    def base(self):
        manual_seed(self.seed)
        w, d = self.width, self.depth
        if self.arch == "gpt":
            model = GPT(GPTConfig(vocab_size=23, block_size=8, n_layer=d, n_head=2, n_embd=w), dtype=np.float64)
        elif self.arch == "llama":
            model = LlamaForCausalLM(LlamaConfig(vocab_size=23, hidden_size=w, intermediate_size=2 * w, num_hidden_layers=d,
                                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8),
                                     dtype=np.float64)
        else:
            config = BertConfig(vocab_size=23, hidden_size=w, num_hidden_layers=d, num_attention_heads=2,
                                intermediate_size=2 * w, max_position_embeddings=8, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)
            model = BertForSequenceClassification(config, num_labels=3, dtype=np.float64)
        rng = np.random.default_rng(self.seed)
        for p in model.parameters():
            p.data = p.data + 0.1 * rng.standard_normal(p.shape)
        return model.eval()

    @property
    def names(self):
        return ["default"] + [f"a{i}" for i in range(1, len(self.configs))]

    def model(self, random=True):
        """The base with every adapter; every trained array moved off its init unless ``random`` is False."""
        model = None
        for i, (name, config) in enumerate(zip(self.names, copy.deepcopy(self.configs))):
            if not random:
                for field in ("init_weights", "init_lora_weights"):
                    if getattr(config, field, None) is False:
                        setattr(config, field, True)
            if self.method == "adalora" and i:
                config.inference_mode = True
            if model is None:
                model = get_peft_model(self.base(), config)
            else:
                model.add_adapter(name, config)
        if random:
            rng = np.random.default_rng(self.seed + 1)
            for pname, p in model.named_parameters():
                if any(part in pname for part in (".lora_", ".vera_lambda", ".hada_", ".lokr_")):
                    p.data = p.data + 0.1 * rng.standard_normal(p.shape)
        return model

    def logits(self, model, rows=slice(None)):
        x = np.random.default_rng(self.seed).integers(0, 23, size=(self.batch, self.length))[rows]
        return model(x)[0].numpy()


@st.composite
def cases(draw):
    method = draw(st.sampled_from(METHODS))
    arch = draw(st.sampled_from(ARCHS.get(method, ["gpt", "bert", "llama"])))
    width, depth = draw(st.sampled_from([8, 12])), draw(st.integers(1, 2))
    targets = EMBEDDINGS[arch] if method == "lora-embedding" else PROJECTIONS[arch]
    if arch == "bert" and method == "lora-bias":
        targets = [t for t in targets if t != "intermediate.dense"] + ["intermediate.dense"]

    def config():
        chosen = draw(st.lists(st.sampled_from(targets), min_size=1, max_size=3, unique=True))
        r, alpha = draw(st.integers(1, 4)), draw(st.sampled_from([1.0, 3.0, 8.0]))
        if method == "adalora":
            return AdaLoraConfig(init_r=r, target_r=1, total_step=10, lora_alpha=alpha, target_modules=chosen,
                                 init_lora_weights=False)
        if method == "vera":
            return VeraConfig(r=draw(st.integers(1, 6)), target_modules=chosen, init_weights=False)
        if method in ("loha", "lokr"):
            cls = LoHaConfig if method == "loha" else LoKrConfig
            extra = dict(decompose_both=draw(st.booleans())) if method == "lokr" else {}
            return cls(r=r, alpha=alpha, target_modules=chosen, init_weights=False, **extra)
        if method == "lora-embedding":
            chosen = chosen + draw(st.lists(st.sampled_from(PROJECTIONS[arch]), max_size=1))
            return LoraConfig(r=r, lora_alpha=alpha, target_modules=chosen, init_lora_weights=False)
        if method == "lora-bias":
            return LoraConfig(r=r, lora_alpha=alpha, target_modules=chosen, lora_bias=True, init_lora_weights=False)
        init = "olora" if method == "lora-olora" else f"pissa_niter_{draw(st.integers(0, 3))}"
        return LoraConfig(r=r, lora_alpha=alpha, target_modules=chosen, init_lora_weights=init)

    first_only = method in ("lora-olora", "lora-pissa-niter")  # a second one would rewrite W_res again
    configs = [config() for _ in range(1 if first_only else draw(st.integers(1, 3)))]
    return Case(method, arch, width, depth, configs, draw(st.integers(1, 3)), draw(st.integers(1, 8)),
                draw(st.integers(0, 2**16)))


def weights(model) -> dict:
    """Every wrapped layer's base weight and bias, copied."""
    out = {}
    for name, layer in model.base_model.adapter_layers():
        out[name] = layer.base_layer.weight.numpy().copy()
        if getattr(layer.base_layer, "bias", None) is not None:
            out[name + ".bias"] = layer.base_layer.bias.numpy().copy()
    return out


@given(case=cases())
def test_merged_equals_unmerged_and_unmerge_restores_the_weights(case):
    model = case.model()
    before = weights(model)
    for name in case.names:
        model.set_adapter(name)
        unmerged = case.logits(model)
        model.merge_adapter()
        assert np.max(np.abs(case.logits(model) - unmerged)) < 1e-10, name
        model.unmerge_adapter()
        after = weights(model)
        for key, array in before.items():
            assert np.max(np.abs(after[key] - array)) < 1e-12, (name, key)
        assert np.max(np.abs(case.logits(model) - unmerged)) < 1e-10, name


@given(case=cases())
def test_merge_and_unload_is_the_adapted_model(case):
    model = case.model()
    model.set_adapter(case.names[-1])
    adapted = case.logits(model)
    plain = model.merge_and_unload()
    assert not any(isinstance(m, (SVDLinear, VeraLinear, LoHaLinear, LoKrLinear, LoRAEmbedding)) for m in plain.modules())
    assert np.max(np.abs(case.logits(plain) - adapted)) < 1e-10


@given(case=cases())
def test_the_default_start_is_the_base_model(case):
    """Exactly, for the inits that zero a factor; to rounding, for OLoRA and PiSSA, which move part
    of W into the adapter (W_res + s B A = W to a few ulps)."""
    expected = case.logits(case.base())
    model = case.model(random=False)
    for name in case.names:
        model.set_adapter(name)
        if case.method in ("lora-olora", "lora-pissa-niter"):
            assert np.max(np.abs(case.logits(model) - expected)) < 1e-10
        else:
            assert np.array_equal(case.logits(model), expected), name


@given(case=cases(), data=st.data())
def test_a_mixed_batch_equals_each_row_alone(case, data):
    model = case.model()
    names = data.draw(st.lists(st.sampled_from([*case.names, BASE]), min_size=case.batch, max_size=case.batch))
    x = np.random.default_rng(case.seed).integers(0, 23, size=(case.batch, case.length))
    positional = [layer for name, layer in model.base_model.adapter_layers() if name.endswith(("wpe", "position_embeddings"))]
    if len(set(names)) > 1 and any(set(names) & set(layer.adapters) for layer in positional):
        # a position embedding sees the positions (T,), the same for every row: it cannot take one adapter per row
        with pytest.raises(ValueError, match=r"a mixed batch needs a batched input to .*(wpe|position_embeddings)"):
            model(x, adapter_names=names)
        return
    mixed = model(x, adapter_names=names)[0].numpy()
    for row, name in enumerate(names):
        if name == BASE:
            with model.disable_adapter():
                alone = model(x[row:row + 1])[0].numpy()
        else:
            model.set_adapter(name)
            alone = model(x[row:row + 1])[0].numpy()
        assert np.max(np.abs(mixed[row] - alone[0])) < 1e-10, (row, name)


# ---------------------------------------------------------------------------
# one layer, float32: merged against unmerged within the rounding bound
# ---------------------------------------------------------------------------


def layer_with(kind: str, n_in: int, n_out: int, r: int, seed: int, dtype):
    """A wrapper layer of ``kind`` over a random nn.Linear, its adapter "a" random."""
    manual_seed(seed)
    base = nn.Linear(n_in, n_out, dtype=dtype)
    if kind == "adalora":
        layer = SVDLinear(base)
        layer.update_layer("a", r, 3.0, init_lora_weights=False)
    elif kind == "vera":
        layer = VeraLinear(base, {"a": draw_projections(seed, r, n_in, n_out, dtype)})
        layer.update_layer("a", r, init_weights=False)
    elif kind == "embedding":
        layer = LoRAEmbedding(nn.Embedding(n_in, n_out, dtype=dtype))
        layer.update_layer("a", r, 3.0, init_lora_weights=False)
    else:
        layer = (LoHaLinear if kind == "loha" else LoKrLinear)(base)
        config = (LoHaConfig if kind == "loha" else LoKrConfig)(r=r, alpha=3.0, init_weights=False)
        layer.update_layer("a", r, 3.0, config)
    layer.active_adapter = "a"
    return layer.eval()


def absolute_delta(layer) -> np.ndarray:
    """ΔW computed in float64 from the absolute values of every factor: |ΔW|'s bound, entry by entry."""
    copies = {}
    for part in layer.adapter_parts:
        registry = getattr(layer, part)
        if "a" in getattr(registry, "_parameters", {}):
            p = registry["a"]
            copies[part] = p.data
            p.data = np.abs(p.data).astype(np.float64)
    if isinstance(layer, VeraLinear):
        saved = layer.projections["a"]
        layer.projections = {"a": tuple(np.abs(t).astype(np.float64) for t in saved)}
    delta = np.abs(layer.delta_weight("a"))
    for part, data in copies.items():
        getattr(layer, part)["a"].data = data
    if isinstance(layer, VeraLinear):
        layer.projections = {"a": saved}
    return delta


@given(kind=st.sampled_from(["adalora", "vera", "loha", "lokr", "embedding"]), n_in=st.integers(1, 10),
       n_out=st.integers(1, 10), r=st.integers(1, 4), seed=st.integers(0, 2**16), dtype=st.sampled_from([np.float32, np.float64]))
def test_layer_merged_equals_unmerged_in_float32(kind, n_in, n_out, r, seed, dtype):
    """Unmerged: x W^T + b + (the update, through the factors); merged: x (W + ΔW)^T + b. Each entry
    of either is a sum of at most n = in + 2 r + 8 rounded operations (the length-in product, the
    factor products of at most 2 r terms, the scalings, the additions), so each is within γ_n M of
    the exact value (Higham, eq. 3.5), M = |x| (|W| + |ΔW|_abs)^T + |b|, |ΔW|_abs the update formed
    from the factors' absolute values: the two lie within 2 γ_n M of each other, and merge then
    unmerge within γ_2 (2 |W| + |ΔW|) of W."""
    layer = layer_with(kind, n_in, n_out, r, seed, dtype)
    rng = np.random.default_rng(seed)
    if kind == "embedding":
        x = rng.integers(0, n_in, size=(2, 3))
    else:
        x = Tensor(rng.standard_normal((2, 3, n_in)).astype(dtype))
    unmerged = layer(x).numpy().astype(np.float64)
    W0 = layer.base_layer.weight.numpy().copy()
    layer.merge()
    merged = layer(x).numpy().astype(np.float64)
    u = float(np.finfo(dtype).eps) / 2
    n = (1 if kind == "embedding" else n_in) + 2 * r + 8
    gamma = n * u / (1 - n * u)
    W, D = np.abs(W0.astype(np.float64)), absolute_delta(layer)
    if kind == "embedding":
        M = W[x] + D[x]
    else:
        M = np.abs(x.numpy().astype(np.float64)) @ (W + D).T
        if layer.base_layer.bias is not None:
            M = M + np.abs(layer.base_layer.bias.numpy().astype(np.float64))
    assert np.all(np.abs(merged - unmerged) <= 2 * gamma * M)
    layer.unmerge()
    gamma2 = 2 * u / (1 - 2 * u)
    assert np.all(np.abs(layer.base_layer.weight.numpy().astype(np.float64) - W0) <= gamma2 * (2 * W + D))
