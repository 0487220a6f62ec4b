"""LLaMA against transformers' LlamaForCausalLM: logits, gradients, checkpoints, the KV cache, generation.

Three tiny random LLaMAs (vocab 61, width 32, 2 layers, 4 query heads; 4, 2 or 1
key/value heads; untied or tied head) are built in transformers, perturbed, saved as real
checkpoint folders and loaded back by minilora. Oracles: transformers in float64
(values and gradients), closed-form parameter counts, and self-consistency (cache
vs. no cache). transformers computes RMSNorm and the rotary tables in float32 and
its eager softmax in float32 even in a float64 model (~1e-7 off); the float64
reference evaluates those in float64 -- the same formulas, patched here -- and uses
torch's sdpa, so that the comparison is to 1e-10 and not to float32's rounding.
"""

import copy
import json
import re
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

import minilora  # noqa: E402
from minilora.models import CheckpointError, KVCache, LlamaConfig, LlamaForCausalLM  # noqa: E402
from minilora.models.llama import kv_cache_bytes  # noqa: E402
from minilora.models.llama_hf import config_from_hf, from_transformers, to_transformers  # noqa: E402
from peft_helpers import llama_in_float64  # noqa: E402
from tolerances import assert_close  # noqa: E402

V, N_POS, C, INTER, N_LAYER, N_HEAD = 61, 32, 32, 40, 2, 4
VARIANTS = {  # name: (num_key_value_heads, tie_word_embeddings): GQA or not, tied or not, and multi-query (1 kv head)
    "mha-untied": (4, False), "gqa-untied": (2, False), "gqa-tied": (1, True),
}


def hf_config(kv, tie, impl="sdpa"):
    return transformers.LlamaConfig(
        vocab_size=V, hidden_size=C, intermediate_size=INTER, num_hidden_layers=N_LAYER, num_attention_heads=N_HEAD,
        num_key_value_heads=kv, max_position_embeddings=N_POS, rms_norm_eps=1e-5, rope_theta=100.0,
        tie_word_embeddings=tie, bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation=impl,
    )


@pytest.fixture(scope="module", params=list(VARIANTS))
def hf32(request):
    """A tiny random transformers LLaMA in float32, every parameter moved off its init (norm gains included)."""
    torch.manual_seed(list(VARIANTS).index(request.param))
    model = transformers.LlamaForCausalLM(hf_config(*VARIANTS[request.param]))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def ckpt(hf32, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    hf32.save_pretrained(path)  # config.json + model.safetensors
    return path


@pytest.fixture
def hf64(hf32):
    """The float64 reference: RMSNorm and the rotary tables computed in float64 (HF's formulas)."""
    with llama_in_float64():
        yield copy.deepcopy(hf32).double().eval()


ONE = pytest.mark.parametrize("hf32", ["gqa-untied"], indirect=True)  # for tests that need not see every variant
TWO = pytest.mark.parametrize("hf32", ["gqa-untied", "gqa-tied"], indirect=True)


def ids(batch, length, seed=0):
    return np.random.default_rng(seed).integers(0, V, size=(batch, length))


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(b)), 1e-300))


def targets_of(x):
    return np.concatenate([x[:, 1:], np.full((x.shape[0], 1), -100)], axis=1)


# ---------------------------------------------------------------------------
# config, names, counts
# ---------------------------------------------------------------------------


def test_names_counts_and_tying_match_transformers(ckpt, hf32):
    model = LlamaForCausalLM.from_pretrained(ckpt)
    hf_names = [n for n, _ in hf32.named_parameters()]
    assert [n for n, _ in model.named_parameters()] == hf_names
    assert model.num_parameters() == model.config.num_parameters() == hf32.num_parameters()
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == hf32.config.tie_word_embeddings
    assert all(not n.endswith(".bias") for n in hf_names)


@pytest.mark.parametrize("name, count", [
    ("llama-7b", 6_738_415_616), ("llama-2-7b", 6_738_415_616), ("tinyllama-1.1b", 1_100_048_384),
    ("smollm-135m", 134_515_008),
])
def test_preset_parameter_counts(name, count):
    config = LlamaConfig.preset(name)
    hf = transformers.LlamaConfig(**{k: getattr(config, k) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "tie_word_embeddings")})
    with torch.device("meta"):  # shapes only: no memory for 7B parameters
        hf_count = transformers.LlamaForCausalLM(hf).num_parameters()
    assert config.num_parameters() == hf_count == count


# ---------------------------------------------------------------------------
# logits and gradients
# ---------------------------------------------------------------------------


