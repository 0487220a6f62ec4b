"""VeRA's own parts: the shared projections, PEFT's projections in a file, and the refusals.

``test_peft_methods.py`` checks VeRA's outputs, merges, files and gradients against PEFT on all
three bases (a PEFT adapter is loaded with PEFT's projections from its ``save_projection=True``
file). Here: how minilora draws its projections (NumPy; PEFT's torch stream cannot be
reproduced), that one pair is shared by every layer and sliced to each, the parameter count's
closed form, that a PEFT file's state dict comes back byte for byte, and what is refused:
``save_projection=False`` files and adapters with different ``projection_prng_key``s.
"""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from safetensors.numpy import load_file  # noqa: E402

from minilora.models import to_transformers  # noqa: E402
from minilora.peft import PeftModel, VeraConfig, get_peft_model  # noqa: E402
from minilora.peft.vera import draw_projections  # noqa: E402
from peft_helpers import C, N_LAYER, assert_unchanged, ids, perturb_trainable_torch, snapshot, tiny_gpt  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning"),
              pytest.mark.filterwarnings("ignore:Specified to not save vera_A:UserWarning"),
              pytest.mark.filterwarnings("ignore:Specified to not load vera_A:UserWarning"),
              pytest.mark.filterwarnings("ignore:Unexpected keyword arguments:UserWarning")]


def test_the_projections_are_drawn_once_kaiming_uniform_and_shared_by_every_layer():
    r = 7
    model = get_peft_model(tiny_gpt(), VeraConfig(r=r, target_modules=["c_attn", "c_fc", "mlp.c_proj"]))
    A, B = model.base_model.projections["default"]
    assert A.shape == (r, 4 * C) and B.shape == (4 * C, r)  # the largest in (mlp.c_proj's) and out (c_fc's)
    assert np.abs(A).max() <= math.sqrt(6 / (4 * C)) and np.abs(B).max() <= math.sqrt(6 / r)
    assert np.abs(A).max() > 0.9 * math.sqrt(6 / (4 * C))  # uniform over the whole interval
    again = draw_projections(0, r, 4 * C, 4 * C, A.dtype)
    assert np.array_equal(again[0], A) and np.array_equal(again[1], B)  # the key fixes the draw
    assert not np.array_equal(draw_projections(1, r, 4 * C, 4 * C, A.dtype)[0], A)
    for name, layer in model.base_model.adapter_layers():
        assert layer.projections is model.base_model.projections  # one pair, not a copy per layer
        sliced_A, sliced_B = layer.sliced("default")
        assert np.array_equal(sliced_A.numpy(), A[:, : layer.in_features])
        assert np.array_equal(sliced_B.numpy(), B[: layer.out_features])
        assert np.all(layer.vera_lambda_b["default"].numpy() == 0)  # PEFT's init: λ_b = 0, λ_d = d_initial
        assert np.all(layer.vera_lambda_d["default"].numpy() == 0.1)
    x = ids()
    with model.disable_adapter():
        base = model(x)[0].numpy()
    assert np.array_equal(model(x)[0].numpy(), base)  # λ_b = 0: exactly the base model


def test_the_trained_parameters_are_out_plus_r_per_layer():
    """VeRA trains λ_b (out) and λ_d (r) per layer: for c_attn and c_fc, L (3C + r + 4C + r)."""
    r = 5
    model = get_peft_model(tiny_gpt(), VeraConfig(r=r, target_modules=["c_attn", "c_fc"]))
    assert model.get_nb_trainable_parameters()[0] == N_LAYER * (3 * C + r + 4 * C + r)


def test_a_peft_file_comes_back_byte_for_byte(tmp_path):
    """PEFT's projections, loaded from its file, are the ones minilora uses and saves again."""
    theirs = peft.get_peft_model(to_transformers(tiny_gpt()), peft.VeraConfig(r=4, target_modules=["c_attn", "c_fc"],
                                                                            init_weights=False))
    perturb_trainable_torch(theirs)
    theirs.save_pretrained(tmp_path / "peft")
    ours = PeftModel.from_pretrained(tiny_gpt(), tmp_path / "peft")
    ours.save_pretrained(tmp_path / "ours")
    original, again = load_file(tmp_path / "peft" / "adapter_model.safetensors"), load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert {k: v.tobytes() for k, v in again.items()} == {k: v.tobytes() for k, v in original.items()}
    assert np.array_equal(ours.base_model.projections["default"][0], original["base_model.vera_A"])


def test_a_file_without_projections_is_refused_saying_why(tmp_path):
    theirs = peft.get_peft_model(to_transformers(tiny_gpt()), peft.VeraConfig(r=4, target_modules=["c_attn"],
                                                                            save_projection=False))
    theirs.save_pretrained(tmp_path)
    assert "base_model.vera_A" not in load_file(tmp_path / "adapter_model.safetensors")
    assert json.loads((tmp_path / "adapter_config.json").read_text())["save_projection"] is False
    model = tiny_gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"save_projection=False: its file holds no vera_A / vera_B.*torch's generator"):
        PeftModel.from_pretrained(model, tmp_path)
    assert_unchanged(model, before)
    ours = get_peft_model(tiny_gpt(), VeraConfig(r=4, target_modules=["c_attn"], save_projection=False))
    with pytest.raises(ValueError, match="minilora neither writes nor reads such a file"):
        ours.save_pretrained(tmp_path / "ours")
    assert not (tmp_path / "ours").exists()


def test_adapters_with_different_keys_are_refused_as_peft_refuses_them():
    theirs = peft.get_peft_model(to_transformers(tiny_gpt()), peft.VeraConfig(r=4, target_modules=["c_attn"]))
    with pytest.raises(ValueError, match="PRNG initialisation key must be the same for all adapters"):
        theirs.add_adapter("other", peft.VeraConfig(r=4, target_modules=["c_attn"], projection_prng_key=1))
    model = get_peft_model(tiny_gpt(), VeraConfig(r=4, target_modules=["c_attn"]))
    before = snapshot(model)
    with pytest.raises(ValueError, match="adapter 'default' has 0, the new one 1"):
        model.add_adapter("other", VeraConfig(r=4, target_modules=["c_attn"], projection_prng_key=1))
    assert_unchanged(model, before)
    assert sorted(model.base_model.projections) == ["default"]
    model.add_adapter("other", VeraConfig(r=6, target_modules=["c_attn", "c_fc"]))  # the same key: accepted
    model.set_adapter("other")
    assert model.base_model.projections["other"][0].shape == (6, C)
