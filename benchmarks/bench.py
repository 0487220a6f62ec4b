"""minilora against PyTorch eager, side by side in one process: ``make bench``.

Not a test -- timings on shared machines are noisy, so nothing here asserts.
Both libraries run on the same thread count, in float32, in alternating bursts
after a warm-up (``compare``): each figure is a median over the calls, each ratio
the median of the rounds' ratios. The table prints ratios ``minilora / torch``
(below 1.0: minilora is faster) and is also written as JSON so runs can be
compared (``benchmarks/results/<date>.json`` unless ``--json`` says otherwise).

    python benchmarks/bench.py                 # everything
    python benchmarks/bench.py --only ops,mlp  # some sections
    python benchmarks/bench.py --only gpu      # CuPy against torch CUDA (skipped, saying why, without them)

Every clock is read through ``minilora.experiments.core.timing.now``, which waits for the GPU
first when minilora runs on CuPy (the ``gpu`` section).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minilora  # noqa: E402
import minilora.nn.functional as F  # noqa: E402
from minilora import nn  # noqa: E402
from minilora.experiments.core.timing import now  # noqa: E402

SECTIONS = {}


def section(name):
    def register(fn):
        SECTIONS[name] = fn
        return fn

    return register


def interleaved_times(fns: dict, rounds=25, warmup=3) -> dict:
    """Median seconds per call of each of ``fns``, timed in rounds that call each once in
    turn: a slow stretch of the machine hits all of them, not one."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = now()
            fn()
            times[name].append(now() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


SETTLE = 0.25  # seconds: OpenBLAS's idle threads spin at 100% of a core for ~0.15 s after a product


def burst(fn, min_calls=3, min_time=0.1) -> list:
    """Seconds of each call of ``fn``, called until both ``min_calls`` and ``min_time`` are reached."""
    times = []
    while len(times) < min_calls or sum(times) < min_time:
        t0 = now()
        fn()
        times.append(now() - t0)
    return times


def compare(rows, name, ours, theirs, unit="us", scale=1e6, rounds=7, **extra):
    """Time two callables side by side and append a row with their ratio.

    Each round runs a burst of minilora, then a burst of torch, each after a pause in
    which the other library's idle threads stop spinning (they would steal a core from
    whoever runs next). The times are medians over all calls; the ratio is the median of
    the rounds' ratios, so a slow stretch of the shared machine falls on both libraries."""
    ours(), theirs()  # warm-up: caches, allocator, thread pools
    calls = {"ours": [], "theirs": []}
    ratios = []
    for _ in range(rounds):
        medians = {}
        for label, fn in (("ours", ours), ("theirs", theirs)):
            time.sleep(SETTLE)
            times = burst(fn)
            calls[label] += times
            medians[label] = statistics.median(times)
        ratios.append(medians["ours"] / medians["theirs"])
    row = {"name": name, "minilora": statistics.median(calls["ours"]) * scale, "torch": statistics.median(calls["theirs"]) * scale,
           "unit": unit, "ratio": statistics.median(ratios), "rounds": rounds, **extra}
    rows.append(row)
    return row


# ---------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------


@section("ops")
def bench_ops(torch):
    """Per-op overhead on tiny tensors, forward + backward: what a deep graph of small ops pays."""
    rows = []
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 8)).astype(np.float32)
    b = rng.standard_normal((4, 8)).astype(np.float32)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    target = rng.integers(0, 8, size=4)

    def pair(make):
        ours = make(minilora, F, lambda x: minilora.tensor(x, requires_grad=True))
        theirs = make(torch, torch.nn.functional, lambda x: torch.tensor(x, requires_grad=True))
        return ours, theirs

    cases = {
        "add": lambda lib, f, T: (lambda x=T(a), y=T(b): (x + y).sum().backward()),
        "mul": lambda lib, f, T: (lambda x=T(a), y=T(b): (x * y).sum().backward()),
        "matmul": lambda lib, f, T: (lambda x=T(a), y=T(w): (x @ y).sum().backward()),
        "softmax": lambda lib, f, T: (lambda x=T(a): f.softmax(x, dim=-1).sum().backward()),
        "layer_norm": lambda lib, f, T: (lambda x=T(a): f.layer_norm(x, (8,)).sum().backward()),
        "cross_entropy": lambda lib, f, T: (
            lambda x=T(a), t=(minilora.tensor(target) if lib is minilora else torch.tensor(target)): f.cross_entropy(x, t).backward()
        ),
    }
    for name, make in cases.items():
        ours, theirs = pair(make)
        compare(rows, f"{name} fwd+bwd (4x8)", ours, theirs)
    return rows