def test_float64_logits_and_every_gradient_match_transformers(ckpt, hf64):
    model = LlamaForCausalLM.from_pretrained(ckpt, dtype=np.float64)
    x = ids(2, 13)
    logits, loss = model(x, targets_of(x))
    loss.backward()
    ref_logits = hf64(torch.from_numpy(x)).logits
    ref = torch.nn.functional.cross_entropy(ref_logits.reshape(-1, V), torch.from_numpy(targets_of(x)).reshape(-1))
    ref.backward()
    assert rel_err(logits.numpy(), ref_logits.detach().numpy()) <= 1e-10
    assert abs(loss.item() - ref.item()) <= 1e-12 * abs(ref.item())
    ours = dict(model.named_parameters())
    for name, p in hf64.named_parameters():
        assert rel_err(ours[name].grad, p.grad.numpy()) <= 1e-8, name


def test_float32_logits_match_transformers(ckpt, hf32):
    model = LlamaForCausalLM.from_pretrained(ckpt)
    x = ids(3, 20, seed=1)
    logits, _ = model(x)
    assert logits.dtype == np.float32
    with torch.no_grad():
        ref = hf32(torch.from_numpy(x)).logits.numpy()
    # float32 on both sides (tests/tolerances.py): the widest sum is the MLP's INTER inputs (or the attention's
    # C), through N_LAYER layers and the head
    assert_close(logits.numpy(), ref, n=max(INTER, C), depth=N_LAYER + 1, what="float32 logits")


@ONE
def test_inputs_embeds_equal_ids(ckpt):
    model = LlamaForCausalLM.from_pretrained(ckpt, dtype=np.float64)
    x = ids(2, 7)
    a, _ = model(x)
    b, _ = model(inputs_embeds=model.model.embed_tokens(x))
    np.testing.assert_array_equal(a.numpy(), b.numpy())


# ---------------------------------------------------------------------------
# the KV cache and generation
# ---------------------------------------------------------------------------


@TWO
def test_cache_holds_the_grouped_heads_once_and_equals_a_full_forward(ckpt):
    model = LlamaForCausalLM.from_pretrained(ckpt, dtype=np.float64)
    c = model.config
    x = ids(2, 11)
    full, _ = model(x)
    cache = KVCache()
    first, _ = model(x[:, :6], kv_cache=cache)
    rest, _ = model(x[:, 6:], kv_cache=cache)
    for k, v in cache.layers:  # num_key_value_heads, not num_attention_heads
        assert k.shape == v.shape == (2, c.num_key_value_heads, 11, c.head_dim)
    assert sum(k.data.nbytes + v.data.nbytes for k, v in cache.layers) == kv_cache_bytes(c, 2, 11, np.float64)
    assert rel_err(np.concatenate([first.numpy(), rest.numpy()], axis=1), full.numpy()) <= 1e-12


def test_greedy_generation_equals_transformers_and_the_uncached_loop(ckpt, hf64):
    model = LlamaForCausalLM.from_pretrained(ckpt, dtype=np.float64)
    prompt = ids(2, 5, seed=3)
    cached = model.generate(prompt, 8, temperature=0).numpy()
    uncached = model.generate(prompt, 8, temperature=0, use_cache=False).numpy()
    ref = hf64.generate(torch.from_numpy(prompt), max_new_tokens=8, do_sample=False).numpy()
    np.testing.assert_array_equal(cached, ref)
    np.testing.assert_array_equal(uncached, ref)


@ONE
def test_generation_past_the_context_is_refused(ckpt):
    model = LlamaForCausalLM.from_pretrained(ckpt)
    with pytest.raises(ValueError, match="block_size=32"):
        model.generate(ids(1, 30), 5)
    with pytest.raises(ValueError, match="max_position_embeddings=32"):
        model(ids(1, 33))


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------


@TWO
def test_save_pretrained_loads_in_transformers(ckpt, hf32, tmp_path):
    model = LlamaForCausalLM.from_pretrained(ckpt)
    model.save_pretrained(tmp_path / "out")
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    x = ids(2, 9)
    with torch.no_grad():
        np.testing.assert_array_equal(back(torch.from_numpy(x)).logits.numpy(), hf32(torch.from_numpy(x)).logits.numpy())
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert ("lm_head.weight" in saved) != model.config.tie_word_embeddings
    again = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    np.testing.assert_array_equal(again(x)[0].numpy(), model(x)[0].numpy())


@TWO
def test_in_memory_conversions_round_trip(ckpt, hf32):
    back = to_transformers(from_transformers(hf32))
    ours, theirs = back.state_dict(), hf32.state_dict()
    assert list(ours) == list(theirs)
    for name, t in theirs.items():
        assert torch.equal(ours[name], t), name


# ---------------------------------------------------------------------------
# bad input: an error naming the field, never a silent fallback
# ---------------------------------------------------------------------------


