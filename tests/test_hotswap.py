"""Hotswapping (minilora/peft/hotswap.py) against a fresh load and against PEFT's ``hotswap_adapter``.

The tiny random GPT-2 of ``peft_helpers`` carries a first adapter; others, of smaller and
larger ranks, other scalings and fewer targets, are swapped in. After each swap the logits
equal those of the new adapter loaded afresh, and those of PEFT's ``hotswap_adapter`` on the
transformers twin, within 1e-12 relative in float64 (the same products in another order:
measured ~1e-16). A refused swap raises what PEFT raises and leaves the model bit for bit.

One difference, PEFT's: its ``hotswap_adapter_from_state_dict`` looks a layer's
``rank_pattern``/``alpha_pattern`` entry up by the parameter's full key
(``...c_fc.lora_A.default.weight``), which no module pattern matches at its end, so PEFT
0.21.2 scales every layer by the config's ``r`` and ``lora_alpha`` after a swap, unlike its
own fresh load. minilora scales as the fresh load does; the last test shows the difference.
"""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from peft.utils import hotswap as peft_hotswap  # noqa: E402

from minilora.models import to_transformers  # noqa: E402
from minilora.peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from minilora.peft.hotswap import hotswap_adapter, prepare_model_for_compiled_hotswap  # noqa: E402
from peft_helpers import assert_unchanged, ids, perturb_trainable, rel_err, snapshot, tiny_gpt  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # PEFT on our files' save id

ADAPTERS = {
    "first": dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"]),
    "smaller": dict(r=2, lora_alpha=3, target_modules=["c_attn"]),  # c_fc left out: zeroed there
    "larger": dict(r=6, lora_alpha=5, target_modules=["c_attn", "c_fc"]),
    "patterned": dict(r=6, lora_alpha=5, target_modules=["c_attn", "c_fc"], rank_pattern={"c_fc": 3}),
    "wider": dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc", "c_proj"]),  # new targets: refused
    "rslora": dict(r=4, lora_alpha=8, target_modules=["c_attn"], use_rslora=True),  # another scaling rule: refused
}
X = ids(3, 10, seed=5)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    for seed, (name, fields) in enumerate(ADAPTERS.items()):
        model = get_peft_model(tiny_gpt(), LoraConfig(init_lora_weights=False, **copy.deepcopy(fields)))
        perturb_trainable(model, seed=seed + 1)
        model.save_pretrained(root / name)
    return root


def logits(model, x=X) -> np.ndarray:
    return model(x)[0].numpy()


def peft_logits(model, x=X) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(x)).logits.numpy()


def fresh(folders, name) -> np.ndarray:
    return logits(PeftModel.from_pretrained(tiny_gpt(), folders / name))


@pytest.mark.parametrize("prepare", [False, True], ids=["as-loaded", "prepared"])
def test_a_swap_equals_a_fresh_load_and_peft_s_swap(folders, prepare):
    ours = PeftModel.from_pretrained(tiny_gpt(), folders / "first")
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt()), folders / "first").eval()
    if prepare:
        prepare_model_for_compiled_hotswap(ours, target_rank=6)
        peft_hotswap.prepare_model_for_compiled_hotswap(theirs, target_rank=6, check_compiled="ignore")
        for m in theirs.modules():  # PEFT's scaling tensors are float32 (torch's default) in a float64 model
            if isinstance(m, peft.tuners.lora.LoraLayer):
                m.scaling = {key: value.double() for key, value in m.scaling.items()}
        layer = ours.base_model.model.transformer.h[0].attn.c_attn
        arrays, scaling = (layer.lora_A["default"].weight.data, layer.lora_B["default"].weight.data), layer.scaling["default"]
        assert arrays[0].shape == (6, 16) and arrays[1].shape == (48, 6) and scaling.shape == ()
        assert rel_err(logits(ours), fresh(folders, "first")) < 1e-12  # zero padding changes nothing
    for name in ("smaller", "larger", "patterned", "first"):
        hotswap_adapter(ours, folders / name, "default")
        peft_hotswap.hotswap_adapter(theirs, str(folders / name), "default", torch_device="cpu")
        expected = fresh(folders, name)
        assert rel_err(logits(ours), expected) < 1e-12, name
        if name != "patterned":  # PEFT's pattern lookup: the last test
            assert rel_err(peft_logits(theirs), expected) < 1e-12, name
    if prepare:  # up to the target rank, every swap wrote into the same arrays
        assert layer.lora_A["default"].weight.data is arrays[0] and layer.lora_B["default"].weight.data is arrays[1]
        assert layer.scaling["default"] is scaling