def _mlp(lib, nn_mod, width, depth=2):
    layers = []
    for _ in range(depth):
        layers += [nn_mod.Linear(width, width), nn_mod.GELU()]
    return nn_mod.Sequential(*layers)


@section("mlp")
def bench_mlp(torch):
    """Forward + backward of a 2-layer MLP, batch 64: overhead-bound at width 64, BLAS-bound at 1024."""
    rows = []
    for width in (64, 1024):
        x_np = np.random.default_rng(0).standard_normal((64, width)).astype(np.float32)
        ours_m, theirs_m = _mlp(minilora, nn, width), _mlp(torch, torch.nn, width)
        x_ours, x_theirs = minilora.tensor(x_np), torch.tensor(x_np)

        def ours():
            ours_m.zero_grad()
            ours_m(x_ours).sum().backward()

        def theirs():
            theirs_m.zero_grad()
            theirs_m(x_theirs).sum().backward()

        compare(rows, f"MLP 2x{width} fwd+bwd (batch 64)", ours, theirs)
    return rows


# ---------------------------------------------------------------------------
# models: the shipped base config and GPT-2-small-sized blocks
# ---------------------------------------------------------------------------

BLOCK_768 = dict(vocab_size=256, block_size=128, n_layer=2, n_head=12, n_embd=768)  # 2 GPT-2-small blocks
BATCH_768 = (8, 128)


def base_config():
    """The shipped base GPT's config (minilora.pretrain.BASE_CONFIG) as keyword arguments."""
    from minilora.pretrain import BASE_CONFIG

    return {k: getattr(BASE_CONFIG, k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}


def training_steps():
    """The training steps the bench times: (label, config, (batch, seq))."""
    return (("base GPT", base_config(), (16, 128)), ("768 blocks", BLOCK_768, BATCH_768))


def _models(config_kwargs, lora=False):
    """A minilora GPT and the identical transformers GPT-2 (same weights), optionally with LoRA r=8
    on the attention matrices (c_attn and attn.c_proj) through minilora.peft and through PEFT."""
    from minilora.models import GPT, GPTConfig, to_transformers

    minilora.manual_seed(0)
    ours = GPT(GPTConfig(**config_kwargs))
    theirs = to_transformers(ours)
    theirs.config._attn_implementation = "sdpa"  # PyTorch's fused attention: the stronger baseline
    if lora:
        import peft

        from minilora.peft import LoraConfig, get_peft_model

        target = r".*\.attn\.(c_attn|c_proj)"
        ours = get_peft_model(ours, LoraConfig(r=8, lora_alpha=16, target_modules=target))
        theirs = peft.get_peft_model(theirs, peft.LoraConfig(r=8, lora_alpha=16, target_modules=target, fan_in_fan_out=True))
    return ours, theirs


def _train_steps(ours, theirs, torch, batch):
    """One training step (forward, backward, AdamW) of each, as callables."""
    from minilora.optim import AdamW

    rng = np.random.default_rng(0)
    V = 256
    x = rng.integers(0, V, size=batch)
    y = rng.integers(0, V, size=batch)
    opt_ours = AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-4)
    opt_theirs = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-4)
    xt, yt = torch.tensor(x), torch.tensor(y)

    def step_ours():
        opt_ours.zero_grad()  # first: last step's gradients are freed before this step's activations exist
        _, loss = ours(x, targets=y)
        loss.backward()
        opt_ours.step()

    def step_theirs():
        opt_theirs.zero_grad()
        logits = theirs(input_ids=xt).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), yt.view(-1))
        loss.backward()
        opt_theirs.step()

    return step_ours, step_theirs


