"""Routing by context: PEFT's Arrow, a mixture of LoRA experts chosen token by token.

    Ostapenko, Su, Ponti, Charlin, Le Roux, Pereira, Caccia, Sordoni (2024). "Towards Modular
    LLMs by Building and Reusing a Library of LoRAs." arXiv:2405.11157. (Arrow routing: sec. 4)
    Belanec, Ostapenko, Simko, Rios, Charlin, Le Roux, Sordoni (2025). "Task Arithmetic in
    Language Models: General Knowledge Subtraction." ACL 2025. (GenKnowSub)

Several task adapters ("experts") sit on one base, each trained on its own task. Arrow needs
no router training: in each layer, expert e is summarised by a *prototype* p_e, the top right
singular vector of its update ΔW_e = B_e A_e -- the input direction the expert amplifies most --
and each token x is sent to the experts whose prototypes it lies along:

    sim_e(x) = |x · p_e|                                   (the sign of a singular vector is arbitrary)
    c(x)     = softmax(top_k(sim(x)) / T)                   (experts outside the top k get weight 0)
    h        = x W^T + b + sum_e c_e(x) s_e (x A_e^T) B_e^T

The prototype is found as PEFT finds it, without forming ΔW: power iterations on
``v -> A^T (B^T B) (A v)`` -- ΔW^T ΔW applied through the thin factors -- from a seeded random
start, 15 steps in float32, ``v / (|v| + 1e-8)`` after each. The error shrinks by (σ₂/σ₁)² a
step, so where σ₂/σ₁ <= 0.5 fifteen steps leave (1/4)^15 ≈ 1e-9 of the start's misalignment:
the exact singular vector to float32 precision. Where the top two singular values are close
the iterate is still a mixture of both -- PEFT's prototype, not the SVD's, and minilora computes
the same one (``top_right_singular_vector``; tests/test_arrow.py compares it with PEFT's).

GenKnowSub (``use_gks``): the mean A and the mean B of some "general" adapters are subtracted
from every task expert's A and B before the prototypes are taken, to remove what all tasks
share (PEFT does it at the first forward; here it is done when the router is added).

``create_arrow_model`` (PEFT's function) loads the experts from their folders and adds the
router; ``add_arrow_router`` adds it to a model that holds the experts already. The router is
a LoRA adapter named ``"arrow_router"`` whose layers route instead of adding their own B A
(``ArrowRouter``, kept in each ``LoRALinear``'s ``lora_arrow``): ``set_adapter`` turns routing on
and off. ``routing_comparison`` measures routing against each expert alone and their merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy

from minilora import backend as B
from minilora import nn
from minilora.nn import functional as F
from minilora.peft import gathered
from minilora.peft.lora import LoRALinear, LoraConfig
from minilora.peft.model import PeftModel
from minilora.tensor import Tensor, matmul, no_grad

TASK_ADAPTER_PREFIX, GKS_ADAPTER_PREFIX = "task_", "gks_"  # PEFT's names for the loaded experts
ROUTER = "arrow_router"  # PEFT's name for the router adapter


@dataclass
class ArrowConfig:
    """Arrow's settings, with PEFT's field names and defaults."""

    top_k: int = 3  # experts combined per token
    router_temperature: float = 1.0  # T in softmax(sim / T)
    use_gks: bool = False  # GenKnowSub: subtract the general adapters' mean from each expert first
    task_adapter_names: list | None = field(default=None, init=False)  # set when the router is added
    gks_adapter_names: list | None = field(default=None, init=False)
    rng_seed: int | None = None  # the power iterations' start; None: minilora's global generator

    def __post_init__(self):
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k <= 0:
            raise ValueError(f"ArrowConfig.top_k must be a positive int, got {self.top_k!r}")
        if not self.router_temperature > 0:
            raise ValueError(f"ArrowConfig.router_temperature must be greater than 0, got {self.router_temperature!r}")


# ---------------------------------------------------------------------------
# the math: prototypes and routing
# ---------------------------------------------------------------------------


def power_iteration_start(n: int, seed: int | None):
    """The start vector (n,), float32, on the host: N(0, 1) draws seeded by ``seed``, or by one
    draw from minilora's global generator (``minilora.manual_seed``) when ``seed`` is None."""
    seed = int(B.to_numpy(B.rng().integers(0, 2**31))) if seed is None else seed
    return numpy.random.default_rng(seed).standard_normal(n).astype(numpy.float32)


