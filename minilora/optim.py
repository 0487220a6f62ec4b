"""Optimizers and a learning-rate schedule, as ``torch.optim``.

Each optimizer keeps state only for parameters that require a gradient -- so a
LoRA model, with its base frozen, carries AdamW moments for the adapter alone.
That is where most of LoRA's memory saving comes from (docs/lora.md).

Training in float16 is mixed precision, as practice does it (docs/training.md): Adam
keeps a float32 *master* copy of every float16 parameter and float32 moments, steps
the master, and rounds it into the parameter; ``GradScaler`` scales the loss so that
float16 gradients do not underflow, and unscales them in float32.
"""

from __future__ import annotations

import math

from minilora import backend as B
from minilora.tensor import Tensor


def _check(name: str, value, ok: bool, accepted: str) -> None:
    """Raise a ValueError that names the argument, its value, and what is accepted."""
    if not ok:
        raise ValueError(f"invalid {name}: {value!r}; {name} must be {accepted}")


class Optimizer:
    """Parameter groups and state, shared by every optimizer.

    ``params`` is an iterable of Parameters, or of dicts ``{"params": [...], "lr": ...}``
    whose entries override the defaults for that group (e.g. no weight decay on biases).
    """

    def __init__(self, params, defaults: dict):
        self.defaults = defaults
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        seen = set()
        for group in groups:
            unknown = set(group) - set(defaults) - {"params"}
            if unknown:
                raise ValueError(f"unknown option(s) {sorted(unknown)} in a parameter group; known: {sorted(defaults)}")
            group = {**defaults, **group, "params": list(group["params"])}
            for p in group["params"]:
                # a parameter listed twice would be updated twice on every step
                if id(p) in seen:
                    raise ValueError(f"a parameter of shape {p.shape} appears more than once in the parameter groups")
                seen.add(id(p))
            self.param_groups.append(group)
        self.state: dict = {}  # param -> its state (moments, step count), created on first step

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad = B.xp.zeros_like(p.data)

    def _params_with_grad(self, group):
        """The parameters this step updates: trainable ones that received a gradient."""
        return [p for p in group["params"] if p.requires_grad and p.grad is not None]

    def step(self) -> None:
        raise NotImplementedError

    def state_bytes(self) -> int:
        """Bytes held in optimizer state (what memory accounting calls 'optimizer state')."""
        return sum(v.nbytes for s in self.state.values() for v in s.values() if hasattr(v, "nbytes"))


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov and L2 weight decay.

    ``g <- g + wd p``; ``b <- mu b + (1 - dampening) g`` (``b = g`` on the first step);
    ``p <- p - lr (g + mu b if nesterov else b)``.
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        _check("lr", lr, lr >= 0, ">= 0")
        _check("momentum", momentum, momentum >= 0, ">= 0")
        _check("weight_decay", weight_decay, weight_decay >= 0, ">= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov))

    def step(self) -> None:
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in self._params_with_grad(group):
                g = p.grad
                if wd:
                    g = g + wd * p.data
                if mu:
                    state = self.state.setdefault(p, {})
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = g.copy()
                    else:
                        buf = state["momentum_buffer"]
                        buf *= mu
                        buf += (1 - group["dampening"]) * g
                    buf = state["momentum_buffer"]
                    g = g + mu * buf if group["nesterov"] else buf
                p.data -= lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015, Algorithm 1) with bias correction; ``weight_decay`` is L2,
    added to the gradient (use AdamW for decoupled decay).

    ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g^2``;
    ``p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

    A parameter narrower than float32 (float16) is stepped through a float32 master copy
    (``state["master"]``), with float32 moments, and gets the master rounded to its dtype after
    each step: in float16 itself, ``eps`` = 1e-8 rounds to 0 -- so a gradient that is 0 makes
    ``m / (sqrt(v) + eps)`` = 0/0 = NaN -- and an update smaller than half the spacing of
    float16 around a weight (2.4e-4 to 4.9e-4 of it) would be rounded away, step after step
    (Micikevicius et al., 2018, "Mixed Precision Training", sec. 3.1). A float16 parameter
    changed from outside between steps (a load) is taken as the new master.
    """

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        _check("lr", lr, lr >= 0, ">= 0")
        _check("betas", betas, len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas), "two numbers in [0, 1)")
        _check("eps", eps, eps >= 0, ">= 0")
        _check("weight_decay", weight_decay, weight_decay >= 0, ">= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def step(self) -> None:
        xp = B.xp
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in self._params_with_grad(group):
                if not p.data.flags.c_contiguous:
                    p.data = xp.ascontiguousarray(p.data)  # the update works on flat views of it
                state = self.state.get(p)
                if state is None:
                    state = self.state[p] = self._new_state(p)
                weights = self._master(p, state)  # p.data itself, or its float32 master copy
                g = p.grad.astype(weights.dtype, copy=False)
                state["step"] += 1
                t = state["step"]
                decay = 1.0
                if wd:
                    if self.decoupled:  # AdamW: shrink the weights directly (Loshchilov & Hutter, 2019)
                        decay = 1 - lr * wd
                    else:
                        g = g + wd * weights
                c = math.sqrt(1 - b2**t)
                _adam_update(weights.reshape(-1), xp.ascontiguousarray(g).reshape(-1), state["exp_avg"].reshape(-1),
                             state["exp_avg_sq"].reshape(-1), b1, b2, eps * c, lr * c / (1 - b1**t), decay)
                if weights is not p.data:
                    p.data[...] = weights  # the master, rounded to the parameter's dtype

    @staticmethod
    def _new_state(p) -> dict:
        """Zero moments (row-major, like p), float32 at least; a float32 master copy of a narrower p."""
        xp = B.xp
        dtype = xp.promote_types(p.data.dtype, xp.float32)
        state = {"step": 0, "exp_avg": xp.zeros(p.data.shape, dtype=dtype), "exp_avg_sq": xp.zeros(p.data.shape, dtype=dtype)}
        if dtype != p.data.dtype:
            state["master"] = p.data.astype(dtype)
        return state

    @staticmethod
    def _master(p, state):
        """The array the step updates: p's master copy if it has one, else p's own data. Where p was
        changed from outside since the last step (its value is no longer the master rounded), the
        master takes p's value -- element by element, on the device, without a sync."""
        master = state.get("master")
        if master is None:
            return p.data
        B.xp.copyto(master, p.data, where=master.astype(p.data.dtype) != p.data)
        return master


