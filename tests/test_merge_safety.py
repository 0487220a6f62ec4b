"""Merging is all or nothing (docs/lora.md, "Tied weights" and "Merging safely").

* ``safe_merge=True`` -- PEFT's argument, with PEFT's signatures, read from the installed
  PEFT -- raises on a NaN or inf result, naming the adapter and the layer, and leaves the
  model bit for bit as it was, for LoRA, DoRA and IA3 and through every entry point
  (``merge_adapter``, ``merge_and_unload``, a layer's ``merge``), a 4-bit base included.
* ``safe_merge=False`` (the default) merges a broken adapter as PEFT does: no error, and
  the same entries of W turn NaN.
* A merge into a weight that another module holds (GPT-2's head, tied to the token
  embedding; any two modules sharing a Parameter or a module) is refused before anything
  changes; untied, merged == unmerged and the embedding stays as it was.
"""

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from minilora import nn  # noqa: E402
from minilora.models import to_transformers  # noqa: E402
from minilora.peft import BottleneckConfig, IA3Config, LoraConfig, LoRALinear, PeftModel, PromptTuningConfig, get_peft_model  # noqa: E402
from minilora.peft.ia3 import IA3Linear  # noqa: E402
from minilora.quant import NF4Linear, quantize_model  # noqa: E402
from minilora.tuner import BaseTuner  # noqa: E402
from peft_helpers import assert_unchanged, ids, perturb_trainable, snapshot, tiny_gpt  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning")

CONFIGS = {  # method: a config whose adapter is random from the start (no identity update to hide behind)
    "lora": lambda targets: LoraConfig(r=2, target_modules=targets, init_lora_weights=False),
    "dora": lambda targets: LoraConfig(r=2, target_modules=targets, init_lora_weights=False, use_dora=True),
    "ia3": lambda targets: IA3Config(target_modules=targets, feedforward_modules=[], init_ia3_weights=False),
    "ia3, feedforward": lambda targets: IA3Config(target_modules=targets, feedforward_modules=targets,
                                                  init_ia3_weights=False),
}


def adapted(method: str, targets, dtype=np.float64, base=None) -> PeftModel:
    model = get_peft_model(base or tiny_gpt(dtype), CONFIGS[method](targets))
    perturb_trainable(model)
    return model


def trained_part(layer, adapter="default"):
    """The array of the adapter's own parameter that the tests break: B, or IA3's vector."""
    return layer.ia3_l[adapter].data if isinstance(layer, IA3Linear) else layer.lora_B[adapter].weight.data


def signature(fn) -> list:
    return [(p.name, p.default, p.kind) for p in inspect.signature(fn).parameters.values()]


def test_merge_signatures_are_peft_s():
    from peft.tuners import ia3, lora
    from peft.tuners.tuners_utils import BaseTuner as PeftBaseTuner

    pairs = [(LoRALinear.merge, lora.Linear.merge), (IA3Linear.merge, ia3.Linear.merge),
             (BaseTuner.merge_adapter, PeftBaseTuner.merge_adapter),
             (BaseTuner.merge_and_unload, PeftBaseTuner.merge_and_unload),
             (PeftModel.merge_adapter, PeftBaseTuner.merge_adapter),  # PEFT's PeftModel hands these to its tuner
             (PeftModel.merge_and_unload, PeftBaseTuner.merge_and_unload)]
    for ours, theirs in pairs:
        assert signature(ours) == signature(theirs), ours.__qualname__
    assert ("safe_merge", False, inspect.Parameter.POSITIONAL_OR_KEYWORD) in signature(LoRALinear.merge)


# ---------------------------------------------------------------------------
# safe_merge
# ---------------------------------------------------------------------------

