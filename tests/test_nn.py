"""``minilora.nn`` against ``torch.nn``: the Module bookkeeping, state dicts,
default initialisation, and every layer's forward and backward in float64.

The oracle for bookkeeping is the same tree built from torch modules: names,
order and de-duplication must come out identical, since checkpoints and LoRA
adapters are matched by those names.
"""

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch

import minilora
from minilora import nn
from minilora.nn import functional as F

TOL = 1e-10  # float64 relative error allowed against torch


def rel_err(a, b) -> float:
    """``max |a - b| / max |b|`` (absolute when ``b`` is all zeros)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b), initial=0.0) / max(np.max(np.abs(b), initial=0.0), 1e-300))


def to_torch(array, requires_grad=False):
    return torch.tensor(np.array(array), requires_grad=requires_grad)


# ---------------------------------------------------------------------------
# one tree, built twice: in minilora and in torch
# ---------------------------------------------------------------------------


def build_tree(lib):
    """A small model that exercises every registry: a ModuleList, a ModuleDict, a
    Sequential, a tied weight (head <- embedding) and a module shared under two names."""

    class Block(lib.Module):
        def __init__(self):
            super().__init__()
            self.ln = lib.LayerNorm(4)
            self.fc = lib.Linear(4, 3)

    class Net(lib.Module):
        def __init__(self):
            super().__init__()
            self.emb = lib.Embedding(10, 4)
            self.blocks = lib.ModuleList([Block(), Block()])
            self.heads = lib.ModuleDict({"b": lib.Linear(3, 2), "a": lib.Linear(3, 1, bias=False)})
            self.seq = lib.Sequential(lib.Linear(4, 4), lib.GELU(), lib.Dropout(0.1))
            self.shared = lib.Linear(2, 2)
            self.shared_again = self.shared  # one module, two names
            self.head = lib.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight  # tied parameter

    return Net()


@pytest.fixture
def trees():
    return build_tree(nn), build_tree(torch.nn)


def test_names_and_order_match_torch(trees):
    ours, theirs = trees
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert [n for n, _ in ours.named_children()] == [n for n, _ in theirs.named_children()]
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_names_without_deduplication_match_torch(trees):
    ours, theirs = trees
    assert [n for n, _ in ours.named_parameters(remove_duplicate=False)] == [
        n for n, _ in theirs.named_parameters(remove_duplicate=False)
    ]
    assert [n for n, _ in ours.named_modules(remove_duplicate=False)] == [
        n for n, _ in theirs.named_modules(remove_duplicate=False)
    ]


def test_tied_parameter_once_in_parameters_twice_in_state_dict(trees):
    ours, _ = trees
    names = [n for n, _ in ours.named_parameters()]
    assert "emb.weight" in names and "head.weight" not in names
    assert sum(p is ours.emb.weight for p in ours.parameters()) == 1
    sd = ours.state_dict()
    assert sd["head.weight"] is sd["emb.weight"]  # the same array, under both names
    assert ours.num_parameters() == sum(p.numel() for p in ours.parameters())


def test_prefixes_and_recurse(trees):
    ours, theirs = trees
    assert [n for n, _ in ours.named_parameters(prefix="model")] == [
        n for n, _ in theirs.named_parameters(prefix="model")
    ]
    assert list(ours.blocks[1].named_parameters(recurse=False)) == []
    assert [n for n, _ in ours.blocks[1].fc.named_parameters(recurse=False)] == ["weight", "bias"]
    assert ours.get_submodule("blocks.1.fc") is ours.blocks[1].fc
    assert ours.get_submodule("") is ours
    with pytest.raises(AttributeError, match="nope"):
        ours.get_submodule("blocks.nope")


def test_train_and_eval_reach_every_module(trees):
    ours, _ = trees
    assert all(m.training for m in ours.modules())
    assert ours.eval() is ours
    assert not any(m.training for m in ours.modules())
    ours.blocks.train()
    assert all(m.training for m in ours.blocks.modules()) and not ours.training and not ours.seq.training
    ours.train()
    assert all(m.training for m in ours.modules())


def test_requires_grad_on_a_subtree(trees):
    ours, _ = trees
    assert ours.blocks.requires_grad_(False) is ours.blocks
    frozen = {id(p) for p in ours.blocks.parameters()}
    for _, p in ours.named_parameters():
        assert p.requires_grad == (id(p) not in frozen)
    assert ours.num_parameters(only_trainable=True) == ours.num_parameters() - sum(
        p.numel() for p in ours.blocks.parameters()
    )


def test_zero_grad(trees):
    ours, _ = trees
    params = list(ours.parameters())
    for p in params[:-1]:
        p.grad = np.ones_like(p.data)
    ours.zero_grad(set_to_none=False)
    for p in params[:-1]:
        assert p.grad is not None and p.grad.shape == p.shape and not p.grad.any()
    assert params[-1].grad is None  # a gradient that was never set stays None, as in torch
    ours.zero_grad()
    assert all(p.grad is None for p in params)


def test_apply_visits_children_first_like_torch(trees):
    ours, theirs = trees
    order = {}
    for tree in trees:
        names = {id(m): n for n, m in tree.named_modules()}
        seen = []
        tree.apply(lambda m, seen=seen, names=names: seen.append(names[id(m)]))
        order[tree is ours] = seen
    assert order[True] == order[False]
    assert order[True][-1] == ""  # the root comes last


def test_to_float64_keeps_ties_and_casts_gradients(trees):
    ours, _ = trees
    ours.emb.weight.grad = np.ones(ours.emb.weight.shape, dtype=np.float32)
    weight = ours.emb.weight
    assert ours.double() is ours
    assert ours.head.weight is ours.emb.weight is weight
    assert all(p.dtype == np.float64 for p in ours.parameters())
    assert weight.grad.dtype == np.float64
    ours.float()
    assert all(p.dtype == np.float32 for p in ours.parameters()) and weight.grad.dtype == np.float32


def test_containers_register_their_modules():
    layers = [nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 3)]
    seq = nn.Sequential(*layers)
    assert [n for n, _ in seq.named_children()] == ["0", "1", "2"]
    assert len(seq) == 3 and seq[2] is layers[2] and seq[-1] is layers[2] and list(seq) == layers
    named = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 2)), ("act", nn.ReLU())]))
    assert [n for n, _ in named.named_parameters()] == ["fc.weight", "fc.bias"]

    ml = nn.ModuleList([nn.Linear(2, 2)])
    ml.append(nn.Linear(2, 3))
    assert [n for n, _ in ml.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    replacement = nn.Linear(2, 5)
    ml[-1] = replacement
    assert ml[1] is replacement and len(ml) == 2
    with pytest.raises(IndexError):
        ml[2] = nn.Linear(2, 2)  # out of range: an error, not a silent wrap-around
    with pytest.raises(IndexError):
        nn.ModuleList()[0] = nn.Linear(2, 2)

    md = nn.ModuleDict({"q": nn.Linear(2, 2)})
    md["v"] = nn.Linear(2, 2)
    assert list(md) == ["q", "v"] and "v" in md and len(md) == 2
    assert [n for n, _ in md.named_parameters()] == ["q.weight", "q.bias", "v.weight", "v.bias"]
    del md["q"]
    assert list(md.keys()) == ["v"] and [n for n, _ in md.named_parameters()] == ["v.weight", "v.bias"]


def test_deepcopy_keeps_ties_and_shares_nothing(trees):
    ours, _ = trees
    clone = copy.deepcopy(ours)
    assert clone.head.weight is clone.emb.weight and clone.shared is clone.shared_again
    assert [n for n, _ in clone.named_parameters()] == [n for n, _ in ours.named_parameters()]
    for p, q in zip(clone.parameters(), ours.parameters()):
        assert p is not q and np.array_equal(p.data, q.data) and not np.shares_memory(p.data, q.data)


def test_buffers_are_state_but_not_parameters():
    m = nn.Linear(2, 2)
    mask = minilora.ones(2)
    m.register_buffer("mask", mask)
    m.inner = nn.Module()
    m.inner.register_buffer("mask", mask)  # one buffer, two names
    assert [n for n, _ in m.named_buffers()] == ["mask"]
    assert [n for n, _ in m.named_buffers(remove_duplicate=False)] == ["mask", "inner.mask"]
    assert list(m.state_dict()) == ["weight", "bias", "mask", "inner.mask"]
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    m.double()
    assert m.mask.dtype == np.float64 and m.inner.mask is m.mask
    m.inner.register_buffer("mask", None)  # removes it, as in torch
    assert list(m.state_dict()) == ["weight", "bias", "mask"] and m.inner.mask is None
    m.register_buffer("bias", minilora.zeros(2))  # a name lives in one registry
    assert [n for n, _ in m.named_parameters()] == ["weight"] and list(m.state_dict()) == ["weight", "mask", "bias"]


def test_reassigning_an_attribute_moves_it_between_registries():
    m = nn.Linear(2, 2)
    m.bias = None
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    m.extra = nn.Parameter(np.zeros(3))
    assert [n for n, _ in m.named_parameters()] == ["weight", "extra"]
    m.extra = nn.Linear(1, 1)  # a parameter's name now holds a module
    assert [n for n, _ in m.named_parameters()] == ["weight", "extra.weight", "extra.bias"]
    del m.extra
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    m.register_buffer("mask", minilora.ones(2))
    assert list(m.state_dict()) == ["weight", "mask"]
    with pytest.raises(AttributeError, match="super"):

        class Broken(nn.Module):
            def __init__(self):
                self.w = nn.Parameter(np.zeros(1))

        Broken()


# ---------------------------------------------------------------------------
# state dicts
# ---------------------------------------------------------------------------


def snapshot(module):
    """The live arrays of a module's state and copies of their values."""
    live = module.state_dict()
    return live, {k: v.copy() for k, v in live.items()}


