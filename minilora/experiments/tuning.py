"""Learning rates chosen on the validation split, and runs that failed.

The LoRA paper tuned the learning rate per setting (Hu et al., 2021, appendix D). Here,
for both base models:

* the **tuned settings** are full fine-tuning, and LoRA at r = 8 and r = 64 on each
  tuned target set (``TUNED_RANKS``);
* each is trained with one seed at every rate of a small grid; the rate whose run
  reaches the best *validation* figure is kept (the test split is never read to choose);
* every other setting takes the rate of the **nearest tuned one**: the same method and
  target set (else the default target set), the nearest rank on a log scale
  (r = 1, 2, 4, 16 take r = 8's rate; r = 32 takes r = 64's).

A run **fails** when its loss stops being finite (it *diverged*) or when it ends no
better than the **baseline** -- the untuned base model for the toy GPT, the linear
probe (head and pooler trained, encoder frozen) for a pretrained encoder: what such a
run measures is a training failure, not what the method can reach. A failed run is
reported by name and left out of every mean and spread, never averaged in silently.
"""

from __future__ import annotations

import math

import numpy as np

TUNED_RANKS = (8, 64)
OK, DIVERGED, BELOW = "ok", "diverged", "below baseline"


def nearest_rank(r: int, tuned=TUNED_RANKS) -> int:
    """The tuned rank nearest to ``r`` on a log scale (ties go to the smaller one)."""
    if r < 1:
        raise ValueError(f"nearest_rank: r must be >= 1, got {r}")
    return min(tuned, key=lambda t: (abs(math.log2(r) - math.log2(t)), t))


def nearest_setting_rate(rates: dict, spec, tuned_targets, default_target: str) -> float:
    """The rate of ``spec``'s setting in ``rates`` (``{"full": .., "probe": .., "<target> r=<r>": ..}``), or of the
    nearest tuned one: LoRA on an untuned target takes ``default_target``'s, an untuned rank the nearest tuned rank's."""
    if spec.method != "lora":
        return rates[spec.method]
    target = spec.target if spec.target in tuned_targets else default_target
    return rates[f"{target} r={nearest_rank(spec.r)}"]


def with_rates(specs, rates, rate_for) -> list:
    """``specs`` with each missing learning rate (``lr=None``) set to ``rate_for(rates(), spec)``;
    ``rates`` is only called (it may train the selection's runs) when a rate is missing."""
    import dataclasses

    if all(spec.lr is not None for spec in specs):
        return list(specs)
    chosen = rates()
    return [spec if spec.lr is not None else dataclasses.replace(spec, lr=rate_for(chosen, spec)) for spec in specs]


def run_status(final: dict, key: str, higher_is_better: bool, baseline: float | None) -> str:
    """``OK``, ``DIVERGED`` (the figure is not finite) or ``BELOW`` (no better than ``baseline``)."""
    value = final.get(key, float("nan"))
    if not np.isfinite(value):
        return DIVERGED
    if baseline is not None and (value <= baseline if higher_is_better else value >= baseline):
        return BELOW
    return OK


def choose_rate(candidates: dict, key: str, higher_is_better: bool, baseline: float | None = None) -> tuple:
    """(rate, table) from ``{rate: validation figures}``: the best rate among the runs that did
    not fail, and ``{rate: {key: value, "status": ...}}``. If every run failed, the best finite
    one is kept all the same (the setting is then reported as failed by its own runs); if none
    is finite, the smallest rate."""
    table = {rate: {key: figures.get(key, float("nan")), "status": run_status(figures, key, higher_is_better, baseline)}
             for rate, figures in candidates.items()}
    for allowed in ((OK,), (OK, BELOW)):
        usable = [rate for rate, row in table.items() if row["status"] in allowed]
        if usable:
            sign = 1 if higher_is_better else -1
            return max(usable, key=lambda rate: (sign * table[rate][key], -rate)), table
    return min(table), table


CACHE_READS = {"runs": 0, "training_seconds": 0.0}  # runs cached_run read back since verify() last reset it