def step_flops(config_kwargs, batch, lora_r=None) -> float:
    """Matrix-multiply FLOPs of one training step: 2 per multiply-add, forward + backward.

    Each weight matrix costs 2 N (forward), 2 N (input gradient) and 2 N (weight gradient)
    per token; a frozen one skips the last. Attention adds q k^T and P v (B nh T T hs each).
    LoRA adds its thin matrices (trained: all three terms)."""
    L, C, V = config_kwargs["n_layer"], config_kwargs["n_embd"], config_kwargs["vocab_size"]
    B, T = batch
    tokens = B * T
    per_layer = 12 * C * C  # c_attn 3C^2, attn.c_proj C^2, c_fc 4C^2, mlp.c_proj 4C^2
    weights = L * per_layer + V * C  # + the tied head (its gradient counts: wte is trained)
    attention = L * 2 * (2 * B * T * T * C)  # q k^T and P v, forward
    full = 6 * weights * tokens + 3 * attention
    if lora_r is None:
        return full
    adapter = L * lora_r * ((C + 3 * C) + (C + C))  # r (in + out) for c_attn and attn.c_proj
    frozen = weights - V * C  # the head/embedding is frozen too under LoRA
    return 4 * frozen * tokens + 2 * V * C * tokens * 2 + 6 * adapter * tokens + 3 * attention


@section("gpt")
def bench_gpt(torch):
    """Training step (forward, backward, AdamW) of the base GPT and of two n_embd-768 blocks, full and LoRA."""
    rows = []
    for label, cfg, batch in training_steps():
        for lora in (False, True):
            ours, theirs = _models(cfg, lora=lora)
            step_ours, step_theirs = _train_steps(ours, theirs, torch, batch)
            name = f"{label} train step{' LoRA r=8 (attn)' if lora else ''} B{batch[0]}xT{batch[1]}"
            flops = step_flops(cfg, batch, 8 if lora else None)
            row = compare(rows, name, step_ours, step_theirs, unit="ms", scale=1e3, flops=flops)
            row["minilora_gflops"] = flops / (row["minilora"] / 1e3) / 1e9
            row["torch_gflops"] = flops / (row["torch"] / 1e3) / 1e9
    # LoRA step / full step, within each library
    for label in ("base GPT", "768 blocks"):
        full = next(r for r in rows if r["name"].startswith(label) and "LoRA" not in r["name"])
        lora = next(r for r in rows if r["name"].startswith(label) and "LoRA" in r["name"])
        rows.append({"name": f"{label}: LoRA step / full step", "minilora": lora["minilora"] / full["minilora"],
                     "torch": lora["torch"] / full["torch"], "unit": "x", "ratio": (lora["minilora"] / full["minilora"]) / (lora["torch"] / full["torch"])})
    return rows


# ---------------------------------------------------------------------------
# BERT: all-MiniLM-L6-v2's size, a classification training step
# ---------------------------------------------------------------------------

BERT_BATCH = (16, 64)  # sentences x WordPieces: a padded batch of short texts
BERT_LABELS = 6
BERT_LORA = dict(r=8, lora_alpha=16, task_type="SEQ_CLS", modules_to_save=["pooler"])  # query, value by default


def bert_config():
    from minilora.models import BertConfig

    return BertConfig.preset("all-MiniLM-L6-v2")


def bert_step_flops(config, batch, lora_r=None) -> float:
    """Matrix-multiply FLOPs of one classification step of BERT (as ``step_flops``): per layer
    q, k, v and the output projection (4 H^2) and the FFN (2 H I), attention's q k^T and P v,
    and the pooler and classifier on the [CLS] rows only. With LoRA on query and value, the
    layers' weights are frozen (4 of 6 FLOPs), the pooler and classifier trained in full."""
    L, H, I = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    B, T = batch
    tokens = B * T
    weights = L * (4 * H * H + 2 * H * I)
    attention = L * 2 * (2 * B * T * T * H)  # forward
    head = 6 * (H * H + H * BERT_LABELS) * B  # pooler and classifier, trained either way
    if lora_r is None:
        return 6 * weights * tokens + 3 * attention + head
    adapter = L * 2 * lora_r * (H + H)  # query and value: r (in + out) each
    return 4 * weights * tokens + 6 * adapter * tokens + 3 * attention + head


