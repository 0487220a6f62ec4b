"""LoRA against Hugging Face PEFT: the files, the logits, the counts, the gradients, the errors.

Every test builds a tiny random GPT-2 (vocab 61, 16 positions, width 16, 2 layers,
2 heads; ``peft_helpers.py``, with the comparisons these files share) in minilora,
converts it with ``to_transformers`` and gives both sides the same adapter -- with *random* A and B (``init_lora_weights=False``) and perturbed
biases and modules_to_save copies, so that a wrong key, a transposed matrix or a
wrong scaling cannot hide behind a zero update. The shipped base model
(``minilora.pretrain.load_base``) is checked the same way.

Oracles: PEFT itself (its files, its ``from_pretrained``, its counts, its autograd
in float64), a hand-written torch reference for ``enable_lora`` (which PEFT does not
have), and, for bad input, a snapshot of the model taken before the failing call.
The property-based tests (merging, mixing, combining adapters) are in
``test_lora_properties.py``.
"""

import copy
import json
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from safetensors.numpy import load_file, save_file  # noqa: E402

import minilora  # noqa: E402
from minilora import Tensor, nn  # noqa: E402
from minilora.models import to_transformers  # noqa: E402
from minilora.optim import AdamW  # noqa: E402
from minilora.peft import LoraConfig, LoRALinear, PeftModel, get_peft_model  # noqa: E402
from minilora.pretrain import load_base  # noqa: E402
from peft_helpers import (  # noqa: E402
    C,
    N_LAYER,
    assert_edited_config_refused,
    assert_unchanged,
    ids,
    logit_tol,
    loss_and_grads_against_peft,
    losses_against_torch,
    max_err,
    peft_logits,
    perturb_trainable,
    perturb_trainable_torch,
    rel_err,
    snapshot,
    tiny_gpt,
)

# PEFT warns that GPT-2's Conv1D layers need fan_in_fan_out=True (and sets it); minilora does the same.
pytestmark = pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


# The adapters every parity test runs: each LoraConfig field the issue names, alone or combined.
CONFIGS = {
    "c_attn": dict(r=4, lora_alpha=8, target_modules=["c_attn"]),
    "three-targets-rslora": dict(r=2, lora_alpha=6, use_rslora=True, target_modules=["c_attn", "c_proj", "c_fc"]),
    "regex-rank-alpha-patterns": dict(r=4, lora_alpha=16, target_modules=r".*\.(mlp\.c_fc|attn\.c_proj)",
                                      rank_pattern={"c_fc": 2}, alpha_pattern={r"h\.1\.attn\.c_proj": 3}),
    "bias-all-modules-to-save": dict(r=3, lora_alpha=5, target_modules=["c_attn", "c_fc"], bias="all",
                                     modules_to_save=["ln_f"]),
    "lora-only-modules-to-save": dict(r=3, lora_alpha=3, target_modules=["c_proj"], bias="lora_only",
                                      modules_to_save=["ln_f", "wpe"]),
}


def minilora_adapter(base, config: dict, seed=1) -> PeftModel:
    """``base`` with a random adapter of ``config`` (A, B, biases and copies all perturbed)."""
    model = get_peft_model(base, LoraConfig(init_lora_weights=False, **copy.deepcopy(config)))
    perturb_trainable(model, seed)
    return model


def peft_adapter(hf_model, config: dict, seed=1):
    model = peft.get_peft_model(hf_model, peft.LoraConfig(init_lora_weights=False, **copy.deepcopy(config)))
    perturb_trainable_torch(model, seed)
    return model.eval()


