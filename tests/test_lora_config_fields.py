"""Every field of PEFT 0.21's LoraConfig: implemented equal to PEFT, or refused naming the field.

``FIELDS`` lists them all, each with what minilora does with it; a test compares the list with
PEFT's dataclass, so a field a new PEFT adds fails here until someone decides. The fields whose
equality with PEFT is proved elsewhere say where; the ones proved here are the initialisations
that rewrite W -- OLoRA (a QR decomposition) and PiSSA with a randomized SVD ("pissa_niter_K") --
and the conversion of a PiSSA/OLoRA adapter into a plain rank-2r LoRA adapter
(``path_initial_model_for_weight_conversion``), plus the refusals.

Float32 bounds. PEFT computes OLoRA's QR and PiSSA's SVD in float32 only (it refuses float64).
A Householder QR is backward stable: the computed factors are exact for W + E with
||E||_2 <= c m n u ||W||_2 (Higham, Thm. 19.4; u = 2^-24). OLoRA's B A = Q_r Q_r^T W is the
projection of W onto the span of its first r columns W_r; that projector moves by at most
sqrt(2) ||E|| / σ_min(W_r) under E (Wedin), so B A moves by at most ||E|| (1 + sqrt(2) ||W|| / σ_min(W_r)).
Ours and PEFT's are each that close to the exact value: the test allows twice that, with c = 1
and m n taken as max(m, n)^2.
"""

import copy
import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from safetensors.numpy import load_file  # noqa: E402

from minilora import nn  # noqa: E402
from minilora.models.llama_hf import to_transformers as llama_to_transformers  # noqa: E402
from minilora.peft import LoraConfig, LoRALinear, PeftModel, get_peft_model  # noqa: E402
from peft_helpers import (  # noqa: E402
    assert_unchanged,
    ids,
    llama_in_float64,
    max_err,
    peft_logits,
    perturb_trainable,
    perturb_trainable_torch,
    snapshot,
    tiny_gpt,
    tiny_llama,
)