def _bert_models(lora=False):
    """A minilora BertForSequenceClassification of MiniLM's size and the identical transformers one
    (same weights, training mode with the checkpoint's dropout 0.1), optionally with LoRA r=8 on
    query and value and the pooler and classifier trained, through minilora.peft and through PEFT."""
    from minilora.models import BertForSequenceClassification
    from minilora.models.bert_hf import to_transformers

    minilora.manual_seed(0)
    ours = BertForSequenceClassification(bert_config(), num_labels=BERT_LABELS)
    theirs = to_transformers(ours)
    theirs.config._attn_implementation = "sdpa"  # PyTorch's fused attention: the stronger baseline
    if lora:
        import peft

        from minilora.peft import LoraConfig, get_peft_model

        ours = get_peft_model(ours, LoraConfig(**BERT_LORA))
        theirs = peft.get_peft_model(theirs, peft.LoraConfig(**BERT_LORA))
    return ours.train(), theirs.train()


def _bert_train_steps(ours, theirs, torch, batch):
    """One classification training step (forward, backward, AdamW) of each, on a padded batch."""
    from minilora.optim import AdamW

    rng = np.random.default_rng(0)
    B, T = batch
    lengths = rng.integers(T // 2, T + 1, size=B)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, bert_config().vocab_size, size=batch) * mask
    labels = rng.integers(0, BERT_LABELS, size=B)
    opt_ours = AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-4)
    opt_theirs = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-4)
    inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels))

    def step_ours():
        opt_ours.zero_grad()
        _, loss = ours(ids, mask, labels=labels)
        loss.backward()
        opt_ours.step()

    def step_theirs():
        opt_theirs.zero_grad()
        theirs(**inputs).loss.backward()
        opt_theirs.step()

    return step_ours, step_theirs


@section("bert")
def bench_bert(torch):
    """Training step (forward, backward, AdamW) of an all-MiniLM-L6-v2-sized classifier, full and LoRA."""
    rows = []
    config = bert_config()
    for lora in (False, True):
        step_ours, step_theirs = _bert_train_steps(*_bert_models(lora), torch, BERT_BATCH)
        flops = bert_step_flops(config, BERT_BATCH, 8 if lora else None)
        name = f"MiniLM-L6 train step{' LoRA r=8 (q,v)' if lora else ''} B{BERT_BATCH[0]}xT{BERT_BATCH[1]}"
        row = compare(rows, name, step_ours, step_theirs, unit="ms", scale=1e3, rounds=5, flops=flops)
        row["minilora_gflops"] = flops / (row["minilora"] / 1e3) / 1e9
        row["torch_gflops"] = flops / (row["torch"] / 1e3) / 1e9
    full, lora = rows
    rows.append({"name": "MiniLM-L6: LoRA step / full step", "minilora": lora["minilora"] / full["minilora"],
                 "torch": lora["torch"] / full["torch"], "unit": "x",
                 "ratio": (lora["minilora"] / full["minilora"]) / (lora["torch"] / full["torch"])})
    return rows


# LLaMA: the shipped LLaMA base's config, and two LLaMA blocks of GPT-2-small's width with GQA
LLAMA_768 = dict(vocab_size=256, hidden_size=768, intermediate_size=2048, num_hidden_layers=2, num_attention_heads=12,
                 num_key_value_heads=4, max_position_embeddings=128, tie_word_embeddings=True)


def llama_training_steps():
    """The LLaMA training steps the bench times: (label, LlamaConfig, (batch, seq)), the same batches as GPT's."""
    from minilora.models import LlamaConfig
    from minilora.pretrain import LLAMA_BASE_CONFIG

    (_, _, base_batch), (_, _, batch_768) = training_steps()
    return (("base LLaMA", LLAMA_BASE_CONFIG, base_batch), ("768 LLaMA blocks (4 kv heads)", LlamaConfig(**LLAMA_768), batch_768))