def assert_unchanged(module, before):
    """Same keys, the very same arrays (none replaced), the same values and dtypes."""
    live, values = before
    after = module.state_dict()
    assert list(after) == list(values)
    for k in values:
        assert after[k] is live[k] and after[k].dtype == values[k].dtype and np.array_equal(after[k], values[k]), k


def test_state_dict_round_trip():
    minilora.manual_seed(0)
    a = build_tree(nn)
    minilora.manual_seed(1)
    b = build_tree(nn)
    assert not np.array_equal(a.emb.weight.data, b.emb.weight.data)
    result = b.load_state_dict(a.state_dict())
    assert result == ([], []) and result.missing_keys == [] and result.unexpected_keys == []
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and np.array_equal(pa, pb)
    assert b.head.weight is b.emb.weight  # loading keeps the tie
    # loaded arrays are copies: changing the source afterwards changes nothing
    a.emb.weight.data += 1
    assert not np.array_equal(a.emb.weight.data, b.emb.weight.data)


def test_load_state_dict_from_torch_and_into_torch(trees):
    ours, theirs = trees
    ours.double()
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    for k, v in theirs.state_dict().items():
        assert np.array_equal(ours.state_dict()[k], v.double().numpy()), k
    assert all(p.dtype == np.float64 for p in ours.parameters())  # loading keeps the module's dtype
    theirs.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in ours.state_dict().items()})


