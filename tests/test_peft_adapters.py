"""Bottleneck adapters (Houlsby 2019, Pfeiffer 2020) against the same adapters written in PyTorch.

PEFT has no bottleneck adapters, so the oracle is written here: Hugging Face's GPT-2
(``to_transformers``) with its blocks' ``attn`` and ``mlp`` wrapped in a ten-line torch
module, weights copied from minilora (the tiny GPT-2 is ``peft_helpers.py``'s). Logits and
gradients must agree in float64. The other oracles: the closed-form parameter count, the
near-identity bound of the init, and a snapshot of the model before a call that must fail.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from minilora import Tensor, nn  # noqa: E402
from minilora.models import GPT, KVCache, to_transformers  # noqa: E402
from minilora.peft import BottleneckConfig, LoraConfig, PeftModel, get_peft_model  # noqa: E402
from minilora.peft.adapters import ACTIVATIONS  # noqa: E402
from peft_helpers import C, N_LAYER, TINY, V, assert_edited_config_refused, assert_unchanged, snapshot, tiny_gpt  # noqa: E402


def ids(batch=2, length=10, seed=0):  # this file's inputs: 10 tokens (peft_helpers.ids: 12)
    return np.random.default_rng(seed).integers(0, V, size=(batch, length))


def adapted(config: BottleneckConfig, dtype=np.float64, seed=0, perturb=True) -> PeftModel:
    """``tiny_gpt`` with an adapter; ``perturb``: every adapter array moved away from its init,
    so that W_up is not near zero and a wrong placement or activation cannot hide."""
    model = get_peft_model(tiny_gpt(dtype, seed), config)
    if perturb:
        rng = np.random.default_rng(seed + 1)
        for p in model.parameters():
            if p.requires_grad:
                p.data = (p.data + 0.3 * rng.standard_normal(p.shape)).astype(dtype)
    return model


# ---------------------------------------------------------------------------
# the PyTorch reference
# ---------------------------------------------------------------------------

TORCH_ACT = {
    "relu": torch.relu, "gelu": torch.nn.functional.gelu, "tanh": torch.tanh, "silu": torch.nn.functional.silu,
    "swish": torch.nn.functional.silu, "gelu_new": lambda z: torch.nn.functional.gelu(z, approximate="tanh"),
}


class TorchAdapter(torch.nn.Module):
    """h = sublayer(...); h + up(act(down(h))). HF's attention returns a tuple: the adapter goes on its first item."""

    def __init__(self, sublayer, down_w, down_b, up_w, up_b, act):
        super().__init__()
        self.sublayer, self.act = sublayer, TORCH_ACT[act]
        self.down = torch.nn.Linear(down_w.shape[1], down_w.shape[0], dtype=torch.float64)
        self.up = torch.nn.Linear(up_w.shape[1], up_w.shape[0], dtype=torch.float64)
        with torch.no_grad():
            for p, value in ((self.down.weight, down_w), (self.down.bias, down_b), (self.up.weight, up_w), (self.up.bias, up_b)):
                p.copy_(torch.from_numpy(np.array(value)))

    def forward(self, *args, **kwargs):
        out = self.sublayer(*args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
        y = h + self.up(self.act(self.down(h)))
        return (y,) + tuple(out[1:]) if isinstance(out, tuple) else y


def torch_twin(model: PeftModel):
    """HF GPT-2 with the same base weights and the active adapters wrapped around attn / mlp;
    returns it and its adapter parameters under minilora's names."""
    hf = to_transformers(_base_copy(model))
    a = model.active_adapter
    act = model.peft_config[a].non_linearity
    for name, layer in model.base_model.adapter_layers():
        block_name, _, sub = name.rpartition(".")
        block = hf.get_submodule(block_name)
        down, up = layer.adapter_down[a], layer.adapter_up[a]
        setattr(block, sub, TorchAdapter(getattr(block, sub), down.weight.data, down.bias.data, up.weight.data, up.bias.data, act))
    hf.requires_grad_(False)
    adapter_params = {}
    for name, m in hf.named_modules():
        if isinstance(m, TorchAdapter):
            for part, lin in (("adapter_down", m.down), ("adapter_up", m.up)):
                lin.requires_grad_(True)
                adapter_params[f"{name}.{part}.default.weight"] = lin.weight
                adapter_params[f"{name}.{part}.default.bias"] = lin.bias
    return hf, adapter_params


def _base_copy(model: PeftModel) -> GPT:
    """A plain GPT holding the adapted model's base weights (wrappers' base_layer keys mapped back)."""
    copy = GPT(TINY, dtype=np.float64)
    state = {k.replace(".base_layer.", "."): v for k, v in model.get_base_model().state_dict().items() if ".adapter_" not in k}
    copy.load_state_dict(state)
    return copy.eval()


CASES = [("houlsby", "relu"), ("houlsby", "gelu_new"), ("houlsby", "silu"), ("pfeiffer", "gelu"), ("pfeiffer", "tanh")]


@pytest.mark.parametrize("placement,act", CASES, ids=[f"{p}-{a}" for p, a in CASES])
def test_logits_and_gradients_match_pytorch(placement, act):
    model = adapted(BottleneckConfig(bottleneck_size=5, non_linearity=act, placement=placement))
    hf, torch_params = torch_twin(model)
    x, targets = ids(), ids(seed=1)
    logits, loss = model(x, targets)
    t_logits = hf(torch.from_numpy(x)).logits
    t_loss = torch.nn.functional.cross_entropy(t_logits.reshape(-1, V), torch.from_numpy(targets).reshape(-1))
    assert np.abs(logits.numpy() - t_logits.detach().numpy()).max() < 1e-8
    with model.disable_adapter():  # the adapters matter: the logits are not the base model's
        assert np.abs(model(x)[0].numpy() - t_logits.detach().numpy()).max() > 1e-3
    loss.backward()
    t_loss.backward()
    ours = {n.removeprefix("base_model.model."): p for n, p in model.named_parameters() if p.grad is not None}
    assert set(ours) == set(torch_params)  # gradients reach the adapters and nothing else
    assert len(ours) == 4 * N_LAYER * (2 if placement == "houlsby" else 1)
    for name, p in ours.items():
        assert np.abs(p.grad - torch_params[name].grad.numpy()).max() < 1e-8, name


def test_attention_adapter_works_with_a_kv_cache():
    """The wrapped attention still takes (x, kv_cache): token-by-token logits equal the full forward."""
    model = adapted(BottleneckConfig(bottleneck_size=3))
    x = ids(1, 6)
    full = model(x)[0].numpy()
    cache = KVCache()
    steps = [model(x[:, t:t + 1], kv_cache=cache)[0].numpy() for t in range(6)]
    assert np.abs(np.concatenate(steps, axis=1) - full).max() < 1e-10


# ---------------------------------------------------------------------------
# counts and init
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
@pytest.mark.parametrize("m,n_layer,n_embd", [(1, 1, 8), (4, 2, 16), (8, 3, 24)])
def test_parameter_count_is_the_closed_form(placement, m, n_layer, n_embd):
    base = tiny_gpt(np.float32, n_layer=n_layer, n_embd=n_embd)
    n_base = base.num_parameters()
    model = get_peft_model(base, BottleneckConfig(bottleneck_size=m, placement=placement))
    per_adapter = 2 * n_embd * m + m + n_embd
    expected = per_adapter * n_layer * (2 if placement == "houlsby" else 1)
    assert model.get_nb_trainable_parameters() == (expected, n_base + expected)
    assert BottleneckConfig(bottleneck_size=m, placement=placement).num_parameters(n_layer, n_embd) == expected


@given(init_scale=st.sampled_from([0.0, 1e-4, 1e-3, 1e-2]), m=st.integers(1, 8),
       act=st.sampled_from(sorted(ACTIVATIONS)), seed=st.integers(0, 5))
def test_init_is_near_identity_within_the_init_scale(init_scale, m, act, seed):
    """At init b_up = 0 and |W_up| <= 2 σ (σ = init_scale), and |act(z)| <= |z| for every activation, so
    |adapter(h) - h|_i = |Σ_j W_up[i, j] a_j| <= 2 σ ||a||_1 with a = act(W_down h + b_down): per row."""
    model = adapted(BottleneckConfig(bottleneck_size=m, non_linearity=act, init_scale=init_scale), seed=seed, perturb=False)
    h_in = Tensor(np.random.default_rng(seed).standard_normal((2, 5, C)))
    for _, layer in model.base_model.adapter_layers():
        up = layer.adapter_up["default"]
        assert (np.abs(up.weight.data) <= 2 * init_scale).all() and (up.bias.data == 0).all()
        h = layer.base_layer(h_in).numpy()
        a = ACTIVATIONS[act](layer.adapter_down["default"](Tensor(h))).numpy()  # (2, 5, m)
        diff = np.abs(layer(h_in).numpy() - h)  # (2, 5, C)
        assert (diff <= 2 * init_scale * np.abs(a).sum(axis=-1, keepdims=True) + 1e-15).all()
    x = ids(seed=seed)
    with model.disable_adapter():
        base_logits = model(x)[0].numpy()
    if init_scale == 0:
        assert np.array_equal(model(x)[0].numpy(), base_logits)  # W_up = 0: exactly the base model


# ---------------------------------------------------------------------------
# merging is impossible; the rest of the protocol
# ---------------------------------------------------------------------------


def test_merging_is_refused_with_the_reason_and_changes_nothing():
    model = adapted(BottleneckConfig(bottleneck_size=4))
    x = ids()
    before, logits = snapshot(model), model(x)[0].numpy()
    for call in (model.merge_adapter, model.merge_and_unload):
        with pytest.raises(RuntimeError, match="nonlinearity between its two projections"):
            call()
    with pytest.raises(RuntimeError, match="not linear"):
        model.add_weighted_adapter(["default"], [1.0], "sum")
    model.unmerge_adapter()  # nothing is merged: nothing to do
    assert_unchanged(model, before)
    assert np.array_equal(model(x)[0].numpy(), logits)


def test_several_adapters_set_delete_disable_mix_unload():
    base = tiny_gpt()
    tree = [(n, id(m)) for n, m in base.named_modules()]
    x = ids(3)
    base_logits = base(x)[0].numpy()
    model = get_peft_model(base, BottleneckConfig(bottleneck_size=4))
    model.add_adapter("pf", BottleneckConfig(bottleneck_size=2, placement="pfeiffer", non_linearity="tanh"))
    rng = np.random.default_rng(0)
    for name, p in model.named_parameters():
        if ".adapter_" in name:
            p.data = p.data + 0.3 * rng.standard_normal(p.shape)
    assert model.active_adapter == "default"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)
    out_default = model(x)[0].numpy()
    model.set_adapter("pf")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 4 * N_LAYER and all(".pf." in n and ".mlp." in n for n in trainable)
    out_pf = model(x)[0].numpy()
    assert np.abs(out_pf - out_default).max() > 1e-3
    with model.disable_adapter():
        assert np.array_equal(model(x)[0].numpy(), base_logits)
    mixed = model(x, adapter_names=["default", "__base__", "pf"])[0].numpy()
    assert np.allclose(mixed[0], out_default[0], atol=1e-12) and np.allclose(mixed[1], base_logits[1], atol=1e-12)
    assert np.allclose(mixed[2], out_pf[2], atol=1e-12)
    with pytest.raises(ValueError, match="unknown adapters"):
        model(x, adapter_names=["default", "nope", "pf"])
    with pytest.raises(ValueError, match="is active"):
        model.delete_adapter("pf")
    model.delete_adapter("default")  # the attention wrappers held only "default": they go
    kinds = {n: type(m).__name__ for n, m in model.get_base_model().named_modules()}
    assert kinds["transformer.h.0.attn"] == "CausalSelfAttention" and kinds["transformer.h.0.mlp"] == "AdapterLayer"
    assert np.allclose(model(x)[0].numpy(), out_pf, atol=1e-12)
    plain = model.unload()
    assert [(n, id(m)) for n, m in plain.named_modules()] == tree  # the very modules we started from
    assert np.array_equal(plain(x)[0].numpy(), base_logits)


