"""The parameter-efficient methods on minilora's GPT: their configs, their trainable counts, matched budgets.

    The source article places LoRA among the parameter-efficient fine-tuning (PEFT)
    methods, next to adapters, prompt tuning and prefix tuning.

What the claims that compare methods share (``claims/depth_latency.py``,
``claims/expressiveness.py``): how each method is configured on minilora's GPT,
and how many numbers it trains, in closed form (C = n_embd, L = n_layer):

    method     size   where it sits                                   trainable
    lora       r      Wq and Wv inside the fused c_attn (enable_lora) L · 2 · r (C + C)      = 4 L r C
    dora       r      the whole fused c_attn (DoRA has no enable_lora) L · (r (C + 3C) + 3C)
    ia3        --     c_attn's output and mlp.c_proj's input (PEFT)   L · (3C + 4C)          = 7 L C
    prompt     P      P input embeddings in front of the tokens      P · C
    prefix     P      P keys and values in front of every layer      P · 2 L C
    houlsby    m      a bottleneck after attention and after the MLP  2 L (2 C m + m + C)
    pfeiffer   m      a bottleneck after the MLP only                 L (2 C m + m + C)

"Matched budget" means: for a target count, the size (r, P or m) whose count is nearest
to it (``matched_size``). Prompt tuning's P is bounded by the positions left over by the
input, P + T <= block_size -- on the verify task (rows of 64 tokens, block 128) at most
64 virtual tokens, 64 C = 8,192 numbers: the largest budget at which every method can
be compared. IA3 has one size only.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings

from minilora.experiments.runs import ALPHA_PER_RANK
from minilora.models import GPTConfig

# LoRA "Wq+Wv": rank-r updates of the query and value slices of GPT-2's fused c_attn (the LoRA paper's default)
LORA_QV = dict(target_modules=["c_attn"], enable_lora=[True, False, True])

METHODS = ("lora", "dora", "ia3", "prompt", "prefix", "houlsby", "pfeiffer")
LABELS = {"full": "full fine-tuning", "lora": "LoRA (Wq, Wv)", "dora": "DoRA (c_attn)", "ia3": "(IA)³",
          "prompt": "prompt tuning", "prefix": "prefix tuning", "houlsby": "adapters (Houlsby)",
          "pfeiffer": "adapters (Pfeiffer)"}
SIZE_NAMES = {"lora": "r", "dora": "r", "ia3": None, "prompt": "P", "prefix": "P", "houlsby": "m", "pfeiffer": "m"}
VIRTUAL = ("prompt", "prefix")  # methods that take positions of the model's context
# Prompt tuning's init: PEFT's default, P vectors drawn from N(0, 1). Lester et al. (sec. 3.2) find
# an init from vocabulary or text embeddings better for all but the largest models; on the verify
# task all three stayed at chance after 200 steps, random with the lowest validation loss
# (minilora/experiments/claims/expressiveness.py lists the sweep).
PROMPT_INIT = "RANDOM"


def trainable_count(method: str, size: int | None, config: GPTConfig) -> int:
    """The closed form of the table above: numbers ``method`` trains at ``size`` on a GPT of ``config``."""
    C, L = config.n_embd, config.n_layer
    check(method, size)
    if method == "full":
        return config.num_parameters()
    if method == "lora":
        return L * 2 * size * (C + C)  # per layer: A (2r, C), B (2C, r)
    if method == "dora":
        return L * (size * (C + 3 * C) + 3 * C)  # A (r, C), B (3C, r), magnitude (3C,)
    if method == "ia3":
        return L * (3 * C + 4 * C)
    if method == "prompt":
        return size * C
    if method == "prefix":
        return size * 2 * L * C
    per_adapter = 2 * C * size + size + C  # W_down (m, C) + b_down (m) + W_up (C, m) + b_up (C)
    return (2 if method == "houlsby" else 1) * L * per_adapter


def max_size(method: str, config: GPTConfig, seq_len: int) -> int | None:
    """The largest size allowed: P + seq_len <= block_size for prompt and prefix tuning; else None (no bound)."""
    if method in VIRTUAL:
        return config.block_size - seq_len
    return None


def matched_size(method: str, budget: int, config: GPTConfig, seq_len: int | None = None) -> int | None:
    """The size (r, P or m) whose trainable count is nearest to ``budget`` (the smaller on a tie);
    None for IA3 (and full fine-tuning), which have one size. For prompt and prefix tuning
    ``seq_len`` (the task's row length) caps P at block_size - seq_len."""
    if method not in METHODS and method != "full":
        raise ValueError(f"unknown method {method!r}; methods: full, {', '.join(METHODS)}")
    if SIZE_NAMES.get(method) is None:
        return None
    if budget < 1:
        raise ValueError(f"budget must be a positive number of parameters, got {budget!r}")
    cap = max_size(method, config, seq_len) if seq_len is not None else None
    if cap is not None and cap < 1:
        raise ValueError(f"{method}: no virtual token fits: seq_len={seq_len} fills block_size={config.block_size}")
    best, size = 1, 1
    while cap is None or size <= cap:
        if abs(trainable_count(method, size, config) - budget) < abs(trainable_count(method, best, config) - budget):
            best = size
        if trainable_count(method, size, config) >= budget:  # counts grow with size: nothing nearer beyond
            break
        size += 1
    return best


def peft_config(method: str, size: int | None):
    """The minilora PEFT config of ``method`` at ``size`` (see the module docstring for where each sits)."""
    from minilora.peft import BottleneckConfig, IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig

    check(method, size)
    if method == "lora":  # claim 4's "Wq+Wv" setting, alpha = 2 r: the same model as its runs
        return LoraConfig(r=size, lora_alpha=ALPHA_PER_RANK * size, **copy.deepcopy(LORA_QV))
    if method == "dora":
        return LoraConfig(r=size, lora_alpha=ALPHA_PER_RANK * size, target_modules=["c_attn"], use_dora=True)  # alpha = 2 r
    if method == "ia3":
        return IA3Config()  # PEFT's GPT-2 defaults: c_attn (output), mlp.c_proj (input)
    if method == "prompt":
        return PromptTuningConfig(num_virtual_tokens=size, prompt_tuning_init=PROMPT_INIT)
    if method == "prefix":
        return PrefixTuningConfig(num_virtual_tokens=size)  # PEFT's default: no projection MLP
    return BottleneckConfig(bottleneck_size=size, placement=method)


def size_label(method: str, size: int | None) -> str:
    """E.g. "r=4", "P=64", "m=7"; "" for IA3 and full fine-tuning."""
    name = SIZE_NAMES.get(method)
    return f"{name}={size}" if name else ""


def check(method: str, size) -> None:
    if method != "full" and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; methods: full, {', '.join(METHODS)}")
    if SIZE_NAMES.get(method) is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"{method} needs a positive int size ({SIZE_NAMES[method]}), got {size!r}")


def peft_counts(model, r: int, **config) -> tuple:
    """(trainable, all) from PEFT's ``get_nb_trainable_parameters`` after ``peft.get_peft_model(model,
    LoraConfig(r=r, lora_alpha=r, **config))``; the model is unloaded afterwards."""
    import peft

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # fan_in_fan_out notices for GPT-2's Conv1D
        peft_model = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=r, **config))
        counts = peft_model.get_nb_trainable_parameters()
        peft_model.unload()
    return tuple(int(c) for c in counts)
