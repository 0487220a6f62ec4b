"""(IA)^3 and DoRA against Hugging Face PEFT, and the properties each must have.

As in ``test_lora.py``: a tiny random GPT-2 (vocab 61, 16 positions, width 16, 2
layers, 2 heads; ``peft_helpers.py``) in minilora and its ``to_transformers`` twin get the same adapter,
with every trained array moved away from its initial value -- IA3's vectors away from
ones, DoRA's A, B (``init_lora_weights=False``) and magnitude m away from ||W + ΔW|| --
so that a wrong key, shape, scaling or bias rule cannot hide behind an identity update.

Oracles: PEFT (its counts, files, ``from_pretrained`` and float64 autograd), closed-form
parameter counts, and, for bad input, a snapshot of the model taken before the call.

How close is "equal"
--------------------
Merged and unmerged outputs evaluate one product in two orders, e.g. ``l ⊙ (W x + b)``
against ``(diag(l) W) x + l ⊙ b``, or DoRA's ``y + (f - 1) ⊙ W x + f ⊙ ΔW x`` against
``(f ⊙ (W + ΔW)) x + b``: each entry carries a few rounding errors of size u = 2^-53 times
the magnitudes summed (|W||x| and the like, O(1) here), so 1e-10 through a whole float64
GPT is far above rounding and far below any real difference (the adapters move logits by
O(0.1)). Unmerging divides the factor back out: fl(fl(l w) / l) = w (1 + d1)(1 + d2),
|d| <= u, and for DoRA fl(fl(f (w + δ)) / f) - δ is within a few u (|w| + |δ|) -- so W
comes back within 1e-12.
"""

import copy
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from safetensors.numpy import load_file  # noqa: E402

import minilora  # noqa: E402
from minilora import Tensor, nn  # noqa: E402
from minilora.models import GPT, to_transformers  # noqa: E402
from minilora.peft import BASE, IA3Config, LoraConfig, LoRALinear, PeftModel, get_peft_model  # noqa: E402
from minilora.peft.ia3 import IA3Linear  # noqa: E402
import peft_helpers as helpers  # noqa: E402
from peft_helpers import (  # noqa: E402
    C,
    N_LAYER,
    assert_refused_as_tied,
    assert_unchanged,
    ids,
    loss_and_grads_against_peft,
    max_err,
    merges_into_tied_head,
    peft_logits,
    perturb_trainable,
    rel_err,
    snapshot,
    tiny_gpt,
    untie_head,
)

# PEFT warns that GPT-2's Conv1D layers need fan_in_fan_out=True (and sets it), and that
# unmerging IA3 "can be inaccurate"; minilora sets fan_in_fan_out the same way.
pytestmark = [pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning"),
              pytest.mark.filterwarnings("ignore:Unmerge result can be inaccurate:UserWarning")]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


# The adapters every parity test runs: (minilora config class, PEFT config class, fields).
CONFIGS = {
    "ia3-gpt2-defaults": (IA3Config, "IA3Config", dict()),  # c_attn (output) and mlp.c_proj (input)
    "ia3-four-targets-mts": (IA3Config, "IA3Config", dict(target_modules=["c_attn", "c_fc", "attn.c_proj", "mlp.c_proj"],
                                                          feedforward_modules=["c_fc", "mlp.c_proj"],
                                                          modules_to_save=["ln_f"])),
    "ia3-regex": (IA3Config, "IA3Config", dict(target_modules=r".*\.h\.1\.(attn\.c_attn|mlp\.c_fc|mlp\.c_proj)",
                                               feedforward_modules=r".*mlp\.c_proj")),
    "dora-c_attn": (LoraConfig, "LoraConfig", dict(r=4, lora_alpha=8, use_dora=True, target_modules=["c_attn"])),
    "dora-rslora-rank-pattern": (LoraConfig, "LoraConfig", dict(r=2, lora_alpha=6, use_rslora=True, use_dora=True,
                                                                target_modules=["c_attn", "c_proj", "c_fc"],
                                                                rank_pattern={"c_fc": 3})),
    "dora-lora-only-mts": (LoraConfig, "LoraConfig", dict(r=3, lora_alpha=3, use_dora=True, bias="lora_only",
                                                          target_modules=["c_attn", "c_fc"], modules_to_save=["ln_f"])),
}


def minilora_adapter(base, name: str, seed=1) -> PeftModel:
    config_cls, _, fields = CONFIGS[name]
    return helpers.minilora_adapter(base, config_cls, fields, seed)