ENTRY_POINTS = {
    "merge_adapter": lambda model, layer: model.merge_adapter(safe_merge=True),
    "merge_and_unload": lambda model, layer: model.merge_and_unload(safe_merge=True),
    "layer.merge": lambda model, layer: layer.merge(safe_merge=True),
}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("method", CONFIGS)
def test_safe_merge_of_a_broken_adapter_raises_and_changes_nothing(method, entry, bad):
    targets = ["c_attn", "mlp.c_proj"]
    model = adapted(method, targets)
    name, layer = model.base_model.adapter_layers()[-1]  # the last layer: PEFT would have merged all before it
    trained_part(layer).flat[0] = bad
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"safe_merge: merging adapter 'default' into {name} gives .* NaN or inf"):
        ENTRY_POINTS[entry](model, layer)
    assert_unchanged(model, before)
    trained_part(layer).flat[0] = 0.5  # mended, the same call merges
    ENTRY_POINTS[entry](model, layer)
    assert layer.merged_adapters == ["default"]


def test_safe_merge_names_the_broken_one_of_several_adapters():
    model = adapted("lora", ["c_attn"])
    model.add_adapter("other", CONFIGS["lora"](["c_attn"]))
    perturb_trainable(model, seed=2)
    name, layer = model.base_model.adapter_layers()[0]
    trained_part(layer, "other").flat[3] = np.nan
    before = snapshot(model)
    with pytest.raises(ValueError, match=f"adapter 'other' into {name}"):
        model.merge_adapter(adapter_names=["default", "other"], safe_merge=True)
    assert_unchanged(model, before)
    model.merge_adapter(adapter_names=["default"], safe_merge=True)  # the sound one alone merges
    assert layer.merged_adapters == ["default"]


def test_safe_merge_onto_a_4bit_base_restores_the_nf4_layers():
    base = quantize_model(tiny_gpt(np.float32), target_modules=["c_attn"])
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False))
    _, layer = model.base_model.adapter_layers()[-1]
    trained_part(layer).flat[0] = np.inf
    before = snapshot(model)
    with pytest.raises(ValueError, match="safe_merge"):
        model.merge_and_unload(safe_merge=True)
    assert_unchanged(model, before)
    assert isinstance(layer.base_layer, NF4Linear)
    trained_part(layer).flat[0] = 0.5
    plain = model.merge_and_unload(safe_merge=True)  # dequantized, then merged
    assert not any(isinstance(m, (NF4Linear, LoRALinear)) for m in plain.modules())


def test_merging_without_safe_merge_is_peft_s_default(tmp_path):
    """No check: the broken adapter is merged, and the same entries of W are NaN in PEFT; with
    safe_merge, PEFT raises a ValueError as well."""
    ours = adapted("lora", ["c_attn"])
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt()), tmp_path)
    ours_layer = ours.base_model.model.transformer.h[1].attn.c_attn
    theirs_layer = theirs.base_model.model.transformer.h[1].attn.c_attn
    ours_layer.lora_B["default"].weight.data[5, 1] = np.nan
    with torch.no_grad():
        theirs_layer.lora_B["default"].weight[5, 1] = float("nan")
    with pytest.raises(ValueError):
        theirs.merge_adapter(safe_merge=True)
    with pytest.raises(ValueError):
        ours.merge_adapter(safe_merge=True)
    theirs.unmerge_adapter()  # PEFT merged the layers before the broken one; take them out again
    theirs.merge_adapter()
    ours.merge_adapter()
    W = ours_layer.base_layer.weight.numpy()  # (out, in); HF's Conv1D stores (in, out)
    W_peft = theirs_layer.base_layer.weight.detach().numpy().T
    assert np.isnan(W).sum() == W.shape[1] and np.array_equal(np.isnan(W), np.isnan(W_peft))
    finite = ~np.isnan(W)
    np.testing.assert_allclose(W[finite], W_peft[finite], rtol=1e-12, atol=1e-12)


def test_merge_and_unload_with_adapter_names_merges_those_as_peft(tmp_path):
    ours = adapted("lora", ["c_attn", "c_fc"])
    ours.add_adapter("other", CONFIGS["lora"](["c_attn"]))
    perturb_trainable(ours, seed=2)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt()), tmp_path)
    theirs.load_adapter(tmp_path / "other", adapter_name="other")
    x = ids()
    plain = ours.merge_and_unload(adapter_names=["default", "other"], safe_merge=True)
    reference = theirs.merge_and_unload(adapter_names=["default", "other"], safe_merge=True)
    with torch.no_grad():
        expected = reference(torch.tensor(x)).logits.numpy()
    assert np.max(np.abs(plain(x)[0].numpy() - expected)) < 1e-10


