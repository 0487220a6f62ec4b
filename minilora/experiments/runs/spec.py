"""One fine-tuning run, on any base: what is trained (``RunSpec``), what it measured (``RunResult``),
and the grid of runs a base trains for claim 4 (``Grid``), which claims 5, 6, 8 and 9 read too."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

ALPHA_PER_RANK = 2  # alpha = 2 r: the update is always scaled by alpha / r = 2, one learning rate across ranks


@dataclass(frozen=True)
class RunSpec:
    """One fine-tuning run on a base model. Frozen: with the base's hashes it keys the session's runs and the run cache.

    Which tasks, methods and targets exist is the base's to say (``base.check``); the fields mean
    the same on every base."""

    task: str  # "cls" (docstring -> package) or "code" (prose -> code): the base's ``tasks``
    method: str  # "full", "lora", "probe" (head and pooler only), or another PEFT method: "dora", "ia3", "prompt", ...
    target: str | None = None  # LoRA's target set: a key of the base's ``TARGETS``
    r: int = 0  # the method's size: rank r (LoRA, DoRA), virtual tokens P (prompt, prefix), bottleneck m (adapters)
    alpha: float | None = None  # LoRA's alpha; None: ALPHA_PER_RANK * r
    use_rslora: bool = False  # scale by alpha / sqrt(r) (rsLoRA) instead of alpha / r
    seed: int = 0  # fixes the adapter's (and a new head's) initialisation and the batch order
    steps: int = 200  # optimizer steps
    batch_size: int = 8
    warmup_steps: int = 20
    lr: float | None = None  # None: the rate chosen for the setting (``runner.resolved``), or the base's default
    quantized: bool = False  # the frozen projections in NF4 with double quantization (QLoRA, claim 12)

    def __post_init__(self):
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 0:
            raise ValueError(f"RunSpec.r must be an int >= 0, got {self.r!r}")
        if self.steps < 1 or self.batch_size < 1 or self.warmup_steps < 0:
            raise ValueError(f"RunSpec needs steps >= 1, batch_size >= 1, warmup_steps >= 0; got {self.steps}, "
                             f"{self.batch_size}, {self.warmup_steps}")

    @property
    def lora_alpha(self) -> float:
        return ALPHA_PER_RANK * self.r if self.alpha is None else self.alpha

    def replace(self, **changes) -> "RunSpec":
        return dataclasses.replace(self, **changes)


@dataclass
class RunResult:
    """What one run measured. ``seconds`` is its training time, kept as provenance only: no claim
    reports a time read from a run (it may come from the run cache)."""

    spec: RunSpec
    losses: list  # training loss at each step
    final: dict  # held-out (test) figures at the end: {"loss", "accuracy"}
    trainable: int  # trainable parameters
    seconds: float
    state: dict = field(repr=False, default_factory=dict)  # the trained weights (NumPy): adapter only, or the whole model
    val: dict = field(default_factory=dict)  # the same figures on the validation split (what learning rates are chosen by)
    provenance: dict = field(default_factory=dict)  # where it came from: trained here or read from the cache, code, date
    rows: dict = field(default_factory=dict)  # each test row's figures, {"loss": [...], "accuracy": [...]}: what intervals resample


def trained_state(model) -> dict:
    """What a run keeps: a PEFT model's adapter (PEFT's keys), or every parameter of a fully tuned model (NumPy)."""
    import numpy as np

    from minilora import backend

    if hasattr(model, "base_model"):
        items = model.base_model.adapter_state_dict(model.active_adapter).items()
    else:
        items = model.state_dict().items()
    return {k: np.array(backend.to_numpy(v)) for k, v in items}


def setting_name(spec) -> str:
    """"full", "probe", or "<target> r=<r>" (plus " alpha=<alpha>", " rslora" when not the default)."""
    if spec.method != "lora":
        return spec.method
    name = f"{spec.target} r={spec.r}"
    if spec.alpha is not None:
        name += f" alpha={spec.alpha:g}"
    if spec.use_rslora:
        name += " rslora"
    return name


@dataclass(frozen=True)
class TaskGrid:
    """The runs of one task in a base's grid: the settings without a target, LoRA's settings, more LoRA settings."""

    steps: int  # optimizer steps per run
    targets: tuple  # ((target, ranks), ...): LoRA at each rank on each target set
    methods: tuple = ("full",)  # the settings without a target, trained first ("probe", "full")
    extra: tuple = ()  # ((target, r), ...): more LoRA settings (PEFT's own target, which claims 5 and 8 read)


@dataclass(frozen=True)
class Grid:
    """A base's grid of fine-tuning runs for claim 4 (quick or full): every setting of every task, every seed."""

    seeds: tuple
    batch_size: int
    tasks: tuple  # ((task, TaskGrid), ...)
    more_seeds: tuple = ()  # further seeds, trained only for the settings claims judge (claims 4, 11, 12)

    @property
    def judged_seeds(self) -> tuple:
        """The seeds of a judged setting: every seed of the grid, then ``more_seeds``."""
        return self.seeds + tuple(s for s in self.more_seeds if s not in self.seeds)

    def task(self, name: str) -> TaskGrid:
        return dict(self.tasks)[name]

    def common(self, task: str) -> dict:
        """The RunSpec fields the grid fixes for a task: steps, batch size, warm-up (a tenth of the steps)."""
        steps = self.task(task).steps
        return dict(steps=steps, batch_size=self.batch_size, warmup_steps=max(1, steps // 10))

    def specs(self) -> list:
        """Every run, seed by seed, task by task, without learning rates (the session's chosen ones fill them in)."""
        out = []
        for seed in self.seeds:
            for task, g in self.tasks:
                common = dict(seed=seed, **self.common(task))
                out += [RunSpec(task, method, **common) for method in g.methods]
                out += [RunSpec(task, "lora", target, r, **common) for target, ranks in g.targets for r in ranks]
                out += [RunSpec(task, "lora", target, r, **common) for target, r in g.extra]
        return out