def peft_adapter(hf_model, name: str, seed=1):
    return helpers.peft_adapter(hf_model, *CONFIGS[name], seed=seed)


# ---------------------------------------------------------------------------
# against PEFT: counts, files, logits, gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_trainable_parameters_are_peft_s(name):
    config_cls, peft_cls, fields = CONFIGS[name]
    ours = get_peft_model(tiny_gpt(np.float32), config_cls(**copy.deepcopy(fields)))
    theirs = peft.get_peft_model(to_transformers(tiny_gpt(np.float32)), getattr(peft, peft_cls)(**copy.deepcopy(fields)))
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    assert ({n for n, p in ours.named_parameters() if p.requires_grad}
            == {n for n, p in theirs.named_parameters() if p.requires_grad})


def test_parameter_counts_follow_the_closed_forms():
    """IA3 with GPT-2's defaults: L (3C + 4C) (c_attn's output, mlp.c_proj's input). DoRA: LoRA's
    r (in + out) plus out (the magnitude) per adapted layer -- for c_attn, r (C + 3C) + 3C."""
    ia3 = get_peft_model(tiny_gpt(np.float32), IA3Config())
    assert ia3.get_nb_trainable_parameters()[0] == N_LAYER * (3 * C + 4 * C)
    r = 4
    dora = get_peft_model(tiny_gpt(np.float32), LoraConfig(r=r, use_dora=True, target_modules=["c_attn"]))
    assert dora.get_nb_trainable_parameters()[0] == N_LAYER * (r * (C + 3 * C) + 3 * C)


@pytest.mark.parametrize("name", CONFIGS)
def test_save_pretrained_writes_what_peft_writes(name, tmp_path):
    ours = minilora_adapter(tiny_gpt(), name)
    ours.save_pretrained(tmp_path / "ours")
    peft_adapter(to_transformers(tiny_gpt()), name).save_pretrained(tmp_path / "peft")
    ours_json = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft_json = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert set(ours_json) == set(peft_json) | {"minilora_save_id"}  # the save id binds it to its weights
    for field, value in peft_json.items():
        if field in ("auto_mapping", "inference_mode"):  # where the file came from; PEFT saves inference_mode=True
            continue
        if isinstance(value, list):  # PEFT keeps sets, written in no particular order
            assert sorted(ours_json[field]) == sorted(value), field
        else:
            assert ours_json[field] == value, field
    ours_t = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    peft_t = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert sorted(ours_t) == sorted(peft_t)
    for key, array in ours_t.items():
        assert array.shape == peft_t[key].shape and array.dtype == peft_t[key].dtype, key
    if name == "ia3-gpt2-defaults":  # PEFT's keys and shapes: (out, 1) scales outputs, (1, in) inputs
        assert ours_t["base_model.model.transformer.h.0.attn.c_attn.ia3_l"].shape == (3 * C, 1)
        assert ours_t["base_model.model.transformer.h.1.mlp.c_proj.ia3_l"].shape == (1, 4 * C)
    if name == "dora-c_attn":  # the magnitude is saved without ".weight"
        assert ours_t["base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector"].shape == (3 * C,)


@pytest.mark.parametrize("name", CONFIGS)
def test_peft_loads_a_minilora_adapter_and_agrees(name, tmp_path):
    ours = minilora_adapter(tiny_gpt(), name)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt()), tmp_path).eval()
    x = ids()
    assert max_err(ours(x)[0].numpy(), peft_logits(theirs, x)) < 1e-10
    with ours.disable_adapter():  # the adapter matters: the logits are not the base model's
        assert max_err(ours(x)[0].numpy(), peft_logits(theirs, x)) > 1e-3


@pytest.mark.parametrize("name", CONFIGS)
def test_minilora_loads_a_peft_adapter_and_agrees(name, tmp_path):
    theirs = peft_adapter(to_transformers(tiny_gpt()), name)
    theirs.save_pretrained(tmp_path)
    ours = PeftModel.from_pretrained(tiny_gpt(), tmp_path)
    x = ids(seed=3)
    assert max_err(ours(x)[0].numpy(), peft_logits(theirs, x)) < 1e-10
    assert ours.get_nb_trainable_parameters()[0] == 0  # loaded for inference, as PEFT's default
    with ours.disable_adapter():
        assert max_err(ours(x)[0].numpy(), peft_logits(theirs, x)) > 1e-3