pytestmark = [pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning"),
              pytest.mark.filterwarnings("ignore:Unexpected keyword arguments:UserWarning"),
              pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")]

# What minilora does with each field of peft.LoraConfig (0.21.2), and where that is tested.
IMPLEMENTED = "implemented, equal to PEFT"
REFUSED = "refused: a value other than PEFT's default is an error naming the field"
FIELDS = {
    # where the file came from: read, written, no effect
    "task_type": "implemented (SEQ_CLS adds the head to modules_to_save): test_bert_peft.py",
    "peft_type": "informational", "auto_mapping": "informational", "peft_version": "informational",
    "base_model_name_or_path": "informational", "revision": "informational", "megatron_core": "informational",
    "inference_mode": "implemented: loaded adapters are frozen unless is_trainable",
    "qalora_group_size": "informational unless use_qalora (refused)",
    "runtime_config": "runtime only: PEFT never writes it to a file",
    # LoRA itself
    "r": IMPLEMENTED + ": test_lora.py", "lora_alpha": IMPLEMENTED + ": test_lora.py",
    "lora_dropout": IMPLEMENTED + ": test_lora.py", "target_modules": IMPLEMENTED + ": test_lora.py",
    "fan_in_fan_out": IMPLEMENTED + " (set for GPT-2's Conv1D layers): test_lora.py",
    "bias": IMPLEMENTED + ": test_lora.py", "use_rslora": IMPLEMENTED + ": test_lora.py",
    "modules_to_save": IMPLEMENTED + ": test_lora.py", "rank_pattern": IMPLEMENTED + ": test_lora.py",
    "alpha_pattern": IMPLEMENTED + ": test_lora.py", "use_dora": IMPLEMENTED + ": test_peft_ia3_dora.py",
    "init_lora_weights": IMPLEMENTED + " for True, False, 'gaussian', 'pissa', 'pissa_niter_K', 'olora' "
                                       "(here and test_lora.py); the others refused",
    "layers_to_transform": IMPLEMENTED + ": test_peft_methods.py, here",
    "layers_pattern": IMPLEMENTED + ": test_peft_methods.py, here",
    "lora_bias": IMPLEMENTED + ": test_peft_methods.py, here",
    # issue #19's work (exclude_modules with PEFT's rule): implemented there, refused until then
    "exclude_modules": "issue #19: implemented or refused, the lead reconciles at merge",
    # methods and initialisations minilora does not implement
    "megatron_config": REFUSED, "trainable_token_indices": REFUSED, "loftq_config": REFUSED, "eva_config": REFUSED,
    "corda_config": REFUSED, "lora_ga_config": REFUSED, "velora_config": REFUSED, "alora_invocation_tokens": REFUSED,
    "use_qalora": REFUSED, "monteclora_config": REFUSED, "layer_replication": REFUSED, "target_parameters": REFUSED,
    "use_bdlora": REFUSED, "arrow_config": REFUSED, "kasa_config": REFUSED, "ensure_weight_tying": REFUSED,
}
# a value other than the default, for each refused field
NOT_DEFAULT = {
    "megatron_config": {"tensor_model_parallel_size": 2}, "trainable_token_indices": [0], "loftq_config": {"loftq_bits": 4},
    "eva_config": {"rho": 2.0}, "corda_config": {"cache_file": "x"}, "lora_ga_config": {"direction": "ArB2r"},
    "velora_config": {"rank": 2}, "alora_invocation_tokens": [1, 2], "use_qalora": True,
    "monteclora_config": {"num_samples": 2}, "layer_replication": [[0, 1]], "target_parameters": ["mlp.c_fc.weight"],
    "use_bdlora": {"nblocks": 2}, "arrow_config": {"top_k": 2}, "kasa_config": {"rank": 2}, "ensure_weight_tying": True,
}


def test_every_field_of_peft_s_lora_config_is_listed():
    ours = {f.name for f in dataclasses.fields(LoraConfig)}
    assert set(FIELDS) == {f.name for f in dataclasses.fields(peft.LoraConfig)}, "a PEFT field no one has decided on"
    for name, fate in FIELDS.items():
        if fate.startswith("implemented"):
            assert name in ours, name
        if fate == REFUSED:
            assert name not in ours and name in NOT_DEFAULT, name


def saved_adapter(folder):
    get_peft_model(tiny_gpt(), LoraConfig(r=2, target_modules=["c_attn"])).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("field", sorted(NOT_DEFAULT))
def test_a_refused_field_is_refused_naming_it(field, tmp_path):
    folder = saved_adapter(tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    config[field] = NOT_DEFAULT[field]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    model = tiny_gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"minilora cannot honour these settings: {field}="):
        PeftModel.from_pretrained(model, folder)
    assert_unchanged(model, before)


# ---------------------------------------------------------------------------
# layers_to_transform, layers_pattern
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    dict(target_modules=["c_attn", "c_fc"], layers_to_transform=1),
    dict(target_modules=["c_attn", "mlp.c_proj"], layers_to_transform=[0, 1], layers_pattern="h"),
    dict(target_modules=["c_attn", "transformer.h.1.mlp.c_fc"], layers_to_transform=[0]),  # a full name: any layer
    dict(target_modules=["c_attn"], layers_to_transform=[]),  # empty: every layer
])
def test_layers_to_transform_picks_peft_s_modules(fields):
    from minilora.models import to_transformers

    ours = get_peft_model(tiny_gpt(), LoraConfig(**fields))
    theirs = peft.get_peft_model(to_transformers(tiny_gpt()), peft.LoraConfig(**fields))
    expected = sorted(n for n, m in theirs.base_model.model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer))
    assert sorted(n for n, _ in ours.base_model.adapter_layers()) == expected


def test_layers_fields_are_checked_as_peft_checks_them():
    with pytest.raises(ValueError, match="cannot be used when `target_modules` is a str"):
        peft.LoraConfig(target_modules=".*c_attn", layers_to_transform=[0])
    with pytest.raises(ValueError, match=r"cannot be used when target_modules is a regex string \('\.\*c_attn'\)"):
        LoraConfig(target_modules=".*c_attn", layers_to_transform=[0])
    with pytest.raises(ValueError, match="`layers_to_transform` must also be specified"):
        peft.LoraConfig(target_modules=["c_attn"], layers_pattern="h")
    with pytest.raises(ValueError, match=r"layers_pattern='h' is set but layers_to_transform is not"):
        LoraConfig(target_modules=["c_attn"], layers_pattern="h")
    with pytest.raises(ValueError, match=r"layers_to_transform must be an int, a list of ints or None, got 'first'"):
        LoraConfig(target_modules=["c_attn"], layers_to_transform="first")
    model = tiny_gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"matches no module of GPT in layers_to_transform=\[7\]"):
        get_peft_model(model, LoraConfig(target_modules=["c_attn"], layers_to_transform=[7]))
    assert_unchanged(model, before)


