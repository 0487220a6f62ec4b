"""Prompt tuning and prefix tuning against Hugging Face PEFT: counts, logits, gradients, files, errors.

Every test builds a tiny random GPT-2 (vocab 61, 16 positions, width 16, 2 layers,
2 heads; ``peft_helpers.py``) in minilora and its ``to_transformers`` twin, and gives
both sides the same trained vectors (copied from minilora's random init into PEFT's
encoder), so that a wrong permute, a wrong position offset or a missing -100 cannot hide.

Oracles: PEFT itself (its counts, its files, its ``from_pretrained``, its autograd in
float64 -- PEFT keeps its encoders in float32, so the tests cast them to float64);
closed-form parameter counts; greedy decoding recomputed with PEFT's forward; and,
for bad input, a snapshot of the model taken before the failing call.

Two things learned from PEFT 0.21.2 with transformers 5.x, recorded here:
* HF's causal-LM loss casts the logits to float32 (``ForCausalLMLoss``: ``logits.float()``),
  so PEFT's ``.loss`` agrees with a float64 loss to ~1e-7 only; the float64
  comparison below computes the cross-entropy from PEFT's float64 logits.
* ``PeftModel.generate`` does not inject the virtual tokens there (the prefix never
  reaches the cache; prompt tuning re-prepends its prompt at every step and runs past
  the position table), so generation is checked against PEFT's *forward*, step by step.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from safetensors.numpy import load_file  # noqa: E402

from minilora.data import ByteTokenizer  # noqa: E402
from minilora.models import KVCache, to_transformers  # noqa: E402
from minilora.peft import PeftModel, PrefixTuningConfig, PromptTuningConfig, get_peft_model  # noqa: E402
from minilora.peft.prompt_tuning import BYTE_TOKENIZER  # noqa: E402
from peft_helpers import C, TINY, V, assert_unchanged, rel_err, snapshot, tiny_gpt  # noqa: E402
from peft_helpers import N_LAYER as L  # noqa: E402
from tolerances import assert_close  # noqa: E402

P = 3

# name -> (minilora config, PEFT config), the same settings on both sides
CONFIGS = {
    "prompt": (lambda: PromptTuningConfig(num_virtual_tokens=P),
               lambda: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P)),
    "prefix": (lambda: PrefixTuningConfig(num_virtual_tokens=P),
               lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P)),
    "prefix-projection": (lambda: PrefixTuningConfig(num_virtual_tokens=P, prefix_projection=True, encoder_hidden_size=5),
                          lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P,
                                                          prefix_projection=True, encoder_hidden_size=5)),
}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def ids(batch=2, length=9, seed=1):  # this file's inputs: 9 tokens, seed 1 (peft_helpers.ids: 12, seed 0)
    return np.random.default_rng(seed).integers(0, V, size=(batch, length))


def trainable(model) -> dict:
    """minilora's trainable parameters under PEFT's names (``base_model.`` dropped: PEFT keeps the
    encoders on the PeftModel itself, minilora on the tuner)."""
    return {n.removeprefix("base_model."): p for n, p in model.named_parameters() if p.requires_grad}


def both(name, dtype=np.float64):
    """minilora's and PEFT's adapted models with the same (random) trained vectors, PEFT's in float64."""
    ours = get_peft_model(tiny_gpt(dtype), CONFIGS[name][0]())
    theirs = peft.get_peft_model(to_transformers(tiny_gpt(dtype)), CONFIGS[name][1]())
    theirs.prompt_encoder.to(torch.float64 if dtype == np.float64 else torch.float32)
    mine = trainable(ours)
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if p.requires_grad:
                p.copy_(torch.tensor(mine[n].data))
    return ours, theirs.eval()


