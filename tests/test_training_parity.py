"""End to end: the same model, trained the same way, in minilora and in PyTorch.

Each model and the training loop are written *once*, against a namespace
``lib`` that is either minilora or torch -- the code below runs unchanged on
both, which is the point of keeping PyTorch's names. The minilora model is
initialised from minilora's seeded generator, its ``state_dict`` is loaded into
the torch twin, and both are trained on the same batches. The losses must agree
step by step:

* float64: relative error <= 1e-9 at every step (measured: ~3e-16), and the
  trained weights within 1e-8;
* float32: the bound of tests/tolerances.py at every step (measured: ~2e-7). The
  two libraries sum in different orders, so each forward's rounding may differ by
  2 gamma_n per reduction chained, n the widest (the MLP's batch mean over 32 rows;
  the transformer's 4 x 16-wide MLP), over the model's depth; and a step's loss
  carries the differences of every update before it, so step k is held to k + 1
  times one forward's bound (to first order, errors add).
"""

import types

import numpy as np
import pytest
import torch

import minilora
import minilora.nn.functional
import minilora.optim
from minilora import optim
from tolerances import bound

OURS = types.SimpleNamespace(
    name="minilora", nn=minilora.nn, F=minilora.nn.functional, optim=minilora.optim,
    tensor=minilora.tensor, arange=minilora.arange, clip_grad_norm_=minilora.optim.clip_grad_norm_,
)
TORCH = types.SimpleNamespace(
    name="torch", nn=torch.nn, F=torch.nn.functional, optim=torch.optim,
    tensor=torch.tensor, arange=torch.arange, clip_grad_norm_=torch.nn.utils.clip_grad_norm_,
)
TOL64 = 1e-9
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# ---------------------------------------------------------------------------
# the models, written once for either library
# ---------------------------------------------------------------------------


def make_mlp(lib, n_in=8, hidden=16, n_out=4):
    nn = lib.nn
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, n_out)
    )


def make_gpt(lib, vocab=32, block_size=8, n_embd=16, n_head=4, n_layer=2):
    """A two-layer pre-LayerNorm transformer with GPT-2's module names and a tied head."""
    nn, F = lib.nn, lib.F

    class CausalSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(n_embd, 3 * n_embd)  # q, k, v in one matmul
            self.c_proj = nn.Linear(n_embd, n_embd)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
            q = q.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, nh, T, hs)
            k = k.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, nh, T, hs)
            v = v.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, nh, T, hs)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
            y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
            return self.c_proj(y)

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(n_embd, 4 * n_embd)
            self.act = nn.GELU(approximate="tanh")
            self.c_proj = nn.Linear(4 * n_embd, n_embd)

        def forward(self, x):
            return self.c_proj(self.act(self.c_fc(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(n_embd)
            self.attn = CausalSelfAttention()
            self.ln_2 = nn.LayerNorm(n_embd)
            self.mlp = MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, n_embd)
            self.wpe = nn.Embedding(block_size, n_embd)
            self.h = nn.ModuleList([Block() for _ in range(n_layer)])
            self.ln_f = nn.LayerNorm(n_embd)
            self.lm_head = nn.Linear(n_embd, vocab, bias=False)
            self.lm_head.weight = self.wte.weight  # tied, as in GPT-2

        def forward(self, idx):
            B, T = idx.shape
            x = self.wte(idx) + self.wpe(lib.arange(T))  # (B, T, C)
            for block in self.h:
                x = block(x)
            return self.lm_head(self.ln_f(x))  # (B, T, vocab)

    return GPT()


def twins(make, dtype, seed=0):
    """The model in minilora (seeded init) and in torch, with identical weights."""
    minilora.manual_seed(seed)
    ours = make(OURS).to(dtype)
    theirs = make(TORCH).to(TORCH_DTYPE[dtype])
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})
    return ours, theirs


# ---------------------------------------------------------------------------
# the training loop, written once for either library
# ---------------------------------------------------------------------------


def adamw(lib, model, lr):
    # nanoGPT's groups: weight decay on matrices only, none on biases and LayerNorm
    decay = [p for _, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.dim() < 2]
    return lib.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95)
    )


def sgd(lib, model, lr):
    return lib.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-3)


def train(lib, model, make_optimizer, batches, lr, clip=None, warmup=0):
    opt = make_optimizer(lib, model, lr)
    losses = []
    for step, (x, y) in enumerate(batches):
        for group in opt.param_groups:  # the schedule, set by hand: the same code for both
            group["lr"] = optim.warmup_cosine_lr(step, lr, warmup, len(batches), min_lr=0.1 * lr)
        logits = model(lib.tensor(x))
        loss = lib.F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lib.tensor(y).reshape(-1))
        opt.zero_grad()
        loss.backward()
        if clip is not None:
            lib.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(loss.item())
    return losses


def assert_same_training(ours, theirs, make_optimizer, batches, dtype, width, depth, **kwargs):
    """Train both; each step's loss within TOL64 (float64) or, in float32, within (k + 1) forwards' rounding
    (module docstring; ``width`` and ``depth``: the model's widest reduction and its chained layers)."""
    mine = train(OURS, ours, make_optimizer, batches, **kwargs)
    reference = train(TORCH, theirs, make_optimizer, batches, **kwargs)
    errors = [rel_err(a, b) for a, b in zip(mine, reference)]
    tols = [TOL64 if dtype == np.float64 else bound(width, depth * (k + 1)) for k in range(len(errors))]
    assert all(e <= t for e, t in zip(errors, tols)), f"losses {mine} vs torch {reference}: relative errors {errors}"
    assert reference[-1] < reference[0]  # it learnt something, so the comparison means something
    if dtype == np.float64:
        theirs_sd = theirs.state_dict()
        for k, v in ours.state_dict().items():
            assert rel_err(v, theirs_sd[k].numpy()) <= 1e-8, k
    return mine, reference


# ---------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------


def mlp_batches(dtype, steps=8, n=32):
    rng = np.random.default_rng(0)
    teacher = rng.standard_normal((8, 4))  # a learnable rule: the class is argmax(x @ teacher)
    xs = [rng.standard_normal((n, 8)) for _ in range(steps)]
    return [(x.astype(dtype), (x @ teacher).argmax(axis=1)) for x in xs]


def token_batches(steps=8, batch=4, block_size=8, vocab=32):
    rng = np.random.default_rng(1)
    # a learnable pattern: each token is the previous one plus one (mod vocab)
    starts = rng.integers(0, vocab, size=(steps, batch, 1))
    seq = (starts + np.arange(block_size + 1)) % vocab
    return [(s[:, :-1], s[:, 1:]) for s in seq]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("make_optimizer,lr", [(adamw, 1e-2), (sgd, 0.1)], ids=["AdamW", "SGD"])
def test_mlp_trains_like_torch(dtype, make_optimizer, lr):
    ours, theirs = twins(make_mlp, dtype)
    # 3 layers, of width <= 16, then the loss's mean over the batch of 32 rows
    assert_same_training(ours, theirs, make_optimizer, mlp_batches(dtype), dtype, width=32, depth=4, lr=lr)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_transformer_trains_like_torch(dtype):
    ours, theirs = twins(make_gpt, dtype)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    # 2 blocks (their MLPs 64 wide), the head and the loss over 4 x 8 positions and 32 classes
    ours_losses, _ = assert_same_training(
        ours, theirs, adamw, token_batches(), dtype, width=64, depth=4, lr=1e-2, clip=1.0, warmup=2
    )
    assert ours.lm_head.weight is ours.wte.weight  # still tied after training