# ---------------------------------------------------------------------------
# PEFT's files, both ways
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_save_pretrained_writes_what_peft_writes(name, tmp_path):
    config = CONFIGS[name]
    ours = minilora_adapter(tiny_gpt(), config)
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft_adapter(to_transformers(tiny_gpt()), config)
    theirs.save_pretrained(tmp_path / "peft")

    ours_json = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft_json = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    # every field PEFT writes, and no other but the save id binding it to its weights (docs/files.md)
    assert set(ours_json) == set(peft_json) | {"minilora_save_id"}
    for field in ("peft_type", "r", "lora_alpha", "use_rslora", "bias", "rank_pattern", "alpha_pattern",
                  "init_lora_weights", "lora_dropout", "use_dora", "fan_in_fan_out"):
        assert ours_json[field] == peft_json[field], field
    assert ours_json["fan_in_fan_out"] is True  # GPT-2's Conv1D layers store W as (in, out)
    targets = config["target_modules"]
    if isinstance(targets, str):
        assert ours_json["target_modules"] == peft_json["target_modules"] == targets
    else:  # PEFT keeps a set, written in no particular order
        assert sorted(ours_json["target_modules"]) == sorted(peft_json["target_modules"]) == sorted(targets)
    assert sorted(ours_json["modules_to_save"] or []) == sorted(peft_json["modules_to_save"] or [])

    ours_t = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    peft_t = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert sorted(ours_t) == sorted(peft_t)
    for key, array in ours_t.items():
        assert array.shape == peft_t[key].shape and array.dtype == peft_t[key].dtype, key
    # lora_A is (r, in) and lora_B (out, r), whatever the base layer's storage
    modules = dict(ours.get_base_model().named_modules())
    for key, array in ours_t.items():
        if ".lora_" in key:
            layer = modules[key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]]
            r = layer.r["default"]
            expected = (r, layer.in_features) if ".lora_A." in key else (layer.out_features, r)
            assert array.shape == expected, key


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", CONFIGS)
def test_peft_loads_a_minilora_adapter_and_agrees(name, dtype, tmp_path):
    ours = minilora_adapter(tiny_gpt(dtype), CONFIGS[name])
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt(dtype)), tmp_path).eval()
    x = ids()
    expected = peft_logits(theirs, x)
    assert max_err(ours(x)[0].numpy(), expected) <= logit_tol(dtype, expected)
    with ours.disable_adapter():  # the adapter matters: the logits are not the base model's
        assert max_err(ours(x)[0].numpy(), expected) > 100 * logit_tol(dtype, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", CONFIGS)
def test_minilora_loads_a_peft_adapter_and_agrees(name, dtype, tmp_path):
    theirs = peft_adapter(to_transformers(tiny_gpt(dtype)), CONFIGS[name])
    theirs.save_pretrained(tmp_path)
    ours = PeftModel.from_pretrained(tiny_gpt(dtype), tmp_path)
    x = ids(seed=3)
    expected = peft_logits(theirs, x)
    assert max_err(ours(x)[0].numpy(), expected) <= logit_tol(dtype, expected)
    assert ours.get_nb_trainable_parameters()[0] == 0  # loaded for inference, as PEFT's default


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_shipped_base_model_adapters_agree_with_peft(dtype, tmp_path):
    """Both directions on the base model minilora ships (Hugging Face format, converted with
    to_transformers). Its logits are larger than the tiny model's, and rounding grows with
    them: float64 is held to 1e-10 here (measured ~1e-14), float32 to tolerances.py's bound for its 4 layers
    of width 128 (MLP 512) and the head."""
    base = load_base(dtype)

    def tol(expected):
        return 1e-10 if dtype == np.float64 else logit_tol(dtype, expected, base.config)

    vocab = base.config.vocab_size
    x = ids(2, 32, vocab=vocab, seed=4)
    config = dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], bias="lora_only")
    ours = minilora_adapter(base, config)
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(to_transformers(load_base(dtype)), tmp_path / "ours").eval()
    assert max_err(ours(x)[0].numpy(), peft_logits(theirs, x)) <= tol(peft_logits(theirs, x))

    config = dict(r=2, lora_alpha=4, target_modules=r".*\.attn\.c_attn", use_rslora=True, rank_pattern={r"h\.0\.attn\.c_attn": 3})
    theirs = peft_adapter(to_transformers(load_base(dtype)), config)
    theirs.save_pretrained(tmp_path / "peft")
    ours = PeftModel.from_pretrained(load_base(dtype), tmp_path / "peft")
    assert max_err(ours(x)[0].numpy(), peft_logits(theirs, x)) <= tol(peft_logits(theirs, x))


