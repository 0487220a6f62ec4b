"""Left padding and batched greedy decoding (minilora/models/decoding.py, ``padding_mask`` in gpt.py).

Oracles: transformers' GPT-2 and LLaMA given the same attention_mask and position_ids (the
logits of the real tokens, float64: agreement to 1e-10 of the largest logit, where float64's
rounding through two layers is ~1e-15), and each prompt decoded alone -- by ``greedy_decode`` on a
batch of one, which pads nothing, and by ``generate(temperature=0)``, which knows no padding --
on GPT and LLaMA, plain, with a LoRA adapter whose B is not zero, and with prefix tuning (whose
virtual tokens shift every position). Float64 models: a padded row's attention sums include
exact zeros that BLAS may add in another order, so logits agree to rounding (~1e-15) and the
argmax tokens exactly.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import minilora  # noqa: E402
from minilora.models import GPT, GPTConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402
from minilora.models.decoding import greedy_decode  # noqa: E402
from minilora.peft import LoraConfig, PrefixTuningConfig, get_peft_model  # noqa: E402
from minilora.tensor import float64  # noqa: E402
from peft_helpers import llama_in_float64  # noqa: E402

V, BLOCK = 48, 64
LENGTHS = (5, 12, 1, 17, 8, 12, 3)  # prompt lengths: padding from 0 to 16 positions


def tiny(arch: str):
    minilora.manual_seed(0)
    if arch == "gpt":
        return GPT(GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=2, n_embd=16), dtype=float64)
    return LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=BLOCK,
                                        rope_theta=100.0), dtype=float64)


def with_method(model, method: str):
    if method == "lora":  # init_lora_weights=False: B random too, so the adapter changes the output
        target = ["c_attn"] if isinstance(model, GPT) else ["q_proj", "v_proj"]
        return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=target, init_lora_weights=False))
    if method == "prefix":
        return get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=3))
    return model


def prompts():
    rng = np.random.default_rng(1)
    return [rng.integers(1, V, size=n) for n in LENGTHS]


def left_padded(rows):
    T = max(len(r) for r in rows)
    ids, mask = np.zeros((len(rows), T), dtype=np.int64), np.zeros((len(rows), T), dtype=np.int64)
    for b, r in enumerate(rows):
        ids[b, T - len(r):], mask[b, T - len(r):] = r, 1
    return ids, mask


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_left_padded_logits_equal_transformers_with_the_same_mask_and_positions(arch):
    from minilora.models.hf import to_transformers as gpt_to_hf
    from minilora.models.llama_hf import to_transformers as llama_to_hf

    model = tiny(arch)
    ids, mask = left_padded(prompts())
    ours = model(ids, attention_mask=mask)[0].numpy()  # (B, T, V)
    theirs_model = (gpt_to_hf if arch == "gpt" else llama_to_hf)(model).double().eval()
    positions = np.maximum(mask.cumsum(1) - 1, 0)  # Hugging Face's generate derives position_ids so
    with torch.no_grad(), llama_in_float64():  # (transformers' LLaMA rounds RMSNorm and RoPE to float32 otherwise)
        theirs = theirs_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                              position_ids=torch.tensor(positions)).logits.numpy()
    real = mask.astype(bool)  # padding rows' outputs are never read (and differ by design)
    np.testing.assert_allclose(ours[real], theirs[real], rtol=0, atol=1e-10 * np.abs(theirs[real]).max())


@pytest.mark.parametrize("arch,method", [("gpt", "plain"), ("gpt", "lora"), ("gpt", "prefix"),
                                         ("llama", "plain"), ("llama", "lora")])
def test_each_row_of_a_batch_decodes_as_it_would_alone(arch, method):
    model = with_method(tiny(arch), method)
    rows = prompts()
    # a stop token the model does produce, so that rows stop at different steps and leave the batch
    free = greedy_decode(model, rows, 20)
    stop = int(np.bincount(np.concatenate([np.asarray(f) for f in free]), minlength=V).argmax())
    batched = greedy_decode(model, rows, 20, stop_token=stop, batch_size=4)
    alone = [greedy_decode(model, [r], 20, stop_token=stop)[0] for r in rows]
    assert batched == alone
    assert len({len(b) for b in batched}) > 1 and any(len(b) < 20 for b in batched)  # stops did happen, at various steps
    for r, tokens in zip(rows, alone):  # and alone equals generate, cut at the stop token
        full = [int(t) for t in model.generate(r[None], 20, temperature=0).numpy()[0, len(r):]]
        assert tokens == (full[: full.index(stop)] if stop in full else full)


def test_rows_keep_their_own_adapter_in_a_mixed_batch():
    """row_kwargs follow the rows as they leave the batch: adapter_names per row, as PeftModel takes it."""
    model = get_peft_model(tiny("gpt"), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], init_lora_weights=False))
    minilora.manual_seed(1)
    model.add_adapter("other", LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], init_lora_weights=False))
    rows = prompts()
    names = ["default", "other", "__base__", "other", "default", "default", "__base__"]
    mixed = greedy_decode(model, rows, 12, stop_token=7, batch_size=3, row_kwargs={"adapter_names": names})
    for name in ("default", "other", "__base__"):
        picked = [i for i, n in enumerate(names) if n == name]
        assert [mixed[i] for i in picked] == greedy_decode(model, [rows[i] for i in picked], 12, stop_token=7,
                                                           row_kwargs={"adapter_names": [name] * len(picked)})


def test_bad_input_is_named():
    model = tiny("gpt")
    with pytest.raises(ValueError, match="prompt 1 must be a non-empty 1-D sequence"):
        greedy_decode(model, [[1, 2], []], 4)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0"):
        greedy_decode(model, [[1, 2]], -1)
    with pytest.raises(ValueError, match=r"row_kwargs\['adapter_names'\] has 1 entries for 2 prompts"):
        greedy_decode(model, [[1], [2]], 4, row_kwargs={"adapter_names": ["a"]})
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(B, cached \+ new positions\) = \(1, 3\)"):
        model(np.array([[1, 2, 3]]), attention_mask=np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"attention_mask must hold 0 \(padding\) and 1 \(a real token\) only, got \[2\]"):
        model(np.array([[1, 2, 3]]), attention_mask=np.array([[0, 1, 2]]))
    assert greedy_decode(model, [b"ab", b"c"], 0) == [[], []]  # bytes are token ids; no new token asked, none made