def top_right_singular_vector(A, Bm, iters: int = 15, eps: float = 1e-8, start=None):
    """The top right singular vector of ΔW = B A (A: (r, in), B: (out, r), backend arrays), by
    PEFT's power iterations in float32 from ``start`` (in,) -- module docstring. Float32 (in,)."""
    A32, B32 = A.astype(numpy.float32), Bm.astype(numpy.float32)
    C = B32.T @ B32  # (r, r): ΔW^T ΔW = A^T (B^T B) A, never formed
    v = B.xp.asarray(start, dtype=numpy.float32)
    v = v / (B.xp.linalg.norm(v) + eps)
    for _ in range(iters):
        w = A32.T @ (C @ (A32 @ v))  # (in,)
        v = w / (B.xp.linalg.norm(w) + eps)
    return v


def routing_coefficients(x, prototypes, top_k: int, temperature: float):
    """c (tokens, E): softmax over each token's top-k |x · p_e| / T, zero elsewhere (module docstring).
    x (tokens, in), prototypes (E, in): backend arrays."""
    sim = B.xp.abs(x @ prototypes.T)  # (t, E)
    # PEFT's rule: the top k by value, the rest -inf before the softmax. argsort is stable, so among
    # equal similarities the experts listed first win, as torch.topk's do on the CPU.
    top = B.xp.argsort(-sim, axis=1, kind="stable")[:, :top_k]  # (t, k)
    scores = B.xp.full(sim.shape, -B.xp.inf, dtype=sim.dtype)
    B.xp.put_along_axis(scores, top, B.xp.take_along_axis(sim, top, axis=1), axis=1)
    return F.softmax(Tensor(scores / temperature), dim=1).data  # (t, E)


def arrow_delta(x, prototypes, adapters: gathered.AdapterStack, top_k: int, temperature: float) -> Tensor:
    """``sum_e c_e(x) s_e (x A_e^T) B_e^T`` for every token of x (..., in): every expert's update
    computed for every token (an (E, t, out) product), weighted by the routing coefficients."""
    n_in = x.shape[-1]
    tok = x.reshape(-1, n_in)  # (t, in)
    c = routing_coefficients(tok.data, prototypes, top_k, temperature)  # (t, E), a constant
    h = matmul(tok, adapters.A.transpose(1, 2)) * adapters.scaling[:, None, None]  # (E, t, r): shrink, scaled
    y = matmul(h, adapters.B.transpose(1, 2))  # (E, t, out): expand
    delta = (y * c.T[:, :, None]).sum(dim=0)  # (t, out)
    return delta.reshape(*x.shape[:-1], delta.shape[-1])


def arrow_delta_reference(x, prototypes, As, Bs, scalings, top_k: int, temperature: float):
    """The plain reference, token by token, in NumPy: x (t, in) -> (t, out)."""
    out = []
    for token in x:
        sim = numpy.abs(prototypes @ token)  # (E,)
        chosen = numpy.argsort(-sim, kind="stable")[:top_k]
        weights = numpy.exp((sim[chosen] - sim[chosen].max()) / temperature)
        weights /= weights.sum()
        out.append(sum(w * scalings[e] * (Bs[e] @ (As[e] @ token)) for w, e in zip(weights, chosen)))
    return numpy.stack(out)


# ---------------------------------------------------------------------------
# the router, inside each LoRALinear
# ---------------------------------------------------------------------------


class ArrowRouter(nn.Module):
    """One layer's router: the experts' names, their prototypes (E, in), top_k and T. Called by
    the layer as ``router(layer, x)`` in place of the router adapter's own update."""

    def __init__(self, experts: list, prototypes, top_k: int, temperature: float):
        super().__init__()
        self.experts, self.prototypes = list(experts), prototypes
        self.top_k, self.temperature = top_k, temperature

    def forward(self, layer: LoRALinear, x) -> Tensor:
        adapters = gathered.stack_adapters([layer.lora_A[e].weight for e in self.experts],
                                           [layer.lora_B[e].weight for e in self.experts],
                                           [layer.scaling[e] for e in self.experts])
        return arrow_delta(x, self.prototypes, adapters, self.top_k, self.temperature)

    def extra_repr(self) -> str:
        return f"experts={self.experts}, top_k={self.top_k}, temperature={self.temperature}"


