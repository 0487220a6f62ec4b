"""The Base protocol: what a base model provides for the claims to measure it.

A base is one module in ``minilora/experiments/bases/`` that defines ``BASE``, an object with
the members below (``toy.py``, ``minilm.py`` and ``llama.py`` are the three; ``docs/architecture.md``
adds a fourth as a worked example). The claims read a base only through these members, so that
a claim measured on several bases is written once.

Identity and text
    ``name``           the registry key, and the value ``--bases`` takes ("toy")
    ``SHORT``          its name in tables ("toy", "MiniLM")
    ``TITLE``          its name in a section heading ("the toy GPT (minilora's own, ...)")
    ``IN_TEXT``        its name in a sentence ("the toy base", "MiniLM")

Its environment and tasks
    ``environment(session)``  the weights and the tasks' data, loaded once a session; ``.provenance``
                              holds the sha256 of each (they key the run cache, and go in the report)
    ``run_identity(session)`` what else decides a run's figures (the evaluation's size, ...)
    ``TASKS``                 the tasks it is fine-tuned on: "cls" (docstring -> package), "code"

Fine-tuning
    ``TARGETS``, ``TARGET_LABELS``  LoRA's target sets by name, and how the report calls them
    ``PEFT_TARGET``          PEFT's default target set for the model type (``target_modules=None``)
    ``grid(quick)``          the runs of claim 4 (``runs.Grid``): settings, ranks, seeds, steps
    ``check(spec)``, ``label(spec)``  a RunSpec it can train (else ValueError), and its name in the report
    ``fresh_model(spec, env)``        the model a run starts from
    ``finetune(spec, session)``       train one run and measure it: a ``runs.RunResult``
    ``untuned(session)``     ``{task: figures}`` of the model before any fine-tuning
    ``baseline(session)``    ``{task: figures}`` a run must beat (else it failed: ``runs.rates``)

Its learning rates (``runs.runner.rates_for``)
    ``TUNED_TARGETS``        ``{task: target sets}`` whose rates are chosen; ``DEFAULT_TARGET`` lends its rate
                             to the others; ``BASELINE_METHODS`` the settings without a target chosen first
    ``default_lr(spec)``, ``rate_grid(spec)``, ``rate_floor(session, task, table)``

Its cost (claims 1-3)
    ``memory_settings(quick)``, ``time_settings(quick)``  the ``CostSetting``s measured, the judged one first
    ``COST_LORA``            the LoRA those steps train, in words
    ``cost_step(setting, method, session)``  ``make()`` -> (model, trained parameters, loss_fn) of one step
    ``analytic_step_memory(setting, method, session)``, ``step_flops(setting, method, session)``  closed forms

Its updates (claim 6), its reference (claim 5), its facts
    ``width(session)``, ``projections(state)``, ``adapter_A/B(state, spec)``  the matrices of a state, by name
    ``pretrained_state(session)``  the frozen weights a full fine-tuning run's ΔW is taken from
    ``PAPER_TARGET``, ``ALL_TARGET``  the LoRA paper's setting (Wq, Wv), and every linear layer it can adapt
    ``reference_finetune(spec, session)``  the same run in PyTorch + transformers + PEFT
    ``facts(session)``       sizes the report's prose quotes (parameters, classes, ...)

The claims measured on the toy alone (7-12) also use what a GPT base adds (``gpt.GPTBase``):
``data(spec, session)``, ``timed_models(quick)``, ``serving_variants(model)`` and its methods
beside LoRA (``gpt_methods.py``). ``minilm.py`` adds ``probe(session)`` and ``count_rows``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class CostSetting:
    """One step the cost claims measure: a model of the base's family at a batch, and how the report names it."""

    model: str  # "wide", "base", ...: which model of the base's (``cost_step`` builds it)
    batch: int
    seq: int  # tokens per row
    repeats: int = 0  # timed steps (claim 3); 0 where nothing is timed
    label: str = ""  # its name in the report: "wide batch 1", "B=16, T=64"
    describe: dict = field(default_factory=dict, compare=False)  # the figures that name it in results.json
    facts: dict = field(default_factory=dict, compare=False)  # the model's sizes, for the report's prose


class Base(Protocol):
    name: str
    SHORT: str
    TITLE: str
    IN_TEXT: str
    TASKS: tuple
    TARGETS: dict
    TARGET_LABELS: dict
    PEFT_TARGET: str
    TUNED_TARGETS: dict
    DEFAULT_TARGET: str
    BASELINE_METHODS: tuple
    PAPER_TARGET: str
    ALL_TARGET: str

    def environment(self, session): ...
    def run_identity(self, session) -> dict: ...
    def grid(self, quick: bool): ...
    def check(self, spec) -> None: ...
    def label(self, spec) -> str: ...
    def fresh_model(self, spec, env): ...
    def finetune(self, spec, session): ...
    def untuned(self, session) -> dict: ...
    def baseline(self, session) -> dict: ...
    def default_lr(self, spec) -> float: ...
    def rate_grid(self, spec) -> tuple: ...
    def rate_floor(self, session, task: str, table: dict) -> float | None: ...
    def memory_settings(self, quick: bool) -> list: ...
    def time_settings(self, quick: bool) -> list: ...
    def cost_step(self, setting: CostSetting, method: str, session): ...
    def analytic_step_memory(self, setting: CostSetting, method: str, session) -> dict: ...
    def step_flops(self, setting: CostSetting, method: str, session) -> dict: ...
    def width(self, session) -> int: ...
    def pretrained_state(self, session) -> dict: ...
    def projections(self, state: dict) -> dict: ...
    def adapter_A(self, state: dict, spec) -> dict: ...
    def adapter_B(self, state: dict, spec) -> dict: ...
    def reference_finetune(self, spec, session) -> dict: ...
    def facts(self, session) -> dict: ...
