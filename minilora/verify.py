"""``minilora verify``: each claim of the source article, measured, with a verdict.

    minilora verify --quick --out verify-report     # minutes: the demo's sizes
    minilora verify --out verify-report             # about an hour: the full grids

Each claim is a module in ``minilora/experiments`` with ``run(ctx) -> ClaimResult``.
The report is written into a temporary folder beside ``--out`` and renamed into
place only when every claim has finished, so an interrupted or failed run never
leaves a report that looks complete; ``--out`` must be new, empty or an earlier
report (``minilora.io.replacing_output_folder``), or it is refused, untouched.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import minilora
from minilora import backend
from minilora.experiments import tuning
from minilora.experiments.common import Context
from minilora.io import replacing_output_folder
from minilora.report import render_readme, render_table

# The claims, in the article's order: (key, module).
CLAIMS = [
    ("params", "minilora.experiments.params"),
    ("memory", "minilora.experiments.memory"),
    ("time", "minilora.experiments.speed"),
    ("accuracy", "minilora.experiments.finetune"),
    ("reference", "minilora.experiments.reference"),
    ("rank", "minilora.experiments.intrinsic_rank"),
    ("inference", "minilora.experiments.inference"),
    ("modularity", "minilora.experiments.modularity"),
    ("sensitivity", "minilora.experiments.sensitivity"),
    ("depth_latency", "minilora.experiments.methods_latency"),
    ("expressiveness", "minilora.experiments.methods_accuracy"),
    ("quantization", "minilora.experiments.quantization"),
    ("compatibility", "minilora.experiments.compatibility"),  # a limitation the article names; GPT-2 vs LLaMA
]


def environment() -> dict:
    """Library versions and the machine, for results.json."""
    versions = {"minilora": minilora.__version__, "numpy": np.__version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "peft"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            versions[name] = None
    return {"versions": versions, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                              "backend": minilora.get_backend(), "device": backend.device_name()}}


def run_claims(ctx: Context, keys=None, log=print) -> list:
    """Run the selected claims (all by default) in order; returns their ClaimResults."""
    selected = [(k, m) for k, m in CLAIMS if keys is None or k in keys]
    results = []
    for i, (key, module_name) in enumerate(selected, 1):
        log(f"[{i}/{len(selected)}] {key} ...")
        start = time.perf_counter()
        result = importlib.import_module(module_name).run(ctx)
        result.settings.setdefault("seconds", round(time.perf_counter() - start, 1))
        log(f"[{i}/{len(selected)}] {key}: {result.figure} -> {result.verdict} ({result.settings['seconds']:.0f} s)")
        results.append(result)
    return results


BASES = ("toy", "minilm")
REPORT = "verify report"  # the kind of output folder verify writes (minilora.io.OUTPUT_MARKER)


def verify(out, quick: bool = False, seed: int = 0, only=None, progress: bool = True, log=print, bases=BASES) -> list:
    """Run the claims and write the report to ``out`` (README.md, plots, results.json). ``bases``: the base
    models that the claims measured on both use (the toy GPT, all-MiniLM-L6-v2); the other claims use the toy."""
    unknown = sorted(set(only or []) - {k for k, _ in CLAIMS})
    if unknown:
        raise ValueError(f"unknown claims {unknown}; claims: {', '.join(k for k, _ in CLAIMS)}")
    bases = tuple(bases)
    if not bases or set(bases) - set(BASES):
        raise ValueError(f"unknown bases {sorted(set(bases) - set(BASES)) or '(none given)'}; bases: {', '.join(BASES)}")
    with replacing_output_folder(out, REPORT) as tmp:
        start = time.perf_counter()
        ctx = Context(out=str(tmp), quick=quick, seed=seed, progress=progress, bases=bases)
        tuning.CACHE_READS.update(runs=0, training_seconds=0.0)
        results = run_claims(ctx, only, log)
        meta = {
            "mode": "quick" if quick else "full",
            "seed": seed,
            "seconds": round(time.perf_counter() - start, 1),
            "command": " ".join(["minilora", "verify"] + (["--quick"] if quick else []) + ([f"--only {','.join(only)}"] if only else [])
                                + ([f"--bases {','.join(bases)}"] if bases != BASES else [])),
            "bases": list(bases),
            "run_cache": {"folder": os.environ.get("MINILORA_RUN_CACHE") or None, **tuning.CACHE_READS},
            **environment(),
            **ctx.shared.get("provenance", {}),
        }
        (tmp / "results.json").write_text(json.dumps(
            {"meta": meta, "claims": {r.key: _claim_json(r) for r in results}}, indent=1, default=_jsonable))
        (tmp / "README.md").write_text(render_readme(results, meta))
    out = Path(out).absolute()
    log("")
    log(render_table(results))
    log(f"\nreport: {out / 'README.md'}")
    return results


def _claim_json(r) -> dict:
    return {"title": r.title, "claim": r.claim, "measured": r.measured, "figure": r.figure, "verdict": r.verdict,
            "thresholds": r.thresholds, "figures": r.figures, "settings": r.settings, "plots": r.plots, "bases": r.bases}


def _jsonable(value):
    if backend.is_device_array(value):  # a claim must bring its figures to the host where it measures them
        raise TypeError(f"a device array {value.shape} reached the report: move it to the host (backend.to_numpy) "
                        "in the claim that measured it")
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def names(text: str | None) -> list | None:
    """A comma-separated command-line list (``--only params,rank``), blanks dropped; None stays None."""
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def main_verify(args) -> int:
    try:
        only = names(args.only)
        if only == []:
            raise ValueError(f"--only {args.only!r} names no claim; claims: {', '.join(k for k, _ in CLAIMS)}")
        verify(args.out, quick=args.quick, seed=args.seed, only=only, progress=not args.no_progress,
               bases=names(args.bases))
    except (OSError, ValueError) as err:
        print(f"minilora verify: {err}", file=sys.stderr)
        return 1
    return 0