def _expert_layers(model: PeftModel, names: list) -> list:
    """``[(name, layer)]`` of the LoRA layers holding ``names``, after PEFT's checks that the
    experts agree: one rank, one shape per layer, the same layers (a ValueError naming the adapter)."""
    layers = [(n, m) for n, m in model.base_model.adapter_layers() if isinstance(m, LoRALinear)]
    reference = None
    for name in names:
        held = [(n, m) for n, m in layers if name in m.lora_A]
        if not held:
            raise ValueError(f"adapter {name!r} is not on the model; adapters: {sorted(model.peft_config)}")
        ranks = {m.lora_A[name].weight.shape[0] for _, m in held}
        current = {"r": ranks, "modules": [n for n, _ in held],
                   "shapes": [(m.lora_A[name].weight.shape, m.lora_B[name].weight.shape) for _, m in held]}
        if len(ranks) > 1:
            raise ValueError(f"[{name}] has ranks {sorted(ranks)} in different layers; Arrow needs one rank")
        if reference is None:
            reference = current
            continue
        if current["r"] != reference["r"]:
            raise ValueError(f"[{name}] rank mismatch: {min(current['r'])} != {min(reference['r'])}")
        if current["modules"] != reference["modules"]:
            raise ValueError(f"[{name}] target_modules mismatch: this adapter -> {current['modules']}, "
                             f"reference -> {reference['modules']}")
        if current["shapes"] != reference["shapes"]:
            raise ValueError(f"[{name}] shape mismatch: {current['shapes']} != {reference['shapes']}")
    return [(n, m) for n, m in layers if names[0] in m.lora_A]


@no_grad()
def general_knowledge_subtraction(layers: list, task_names: list, general_names: list) -> None:
    """GenKnowSub: each task expert's A and B minus the general adapters' mean A and mean B, in every layer."""
    for _, layer in layers:
        mean_A = sum(layer.lora_A[g].weight.data for g in general_names) / len(general_names)
        mean_B = sum(layer.lora_B[g].weight.data for g in general_names) / len(general_names)
        for name in task_names:
            layer.lora_A[name].weight.data = layer.lora_A[name].weight.data - mean_A
            layer.lora_B[name].weight.data = layer.lora_B[name].weight.data - mean_B


@no_grad()
def add_arrow_router(model: PeftModel, arrow_config: ArrowConfig, task_adapter_names: list,
                     gks_adapter_names: list | None = None) -> None:
    """Add the ``"arrow_router"`` adapter routing among ``task_adapter_names`` (already on the model),
    after GenKnowSub with ``gks_adapter_names`` if ``arrow_config.use_gks``; it becomes the active adapter."""
    names = list(task_adapter_names)
    if not names:
        raise ValueError("task_adapter_names should contain at least one adapter name")
    if arrow_config.top_k > len(names):
        raise ValueError(f"ArrowConfig.top_k={arrow_config.top_k} exceeds the {len(names)} task adapters to route among")
    general = list(gks_adapter_names or [])
    if arrow_config.use_gks and not general:
        raise ValueError("You should provide general LoRA paths if you want to use GenKnowSub.")
    for name in names + general:
        if any(layer.enable_lora.get(name) is not None or name in layer.lora_magnitude_vector
               for _, layer in model.base_model.adapter_layers() if name in layer.lora_A):
            raise ValueError(f"adapter {name!r} is not a plain LoRA adapter (DoRA or enable_lora); Arrow routes plain ones")
    layers = _expert_layers(model, names + (general if arrow_config.use_gks else []))
    arrow_config.task_adapter_names, arrow_config.gks_adapter_names = names, general if arrow_config.use_gks else []
    if arrow_config.use_gks:
        general_knowledge_subtraction(layers, names, general)
    r = layers[0][1].lora_A[names[0]].weight.shape[0]
    model.add_adapter(ROUTER, LoraConfig(r=r, target_modules=[n for n, _ in layers], inference_mode=True))
    for _, layer in layers:
        dtype = layer.lora_A[names[0]].weight.dtype
        start = power_iteration_start(layer.in_features, arrow_config.rng_seed)  # PEFT: one start per layer
        prototypes = B.xp.stack([top_right_singular_vector(layer.lora_A[e].weight.data, layer.lora_B[e].weight.data,
                                                           start=start) for e in names]).astype(dtype)  # (E, in)
        layer.lora_arrow[ROUTER] = ArrowRouter(names, prototypes, arrow_config.top_k, arrow_config.router_temperature)
    model.set_adapter(ROUTER)


