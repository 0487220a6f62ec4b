"""``minilora.optim`` against ``torch.optim``: SGD, Adam and AdamW step for step on
the same float64 parameters and the same gradients; gradient clipping; the
warm-up + cosine schedule.

Hypothesis draws the hyperparameters, the parameter shapes and the split into
parameter groups (how many examples: the profile in conftest.py); the gradients
come from a seeded generator, and now and then a parameter gets no gradient for
a step (both libraries must then skip it).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import minilora
from minilora import nn, optim

TOL = 1e-10
STEPS = 20


def rel_err(a, b) -> float:
    """``max |a - b| / max |b|`` (absolute when ``b`` is all zeros)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b), initial=0.0) / max(np.max(np.abs(b), initial=0.0), 1e-300))


# ---------------------------------------------------------------------------
# step-for-step parity with torch.optim
# ---------------------------------------------------------------------------

shapes_st = st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), min_size=2, max_size=4)
lr_st = st.floats(1e-4, 0.3)
wd_st = st.one_of(st.just(0.0), st.floats(1e-4, 0.2))
group_st = st.fixed_dictionaries({"lr": lr_st, "weight_decay": wd_st})
groups_st = st.lists(group_st, min_size=1, max_size=2)


def assert_same_trajectory(ours_cls, theirs_cls, shapes, groups, options, seed):
    """Run both optimizers for STEPS steps; compare every parameter after every step.

    The parameters are split round-robin over ``groups`` (each a dict of overrides);
    ``options`` are the constructor's keyword arguments (the defaults of every group).
    """
    rng = np.random.default_rng(seed)
    start = [rng.standard_normal(s) for s in shapes]
    ours = [nn.Parameter(a.copy()) for a in start]
    theirs = [torch.nn.Parameter(torch.tensor(a)) for a in start]

    def split(params):
        return [{"params": params[i :: len(groups)], **g} for i, g in enumerate(groups)]

    opt, ref = ours_cls(split(ours), **options), theirs_cls(split(theirs), **options)
    for step in range(STEPS):
        for p, q in zip(ours, theirs):
            if step > 0 and rng.random() < 0.15:  # no gradient this step: the parameter is skipped
                p.grad, q.grad = None, None
            else:
                g = rng.standard_normal(p.shape) * rng.choice([1e-3, 1.0, 10.0])
                p.grad, q.grad = g.copy(), torch.tensor(g)
        opt.step()
        ref.step()
        for i, (p, q) in enumerate(zip(ours, theirs)):
            err = rel_err(p.data, q.detach().numpy())
            assert err <= TOL, f"parameter {i} after step {step + 1}: relative error {err:.2e}"
    assert {id(p) for p in opt.state} == {id(p) for p, q in zip(ours, theirs) if q in ref.state}


@st.composite
def sgd_options(draw):
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9]) | st.floats(0.01, 0.99))
    nesterov = momentum > 0 and draw(st.booleans())
    dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.3]))
    return dict(momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=draw(wd_st))


@given(shapes=shapes_st, groups=groups_st, options=sgd_options(), seed=st.integers(0, 2**16))
def test_sgd_matches_torch(shapes, groups, options, seed):
    assert_same_trajectory(optim.SGD, torch.optim.SGD, shapes, groups, options, seed)


@pytest.mark.parametrize(
    "options",
    [dict(momentum=0.9), dict(momentum=0.9, nesterov=True), dict(momentum=0.5, dampening=0.5, weight_decay=0.1), {}],
    ids=["momentum", "nesterov", "dampening+wd", "plain"],
)
def test_sgd_variants_match_torch(options):
    assert_same_trajectory(optim.SGD, torch.optim.SGD, [(3, 2), (4,)], [{"lr": 0.1}], options, seed=0)


adam_options = st.fixed_dictionaries(
    {
        "betas": st.tuples(st.floats(0.0, 0.99), st.floats(0.5, 0.9999)),
        "eps": st.sampled_from([1e-8, 1e-6, 1e-3]),
        "weight_decay": wd_st,
    }
)


@given(shapes=shapes_st, groups=groups_st, options=adam_options, seed=st.integers(0, 2**16))
def test_adam_matches_torch(shapes, groups, options, seed):
    assert_same_trajectory(optim.Adam, torch.optim.Adam, shapes, groups, options, seed)


@given(shapes=shapes_st, groups=groups_st, options=adam_options, seed=st.integers(0, 2**16))
def test_adamw_matches_torch(shapes, groups, options, seed):
    assert_same_trajectory(optim.AdamW, torch.optim.AdamW, shapes, groups, options, seed)


@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW"])
def test_defaults_match_torch(cls):
    ours = getattr(optim, cls)([nn.Parameter(np.zeros(2))])
    theirs = getattr(torch.optim, cls)([torch.nn.Parameter(torch.zeros(2))])
    for key, value in ours.defaults.items():
        assert theirs.defaults[key] == value, key
    # and the defaults give the same trajectory
    assert_same_trajectory(getattr(optim, cls), getattr(torch.optim, cls), [(3,), (2, 2)], [{}], {}, seed=1)