# ---------------------------------------------------------------------------
# parameter counts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    dict(r=8, target_modules=["c_attn"]),
    dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], rank_pattern={"c_fc": 2}),
    dict(r=2, target_modules=["c_attn", "c_fc"], bias="all", modules_to_save=["ln_f"]),
    dict(r=2, target_modules=["c_proj"], bias="lora_only", modules_to_save=["wpe"]),
    dict(r=3, target_modules=r".*\.h\.1\..*c_fc", bias="all"),
], ids=["c_attn", "rank-pattern", "bias-all-mts", "lora-only-mts", "regex-bias-all"])
def test_trainable_parameter_counts_match_peft(config, capsys):
    ours = get_peft_model(tiny_gpt(np.float32), LoraConfig(**copy.deepcopy(config)))
    theirs = peft.get_peft_model(to_transformers(tiny_gpt(np.float32)), peft.LoraConfig(**copy.deepcopy(config)))
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    ours_trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert ours_trainable == {n for n, p in theirs.named_parameters() if p.requires_grad}
    ours.print_trainable_parameters()
    printed_ours = capsys.readouterr().out
    theirs.print_trainable_parameters()
    assert printed_ours == capsys.readouterr().out
    assert printed_ours.startswith("trainable params: ")


# ---------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["three-targets-rslora", "regex-rank-alpha-patterns", "bias-all-modules-to-save",
                                  "lora-only-modules-to-save"])
def test_loss_and_gradients_equal_peft(name, tmp_path):
    ours = minilora_adapter(tiny_gpt(np.float64), CONFIGS[name])
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt(np.float64)), tmp_path, is_trainable=True)
    loss, ref, grads = loss_and_grads_against_peft(ours, theirs, ids(2, 12, seed=5))  # also: the same trainable names
    assert abs(loss - ref) <= 1e-12 * abs(ref)
    for n, ours_grad, peft_grad in grads:  # lora_A/lora_B are (r, in)/(out, r) on both sides; biases and copies too
        assert rel_err(ours_grad, peft_grad) < 1e-8, n

    ours_params = dict(ours.named_parameters())
    trainable = {n for n, p in ours_params.items() if p.requires_grad}
    frozen = [n for n, p in ours_params.items() if not p.requires_grad]
    assert frozen and all(ours_params[n].grad is None for n in frozen)  # no weight-gradient work for the base

    # AdamW given every parameter keeps state (and changes values) for the trainable ones only
    before = {n: p.data.copy() for n, p in ours_params.items()}
    opt = AdamW(ours.parameters(), lr=1e-2)
    opt.step()
    assert {id(p) for p in opt.state} == {id(ours_params[n]) for n in trainable}
    for n, p in ours_params.items():
        assert np.array_equal(p.data, before[n]) == (n not in trainable), n


# ---------------------------------------------------------------------------
# PiSSA and gaussian initialisation
# ---------------------------------------------------------------------------