def cached_run(spec, key: str, train):
    """``train()``'s RunResult for ``spec``, kept on disk when the environment variable
    ``MINILORA_RUN_CACHE`` names a folder: a run is deterministic given its spec and its base model
    and data (``key``, e.g. their sha256), so a report can be rendered again, or its claims run in
    separate commands, without training again. Without the variable: ``train()``.

    A run is one safetensors file, ``<sha256 of key and spec>.safetensors``: the trained weights as
    tensors, the figures as JSON in its metadata (``minilora_run``), written atomically. It is read
    as any file minilora did not write itself (``minilora.loading``, never pickle): a damaged or
    foreign file is an error of ``minilora.errors`` naming it -- delete it to train the run again."""
    import hashlib
    import os
    from pathlib import Path

    folder = os.environ.get("MINILORA_RUN_CACHE")
    if not folder:
        return train()
    path = Path(folder) / (hashlib.sha256(f"{key}|{spec!r}".encode()).hexdigest()[:32] + ".safetensors")
    if os.path.lexists(path):
        result = read_run(path, spec)
        CACHE_READS["runs"] += 1  # the report says how much of it was read back, not trained (verify.py)
        CACHE_READS["training_seconds"] += float(result.seconds)
        return result
    result = train()
    write_run(path, result)
    return result


_RUN_KEY = "minilora_run"  # the safetensors metadata key holding a cached run's figures (JSON)
_RUN_FIELDS = {"losses": "list", "final": "dict", "val": "dict", "trainable": "int", "seconds": "float"}


def _figure(value):
    """A figure for JSON: NaN (a diverged run's) as null, which strict JSON can hold."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_run(path, result) -> None:
    """``result`` (a RunResult) as one safetensors file, atomically (``cached_run``)."""
    import json
    from pathlib import Path

    from safetensors.numpy import save_file

    from minilora.io import atomic_write

    figures = {"spec": repr(result.spec), "losses": [_figure(v) for v in result.losses],
               "final": {k: _figure(v) for k, v in result.final.items()}, "val": {k: _figure(v) for k, v in result.val.items()},
               "trainable": int(result.trainable), "seconds": float(result.seconds)}
    tensors = {name: np.ascontiguousarray(array) for name, array in result.state.items()}
    meta = {"format": "pt", _RUN_KEY: json.dumps(figures, allow_nan=False)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_run(path, spec):
    """The RunResult ``write_run`` wrote for ``spec``, every part checked (``minilora.loading``)."""
    from minilora.errors import ConfigError
    from minilora.experiments.finetune import RunResult
    from minilora.loading import json_matches, load_checked, parse_json, read_header

    header = read_header(path)
    remedy = "; delete it to train the run again"
    if _RUN_KEY not in header.metadata:
        raise ConfigError(f"{path} is no run of minilora's run cache (no {_RUN_KEY} in its metadata){remedy}")
    figures = parse_json(header.metadata[_RUN_KEY].encode(), f"{path} ({_RUN_KEY})")
    if not isinstance(figures, dict) or figures.get("spec") != repr(spec):
        raise ConfigError(f"{path} holds another run than {spec!r}{remedy}")
    for field, annotation in _RUN_FIELDS.items():
        value = figures.get(field)
        entries = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
        if not json_matches(value, annotation) or not all(json_matches(v, "float | None") for v in entries):
            raise ConfigError(f"{path}: {_RUN_KEY}[{field!r}]={value!r} is not a {annotation} of numbers{remedy}")
    state = load_checked(path, {name: info.shape for name, info in header.tensors.items()}, header=header,
                         implied="the run cache", what="a cached run")

    def numbers(values):
        return [float("nan") if v is None else v for v in values]

    return RunResult(spec, numbers(figures["losses"]), dict(zip(figures["final"], numbers(figures["final"].values()))),
                     figures["trainable"], float(figures["seconds"]), state,
                     dict(zip(figures["val"], numbers(figures["val"].values()))))


def describe_failures(rows: dict) -> list:
    """Sentences naming each failed run of ``summarize``-style rows (``{setting: {"failed": {seed: why}}}``)."""
    out = []
    for name, row in rows.items():
        for seed, why in row.get("failed", {}).items():
            value = row.get("failed_values", {}).get(seed)
            figure = f" ({value:.3f})" if value is not None and np.isfinite(value) else ""
            out.append(f"{name} seed {seed}: {why}{figure}")
    return out
