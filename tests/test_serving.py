"""Many adapters in one batch (minilora/peft/gathered.py): BGMV and SGMV against the plain
per-row reference, and a mixed-adapter batch of GPT-2, BERT and LLaMA against PEFT's mixed
batch (``adapter_names=``), against the loop over adapters, and against each adapter merged
into its own copy of the base.

How close is "equal". A gathered kernel and the per-row reference compute the same
``s (x A^T) B^T`` with the same products, except that the stack pads each adapter to the
largest rank with zeros (which add exact zeros to each sum) and that BLAS may sum in another
order. By the dot-product bound (Higham, eq. 3.5, any order, FMA included) each result lies
within ``gamma_n |s| (|x| |A|^T) |B|^T`` of the exact value, n = in + r_max + 1 rounded
operations per entry (the two dot products and the scaling), so they lie within twice that
of each other: the tolerance below, in float32 and float64 alike. Through a whole model
(LayerNorm, softmax) the amplification has no closed form; those comparisons are made in
float64, within 1e-12 relative to the largest logit (the issue's figure; measured ~1e-15).
"""

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora.peft import BASE, LoraConfig, get_peft_model
from minilora.peft import gathered
from minilora.tensor import Tensor

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from peft_helpers import ids, llama_in_float64, perturb_trainable, rel_err, tiny_gpt, tiny_llama  # noqa: E402


def gamma(n: int, dtype) -> float:
    u = np.finfo(dtype).eps / 2
    return n * u / (1 - n * u)


# ---------------------------------------------------------------------------
# the kernels against the per-row reference
# ---------------------------------------------------------------------------