def edit_config(ckpt, tmp_path, **fields):
    dst = tmp_path / "edited"
    shutil.copytree(ckpt, dst)
    config = json.loads((dst / "config.json").read_text())
    for key, value in fields.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@ONE
@pytest.mark.parametrize("fields, message", [
    (dict(num_attention_heads=5, head_dim=None), "num_attention_heads=5 must divide hidden_size=32"),
    (dict(num_key_value_heads=3), "num_key_value_heads=3 must divide num_attention_heads=4"),
    (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 100.0}), "rope_type='linear'"),
    (dict(rope_parameters=None, rope_scaling={"type": "dynamic", "factor": 2.0}), "rope_scaling has rope_type='dynamic'"),
    (dict(rope_theta=500.0), r"rope_parameters\['rope_theta'\]=100.0 and rope_theta=500.0 disagree"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(attention_bias=True), "attention_bias=True"),
    (dict(head_dim=16), "head_dim=16"),
    (dict(model_type="gpt2"), "model_type='gpt2'"),
    (dict(num_key_value_heads="2"), "num_key_value_heads='2' .* is not an integer or null"),  # JSON types checked
    (dict(tie_word_embeddings=1), "tie_word_embeddings=1 .* is not true or false"),
])
def test_configs_that_do_not_fit_are_refused(ckpt, tmp_path, fields, message):
    with pytest.raises(CheckpointError, match=message):
        LlamaForCausalLM.from_pretrained(edit_config(ckpt, tmp_path, **fields))


@ONE
def test_the_old_rope_theta_field_is_read(ckpt, tmp_path):
    old_style = edit_config(ckpt, tmp_path, rope_parameters=None, rope_theta=100.0, rope_scaling=None)
    a = LlamaForCausalLM.from_pretrained(old_style)
    b = LlamaForCausalLM.from_pretrained(ckpt)
    assert a.config.rope_theta == b.config.rope_theta == 100.0
    np.testing.assert_array_equal(a(ids(1, 8))[0].numpy(), b(ids(1, 8))[0].numpy())
    assert config_from_hf({}).rope_theta == 10000.0  # transformers' default


@ONE
def test_weights_that_do_not_fit_the_config_are_refused(ckpt, tmp_path):
    folder = edit_config(ckpt, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((C, C), dtype=np.float32)  # MHA's shape in a GQA file?
    tensors.pop("model.layers.1.mlp.up_proj.weight")
    tensors["model.layers.2.input_layernorm.weight"] = np.ones(C, dtype=np.float32)
    config = json.loads((folder / "config.json").read_text())
    save_file(tensors, folder / "model.safetensors")
    kv_width = config["num_key_value_heads"] * C // N_HEAD
    with pytest.raises(CheckpointError) as err:
        LlamaForCausalLM.from_pretrained(folder)
    message = str(err.value)
    if kv_width != C:
        assert f"'model.layers.0.self_attn.k_proj.weight' has shape ({C}, {C})" in message and f"implies ({kv_width}, {C})" in message
    assert "missing keys (1): model.layers.1.mlp.up_proj.weight" in message
    assert "unexpected key 'model.layers.2.input_layernorm.weight': " in message and "num_hidden_layers=2" in message


@TWO
def test_lm_head_must_match_tie_word_embeddings(ckpt, tmp_path):
    folder = edit_config(ckpt, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    if config["tie_word_embeddings"]:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"] + 1
        expected = "'lm_head.weight' differs from 'model.embed_tokens.weight'"
    else:
        tensors.pop("lm_head.weight")
        expected = re.escape("missing keys (1): lm_head.weight")
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=expected):
        LlamaForCausalLM.from_pretrained(folder)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="LlamaConfig.num_key_value_heads=3 must divide num_attention_heads=4"):
        LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="LlamaConfig.num_attention_heads=3 must divide hidden_size=32"):
        LlamaConfig(hidden_size=32, num_attention_heads=3)
    with pytest.raises(ValueError, match="head_dim .* must be even"):
        LlamaConfig(hidden_size=12, num_attention_heads=4)
    with pytest.raises(ValueError, match="unknown LLaMA preset 'llama-9b'"):
        LlamaConfig.preset("llama-9b")


@ONE
def test_saving_a_model_with_lora_in_it_is_refused(ckpt, tmp_path):
    from minilora.peft import LoraConfig, get_peft_model

    model = LlamaForCausalLM.from_pretrained(ckpt)
    peft = get_peft_model(model, LoraConfig(r=2))
    with pytest.raises(ValueError, match="merge or remove wrappers such as LoRA first"):
        peft.base_model.model.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x" / "model.safetensors").exists()
    minilora.manual_seed(0)
