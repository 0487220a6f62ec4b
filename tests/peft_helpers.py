"""What the PEFT-method tests share: the tiny GPT-2, inputs, and the comparisons with PyTorch/PEFT.

``test_lora.py``, ``test_peft_ia3_dora.py``, ``test_peft_adapters.py`` and ``test_peft_prompt.py``
import it (a plain module, as ``op_table.py`` is). Every test builds the same tiny random
GPT-2 (vocab 61, 16 positions, width 16, 2 layers, 2 heads) in minilora, converts it with
``to_transformers`` where it compares with PyTorch, and moves every trained array away from
its initial value, so that a wrong key, shape, scaling or bias rule cannot hide behind an
identity update. Each test file imports torch with ``pytest.importorskip`` before this module.
"""

import copy
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

import minilora
from bert_helpers import padded_batch, tiny_hf, torch_inputs
from minilora.models import GPT, GPTConfig, LlamaConfig, LlamaForCausalLM, bert_hf, llama_hf
from minilora.models import to_transformers as gpt_to_transformers
from minilora.tuner import TunerLayer
from tolerances import bound

V, N_POS, C, N_LAYER, N_HEAD = 61, 16, 16, 2, 2
TINY = GPTConfig(vocab_size=V, block_size=N_POS, n_layer=N_LAYER, n_head=N_HEAD, n_embd=C)


def tiny_gpt(dtype=np.float64, seed=0, **overrides) -> GPT:
    """A tiny GPT-2 with every parameter perturbed (biases and LayerNorms start at 0 and 1 otherwise)."""
    minilora.manual_seed(seed)
    return perturbed(GPT(replace(TINY, **overrides), dtype=dtype), seed)


# the LLaMA twin: same vocabulary, width and depth; 4 query heads sharing 2 key/value heads; an untied head
TINY_LLAMA = LlamaConfig(vocab_size=V, hidden_size=C, intermediate_size=24, num_hidden_layers=N_LAYER,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_POS, rms_norm_eps=1e-5)


def tiny_llama(dtype=np.float64, seed=0) -> LlamaForCausalLM:
    """A tiny LLaMA with every parameter perturbed (RMSNorm gains start at 1 otherwise)."""
    minilora.manual_seed(seed)
    return perturbed(LlamaForCausalLM(TINY_LLAMA, dtype=dtype), seed)


