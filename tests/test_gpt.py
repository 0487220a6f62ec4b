"""GPT-2 against transformers' GPT2LMHeadModel: logits, loss, gradients, checkpoints, the KV cache, generation.

One tiny random GPT-2 (vocab 97, 32 positions, width 32, 2 layers, 4 heads) is
built in transformers, saved as a real checkpoint folder, and loaded back by
minilora; every test compares against it. Oracles: transformers in float64
(values and gradients), closed-form parameter counts, and self-consistency
(cache vs. no cache, inputs_embeds vs. ids).
"""

import copy
import inspect
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel  # noqa: E402

import minilora  # noqa: E402
from minilora import Tensor  # noqa: E402
from minilora.models import GPT, CheckpointError, GPTConfig, KVCache, from_transformers, to_transformers  # noqa: E402
from minilora.models.gpt import sample_next  # noqa: E402
from minilora.models.hf import CONV1D_WEIGHTS  # noqa: E402
from tolerances import assert_close  # noqa: E402

V, N_POS, C, N_LAYER, N_HEAD = 97, 32, 32, 2, 4
HS = C // N_HEAD


# ---------------------------------------------------------------------------
# fixtures: one tiny GPT-2 in transformers, saved as a checkpoint folder
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=V, n_positions=N_POS, n_embd=C, n_layer=N_LAYER, n_head=N_HEAD,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
        attn_implementation="eager",
    )
    model = GPT2LMHeadModel(config)
    # transformers starts biases at 0 and LayerNorms at 1 and 0: perturb every parameter,
    # so that a wrong mapping of any one of them shows in the logits
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def hf64(hf_model):
    return copy.deepcopy(hf_model).double().eval()


