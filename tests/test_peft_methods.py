"""AdaLoRA, VeRA, LoHa, LoKr and LoRA's newer fields against Hugging Face PEFT, on GPT-2, BERT and LLaMA.

One table (``CASES``) drives every test: a method, a base, and the config fields. Each base
is built twice -- in minilora and, converted, in transformers (the tiny GPT-2 and LLaMA of
``peft_helpers.py``, the tiny BERT classifier of ``bert_helpers.py``) -- and both sides get the
same adapter with every trained array random (``init_weights=False`` / ``init_lora_weights=False``,
then moved by 0.1 N(0, 1)), so that a wrong key, shape, scaling, slice or transpose cannot hide
behind a zero update. GPT-2's projections are Conv1D in transformers: AdaLoRA and VeRA adapt
them there (as PEFT does); LoHa and LoKr run on BERT and LLaMA, and refuse them
(``test_peft_lycoris.py``). LoRA's ``lora_bias``, Embedding targets and ``layers_to_transform`` /
``layers_pattern`` run through the same tests (the rest of LoraConfig: ``test_lora_config_fields.py``).

Oracles: PEFT's counts, files, ``from_pretrained`` and float64 autograd. How close is "equal":
everything is float64, each output a sum of O(10^3) roundings of size 2^-53 times O(1)
magnitudes, so 1e-10 on the logits (and 1e-10 relative on the gradients) is far above the
rounding and far below any real difference (the adapters move the logits by O(0.1)). The one
place PEFT itself computes in float32 is LoHa's scaling alpha / r, held in a float32 tensor:
the cases below take alpha / r exact in float32 (1.5, 2, 0.5), and ``test_peft_lycoris.py`` checks
a scaling that is not against the 2^-24 relative bound this implies.
"""

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from safetensors.numpy import load_file  # noqa: E402

from minilora.peft import (  # noqa: E402
    AdaLoraConfig,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    PeftModel,
    VeraConfig,
    get_peft_model,
)
from peft_helpers import BASES, float64_transformers, max_err, perturb_trainable, perturb_trainable_torch, rel_err  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning"),
              pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore:Unexpected keyword arguments:UserWarning")]