def perturbed(model, seed: int):
    """``model`` with 0.1-sized noise (seeded) added to every parameter, in eval mode."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data = (p.data + 0.1 * rng.standard_normal(p.shape)).astype(p.dtype)
    return model.eval()


@contextmanager
def llama_in_float64():
    """transformers' LLaMA computes RMSNorm and the rotary tables in float32 even in a float64
    model (about 1e-7 off); inside this context it evaluates the same formulas in the model's
    dtype, so that a float64 transformers model is a float64 reference."""
    from transformers.models.llama import modeling_llama

    def rms_norm(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def rotary(self, x, position_ids):
        d = self.config.head_dim
        inv_freq = 1.0 / (self.config.rope_parameters["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        freqs = position_ids[..., None].double() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm)
        mp.setattr(modeling_llama.LlamaRotaryEmbedding, "forward", rotary)
        yield


def ids(batch=2, length=12, vocab=V, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, length))


def perturb_trainable(model, seed=1) -> None:
    """Move every trainable array (A, B, vectors, trained biases, modules_to_save copies) away from its init."""
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        if p.requires_grad:
            p.data = (p.data + 0.1 * rng.standard_normal(p.shape)).astype(p.dtype)


def perturb_trainable_torch(model, seed=1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def random_init(config_cls) -> dict:
    """A LoRA or DoRA adapter with random A and B (for DoRA, m is then ||W + ΔW||, moved by
    perturb_trainable); IA3 starts at ones, moved by perturb_trainable to 1 + 0.1 N(0, 1)."""
    from minilora.peft import LoraConfig

    return dict(init_lora_weights=False) if config_cls is LoraConfig else {}


def minilora_adapter(base, config_cls, fields: dict, seed=1):
    """``base`` with an adapter of ``config_cls(**fields)``, every trained array moved off its init."""
    from minilora.peft import get_peft_model

    model = get_peft_model(base, config_cls(**random_init(config_cls), **copy.deepcopy(fields)))
    perturb_trainable(model, seed)
    return model


def peft_adapter(hf_model, config_cls, peft_cls: str, fields: dict, seed=1):
    """The same for a transformers model through PEFT (``peft_cls``: PEFT's config class name), in eval mode."""
    import peft

    model = peft.get_peft_model(hf_model, getattr(peft, peft_cls)(**random_init(config_cls), **copy.deepcopy(fields)))
    perturb_trainable_torch(model, seed)
    return model.eval()


def peft_logits(model, x):
    with torch.no_grad():
        return model(torch.tensor(x)).logits.numpy()


def logit_tol(dtype, expected, config=TINY) -> float:
    """How far two evaluations of a GPT's logits may lie apart: in float64 1e-12 (measured ~2e-15); in
    float32 tolerances.py's bound, whose widest reduction is the MLP's 4 n_embd inputs, chained through
    the layers and the head, relative to the largest logit."""
    if np.dtype(dtype) == np.float64:
        return 1e-12
    return bound(4 * config.n_embd, config.n_layer + 1, float(np.max(np.abs(expected))), dtype)


def max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def rel_err(a, b) -> float:
    return max_err(a, b) / max(float(np.max(np.abs(b))), 1e-300)


def losses_against_torch(ours, theirs, x) -> tuple:
    """The next-token cross-entropy of minilora's ``ours`` and of the torch model ``theirs``
    (an HF causal LM) on ``x``, each followed by its backward: (our loss, torch's), as floats.
    The last position has no next token: target -100, ignored on both sides."""
    targets = np.concatenate([x[:, 1:], np.full((x.shape[0], 1), -100)], axis=1)
    _, loss = ours(x, targets)
    loss.backward()
    logits = theirs(torch.tensor(x)).logits
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.tensor(targets).reshape(-1), ignore_index=-100)
    ref.backward()
    return loss.item(), ref.item()


def loss_and_grads_against_peft(ours, theirs, x):
    """Cross-entropy on both sides, backward; returns (our loss, PEFT's, [(name, our grad, PEFT's)]),
    after checking that the trainable parameters have the same names on both sides: PEFT's,
    parameter for parameter."""
    loss, ref = losses_against_torch(ours, theirs, x)
    ours_params = dict(ours.named_parameters())
    peft_params = {n: p for n, p in theirs.named_parameters() if p.requires_grad}
    assert {n for n, p in ours_params.items() if p.requires_grad} == set(peft_params)
    return loss, ref, [(n, ours_params[n].grad, peft_params[n].grad.numpy()) for n in peft_params]


def snapshot(model) -> dict:
    """Everything a failed call must leave as it was: the module tree, every parameter's
    values, dtype, shape and trainable flag, and the adapters' bookkeeping."""
    return {
        "tree": [(name, type(m).__name__, id(m)) for name, m in model.named_modules()],
        "params": [(name, id(p), p.requires_grad, p.data.dtype, p.data.shape, p.data.copy())
                   for name, p in model.named_parameters()],
        "state": [(name, list(getattr(m, "merged_adapters", [])), getattr(m, "active_adapter", None),
                   sorted(getattr(m, "peft_config", {})), dict(getattr(m, "scaling", {})),
                   sorted(getattr(m, "_dora_norms", {})))
                  for name, m in model.named_modules()],
    }


def merges_into_tied_head(model, name: str) -> bool:
    """Whether adapter ``name`` adapts GPT-2's head while the head is still the token embedding's matrix."""
    gpt = model.get_base_model()
    return isinstance(gpt.lm_head, TunerLayer) and name in gpt.lm_head.adapters and \
        gpt.lm_head.base_layer.weight is gpt.transformer.wte.weight