def _adam_update(p, g, m, v, b1, b2, eps_c, step_size, decay=1.0):
    """One Adam step on flat arrays, in place, on all cores (``backend.parallel_for``):

        p <- decay p                      (AdamW's decoupled weight decay; 1 for Adam)
        m <- b1 m + (1 - b1) g
        v <- b2 v + (1 - b2) g^2
        p <- p - step_size * m / (sqrt(v) + eps_c)

    which is Algorithm 1's ``p - lr / (1 - b1^t) * m / (sqrt(v) / c + eps)`` with
    ``c = sqrt(1 - b2^t)``, ``step_size = lr c / (1 - b1^t)``, ``eps_c = eps c`` (one
    division fewer). Every line writes into m, v, p or one scratch array: an optimizer
    step over millions of weights is bound by memory traffic, and each temporary NumPy
    would otherwise allocate is one more pass over it. The same step in plain NumPy, as the
    papers write it: ``minilora.nn.reference.adamw_step``.
    """
    xp = B.xp

    def kernel(a, b):
        g_, m_, v_, tmp = g[a:b], m[a:b], v[a:b], xp.empty_like(g[a:b])
        m_ *= b1
        xp.multiply(g_, 1 - b1, out=tmp)
        m_ += tmp
        v_ *= b2
        xp.multiply(g_, g_, out=tmp)
        tmp *= 1 - b2
        v_ += tmp
        xp.sqrt(v_, out=tmp)
        tmp += eps_c
        xp.divide(m_, tmp, out=tmp)
        tmp *= step_size
        if decay != 1.0:
            p[a:b] *= decay
        p[a:b] -= tmp

    B.parallel_for(p.size, kernel)


