"""Tiny bases for the experiments' tests: the toy base's code on a tiny GPT, small tasks, small grids.

``tiny_toy(...)`` is a copy of the toy base (``bases.toy.BASE``) with small grids; ``session_for``
makes a Session whose memo already holds the tiny environments and tasks, so that nothing loads
the shipped checkpoints; ``registered`` puts tiny bases under the names the claims ask for, and
``claim_entry`` measures a claim as verify does and renders its section as the report does.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager

import numpy as np

import minilora
from minilora.experiments import bases
from minilora.experiments.bases import gpt
from minilora.experiments.bases.toy import BASE as TOY
from minilora.experiments.core import Session
from minilora.experiments.runs import Grid, TaskGrid
from minilora.models import GPT, GPTConfig

TINY = GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def tiny_gpt(config=TINY, seed=0, dtype=None) -> GPT:
    minilora.manual_seed(seed)
    return GPT(config) if dtype is None else GPT(config, dtype=dtype)


def tiny_grids(steps: int = 2, batch: int = 4) -> dict:
    """Claim 4's grids at a few steps: quick as the real one (one seed), full with two seeds and three ranks."""
    quick = Grid(seeds=(0,), batch_size=batch, tasks=(
        ("cls", TaskGrid(steps, (("Wq+Wv", (1, 8, 64)),), extra=(("c_attn", 8),))),
        ("code", TaskGrid(steps, (("all", (8,)),), extra=(("c_attn", 8),)))))
    full = Grid(seeds=(0, 1), batch_size=batch, tasks=(
        ("cls", TaskGrid(steps, tuple((t, (1, 8, 64)) for t in ("Wq", "Wv", "Wq+Wv", "attn")), extra=(("c_attn", 8),))),
        ("code", TaskGrid(steps, tuple((t, (1, 8)) for t in ("Wq+Wv", "all")), extra=(("c_attn", 8),)))))
    return {True: quick, False: full}


def tiny_toy(base=TOY, steps: int = 2, **changes):
    """A copy of a GPT base (the toy by default) with tiny grids, two rates a grid, and 8 code windows."""
    tiny = copy.copy(base)
    tiny.grids = tiny_grids(steps)
    tiny.rate_grids = {task: {"full": (1e-4, 1e-3), "lora": (1e-3, 1e-2)} for task in ("cls", "code")}
    tiny.eval_windows = {True: 8, False: 8}
    tiny.TUNED_TARGETS = {"cls": (tiny.PAPER_TARGET,), "code": (tiny.PAPER_TARGET,)}  # the others take its rates
    for name, value in changes.items():
        setattr(tiny, name, value)
    return tiny


def session_for(quick: bool, cls_task, corpus, envs: dict | None = None, bases_chosen=("toy",)) -> Session:
    """A Session whose memo holds the tasks and the tiny environments (``{base name: Environment}``)."""
    session = Session(quick=quick, progress=False, bases=tuple(bases_chosen))
    session.memo[("docstring task", 128)] = cls_task
    session.memo[("code corpus",)] = corpus
    for name, env in (envs or {}).items():
        session.memo[("environment", name)] = env
    return session


def toy_env(cls_task, corpus, model=None) -> gpt.Environment:
    return gpt.Environment(model if model is not None else tiny_gpt(), cls_task, corpus, {"test": True, "base_model_val_loss": 5.0})


@contextmanager
def registered(*tiny_bases):
    """The given bases under their names for the duration (the real ones after)."""
    for base in tiny_bases:
        bases.register(base)
    try:
        yield
    finally:
        for base in tiny_bases:
            bases.unregister(base.name)


def claim_entry(key: str, session, folder) -> tuple:
    """(results.json entry, rendered section) of claim ``key``: measured as verify measures it, rendered from
    its JSON as the report renders it (plots into ``folder``)."""
    from minilora import verify
    from minilora.report import render_claim

    module = verify.claim_modules()[key]
    entry = json.loads(json.dumps(verify.measure_claim(module, session)))
    return entry, render_claim(key, entry, module, folder, f"results.json: claims.{key}")


def timed_setting(ratios: dict, noise: float = 0.01, rounds: int = 21, seed: int = 0) -> dict:
    """One setting as ``core.time_rounds`` returns it, made up: the base takes 1 s +- ``noise`` a round (a shared
    machine), each variant of ``ratios`` (``{name: ratio}``) that ratio of the same round's base, +- ``noise``."""
    rng = np.random.default_rng(seed)
    base = 1 + noise * rng.standard_normal(rounds)
    times = {"base": base, **{name: r * base * (1 + noise * rng.standard_normal(rounds)) for name, r in ratios.items()}}
    return {**{name: float(np.median(t)) for name, t in times.items()},
            **{f"{name}/base": float(np.median(times[name] / base)) for name in ratios},
            "repeats": rounds, "clock": "made up", "rounds": {name: t.tolist() for name, t in times.items()}}


def runs_missing_rows(right, wrong: int, seeds: int, seed_base: int) -> list:
    """Per-row accuracies of ``seeds`` synthetic runs on the same test rows: each right where ``right`` is, except
    ``wrong + seed`` of those rows (drawn with ``default_rng(seed_base + seed)``: each run its own)."""
    out = []
    for seed in range(seeds):
        rows = np.asarray(right).astype(float)
        rows[np.random.default_rng(seed_base + seed).choice(np.flatnonzero(right), wrong + seed, replace=False)] = 0.0
        out.append(rows.tolist())
    return out