def test_load_state_dict_accepts_tensors():
    src, dst = nn.Linear(3, 2), nn.Linear(3, 2)
    dst.load_state_dict({k: minilora.tensor(v) for k, v in src.state_dict().items()})
    assert np.array_equal(dst.weight.data, src.weight.data)


def test_strict_load_lists_every_problem_and_changes_nothing():
    model = build_tree(nn)
    before = snapshot(model)
    bad = {k: np.full(v.shape, 7.0, dtype=v.dtype) for k, v in model.state_dict().items()}
    del bad["blocks.0.fc.bias"], bad["seq.0.weight"]
    bad["not.a.weight"] = np.zeros(2)
    bad["blocks.1.fc.weight"] = np.zeros((5, 5))
    bad["heads.a.weight"] = np.zeros((3, 1))
    with pytest.raises(RuntimeError) as info:
        model.load_state_dict(bad)
    message = str(info.value)
    for key in ["blocks.0.fc.bias", "seq.0.weight", "not.a.weight", "blocks.1.fc.weight", "heads.a.weight"]:
        assert key in message, key
    assert "(5, 5)" in message and "(3, 4)" in message  # both shapes of a mismatch are named
    assert_unchanged(model, before)

    # without strict, missing and unexpected keys are reported, not raised...
    fixable = dict(bad, **{k: before[1][k] + 7 for k in ("blocks.1.fc.weight", "heads.a.weight")})
    result = model.load_state_dict(fixable, strict=False)
    assert sorted(result.missing_keys) == sorted(["blocks.0.fc.bias", "seq.0.weight"])
    assert result.unexpected_keys == ["not.a.weight"]
    assert np.all(model.blocks[0].fc.weight.data == 7)
    assert np.array_equal(model.seq[0].weight.data, before[1]["seq.0.weight"])  # missing: left alone

    # ...but a shape mismatch is an error even then (as in torch), and again nothing moves
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="blocks.1.fc.weight"):
        model.load_state_dict(bad, strict=False)
    assert_unchanged(model, before)


