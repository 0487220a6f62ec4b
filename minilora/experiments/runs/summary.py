"""Runs summarized over seeds, on any base: the mean and spread of each setting, failed runs -- decided
on the validation split (``rates.run_status``) -- named and left out, and the tables the report prints of them."""

from __future__ import annotations

import numpy as np

from minilora.experiments.runs import rates as tuning
from minilora.experiments.runs.spec import setting_name


def metric(task: str) -> tuple:
    """(figure name, higher is better) of a task's headline figure: accuracy for classification, loss for code."""
    return ("accuracy", True) if task == "cls" else ("loss", False)


def summarize(results, baseline: dict | None = None, name=setting_name) -> dict:
    """Mean and spread over seeds of each setting's final (test) figures, failed runs left out.

    Returns ``{task: {setting: {"loss_mean", "loss_std", "accuracy_mean", "accuracy_std", "n", "trainable",
    "failed", ...}}}`` with settings named by ``name(spec)`` (``setting_name``: ``"full"`` or ``"<target>
    r=<r>"``, plus `` alpha=..``/`` rslora`` when not the default). std is the sample standard deviation
    (ddof 1; 0 for one seed).

    The failure rule (``rates.run_status``) reads the **validation** split only, decided before the test
    figures are looked at: a run whose validation loss diverged, or whose validation figure on its task's
    ``metric`` is no better than ``baseline``'s (``{task: figures}`` with ``val_<metric>``: the untuned
    base model's, or the linear probe's), is listed in ``failed`` (``{seed: why}``) and left out of the
    mean and std (NaN if every run failed); ``n`` counts the runs kept, ``*_all`` holds every run's test
    value and ``*_all_mean`` their mean (every finite one), printed beside the kept runs' mean. Without
    ``baseline`` only divergence fails a run."""
    groups = {}
    for res in results:
        groups.setdefault((res.spec.task, name(res.spec)), []).append(res)
    out = {}
    for (task, setting), runs in groups.items():
        key, higher = metric(task)
        floor = None if baseline is None else baseline[task][f"val_{key}"]
        for r in runs:
            if not r.val:
                raise ValueError(f"summarize: the run {task} {setting} seed {r.spec.seed} has no validation figures, and "
                                 "the failure rule reads only those (score it on the validation split too)")
        status = [tuning.run_status(r.val, key, higher, floor) for r in runs]
        kept = [r for r, st in zip(runs, status) if st == tuning.OK]
        row = {"n": len(kept), "n_runs": len(runs), "trainable": runs[0].trainable, "seeds": [r.spec.seed for r in runs],
               "method": runs[0].spec.method, "size": runs[0].spec.r or None,
               "lr": sorted({r.spec.lr for r in runs if r.spec.lr is not None}),
               "failed": {r.spec.seed: st for r, st in zip(runs, status) if st != tuning.OK},
               "failed_values": {r.spec.seed: r.val.get(key, float("nan")) for r, st in zip(runs, status) if st != tuning.OK}}
        for k in ("loss", "accuracy"):
            values = np.array([r.final[k] for r in kept])
            every = np.array([r.final[k] for r in runs])
            row[f"{k}_mean"] = float(values.mean()) if len(values) else float("nan")
            row[f"{k}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            row[f"{k}_all"] = every.tolist()
            row[f"{k}_all_mean"] = float(every[np.isfinite(every)].mean()) if np.isfinite(every).any() else float("nan")
            row[f"val_{k}_mean"] = float(np.mean([r.val[k] for r in kept])) if kept and all(k in r.val for r in kept) else float("nan")
        out.setdefault(task, {})[setting] = row
    return out


def describe_failures(rows: dict) -> list:
    """Sentences naming each failed run of ``summarize``-style rows (``{setting: {"failed": {seed: why}}}``),
    with the validation figure that failed it."""
    out = []
    for name, row in rows.items():
        for seed, why in row.get("failed", {}).items():
            value = row.get("failed_values", {}).get(seed)
            figure = f" (validation {value:.3f})" if value is not None and np.isfinite(value) else ""
            out.append(f"{name} seed {seed}: {why}{figure}")
    return out


def fmt(row: dict, key: str) -> str:
    """"mean ± std"; with runs left out, the runs kept and the mean of all of them beside it:
    "0.41 ± 0.02 (2 of 3 seeds; seed 1 below baseline; all 3: 0.39)". A mean that rests on one run
    says so instead of a spread of zero: "0.718 (one run) (1 of 3 seeds; ...)"; none kept: "no run kept (...)"."""
    if row["n"] == 0:
        text = "no run kept"
    else:
        text = f"{row[f'{key}_mean']:.3f}" + (" (one run)" if row["n"] == 1 else f" ± {row[f'{key}_std']:.3f}")
    if row.get("failed"):
        text += f" ({row['n']} of {row['n_runs']} seeds; " + ", ".join(
            f"seed {seed} {why}" for seed, why in row["failed"].items()) + f"; all {row['n_runs']}: {row[f'{key}_all_mean']:.3f})"
    return text


def selection_table(table: dict, first: str = "task") -> list:
    """Markdown rows of the learning-rate selection (``{task: {setting: [chosen, rows]}}``):
    every candidate's validation figure and status, and "lr at the grid's edge" beside a chosen rate
    that is still the smallest or largest tried after extending the grid. ``first`` heads the first column."""
    lines = [f"| {first} | setting | rate: validation figure (status) | chosen |", "|---|---|---|---|"]
    for task, settings in table.items():
        for name, (rate, rows) in settings.items():
            key = next(k for k in next(iter(rows.values())) if k != "status")
            cells = "; ".join(f"{float(lr):g}: {row[key]:.3f}" + ("" if row["status"] == tuning.OK else f" ({row['status']})")
                              for lr, row in sorted(rows.items(), key=lambda item: float(item[0])))
            edge = " (lr at the grid's edge)" if tuning.at_edge(rate, rows) else ""
            lines.append(f"| {task} | {name} | {cells} | {rate:g}{edge} |")
    return lines


def rates_text(rates: dict) -> str:
    """The chosen rates of a task, e.g. "full 3e-4, Wq+Wv r=8 3e-3, ..."."""
    return ", ".join(f"{name} {rate:g}" for name, rate in rates.items())


def rates_at_edge(table: dict) -> list:
    """``"<task> <setting>"`` of each setting of a selection table whose chosen rate is still the
    smallest or largest rate tried (``rates.choose_rate_extended`` extended its grid as far as it may)."""
    return [f"{task} {name}" for task, settings in table.items() for name, (rate, rows) in settings.items()
            if tuning.at_edge(rate, rows)]


def edge_note(table: dict) -> list:
    """Markdown lines after a selection table: how a grid is extended, and the settings still at an edge."""
    edge = rates_at_edge(table)
    return ["", "A rate that wins at an edge of its grid is extended past, a step of the grid's log spacing at a time, "
            "at most twice (`runs.rates.choose_rate_extended`); "
            + (f"still at the grid's edge after that (lr at the grid's edge): {', '.join(edge)}." if edge
               else "every chosen rate is inside the rates tried.")]
