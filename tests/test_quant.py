"""NF4 quantization and LoRA on a 4-bit base (QLoRA).

Oracles: the published NF4 table (hard-coded below), the format's own error bound, a
nearest-level search written out in the test (all 16 distances), closed-form byte counts,
and, for LoRA on top, the quantized base model itself and the dense model that
``merge_and_unload`` returns.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minilora
from minilora import Tensor, nn
from minilora.models import GPT, GPTConfig
from minilora.peft import LoraConfig, LoRALinear, get_peft_model
from minilora.quant import (
    NF4_VALUES,
    NF4Linear,
    bits_per_parameter,
    dequantize_nf4,
    nominal_bits_per_parameter,
    quantization_error,
    quantize_model,
    quantize_nf4,
)
from tolerances import unit_roundoff

# The NF4 table of QLoRA (Dettmers et al. 2023, appendix E), as bitsandbytes hard-codes it in
# bitsandbytes/functional.py (``get_4bit_type``, ``typename == "nf4"``) and in its CUDA kernels
# (``dDequantizeNF4``): float32 values, printed here as Python floats.
BNB_NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
], dtype=np.float32)
HALF_MAX_GAP = float(np.max(np.diff(BNB_NF4.astype(np.float64)))) / 2  # the worst rounding, in units of absmax
# float32's share (tests/tolerances.py): dequantizing rounds at most three times -- the 8-bit code times its
# scale, plus the mean (double quantization), then the level times that absmax -- each result at most
# 2 absmax, so within 2 x 3 u = 6 u of absmax, u = 2^-24.
ROUNDING = 6 * unit_roundoff(np.float32)

TINY = GPTConfig(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=16)


def tiny_gpt(dtype=np.float32, seed=0) -> GPT:
    """A tiny GPT-2 with every parameter perturbed (biases and LayerNorms start at 0 and 1 otherwise)."""
    minilora.manual_seed(seed)
    model = GPT(TINY, dtype=dtype)
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data = (p.data + 0.1 * rng.standard_normal(p.shape)).astype(dtype)
    return model.eval()


def ids(batch=2, length=10, seed=0):
    return np.random.default_rng(seed).integers(0, TINY.vocab_size, size=(batch, length))


def indices(q) -> np.ndarray:
    """The stored 4-bit indices, unpacked here independently of the library: high nibble first."""
    packed = np.asarray(q.packed)
    return np.stack([packed >> 4, packed & 0x0F], axis=1).reshape(-1)


def blocks_of(W, block_size) -> np.ndarray:
    """W flattened, zero-padded to a multiple of block_size, as (n_blocks, block_size) float64."""
    flat = np.asarray(W, dtype=np.float64).reshape(-1)
    padded = np.zeros(-(-flat.size // block_size) * block_size)
    padded[: flat.size] = flat
    return padded.reshape(-1, block_size)


def absmax_used(q) -> np.ndarray:
    """The absmax each block is dequantized with, recomputed from the stored arrays."""
    if not q.double_quant:
        return np.asarray(q.absmax)
    scale = np.repeat(np.asarray(q.absmax_scale), q.dq_block_size)[: q.absmax_q.shape[0]]
    return (np.asarray(q.absmax_q).astype(np.float32) * scale + np.asarray(q.absmax_mean)).astype(np.float32)


# ---------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------


def test_nf4_values_are_bitsandbytes_table_bit_for_bit():
    assert NF4_VALUES.dtype == np.float32 and NF4_VALUES.shape == (16,)
    assert np.array_equal(NF4_VALUES, BNB_NF4)
    assert NF4_VALUES[7] == 0.0 and NF4_VALUES[0] == -1.0 and NF4_VALUES[-1] == 1.0  # an exact zero, and [-1, 1]
    assert (NF4_VALUES[:7] < 0).all() and (NF4_VALUES[8:] > 0).all()  # 7 negative levels, 8 positive
    assert (np.diff(NF4_VALUES) > 0).all()


# ---------------------------------------------------------------------------
# quantize / dequantize
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("double_quant", [True, False], ids=["dq", "no-dq"])
@pytest.mark.parametrize("shape,scale", [((64, 64), 1.0), ((48, 100), 0.02), ((7, 5), 3.0), ((300, 257), 1e-3)])
def test_error_is_within_the_bound_the_format_implies(shape, scale, double_quant):
    """|W_i - Ŵ_i| <= (max gap / 2) · absmax_b + |absmax_b - absmax'_b|, where absmax' is what
    double quantization gives back (<= s_j / 2 from absmax, s_j the 8-bit step)."""
    rng = np.random.default_rng(sum(shape))
    W = (scale * rng.standard_normal(shape)).astype(np.float32)
    q = quantize_nf4(W, double_quant=double_quant)
    W_hat = dequantize_nf4(q)
    assert W_hat.shape == W.shape and W_hat.dtype == W.dtype
    blocks = blocks_of(W, 64)
    true_absmax = np.abs(blocks).max(axis=1)
    used = absmax_used(q).astype(np.float64)
    if double_quant:  # the 8-bit error of the constants, by its own bound
        step = np.repeat(np.asarray(q.absmax_scale, dtype=np.float64), 256)[: used.size]
        assert (np.abs(used - true_absmax) <= step / 2 + ROUNDING * true_absmax.max()).all()
    bound = HALF_MAX_GAP * true_absmax + np.abs(used - true_absmax) + ROUNDING * true_absmax
    err = np.abs(blocks_of(W_hat, 64) - blocks)
    assert (err <= bound[:, None]).all()
    assert quantization_error(W, q)["max_abs"] <= bound.max()


@given(
    W=hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64]),
        shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9),
        elements=st.floats(-1e3, 1e3, width=32),
    ),
    block_size=st.sampled_from([2, 4, 8, 64]),
    double_quant=st.booleans(),
)
def test_dequantized_value_is_nearest_level_times_absmax(W, block_size, double_quant):
    """Every element comes back as NF4[k] · absmax_b, with k the nearest level to W_i / absmax_b
    (the stored float32 absmax); with double quantization, times the dequantized absmax."""
    q = quantize_nf4(W, block_size=block_size, double_quant=double_quant, dq_block_size=4)  # small 8-bit blocks: several
    k = indices(q)
    blocks = blocks_of(W, block_size)
    stored_absmax = np.abs(blocks).max(axis=1).astype(np.float32)
    if not double_quant:
        assert np.array_equal(np.asarray(q.absmax), stored_absmax)
    # the nearest level, searched among all 16 in float64
    x = blocks / np.where(stored_absmax == 0, 1, stored_absmax).astype(np.float64)[:, None]
    dist = np.abs(x.reshape(-1, 1) - BNB_NF4.astype(np.float64)[None, :])  # (n_padded, 16)
    assert (dist[np.arange(k.size), k] <= dist.min(axis=1)).all()
    expected = (BNB_NF4[k].reshape(blocks.shape) * absmax_used(q)[:, None]).reshape(-1)[: W.size]
    assert np.array_equal(dequantize_nf4(q), expected.reshape(W.shape).astype(W.dtype))
    assert (k[W.size:] == 7).all()  # the padding is stored as the level 0


def test_double_quant_scheme_as_documented():
    """c = absmax - mean; s_j = max |c| / 127 per 256 constants; c8 = round(c / s_j) (int8)."""
    W = np.random.default_rng(1).standard_normal((128, 300)).astype(np.float32)
    q = quantize_nf4(W)
    absmax = np.abs(blocks_of(W, 64)).max(axis=1).astype(np.float32)
    mean = np.float32(absmax.astype(np.float64).mean())
    c = absmax.astype(np.float64) - mean
    padded = np.zeros(-(-c.size // 256) * 256)
    padded[: c.size] = c
    scale = (np.abs(padded.reshape(-1, 256)).max(axis=1) / 127).astype(np.float32)
    c8 = np.rint(padded.reshape(-1, 256) / scale[:, None].astype(np.float64)).reshape(-1)[: c.size]
    assert q.absmax is None and q.absmax_q.dtype == np.int8 and q.absmax_scale.dtype == np.float32
    assert np.asarray(q.absmax_mean) == mean
    assert np.array_equal(np.asarray(q.absmax_scale), scale)
    assert np.array_equal(np.asarray(q.absmax_q), c8.astype(np.int8))
    assert np.abs(np.asarray(q.absmax_q)).max() == 127  # the largest |c| of each 256-block maps to ±127


def test_a_block_of_zeros_and_a_constant_block_come_back_exactly():
    W = np.zeros((4, 64), dtype=np.float32)
    W[1] = 0.5
    W[2, 3] = -2.0
    for dq in (True, False):
        W_hat = dequantize_nf4(quantize_nf4(W, double_quant=dq))
        assert (W_hat[0] == 0).all() and (W_hat[3] == 0).all() and (W_hat[2, :3] == 0).all()
    assert np.array_equal(dequantize_nf4(quantize_nf4(W, double_quant=False)), W)  # ±absmax and 0 are exact


def test_sizes_that_do_not_divide_the_block_are_padded():
    W = np.random.default_rng(2).standard_normal((5, 7))  # 35 weights: one padded block of 64
    q = quantize_nf4(W, double_quant=False)
    assert q.packed.shape == (32,) and q.absmax.shape == (1,)
    W_hat = dequantize_nf4(q)
    assert W_hat.shape == (5, 7) and W_hat.dtype == np.float64
    padded = np.zeros(64)
    padded[:35] = W.reshape(-1)  # quantizing the padded vector by hand gives the same codes
    assert np.array_equal(np.asarray(quantize_nf4(padded, double_quant=False).packed), np.asarray(q.packed))


# ---------------------------------------------------------------------------
# bits per parameter and error on a Gaussian matrix
# ---------------------------------------------------------------------------


def test_bits_per_parameter_from_the_stored_bytes():
    n = 768 * 768
    W = np.random.default_rng(3).standard_normal((768, 768)).astype(np.float32)
    q = quantize_nf4(W)
    n_blocks = n // 64
    assert q.nbytes == n // 2 + n_blocks + 4 * math.ceil(n_blocks / 256) + 4  # codes, int8 absmax, scales, mean
    assert bits_per_parameter(q) == pytest.approx(4.127, abs=5e-4)
    assert nominal_bits_per_parameter() == 4 + 8 / 64 + 32 / (64 * 256)
    assert bits_per_parameter(q) == pytest.approx(nominal_bits_per_parameter(), abs=1e-4)
    assert bits_per_parameter(quantize_nf4(W, double_quant=False)) == 4.5 == nominal_bits_per_parameter(double_quant=False)


def test_quantization_error_of_a_gaussian_matrix():
    W = np.random.default_rng(4).standard_normal((768, 768)).astype(np.float32)
    err = quantization_error(W)
    assert 0.05 < err["rel_frobenius"] < 0.12  # about 0.092 with blocks of 64
    # the format's bound (test_error_is_within_the_bound_the_format_implies) at the largest absmax: half the
    # widest gap, plus double quantization's error of the absmax (half its 8-bit step), plus float32's rounding
    step = float(np.max(np.asarray(quantize_nf4(W).absmax_scale, dtype=np.float64)))
    assert err["mean_abs"] < err["max_abs"] <= (HALF_MAX_GAP + ROUNDING) * np.abs(W).max() + step / 2
    # without double quantization the absmax is exact: the error is no larger, but for rounding noise -- a
    # block's rounded absmax can land its values nearer a level by chance -- here well under 1e-3 of the error
    assert quantization_error(W, double_quant=False)["rel_frobenius"] <= err["rel_frobenius"] + 1e-3


@pytest.mark.parametrize("kwargs,message", [
    (dict(block_size=0), "block_size"), (dict(block_size=63), "block_size"), (dict(block_size=-64), "block_size"),
    (dict(block_size=64.0), "block_size"), (dict(block_size=True), "block_size"), (dict(dq_block_size=0), "dq_block_size"),
])
def test_bad_block_sizes_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantize_nf4(np.ones((4, 64)), **kwargs)


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_nf4(np.array([[1.0, np.nan]]))
    with pytest.raises(TypeError, match="floating-point"):
        quantize_nf4(np.ones((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="empty"):
        quantize_nf4(np.zeros((0, 4)))


# ---------------------------------------------------------------------------
# NF4Linear and quantize_model
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_nf4_linear_forward_and_gradients(bias):
    minilora.manual_seed(0)
    dense = nn.Linear(40, 24, bias=bias, dtype=np.float64)  # 960 weights: 15 blocks
    layer = NF4Linear.from_linear(dense)
    W_hat = dequantize_nf4(layer.qweight)
    x = Tensor(np.random.default_rng(0).standard_normal((3, 5, 40)), requires_grad=True)
    y = layer(x)
    expected = x.data @ W_hat.T + (dense.bias.data if bias else 0)
    assert np.allclose(y.data, expected, rtol=0, atol=1e-12)
    assert [n for n, _ in layer.named_parameters()] == (["bias"] if bias else [])  # the weight is no parameter
    y.sum().backward()
    assert np.allclose(x.grad, np.ones((3, 5, 24)) @ W_hat, atol=1e-12)  # the input still gets its gradient
    assert not layer.weight.requires_grad and np.array_equal(layer.weight.data, W_hat)
    with pytest.raises(AttributeError):
        layer.weight = nn.Parameter(W_hat)  # the 4-bit weight cannot be replaced by accident


def test_quantize_model_replaces_the_four_projections_only():
    model = tiny_gpt()
    x = ids()
    dense_logits = model(x)[0].numpy()
    quantize_model(model)
    kinds = {n: type(m).__name__ for n, m in model.named_modules()}
    for i in range(TINY.n_layer):
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            assert kinds[f"transformer.h.{i}.{name}"] == "NF4Linear"
    assert kinds["lm_head"] == "Linear" and model.lm_head.weight is model.transformer.wte.weight  # still tied
    assert sum(k == "NF4Linear" for k in kinds.values()) == 4 * TINY.n_layer
    logits = model(x)[0].numpy()
    assert 0 < np.abs(logits - dense_logits).max() < 0.5  # close to the dense model, not equal


def snapshot(model):
    return ([(n, type(m).__name__, id(m)) for n, m in model.named_modules()],
            [(n, id(p), p.requires_grad, p.data.copy()) for n, p in model.named_parameters()])


def assert_unchanged(model, before):
    tree, params = snapshot(model)
    assert tree == before[0]
    assert [p[:3] for p in params] == [p[:3] for p in before[1]]
    assert all(np.array_equal(a[3], b[3]) for a, b in zip(params, before[1]))


@pytest.mark.parametrize("targets,message", [
    (["lm_head"], "tied"), (["ln_1"], "nn.Linear layers only"), (["nothing"], "matches no module"),
    (["c_fc", "lm_head"], "tied"),
])
def test_quantize_model_refuses_bad_targets_and_leaves_the_model_as_it_was(targets, message):
    model = tiny_gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        quantize_model(model, target_modules=targets)
    assert_unchanged(model, before)


# ---------------------------------------------------------------------------
# LoRA on a 4-bit base
# ---------------------------------------------------------------------------

QLORA = dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"])


def qlora(dtype=np.float32, seed=0, random_update=False, **config):
    base = quantize_model(tiny_gpt(dtype, seed))
    model = get_peft_model(base, LoraConfig(**{**QLORA, **config}))
    if random_update:  # B != 0, so that a merge that loses ΔW cannot pass
        rng = np.random.default_rng(seed + 1)
        for p in model.parameters():
            if p.requires_grad:
                p.data = (p.data + 0.1 * rng.standard_normal(p.shape)).astype(p.dtype)
    return model


def test_lora_on_nf4_starts_at_the_quantized_model_and_trains_only_a_and_b():
    x = ids()
    quantized_logits = quantize_model(tiny_gpt())(x)[0].numpy()
    model = qlora()
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(layers) == 4 * TINY.n_layer and all(isinstance(m.base_layer, NF4Linear) for m in layers)
    assert all(m.lora_A["default"].weight.dtype == np.float32 == m.lora_B["default"].weight.dtype for m in layers)
    logits, loss = model(x, ids(seed=1))
    assert np.array_equal(logits.numpy(), quantized_logits)  # B = 0: exactly the quantized base
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * len(layers)
    params = dict(model.named_parameters())
    assert all(np.abs(params[n].grad).max() > 0 for n in with_grad if ".lora_B." in n)  # B's gradient: g^T (A x) != 0
    with model.disable_adapter():
        assert np.array_equal(model(x)[0].numpy(), quantized_logits)


def test_merge_into_nf4_is_refused_and_changes_nothing():
    model = qlora(random_update=True)
    x = ids()
    before, logits = snapshot(model), model(x)[0].numpy()
    with pytest.raises(RuntimeError, match="re-quantized"):
        model.merge_adapter()
    assert_unchanged(model, before)
    assert np.array_equal(model(x)[0].numpy(), logits)


def test_pissa_on_nf4_is_refused_and_leaves_the_model_as_it_was():
    base = quantize_model(tiny_gpt())
    before = snapshot(base)
    with pytest.raises(ValueError, match="pissa"):
        get_peft_model(base, LoraConfig(init_lora_weights="pissa", **QLORA))
    assert_unchanged(base, before)


@given(
    r=st.integers(1, 4),
    alpha=st.sampled_from([1, 4, 8]),
    targets=st.sets(st.sampled_from(["c_attn", "c_proj", "c_fc"]), min_size=1).map(sorted),
    seed=st.integers(0, 3),
)
def test_merge_and_unload_gives_a_dense_model_equal_to_the_adapted_one(r, alpha, targets, seed):
    model = qlora(np.float64, seed, random_update=True, r=r, lora_alpha=alpha, target_modules=targets)
    x = ids(seed=seed)
    adapted = model(x)[0].numpy()
    dense = model.merge_and_unload()
    assert isinstance(dense, GPT)
    kinds = {type(m).__name__ for m in dense.modules()}
    assert "NF4Linear" not in kinds and "LoRALinear" not in kinds  # every projection a plain nn.Linear again
    assert np.allclose(dense(x)[0].numpy(), adapted, rtol=0, atol=1e-10)


def test_quantization_goes_through_the_backend_seam(cupy_backend):
    """On the 'cupy' backend (on a CPU the CuPy stand-in, tests/fake_cupy) a host array meeting the
    data raises: quantize, dequantize and NF4Linear use ``backend.xp`` only (the table is moved there)."""
    from minilora.backend import is_device_array

    W = minilora.randn(24, 40).numpy()
    for dq in (True, False):
        q = quantize_nf4(W, double_quant=dq)
        assert all(is_device_array(a) for a in q.arrays().values())
        assert is_device_array(dequantize_nf4(q))
    layer = NF4Linear(q, nn.Parameter(minilora.zeros(24).data))
    y = layer(minilora.randn(3, 40, requires_grad=True))
    y.sum().backward()
    assert is_device_array(y.data)
