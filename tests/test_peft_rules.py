"""Which modules a config names, as PEFT 0.21 decides it, and PEFT's files as PEFT writes them by default.

Each test builds the same config in minilora and in PEFT on the same tiny GPT-2, LLaMA or BERT
(``to_transformers``) and compares what was wrapped, what is trained (PEFT's own counts), the
files, and the logits after loading each side's file on the other:

* ``modules_to_save``: an entry names every module whose name *ends with* it, dot or not
  (``"norm"``: LLaMA's final norm and every layer's two norms);
* ``target_modules`` keeps its rule (a list entry: the name or a dotted suffix; a string: a
  regex over the whole name), ``exclude_modules`` uses the same rule, and a target inside a
  module to save is left out (PEFT's ``(^|.*\\.)name($|\\..*)``);
* ``"all-linear"``: every linear layer but the output layer (or a SEQ_CLS head);
* an adapter on ``lm_head`` saved with PEFT's default ``save_embedding_layers="auto"`` carries
  the head's base weight; it loads, and a different one replaces the model's, as in PEFT.
"""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file  # noqa: E402

from minilora.peft import LoraConfig  # noqa: E402
from minilora.models import BertForSequenceClassification, bert_hf, hf, llama_hf  # noqa: E402
from minilora.peft import IA3Config, PeftModel, get_peft_model  # noqa: E402

from bert_helpers import tiny_hf as tiny_bert  # noqa: E402
from peft_helpers import ids, peft_logits, perturb_trainable, perturb_trainable_torch, tiny_gpt, tiny_llama  # noqa: E402
from tolerances import assert_close  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def bert_classifier():
    return bert_hf.from_transformers(tiny_bert("BertForSequenceClassification", dtype=torch.float32))


# tests/tolerances.py's error model for the tiny models' float32 logits: the widest sum (GPT-2's MLP 4 x 16,
# LLaMA's and BERT's 24) through 2 layers and the head
WIDTH = {"gpt2": 64, "llama": 24, "bert-cls": 24}

# name -> (a minilora model, its transformers twin)
MODELS = {
    "gpt2": lambda: (tiny_gpt(np.float32), hf.to_transformers(tiny_gpt(np.float32))),
    "llama": lambda: (tiny_llama(np.float32), llama_hf.to_transformers(tiny_llama(np.float32))),
    "bert-cls": lambda: (bert_classifier(), bert_hf.to_transformers(bert_classifier())),
}

CASES = {  # (model, PEFT method, config fields)
    "llama-norm": ("llama", "LoraConfig", dict(target_modules=["q_proj", "v_proj"], modules_to_save=["norm"])),
    "llama-layernorm": ("llama", "LoraConfig", dict(target_modules=["q_proj"], modules_to_save=["post_attention_layernorm"])),
    "gpt2-ln": ("gpt2", "LoraConfig", dict(target_modules=["c_attn"], modules_to_save=["ln_2", "ln_f"])),
    "gpt2-saved-module-holds-targets": ("gpt2", "LoraConfig", dict(target_modules=["c_attn", "c_proj"], modules_to_save=["mlp"])),
    "llama-saved-module-holds-targets": ("llama", "LoraConfig", dict(target_modules=["q_proj", "up_proj"], modules_to_save=["mlp"])),
    "gpt2-exclude-list": ("gpt2", "LoraConfig", dict(target_modules=["c_attn", "c_proj"], exclude_modules=["1.attn.c_proj"])),
    "gpt2-exclude-regex": ("gpt2", "LoraConfig", dict(target_modules=["c_fc", "c_proj"], exclude_modules=r".*\.0\..*")),
    "llama-exclude": ("llama", "LoraConfig", dict(target_modules=["q_proj", "k_proj", "v_proj"], exclude_modules=["k_proj"])),
    "gpt2-all-linear": ("gpt2", "LoraConfig", dict(target_modules="all-linear")),
    "llama-all-linear": ("llama", "LoraConfig", dict(target_modules="ALL-LINEAR")),
    "bert-all-linear-seq-cls": ("bert-cls", "LoraConfig", dict(target_modules="all-linear", task_type="SEQ_CLS")),
    "bert-all-linear": ("bert-cls", "LoraConfig", dict(target_modules="all-linear")),
    "llama-ia3-all-linear": ("llama", "IA3Config", dict(target_modules="all-linear", feedforward_modules=["down_proj"])),
}


def both(case):
    model_name, method, fields = CASES[case]
    ours_base, theirs_base = MODELS[model_name]()
    ours_cls = LoraConfig if method == "LoraConfig" else IA3Config
    extra = dict(init_lora_weights=False) if method == "LoraConfig" else {}
    ours = get_peft_model(ours_base, ours_cls(**extra, **fields))
    theirs = peft.get_peft_model(theirs_base, getattr(peft, method)(**extra, **fields))
    perturb_trainable(ours)
    perturb_trainable_torch(theirs)
    return model_name, ours, theirs


def adapted_names(model, marker) -> set:
    return {n.removeprefix("base_model.model.").removesuffix("." + marker) for n, _ in model.named_modules()
            if n.endswith("." + marker)}


def inputs(model_name):
    return ids(vocab=40 if model_name.startswith("bert") else 61)


def logits_of(model, x, torch_model=False):
    if torch_model:
        with torch.no_grad():
            return model(torch.tensor(x)).logits.numpy()
    out = model(x)
    return (out[0] if isinstance(out, tuple) else out).numpy()