def test_pissa_keeps_the_output_and_matches_peft():
    """PiSSA's ``s B A`` is the top-r singular part of W and W becomes the residual.

    Output unchanged (float64): the residual is computed as ``W - s B A`` from the very
    A and B the adapter uses, so ``W_res + s B A = W`` up to one rounding per entry,
    whatever the SVD's accuracy -- the logits agree to 1e-10.

    Against PEFT, which always takes the SVD in float32: both compute the best rank-r
    approximation of the same W, PEFT's of W rounded to float32 with a backward-stable
    SVD, i.e. exactly that of some ``W + E`` with ``||E||_2 <= p u ||W||_2``, u = 2^-24, and
    p = max(m, n) for LAPACK's modest constant (Golub & Van Loan, sec. 8.6). By the
    perturbation theory of the truncated SVD (Wedin), the rank-r parts then differ by
    at most ``||E|| (1 + 2 sigma_1 / (sigma_r - sigma_{r+1}))`` in the 2-norm, which bounds
    every entry; the same holds for the residuals W - s B A.
    """
    config = dict(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"])
    base = tiny_gpt(np.float64)
    original = {n: m.weight.data.copy() for n, m in base.named_modules() if isinstance(m, nn.Linear)}
    x = ids(seed=6)
    logits_before = base(x)[0].numpy()
    ours = get_peft_model(base, LoraConfig(init_lora_weights="pissa", **config))
    assert max_err(ours(x)[0].numpy(), logits_before) < 1e-10
    # PEFT refuses PiSSA in float64 ("initialize PiSSA under float32"): give it the float32 copy
    theirs = peft.get_peft_model(to_transformers(tiny_gpt(np.float32)), peft.LoraConfig(init_lora_weights="pissa", **config))
    theirs_modules = dict(theirs.base_model.model.named_modules())
    checked = 0
    for name, layer in ours.base_model.lora_layers():
        W = original[name]
        S = np.linalg.svd(W, compute_uv=False)
        r = layer.r["default"]
        tol = max(W.shape) * 2.0**-24 * S[0] * (1 + 2 * S[0] / (S[r - 1] - S[r]))
        ours_delta = layer._delta_weight_data("default")  # s B A, (out, in)
        ours_delta_b = layer.scaling["default"] * layer.lora_B["default"].weight.numpy() @ layer.lora_A["default"].weight.numpy()
        assert np.allclose(ours_delta, ours_delta_b, rtol=0, atol=1e-14)
        ref = theirs_modules[name]
        theirs_delta = ref.scaling["default"] * (ref.lora_B["default"].weight @ ref.lora_A["default"].weight).detach().numpy()
        assert max_err(ours_delta, theirs_delta) <= tol, name
        theirs_residual = ref.base_layer.weight.detach().numpy().T  # Conv1D: (in, out)
        assert max_err(layer.base_layer.weight.numpy(), theirs_residual) <= tol, name
        assert max_err(layer.base_layer.weight.numpy() + ours_delta, W) <= 1e-14 * np.abs(W).max() * 4
        checked += 1
    assert checked == 2 * N_LAYER


def test_gaussian_init_draws_A_with_std_one_over_r():
    """A ~ N(0, 1/r^2), B = 0. With N = 8 * 1024 draws the sample standard deviation's
    relative standard error is 1/sqrt(2N) = 0.78%; the test allows five of them (3.9%),
    far from Kaiming-uniform's std 1/sqrt(3 in) = 0.018 (vs 1/r = 0.125)."""
    minilora.manual_seed(0)
    layer = LoRALinear(nn.Linear(1024, 64, dtype=np.float64))
    r = 8
    layer.update_layer("default", r=r, lora_alpha=16, init_lora_weights="gaussian")
    A = layer.lora_A["default"].weight.numpy()
    N = A.size
    assert abs(A.std() / (1 / r) - 1) < 5 / np.sqrt(2 * N)
    assert abs(A.mean()) < 5 * (1 / r) / np.sqrt(N)
    assert not layer.lora_B["default"].weight.numpy().any()
    x = np.random.default_rng(0).standard_normal((3, 1024))
    assert np.array_equal(layer(Tensor(x)).numpy(), layer.base_layer(Tensor(x)).numpy())


# ---------------------------------------------------------------------------
# enable_lora: Wq and Wv inside the fused c_attn (the LoRA paper's setting)
# ---------------------------------------------------------------------------


def test_enable_lora_adapts_q_and_v_only():
    r, alpha = 2, 6
    base = tiny_gpt(np.float64)
    ours = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=["c_attn"],
                                           enable_lora=[True, False, True], init_lora_weights=False))
    # two rank-r pairs (q and v) per layer: A is (2r, C), B is (2C, r) -> 2 r (C + C) numbers
    assert ours.get_nb_trainable_parameters()[0] == N_LAYER * 2 * r * (C + C)
    layer = ours.get_base_model().transformer.h[0].attn.c_attn
    h = Tensor(np.random.default_rng(7).standard_normal((2, 5, C)))
    y, y_base = layer(h).numpy(), layer.base_layer(h).numpy()
    assert np.array_equal(y[..., C:2 * C], y_base[..., C:2 * C])  # the k slice: no update at all
    assert not np.allclose(y[..., :C], y_base[..., :C]) and not np.allclose(y[..., 2 * C:], y_base[..., 2 * C:])

    x = ids(seed=8)
    unmerged = ours(x)[0].numpy()
    W_before = layer.base_layer.weight.numpy().copy()
    ours.merge_adapter()
    assert np.array_equal(layer.base_layer.weight.numpy()[C:2 * C], W_before[C:2 * C])  # k rows untouched
    assert max_err(ours(x)[0].numpy(), unmerged) < 1e-10
    ours.unmerge_adapter()