def test_save_and_load_round_trip(tmp_path):
    import json

    from safetensors.numpy import load_file

    model = adapted(BottleneckConfig(bottleneck_size=3, non_linearity="gelu", placement="houlsby", init_scale=0.01))
    model.add_adapter("other", BottleneckConfig(bottleneck_size=2, placement="pfeiffer"))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "BOTTLENECK" and config["bottleneck_size"] == 3 and config["non_linearity"] == "gelu"
    assert "cannot load" in config["minilora_note"]
    keys = sorted(load_file(tmp_path / "adapter_model.safetensors"))
    expected = sorted(f"base_model.model.transformer.h.{i}.{sub}.{part}.{kind}" for i in range(N_LAYER)
                      for sub in ("attn", "mlp") for part in ("adapter_down", "adapter_up") for kind in ("weight", "bias"))
    assert keys == expected
    assert load_file(tmp_path / "adapter_model.safetensors")["base_model.model.transformer.h.0.mlp.adapter_down.weight"].shape == (3, C)
    assert (tmp_path / "other" / "adapter_model.safetensors").exists()

    x = ids()
    loaded = PeftModel.from_pretrained(tiny_gpt(), tmp_path)
    assert np.array_equal(loaded(x)[0].numpy(), model(x)[0].numpy())
    assert loaded.get_nb_trainable_parameters()[0] == 0  # for inference, by default
    loaded.load_adapter(tmp_path / "other", "other", is_trainable=True)
    loaded.set_adapter("other")
    model.set_adapter("other")
    assert np.array_equal(loaded(x)[0].numpy(), model(x)[0].numpy())
    assert loaded.get_nb_trainable_parameters()[0] == BottleneckConfig(bottleneck_size=2, placement="pfeiffer").num_parameters(N_LAYER, C)