# ---------------------------------------------------------------------------
# counts, logits, gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_trainable_parameter_counts_match_peft_and_the_formula(name):
    ours = get_peft_model(tiny_gpt(), CONFIGS[name][0]())
    theirs = peft.get_peft_model(to_transformers(tiny_gpt()), CONFIGS[name][1]())
    H = 5
    formula = {"prompt": P * C,  # P C
               "prefix": P * 2 * L * C,  # P 2 L C
               "prefix-projection": P * C + C * H + H + H * 2 * L * C + 2 * L * C}[name]
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    assert ours.get_nb_trainable_parameters() == (formula, TINY.num_parameters() + formula)
    assert set(trainable(ours)) == {n for n, p in theirs.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_loss_and_gradients_equal_peft(name):
    ours, theirs = both(name)
    x = ids()
    targets = np.concatenate([x[:, 1:], np.full((2, 1), -100)], axis=1)  # minilora's targets are shifted

    logits, loss = ours(x, targets)
    loss.backward()
    out = theirs(torch.tensor(x))
    # prompt tuning returns the virtual positions' logits too (B, P+T, V), as PEFT; prefix tuning (B, T, V)
    assert logits.shape == tuple(out.logits.shape) == (2, x.shape[1] + (P if name == "prompt" else 0), V)
    assert rel_err(logits.data, out.logits.detach().numpy()) < 1e-12
    real = out.logits[:, -x.shape[1]:]  # the real tokens' predictions
    ref = torch.nn.functional.cross_entropy(real.reshape(-1, V), torch.tensor(targets).reshape(-1), ignore_index=-100)
    ref.backward()
    assert abs(loss.item() - ref.item()) <= 1e-12 * ref.item()

    theirs_params = {n: p for n, p in theirs.named_parameters() if p.requires_grad}
    for n, p in trainable(ours).items():  # the MLP's too, with prefix_projection
        assert rel_err(p.grad, theirs_params[n].grad.numpy()) < 1e-8, n
    assert all(p.grad is None for p in ours.get_base_model().parameters())  # the model is frozen

    # PEFT's own loss, from HF's unshifted labels (the first label masked, so the same terms), in float32
    labels = np.concatenate([np.full((2, 1), -100), x[:, 1:]], axis=1)
    with torch.no_grad():
        peft_loss = theirs(torch.tensor(x), labels=torch.tensor(labels)).loss.item()
    # HF casts the float64 logits to float32 and takes the cross-entropy there (tests/tolerances.py): a logsumexp
    # over the V classes and a mean over the positions, of terms the size of the logits
    assert_close(peft_loss, loss.item(), n=max(V, labels.size), depth=2, scale=np.abs(logits.data).max() + loss.item(),
                 what="PEFT's float32 loss")


def test_virtual_tokens_made_from_real_tokens_act_as_those_tokens():
    """The methods' equations, with nothing learned: a prompt of the embeddings of tokens z, or a
    prefix of the keys and values the model computes for z, makes the model read z before x --
    so x takes positions P..P+T-1, and PEFT's (P, 2 L C) layout is [layer 0 k | layer 0 v | ...]."""
    base = tiny_gpt()
    z, x = ids(1, P, seed=7), ids(2, 6)
    expected = base(np.concatenate([np.repeat(z, 2, axis=0), x], axis=1))[0].data  # (2, P+T, V)

    prompt = get_peft_model(tiny_gpt(), PromptTuningConfig(num_virtual_tokens=P))
    prompt.base_model.prompt_encoder["default"].embedding.weight.data = base.transformer.wte.weight.data[z[0]].copy()
    assert rel_err(prompt(x)[0].data, expected) < 1e-12

    cache = KVCache()
    base(z, kv_cache=cache)  # every layer's keys and values for z, each (1, nh, P, hs)
    table = np.stack([t.data[0].transpose(1, 0, 2) for k, v in cache.layers for t in (k, v)], axis=1)  # (P, 2L, nh, hs)
    prefix = get_peft_model(tiny_gpt(), PrefixTuningConfig(num_virtual_tokens=P))
    prefix.base_model.prompt_encoder["default"].embedding.weight.data = table.reshape(P, 2 * L * C)
    assert rel_err(prefix(x)[0].data, expected[:, P:]) < 1e-12


def test_disable_adapter_gives_the_base_model_and_adapters_switch():
    base = tiny_gpt()
    x = ids()
    plain = base(x)[0].data
    model = get_peft_model(base, PromptTuningConfig(num_virtual_tokens=P))
    first = model(x)[0].data
    with model.disable_adapter():
        assert np.array_equal(model(x)[0].data, plain)
    model.add_adapter("other", PromptTuningConfig(num_virtual_tokens=2))
    assert model.get_nb_trainable_parameters()[0] == P * C  # only the active adapter trains
    model.set_adapter("other")
    assert model(x)[0].shape == (2, x.shape[1] + 2, V)
    assert model.get_nb_trainable_parameters()[0] == 2 * C
    model.set_adapter("default")
    model.delete_adapter("other")
    assert np.array_equal(model(x)[0].data, first)


@pytest.mark.parametrize("name", ["prompt", "prefix"])
def test_greedy_generation_equals_decoding_with_peft_forward(name):
    ours, theirs = both(name)
    x = ids(2, 5)
    got = ours.generate(x, 6, temperature=0).data  # through the KVCache
    seq = x
    for _ in range(6):  # PEFT's forward on the whole sequence, every step
        with torch.no_grad():
            nxt = theirs(torch.tensor(seq)).logits[:, -1].argmax(-1).numpy()
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    assert np.array_equal(got, seq)


def test_init_weights_zero_prefix_still_changes_the_output():
    """A zero prefix adds zero values, but its keys still take softmax weight: not the base model."""
    base = tiny_gpt()
    x = ids()
    model = get_peft_model(base, PrefixTuningConfig(num_virtual_tokens=P, init_weights="zero"))
    assert not np.any(model.base_model.prompt_encoder["default"]().data)
    with model.disable_adapter():
        plain = model(x)[0].data
    assert rel_err(model(x)[0].data, plain) > 1e-3


# ---------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [("hi!", "hi!hi!h"), ("a much longer text", "a much ")])
def test_text_init_repeats_or_cuts_the_texts_byte_embeddings(text, expected):
    base = tiny_gpt(vocab_size=256, block_size=16)
    model = get_peft_model(base, PromptTuningConfig(num_virtual_tokens=7, prompt_tuning_init="TEXT",
                                                    prompt_tuning_init_text=text))
    token_ids = ByteTokenizer().encode(expected)
    table = model.base_model.prompt_encoder["default"].embedding.weight.data
    assert np.array_equal(table, base.transformer.wte.weight.data[token_ids])
    assert model.peft_config["default"].tokenizer_name_or_path == BYTE_TOKENIZER


def test_sample_vocab_and_random_init():
    base = tiny_gpt()
    model = get_peft_model(base, PromptTuningConfig(num_virtual_tokens=15, prompt_tuning_init="SAMPLE_VOCAB"))
    rows = model.base_model.prompt_encoder["default"].embedding.weight.data
    wte = base.transformer.wte.weight.data
    assert all(any(np.array_equal(r, w) for w in wte) for r in rows)  # each row is some token's embedding
    model.add_adapter("random", PromptTuningConfig(num_virtual_tokens=15))
    table = model.base_model.prompt_encoder["random"].embedding.weight.data  # nn.Embedding's N(0, 1)
    assert abs(table.mean()) < 0.2 and 0.8 < table.std() < 1.2


# ---------------------------------------------------------------------------
# PEFT's files, both ways
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_save_pretrained_writes_what_peft_writes(name, tmp_path):
    ours, theirs = both(name, np.float32)
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "peft")
    ours_json = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft_json = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert set(ours_json) == set(peft_json) | {"minilora_save_id"}  # the save id binds it to its weights
    # PEFT writes inference_mode=true into every saved config; it is reset on loading anyway
    assert {k: v for k, v in ours_json.items() if k not in ("inference_mode", "minilora_save_id")} == \
           {k: v for k, v in peft_json.items() if k != "inference_mode"}
    ours_t, peft_t = load_file(tmp_path / "ours" / "adapter_model.safetensors"), load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert list(ours_t) == list(peft_t) == ["prompt_embeddings"]
    assert ours_t["prompt_embeddings"].shape == peft_t["prompt_embeddings"].shape  # with projection: the MLP's output
    # float32 on both sides: the embedding, or prefix_projection's two-layer MLP over C (tests/tolerances.py)
    assert_close(ours_t["prompt_embeddings"], peft_t["prompt_embeddings"], n=C, depth=2, what="prompt_embeddings")