@pytest.fixture(scope="module")
def ckpt(hf_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    hf_model.save_pretrained(path)  # config.json + model.safetensors
    return path


@pytest.fixture(scope="module")
def gpt64(ckpt):
    return GPT.from_pretrained(ckpt, dtype=np.float64)


def ids(batch, length, seed=0):
    return np.random.default_rng(seed).integers(0, V, size=(batch, length))


def hf_past_kwarg(model, cache):
    """transformers 5.x renamed ``past_key_values`` to ``cache``; pass whichever this version takes."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def hf_grad(hf, name):
    """The gradient of HF's parameter ``name`` in minilora's layout (Conv1D weights transposed)."""
    g = dict(hf.named_parameters())[name].grad.numpy()
    return g.T if name.endswith(CONV1D_WEIGHTS) else g


def torch_loss(logits, targets):
    """The mean cross-entropy in the logits' dtype. (HF's ``labels=`` loss casts the logits to
    float32 first, so it cannot serve as a float64 reference.)"""
    return torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.tensor(targets).reshape(-1), ignore_index=-100)


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def copy_ckpt(ckpt, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(ckpt, dst)
    return dst


# ---------------------------------------------------------------------------
# config, names, initialisation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, count", [
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200),
])
def test_preset_parameter_counts(name, count):
    assert GPTConfig.preset(name).num_parameters() == count  # the counts transformers reports


def test_parameter_count_formula_matches_models(hf_model):
    config = GPTConfig(vocab_size=V, block_size=N_POS, n_layer=N_LAYER, n_head=N_HEAD, n_embd=C)
    assert GPT(config).num_parameters() == config.num_parameters() == hf_model.num_parameters()
    no_bias = GPTConfig(vocab_size=V, block_size=N_POS, n_layer=N_LAYER, n_head=N_HEAD, n_embd=C, bias=False)
    assert GPT(no_bias).num_parameters() == no_bias.num_parameters()


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n_embd=30 must be divisible by n_head=4"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="GPTConfig.n_layer"):
        GPTConfig(n_layer=0)
    with pytest.raises(ValueError, match="unknown GPT preset 'gpt5'"):
        GPTConfig.preset("gpt5")


def test_names_and_tied_head_match_transformers(gpt64, hf_model):
    assert list(gpt64.state_dict()) == list(hf_model.state_dict())  # same names, same order
    assert gpt64.lm_head.weight is gpt64.transformer.wte.weight
    names = [n for n, _ in gpt64.named_parameters()]
    assert "transformer.wte.weight" in names and "lm_head.weight" not in names
    assert names == [n for n, _ in hf_model.named_parameters()]
    modules = dict(gpt64.named_modules())
    for suffix in ("attn.attn_dropout", "attn.resid_dropout", "mlp.act", "mlp.dropout"):
        assert f"transformer.h.1.{suffix}" in modules
    assert "transformer.drop" in modules


def test_init_is_gpt2s_and_seeded():
    config = GPTConfig(vocab_size=500, block_size=64, n_layer=8, n_head=4, n_embd=64)
    minilora.manual_seed(3)
    a = GPT(config)
    minilora.manual_seed(3)
    b = GPT(config)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert np.array_equal(p.numpy(), q.numpy()), name
    p = dict(a.named_parameters())
    assert abs(p["transformer.wte.weight"].numpy().std() - 0.02) < 0.001
    assert abs(p["transformer.h.3.attn.c_attn.weight"].numpy().std() - 0.02) < 0.001
    for proj in ("attn.c_proj.weight", "mlp.c_proj.weight"):
        assert abs(p[f"transformer.h.3.{proj}"].numpy().std() - 0.02 / np.sqrt(2 * 8)) < 0.0005
    assert not p["transformer.h.3.mlp.c_fc.bias"].numpy().any()
    assert (p["transformer.ln_f.weight"].numpy() == 1).all() and not p["transformer.ln_f.bias"].numpy().any()


# ---------------------------------------------------------------------------
# forward and backward against transformers
# ---------------------------------------------------------------------------


def test_logits_float64(gpt64, hf64):
    x = ids(3, N_POS)
    logits, loss = gpt64(x)
    with torch.no_grad():
        ref = hf64(torch.tensor(x)).logits.numpy()
    assert loss is None and logits.shape == (3, N_POS, V) and logits.dtype == np.float64
    assert np.max(np.abs(logits.numpy() - ref)) < 1e-9


def test_logits_float32(ckpt, hf_model):
    model = GPT.from_pretrained(ckpt)  # float32 by default
    x = ids(3, 20, seed=1)
    logits, _ = model(Tensor(x))  # a Tensor of ids works as well as an array
    with torch.no_grad():
        ref = hf_model(torch.tensor(x)).logits.numpy()
    assert logits.dtype == np.float32
    # float32 on both sides (tests/tolerances.py): the MLP's 4C-wide sums, through N_LAYER layers and the head
    assert_close(logits.numpy(), ref, n=4 * C, depth=N_LAYER + 1, what="float32 logits")
    # our targets are HF's labels shifted left by one (the last position has no target)
    targets = np.concatenate([x[:, 1:], np.full((3, 1), -100)], axis=1)
    _, loss = model(x, targets)
    with torch.no_grad():
        ref_loss = hf_model(torch.tensor(x), labels=torch.tensor(x)).loss.item()
    # the loss adds a logsumexp over the V classes and a mean over the positions, of terms the size of the logits
    assert_close(loss.item(), ref_loss, n=max(4 * C, V, x.size), depth=N_LAYER + 3, scale=np.abs(ref).max() + ref_loss,
                 what="float32 loss")


def test_loss_and_every_gradient_float64(gpt64, hf64):
    x = ids(2, 24, seed=2)
    # targets are the next tokens (nanoGPT's convention); HF's labels are shifted inside the model
    targets = np.concatenate([x[:, 1:], np.full((2, 1), -100)], axis=1)
    targets[0, 5] = -100  # ignored positions
    gpt64.zero_grad()
    hf64.zero_grad()
    _, loss = gpt64(x, targets)
    loss.backward()
    ref = torch_loss(hf64(torch.tensor(x)).logits, targets)
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-12
    for name, p in gpt64.named_parameters():
        assert rel_err(p.grad, hf_grad(hf64, name)) < 1e-8, name
    gpt64.zero_grad()
    hf64.zero_grad()


def test_inputs_embeds_equal_ids_and_train_embeddings(gpt64, hf64):
    x = ids(2, 9, seed=3)
    logits_ids, _ = gpt64(x)
    logits_emb, _ = gpt64(inputs_embeds=gpt64.transformer.wte(x))
    assert np.array_equal(logits_ids.numpy(), logits_emb.numpy())
    # prompt tuning: free embeddings, positions 0..T-1, gradients into them -- as HF's inputs_embeds
    emb = np.random.default_rng(4).normal(size=(2, 9, C))
    e = Tensor(emb, requires_grad=True)
    logits, _ = gpt64(inputs_embeds=e)
    (logits * logits).mean().backward()
    et = torch.tensor(emb, requires_grad=True)
    ref = hf64(inputs_embeds=et).logits
    (ref * ref).mean().backward()
    assert np.max(np.abs(logits.numpy() - ref.detach().numpy())) < 1e-9
    assert rel_err(e.grad, et.grad.numpy()) < 1e-8
    gpt64.zero_grad()
    hf64.zero_grad()


def test_forward_errors(gpt64):
    with pytest.raises(ValueError, match="exactly one of idx"):
        gpt64()
    with pytest.raises(ValueError, match="33 new positions = 33 exceed block_size=32"):
        gpt64(ids(1, 33))
    with pytest.raises(ValueError, match=r"idx must be integer token ids of shape \(B, T\)"):
        gpt64(np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match=r"targets must have shape \(B, T\) = \(1, 4\)"):
        gpt64(ids(1, 4), ids(1, 3))
    with pytest.raises(ValueError, match=r"inputs_embeds must have shape \(B, T, n_embd=32\)"):
        gpt64(inputs_embeds=Tensor(np.zeros((1, 4, 7))))


def test_dropout_only_in_training(ckpt):
    model = GPT.from_pretrained(ckpt, dtype=np.float64, dropout=0.2)
    assert model.config.dropout == 0.2 and not model.training  # loaded in eval mode, as transformers does
    x = ids(1, 8)
    assert np.array_equal(model(x)[0].numpy(), model(x)[0].numpy())
    model.train()
    assert not np.array_equal(model(x)[0].numpy(), model(x)[0].numpy())
    model.generate(x, 2)
    assert model.training  # generate runs in eval mode and restores the mode


# ---------------------------------------------------------------------------
# the key/value cache
# ---------------------------------------------------------------------------


def test_cache_in_two_calls_equals_one_call(gpt64):
    x = ids(2, 20, seed=5)
    full, _ = gpt64(x)
    cache = KVCache()
    first, _ = gpt64(x[:, :12], kv_cache=cache)
    assert cache.length == 12 and len(cache) == N_LAYER
    assert cache.layers[0][0].shape == (2, N_HEAD, 12, HS)
    second, _ = gpt64(x[:, 12:], kv_cache=cache)
    assert cache.length == 20
    both = np.concatenate([first.numpy(), second.numpy()], axis=1)
    assert np.max(np.abs(both - full.numpy())) < 1e-12
    cache.crop(12)
    again, _ = gpt64(x[:, 12:], kv_cache=cache)
    assert np.max(np.abs(again.numpy() - second.numpy())) < 1e-12


def test_gradients_flow_into_a_given_past_as_in_transformers(gpt64, hf64):
    # prefix tuning: a trained past of P positions per layer, the new tokens at positions P..
    P, x = 5, ids(2, 7, seed=6)
    rng = np.random.default_rng(7)
    past = [(rng.normal(size=(2, N_HEAD, P, HS)), rng.normal(size=(2, N_HEAD, P, HS))) for _ in range(N_LAYER)]
    ours = [(Tensor(k, requires_grad=True), Tensor(v, requires_grad=True)) for k, v in past]
    theirs = [(torch.tensor(k, requires_grad=True), torch.tensor(v, requires_grad=True)) for k, v in past]
    targets = np.concatenate([x[:, 1:], np.full((2, 1), -100)], axis=1)
    gpt64.zero_grad()
    hf64.zero_grad()
    logits, loss = gpt64(x, targets, kv_cache=KVCache(ours))
    loss.backward()
    ref_logits = hf64(torch.tensor(x), **hf_past_kwarg(hf64, DynamicCache(theirs))).logits
    ref = torch_loss(ref_logits, targets)
    ref.backward()
    assert np.max(np.abs(logits.numpy() - ref_logits.detach().numpy())) < 1e-9
    assert abs(loss.item() - ref.item()) < 1e-12
    for (k, v), (kt, vt) in zip(ours, theirs):
        assert rel_err(k.grad, kt.grad.numpy()) < 1e-8
        assert rel_err(v.grad, vt.grad.numpy()) < 1e-8
    for name, p in gpt64.named_parameters():
        assert rel_err(p.grad, hf_grad(hf64, name)) < 1e-8, name
    gpt64.zero_grad()
    hf64.zero_grad()


def test_cache_errors(gpt64):
    x = ids(2, 4)
    with pytest.raises(ValueError, match="30 cached \\+ 4 new positions = 34 exceed block_size=32"):
        past = [(np.zeros((2, N_HEAD, 30, HS)), np.zeros((2, N_HEAD, 30, HS)))] * N_LAYER
        gpt64(x, kv_cache=KVCache(past))
    with pytest.raises(ValueError, match=r"layer 0 has keys \(3, 4, 5, 8\) .* expected .* \(2, 4, 5, 8\)"):
        past = [(np.zeros((3, N_HEAD, 5, HS)), np.zeros((3, N_HEAD, 5, HS)))] * N_LAYER
        gpt64(x, kv_cache=KVCache(past))
    with pytest.raises(ValueError, match="kv_cache holds 1 layers, the model has n_layer=2"):
        gpt64(x, kv_cache=KVCache([(np.zeros((2, N_HEAD, 5, HS)), np.zeros((2, N_HEAD, 5, HS)))]))
    with pytest.raises(TypeError, match="kv_cache must be a KVCache"):
        gpt64(x, kv_cache=[])


# ---------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------


def test_greedy_with_cache_equals_without_and_transformers(gpt64, hf64):
    prompt = ids(2, 5, seed=8)
    with_cache = gpt64.generate(prompt, 14, temperature=0).numpy()
    without = gpt64.generate(prompt, 14, temperature=0, use_cache=False).numpy()
    ref = hf64.generate(
        torch.tensor(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
        max_new_tokens=14, do_sample=False, pad_token_id=0,
    ).numpy()
    assert with_cache.shape == (2, 19) and np.array_equal(with_cache[:, :5], prompt)
    assert np.array_equal(with_cache, without)
    assert np.array_equal(with_cache, ref)


def test_sampling_is_reproducible_given_a_seed(gpt64):
    prompt = ids(2, 3, seed=9)
    a = gpt64.generate(prompt, 10, temperature=0.8, seed=1).numpy()
    assert np.array_equal(a, gpt64.generate(prompt, 10, temperature=0.8, seed=1).numpy())
    assert np.array_equal(a, gpt64.generate(prompt, 10, temperature=0.8, seed=1, use_cache=False).numpy())
    assert not np.array_equal(a, gpt64.generate(prompt, 10, temperature=0.8, seed=2).numpy())
    greedy = gpt64.generate(prompt, 10, temperature=0).numpy()
    assert np.array_equal(greedy, gpt64.generate(prompt, 10, top_k=1, seed=3).numpy())


def test_sample_next_follows_softmax_and_top_k():
    logits = np.log(np.array([0.1, 0.2, 0.3, 0.4]))
    rows = np.tile(logits, (40_000, 1))
    draws = sample_next(rows, 1.0, None, np.random.default_rng(0))[:, 0]
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert np.max(np.abs(freq - [0.1, 0.2, 0.3, 0.4])) < 0.01
    draws = sample_next(rows, 1.0, 2, np.random.default_rng(0))[:, 0]
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert freq[0] == freq[1] == 0 and abs(freq[3] - 4 / 7) < 0.01
    assert (sample_next(rows[:3], 0, None, None)[:, 0] == 3).all()


def test_generate_errors(gpt64):
    with pytest.raises(ValueError, match="prompt length 30 \\+ max_new_tokens=5 = 35 exceeds block_size=32"):
        gpt64.generate(ids(1, 30), 5)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        gpt64.generate(ids(1, 3), 2, temperature=-1)
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        gpt64.generate(ids(1, 3), 2, top_k=0)


# ---------------------------------------------------------------------------
# checkpoints: save, convert, and refuse bad ones
# ---------------------------------------------------------------------------


def test_save_pretrained_round_trip_through_transformers(gpt64, tmp_path):
    gpt64.save_pretrained(tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]  # no temp files left
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "out", attn_implementation="eager").double().eval()
    x = ids(2, 16, seed=10)
    with torch.no_grad():
        ref = hf(torch.tensor(x)).logits.numpy()
    ours = gpt64(x)[0].numpy()
    assert np.max(np.abs(ours - ref)) < 1e-9
    again = GPT.from_pretrained(tmp_path / "out", dtype=np.float64)
    assert np.array_equal(again(x)[0].numpy(), ours)  # float64 on disk: bit for bit


def test_float32_round_trip_is_bit_exact_and_contiguous(tmp_path):
    minilora.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=N_POS, n_layer=N_LAYER, n_head=N_HEAD, n_embd=C))
    model.save_pretrained(tmp_path)
    again = GPT.from_pretrained(tmp_path)
    for name, p in again.named_parameters():
        assert p.data.flags["C_CONTIGUOUS"], name  # transposed on load, but laid out like a fresh Linear
    x = ids(2, 10)
    assert np.array_equal(again(x)[0].numpy(), model(x)[0].numpy())
    bare = from_transformers(transformers.GPT2Model.from_pretrained(tmp_path))  # keys without "transformer."
    assert np.array_equal(bare(x)[0].numpy(), model(x)[0].numpy())


def test_to_and_from_transformers(gpt64):
    hf = to_transformers(gpt64)
    assert hf.dtype == torch.float64 and not hf.training and hf.config._attn_implementation == "eager"
    assert hf.lm_head.weight is hf.transformer.wte.weight
    x = ids(2, 11, seed=11)
    with torch.no_grad():
        ref = hf(torch.tensor(x)).logits.numpy()
    assert np.max(np.abs(gpt64(x)[0].numpy() - ref)) < 1e-9
    back = from_transformers(hf)
    assert back.transformer.wte.weight.dtype == np.float64
    for (name, p), (_, q) in zip(back.state_dict().items(), gpt64.state_dict().items()):
        assert np.array_equal(p, q), name


def test_bare_gpt2model_keys_and_old_buffers_load(ckpt, tmp_path, gpt64):
    # no "transformer." prefix, an explicit (equal) lm_head, and the old mask buffers
    tensors = load_file(ckpt / "model.safetensors")
    bare = {k[len("transformer."):]: v for k, v in tensors.items()}
    bare["lm_head.weight"] = tensors["transformer.wte.weight"]
    bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, N_POS, N_POS), dtype=np.float32))
    bare["h.0.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    path = copy_ckpt(ckpt, tmp_path)
    save_file(bare, path / "model.safetensors")
    model = GPT.from_pretrained(path, dtype=np.float64)
    x = ids(1, 6)
    assert np.array_equal(model(x)[0].numpy(), gpt64(x)[0].numpy())


def edit_weights(ckpt, tmp_path, edit):
    path = copy_ckpt(ckpt, tmp_path)
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")
    return path


def edit_config(ckpt, tmp_path, **fields):
    path = copy_ckpt(ckpt, tmp_path)
    config = json.loads((path / "config.json").read_text())
    config.update(fields)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_missing_files(ckpt, tmp_path):
    path = copy_ckpt(ckpt, tmp_path)
    os.remove(path / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        GPT.from_pretrained(path)
    path = copy_ckpt(ckpt, tmp_path / "b")
    os.remove(path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors not found"):
        GPT.from_pretrained(path)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        GPT.from_pretrained(tmp_path / "nowhere")


def test_unexpected_key(ckpt, tmp_path):
    path = edit_weights(ckpt, tmp_path, lambda t: t.update({"transformer.h.0.attn.extra": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not fit[\s\S]*unexpected key 'transformer\.h\.0\.attn\.extra'"):
        GPT.from_pretrained(path)


def test_missing_key(ckpt, tmp_path):
    path = edit_weights(ckpt, tmp_path, lambda t: t.pop("transformer.h.1.ln_2.bias"))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): transformer\.h\.1\.ln_2\.bias"):
        GPT.from_pretrained(path)


def test_wrong_shape_names_file_key_and_both_shapes(ckpt, tmp_path):
    def transpose(t):
        t["transformer.h.0.mlp.c_fc.weight"] = np.ascontiguousarray(t["transformer.h.0.mlp.c_fc.weight"].T)

    path = edit_weights(ckpt, tmp_path, transpose)
    with pytest.raises(CheckpointError) as err:
        GPT.from_pretrained(path)
    message = str(err.value)
    assert str(path / "model.safetensors") in message
    assert "'transformer.h.0.mlp.c_fc.weight' has shape (128, 32)" in message and "implies (32, 128)" in message
    assert "missing" not in message  # a key with a wrong shape is reported once


def test_config_that_disagrees_with_the_weights(ckpt, tmp_path):
    with pytest.raises(CheckpointError, match=r"'transformer\.wte\.weight' has shape \(97, 32\), but .*config\.json .*n_embd=48.* implies \(97, 48\)"):
        GPT.from_pretrained(edit_config(ckpt, tmp_path / "a", n_embd=48))
    with pytest.raises(CheckpointError, match=r"unexpected key 'transformer\.h\.1\.ln_1\.weight': .*config\.json says n_layer=1"):
        GPT.from_pretrained(edit_config(ckpt, tmp_path / "b", n_layer=1))
    with pytest.raises(CheckpointError, match=r"missing keys \(12\): transformer\.h\.2\.ln_1\.weight"):
        GPT.from_pretrained(edit_config(ckpt, tmp_path / "c", n_layer=3))
    with pytest.raises(CheckpointError, match=r"config\.json: activation_function='relu' is not supported"):
        GPT.from_pretrained(edit_config(ckpt, tmp_path / "d", activation_function="relu"))
    with pytest.raises(CheckpointError, match=r"n_inner=64 is not supported .* null or 4 \* n_embd = 128"):
        GPT.from_pretrained(edit_config(ckpt, tmp_path / "e", n_inner=64))


def test_untied_head_is_refused(ckpt, tmp_path):
    def untie(t):
        t["lm_head.weight"] = t["transformer.wte.weight"] + 1

    with pytest.raises(CheckpointError, match="'lm_head.weight' differs from 'transformer.wte.weight'"):
        GPT.from_pretrained(edit_weights(ckpt, tmp_path, untie))


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0005])
def test_truncated_file_is_reported_as_corrupt(ckpt, tmp_path, keep):
    path = copy_ckpt(ckpt, tmp_path)
    raw = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(CheckpointError, match=r"ckpt/model\.safetensors is corrupt or truncated"):
        GPT.from_pretrained(path)


def test_failed_save_leaves_the_old_checkpoint_untouched(gpt64, ckpt, tmp_path, monkeypatch):
    path = copy_ckpt(ckpt, tmp_path)
    before = {name: (path / name).read_bytes() for name in os.listdir(path)}

    def broken_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.numpy.save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        gpt64.save_pretrained(path)
    monkeypatch.undo()
    no_bias = GPT(GPTConfig(vocab_size=V, block_size=N_POS, n_layer=1, n_head=N_HEAD, n_embd=C, bias=False))
    with pytest.raises(ValueError, match="bias=False has no Hugging Face GPT-2 equivalent"):
        no_bias.save_pretrained(path)
    after = {name: (path / name).read_bytes() for name in os.listdir(path)}
    assert after == before  # same files, same bytes, no temporary files left behind