@pytest.mark.parametrize("case", CASES)
def test_the_same_modules_are_wrapped_and_trained_as_in_peft(case):
    """The issue's case is llama-norm: minilora trained 1,824 parameters, PEFT 1,952 (on the issue's model)."""
    _, ours, theirs = both(case)
    lora = "ia3_l" if CASES[case][1] == "IA3Config" else "lora_A"
    assert adapted_names(ours, lora) == adapted_names(theirs, lora)
    assert adapted_names(ours, "modules_to_save") == adapted_names(theirs, "modules_to_save")
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    expected = theirs.peft_config["default"].target_modules
    assert sorted(ours.peft_config["default"].target_modules) == sorted(expected)  # "all-linear" resolved as PEFT does


# GPT-2's saved copy of a whole MLP holds HF's Conv1D weights (in, out); minilora's copy is (out, in) and is
# saved so: a module to save holding GPT-2 projections does not cross yet (a follow-up, not these rules).
@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][1] == "LoraConfig" and c != "gpt2-saved-module-holds-targets"])
def test_each_side_loads_the_other_s_file_with_equal_logits(case, tmp_path):
    model_name, ours, theirs = both(case)
    x = inputs(model_name)
    theirs.eval().save_pretrained(tmp_path / "peft")
    ours.save_pretrained(tmp_path / "ours")
    assert sorted(load_file(tmp_path / "ours" / "adapter_model.safetensors")) == \
        sorted(load_file(tmp_path / "peft" / "adapter_model.safetensors"))
    fresh, fresh_hf = MODELS[model_name]()
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "peft")  # PEFT's own file: was refused for llama-norm
    assert_close(logits_of(loaded, x), logits_of(theirs, x, True), n=WIDTH[model_name], depth=3, what="PEFT's file")
    back = peft.PeftModel.from_pretrained(fresh_hf, tmp_path / "ours").eval()
    assert_close(logits_of(back, x, True), logits_of(ours, x), n=WIDTH[model_name], depth=3, what="minilora's file")


def test_a_target_that_names_nothing_says_what_target_modules_accepts():
    with pytest.raises(ValueError, match=r"target_modules='all_linear' matches no module of GPT .*'all-linear' every "
                                         r"linear layer"):
        get_peft_model(tiny_gpt(np.float32), LoraConfig(target_modules="all_linear"))
    with pytest.raises(ValueError, match=r"matches only modules that exclude_modules or modules_to_save leave out: "
                                         r"transformer\.h\.0\.attn\.c_attn, transformer\.h\.1\.attn\.c_attn"):
        get_peft_model(tiny_gpt(np.float32), LoraConfig(target_modules=["c_attn"], exclude_modules=["c_attn"]))
    with pytest.warns(UserWarning, match="exclude_modules=\\['nothing'\\] excluded no module"):
        get_peft_model(tiny_gpt(np.float32), LoraConfig(target_modules=["c_attn"], exclude_modules=["nothing"]))


# ---------------------------------------------------------------------------
# lm_head adapters, saved with the head's base weight (save_embedding_layers="auto")
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["gpt2", "llama"])
def test_an_lm_head_adapter_saved_with_its_base_weight_loads(model_name, tmp_path):
    """The issue's case: PEFT's default save of an adapter on lm_head carries lm_head.base_layer.weight,
    which minilora refused ("unexpected key"). The saved head equals the model's: it loads, silently."""
    ours_base, theirs_base = MODELS[model_name]()
    fields = dict(target_modules=["lm_head", "q_proj" if model_name == "llama" else "c_attn"], init_lora_weights=False)
    theirs = peft.get_peft_model(theirs_base, peft.LoraConfig(**fields))
    perturb_trainable_torch(theirs)
    theirs.eval().save_pretrained(tmp_path / "peft")
    assert "base_model.model.lm_head.base_layer.weight" in load_file(tmp_path / "peft" / "adapter_model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an equal head: no warning
        loaded = PeftModel.from_pretrained(ours_base, tmp_path / "peft")
    x = inputs(model_name)
    assert_close(logits_of(loaded, x), peft_logits(theirs, x), n=WIDTH[model_name], depth=3, what="logits")
    loaded.save_pretrained(tmp_path / "ours")  # and minilora writes the same keys by default, as PEFT does
    assert sorted(load_file(tmp_path / "ours" / "adapter_model.safetensors")) == \
        sorted(load_file(tmp_path / "peft" / "adapter_model.safetensors"))


def test_a_different_saved_head_replaces_the_model_s_as_peft_loads_it_with_a_warning(tmp_path):
    """GPT-2's head is tied to the token embedding: PEFT's load writes the saved head into the shared
    matrix, so the embedding changes too. minilora does the same, and says so."""
    ours_base, theirs_base = MODELS["gpt2"]()
    theirs = peft.get_peft_model(theirs_base, peft.LoraConfig(target_modules=["lm_head"], init_lora_weights=False))
    perturb_trainable_torch(theirs)
    with torch.no_grad():
        theirs.base_model.model.lm_head.base_layer.weight.mul_(1.5)  # a head (and embedding) of another base
    theirs.eval().save_pretrained(tmp_path / "peft")
    _, fresh_hf = MODELS["gpt2"]()
    reference = peft.PeftModel.from_pretrained(fresh_hf, tmp_path / "peft").eval()  # PEFT's own load of it
    wte_before = ours_base.transformer.wte.weight.data.copy()
    with pytest.warns(UserWarning, match=r"lm_head\.base_layer\.weight differs from the model's lm_head weight; loaded "
                                         r"as PEFT loads it, .*tied to transformer\.wte, which changes with it"):
        loaded = PeftModel.from_pretrained(ours_base, tmp_path / "peft")
    gpt = loaded.get_base_model()
    assert np.array_equal(gpt.transformer.wte.weight.data, 1.5 * wte_before.astype(np.float32))
    x = inputs("gpt2")
    assert_close(logits_of(loaded, x), peft_logits(reference, x), n=WIDTH["gpt2"], depth=3, what="logits")
