"""``minilora verify``: each claim of the source article, measured on each base model, with a verdict.

    minilora verify --quick --out verify-report     # minutes: the demo's sizes
    minilora verify --out verify-report             # about an hour: the full grids
    minilora verify --only rank --merge verify-report/results.json --out verify-report
                                                    # measure one claim again, keep the others
    minilora report verify-report/results.json --out report-copy
                                                    # the report again, from results.json alone

The claims are the modules of ``minilora/experiments/claims`` (this is the one module that imports
them), the base models those of ``minilora/experiments/bases``; docs/architecture.md draws the
matrix. For each claim and each of its bases, verify calls ``measure(base, session)`` -- plain
JSON figures -- then ``verdict(figures)``, and (if the claim has it) ``compare`` over the bases;
all of it, with each claim's provenance, goes to ``results.json``. The report (``README.md`` and
the plots) is then rendered from ``results.json`` as written, by the same code that
``minilora report`` runs, so the two are the same bytes.

The report is written into a folder beside ``--out`` and moved into place only when everything
has finished (``output_folder``), so an interrupted or failed run never leaves a report that
looks complete, and a bad results file writes nothing; ``--out`` must be new, empty or an
earlier report (``minilora.io.replacing_output_folder``), or it is refused, untouched.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from minilora import backend
from minilora.experiments import bases as base_registry
from minilora.experiments.core import ORDER, QUICK, Session, combine, provenance, verdict_range
from minilora.io import replacing_output_folder
from minilora.report import FORMAT, VERSION, ResultsError, load_results, render_table, write_report

DEFAULT_BASES = ("toy", "minilm")  # the bases chosen when --bases is not given
CLAIMS_PACKAGE = "minilora.experiments.claims"
_REGISTERED = {}


# ---------------------------------------------------------------------------
# the claims
# ---------------------------------------------------------------------------


def claim_modules() -> dict:
    """``{key: module}`` of every claim -- the modules of ``minilora.experiments.claims``, and those
    registered -- in the order of their numbers (docs/claims.md)."""
    package = importlib.import_module(CLAIMS_PACKAGE)
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{CLAIMS_PACKAGE}.{info.name}")
        found[module.KEY] = module
    found.update(_REGISTERED)
    return dict(sorted(found.items(), key=lambda item: item[1].NUMBER))


def register_claim(module) -> None:
    """Add a claim from elsewhere (a module or any object with a claim module's names): a test, a notebook."""
    _REGISTERED[module.KEY] = module


def unregister_claim(key: str) -> None:
    _REGISTERED.pop(key, None)


def claim_bases(module, session) -> tuple:
    """The bases a claim measures in this session: its own choice (``bases(session)``), else those of its
    ``BASES`` chosen with ``--bases``, else its first."""
    if hasattr(module, "bases"):
        return tuple(module.bases(session))
    return tuple(b for b in module.BASES if b in session.bases) or module.BASES[:1]


def measure_claim(module, session) -> dict:
    """One claim's entry of results.json: per base its figures and verdict; the comparison; provenance."""
    start, load = time.perf_counter(), provenance.machine()["load"]
    session.claim = module.KEY
    slots = {}
    for name in claim_bases(module, session):
        base = base_registry.get(name)
        figures = plain(module.measure(base, session))
        verdict = plain(module.verdict(figures)) if hasattr(module, "verdict") else None
        slots[name] = {"short": base.SHORT, "title": base.TITLE, "in_text": base.IN_TEXT, "figures": figures, "verdict": verdict}
    comparison = plain(module.compare(slots)) if hasattr(module, "compare") else None
    if comparison is not None and "verdict" in comparison:
        verdict = comparison["verdict"]
    else:
        verdict = combine(*(slot["verdict"]["verdict"] for slot in slots.values()))
    if session.quick and not getattr(module, "QUICK_DECIDES", False):
        verdict = quick_verdict(slots, comparison)
    return {"number": module.NUMBER, "title": module.TITLE, "claim": module.CLAIM, "measured": module.MEASURED,
            "bases": slots, "comparison": comparison, "verdict": verdict,
            "provenance": claim_provenance(session, module.KEY, time.perf_counter() - start, load, slots)}


def quick_verdict(slots: dict, comparison) -> str:
    """Quick mode's verdict of a claim it cannot resolve -- figures resting on fine-tuning runs too short and
    too few, or measured at other sizes than the full run's: "inconclusive (quick)", each base's and the
    comparison's too, what the figures read kept beside it as ``quick_reading``. Only claims that set ``QUICK_DECIDES`` (exact counts, the same in both modes) give
    a verdict in quick mode."""
    for slot in slots.values():
        v = slot["verdict"]
        if v is not None:  # the parts too: a section's text never says "does not hold" from a quick figure
            slot["verdict"] = {**v, "verdict": QUICK, "parts": {part: QUICK for part in v.get("parts", {})},
                               "quick_reading": {"verdict": v["verdict"], "parts": v.get("parts", {})}}
    if comparison is not None and "verdict" in comparison:
        comparison["quick_reading"], comparison["verdict"] = comparison["verdict"], QUICK
    return QUICK


def contradictions(results: dict, reference: dict) -> list:
    """Sentences naming each claim whose verdict in ``results`` cannot be the one ``reference`` (another
    run's results.json) gives: their ranges of verdicts (``core.verdict_range``) do not overlap. An
    inconclusive verdict contradicts nothing it lies across; a claim missing from either is not compared."""
    out = []
    for key, claim in results["claims"].items():
        if key not in reference:
            continue
        ours, theirs = verdict_range(claim["verdict"]), verdict_range(reference[key])
        order = ORDER.index
        if order(ours[1]) < order(theirs[0]) or order(theirs[1]) < order(ours[0]):
            out.append(f"claim {claim['number']} ({key}): {claim['verdict']!r} here, {reference[key]!r} in the reference")
    return out


def reference_verdicts(path) -> dict:
    """``{claim key: verdict}`` of a results.json to check against: this version's, or one of the layout before
    claims x bases (version 1, whose claims also carry one verdict each) -- only the verdicts are read."""
    try:
        results = json.loads(Path(path).read_text())
        claims = results["claims"]
        verdicts = {key: claim["verdict"] for key, claim in claims.items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ResultsError(f"{path}: not a results.json of minilora verify with a verdict per claim ({err!r})") from None
    bad = {key: v for key, v in verdicts.items() if not isinstance(v, str)}
    if bad:
        raise ResultsError(f"{path}: claims {sorted(bad)} have no verdict text")
    for key, v in verdicts.items():
        try:
            verdict_range(v)
        except ValueError:
            raise ResultsError(f"{path}: claims.{key}.verdict is {v!r}, not a verdict") from None
    return verdicts


def claim_provenance(session, key: str, seconds: float, load_before, bases=()) -> dict:
    """Where a claim's figures came from: the command, the code, the versions, the machine and its load,
    the wall time, the data and weights measured, and each fine-tuning run it read -- trained by this
    command, or read back from the run cache (with the code that trained it, and its recorded time)."""
    runs = session.used.get(key, {})
    trained = sorted({p["run"] for p in runs.values() if p.get("origin") == "trained"})
    cached = {p["run"]: {"code_sha256": p.get("code_sha256"), "date": p.get("date"), "wall_seconds": p.get("wall_seconds")}
              for p in runs.values() if p.get("origin") == "run cache"}
    data = {name: session.memo[("environment", name)].provenance for name in bases if ("environment", name) in session.memo}
    machine = provenance.machine()
    return {"command": session.command, "mode": "quick" if session.quick else "full", "seed": session.seed,
            "date": provenance.now_utc(), **provenance.git_state(), "code_sha256": provenance.code_sha256(),
            "versions": provenance.versions(),
            "machine": {**machine, "load_before": load_before, "backend": backend.get_backend(), "device": backend.device_name()},
            "wall_seconds": round(seconds, 1), "data": data,
            "runs": {"trained": trained, "from_cache": dict(sorted(cached.items()))},
            "run_cache": os.environ.get("MINILORA_RUN_CACHE") or None}


def plain(value):
    """``value`` as results.json will hold it (NumPy scalars and arrays made plain, tuples lists, keys
    text): measure's figures are judged and rendered in exactly the form a re-rendered report reads."""
    return json.loads(json.dumps(value, default=_jsonable))


def _jsonable(value):
    if backend.is_device_array(value):  # a claim must bring its figures to the host where it measures them
        raise TypeError(f"a device array {value.shape} reached the report: move it to the host (backend.to_numpy) "
                        "in the claim that measured it")
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"a figure of type {type(value).__name__} cannot go into results.json: measure returns plain "
                    "numbers, text, lists and dicts")


# ---------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------

REPORT = "verify report"  # the kind of output folder verify and report write


def output_folder(out):
    """The one place verify and report choose where they write: a new folder beside ``out``, moved into
    ``out``'s place only when the block ends without an error (``minilora.io.replacing_output_folder``).
    ``out`` must be new, empty or an earlier report; anything else is refused, untouched."""
    return replacing_output_folder(out, REPORT)


def command_line(quick: bool, only, bases, merge) -> str:
    return " ".join(["minilora", "verify"] + (["--quick"] if quick else []) + ([f"--only {','.join(only)}"] if only else [])
                    + ([f"--bases {','.join(bases)}"] if tuple(bases) != DEFAULT_BASES else [])
                    + ([f"--merge {merge}"] if merge else []))


def verify(out, quick: bool = False, seed: int = 0, only=None, progress: bool = True, log=print, bases=DEFAULT_BASES,
           merge=None) -> dict:
    """Measure the claims (``only``: their keys; all by default) on the chosen ``bases`` and write the
    report to ``out`` (README.md, plots, results.json); returns the results. With ``merge`` (a
    results.json of the same mode and seed) the claims measured replace those in it, the others are
    kept as they were, each with its own provenance."""
    modules = claim_modules()
    unknown = sorted(set(only or []) - set(modules))
    if unknown:
        raise ValueError(f"unknown claims {unknown}; claims: {', '.join(modules)}")
    known = base_registry.all_bases()
    bases = tuple(bases)
    if not bases or set(bases) - set(known):
        raise ValueError(f"unknown bases {sorted(set(bases) - set(known)) or '(none given)'}; bases: {', '.join(sorted(known))}")
    mode = "quick" if quick else "full"
    results = {"format": FORMAT, "version": VERSION, "meta": {"mode": mode, "seed": seed}, "claims": {}}
    if merge is not None:
        results = load_results(merge, modules)
        if (results["meta"]["mode"], results["meta"]["seed"]) != (mode, seed):
            raise ValueError(f"--merge {merge}: it was measured in {results['meta']['mode']} mode with seed "
                             f"{results['meta']['seed']}, this run is {mode} with seed {seed}: merge like with like")
    selected = {k: m for k, m in modules.items() if only is None or k in only}
    session = Session(quick=quick, seed=seed, progress=progress, bases=bases)
    session.command = command_line(quick, only, bases, merge)
    for i, (key, module) in enumerate(selected.items(), 1):
        log(f"[{i}/{len(selected)}] {key} ...")
        results["claims"][key] = measure_claim(module, session)
        claim = results["claims"][key]
        log(f"[{i}/{len(selected)}] {key}: -> {claim['verdict']} ({claim['provenance']['wall_seconds']:.0f} s)")
    results["claims"] = dict(sorted(results["claims"].items(), key=lambda item: item[1]["number"]))
    results["meta"]["bases"] = sorted({b for c in results["claims"].values() for b in c["bases"]})
    results["meta"]["commands"] = results["meta"].get("commands", []) + [session.command]
    text = json.dumps(results, indent=1)
    written = json.loads(text)
    with output_folder(out) as tmp:
        (tmp / "results.json").write_text(text)
        sections = write_report(written, tmp, modules)
    log("")
    log(render_table(written["claims"], sections))
    log(f"\nreport: {Path(out).resolve() / 'README.md'}")
    return results


def report(results_paths, out) -> None:
    """``minilora report``: the report of a results.json written to ``out``, from the file alone (nothing
    is measured): the same README.md and plots as verify wrote. Several results files -- sections of one
    report measured by separate ``verify --only`` commands, e.g. side by side on two cores (``make report``)
    -- are joined into one: they must share the mode and seed and name each claim once. A results file
    from another version, cut short or missing a field is an error naming the file and the field, and
    nothing is written."""
    paths = [results_paths] if isinstance(results_paths, (str, Path)) else list(results_paths)
    modules = claim_modules()
    sections = [load_results(path, modules) for path in paths]
    results = sections[0] if len(sections) == 1 else joined(paths, sections)
    with output_folder(out) as tmp:
        if len(paths) == 1:  # the file itself, byte for byte
            shutil.copyfile(paths[0], tmp / "results.json")
        else:
            (tmp / "results.json").write_text(json.dumps(results, indent=1))
        write_report(results, tmp, modules, source=str(paths[0]) if len(paths) == 1 else "results.json")


def joined(paths: list, sections: list) -> dict:
    """One results dict from several sections' (loaded from ``paths``): their claims, in claim order, each
    with its own provenance; the commands that measured them, in the order given."""
    first = sections[0]["meta"]
    claims, seen = {}, {}
    for path, section in zip(paths, sections):
        if (section["meta"]["mode"], section["meta"]["seed"]) != (first["mode"], first["seed"]):
            raise ValueError(f"{path}: measured in {section['meta']['mode']} mode with seed {section['meta']['seed']}, "
                             f"{paths[0]} in {first['mode']} mode with seed {first['seed']}: join like with like")
        for key, claim in section["claims"].items():
            if key in seen:
                raise ValueError(f"{path}: claim {key!r} is also in {seen[key]}: each claim must come from one file")
            seen[key], claims[key] = path, claim
    claims = dict(sorted(claims.items(), key=lambda item: item[1]["number"]))
    meta = {**first, "bases": sorted({b for c in claims.values() for b in c["bases"]}),
            "commands": [c for section in sections for c in section["meta"]["commands"]]}
    return {**sections[0], "meta": meta, "claims": claims}


def names(text: str | None) -> list | None:
    """A comma-separated command-line list (``--only params,rank``), blanks dropped; None stays None."""
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def main_verify(args) -> int:
    try:
        only = names(args.only)
        if only == []:
            raise ValueError(f"--only {args.only!r} names no claim; claims: {', '.join(claim_modules())}")
        reference = None if args.against is None else reference_verdicts(args.against)  # refused before measuring
        results = verify(args.out, quick=args.quick, seed=args.seed, only=only, progress=not args.no_progress,
                         bases=names(args.bases), merge=args.merge)
    except (OSError, ValueError, ResultsError) as err:
        print(f"minilora verify: {err}", file=sys.stderr)
        return 1
    if reference is not None:
        found = contradictions(results, reference)
        for line in found:
            print(f"minilora verify: contradicts {args.against}: {line}", file=sys.stderr)
        if found:
            return 2
        print(f"no verdict contradicts {args.against} ({len(set(results['claims']) & set(reference))} claims compared)")
    return 0


def main_report(args) -> int:
    try:
        report(args.results, args.out)
    except (OSError, ValueError, ResultsError) as err:
        print(f"minilora report: {err}", file=sys.stderr)
        return 1
    return 0