class AdamW(Adam):
    """Adam with decoupled weight decay: ``p <- p (1 - lr wd)`` before the Adam step.
    PyTorch's default ``weight_decay=0.01``. Plain version: ``minilora.nn.reference.adamw_step``."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def grad_norm(parameters, norm_type: float = 2.0) -> Tensor:
    """The joint norm of all gradients, ``||(||g_1||_p, ..., ||g_n||_p)||_p`` (0 without any), a 0-d
    Tensor on the device -- what ``clip_grad_norm_`` returns, without clipping."""
    xp = B.xp
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return Tensor(0.0)
    if norm_type == math.inf:
        total = xp.stack([xp.abs(g).max() for g in grads]).max()
    elif norm_type == 2.0:  # sum of squares as a dot product: no temporary the size of g
        total = xp.sqrt(xp.stack([xp.vdot(g.ravel(), g.ravel()) for g in grads]).sum())
    else:
        total = xp.stack([(xp.abs(g) ** norm_type).sum() for g in grads]).sum() ** (1.0 / norm_type)
    return Tensor(xp.asarray(total, dtype=grads[0].dtype))


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> Tensor:
    """Scale all gradients together so that their joint norm is at most ``max_norm``:

        total = ||(||g_1||_p, ..., ||g_n||_p)||_p,    g <- g * min(1, max_norm / (total + 1e-6))

    Returns the total norm before clipping, as ``torch.nn.utils.clip_grad_norm_``. Nothing is
    read on the host: the norm is one reduction over the per-gradient norms, and the clamped
    scale multiplies every gradient whatever its value (1 when the norm is small), as torch
    does -- deciding on the host whether to scale would make a GPU wait once per step.
    ``error_if_nonfinite`` has to read the norm, and so costs that wait.
    """
    xp = B.xp
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    parameters = list(parameters)
    total = grad_norm(parameters, norm_type).data
    if error_if_nonfinite and not math.isfinite(float(total)):
        raise RuntimeError(f"the total norm of gradients is {float(total)}; clipping cannot make it finite")
    scale = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for p in parameters:
        if p.grad is not None:
            p.grad *= scale
    return Tensor(total)


class GradScaler:
    """Dynamic loss scaling for float16 training, with ``torch.amp.GradScaler``'s rule
    (Micikevicius et al., 2018, "Mixed Precision Training", sec. 3.2).

    float16 holds magnitudes from about 6e-8 (subnormal) to 65,504. A loss's gradients are
    small -- a mean over B x T tokens divides them by thousands -- and many would round to
    zero in float16. So backward starts from ``scale`` instead of 1 (``seed``), which
    multiplies every gradient by it, and ``unscale_`` takes each gradient to float32 and
    divides the scale out there, where small values are safe. If a scaled gradient
    overflowed (inf or NaN), ``update(False)`` halves the scale and the step must be skipped;
    after ``growth_interval`` steps without overflow the scale doubles. It starts at
    2**15, the largest power of two float16 holds (torch starts at 2**16 because it scales
    a float32 loss), and never exceeds it; below 1 it no longer scales anything up, so a
    gradient that still overflows is not finite at all -- ``update`` raises then.
    """

    def __init__(self, init_scale: float = 2.0**15, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, max_scale: float = 2.0**15):
        self.scale, self.good_steps = float(init_scale), 0
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval, self.max_scale = growth_interval, max_scale

    def seed(self, loss: Tensor):
        """The gradient to start ``loss.backward`` from: ``scale``, in the loss's dtype."""
        return B.xp.full_like(loss.data, self.scale)

    def unscale_(self, parameters) -> None:
        """Each gradient as float32, divided by the scale."""
        for p in parameters:
            if p.grad is not None:
                p.grad = p.grad.astype(B.xp.float32) * (1.0 / self.scale)

    def update(self, finite: bool) -> None:
        """After a step's gradients were found ``finite`` (then the step ran) or not (then it was skipped)."""
        if finite:
            self.good_steps += 1
            if self.good_steps == self.growth_interval:
                self.scale, self.good_steps = min(self.scale * self.growth_factor, self.max_scale), 0
            return
        self.scale, self.good_steps = self.scale * self.backoff_factor, 0
        if self.scale < 1.0:
            raise FloatingPointError("the gradient is not finite even without loss scaling")

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])


def warmup_cosine_lr(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warm-up from ~0 to ``max_lr`` over ``warmup_steps``, then a cosine decay to
    ``min_lr`` at ``total_steps`` (and ``min_lr`` after). ``step`` counts from 0.

    ``lr = max_lr (step + 1) / warmup_steps`` while ``step < warmup_steps``, then
    ``lr = min_lr + (max_lr - min_lr) (1 + cos(pi p)) / 2`` with
    ``p = (step - warmup_steps) / (total_steps - warmup_steps)``.
    """
    # a wrong argument would otherwise give a silently odd schedule (negative, or rising)
    _check("step", step, step >= 0, ">= 0 (steps count from 0)")
    _check("total_steps", total_steps, total_steps > 0, "> 0")
    _check("warmup_steps", warmup_steps, 0 <= warmup_steps <= total_steps, f"in [0, total_steps={total_steps}]")
    _check("min_lr", min_lr, 0 <= min_lr <= max_lr, f"in [0, max_lr={max_lr}]")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


class WarmupCosine:
    """Set each group's ``lr`` from ``warmup_cosine_lr`` on every ``step()`` (as a torch LR scheduler).

    The schedule multiplies each group's initial ``lr``, so groups keep their ratios.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1):
        if warmup_steps < 0 or total_steps <= 0 or warmup_steps > total_steps:
            raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps > 0, got {warmup_steps}, {total_steps}")
        _check("min_lr_ratio", min_lr_ratio, 0.0 <= min_lr_ratio <= 1.0, "in [0, 1]")
        self.optimizer = optimizer
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def _factor(self, step):
        return warmup_cosine_lr(step, 1.0, self.warmup_steps, self.total_steps, self.min_lr_ratio)

    def _apply(self):
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self._factor(self.last_step)

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list:
        return [g["lr"] for g in self.optimizer.param_groups]