@section("llama")
def bench_llama(torch):
    """Training step of the LLaMA base and of two 768-wide GQA blocks against transformers' LlamaForCausalLM,
    with the GPT steps of the same run beside them (the aim: LLaMA's ratio <= GPT's + 0.1)."""
    from minilora.models import LlamaForCausalLM
    from minilora.models.llama_hf import to_transformers

    rows = []
    for (label, config, batch), (gpt_label, gpt_config, gpt_batch) in zip(llama_training_steps(), training_steps()):
        minilora.manual_seed(0)
        ours = LlamaForCausalLM(config)
        theirs = to_transformers(ours)  # sdpa attention, float32, eager PyTorch (no compilation)
        theirs.train()
        step_ours, step_theirs = _train_steps(ours, theirs, torch, batch)
        llama = compare(rows, f"{label} train step B{batch[0]}xT{batch[1]}", step_ours, step_theirs, unit="ms", scale=1e3)
        step_ours, step_theirs = _train_steps(*_models(gpt_config), torch, gpt_batch)
        gpt = compare(rows, f"{gpt_label} train step B{gpt_batch[0]}xT{gpt_batch[1]} (same run)", step_ours, step_theirs,
                      unit="ms", scale=1e3)
        rows.append({"name": f"{label}: ratio - GPT's ratio (aim <= 0.1)", "minilora": llama["ratio"], "torch": gpt["ratio"],
                     "unit": "x", "ratio": llama["ratio"] - gpt["ratio"]})
    return rows


@section("sgemm")
def bench_sgemm(torch):
    """The machine's float32 GEMM rate (NumPy's BLAS), and the share of it a full 768 training step reaches."""
    rows = []
    n = 1024
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    at, bt = torch.tensor(a), torch.tensor(b)
    row = compare(rows, f"sgemm {n}x{n}x{n}", lambda: a @ b, lambda: at @ bt, unit="ms", scale=1e3)
    rate = 2 * n**3 / (row["minilora"] / 1e3)
    row["minilora_gflops"], row["torch_gflops"] = rate / 1e9, 2 * n**3 / (row["torch"] / 1e3) / 1e9
    ours, theirs = _models(BLOCK_768)
    step_ours, step_theirs = _train_steps(ours, theirs, torch, BATCH_768)
    flops = step_flops(BLOCK_768, BATCH_768)
    steps = compare([], "768 full step", step_ours, step_theirs, unit="s", scale=1)
    rows.append({"name": "768 full step: share of NumPy's sgemm rate", "minilora": flops / steps["minilora"] / rate,
                 "torch": flops / steps["torch"] / rate, "unit": "frac", "ratio": 1 / steps["ratio"]})
    return rows


def step_products(config_kwargs, batch) -> list:
    """Every matrix product of one full training step, as ``(a, b)`` operand pairs of random
    float32 arrays with the step's shapes, in the layouts minilora multiplies them: per layer
    the four linears' forward ``x W^T``, input gradient ``g W`` and weight gradient ``g^T x``,
    attention's ``q k^T`` and ``P v`` with their four backward products (of the same two
    shapes), and the tied head's three. Their FLOPs are ``step_flops``'s count."""
    L, C, H, V = config_kwargs["n_layer"], config_kwargs["n_embd"], config_kwargs["n_head"], config_kwargs["vocab_size"]
    (Bsz, T), hs = batch, C // H
    N = Bsz * T
    rng = np.random.default_rng(0)

    def rand(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    pairs = []
    for n_in, n_out in [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)] * L + [(C, V)]:
        x, w, g = rand(N, n_in), rand(n_out, n_in), rand(N, n_out)
        pairs += [(x, w.T), (g, w), (g.T, x)]
    for _ in range(L):
        q, kt, p, v = rand(Bsz * H, T, hs), rand(Bsz * H, hs, T), rand(Bsz * H, T, T), rand(Bsz * H, T, hs)
        pairs += [(q, kt), (p, v)] * 3  # forward: q k^T, P v; backward: P^T g, g v^T, dS k, dS^T q
    return pairs


def product_flops(a, b) -> int:
    """2 per multiply-add of ``a @ b`` (a stack of matrices counts each)."""
    return 2 * a.size * b.shape[-1]


@section("floor")
def bench_floor(torch):
    """The least a NumPy step can take: its matrix products alone, against torch's whole step."""
    rows = []
    for label, cfg, batch in training_steps():
        pairs = step_products(cfg, batch)
        _, step_theirs = _train_steps(*_models(cfg), torch, batch)
        compare(rows, f"{label} B{batch[0]}xT{batch[1]}: the step's products alone (NumPy) vs torch's step",
                lambda: [a @ b for a, b in pairs], step_theirs, unit="ms", scale=1e3)
    return rows