@pytest.mark.parametrize("config", [BottleneckConfig(bottleneck_size=3), PromptTuningConfig(num_virtual_tokens=2)],
                         ids=["bottleneck", "prompt tuning"])
def test_methods_that_cannot_merge_take_peft_s_arguments_and_say_why(config):
    model = get_peft_model(tiny_gpt(), config)
    before = snapshot(model)
    with pytest.raises((RuntimeError, NotImplementedError), match="cannot be merged"):
        model.merge_and_unload(safe_merge=True, adapter_names=["default"])
    with pytest.raises((RuntimeError, NotImplementedError), match="cannot be merged"):
        model.merge_adapter(adapter_names=["default"], safe_merge=True)
    assert_unchanged(model, before)


# ---------------------------------------------------------------------------
# tied weights
# ---------------------------------------------------------------------------

TIED_ENTRY_POINTS = {
    "merge_adapter": lambda model: model.merge_adapter(),
    "merge_and_unload": lambda model: model.merge_and_unload(),
    "layer.merge": lambda model: model.get_base_model().lm_head.merge(),
    "safe merge_and_unload": lambda model: model.merge_and_unload(safe_merge=True),
}


@pytest.mark.parametrize("entry", TIED_ENTRY_POINTS)
@pytest.mark.parametrize("method", CONFIGS)
def test_a_merge_into_the_tied_head_is_refused_until_it_is_untied(method, entry):
    model = adapted(method, ["c_attn", "lm_head"])
    gpt = model.get_base_model()
    wte = gpt.transformer.wte.weight.numpy().copy()
    x = ids()
    unmerged = model(x)[0].numpy()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match=r"cannot merge into lm_head: its weight is the same Parameter as that of "
                                           r"transformer\.wte \(tied weights\).*Nothing was changed"):
        TIED_ENTRY_POINTS[entry](model)
    assert_unchanged(model, before)
    head = gpt.lm_head  # the way out the error names
    head.base_layer.weight = nn.Parameter(head.base_layer.weight.data.copy(), requires_grad=False)
    TIED_ENTRY_POINTS[entry](model)
    assert np.max(np.abs(gpt(x)[0].numpy() - unmerged)) < 1e-10  # merged == unmerged (the GPT, merged or plain)
    assert gpt.transformer.wte.weight.numpy().tobytes() == wte.tobytes()  # the embedding untouched


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_an_unmerge_from_a_weight_tied_since_the_merge_is_refused(method):
    model = adapted(method, ["lm_head"])
    gpt = model.get_base_model()
    head = gpt.lm_head
    head.base_layer.weight = nn.Parameter(head.base_layer.weight.data.copy(), requires_grad=False)
    model.merge_adapter()
    gpt.transformer.wte.weight = head.base_layer.weight  # tied again, now holding W + ΔW
    before = snapshot(model)
    with pytest.raises(RuntimeError, match=r"cannot unmerge from lm_head: .*transformer\.wte \(tied weights\)"):
        model.unmerge_adapter()
    assert_unchanged(model, before)


class SharedWeights(nn.Module):
    """Two projections that share one matrix (``b``'s weight is ``a``'s), and a third module
    that is ``a`` itself under another name."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4, bias=False, dtype=np.float64)
        self.b = nn.Linear(4, 4, bias=False, dtype=np.float64)
        self.b.weight = self.a.weight
        self.c = nn.Linear(4, 4, dtype=np.float64)
        self.d = self.c

    def forward(self, x):
        return self.a(x) + self.b(x) + self.c(x)


@pytest.mark.parametrize("target, shared_with", [("a", "b"), ("b", "a"), ("c", "d")])
@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_any_shared_parameter_or_module_is_refused(method, target, shared_with):
    model = adapted(method, [target], base=SharedWeights())
    before = snapshot(model)
    for merge in (model.merge_adapter, model.merge_and_unload):
        with pytest.raises(RuntimeError, match=f"cannot merge into {target}: .* that of {shared_with} "):
            merge()
        assert_unchanged(model, before)
