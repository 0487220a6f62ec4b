"""LoHa's and LoKr's own parts: PEFT's factorization, the factor shapes, the float32 scaling, the
dropouts, and the refusal of GPT-2's Conv1D layers.

``test_peft_methods.py`` checks both against PEFT (outputs, merges, files, gradients) on BERT and
LLaMA. Here: ``factorization`` equal to PEFT's for every dimension and factor, and the factors
LoKr creates (whole or as rank-r products) equal to PEFT's for every shape and rank (hypothesis
properties); LoHa's ΔW against PEFT's when α / r is not a float32 number; rank and module dropout
as PEFT defines them; and Conv1D targets refused, naming the layer, as PEFT refuses them.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from minilora import Tensor, manual_seed, nn  # noqa: E402
from minilora.models import to_transformers  # noqa: E402
from minilora.models.llama_hf import to_transformers as llama_to_transformers  # noqa: E402
from minilora.peft import LoHaConfig, LoKrConfig, PeftModel, get_peft_model  # noqa: E402
from minilora.peft.lycoris import LoHaLinear, LoKrLinear, factorization  # noqa: E402
from peft_helpers import assert_unchanged, perturb_trainable, snapshot, tiny_gpt, tiny_llama  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Unexpected keyword arguments:UserWarning")


@given(dimension=st.integers(1, 5000), factor=st.one_of(st.just(-1), st.integers(1, 80)))
def test_factorization_is_peft_s(dimension, factor):
    from peft.tuners.lokr.layer import factorization as peft_factorization

    m, n = factorization(dimension, factor)
    assert (m, n) == peft_factorization(dimension, factor)
    assert m * n == dimension and (m <= n or factor > 0)  # a dividing factor comes first, whatever its size


@given(out=st.integers(1, 40), n_in=st.integers(1, 40), r=st.integers(1, 12), decompose_both=st.booleans(),
       factor=st.sampled_from([-1, 2, 3, 4]), init=st.sampled_from([True, False, "lycoris"]))
def test_lokr_creates_peft_s_factors(out, n_in, r, decompose_both, factor, init):
    """The parameters (whole W1 / W2, or their rank-r factors) and their shapes, for any layer
    shape and rank; and which of them starts at zero."""
    from peft.tuners.lokr.layer import Linear as PeftLoKr

    config = dict(r=r, alpha=r, decompose_both=decompose_both, decompose_factor=factor, init_weights=init)
    ours = LoKrLinear(nn.Linear(n_in, out, dtype=np.float64))
    ours.update_layer("a", r, r, LoKrConfig(**config))
    theirs = PeftLoKr(torch.nn.Linear(n_in, out), "a", peft.LoKrConfig(**config), r=r, alpha=r)
    ours_parts = {p: tuple(getattr(ours, p)["a"].shape) for p in ours.adapter_parts if "a" in getattr(ours, p)}
    theirs_parts = {p: tuple(getattr(theirs, p)["a"].shape) for p in theirs.adapter_layer_names if "a" in getattr(theirs, p)}
    assert ours_parts == theirs_parts
    for part in ours_parts:
        assert bool(np.all(getattr(ours, part)["a"].numpy() == 0)) == bool(torch.all(getattr(theirs, part)["a"] == 0))
    assert ours.delta_weight("a").shape == (out, n_in)


def test_loha_scaling_that_float32_cannot_hold_is_within_2_to_the_minus_24_of_peft():
    """PEFT multiplies LoHa's ΔW by ``torch.tensor(alpha / r)``, a float32 scalar, also in a float64
    model: for alpha / r = 4 / 3 its ΔW is off by the rounding of 4 / 3 to float32, a relative
    error of at most 2^-24. minilora keeps alpha / r in float64. So |ours - PEFT's| <= 2^-24 |ΔW|
    plus the float64 rounding of the two products (γ_{2r+2} |ΔW|_abs), and no closer: the two differ."""
    fields = dict(r=3, alpha=4, target_modules=["q_proj", "down_proj"], init_weights=False)
    ours = get_peft_model(tiny_llama(), LoHaConfig(**fields))
    perturb_trainable(ours)
    theirs = {}
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        ours.save_pretrained(folder)
        loaded = peft.PeftModel.from_pretrained(llama_to_transformers(tiny_llama()), folder)
        theirs = dict(loaded.base_model.model.named_modules())
    u = 2.0**-53
    differ = False
    for name, layer in ours.base_model.adapter_layers():
        delta = layer.delta_weight("default")
        peft_delta = theirs[name].get_delta_weight("default").detach().numpy()
        W1a, W1b, W2a, W2b = (np.abs(getattr(layer, p)["default"].numpy()) for p in layer.adapter_parts)
        absolute = (W1a @ W1b) * (W2a @ W2b) * 4 / 3
        gamma = (2 * 3 + 2) * u / (1 - (2 * 3 + 2) * u)
        assert np.all(np.abs(delta - peft_delta) <= 2.0**-24 * np.abs(delta) + 2 * gamma * absolute), name
        differ |= not np.array_equal(delta, peft_delta)
    assert differ


def test_rank_and_module_dropout_act_as_in_peft():
    """In training, rank_dropout keeps each row of ΔW or zeroes it, the kept rows scaled by
    out / kept (LoHa always; LoKr with rank_dropout_scale, else 1); module_dropout skips the whole
    update for a step. In eval mode neither acts."""
    manual_seed(0)
    x = Tensor(np.random.default_rng(0).standard_normal((3, 8)))  # (B, in)
    for layer, config, scaled in ((LoHaLinear(nn.Linear(8, 12, dtype=np.float64)), LoHaConfig(rank_dropout=0.5, init_weights=False), True),
                                  (LoKrLinear(nn.Linear(8, 12, dtype=np.float64)), LoKrConfig(rank_dropout=0.5, init_weights=False), False),
                                  (LoKrLinear(nn.Linear(8, 12, dtype=np.float64)), LoKrConfig(rank_dropout=0.5, init_weights=False, rank_dropout_scale=True), True)):
        layer.update_layer("a", 2, 2, config)
        full = (x.numpy() @ layer.delta_weight("a").T)  # (B, out)
        layer.train()
        dropped = layer.delta_output(x, "a").numpy()
        kept = np.array([not np.allclose(dropped[:, j], 0) for j in range(12)])
        assert 0 < kept.sum() < 12
        factor = 12 / kept.sum() if scaled else 1.0
        assert np.allclose(dropped[:, kept], factor * full[:, kept], rtol=1e-12, atol=1e-14)
        layer.eval()
        assert np.allclose(layer.delta_output(x, "a").numpy(), full, rtol=1e-12, atol=1e-14)
    layer = LoHaLinear(nn.Linear(8, 12, dtype=np.float64))
    layer.update_layer("a", 2, 2, LoHaConfig(module_dropout=0.5, init_weights=False))
    layer.train()
    skipped = [bool(np.all(layer.delta_output(x, "a").numpy() == 0)) for _ in range(40)]
    assert 0 < sum(skipped) < 40


@pytest.mark.parametrize("config_cls", [LoHaConfig, LoKrConfig])
def test_gpt2_conv1d_targets_are_refused_naming_the_layer_as_peft_refuses_them(config_cls):
    """PEFT: ``TypeError: Target module of type Conv1D not supported``. minilora: a TypeError naming
    the first such layer and listing them, and the model exactly as it was. GPT-2's lm_head is an
    nn.Linear in transformers: both accept it."""
    peft_cls = getattr(peft, config_cls.__name__)
    with pytest.raises(TypeError, match="Conv1D'> not supported"):
        peft.get_peft_model(to_transformers(tiny_gpt()), peft_cls(target_modules=["c_attn", "c_fc"]))
    model = tiny_gpt()
    before = snapshot(model)
    method = config_cls.__name__.removesuffix("Config")
    with pytest.raises(TypeError, match=rf"{method} cannot adapt transformer\.h\.0\.attn\.c_attn: in Hugging Face's "
                                        r"GPT-2 it is a Conv1D layer .* Conv1D targets here: transformer\.h\.0\.attn\.c_attn, "
                                        r"transformer\.h\.0\.mlp\.c_fc, transformer\.h\.1"):
        get_peft_model(model, config_cls(target_modules=["c_attn", "c_fc"]))
    assert_unchanged(model, before)
    with pytest.raises(TypeError, match="cannot adapt transformer.h.0.attn.c_attn"):
        get_peft_model(model, config_cls())  # PEFT's default target for GPT-2 is c_attn: refused too
    assert_unchanged(model, before)
    head = get_peft_model(tiny_gpt(), config_cls(r=2, target_modules=["lm_head"]))
    assert [n for n, _ in head.base_model.adapter_layers()] == ["lm_head"]
    peft.get_peft_model(to_transformers(tiny_gpt()), peft_cls(r=2, target_modules=["lm_head"]))


def test_a_peft_lokr_file_with_r_larger_than_every_dimension_loads(tmp_path):
    """LoKr's r sizes no tensor when both factors are kept whole, so a file may declare an r larger
    than any of its dimensions (here 64 on 16-wide layers) -- the size check must let it through."""
    theirs = peft.get_peft_model(llama_to_transformers(tiny_llama()), peft.LoKrConfig(r=64, target_modules=["q_proj"]))
    theirs.save_pretrained(tmp_path)
    model = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert {p for _, layer in model.base_model.adapter_layers() for p in layer.adapter_parts
            if "default" in getattr(layer, p)} == {"lokr_w1", "lokr_w2"}
    assert math.prod(model.base_model.adapter_layers()[0][1].lokr_w1["default"].shape) < 64