def test_strict_false_matches_torch_keys(trees):
    ours, theirs = trees
    partial = {k: v for k, v in ours.state_dict().items() if not k.startswith("blocks")}
    partial["extra"] = np.zeros(1)
    mine = ours.load_state_dict(partial, strict=False)
    reference = theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in partial.items()}, strict=False)
    assert sorted(mine.missing_keys) == sorted(reference.missing_keys)
    assert sorted(mine.unexpected_keys) == sorted(reference.unexpected_keys)


# ---------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------


def uniform_ks(values, low, high) -> float:
    """Kolmogorov-Smirnov distance between the sample and U(low, high)."""
    x = np.sort((np.ravel(values).astype(np.float64) - low) / (high - low))
    n = len(x)
    return float(max(np.max(np.arange(1, n + 1) / n - x), np.max(x - np.arange(n) / n)))


def test_linear_init_is_torchs_uniform():
    minilora.manual_seed(0)
    torch.manual_seed(0)
    fan_in, fan_out = 200, 600
    ours, theirs = nn.Linear(fan_in, fan_out), torch.nn.Linear(fan_in, fan_out)
    bound = 1 / np.sqrt(fan_in)
    w, tw = ours.weight.data, theirs.weight.detach().numpy()
    assert w.dtype == np.float32 and w.shape == tw.shape
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.999 * bound
    # 120,000 draws: the KS distance of a true uniform stays below 0.006 with probability > 0.999
    assert uniform_ks(w, -bound, bound) < 0.006
    assert abs(w.mean()) < 0.01 * bound and abs(w.std() - tw.std()) < 0.01 * bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.01 * bound
    # the bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) too (not from the fan_out)
    b = nn.Linear(fan_in, 20000).bias.data
    assert np.abs(b).max() <= bound and np.abs(b).max() > 0.999 * bound and uniform_ks(b, -bound, bound) < 0.02


def test_embedding_and_layernorm_init():
    minilora.manual_seed(0)
    w = nn.Embedding(1000, 64).weight.data.astype(np.float64)
    assert abs(w.mean()) < 0.01 and abs(w.std() - 1) < 0.01
    assert abs(((w - w.mean()) ** 4).mean() / w.var() ** 2 - 3) < 0.1  # normal kurtosis
    ln = nn.LayerNorm((3, 4))
    assert ln.weight.shape == (3, 4) and np.all(ln.weight.data == 1) and np.all(ln.bias.data == 0)
    assert nn.LayerNorm(4, bias=False).bias is None
    assert list(nn.LayerNorm(4, elementwise_affine=False).parameters()) == []


def test_init_is_reproducible_and_respects_dtype():
    def draw(seed):
        minilora.manual_seed(seed)
        return build_tree(nn).state_dict()

    first, again, other = draw(3), draw(3), draw(4)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["blocks.0.fc.weight"], other["blocks.0.fc.weight"])
    for layer in [nn.Linear(3, 2, dtype=np.float64), nn.Embedding(3, 2, dtype=np.float64), nn.LayerNorm(3, dtype=np.float64)]:
        assert all(p.dtype == np.float64 for p in layer.parameters())
    assert nn.Linear(3, 2).weight.dtype == np.float32


# ---------------------------------------------------------------------------
# layers against torch, float64, forward and backward
# ---------------------------------------------------------------------------


def check_against_torch(ours, theirs, x, integer_input=False):
    """Copy ``ours``'s weights into ``theirs``; compare outputs and every gradient."""
    ours.double()
    theirs.double()
    params = dict(ours.named_parameters())
    assert list(params) == [n for n, _ in theirs.named_parameters()]
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.copy_(torch.from_numpy(params[name].data))
    xt = torch.tensor(x) if integer_input else to_torch(x, requires_grad=True)
    xm = minilora.tensor(x) if integer_input else minilora.tensor(x, requires_grad=True)
    y, yt = ours(xm), theirs(xt)
    assert y.shape == tuple(yt.shape) and y.dtype == np.float64
    assert rel_err(y.data, yt.detach().numpy()) <= TOL
    g = np.random.default_rng(1).standard_normal(y.shape)
    y.backward(g)
    yt.backward(torch.from_numpy(g))
    if not integer_input:
        assert rel_err(xm.grad, xt.grad.numpy()) <= TOL
    for name, p in theirs.named_parameters():
        assert rel_err(params[name].grad, p.grad.numpy()) <= TOL, name