@pytest.mark.parametrize("name", CONFIGS)
def test_minilora_loads_a_peft_adapter_with_peft_logits(name, tmp_path):
    theirs = peft.get_peft_model(to_transformers(tiny_gpt()), CONFIGS[name][1]())
    theirs.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt()), tmp_path).eval()
    ours = PeftModel.from_pretrained(tiny_gpt(), tmp_path)
    x = ids()
    with torch.no_grad():
        expected = theirs(torch.tensor(x)).logits.numpy()
    assert rel_err(ours(x)[0].data, expected) < 1e-12
    # loaded for inference nothing trains in minilora; PEFT 0.21.2 leaves its prompt encoder trainable
    assert ours.get_nb_trainable_parameters() == (0, theirs.get_nb_trainable_parameters()[1])


@pytest.mark.parametrize("name", CONFIGS)
def test_peft_loads_a_minilora_adapter_with_minilora_logits(name, tmp_path):
    ours = get_peft_model(tiny_gpt(), CONFIGS[name][0]())
    ours.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")["prompt_embeddings"]
    assert saved.dtype == np.float64  # minilora keeps the model's dtype ...
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt()), tmp_path).eval()
    loaded = theirs.prompt_encoder["default"].embedding.weight.detach().numpy()
    assert np.array_equal(loaded, saved.astype(np.float32))  # ... PEFT stores float32, so compare at float32 precision
    x = ids()
    with torch.no_grad():
        expected = theirs(torch.tensor(x)).logits.numpy()
    # the only float32 step is the stored vectors' rounding (u of each); the float64 network passes it on
    # with a gain this error model bounds by the widest sum, the MLP's 4 C, per layer (tests/tolerances.py)
    assert_close(ours(x)[0].data, expected, n=4 * C, depth=L + 1, what="logits from float32-stored vectors")