@section("infer")
def bench_infer(torch):
    """Inference: tokens/s at batch 1 with the KV cache, and a forward pass base vs merged vs unmerged LoRA."""
    from minilora.models import GPT, GPTConfig
    from minilora.peft import LoraConfig, get_peft_model

    rows = []
    minilora.manual_seed(0)
    ours, theirs = _models(base_config())
    prompt = np.random.default_rng(0).integers(0, 256, size=(1, 16))
    new = 64
    ours.eval()
    pt = torch.tensor(prompt)

    def gen_theirs():
        with torch.no_grad():
            theirs.generate(pt, max_new_tokens=new, do_sample=False, min_new_tokens=new, pad_token_id=0)

    row = compare(rows, f"generate {new} tokens, batch 1, KV cache (ms)", lambda: ours.generate(prompt, new, temperature=0),
                  gen_theirs, unit="ms", scale=1e3)
    row["minilora_tokens_per_s"] = new / (row["minilora"] / 1e3)
    row["torch_tokens_per_s"] = new / (row["torch"] / 1e3)
    # merged LoRA costs what the base costs: same computation
    cfg = GPTConfig(**BLOCK_768)
    base = GPT(cfg)
    x = np.random.default_rng(0).integers(0, 256, size=(1, 128))
    peft_model = get_peft_model(GPT(cfg), LoraConfig(r=8, target_modules=r".*\.attn\.(c_attn|c_proj)", init_lora_weights=False))
    merged = get_peft_model(GPT(cfg), LoraConfig(r=8, target_modules=r".*\.attn\.(c_attn|c_proj)", init_lora_weights=False))
    merged.merge_adapter()
    with minilora.no_grad():  # interleaved rounds: all three share whatever else the machine is doing
        t = interleaved_times({"base": lambda: base(x), "merged": lambda: merged(x), "unmerged": lambda: peft_model(x)})
    t_base, t_merged, t_unmerged = t["base"], t["merged"], t["unmerged"]
    rows.append({"name": "768 blocks forward B1xT128: merged LoRA / base", "minilora": t_merged / t_base, "torch": float("nan"),
                 "unit": "x", "ratio": t_merged / t_base})
    rows.append({"name": "768 blocks forward B1xT128: unmerged LoRA / base", "minilora": t_unmerged / t_base, "torch": float("nan"),
                 "unit": "x", "ratio": t_unmerged / t_base})
    return rows