@pytest.mark.parametrize("name", CONFIGS)
def test_loss_and_gradients_equal_peft(name, tmp_path):
    """Float64; DoRA's gradients equal PEFT's only with the norm detached (paper sec. 4.3) on both sides."""
    ours = minilora_adapter(tiny_gpt(), name)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt()), tmp_path, is_trainable=True)
    loss, ref, grads = loss_and_grads_against_peft(ours, theirs, ids(2, 12, seed=5))
    assert abs(loss - ref) <= 1e-12 * abs(ref)
    for n, ours_grad, peft_grad in grads:
        assert rel_err(ours_grad, peft_grad) < 1e-8, n
    frozen = [p for p in ours.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)


class FixedMask(nn.Module):
    """Dropout with a given mask (already divided by the keep probability), so both sides drop the same entries."""

    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * Tensor(self.mask)


def test_dora_dropout_feeds_both_terms_as_in_peft(tmp_path):
    """In training with lora_dropout, PEFT's DoRA applies dropout to x once and recomputes the
    W term from the dropped-out x: y + (f - 1) ⊙ W d(x) + f ⊙ s B A d(x). The same masks on
    both sides (in train mode: GPT's own dropout is 0) give the same loss and gradients."""
    config = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.3, use_dora=True, target_modules=["c_attn", "c_fc"],
                        init_lora_weights=False)
    ours = get_peft_model(tiny_gpt(), config)
    perturb_trainable(ours)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt()), tmp_path, is_trainable=True)
    x = ids(2, 12, seed=7)
    rng = np.random.default_rng(8)
    ref_modules = dict(theirs.base_model.model.named_modules())
    for name, layer in ours.base_model.lora_layers():
        mask = (rng.random((2, 12, layer.in_features)) > 0.3) / 0.7
        layer.lora_dropout["default"] = FixedMask(mask)
        ref_modules[name].lora_dropout["default"] = TorchMask(torch.tensor(mask))
    ours.train()
    theirs.train()
    loss, ref, grads = loss_and_grads_against_peft(ours, theirs, x)
    assert abs(loss - ref) <= 1e-12 * abs(ref)
    for n, ours_grad, peft_grad in grads:
        assert rel_err(ours_grad, peft_grad) < 1e-8, n
    ours.eval()  # and without dropout the W term is y minus its bias, as in PEFT's eval mode
    assert max_err(ours(x)[0].numpy(), peft_logits(theirs.eval(), x)) < 1e-10