def test_a_text_init_adapter_saved_by_minilora_reads_in_peft(tmp_path):
    model = get_peft_model(tiny_gpt(vocab_size=256), PromptTuningConfig(num_virtual_tokens=P, prompt_tuning_init="TEXT",
                                                                       prompt_tuning_init_text="def"))
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt(vocab_size=256)), tmp_path)  # needs a tokenizer name
    assert theirs.peft_config["default"].tokenizer_name_or_path == BYTE_TOKENIZER


def test_a_projected_prefix_loads_for_inference_only(tmp_path):
    ours = get_peft_model(tiny_gpt(), CONFIGS["prefix-projection"][0]())
    ours.save_pretrained(tmp_path)
    x = ids()
    trained = ours(x)[0].data
    loaded = PeftModel.from_pretrained(tiny_gpt(), tmp_path)  # a plain (P, 2LC) table, as PEFT builds it
    assert rel_err(loaded(x)[0].data, trained) < 1e-12
    base = tiny_gpt()
    before = snapshot(base)
    with pytest.raises(ValueError, match="cannot be trained further"):
        PeftModel.from_pretrained(base, tmp_path, is_trainable=True)
    assert_unchanged(base, before)
    # without projection the file holds the trained table itself, so training can go on
    plain = get_peft_model(tiny_gpt(), PrefixTuningConfig(num_virtual_tokens=P))
    plain.save_pretrained(tmp_path / "plain")
    resumed = PeftModel.from_pretrained(tiny_gpt(), tmp_path / "plain", is_trainable=True)
    assert resumed.get_nb_trainable_parameters()[0] == P * 2 * L * C