def untie_head(model) -> None:
    """docs/lora.md's line: a wrapped head gets its own (frozen) copy of the matrix."""
    head = model.get_base_model().lm_head
    if isinstance(head, TunerLayer):
        head.base_layer.weight = minilora.nn.Parameter(head.base_layer.weight.data.copy(), requires_grad=False)


def assert_refused_as_tied(merge, model) -> None:
    """``merge()`` refuses to write into the tied head, and leaves ``model`` as it was."""
    before = snapshot(model)
    with pytest.raises(RuntimeError, match=r"cannot merge into lm_head: .*transformer\.wte \(tied weights\)"):
        merge()
    assert_unchanged(model, before)


def assert_edited_config_refused(config, edits: dict, match: str) -> None:
    """A config edited after it was made (past its own checks) is checked again when it is used:
    ``get_peft_model`` on a tiny GPT-2 raises a ValueError matching ``match``, and the model is left as it was."""
    from minilora.peft import get_peft_model

    for key, value in edits.items():
        setattr(config, key, value)
    model = tiny_gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        get_peft_model(model, config)
    assert_unchanged(model, before)


def assert_unchanged(model, before: dict) -> None:
    """Bit for bit (a NaN stays the same NaN, -0.0 stays -0.0)."""
    after = snapshot(model)
    assert after["tree"] == before["tree"]
    assert after["state"] == before["state"]
    assert [p[:5] for p in after["params"]] == [p[:5] for p in before["params"]]
    for (name, *_, new), (_, *_, old) in zip(after["params"], before["params"]):
        assert new.tobytes() == old.tobytes(), f"{name} changed"


# --- the three bases, for the tests that run one adapter on each ------------------------------


@dataclass
class Base:
    """A tiny base in minilora and transformers, its inputs, and how each side computes logits and loss."""

    name: str

    def pair(self):
        """``(minilora model, transformers model)`` with the same float64 weights."""
        if self.name == "gpt":
            return tiny_gpt(), gpt_to_transformers(tiny_gpt())
        if self.name == "llama":
            return tiny_llama(), llama_hf.to_transformers(tiny_llama())
        hf = tiny_hf("BertForSequenceClassification")
        return bert_hf.from_transformers(hf), tiny_hf("BertForSequenceClassification")

    def ours(self, model, labels=False):
        """``(logits, loss)`` of a minilora model (loss: next-token, or the classifier's)."""
        if self.name == "bert":
            batch = padded_batch([7, 3, 5])
            return model(batch[0], batch[2], batch[1], labels=np.array([2, 0, 1]) if labels else None)
        x = ids(seed=4)
        targets = np.concatenate([x[:, 1:], np.full((x.shape[0], 1), -100)], axis=1) if labels else None
        return model(x, targets)

    def theirs(self, model, labels=False):
        """The transformers model's output (``.logits``, ``.loss``) on the same inputs."""
        if self.name == "bert":
            batch = padded_batch([7, 3, 5])
            return model(**torch_inputs(*batch), labels=torch.tensor([2, 0, 1]) if labels else None)
        x = torch.tensor(ids(seed=4))
        return model(input_ids=x, labels=x if labels else None)


BASES = {name: Base(name) for name in ("gpt", "bert", "llama")}


def causal_lm_loss(logits, labels, vocab_size, ignore_index=-100, **kwargs):
    """transformers' next-token loss (``ForCausalLMLoss``: labels shifted by one) without its upcast
    to float32, so that a float64 model gives a float64 loss."""
    shifted = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab_size), shifted.reshape(-1), ignore_index=ignore_index)


@contextmanager
def float64_transformers():
    """transformers' LLaMA and its causal-LM loss computed in the model's float64 throughout."""
    from transformers.loss import loss_utils

    with llama_in_float64(), pytest.MonkeyPatch.context() as mp:
        mp.setitem(loss_utils.LOSS_MAPPING, "ForCausalLM", causal_lm_loss)
        yield