def test_other_loaders_say_they_cannot_load_it(tmp_path):
    adapted(BottleneckConfig(bottleneck_size=2)).save_pretrained(tmp_path)
    lora = get_peft_model(tiny_gpt(), LoraConfig(r=2, target_modules=["c_attn"]))
    before = snapshot(lora)
    with pytest.raises(ValueError, match="cannot add a BOTTLENECK adapter to a LORA model"):
        lora.load_adapter(tmp_path, "adapters")
    assert_unchanged(lora, before)
    peft = pytest.importorskip("peft")
    with pytest.raises(Exception) as info:  # PEFT knows no such method
        peft.PeftModel.from_pretrained(to_transformers(tiny_gpt()), tmp_path)
    assert "BOTTLENECK" in str(info.value)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

BAD = [
    (dict(bottleneck_size=0), "bottleneck_size"), (dict(bottleneck_size=-3), "bottleneck_size"),
    (dict(bottleneck_size=2.5), "bottleneck_size"), (dict(bottleneck_size=True), "bottleneck_size"),
    (dict(placement="middle"), "placement"), (dict(non_linearity="sigmoid"), "non_linearity"),
    (dict(non_linearity="softmax"), "non_linearity"), (dict(init_scale=-1.0), "init_scale"),
    (dict(init_scale=float("nan")), "init_scale"), (dict(adapter_dropout=1.0), "adapter_dropout"),
]