# ---------------------------------------------------------------------------
# lora_bias, Embedding targets: what PEFT refuses, and the tied embedding
# ---------------------------------------------------------------------------


def test_lora_bias_on_a_layer_without_bias_trains_but_does_not_merge():
    """PEFT warns at creation and raises at merge; minilora refuses the merge before anything changes."""
    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"], lora_bias=True, init_lora_weights=False))
    perturb_trainable(model)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="it has a lora_bias, and the layer has no bias to fold it into"):
        model.merge_adapter()
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match="lora_bias=True works with init_lora_weights=True or False and without DoRA"):
        LoraConfig(lora_bias=True, use_dora=True)
    with pytest.raises(ValueError, match="only supported with init_lora_weights=True or False"):
        peft.LoraConfig(lora_bias=True, init_lora_weights="pissa")


def test_lora_on_the_tied_token_embedding():
    """GPT-2's wte is also its head's matrix: LoRA on wte changes the lookup only (in PEFT too: the
    head reads the base matrix), so it equals PEFT's, and a merge -- which would change the head
    as well -- is refused; with the head given its own copy it merges."""
    from minilora.models import to_transformers

    ours = get_peft_model(tiny_gpt(), LoraConfig(r=2, target_modules=["wte"], init_lora_weights=False))
    perturb_trainable(ours)
    x = ids()
    theirs = peft.get_peft_model(to_transformers(tiny_gpt()), peft.LoraConfig(r=2, target_modules=["wte"]))
    with torch.no_grad():
        layer = theirs.base_model.model.transformer.wte
        ours_layer = ours.get_base_model().transformer.wte
        layer.lora_embedding_A["default"].copy_(torch.tensor(ours_layer.lora_embedding_A["default"].numpy()))
        layer.lora_embedding_B["default"].copy_(torch.tensor(ours_layer.lora_embedding_B["default"].numpy()))
    assert max_err(ours(x)[0].numpy(), peft_logits(theirs, x)) < 1e-10
    before = snapshot(ours)
    with pytest.raises(RuntimeError, match=r"cannot merge into transformer\.wte: .*lm_head \(tied weights\)"):
        ours.merge_adapter()
    assert_unchanged(ours, before)
    wte = ours.get_base_model().transformer.wte
    wte.base_layer.weight = nn.Parameter(wte.base_layer.weight.data.copy(), requires_grad=False)
    expected = ours(x)[0].numpy()
    ours.merge_adapter()
    assert max_err(ours(x)[0].numpy(), expected) < 1e-10


# ---------------------------------------------------------------------------
# OLoRA and PiSSA with a randomized SVD
# ---------------------------------------------------------------------------