class TorchMask(torch.nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * self.mask


# ---------------------------------------------------------------------------
# properties: one layer
# ---------------------------------------------------------------------------

FAST = settings(max_examples=25, deadline=None)
GPT_SETTINGS = settings(max_examples=8, deadline=None)


def f64(a):
    return np.asarray(a.numpy() if isinstance(a, Tensor) else a, dtype=np.float64)


@st.composite
def layers(draw, method):
    """An adapted nn.Linear (float64) of drawn shape, its input, and the adapter's name."""
    n_in, n_out, bias, seed = draw(st.integers(1, 10)), draw(st.integers(1, 10)), draw(st.booleans()), draw(st.integers(0, 2**16))
    minilora.manual_seed(seed)
    rng = np.random.default_rng(seed)
    base = nn.Linear(n_in, n_out, bias=bias, dtype=np.float64)
    if method == "ia3":
        layer = IA3Linear(base, is_feedforward=draw(st.booleans()))
        layer.update_layer("a")
        l = layer.ia3_l["a"]
        # vectors of either sign and of magnitudes 0.1 .. 3, never 0 (a zero cannot be unmerged)
        l.data = rng.choice([-1.0, 1.0], l.shape) * rng.uniform(0.1, 3.0, l.shape)
    else:
        layer = LoRALinear(base)
        r = draw(st.integers(1, min(n_in, n_out)))
        layer.update_layer("a", r, draw(st.floats(0.5, 16.0)), use_rslora=draw(st.booleans()),
                           init_lora_weights=False, use_dora=True)
        m = layer.lora_magnitude_vector["a"].weight
        m.data = m.data * rng.uniform(0.5, 2.0, m.shape)  # f = m / ||W + ΔW|| away from 1
    x = Tensor(rng.standard_normal((draw(st.integers(1, 3)), 3, n_in)))  # (B, T, in)
    return layer.eval(), x


@FAST
@given(case=st.sampled_from(["ia3", "dora"]).flatmap(layers))
def test_layer_merged_equals_unmerged_and_unmerge_restores_the_layer(case):
    layer, x = case
    W0 = layer.base_layer.weight.numpy().copy()
    b0 = None if layer.base_layer.bias is None else layer.base_layer.bias.numpy().copy()
    unmerged = layer(x).numpy()
    layer.merge()
    assert layer.merged and max_err(layer(x).numpy(), unmerged) < 1e-10
    merged_W = layer.base_layer.weight.numpy().copy()
    layer.unmerge()
    assert not layer.merged and max_err(layer.base_layer.weight.numpy(), W0) < 1e-12
    assert not np.allclose(merged_W, W0)  # the merge did change W
    if b0 is not None:  # IA3 scales the bias of an output-scaled layer and divides it back; DoRA leaves it
        assert max_err(layer.base_layer.bias.numpy(), b0) < 1e-12
    assert max_err(layer(x).numpy(), unmerged) < 1e-10


@FAST
@given(case=st.sampled_from(["ia3", "dora"]).flatmap(layers), init=st.sampled_from([True, "gaussian"]))
def test_layer_at_default_init_is_exactly_the_base_layer(case, init):
    """Bit for bit. IA3: l = 1 and x * 1 = x exactly. DoRA: B = 0 makes ΔW exactly 0, so
    m = ||W + 0|| is computed by the very same norm as the forward's, f = m / m = 1 exactly,
    and y + (1 - 1) W x + 1 * 0 = y."""
    layer, x = case
    if isinstance(layer, IA3Linear):
        layer.update_layer("default")
    else:
        layer.update_layer("default", 2, 8.0, init_lora_weights=init, use_dora=True)
    layer.active_adapter = "default"
    assert np.array_equal(layer(x).numpy(), layer.base_layer(x).numpy())


# ---------------------------------------------------------------------------
# properties: small GPTs
# ---------------------------------------------------------------------------

TARGETS = ["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "lm_head"]  # lm_head: tied to transformer.wte


@st.composite
def gpt_configs(draw, method):
    """A small random GPT (float64) with one to three adapters of the method. The tied head is
    among the targets, or, if no adapter targets it, may be a modules_to_save copy."""
    n_embd, n_layer, seed = draw(st.sampled_from([8, 12])), draw(st.integers(1, 2)), draw(st.integers(0, 2**16))
    target_lists = [draw(st.lists(st.sampled_from(TARGETS), min_size=1, max_size=4, unique=True))
                    for _ in range(draw(st.integers(1, 3)))]
    savable = [None, ["ln_f"]] + ([] if any("lm_head" in t for t in target_lists) else [["lm_head"]])

    def config(targets):
        mts = draw(st.sampled_from(savable))
        if method == "ia3":  # each layer's choice of input or output is fixed by the first adapter: keep one
            return IA3Config(target_modules=targets, feedforward_modules=[t for t in targets if t in ("mlp.c_proj", "mlp.c_fc")],
                             modules_to_save=mts)
        return LoraConfig(r=draw(st.integers(1, 4)), lora_alpha=draw(st.floats(0.5, 16.0)), use_rslora=draw(st.booleans()),
                          target_modules=targets, use_dora=True, init_lora_weights=False, modules_to_save=mts)

    configs = [config(targets) for targets in target_lists]
    return n_embd, n_layer, seed, configs, draw(st.integers(1, 3)), draw(st.integers(1, 8))


class GPTCase:
    def __init__(self, n_embd, n_layer, seed, configs, batch, length):
        self.seed, self.configs = seed, configs
        self.names = ["default"] + [f"a{i}" for i in range(1, len(configs))]
        self.sizes = dict(vocab_size=23, block_size=8, n_layer=n_layer, n_head=2, n_embd=n_embd)
        self.idx = np.random.default_rng(seed).integers(0, 23, size=(batch, length))

    def base(self) -> GPT:
        return tiny_gpt(np.float64, self.seed, **self.sizes)

    def model(self, perturb=True) -> PeftModel:
        model = None
        for name, config in zip(self.names, copy.deepcopy(self.configs)):
            if model is None:
                model = get_peft_model(self.base(), config)
            else:
                model.add_adapter(name, config)
        if perturb:  # every adapter's arrays (frozen or not) away from their initial values
            rng = np.random.default_rng(self.seed + 1)
            for pname, p in model.named_parameters():
                if any(k in pname for k in (".ia3_l.", ".lora_magnitude_vector.", ".modules_to_save.")):
                    p.data = p.data + 0.1 * rng.standard_normal(p.shape)
        return model


def gpt_cases(method):
    return gpt_configs(method).map(lambda args: GPTCase(*args))


METHODS = st.sampled_from(["ia3", "dora"])


@GPT_SETTINGS
@given(case=METHODS.flatmap(gpt_cases), untie=st.booleans())
def test_gpt_merged_equals_unmerged(case, untie):
    """A merge into the tied head is refused, nothing changed (docs/lora.md, "Tied weights");
    untied, or elsewhere, merged == unmerged, and the token embedding stays as it was."""
    model = case.model()
    if untie:
        untie_head(model)
    wte = model.get_base_model().transformer.wte.weight.numpy().tobytes()
    for name in case.names:
        model.set_adapter(name)
        if merges_into_tied_head(model, name):
            assert_refused_as_tied(model.merge_adapter, model)
            continue
        unmerged = model(case.idx)[0].numpy()
        model.merge_adapter()
        assert max_err(model(case.idx)[0].numpy(), unmerged) < 1e-10, name
        assert model.get_base_model().transformer.wte.weight.numpy().tobytes() == wte
        model.unmerge_adapter()
        assert max_err(model(case.idx)[0].numpy(), unmerged) < 1e-10, name


@GPT_SETTINGS
@given(case=METHODS.flatmap(gpt_cases), untie=st.booleans())
def test_gpt_merge_and_unload_equals_the_adapted_model(case, untie):
    model = case.model()
    model.set_adapter(case.names[-1])
    if untie:
        untie_head(model)
    if merges_into_tied_head(model, case.names[-1]):
        assert_refused_as_tied(model.merge_and_unload, model)
        untie_head(model)  # the way out the error names
    wte = model.get_base_model().transformer.wte.weight.numpy().tobytes()
    adapted = model(case.idx)[0].numpy()
    plain = model.merge_and_unload()
    assert not any(isinstance(m, (IA3Linear, LoRALinear)) for m in plain.modules())
    assert "modules_to_save" not in " ".join(n for n, _ in plain.named_modules())
    assert max_err(plain(case.idx)[0].numpy(), adapted) < 1e-10
    assert plain.transformer.wte.weight.numpy().tobytes() == wte


@GPT_SETTINGS
@given(case=METHODS.flatmap(gpt_cases))
def test_gpt_at_default_init_is_exactly_the_base_model(case):
    expected = case.base()(case.idx)[0].numpy()
    for config in case.configs:
        if isinstance(config, LoraConfig):
            config.init_lora_weights = True
    model = case.model(perturb=False)
    for name in case.names:
        model.set_adapter(name)
        assert np.array_equal(model(case.idx)[0].numpy(), expected), name


@GPT_SETTINGS
@given(case=METHODS.flatmap(gpt_cases), data=st.data())
def test_gpt_mixed_batch_equals_each_row_alone(case, data):
    """PEFT refuses adapter_names with DoRA; minilora runs each row's own DoRA update."""
    model = case.model()
    names = data.draw(st.lists(st.sampled_from([*case.names, BASE]), min_size=len(case.idx), max_size=len(case.idx)))
    mixed = model(case.idx, adapter_names=names)[0].numpy()
    for row, name in enumerate(names):
        if name == BASE:
            with model.disable_adapter():
                alone = model(case.idx[row:row + 1])[0].numpy()
        else:
            model.set_adapter(name)
            alone = model(case.idx[row:row + 1])[0].numpy()
        assert max_err(mixed[row], alone[0]) < 1e-10, (row, name)


@GPT_SETTINGS
@given(case=METHODS.flatmap(gpt_cases))
def test_gpt_save_then_load_gives_identical_outputs(case, tmp_path_factory):
    model = case.model()
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    loaded = PeftModel.from_pretrained(case.base(), folder)
    for name in case.names[1:]:
        loaded.load_adapter(folder / name, name)
    for name in case.names:
        model.set_adapter(name)
        loaded.set_adapter(name)
        assert np.array_equal(model(case.idx)[0].numpy(), loaded(case.idx)[0].numpy()), name


# ---------------------------------------------------------------------------
# bad input: a clear error, and the model exactly as before
# ---------------------------------------------------------------------------


def test_ia3_targets_that_match_nothing_list_the_modules_that_exist():
    model = tiny_gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"target_modules=\['q_proj', 'v_proj'\] matches no module of GPT") as err:
        get_peft_model(model, IA3Config(target_modules=["q_proj", "v_proj"], feedforward_modules=[]))
    for name in ("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj", "lm_head"):
        assert name in str(err.value)
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match="'transformer.ln_f' is a LayerNorm; IA3 adapts Linear layers only"):
        get_peft_model(model, IA3Config(target_modules=["c_attn", "ln_f"], feedforward_modules=[]))
    assert_unchanged(model, before)