def test_enable_lora_gradients_match_a_torch_reference():
    """The reference is transformers' GPT-2 with a forward hook on each c_attn adding
    ``s x A_q^T B_q^T`` to the q third and ``s x A_v^T B_v^T`` to the v third: two separate
    low-rank pairs, as the LoRA paper describes them."""
    r, alpha = 2, 6
    s = alpha / r
    ours = get_peft_model(tiny_gpt(np.float64), LoraConfig(r=r, lora_alpha=alpha, target_modules=["c_attn"],
                                                           enable_lora=[True, False, True], init_lora_weights=False))
    hf = to_transformers(tiny_gpt(np.float64))
    hf.requires_grad_(False)
    pairs = []
    for i, block in enumerate(hf.transformer.h):
        layer = ours.get_base_model().transformer.h[i].attn.c_attn
        A, Bm = layer.lora_A["default"].weight.numpy(), layer.lora_B["default"].weight.numpy()  # (2r, C), (2C, r)
        pair = {k: torch.tensor(v, requires_grad=True) for k, v in
                dict(Aq=A[:r], Av=A[r:], Bq=Bm[:C], Bv=Bm[C:]).items()}
        pairs.append(pair)

        def hook(module, inputs, output, p=pair):
            x = inputs[0]
            dq = s * (x @ p["Aq"].T) @ p["Bq"].T  # (B, T, C)
            dv = s * (x @ p["Av"].T) @ p["Bv"].T  # (B, T, C)
            return output + torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)

        block.attn.c_attn.register_forward_hook(hook)
    loss, ref = losses_against_torch(ours, hf, ids(seed=9))
    assert abs(loss - ref) <= 1e-12 * abs(ref)
    for i, pair in enumerate(pairs):
        layer = ours.get_base_model().transformer.h[i].attn.c_attn
        gA, gB = layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad
        assert rel_err(gA, np.concatenate([pair["Aq"].grad.numpy(), pair["Av"].grad.numpy()])) < 1e-8
        assert rel_err(gB, np.concatenate([pair["Bq"].grad.numpy(), pair["Bv"].grad.numpy()])) < 1e-8


def test_enable_lora_adapters_are_saved_as_their_peft_equivalent(tmp_path):
    """PEFT has no enable_lora: the file holds the equivalent rank-2r adapter (B with zero
    blocks), which PEFT loads as is; minilora restores the two rank-r pairs from it."""
    config = LoraConfig(r=2, lora_alpha=6, target_modules=["c_attn"], enable_lora=[True, False, True], init_lora_weights=False)
    ours = get_peft_model(tiny_gpt(), config)
    ours.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns about the unknown minilora_enable_lora record
        theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt()), tmp_path).eval()
    x = ids(seed=10)
    assert max_err(ours(x)[0].numpy(), peft_logits(theirs, x)) < logit_tol(np.float64, None)
    back = PeftModel.from_pretrained(tiny_gpt(), tmp_path)
    layer = back.get_base_model().transformer.h[1].attn.c_attn
    assert layer.enable_lora["default"] == [True, False, True] and layer.lora_A["default"].weight.shape == (4, C)
    assert np.array_equal(back(x)[0].numpy(), ours(x)[0].numpy())


# ---------------------------------------------------------------------------
# bad input: a clear error, and the model exactly as before
# ---------------------------------------------------------------------------


def test_target_modules_that_match_nothing_list_the_modules_that_exist():
    model = tiny_gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"target_modules=\['q_proj', 'v_proj'\] matches no module of GPT") as err:
        get_peft_model(model, LoraConfig(target_modules=["q_proj", "v_proj"]))
    for name in ("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj", "lm_head"):
        assert name in str(err.value)
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match="'transformer.ln_f' is a LayerNorm; LoRA adapts Linear layers only"):
        get_peft_model(model, LoraConfig(target_modules=["c_attn", "ln_f"]))
    assert_unchanged(model, before)


@pytest.mark.parametrize("init", [True, "pissa"])
def test_an_error_half_way_through_injection_is_rolled_back(init):
    model = tiny_gpt()
    before = snapshot(model)
    # the LoRA layers are wrapped (and, for PiSSA, W replaced by the residual) before modules_to_save fails
    with pytest.raises(ValueError, match="modules_to_save entry 'no_such_module' matches no module"):
        get_peft_model(model, LoraConfig(target_modules=["c_attn"], init_lora_weights=init, modules_to_save=["no_such_module"]))
    assert_unchanged(model, before)