def spectrum_layer(m=12, n=9, ratio=0.1, seed=0, dtype=np.float64) -> nn.Linear:
    """An nn.Linear (out m, in n) whose W has singular values ratio^0, ratio^1, ...: a clear gap after every rank."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, m)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    k = min(m, n)
    W = (U[:, :k] * ratio ** np.arange(k)) @ V[:, :k].T
    layer = nn.Linear(n, m, bias=False, dtype=dtype)
    layer.weight.data = W.astype(dtype)
    return layer


def projector(M):
    Q, _ = np.linalg.qr(np.asarray(M, dtype=np.float64))
    return Q @ Q.T


@pytest.mark.parametrize("init", ["olora", "pissa_niter_3"])
def test_the_residual_plus_the_adapter_is_w(init):
    """W_res + s B A == W to rounding: W_res is computed as W - s B A from the very A and B kept, so
    |(W_res + s B A) - W| <= γ_{r+3} (|W| + 2 s |B| |A|) whatever the decomposition's accuracy (float64)."""
    base = spectrum_layer()
    W = base.weight.numpy().copy()
    layer = LoRALinear(base)
    r, alpha = 3, 5.0
    layer.update_layer("a", r, alpha, init_lora_weights=init)
    A, Bm, s = layer.lora_A["a"].weight.numpy(), layer.lora_B["a"].weight.numpy(), layer.scaling["a"]
    u = 2.0**-53
    gamma = (r + 3) * u / (1 - (r + 3) * u)
    assert np.all(np.abs(layer.base_layer.weight.numpy() + s * Bm @ A - W) <= gamma * (np.abs(W) + 2 * s * np.abs(Bm) @ np.abs(A)))
    if init == "olora":  # B: the first r columns of Q, orthonormal; B A = their projection of W
        assert max_err(Bm.T @ Bm, np.eye(r)) < 1e-14
        assert max_err(Bm @ A, projector(W[:, :r]) @ W) < 1e-13


def test_pissa_niter_finds_w_s_top_singular_subspace_as_peft_s_does():
    """A randomized SVD draws its start at random, so its elements are not PEFT's; its subspace is:
    with singular values falling by 10 at each step and 3 power iterations, span(B) is W's top-r
    left singular space to about 0.1^7 (Halko et al., 2011, sec. 10.4), for ours and for PEFT's."""
    from peft.tuners.lora.layer import Linear as PeftLinear

    r = 3
    exact = projector(np.linalg.svd(spectrum_layer().weight.numpy())[0][:, :r])
    ours = LoRALinear(spectrum_layer())
    ours.update_layer("a", r, 3.0, init_lora_weights="pissa_niter_3")
    base32 = spectrum_layer(dtype=np.float32)
    torch_base = torch.nn.Linear(9, 12, bias=False)
    with torch.no_grad():
        torch_base.weight.copy_(torch.tensor(base32.weight.numpy()))
    theirs = PeftLinear(torch_base, "a", peft.LoraConfig(r=r, lora_alpha=3, init_lora_weights="pissa_niter_3"), r=r, lora_alpha=3)
    ours_P = projector(ours.lora_B["a"].weight.numpy())
    theirs_P = projector(theirs.lora_B["a"].weight.detach().numpy())
    assert np.linalg.norm(ours_P - exact, 2) < 1e-5
    assert np.linalg.norm(theirs_P - exact, 2) < 1e-5  # PEFT's, in float32
    assert np.linalg.norm(ours_P - theirs_P, 2) < 2e-5


def test_olora_equals_peft_s_in_float32():
    """Ours and PEFT's on the same float32 LLaMA weights: B A and the residual within the bound
    of the module docstring (PEFT refuses OLoRA in float64)."""
    fields = dict(r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"], init_lora_weights="olora")
    original = {n: m.weight.numpy().astype(np.float64) for n, m in tiny_llama(np.float32).named_modules() if isinstance(m, nn.Linear)}
    ours = get_peft_model(tiny_llama(np.float32), LoraConfig(**fields))
    theirs = peft.get_peft_model(llama_to_transformers(tiny_llama(np.float32)), peft.LoraConfig(**fields))
    modules = dict(theirs.base_model.model.named_modules())
    u = 2.0**-24
    for name, layer in ours.base_model.lora_layers():
        W = original[name]
        r, s = layer.r["default"], layer.scaling["default"]
        norm = np.linalg.norm(W, 2)
        tol = 2 * max(W.shape) ** 2 * u * norm * (1 + np.sqrt(2) * norm / np.linalg.svd(W[:, :r], compute_uv=False)[-1])
        ours_BA = layer.lora_B["default"].weight.numpy().astype(np.float64) @ layer.lora_A["default"].weight.numpy()
        ref = modules[name]
        theirs_BA = (ref.lora_B["default"].weight @ ref.lora_A["default"].weight).detach().numpy()
        assert max_err(ours_BA, theirs_BA) <= tol, name
        assert max_err(layer.base_layer.weight.numpy(), ref.base_layer.weight.detach().numpy()) <= s * tol + 4 * u * np.abs(W).max()


# ---------------------------------------------------------------------------
# PiSSA / OLoRA -> plain LoRA
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["pissa", "olora", "pissa_niter_2"])
def test_a_converted_adapter_reproduces_the_trained_model_on_the_original_base(init, tmp_path):
    """Train (here: move every trained array) from a PiSSA/OLoRA start, save with
    path_initial_model_for_weight_conversion: the rank-2r LoRA adapter, on the *original*
    weights, gives the trained model's logits -- in minilora and in PEFT (float64)."""
    fields = dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"], modules_to_save=["model.norm"])
    model = get_peft_model(tiny_llama(), LoraConfig(init_lora_weights=init, **fields))
    model.save_pretrained(tmp_path / "init")
    perturb_trainable(model)
    x = ids()
    trained = model(x)[0].numpy()
    model.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=tmp_path / "init")
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (4, 8, True)
    converted = PeftModel.from_pretrained(tiny_llama(), tmp_path / "lora")
    assert max_err(converted(x)[0].numpy(), trained) < 1e-10
    with llama_in_float64():
        theirs = peft.PeftModel.from_pretrained(llama_to_transformers(tiny_llama()), tmp_path / "lora").eval()
        assert max_err(peft_logits(theirs, x), trained) < 1e-10
    assert model.peft_config["default"].r == 2  # the live config is left as it was