@st.composite
def stacks(draw):
    """A stack of 1..5 adapters of ranks 1..6 on an (in, out) layer, a batch of rows, each row's index."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n_in, n_out = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    ranks = draw(st.lists(st.integers(1, 6), min_size=1, max_size=5))
    rows, positions = draw(st.integers(1, 7)), draw(st.integers(1, 4))
    idx = draw(st.lists(st.integers(0, len(ranks) - 1), min_size=rows, max_size=rows))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    As = [Tensor(rng.standard_normal((r, n_in)).astype(dtype)) for r in ranks]
    Bs = [Tensor(rng.standard_normal((n_out, r)).astype(dtype)) for r in ranks]
    scalings = [float(s) for s in rng.uniform(-2, 2, len(ranks))]
    x = Tensor(rng.standard_normal((rows, positions, n_in)).astype(dtype))
    return x, As, Bs, scalings, np.array(idx)


def reference_bound(x, As, Bs, scalings, idx):
    """``2 gamma_n |s| (|x| |A|^T) |B|^T`` row by row (module docstring)."""
    n = x.shape[-1] + max(a.shape[0] for a in As) + 1
    M = np.stack([abs(scalings[k]) * (np.abs(x.data[i]) @ np.abs(As[k].data).T) @ np.abs(Bs[k].data).T
                  for i, k in enumerate(idx)])
    return 2 * gamma(n, x.dtype) * M


@settings(max_examples=40)
@given(case=stacks())
def test_bgmv_and_sgmv_equal_the_per_row_reference(case):
    x, As, Bs, scalings, idx = case
    expected = gathered.lora_rows_reference(x, As, Bs, scalings, idx).numpy()
    bound = reference_bound(x, As, Bs, scalings, idx)
    adapters = gathered.stack_adapters(As, Bs, scalings)
    assert adapters.A.shape == (len(As), max(a.shape[0] for a in As), x.shape[-1])  # padded to the largest rank
    for kernel in (gathered.bgmv, gathered.sgmv):
        got = kernel(x, adapters, idx).numpy()
        assert got.shape == expected.shape and got.dtype == expected.dtype
        assert np.all(np.abs(got.astype(np.float64) - expected) <= bound), kernel.__name__


def test_padding_adds_exact_zeros():
    """One adapter alone, padded to a larger rank by a second one: its rows come out bit for bit
    as from the unpadded product when both are summed by NumPy in the same order (here one row)."""
    rng = np.random.default_rng(0)
    A, Bm = rng.standard_normal((2, 5)), rng.standard_normal((3, 2))
    wide = (rng.standard_normal((7, 5)), rng.standard_normal((3, 7)))
    adapters = gathered.stack_adapters([Tensor(A), Tensor(wide[0])], [Tensor(Bm), Tensor(wide[1])], [1.5, 1.0])
    assert np.array_equal(adapters.A.numpy()[0, 2:], np.zeros((5, 5))) and np.array_equal(adapters.B.numpy()[0, :, 2:], np.zeros((3, 5)))
    x = Tensor(rng.standard_normal((1, 1, 5)))
    assert rel_err(gathered.bgmv(x, adapters, [0]).numpy(), 1.5 * (x.numpy() @ A.T) @ Bm.T) < 1e-15


def test_segments_are_the_runs_of_one_adapter():
    assert gathered.segments([2, 2, 0, 0, 0, 1, 2]) == [(0, 2, 2), (2, 5, 0), (5, 6, 1), (6, 7, 2)]
    assert gathered.segments([]) == []


def test_an_index_out_of_range_is_refused_before_anything_is_computed():
    adapters = gathered.stack_adapters([Tensor(np.ones((2, 3)))], [Tensor(np.ones((4, 2)))], [1.0])
    x = Tensor(np.ones((3, 1, 3)))
    for kernel in (gathered.bgmv, gathered.sgmv):
        with pytest.raises(ValueError, match=r"adapter index 1 \(row 2\) is out of range: the stack holds 1 adapters, indices 0..0"):
            kernel(x, adapters, [0, 0, 1])
        with pytest.raises(ValueError, match=r"adapter index -1 \(row 0\) is out of range"):
            kernel(x, adapters, [-1, 0, 0])  # not NumPy's "the last one"
        with pytest.raises(ValueError, match=r"adapter indices must be integers of shape \(rows,\) = \(3,\)"):
            kernel(x, adapters, [0, 0])
    with pytest.raises(ValueError, match=r"adapter 0 has A of shape \(2, 3\) and B of shape \(4, 3\)"):
        gathered.stack_adapters([Tensor(np.ones((2, 3)))], [Tensor(np.ones((4, 3)))], [1.0])


# ---------------------------------------------------------------------------
# a mixed batch of a whole model: GPT-2, BERT, LLaMA
# ---------------------------------------------------------------------------

# three adapters of different ranks and scalings (one rsLoRA), on overlapping and different targets
ADAPTERS = {
    "gpt": {"a": dict(r=2, lora_alpha=4, target_modules=["c_attn"]),
            "b": dict(r=5, lora_alpha=3, use_rslora=True, target_modules=["c_attn", "c_fc"]),
            "c": dict(r=8, lora_alpha=16, target_modules=["attn.c_proj", "mlp.c_proj"])},
    "llama": {"a": dict(r=2, lora_alpha=4),  # PEFT's default targets, q_proj and v_proj
              "b": dict(r=5, lora_alpha=3, use_rslora=True, target_modules=["q_proj", "gate_proj"]),
              "c": dict(r=8, lora_alpha=16, target_modules=["o_proj", "down_proj"])},
    "bert": {"a": dict(r=2, lora_alpha=4),  # query and value
             "b": dict(r=5, lora_alpha=3, use_rslora=True, target_modules=["query", "intermediate.dense"]),
             "c": dict(r=8, lora_alpha=16, target_modules=["key", "output.dense"])},
}
ROWS = ["b", "a", BASE, "c", "a", "b", "c"]  # every adapter, the base, rows of one adapter apart


def base_model(arch):
    if arch == "gpt":
        return tiny_gpt()
    if arch == "llama":
        return tiny_llama()
    from bert_helpers import tiny_hf
    from minilora.models import bert_hf

    return bert_hf.from_transformers(tiny_hf("BertModel"))


def to_hf(arch, model):
    from minilora.models import bert_hf, hf, llama_hf

    return {"gpt": hf.to_transformers, "llama": llama_hf.to_transformers, "bert": bert_hf.to_transformers}[arch](model)


def with_adapters(arch, base):
    """``base`` with the three adapters of ADAPTERS[arch], each moved off its init."""
    configs = ADAPTERS[arch]
    model = None
    for seed, (name, fields) in enumerate(configs.items()):
        config = LoraConfig(init_lora_weights=False, **copy.deepcopy(fields))
        if model is None:
            model = get_peft_model(base, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
        model.set_adapter(name)
        perturb_trainable(model, seed=seed + 1)
    return model.eval()


def batch(arch, rows=len(ROWS)):
    if arch == "bert":
        from bert_helpers import padded_batch

        return padded_batch([7, 3, 5, 6, 2, 7, 4][:rows], T=7)  # ids, types, mask
    return (ids(rows, 9, seed=3),)


def ours_out(arch, model, inputs, **kw):
    if arch == "bert":
        input_ids, types, mask = inputs
        return model(input_ids, mask, types, **kw).numpy()
    return model(inputs[0], **kw)[0].numpy()


def theirs_out(arch, model, inputs, **kw):
    with torch.no_grad():
        if arch == "bert":
            input_ids, types, mask = inputs
            return model(input_ids=torch.tensor(input_ids), token_type_ids=torch.tensor(types),
                         attention_mask=torch.tensor(mask), **kw).last_hidden_state.numpy()
        return model(torch.tensor(inputs[0]), **kw).logits.numpy()


def set_kernel(model, kernel):
    for _, layer in model.base_model.lora_layers():
        layer.mixed_batch_kernel = kernel


ARCHS = ["gpt", "bert", "llama"]


@pytest.fixture(autouse=True)
def float64_llama():
    with llama_in_float64():
        yield


@pytest.mark.parametrize("arch", ARCHS)
def test_a_mixed_batch_equals_peft_s_and_the_loop_and_each_merged_copy(arch, tmp_path):
    model, inputs = with_adapters(arch, base_model(arch)), batch(arch)
    mixed = ours_out(arch, model, inputs, adapter_names=ROWS)
    # the other kernels of the same layers
    for kernel in ("sgmv", "loop"):
        set_kernel(model, kernel)
        assert rel_err(ours_out(arch, model, inputs, adapter_names=ROWS), mixed) < 1e-12, kernel
    set_kernel(model, "bgmv")
    # PEFT's mixed batch over the transformers twin, the same three adapters loaded from our files
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(to_hf(arch, base_model(arch)), tmp_path / "a", adapter_name="a")
    for name in ("b", "c"):
        theirs.load_adapter(tmp_path / name, adapter_name=name)
    assert rel_err(theirs_out(arch, theirs.eval(), inputs, adapter_names=ROWS), mixed) < 1e-12
    # each adapter merged into its own copy of the base, run on that adapter's rows (and the bare base)
    for name in [*ADAPTERS[arch], BASE]:
        rows = [i for i, n in enumerate(ROWS) if n == name]
        copy_ = copy.deepcopy(model)
        if name == BASE:
            plain = copy_.unload()
        else:
            copy_.set_adapter(name)
            plain = copy_.merge_and_unload()
        alone = ours_out(arch, plain, tuple(part[rows] for part in inputs))
        assert rel_err(mixed[rows], alone) < 1e-12, name
    assert rel_err(mixed[[1]], mixed[[2]]) > 1e-3  # the rows' adapters made a difference


def test_the_gradients_of_a_mixed_batch_through_the_gather_equal_the_loop_s():
    model, (x,) = with_adapters("gpt", tiny_gpt()), batch("gpt")
    targets = np.roll(x, -1, axis=1)
    trained = {n: p for n, p in model.named_parameters() if ".lora_" in n}  # every adapter's A and B
    for p in trained.values():
        p.requires_grad_(True)
    grads = {}
    for kernel in ("bgmv", "sgmv", "loop"):
        set_kernel(model, kernel)
        for p in trained.values():
            p.grad = None
        _, loss = model(x, targets, adapter_names=ROWS)
        loss.backward()
        grads[kernel] = {n: p.grad.copy() for n, p in trained.items() if p.grad is not None}
    assert set(grads["bgmv"]) == set(grads["loop"]) == set(grads["sgmv"]) and len(grads["loop"]) == len(trained)
    for n in trained:
        for kernel in ("bgmv", "sgmv"):
            assert rel_err(grads[kernel][n], grads["loop"][n]) < 1e-12, (kernel, n)


def test_an_unknown_adapter_name_or_kernel_is_refused_before_anything_is_computed():
    model, (x,) = with_adapters("gpt", tiny_gpt()), batch("gpt", rows=2)
    with pytest.raises(ValueError, match=r"adapter_names lists unknown adapters \['nope'\]; known: \['__base__', 'a', 'b', 'c'\]"):
        model(x, adapter_names=["a", "nope"])
    set_kernel(model, "fast")
    with pytest.raises(ValueError, match=r"mixed_batch_kernel must be one of \['bgmv', 'sgmv', 'loop'\], got 'fast'"):
        model(x, adapter_names=["a", "b"])


def test_a_dora_adapter_in_the_batch_runs_the_loop():
    """DoRA's update is not a product of thin matrices: its rows go through the loop, equal to running each alone."""
    model = with_adapters("gpt", tiny_gpt())
    model.add_adapter("d", LoraConfig(r=3, use_dora=True, init_lora_weights=False, target_modules=["c_attn"]))
    model.set_adapter("d")
    perturb_trainable(model, seed=9)
    model.eval()
    (x,) = batch("gpt", rows=3)
    mixed = model(x, adapter_names=["d", "a", "d"])[0].numpy()
    for row, name in enumerate(["d", "a", "d"]):
        model.set_adapter(name)
        assert rel_err(mixed[row], model(x[row:row + 1])[0].numpy()[0]) < 1e-12


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_generate_with_adapter_names_equals_peft_s_and_each_row_alone(arch, tmp_path):
    """Greedy generation through the KV cache, every step a mixed batch: the tokens of PEFT's
    ``generate(adapter_names=...)`` over transformers, of each row generated alone with its adapter,
    and of generating without the cache."""
    model, names = with_adapters(arch, base_model(arch)), ["b", "a", BASE, "c"]
    x = ids(4, 5, seed=7)
    tokens = model.generate(x, 6, temperature=0, adapter_names=names).numpy()
    assert tokens.shape == (4, 11)
    assert np.array_equal(model.generate(x, 6, temperature=0, adapter_names=names, use_cache=False).numpy(), tokens)
    for row, name in enumerate(names):
        if name == BASE:
            with model.disable_adapter():
                alone = model.generate(x[row:row + 1], 6, temperature=0).numpy()
        else:
            model.set_adapter(name)
            alone = model.generate(x[row:row + 1], 6, temperature=0).numpy()
        assert np.array_equal(tokens[row], alone[0]), (row, name)
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(to_hf(arch, base_model(arch)), tmp_path / "a", adapter_name="a")
    for name in ("b", "c"):
        theirs.load_adapter(tmp_path / name, adapter_name=name)
    prompt = torch.tensor(x)
    with torch.no_grad():
        expected = theirs.eval().generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), adapter_names=names,
                                          max_new_tokens=6, do_sample=False, pad_token_id=0).numpy()
    assert np.array_equal(tokens, expected)
    with pytest.raises(ValueError, match=r"adapter_names has 3 entries for a batch of 4 prompts"):
        model.generate(x, 2, adapter_names=names[:3])