@pytest.mark.parametrize("kwargs, message", [
    (dict(r=0), r"LoraConfig.r must be a positive int, got 0"),
    (dict(r=-3), r"LoraConfig.r must be a positive int, got -3"),
    (dict(r=2.5), r"LoraConfig.r must be a positive int, got 2.5"),
    (dict(rank_pattern={"c_fc": 0}), r"LoraConfig.rank_pattern\['c_fc'\] must be a positive int, got 0"),
    (dict(lora_alpha=-1), r"LoraConfig.lora_alpha must be >= 0, got -1"),
    (dict(alpha_pattern={"c_fc": -2.0}), r"LoraConfig.alpha_pattern\['c_fc'\] must be >= 0, got -2.0"),
    (dict(bias="some"), r"LoraConfig.bias must be 'none', 'all' or 'lora_only', got 'some'"),
])
def test_bad_config_values_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoraConfig(target_modules=["c_attn"], **kwargs)
    assert_edited_config_refused(LoraConfig(target_modules=["c_attn"]), kwargs, message)


def test_an_adapter_name_already_in_use_is_refused():
    model = get_peft_model(tiny_gpt(), LoraConfig(target_modules=["c_attn"]))
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"an adapter named 'default' exists already; adapters: \['default'\]"):
        model.add_adapter("default", LoraConfig(target_modules=["c_fc"]))
    assert_unchanged(model, before)


def test_merging_an_adapter_twice_is_refused():
    model = get_peft_model(tiny_gpt(), LoraConfig(target_modules=["c_attn", "c_fc"], init_lora_weights=False))
    model.add_adapter("other", LoraConfig(target_modules=["c_attn", "c_fc"], init_lora_weights=False))
    model.merge_adapter()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="adapter 'default' is already merged"):
        model.merge_adapter()
    assert_unchanged(model, before)
    # "other" would be merged first, then "default" refused: nothing may be merged at all
    with pytest.raises(RuntimeError, match="adapter 'default' is already merged"):
        model.merge_adapter(["other", "default"])
    assert_unchanged(model, before)


def test_deleting_the_active_adapter_is_refused():
    model = get_peft_model(tiny_gpt(), LoraConfig(target_modules=["c_attn"]))
    model.add_adapter("other", LoraConfig(target_modules=["c_fc"]))
    before = snapshot(model)
    with pytest.raises(ValueError, match="adapter 'default' is active; set_adapter"):
        model.delete_adapter("default")
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match=r"no adapter named 'nope'; adapters: \['default', 'other'\]"):
        model.delete_adapter("nope")
    assert_unchanged(model, before)


def saved_adapter(path, seed=0, **gpt_overrides) -> Path:
    minilora_adapter(tiny_gpt(seed=seed, **gpt_overrides), dict(r=4, target_modules=["c_attn", "c_fc"])).save_pretrained(path)
    return Path(path)


def test_an_adapter_for_another_width_is_refused_naming_key_and_shapes(tmp_path):
    path = saved_adapter(tmp_path, n_embd=24)
    model = tiny_gpt()
    before = snapshot(model)
    with pytest.raises(ValueError) as err:
        PeftModel.from_pretrained(model, path)
    message = str(err.value)
    assert "does not fit this model" in message and str(path / "adapter_model.safetensors") in message
    assert "key 'base_model.model.transformer.h.0.attn.c_attn.lora_A.weight' has shape (4, 24), but the model implies (4, 16)" in message
    assert "key 'base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight' has shape (96, 4), but the model implies (64, 4)" in message
    assert_unchanged(model, before)
    # and onto a model that has an adapter already
    peft_model = get_peft_model(model, LoraConfig(target_modules=["c_proj"]))
    before = snapshot(peft_model)
    with pytest.raises(ValueError, match=r"c_attn.lora_A.weight' has shape \(4, 24\), but the model implies \(4, 16\)"):
        peft_model.load_adapter(path, "wide")
    assert_unchanged(peft_model, before)