def test_the_conversion_writes_what_peft_s_writes(tmp_path):
    """PEFT's workflow in float32 (its PiSSA needs it): a PiSSA adapter saved at init, trained, saved
    plain and converted. minilora loads the trained one and converts it with PEFT's initial folder:
    the very tensors PEFT wrote, [A ; A0] and [B | -B0], and the same r and alpha."""
    fields = dict(r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"], init_lora_weights="pissa")
    theirs = peft.get_peft_model(llama_to_transformers(tiny_llama(np.float32)), peft.LoraConfig(**copy.deepcopy(fields)))
    theirs.save_pretrained(tmp_path / "init")
    perturb_trainable_torch(theirs)
    theirs.save_pretrained(tmp_path / "trained")
    theirs.save_pretrained(tmp_path / "peft", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    ours = PeftModel.from_pretrained(tiny_llama(np.float32), tmp_path / "trained")
    ours.save_pretrained(tmp_path / "ours", path_initial_model_for_weight_conversion=tmp_path / "init")
    ours_t, peft_t = load_file(tmp_path / "ours" / "adapter_model.safetensors"), load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert {k: v.tobytes() for k, v in ours_t.items()} == {k: v.tobytes() for k, v in peft_t.items()}
    ours_json = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft_json = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    for field in ("r", "lora_alpha", "init_lora_weights", "rank_pattern", "alpha_pattern", "use_rslora"):
        assert ours_json[field] == peft_json[field], field


def test_a_conversion_that_cannot_be_done_is_refused_and_writes_nothing(tmp_path):
    model = get_peft_model(tiny_gpt(), LoraConfig(r=2, target_modules=["c_attn"], use_dora=True))
    model.save_pretrained(tmp_path / "init")
    with pytest.raises(ValueError, match="converts plain LoRA adapters .* not DoRA"):
        model.save_pretrained(tmp_path / "out", path_initial_model_for_weight_conversion=tmp_path / "init")
    other = get_peft_model(tiny_gpt(), LoraConfig(r=3, target_modules=["c_attn"], init_lora_weights="pissa"))
    with pytest.raises(ValueError, match=r"lora_A.weight' has shape \(2, 16\), but adapter 'default' implies \(3, 16\)"):
        other.save_pretrained(tmp_path / "out", path_initial_model_for_weight_conversion=tmp_path / "init")
    rs = get_peft_model(tiny_gpt(), LoraConfig(r=2, target_modules=["c_attn"], use_rslora=True, rank_pattern={"h.0": 3},
                                               init_lora_weights="olora"))
    rs.save_pretrained(tmp_path / "init_rs")
    with pytest.raises(ValueError, match="not supported for use_rslora=True with rank_pattern or alpha_pattern"):
        rs.save_pretrained(tmp_path / "out", path_initial_model_for_weight_conversion=tmp_path / "init_rs")
    assert not (tmp_path / "out").exists()
