"""LoRA, DoRA and (IA)^3 on LLaMA against Hugging Face PEFT over ``transformers.LlamaForCausalLM``.

A tiny random LLaMA (``peft_helpers.tiny_llama``: vocab 61, width 16, 2 layers, 4 query
heads sharing 2 key/value heads, untied head) in minilora and its ``to_transformers`` twin
get the same adapter with every trained array moved off its init, as in ``test_lora.py``.
Configs without ``target_modules`` take PEFT's defaults for LLaMA (LoRA: q_proj, v_proj;
IA3: k_proj, v_proj, down_proj with down_proj feed-forward); both libraries must pick the
same modules. The float64 PEFT model computes RMSNorm and RoPE in float64
(``peft_helpers.llama_in_float64``) so that it is a float64 reference.
"""

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from minilora.models.llama_hf import to_transformers  # noqa: E402
from minilora.peft import IA3Config, LoraConfig, PeftModel  # noqa: E402
import peft_helpers as helpers  # noqa: E402
from peft_helpers import (  # noqa: E402
    ids,
    llama_in_float64,
    loss_and_grads_against_peft,
    max_err,
    peft_logits,
    rel_err,
    tiny_llama,
)

pytestmark = [pytest.mark.filterwarnings("ignore:Unmerge result can be inaccurate:UserWarning"),
              pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")]

# (minilora config class, PEFT's class name, fields)
CONFIGS = {
    "lora-defaults": (LoraConfig, "LoraConfig", dict(r=4, lora_alpha=8)),
    "lora-all-linear-rslora": (LoraConfig, "LoraConfig", dict(
        r=2, lora_alpha=6, use_rslora=True,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])),
    "dora-defaults": (LoraConfig, "LoraConfig", dict(r=3, lora_alpha=5, use_dora=True)),
    "ia3-defaults": (IA3Config, "IA3Config", dict()),
}


def minilora_adapter(base, name: str, seed=1) -> PeftModel:
    config_cls, _, fields = CONFIGS[name]
    return helpers.minilora_adapter(base, config_cls, fields, seed)


def peft_adapter(hf_model, name: str, seed=1):
    return helpers.peft_adapter(hf_model, *CONFIGS[name], seed=seed)


@pytest.fixture(autouse=True)
def float64_reference():
    with llama_in_float64():
        yield


@pytest.mark.parametrize("name", CONFIGS)
def test_default_targets_and_trainable_parameters_are_peft_s(name):
    ours = minilora_adapter(tiny_llama(), name)
    theirs = peft_adapter(to_transformers(tiny_llama()), name)
    trainable = {n: p.shape for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {n: tuple(p.shape) for n, p in theirs.named_parameters() if p.requires_grad}
    config_cls, _, fields = CONFIGS[name]
    if "target_modules" not in fields:
        expected = ["k_proj", "v_proj", "down_proj"] if config_cls is IA3Config else ["q_proj", "v_proj"]
        assert sorted(ours.peft_config["default"].target_modules) == sorted(expected)
        assert sorted(theirs.peft_config["default"].target_modules) == sorted(expected)


@pytest.mark.parametrize("name", CONFIGS)
def test_adapters_cross_both_ways_with_equal_logits(name, tmp_path):
    ours = minilora_adapter(tiny_llama(), name)
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_llama()), tmp_path / "ours").eval()
    x = ids()
    assert max_err(ours(x)[0].numpy(), peft_logits(theirs, x)) < 1e-10
    with ours.disable_adapter():  # the adapter matters: the logits are not the base model's
        assert max_err(ours(x)[0].numpy(), peft_logits(theirs, x)) > 1e-3

    peft_adapter(to_transformers(tiny_llama()), name, seed=2).save_pretrained(tmp_path / "peft")
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "peft")
    again = peft.PeftModel.from_pretrained(to_transformers(tiny_llama()), tmp_path / "peft").eval()
    assert max_err(loaded(x)[0].numpy(), peft_logits(again, x)) < 1e-10


@pytest.mark.parametrize("name", CONFIGS)
def test_loss_and_gradients_equal_peft(name, tmp_path):
    """Float64: every trained array's gradient (A and B, DoRA's m, IA3's vectors) within 1e-8 of PEFT's."""
    ours = minilora_adapter(tiny_llama(), name)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_llama()), tmp_path, is_trainable=True)
    loss, ref, grads = loss_and_grads_against_peft(ours, theirs, ids(2, 12, seed=5))
    assert abs(loss - ref) <= 1e-12 * abs(ref)
    assert grads
    for n, ours_grad, peft_grad in grads:
        assert rel_err(ours_grad, peft_grad) < 1e-8, n


@pytest.mark.parametrize("name", ["lora-all-linear-rslora", "dora-defaults", "ia3-defaults"])
def test_merge_and_unload_gives_the_adapted_model_as_plain_llama(name, tmp_path):
    model = minilora_adapter(tiny_llama(), name)
    x = ids(seed=7)
    adapted = model(x)[0].numpy()
    plain = model.merge_and_unload()
    assert max_err(plain(x)[0].numpy(), adapted) < 1e-10
    plain.save_pretrained(tmp_path)  # a plain LLaMA again: transformers reads it
    import transformers

    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert rel_err(peft_logits(hf, x), adapted) < 1e-10