# ---------------------------------------------------------------------------
# state, frozen parameters, zero_grad, argument checks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: optim.Adam(ps, lr=0.1),
        lambda ps: optim.AdamW(ps, lr=0.1, weight_decay=0.1),
    ],
    ids=["SGD", "Adam", "AdamW"],
)
def test_frozen_parameters_get_no_state_and_no_update(make):
    trainable = nn.Parameter(np.ones((2, 3)))
    frozen = nn.Parameter(np.ones(5), requires_grad=False)
    frozen.grad = np.ones(5)  # a stray gradient on a frozen parameter must not move it
    unreached = nn.Parameter(np.ones(4))  # trainable, but no gradient this step
    opt = make([{"params": [trainable, frozen]}, {"params": [unreached]}])
    trainable.grad = np.ones((2, 3))
    opt.step()
    assert list(opt.state) == [trainable]
    assert np.all(frozen.data == 1) and np.all(unreached.data == 1) and not np.all(trainable.data == 1)
    per_element = {"SGD": 1, "Adam": 2, "AdamW": 2}[type(opt).__name__]
    assert opt.state_bytes() == per_element * trainable.data.nbytes


def test_lora_style_state_is_for_the_adapter_only():
    base = nn.Linear(32, 32, dtype=np.float64).requires_grad_(False)
    adapter = nn.Linear(32, 2, bias=False, dtype=np.float64)
    opt = optim.AdamW(list(base.parameters()) + list(adapter.parameters()))
    for p in list(base.parameters()) + list(adapter.parameters()):
        p.grad = np.ones_like(p.data)
    opt.step()
    assert opt.state_bytes() == 2 * adapter.weight.data.nbytes


def test_zero_grad():
    a, b = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))
    opt = optim.SGD([a, b], lr=0.1)
    a.grad = np.full(3, 5.0)
    opt.zero_grad(set_to_none=False)
    assert np.array_equal(a.grad, np.zeros(3)) and a.grad.dtype == a.dtype
    assert b.grad is None  # never set: stays None, as in torch
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_bad_arguments_raise():
    p = nn.Parameter(np.ones(2))
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="-1"):
        optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="momentum"):
        optim.SGD([p], lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        optim.Adam([p], eps=-1e-8)
    for cls in (optim.SGD, optim.Adam, optim.AdamW):
        with pytest.raises(ValueError, match="weight_decay"):
            cls([p], weight_decay=-0.1)
    with pytest.raises(ValueError, match="lr_mult"):
        optim.AdamW([{"params": [p], "lr_mult": 2}])
    with pytest.raises(ValueError, match="more than once"):
        optim.AdamW([{"params": [p]}, {"params": [p], "weight_decay": 0.0}])


# ---------------------------------------------------------------------------
# gradient clipping
# ---------------------------------------------------------------------------


@given(
    shapes=shapes_st,
    max_norm=st.floats(1e-3, 10.0),
    norm_type=st.sampled_from([2.0, 1.0, math.inf]),
    scale=st.sampled_from([1e-3, 1.0, 100.0]),
    seed=st.integers(0, 2**16),
)
def test_clip_grad_norm_matches_torch(shapes, max_norm, norm_type, scale, seed):
    rng = np.random.default_rng(seed)
    grads = [rng.standard_normal(s) * scale for s in shapes]
    ours = [nn.Parameter(np.zeros(s)) for s in shapes] + [nn.Parameter(np.zeros(2))]  # the last has no grad
    theirs = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in shapes]
    for p, q, g in zip(ours, theirs, grads):
        p.grad, q.grad = g.copy(), torch.tensor(g)
    norm = optim.clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    ref = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    assert isinstance(norm, minilora.Tensor) and norm.dtype == np.float64
    assert rel_err(norm.data, ref.numpy()) <= TOL
    for p, q in zip(ours, theirs):
        assert rel_err(p.grad, q.grad.numpy()) <= TOL
    assert ours[-1].grad is None


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clip_leaves_small_gradients_untouched(norm_type):
    grads = [np.array([0.3, -0.4]), np.array([[0.1], [0.2]])]
    params = [nn.Parameter(np.zeros(g.shape)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.copy()
    norm = optim.clip_grad_norm_(iter(params), max_norm=1.0, norm_type=norm_type)  # a generator is fine
    expected = np.sqrt(0.3**2 + 0.4**2 + 0.1**2 + 0.2**2) if norm_type == 2.0 else 0.4
    assert norm.item() == pytest.approx(expected, rel=1e-15)
    for p, g in zip(params, grads):
        assert np.array_equal(p.grad, g)


def test_clip_edge_cases():
    p = nn.Parameter(np.zeros(3))
    assert optim.clip_grad_norm_(p, 1.0).item() == 0.0  # no gradients at all
    p.grad = np.array([3.0, 4.0, 0.0])
    assert optim.clip_grad_norm_(p, 1.0).item() == pytest.approx(5.0)  # a single tensor
    assert np.linalg.norm(p.grad) == pytest.approx(1.0, rel=1e-6)
    p.grad = np.array([np.nan, 1.0, 0.0])
    with pytest.raises(RuntimeError, match="nan"):
        optim.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)


# ---------------------------------------------------------------------------
# the learning-rate schedule
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("warmup,total,min_lr", [(10, 100, 0.0), (10, 100, 1e-4), (0, 50, 1e-5), (1, 7, 0.0), (5, 5, 0.0)])
def test_warmup_cosine_shape(warmup, total, min_lr):
    max_lr = 3e-3
    lrs = [optim.warmup_cosine_lr(s, max_lr, warmup, total, min_lr) for s in range(total + 10)]
    # warm-up: linear from max_lr / warmup, reaching max_lr at its last step
    for s in range(warmup):
        assert lrs[s] == pytest.approx(max_lr * (s + 1) / warmup, rel=1e-12)
    assert max(lrs) == pytest.approx(max_lr, rel=1e-12)
    if warmup:
        assert lrs[warmup - 1] == pytest.approx(max_lr, rel=1e-12)
        assert np.all(np.diff(lrs[:warmup]) > 0)
    # decay: monotone down to min_lr at total_steps, and min_lr from there on
    assert np.all(np.diff(lrs[warmup:]) <= 1e-18)
    assert all(lr == min_lr for lr in lrs[total:])
    assert all(min_lr <= lr <= max_lr for lr in lrs)
    if total - warmup >= 2 and (total - warmup) % 2 == 0:  # the cosine's midpoint
        assert lrs[warmup + (total - warmup) // 2] == pytest.approx((max_lr + min_lr) / 2, rel=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(step=-1, warmup_steps=2, total_steps=10),
        dict(step=0, warmup_steps=-1, total_steps=10),
        dict(step=0, warmup_steps=11, total_steps=10),
        dict(step=0, warmup_steps=0, total_steps=0),
        dict(step=0, warmup_steps=2, total_steps=10, min_lr=2.0),
        dict(step=0, warmup_steps=2, total_steps=10, min_lr=-0.1),
    ],
)
def test_warmup_cosine_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        optim.warmup_cosine_lr(max_lr=1.0, **kwargs)