X = np.random.default_rng(0).standard_normal((2, 3, 5))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(bias):
    check_against_torch(nn.Linear(5, 4, bias=bias), torch.nn.Linear(5, 4, bias=bias), X)


@pytest.mark.parametrize("padding_idx", [None, 1, -1])
def test_embedding_matches_torch(padding_idx):
    """Repeated ids' gradients add up; the padding row (here id 1, used 4 times, or 6) gets none."""
    ids = np.array([[1, 3, 3, 0], [6, 1, 1, 1]])
    ours = nn.Embedding(7, 5, padding_idx=padding_idx)
    if padding_idx is not None:
        assert not ours.weight.data[padding_idx].any()  # starts at zero, as torch's
    check_against_torch(ours, torch.nn.Embedding(7, 5, padding_idx=padding_idx), ids, integer_input=True)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"bias": False}, {"elementwise_affine": False}, {"eps": 1e-2}],
    ids=["affine", "no-bias", "no-affine", "eps"],
)
def test_layernorm_matches_torch(kwargs):
    ours, theirs = nn.LayerNorm(5, **kwargs), torch.nn.LayerNorm(5, **kwargs)
    for p in ours.parameters():  # move away from ones/zeros so that their gradients matter
        p.data = np.random.default_rng(2).standard_normal(p.shape).astype(p.dtype)
    check_against_torch(ours, theirs, X * 3 + 1)


def test_layernorm_over_two_dims_matches_torch():
    ours, theirs = nn.LayerNorm((3, 5)), torch.nn.LayerNorm((3, 5))
    ours.weight.data = np.random.default_rng(2).standard_normal((3, 5)).astype(np.float32)
    check_against_torch(ours, theirs, X)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (nn.GELU(), torch.nn.GELU()),
        (nn.GELU("tanh"), torch.nn.GELU("tanh")),
        (nn.ReLU(), torch.nn.ReLU()),
        (nn.Tanh(), torch.nn.Tanh()),
        (nn.Identity(), torch.nn.Identity()),
        (nn.Dropout(0.5).eval(), torch.nn.Dropout(0.5).eval()),
    ],
    ids=["gelu", "gelu-tanh", "relu", "tanh", "identity", "dropout-eval"],
)
def test_activations_match_torch(ours, theirs):
    x = np.concatenate([X.ravel() * 3, [0.0, -8.0, 8.0, 1e-8]]).reshape(2, -1)
    check_against_torch(ours, theirs, x)


def test_sequential_matches_torch():
    ours = nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 2))
    theirs = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.GELU(), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    check_against_torch(ours, theirs, X)


# ---------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------


def test_dropout_eval_is_identity():
    x = minilora.randn(4, 5, requires_grad=True)
    assert nn.Dropout(0.9).eval()(x) is x
    assert nn.Dropout(0.0)(x) is x


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_train_zeroes_p_and_scales(p):
    minilora.manual_seed(0)
    n = 200_000
    x = minilora.ones(n, dtype=np.float64, requires_grad=True)
    y = nn.Dropout(p)(x)
    dropped = y.data == 0
    assert abs(dropped.mean() - p) < 0.005  # ~5 standard deviations at n = 200,000
    assert np.all(y.data[~dropped] == 1 / (1 - p))
    y.backward(np.full(n, 2.0))
    assert np.array_equal(x.grad, 2 * y.data)  # the backward uses the same mask and scale


def test_dropout_edges_and_reproducibility():
    x = minilora.randn(100, requires_grad=True)
    assert not nn.Dropout(1.0)(x).data.any()
    minilora.manual_seed(5)
    a = nn.Dropout(0.3)(x).data
    minilora.manual_seed(5)
    assert np.array_equal(a, nn.Dropout(0.3)(x).data)
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match=str(p)):
            nn.Dropout(p)
    with pytest.raises(ValueError):
        F.dropout(x, 2.0)