def test_a_layer_the_new_adapter_lacks_gets_no_update(folders):
    ours = PeftModel.from_pretrained(tiny_gpt(), folders / "first")
    hotswap_adapter(ours, folders / "smaller", "default")
    c_fc = ours.base_model.model.transformer.h[1].mlp.c_fc
    assert not c_fc.lora_A["default"].weight.data.any() and not c_fc.lora_B["default"].weight.data.any()


@pytest.mark.parametrize("name, error, message", [
    ("wider", RuntimeError, r"Hot swapping the adapter did not succeed, unexpected keys found: "
                            r"base_model\.model\.transformer\.h\.0\.attn\.c_proj\.lora_A\.(default\.)?weight, "),
    ("rslora", ValueError, r"Configs are incompatible: for use_rslora, False != True"),
])
def test_a_swap_peft_refuses_is_refused_and_changes_nothing(folders, name, error, message):
    ours = PeftModel.from_pretrained(tiny_gpt(), folders / "first")
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt()), folders / "first").eval()
    before = snapshot(ours)
    with pytest.raises(error, match=message):
        hotswap_adapter(ours, folders / name, "default")
    assert_unchanged(ours, before)
    with pytest.raises(error, match=message):
        peft_hotswap.hotswap_adapter(theirs, str(folders / name), "default", torch_device="cpu")


def test_a_merged_adapter_is_refused_as_peft_refuses_it(folders):
    ours = PeftModel.from_pretrained(tiny_gpt(), folders / "first")
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt()), folders / "first").eval()
    ours.merge_adapter()
    theirs.merge_adapter()
    before = snapshot(ours)
    message = r"Cannot hot-swap adapter 'default' because it is currently merged into the base weights"
    with pytest.raises(ValueError, match=message):
        hotswap_adapter(ours, folders / "smaller", "default")
    assert_unchanged(ours, before)
    with pytest.raises(ValueError, match=message):
        peft_hotswap.hotswap_adapter(theirs, str(folders / "smaller"), "default", torch_device="cpu")


def test_dora_and_unknown_names_are_refused_by_name(folders, tmp_path):
    model = get_peft_model(tiny_gpt(), LoraConfig(r=2, use_dora=True, target_modules=["c_attn"]))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"hotswap swaps plain LoRA adapters, not DoRA \(use_dora=True\)"):
        hotswap_adapter(model, tmp_path, "default")
    ours = PeftModel.from_pretrained(tiny_gpt(), folders / "first")
    with pytest.raises(ValueError, match=r"no adapter named 'other' to swap; adapters: \['default'\]"):
        hotswap_adapter(ours, folders / "smaller", "other")
    with pytest.raises(ValueError, match=r"the original rank is larger \(4\)"):
        prepare_model_for_compiled_hotswap(ours, target_rank=2)


def test_peft_s_swap_ignores_rank_pattern_in_the_scaling(folders):
    """PEFT 0.21.2 (module docstring): after swapping in an adapter with rank_pattern {"c_fc": 3},
    PEFT scales c_fc by alpha / r = 5/6, its fresh load and minilora by alpha / 3. When this fails,
    PEFT has fixed it: compare "patterned" with PEFT in the test above too."""
    ours = PeftModel.from_pretrained(tiny_gpt(), folders / "first")
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt()), folders / "first").eval()
    hotswap_adapter(ours, folders / "patterned", "default")
    peft_hotswap.hotswap_adapter(theirs, str(folders / "patterned"), "default", torch_device="cpu")
    loaded = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt()), folders / "patterned")
    path = "transformer.h.0.mlp.c_fc"
    assert ours.base_model.model.get_submodule(path).scaling["default"] == 5 / 3
    assert loaded.base_model.model.get_submodule(path).scaling["default"] == 5 / 3
    assert theirs.base_model.model.get_submodule(path).scaling["default"] == 5 / 6