# (method, base, fields). Every config is random at init; SEQ_CLS adds the classifier to modules_to_save.
CASES = {
    "adalora-gpt-conv1d": (AdaLoraConfig, "gpt", dict(init_r=4, target_r=2, total_step=10, lora_alpha=6,
                                                      target_modules=["c_attn", "c_fc", "mlp.c_proj"],
                                                      task_type="CAUSAL_LM")),
    "adalora-bert-seqcls-bias": (AdaLoraConfig, "bert", dict(init_r=3, target_r=2, total_step=10, lora_alpha=4,
                                                             task_type="SEQ_CLS", bias="lora_only",
                                                             modules_to_save=["pooler"])),
    "adalora-llama-layers": (AdaLoraConfig, "llama", dict(init_r=3, target_r=1, total_step=10, task_type="CAUSAL_LM",
                                                          target_modules=["q_proj", "v_proj", "down_proj"],
                                                          layers_to_transform=[1])),
    "vera-gpt-conv1d-bias": (VeraConfig, "gpt", dict(r=4, target_modules=["c_attn", "c_fc"], bias="vera_only")),
    "vera-bert-seqcls": (VeraConfig, "bert", dict(r=6, task_type="SEQ_CLS", projection_prng_key=3)),
    "vera-llama-shapes": (VeraConfig, "llama", dict(r=5, target_modules=["q_proj", "k_proj", "up_proj", "down_proj"])),
    "loha-bert-seqcls": (LoHaConfig, "bert", dict(r=2, alpha=3, task_type="SEQ_CLS")),
    "loha-llama-patterns": (LoHaConfig, "llama", dict(r=2, alpha=4, target_modules=["q_proj", "gate_proj", "down_proj"],
                                                      rank_pattern={"down_proj": 4}, alpha_pattern={"gate_proj": 1})),
    "lokr-bert-decompose-both": (LoKrConfig, "bert", dict(r=2, alpha=3, decompose_both=True, task_type="SEQ_CLS",
                                                          target_modules=["query", "value", "intermediate.dense"])),
    "lokr-llama-factor": (LoKrConfig, "llama", dict(r=8, alpha=4, decompose_factor=2,
                                                    target_modules=["q_proj", "o_proj", "up_proj", "down_proj"],
                                                    rank_pattern={"up_proj": 1})),
    "lora-bias-gpt-conv1d": (LoraConfig, "gpt", dict(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"], lora_bias=True)),
    "lora-embedding-gpt-wpe": (LoraConfig, "gpt", dict(r=3, lora_alpha=6, target_modules=["wpe", "c_attn"])),
    "lora-embedding-bert": (LoraConfig, "bert", dict(r=2, lora_alpha=2, task_type="SEQ_CLS", use_rslora=True,
                                                     target_modules=["word_embeddings", "token_type_embeddings", "query"])),
    "lora-layers-llama": (LoraConfig, "llama", dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                    layers_to_transform=1, layers_pattern="layers")),
    "lora-layers-bert-bias": (LoraConfig, "bert", dict(r=2, lora_alpha=4, layers_to_transform=[0], lora_bias=True,
                                                       target_modules=["query", "value", "output.dense"])),
}

# PEFT 0.21.2 leaves AdaLoRA's ranknum -- the denominator of its scaling, init_r, "deterministic and
# not saved" by its own comment -- a trainable (1,) Parameter: moving the adapter to the base
# layer's device re-registers it with requires_grad=True. minilora keeps it a constant.
RANKNUM = ".ranknum."


def random_fields(config_cls) -> dict:
    return {"init_lora_weights": False} if config_cls in (AdaLoraConfig, LoraConfig) else {"init_weights": False}


def minilora_adapter(name: str, seed=1):
    config_cls, base, fields = CASES[name]
    model = get_peft_model(BASES[base].pair()[0], config_cls(**random_fields(config_cls), **copy.deepcopy(fields)))
    perturb_trainable(model, seed)
    return model


def peft_adapter(name: str, seed=1):
    config_cls, base, fields = CASES[name]
    peft_cls = getattr(peft, config_cls.__name__)
    model = peft.get_peft_model(BASES[base].pair()[1], peft_cls(**random_fields(config_cls), **copy.deepcopy(fields)))
    for n, p in model.named_parameters():
        if RANKNUM in n:  # trainable by mistake in PEFT (below): left at init_r, as PEFT means it to be
            p.requires_grad_(False)
    perturb_trainable_torch(model, seed)
    return model.eval()


@pytest.fixture(autouse=True)
def float64_reference():
    with float64_transformers():
        yield


def peft_logits(name, model):
    with torch.no_grad():
        return BASES[CASES[name][1]].theirs(model).logits.numpy()


def ours_logits(name, model):
    return BASES[CASES[name][1]].ours(model)[0].numpy()




# ---------------------------------------------------------------------------
# counts and files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_trainable_parameters_are_peft_s(name):
    config_cls, base, fields = CASES[name]
    ours = get_peft_model(BASES[base].pair()[0], config_cls(**copy.deepcopy(fields)))
    theirs = peft.get_peft_model(BASES[base].pair()[1], getattr(peft, config_cls.__name__)(**copy.deepcopy(fields)))
    ours_trainable = {n: p.shape for n, p in ours.named_parameters() if p.requires_grad}
    theirs_trainable = {n: tuple(p.shape) for n, p in theirs.named_parameters() if p.requires_grad}
    leaked = {n for n in theirs_trainable if RANKNUM in n}
    assert ours_trainable == {n: s for n, s in theirs_trainable.items() if n not in leaked}
    trainable, total = theirs.get_nb_trainable_parameters()
    assert ours.get_nb_trainable_parameters() == (trainable - len(leaked), total - len(leaked))
    assert (config_cls is AdaLoraConfig) == bool(leaked)
    if leaked:  # one per adapted layer
        assert len(leaked) == len(ours.base_model.adapter_layers())


@pytest.mark.parametrize("name", CASES)
def test_save_pretrained_writes_what_peft_writes(name, tmp_path):
    minilora_adapter(name).save_pretrained(tmp_path / "ours")
    peft_adapter(name).save_pretrained(tmp_path / "peft")
    ours_json = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft_json = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert set(ours_json) == set(peft_json) | {"minilora_save_id"}
    for field, value in peft_json.items():
        if field in ("auto_mapping", "inference_mode"):  # where the file came from
            continue
        if isinstance(value, list):  # PEFT keeps sets, written in no particular order
            assert sorted(ours_json[field]) == sorted(value), field
        else:
            assert ours_json[field] == value, field
    ours_t = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    peft_t = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert {k: (v.shape, v.dtype) for k, v in ours_t.items()} == {k: (v.shape, v.dtype) for k, v in peft_t.items()}


# ---------------------------------------------------------------------------
# outputs, merged outputs, gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_minilora_adapter_loads_in_peft_and_merges_to_the_same_outputs(name, tmp_path):
    ours = minilora_adapter(name)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(BASES[CASES[name][1]].pair()[1], tmp_path).eval()
    modules = dict(theirs.base_model.model.named_modules())
    for layer_name, layer in ours.base_model.adapter_layers():  # ΔW itself, layer by layer
        ref = modules[layer_name]
        delta = ref.get_delta_weight("default").detach().numpy()
        if type(ref.get_base_layer()).__name__ == "Conv1D":
            delta = delta.T  # GPT-2's Conv1D stores W, hence ΔW, as (in, out)
        ours_delta = layer.delta_weight("default") if hasattr(layer, "delta_weight") else layer._delta_weight_data("default")
        assert max_err(ours_delta, delta) <= 1e-12 * max(1.0, np.abs(delta).max()), layer_name
    expected = peft_logits(name, theirs)
    assert max_err(ours_logits(name, ours), expected) < 1e-10
    with ours.disable_adapter():  # the adapter matters: the logits are not the base model's
        assert max_err(ours_logits(name, ours), expected) > 1e-3
    ours.merge_adapter()
    assert max_err(ours_logits(name, ours), expected) < 1e-10
    theirs.merge_adapter()
    assert max_err(peft_logits(name, theirs), expected) < 1e-10
    ours.unmerge_adapter()
    plain = ours.merge_and_unload()
    assert max_err(ours_logits(name, plain), expected) < 1e-10


@pytest.mark.parametrize("name", CASES)
def test_peft_adapter_loads_in_minilora(name, tmp_path):
    theirs = peft_adapter(name)
    theirs.save_pretrained(tmp_path)
    ours = PeftModel.from_pretrained(BASES[CASES[name][1]].pair()[0], tmp_path)
    expected = peft_logits(name, theirs)
    assert max_err(ours_logits(name, ours), expected) < 1e-10
    assert ours.get_nb_trainable_parameters()[0] == 0  # loaded for inference, as PEFT's default
    ours.merge_adapter()  # PEFT's arrays (VeRA: PEFT's projections, from its file), merged
    assert max_err(ours_logits(name, ours), expected) < 1e-10


@pytest.mark.parametrize("name", CASES)
def test_loss_and_gradients_equal_peft(name, tmp_path):
    """Float64 autograd on both sides, every trainable parameter under PEFT's name. AdaLoRA's loss
    includes its orthogonality regulariser on both sides: PEFT adds it in ``AdaLoraModel.forward``,
    which its task wrappers call (task_type "CAUSAL_LM", "SEQ_CLS"); a plain ``peft.PeftModel``
    calls the transformers model directly and leaves it out (docs/adalora.md)."""
    ours = minilora_adapter(name)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(BASES[CASES[name][1]].pair()[1], tmp_path, is_trainable=True).eval()
    base = BASES[CASES[name][1]]
    _, loss = base.ours(ours, labels=True)
    loss.backward()
    ref = base.theirs(theirs, labels=True).loss
    ref.backward()
    assert abs(loss.item() - ref.item()) <= 1e-12 * abs(ref.item())
    ours_params = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    peft_params = {n: p for n, p in theirs.named_parameters() if p.requires_grad and RANKNUM not in n}
    assert set(ours_params) == set(peft_params)
    for n, p in ours_params.items():
        assert rel_err(p.grad, peft_params[n].grad.numpy()) < 1e-10, n