def test_feedforward_modules_must_be_targets_as_in_peft():
    with pytest.raises(ValueError, match="should be a subset of `target_modules`"):
        peft.IA3Config(target_modules=["c_attn"], feedforward_modules=["c_fc"])
    with pytest.raises(ValueError, match=r"feedforward_modules must be a subset of target_modules: \['c_fc'\] not in"):
        IA3Config(target_modules=["c_attn"], feedforward_modules=["c_fc"])
    # also when the targets are GPT-2's defaults, filled in at injection, or the config was edited since
    model = tiny_gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"\['c_fc'\] not in target_modules=\['c_attn', 'mlp.c_proj'\]"):
        get_peft_model(model, IA3Config(feedforward_modules=["c_fc"]))
    assert_unchanged(model, before)


def test_an_ia3_adapter_disagreeing_on_input_or_output_is_refused():
    model = get_peft_model(tiny_gpt(), IA3Config(target_modules=["c_fc"], feedforward_modules=[]))
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"'transformer.h.0.mlp.c_fc' scales its output .* would scale its input"):
        model.add_adapter("other", IA3Config(target_modules=["c_fc", "c_attn"], feedforward_modules=["c_fc"]))
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", ["ia3-gpt2-defaults", "dora-c_attn"])
def test_an_adapter_for_another_width_is_refused_naming_key_and_shapes(name, tmp_path):
    minilora_adapter(tiny_gpt(n_embd=24), name).save_pretrained(tmp_path)
    model = tiny_gpt()
    before = snapshot(model)
    with pytest.raises(ValueError) as err:
        PeftModel.from_pretrained(model, tmp_path)
    message = str(err.value)
    assert "does not fit this model" in message
    if name.startswith("ia3"):
        assert "transformer.h.0.attn.c_attn.ia3_l' has shape (72, 1), but the model implies (48, 1)" in message
        assert "transformer.h.1.mlp.c_proj.ia3_l' has shape (1, 96), but the model implies (1, 64)" in message
    else:
        assert "transformer.h.0.attn.c_attn.lora_magnitude_vector' has shape (72,), but the model implies (48,)" in message
    assert_unchanged(model, before)