@pytest.mark.parametrize("kwargs,field", BAD, ids=[f"{k}={v}" for k, v in [next(iter(b[0].items())) for b in BAD]])
def test_bad_config_is_refused_and_the_model_is_unchanged(kwargs, field):
    with pytest.raises(ValueError, match=field):
        BottleneckConfig(**kwargs)
    config = BottleneckConfig(bottleneck_size=4)  # valid when made, edited afterwards (in place)
    assert_edited_config_refused(config, kwargs, field)
    model = adapted(BottleneckConfig(bottleneck_size=4))
    before = snapshot(model)
    with pytest.raises(ValueError, match=field):
        model.add_adapter("bad", config)
    assert_unchanged(model, before)


def test_a_model_without_gpt_blocks_is_refused():
    with pytest.raises(ValueError, match="inside GPT blocks"):
        get_peft_model(nn.Sequential(nn.Linear(4, 4)), BottleneckConfig(bottleneck_size=2))


def test_adapters_go_through_the_backend_seam(cupy_backend):
    """On the 'cupy' backend (on a CPU the CuPy stand-in, tests/fake_cupy) a host array meeting the data raises."""
    from minilora.backend import is_device_array

    model = get_peft_model(GPT(TINY), BottleneckConfig(bottleneck_size=3, non_linearity="silu", init_scale=0.1))
    logits, loss = model(ids(2, 5), ids(2, 5, seed=1))
    loss.backward()
    assert is_device_array(logits.data)
    assert all(is_device_array(p.grad) for p in model.parameters() if p.requires_grad)
