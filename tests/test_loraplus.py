"""LoRA+ against PEFT's ``create_loraplus_optimizer``: the same four groups, the same weights after
k AdamW steps on the same gradients.

The models have every kind of trainable parameter the rule sorts: lora_A and lora_B (with a
lora_bias), DoRA's 1-D magnitude, a LoRA pair on an Embedding layer, and modules_to_save copies
of LayerNorms (weight and bias: no decay) and of a Linear head (a 2-D matrix, in A's group, and
its bias). Float64 on both sides; AdamW's update is a handful of elementwise operations on the
same arrays, so the weights agree to a few units of 2^-53 relative after every step (1e-12).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from peft.optimizers import create_loraplus_optimizer as peft_loraplus  # noqa: E402

from minilora.models import bert_hf  # noqa: E402
from minilora.optim import AdamW  # noqa: E402
from minilora.peft import LoraConfig, create_loraplus_optimizer, get_peft_model  # noqa: E402
from bert_helpers import tiny_hf  # noqa: E402
from peft_helpers import perturb_trainable, rel_err  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Unexpected keyword arguments:UserWarning")

CONFIGS = [  # one model each: DoRA, lora_bias and Embedding targets exclude each other
    dict(r=2, lora_alpha=4, target_modules=["query", "word_embeddings"], modules_to_save=["classifier", "LayerNorm"]),
    dict(r=2, lora_alpha=4, target_modules=["query", "value"], lora_bias=True, modules_to_save=["classifier"]),
    dict(r=3, lora_alpha=3, target_modules=["value", "dense"], use_dora=True),
]
KWARGS = dict(lr=1e-2, loraplus_lr_ratio=16, loraplus_weight_decay=0.05, loraplus_lr_embedding=3e-3, betas=(0.9, 0.99),
              eps=1e-8)


def models(fields, tmp_path):
    hf = tiny_hf("BertForSequenceClassification")
    ours = get_peft_model(bert_hf.from_transformers(hf), LoraConfig(init_lora_weights=False, **fields))
    perturb_trainable(ours)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_hf("BertForSequenceClassification"), tmp_path, is_trainable=True)
    return ours, theirs


@pytest.mark.parametrize("fields", CONFIGS)
def test_the_groups_are_peft_s(fields, tmp_path):
    ours, theirs = models(fields, tmp_path)
    ours_opt = create_loraplus_optimizer(ours, AdamW, **KWARGS)
    theirs_opt = peft_loraplus(theirs, torch.optim.AdamW, **KWARGS)
    ours_names = {id(p): n for n, p in ours.named_parameters()}
    theirs_names = {id(p): n for n, p in theirs.named_parameters()}
    assert len(ours_opt.param_groups) == len(theirs_opt.param_groups) == 4
    for ours_group, theirs_group in zip(ours_opt.param_groups, theirs_opt.param_groups):
        assert sorted(ours_names[id(p)] for p in ours_group["params"]) == sorted(theirs_names[id(p)] for p in theirs_group["params"])
        assert (ours_group["lr"], ours_group["weight_decay"]) == (theirs_group["lr"], theirs_group["weight_decay"])
    grouped = [n for g in ours_opt.param_groups for n in (ours_names[id(p)] for p in g["params"])]
    assert sorted(grouped) == sorted(n for n, p in ours.named_parameters() if p.requires_grad)  # each exactly once
    b_group = {ours_names[id(p)] for p in ours_opt.param_groups[2]["params"]}
    assert any(".lora_B." in n for n in b_group) and ours_opt.param_groups[2]["lr"] == 16 * ours_opt.param_groups[0]["lr"]


@pytest.mark.parametrize("fields", CONFIGS)
def test_weights_after_k_adamw_steps_equal_peft_s(fields, tmp_path):
    ours, theirs = models(fields, tmp_path)
    ours_opt = create_loraplus_optimizer(ours, AdamW, **KWARGS)
    theirs_opt = peft_loraplus(theirs, torch.optim.AdamW, **KWARGS)
    ours_params = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    theirs_params = dict(theirs.named_parameters())
    rng = np.random.default_rng(0)
    for _ in range(4):
        for n, p in ours_params.items():  # the same gradients on both sides
            p.grad = rng.standard_normal(p.shape)
            theirs_params[n].grad = torch.tensor(p.grad)
        ours_opt.step()
        theirs_opt.step()
        for n, p in ours_params.items():
            assert rel_err(p.numpy(), theirs_params[n].detach().numpy()) < 1e-12, n


def test_a_model_with_nothing_to_train_is_refused():
    model = get_peft_model(bert_hf.from_transformers(tiny_hf("BertForSequenceClassification")), LoraConfig(inference_mode=True))
    with pytest.raises(ValueError, match="the model has no trainable parameter"):
        create_loraplus_optimizer(model, AdamW, lr=1e-3, loraplus_lr_ratio=16)
    with pytest.raises(ValueError, match="loraplus_lr_ratio > 0"):
        create_loraplus_optimizer(model, AdamW, lr=1e-3, loraplus_lr_ratio=0)