def _torch_peak_bytes(torch, fn) -> int:
    """Peak bytes PyTorch's CPU profiler sees allocated during ``fn`` (a running sum of each op's own
    allocations and frees, in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@section("memory")
def bench_memory(torch):
    """Peak memory of one training step (AdamW), full and LoRA, at batch 1 x 128 where weights dominate.

    Peak = what lives across steps (weights, AdamW's moments) + the peak of what the step
    allocates (gradients, activations, temporaries): tracemalloc for NumPy's allocations,
    PyTorch's CPU profiler for torch's."""
    import tracemalloc

    rows = []
    for lora in (False, True):
        ours, theirs = _models(BLOCK_768, lora=lora)
        step_ours, step_theirs = _train_steps(ours, theirs, torch, (1, 128))
        step_ours()  # optimizer state exists from here on, as in training
        step_theirs()
        weights = sum(p.data.nbytes for p in ours.parameters())
        moments = 2 * sum(p.data.nbytes for p in ours.parameters() if p.requires_grad)
        tracemalloc.start()
        step_ours()
        step_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        ours_peak = weights + moments + step_peak
        torch_weights = sum(p.numel() * p.element_size() for p in theirs.parameters())
        torch_moments = 2 * sum(p.numel() * p.element_size() for p in theirs.parameters() if p.requires_grad)
        torch_peak = torch_weights + torch_moments + _torch_peak_bytes(torch, step_theirs)
        rows.append({"name": f"768 blocks B1xT128 peak memory{' LoRA' if lora else ' full'} (MB)",
                     "minilora": ours_peak / 1e6, "torch": torch_peak / 1e6, "unit": "MB", "ratio": ours_peak / torch_peak,
                     "weights_mb": weights / 1e6, "moments_mb": moments / 1e6, "step_allocations_mb": step_peak / 1e6})
    full, lora = rows
    rows.append({"name": "768 blocks B1xT128: LoRA peak / full peak", "minilora": lora["minilora"] / full["minilora"],
                 "torch": lora["torch"] / full["torch"], "unit": "x", "ratio": (lora["minilora"] / full["minilora"]) / (lora["torch"] / full["torch"])})
    return rows


# ---------------------------------------------------------------------------
# the GPU: CuPy against torch CUDA eager, at GPT-2's sizes
# ---------------------------------------------------------------------------

GPT2_SMALL = dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)  # 124M parameters
GPT2_MEDIUM = dict(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024)  # 355M
GPU_BATCH = (4, 1024)  # (batch, sequence) of the timed steps
MEMORY_BATCH = 1  # sequences of 1024 tokens in the memory step: the weights dominate, as in the article's setting
LORA_TARGET = r".*\.attn\.(c_attn|c_proj)"  # r=8, as the CPU sections


def gpu_unavailable(torch) -> str | None:
    """Why the gpu section cannot run here (None: it can). It needs CuPy 14+ and a CUDA device."""
    previous = minilora.backend.xp
    try:
        minilora.set_backend("cupy")
    except RuntimeError as err:
        return str(err)
    finally:
        minilora.set_backend(previous)
    return None


def _gpu_minilora(cfg, lora):
    """A minilora GPT of ``cfg`` on the GPU (random initialisation from the config: a step costs the
    same whatever the values), with LoRA r=8 on the attention matrices if asked."""
    from minilora.models import GPT, GPTConfig
    from minilora.peft import LoraConfig, get_peft_model

    minilora.manual_seed(0)
    model = GPT(GPTConfig(**cfg))
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGET)) if lora else model


def _gpu_torch(torch, cfg, lora):
    """transformers' GPT-2 of the same config on CUDA (PEFT's LoRA if asked), no dropout, sdpa attention."""
    import transformers

    hf = transformers.GPT2Config(vocab_size=cfg["vocab_size"], n_positions=cfg["block_size"], n_embd=cfg["n_embd"],
                                 n_layer=cfg["n_layer"], n_head=cfg["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
                                 attn_pdrop=0.0, attn_implementation="sdpa")
    model = transformers.GPT2LMHeadModel(hf).to("cuda")
    if lora:
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGET, fan_in_fan_out=True))
    return model


def _gpu_batch(batch, vocab):
    rng = np.random.default_rng(0)
    return rng.integers(0, vocab, size=batch), rng.integers(0, vocab, size=batch)


def _gpu_step_minilora(model, x, y):
    """One AdamW step of a minilora model, the batch already on the GPU (as torch's is)."""
    from minilora.optim import AdamW

    x, y = minilora.backend.xp.asarray(x), minilora.backend.xp.asarray(y)
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        optimizer.zero_grad()
        _, loss = model(x, targets=y)
        loss.backward()
        optimizer.step()

    return step


def _gpu_step_torch(torch, model, x, y):
    """One AdamW step of a torch model on CUDA."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x, y = torch.tensor(x, device="cuda"), torch.tensor(y, device="cuda")

    def step():
        optimizer.zero_grad()
        logits = model(input_ids=x).logits
        torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1)).backward()
        optimizer.step()

    return step


def _torch_cuda_peak(torch, step) -> int:
    """Bytes torch's CUDA allocator held at most during one step (weights and AdamW's moments included)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