def test_an_adapter_for_another_architecture_is_refused_naming_the_keys(tmp_path):
    model = tiny_gpt()
    before = snapshot(model)
    deeper = saved_adapter(tmp_path / "deeper", n_layer=3)
    with pytest.raises(ValueError, match=r"unexpected key 'base_model\.model\.transformer\.h\.2\.attn\.c_attn\.lora_A\.weight"):
        PeftModel.from_pretrained(model, deeper)
    assert_unchanged(model, before)
    # keys renamed as for another model family (LLaMA's q_proj) while the config still says c_attn
    other = saved_adapter(tmp_path / "other")
    tensors = load_file(other / "adapter_model.safetensors")
    save_file({k.replace("attn.c_attn", "self_attn.q_proj"): v for k, v in tensors.items()}, other / "adapter_model.safetensors")
    with pytest.raises(ValueError) as err:
        PeftModel.from_pretrained(model, other)
    assert "missing keys (4): base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" in str(err.value)
    assert "base_model.model.transformer.h.0.self_attn.q_proj.lora_A.weight" in str(err.value)
    assert_unchanged(model, before)


def test_a_missing_or_truncated_weights_file_is_refused(tmp_path):
    model = tiny_gpt()
    before = snapshot(model)
    path = saved_adapter(tmp_path)
    weights = path / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="adapter_model.safetensors is corrupt or truncated"):
        PeftModel.from_pretrained(model, path)
    assert_unchanged(model, before)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors not found"):
        PeftModel.from_pretrained(model, path)
    assert_unchanged(model, before)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        PeftModel.from_pretrained(model, tmp_path / "nowhere")


@pytest.mark.parametrize("field, value, error", [
    ("trainable_token_indices", [0], r"minilora cannot honour these settings: trainable_token_indices=\[0\]"),
    ("target_parameters", ["mlp.c_fc.weight"], r"minilora cannot honour these settings: target_parameters="),
    ("init_lora_weights", "corda", r"init_lora_weights must be True, False, 'gaussian', 'pissa', 'pissa_niter_K' "
                                   r"\(K an int >= 0\), or 'olora', got 'corda'"),
    ("bias", "sometimes", r"LoraConfig.bias must be 'none', 'all' or 'lora_only', got 'sometimes'"),
    ("peft_type", "NOT_A_METHOD", r"unknown PEFT method 'NOT_A_METHOD'"),
])
def test_an_unsupported_config_setting_is_refused(tmp_path, field, value, error):
    path = saved_adapter(tmp_path)
    config = json.loads((path / "adapter_config.json").read_text())
    config[field] = value
    (path / "adapter_config.json").write_text(json.dumps(config))
    model = tiny_gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match=error):
        PeftModel.from_pretrained(model, path)
    assert_unchanged(model, before)


def test_a_pickle_file_is_refused_and_pickle_is_never_used(tmp_path, monkeypatch):
    path = saved_adapter(tmp_path)
    model = tiny_gpt()

    def forbidden(*args, **kwargs):
        raise AssertionError("adapter files must not be read with pickle")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, forbidden)
    PeftModel.from_pretrained(tiny_gpt(), path)  # a good adapter loads without touching pickle
    # PEFT's legacy format: the weights pickled in adapter_model.bin, no safetensors file
    (path / "adapter_model.safetensors").unlink()
    (path / "adapter_model.bin").write_bytes(b"\x80\x04 pickled tensors would be here")
    before = snapshot(model)
    with pytest.raises(FileNotFoundError, match=r"reads only safetensors -- pickle files can run code"):
        PeftModel.from_pretrained(model, path)
    assert_unchanged(model, before)
    # and the loading code has no other way to read a file
    root = Path(minilora.__file__).parent
    for source in sorted((root / "peft").glob("*.py")):
        text = source.read_text()
        assert not re.search(r"import pickle|pickle\.|torch\.load|allow_pickle\s*=\s*True|np\.load\(", text), source


def test_a_mixed_batch_needs_batched_modules_to_save():
    """A mixed batch runs each row through its adapter's modules_to_save copy; GPT's ``wpe``
    sees positions (T,), not rows, so it can be mixed only when every row uses the same copy."""
    model = get_peft_model(tiny_gpt(), LoraConfig(target_modules=["c_attn"], modules_to_save=["wpe"], init_lora_weights=False))
    model.add_adapter("other", LoraConfig(target_modules=["c_attn"], init_lora_weights=False))
    x = ids(2, 6, seed=11)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"a mixed batch needs a batched input to modules_to_save \(Embedding\), got shape \(6,\) for 2 rows"):
        model(x, adapter_names=["default", "other"])
    assert_unchanged(model, before)
    same = model(x, adapter_names=["default", "default"])[0].numpy()
    assert max_err(same, model(x)[0].numpy()) < 1e-12
