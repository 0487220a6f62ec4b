"""LoRA and IA3 on BERT against Hugging Face PEFT over transformers' BertForSequenceClassification.

The same tiny random BERT as ``test_bert.py`` (vocab 50, width 16, 2 layers, 2 heads, 3
labels), built by transformers and converted with ``from_transformers``. Every adapter is
random (``init_lora_weights=False``, then every trained array perturbed), so a wrong key,
target, scaling or head cannot hide behind an identity update. Oracles: PEFT's files, its
``from_pretrained``, and its autograd in float64. The helpers are ``peft_helpers.py``'s (shared
with GPT-2's PEFT tests) and ``bert_helpers.py``'s.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file  # noqa: E402

from minilora.models import bert_hf  # noqa: E402
from minilora.peft import IA3Config, LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft_helpers import perturb_trainable, perturb_trainable_torch, rel_err  # noqa: E402
from bert_helpers import padded_batch, tiny_hf, torch_inputs  # noqa: E402

# The configurations the issue names: PEFT's defaults for BERT (query, value), and the
# classification task with the pooler trained beside the head (all-MiniLM-L6-v2's pooler was
# never trained, while BertForSequenceClassification reads through it).
CONFIGS = {
    "default-targets": dict(r=4, lora_alpha=8),
    "seq-cls-pooler": dict(r=2, lora_alpha=6, task_type="SEQ_CLS", modules_to_save=["pooler"]),
}
LENGTHS, LABELS = [7, 3, 5], np.array([2, 0, 1])


def pair():
    """The tiny classifier in transformers and the same weights in minilora, float64."""
    hf = tiny_hf("BertForSequenceClassification")
    return hf, bert_hf.from_transformers(hf)


def ours_logits(model, ids, types, mask):
    return model(ids, mask, types)[0].data


def theirs_logits(model, ids, types, mask):
    with torch.no_grad():
        return model(**torch_inputs(ids, types, mask)).logits.numpy()


@pytest.mark.parametrize("name", CONFIGS)
def test_minilora_adapter_loads_in_peft(name, tmp_path):
    hf, ours = pair()
    model = get_peft_model(ours, LoraConfig(init_lora_weights=False, **CONFIGS[name]))
    perturb_trainable(model)
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path).eval()
    batch = padded_batch(LENGTHS)
    assert rel_err(ours_logits(model, *batch), theirs_logits(theirs, *batch)) < 1e-12  # measured ~4e-16
    with model.disable_adapter(), theirs.disable_adapter():  # and the bases agree: the adapter made the difference
        base = ours_logits(model, *batch)
        assert rel_err(base, theirs_logits(theirs, *batch)) < 1e-12
    assert rel_err(base, ours_logits(model, *batch)) > 1e-3


@pytest.mark.parametrize("name", CONFIGS)
def test_peft_adapter_loads_in_minilora(name, tmp_path):
    hf, ours = pair()
    theirs = peft.get_peft_model(hf, peft.LoraConfig(init_lora_weights=False, **CONFIGS[name]))
    perturb_trainable_torch(theirs)
    theirs.eval().save_pretrained(tmp_path)
    model = PeftModel.from_pretrained(ours, tmp_path)
    batch = padded_batch(LENGTHS)
    assert rel_err(ours_logits(model, *batch), theirs_logits(theirs, *batch)) < 1e-12


@pytest.mark.parametrize("name", CONFIGS)
def test_same_files_as_peft(name, tmp_path):
    """The targets PEFT picks by default, the heads SEQ_CLS adds, and every saved key and shape."""
    hf, ours = pair()
    get_peft_model(ours, LoraConfig(**CONFIGS[name])).save_pretrained(tmp_path / "ours")
    peft.get_peft_model(hf, peft.LoraConfig(**CONFIGS[name])).save_pretrained(tmp_path / "peft")
    ours_json = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft_json = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert sorted(ours_json["target_modules"]) == sorted(peft_json["target_modules"]) == ["query", "value"]
    assert set(ours_json["modules_to_save"] or []) == set(peft_json["modules_to_save"] or [])  # PEFT lists the heads twice
    assert ours_json["task_type"] == peft_json["task_type"]
    ours_t, peft_t = load_file(tmp_path / "ours" / "adapter_model.safetensors"), load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in ours_t.items()} == {k: v.shape for k, v in peft_t.items()}
    if name == "seq-cls-pooler":
        assert {"base_model.model.classifier.weight", "base_model.model.bert.pooler.dense.weight"} <= set(ours_t)


@pytest.mark.parametrize("name", CONFIGS)
def test_gradients_equal_peft(name, tmp_path):
    """Cross-entropy on a padded batch, backward on both sides: every trainable parameter --
    A, B, and the classifier and pooler copies -- has PEFT's name and PEFT's gradient (float64)."""
    hf, ours = pair()
    model = get_peft_model(ours, LoraConfig(init_lora_weights=False, **CONFIGS[name]))
    perturb_trainable(model)
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path, is_trainable=True).eval()
    ids, types, mask = padded_batch(LENGTHS)
    _, loss = model(ids, mask, types, labels=LABELS)
    loss.backward()
    ref = theirs(**torch_inputs(ids, types, mask), labels=torch.tensor(LABELS)).loss
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-12
    ours_params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    peft_params = {n: p for n, p in theirs.named_parameters() if p.requires_grad}
    assert set(ours_params) == set(peft_params)
    assert any(".lora_A." in n for n in ours_params) and any(".lora_B." in n for n in ours_params)
    for n, p in ours_params.items():
        assert rel_err(p.grad, peft_params[n].grad.numpy()) < 1e-10, n  # measured <= 3e-15


def test_ia3_defaults_for_bert_equal_peft(tmp_path):
    """PEFT's IA3 defaults for BERT (key, value, output.dense; output.dense scaled at its input),
    both ways with equal logits."""
    hf, ours = pair()
    model = get_peft_model(ours, IA3Config(init_ia3_weights=False))
    perturb_trainable(model)
    model.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "ours").eval()
    batch = padded_batch(LENGTHS)
    assert rel_err(ours_logits(model, *batch), theirs_logits(theirs, *batch)) < 1e-12
    wrapped = sorted(n for n, m in theirs.named_modules() if isinstance(m, peft.tuners.ia3.IA3Layer))
    assert sorted(f"base_model.model.{n}" for n, _ in model.base_model.ia3_layers()) == wrapped
    assert len(wrapped) == 2 * 4  # key, value, attention.output.dense, output.dense in each layer

    _, ours2 = pair()
    theirs2 = peft.get_peft_model(tiny_hf("BertForSequenceClassification"), peft.IA3Config(init_ia3_weights=False))
    perturb_trainable_torch(theirs2)
    theirs2.eval().save_pretrained(tmp_path / "peft")
    back = PeftModel.from_pretrained(ours2, tmp_path / "peft")
    assert rel_err(ours_logits(back, *batch), theirs_logits(theirs2, *batch)) < 1e-12