@section("gpu")
def bench_gpu(torch):
    """GPU: a GPT-2-small-sized training step, full and LoRA, CuPy vs torch CUDA eager; peak memory at GPT-2 medium."""
    reason = gpu_unavailable(torch)
    if reason:
        print(f"  skipped: {reason}", flush=True)
        return []
    from minilora.experiments.bases import gpt as memory

    rows = []
    torch_note = None if torch.cuda.is_available() else f"torch {torch.__version__} has no CUDA here: minilora's side only"
    previous = minilora.backend.xp
    minilora.set_backend("cupy")
    try:
        device = minilora.backend.device_name()
        print(f"  on the {device}" + (f"; {torch_note}" if torch_note else ""), flush=True)
        x, y = _gpu_batch(GPU_BATCH, GPT2_SMALL["vocab_size"])
        for lora in (False, True):
            name = f"GPT-2 small (124M) train step{' LoRA r=8 (attn)' if lora else ''} B{GPU_BATCH[0]}xT{GPU_BATCH[1]}, GPU"
            step_ours = _gpu_step_minilora(_gpu_minilora(GPT2_SMALL, lora), x, y)
            if torch_note:
                step_ours()  # warm-up
                t = statistics.median(burst(step_ours, min_calls=5, min_time=1.0))
                row = {"name": name, "minilora": 1e3 * t, "torch": float("nan"), "unit": "ms", "ratio": float("nan")}
                rows.append(row)
            else:
                step_theirs = _gpu_step_torch(torch, _gpu_torch(torch, GPT2_SMALL, lora), x, y)
                row = compare(rows, name, step_ours, step_theirs, unit="ms", scale=1e3, rounds=5)
                del step_theirs
            flops = step_flops(GPT2_SMALL, GPU_BATCH, 8 if lora else None)
            row.update(flops=flops, device=device, minilora_tflops=flops / (row["minilora"] / 1e3) / 1e12)
            del step_ours
        full, lora = rows[-2], rows[-1]
        rows.append({"name": "GPT-2 small, GPU: LoRA step / full step", "minilora": lora["minilora"] / full["minilora"],
                     "torch": lora["torch"] / full["torch"], "unit": "x",
                     "ratio": (lora["minilora"] / full["minilora"]) / (lora["torch"] / full["torch"]), "device": device})
        # peak device memory of one AdamW step at GPT-2 medium: measured (CuPy's pool, through a hook) beside the count
        config = memory.GPTConfig(**GPT2_MEDIUM)
        x, y = _gpu_batch((MEMORY_BATCH, GPT2_MEDIUM["block_size"]), GPT2_MEDIUM["vocab_size"])
        peaks = {}
        for method in ("full", "lora"):
            measured = memory.measure_step_memory(config, MEMORY_BATCH, method)
            analytic = memory.analytic_step_memory(config, MEMORY_BATCH, method)
            theirs_peak = float("nan")
            if not torch_note:
                step_theirs = _gpu_step_torch(torch, _gpu_torch(torch, GPT2_MEDIUM, method == "lora"), x, y)
                step_theirs()  # AdamW's moments exist from the first step on, as in training
                theirs_peak = _torch_cuda_peak(torch, step_theirs)
                del step_theirs
            peaks[method] = (measured["peak"], theirs_peak)
            rows.append({"name": f"GPT-2 medium (355M) peak memory, {method}, B{MEMORY_BATCH}xT{config.block_size} (MB)",
                         "minilora": measured["peak"] / 1e6, "torch": theirs_peak / 1e6, "unit": "MB",
                         "ratio": measured["peak"] / theirs_peak, "analytic_mb": analytic["peak"] / 1e6,
                         "measured_vs_analytic": measured["peak"] / analytic["peak"] - 1, "device": measured["device"]})
        rows.append({"name": "GPT-2 medium, GPU: LoRA peak / full peak", "minilora": peaks["lora"][0] / peaks["full"][0],
                     "torch": peaks["lora"][1] / peaks["full"][1], "unit": "x",
                     "ratio": (peaks["lora"][0] / peaks["full"][0]) / (peaks["lora"][1] / peaks["full"][1]), "device": device})
    finally:
        minilora.set_backend(previous)
    return rows


# ---------------------------------------------------------------------------


def print_table(rows):
    width = max(len(r["name"]) for r in rows) + 2
    print(f"{'benchmark':<{width}}{'minilora':>12}{'torch':>12}  unit   ratio (minilora / torch)")
    for r in rows:
        digits = 1 if r["unit"] in ("us", "ms", "MB") else 3
        print(f"{r['name']:<{width}}{r['minilora']:>12.{digits}f}{r['torch']:>12.{digits}f}  {r['unit']:<5}{r['ratio']:>7.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument("--json", default=None, help="where to write the results (default benchmarks/results/<timestamp>.json)")
    args = parser.parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    torch.manual_seed(0)
    minilora.manual_seed(0)
    unknown = [s for s in args.only.split(",") if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    rows = []
    for name in args.only.split(","):
        print(f"# {name}: {SECTIONS[name].__doc__.strip().splitlines()[0]}", flush=True)
        rows += SECTIONS[name](torch)
    print_table(rows)
    result = {
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(), "threads": threads},
        "versions": {"minilora": minilora.__version__, "numpy": np.__version__, "torch": torch.__version__},
        "rows": rows,
    }
    path = args.json or os.path.join(os.path.dirname(__file__), "results", datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ".json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