def test_warmup_cosine_scheduler_matches_torch_lambda_lr():
    groups = lambda ps: [{"params": ps[:1], "lr": 1e-3}, {"params": ps[1:], "lr": 1e-2, "weight_decay": 0.0}]  # noqa: E731
    ours = [nn.Parameter(np.ones(2)), nn.Parameter(np.ones(3))]
    theirs = [torch.nn.Parameter(torch.ones(2, dtype=torch.float64)), torch.nn.Parameter(torch.ones(3, dtype=torch.float64))]
    opt, ref = optim.AdamW(groups(ours)), torch.optim.AdamW(groups(theirs))
    sched = optim.WarmupCosine(opt, warmup_steps=3, total_steps=12, min_lr_ratio=0.1)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda s: optim.warmup_cosine_lr(s, 1.0, 3, 12, 0.1))
    for step in range(15):
        assert sched.get_last_lr() == pytest.approx(ref_sched.get_last_lr(), rel=1e-14)
        lr0, lr1 = sched.get_last_lr()
        assert lr1 / lr0 == pytest.approx(10.0, rel=1e-12)  # the groups keep their ratio
        assert lr0 == pytest.approx(1e-3 * optim.warmup_cosine_lr(step, 1.0, 3, 12, 0.1), rel=1e-14)
        for p, q in zip(ours, theirs):
            p.grad, q.grad = np.full(p.shape, 0.5), torch.full(q.shape, 0.5, dtype=torch.float64)
        opt.step()
        ref.step()
        sched.step()
        ref_sched.step()
        for p, q in zip(ours, theirs):
            assert rel_err(p.data, q.detach().numpy()) <= TOL
    assert sched.get_last_lr() == pytest.approx([1e-4, 1e-3])


@pytest.mark.parametrize(
    "kwargs",
    [dict(warmup_steps=5, total_steps=4), dict(warmup_steps=-1, total_steps=4), dict(warmup_steps=0, total_steps=0),
     dict(warmup_steps=1, total_steps=4, min_lr_ratio=1.5), dict(warmup_steps=1, total_steps=4, min_lr_ratio=-0.5)],
)
def test_warmup_cosine_scheduler_bad_arguments(kwargs):
    opt = optim.SGD([nn.Parameter(np.ones(2))], lr=0.1)
    with pytest.raises(ValueError):
        optim.WarmupCosine(opt, **kwargs)
    assert opt.param_groups[0]["lr"] == 0.1  # a failed construction changes nothing