# ---------------------------------------------------------------------------
# bad input: a clear error, and the model as it was
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("config", [PromptTuningConfig, PrefixTuningConfig])
def test_too_many_virtual_tokens_for_the_positions_is_refused(config):
    model = get_peft_model(tiny_gpt(), config(num_virtual_tokens=6))
    with pytest.raises(ValueError, match=r"num_virtual_tokens=6 \+ 11 input tokens = 17 exceed block_size=16"):
        model(ids(2, 11))
    with pytest.raises(ValueError, match=r"num_virtual_tokens=6 \+ 11 tokens \(6 in the prompt \+ max_new_tokens=5\) = 17 exceed"):
        model.generate(ids(1, 6), 5)
    base = tiny_gpt()
    before = snapshot(base)
    with pytest.raises(ValueError, match="num_virtual_tokens=16 leaves no room for a real token.*block_size=16"):
        get_peft_model(base, config(num_virtual_tokens=16))
    assert_unchanged(base, before)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt_tuning_init="VOCAB"), "prompt_tuning_init must be one of RANDOM, TEXT, SAMPLE_VOCAB, got 'VOCAB'"),
    (dict(prompt_tuning_init="TEXT"), "needs a non-empty prompt_tuning_init_text"),
    (dict(num_virtual_tokens=0), "num_virtual_tokens must be a positive int"),
    (dict(num_transformer_submodules=2), "2 is for encoder-decoder models"),
    (dict(task_type="SEQ_CLS"), "task_type must be 'CAUSAL_LM'"),
])
def test_bad_prompt_tuning_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromptTuningConfig(**{"num_virtual_tokens": P, **kwargs})


def test_bad_prefix_tuning_configs_are_refused():
    with pytest.raises(ValueError, match="init_weights must be None .random. or 'zero', got 'gaussian'"):
        PrefixTuningConfig(num_virtual_tokens=P, init_weights="gaussian")
    with pytest.raises(ValueError, match="encoder_hidden_size must be a positive int"):
        PrefixTuningConfig(num_virtual_tokens=P, encoder_hidden_size=0)


@pytest.mark.parametrize("config", [PromptTuningConfig, PrefixTuningConfig])
@pytest.mark.parametrize("field, value, model_name", [("token_dim", 32, "n_embd is 16"), ("num_layers", 3, "n_layer is 2"),
                                                      ("num_attention_heads", 4, "n_head is 2")])
def test_a_config_for_another_model_is_refused_naming_both(config, field, value, model_name):
    base = tiny_gpt()
    before = snapshot(base)
    cfg = config(num_virtual_tokens=P, **{field: value})
    with pytest.raises(ValueError, match=rf"{field}={value} but the model's {model_name}"):
        get_peft_model(base, cfg)
    assert_unchanged(base, before)
    assert getattr(cfg, field) == value and cfg.token_dim in (None, 32)  # the config is not filled in either


def test_a_peft_adapter_for_another_width_is_refused(tmp_path):
    peft.get_peft_model(to_transformers(tiny_gpt(n_embd=32)), CONFIGS["prefix"][1]()).save_pretrained(tmp_path)
    base = tiny_gpt()
    before = snapshot(base)
    with pytest.raises(ValueError, match="token_dim=32 but the model's n_embd is 16"):
        PeftModel.from_pretrained(base, tmp_path)
    assert_unchanged(base, before)


def test_text_outside_the_vocabulary_is_refused():
    base = tiny_gpt()  # vocab 61: bytes of letters (97..122) are not tokens
    before = snapshot(base)
    with pytest.raises(ValueError, match=r"byte ids \[104, 105\] are outside the model's vocabulary of 61"):
        get_peft_model(base, PromptTuningConfig(num_virtual_tokens=P, prompt_tuning_init="TEXT", prompt_tuning_init_text="hi"))
    assert_unchanged(base, before)


@pytest.mark.parametrize("config", [PromptTuningConfig, PrefixTuningConfig])
def test_merging_is_refused_saying_why(config):
    model = get_peft_model(tiny_gpt(), config(num_virtual_tokens=P))
    for call in (model.merge_adapter, model.merge_and_unload):
        with pytest.raises(NotImplementedError, match="cannot be merged.*attention to positions that are not in the input"):
            call()
    with pytest.raises(ValueError, match="adapter_names .* is not supported"):
        model(ids(), adapter_names=["default", "default"])
    assert model.unload() is model.get_base_model()