def create_arrow_model(base_model: nn.Module, task_specific_adapter_paths: list, arrow_config: ArrowConfig,
                       general_adapter_paths: list | None = None) -> PeftModel:
    """PEFT's ``create_arrow_model``: the experts loaded from their folders as ``task_0``, ``task_1``, ...
    (and ``gks_0``, ... with ``use_gks``), then the router added and made active."""
    if not task_specific_adapter_paths:
        raise ValueError("`task_specific_adapter_paths` should contain at least one adapter path")
    if arrow_config.use_gks and not general_adapter_paths:
        raise ValueError("You should provide general LoRA paths if you want to use GenKnowSub.")
    paths = {f"{TASK_ADAPTER_PREFIX}{i}": p for i, p in enumerate(task_specific_adapter_paths)}
    if arrow_config.use_gks:
        paths.update({f"{GKS_ADAPTER_PREFIX}{i}": p for i, p in enumerate(general_adapter_paths)})
    (first, first_path), *rest = paths.items()
    model = PeftModel.from_pretrained(base_model, Path(first_path), adapter_name=first)
    for name, path in rest:
        model.load_adapter(Path(path), adapter_name=name)
    tasks = [n for n in paths if n.startswith(TASK_ADAPTER_PREFIX)]
    add_arrow_router(model, arrow_config, tasks, [n for n in paths if n.startswith(GKS_ADAPTER_PREFIX)])
    return model


# ---------------------------------------------------------------------------
# routing against each expert alone and against their merge
# ---------------------------------------------------------------------------


@no_grad()
def routing_comparison(model: PeftModel, adapters: list, evaluate, weights=None, top_ks=None,
                       temperature: float = 1.0, seed: int = 0) -> dict:
    """The figures of ``evaluate(model)`` (any dict of plain numbers, e.g. ``{task: score}``) for:
    the base model, each of ``adapters`` alone, their weighted merge (``add_weighted_adapter``,
    "cat": exactly Σ w_e ΔW_e; ``weights`` default 1/E each), and Arrow routing among them with
    each top_k of ``top_ks`` (default 1 .. E). The model is left as it was found."""
    weights = [1 / len(adapters)] * len(adapters) if weights is None else list(weights)
    top_ks = range(1, len(adapters) + 1) if top_ks is None else top_ks
    active = model.active_adapter
    out = {}
    with model.disable_adapter():
        out["base"] = evaluate(model)
    for name in adapters:
        model.set_adapter(name)
        out[name] = evaluate(model)
    model.add_weighted_adapter(list(adapters), weights, "merged", combination_type="cat")
    try:
        model.set_adapter("merged")
        out["merged"] = evaluate(model)
    finally:
        model.set_adapter(active)
        model.delete_adapter("merged")
    for k in top_ks:
        add_arrow_router(model, ArrowConfig(top_k=k, router_temperature=temperature, rng_seed=seed), list(adapters))
        try:
            out[f"routed_top{k}"] = evaluate(model)
        finally:
            model.set_adapter(active)
            model.delete_adapter(ROUTER)
    return {"figures": out, "adapters": list(adapters), "weights": weights, "top_ks": list(top_ks),
            "temperature": temperature}


__all__ = ["ArrowConfig", "ArrowRouter", "add_arrow_router", "create_arrow_model", "top_right_singular_vector",
           "routing_coefficients", "arrow_delta", "arrow_delta_reference", "general_knowledge_subtraction",
           "routing_comparison"]