def test_an_ia3_config_that_its_weights_do_not_fit_is_refused(tmp_path):
    """exclude_modules is honoured (PEFT's rule, tests/test_peft_rules.py): a config edited to exclude a layer
    whose vector the file holds is a mismatch, and leaves the model as it was."""
    minilora_adapter(tiny_gpt(), "ia3-gpt2-defaults").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["exclude_modules"] = ["h.0.attn.c_attn"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    model = tiny_gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"unexpected key 'base_model\.model\.transformer\.h\.0\.attn\.c_attn\.ia3_l'"):
        PeftModel.from_pretrained(model, tmp_path)
    assert_unchanged(model, before)


def test_unmerging_a_zero_scale_is_refused_and_changes_nothing():
    """A zero in IA3's l or DoRA's m wipes rows of W when merged; dividing it back is impossible
    (PEFT's IA3 divides by l + 1e-8 and returns a wrong W instead)."""
    for config in (IA3Config(), LoraConfig(target_modules=["c_attn", "c_fc"], use_dora=True, init_lora_weights=False)):
        model = get_peft_model(tiny_gpt(), config)
        layer = model.get_base_model().transformer.h[1].attn.c_attn
        scale = layer.ia3_l["default"] if isinstance(layer, IA3Linear) else layer.lora_magnitude_vector["default"].weight
        scale.data[3] = 0.0
        model.merge_adapter()
        before = snapshot(model)
        with pytest.raises(ValueError, match="cannot unmerge .* (ia3_l has zeros|magnitude is 0 in rows \\[3\\])"):
            model.unmerge_adapter()
        assert_unchanged(model, before)


def test_dora_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="enable_lora works with plain LoRA only"):
        LoraConfig(target_modules=["c_attn"], enable_lora=[True, False, True], use_dora=True)
    model = get_peft_model(tiny_gpt(), LoraConfig(target_modules=["c_attn"], use_dora=True))
    model.add_adapter("other", LoraConfig(target_modules=["c_attn"], use_dora=True))
    before = snapshot(model)
    with pytest.raises(ValueError, match="does not combine DoRA adapters"):
        model.add_weighted_adapter(["default", "other"], [0.5, 0.5], "mix", combination_type="cat")
    assert_unchanged(model, before)
