"""Compare two results.json of ``minilora verify`` figure by figure, apart from timings and provenance.

    python tools/diff_results.py OLD/results.json NEW/results.json

Written for issue #20 ("nothing measured changes"): OLD may be a results.json of the layout before
the claim x base matrix (format version 1: one entry per claim, MiniLM's figures under
``figures["minilm"]``, verdict parts among the figures), NEW one of today's (version 2: per claim,
per base, ``figures`` and ``verdict``). Both are brought to one shape -- ``{claim: {base: {path:
value}}}`` -- and compared leaf by leaf:

* a figure measured by a clock (``TIMED``: step and forward times, their ratios, swap and load
  times) is left out, and so is a verdict decided on one (``TIMED_VERDICTS``: reported beside);
  so are provenance (``meta``, each claim's ``provenance``) and the old claims' ``settings`` (the
  sizes behind the figures, which the new layout keeps in ``figures["settings"]``);
* a figure the new layout moved is found where it went (``RENAMED``; a verdict or verdict part that
  was among the old figures is found in the new ``verdict``);
* a figure only the new results hold (added so that the report renders from results.json alone)
  is listed, not counted as a difference;
* bytes that ``tracemalloc`` measured (``TRACED``) include the Python objects allocated while tracing,
  which depend on what the process did before: two runs of the same old code, with other claims
  before the step, measured the same step at 236,889,726 and 236,897,844 bytes. They are compared
  within ``TRACED_BYTES`` (and the figures made from them within ``TRACED_FRACTION``), and listed.

Exit status 0 when every figure of OLD is in NEW with the same value (floats to 1e-12 relative,
which only JSON's printing could move), 1 otherwise.
"""

from __future__ import annotations

import json
import math
import sys

# Figures measured by a clock, by claim: a key of this name anywhere under the claim is a timing.
TIMED = {
    "time": {"ratios", "worst_ratio", "ratio", "full", "lora", "repeats", "clock", "blas_threads", "parts"},
    "inference": {"latency", "worst_merged_excess", "worst_merged_deviation", "worst_control_deviation", "unmerged_overhead",
                  "intervals", "settings_judged", "worst_setting", "worst_merged_excess_interval"},
    "depth_latency": {"latency", "overheads", "adapter_over_merged", "merged_excess", "lighter_adapter", "intervals",
                      "lighter_overhead", "lighter_overhead_interval", "merged_overhead", "merged_overhead_interval",
                      "merged_excess_interval"},
    "modularity": {"set_adapter_seconds", "load_adapter_seconds", "full_checkpoint_load_seconds", "swap_speedup", "seconds"},
    "quantization": {"train_seconds", "step_time"},
    "accuracy": {"train_seconds"},
    "expressiveness": {"seconds", "train_seconds"},
    "compatibility": {"train_seconds"},
}
# Figures tracemalloc measured (any key named so below these claims), and the figures derived from them.
TRACED = {"memory": {"measured", "ratio", "ratios", "wide_ratio", "max_error", "error"}, "quantization": {"traced"}}
TRACED_BYTES, TRACED_FRACTION = 16 * 1024, 2e-3
# Verdicts (or parts) decided on a timing: a difference there is the clock's, reported apart.
TIMED_VERDICTS = {("time", None), ("inference", "latency"), ("depth_latency", None), ("modularity", "swap")}
# Old path -> new path, per (claim, base): where the new layout keeps a figure under another name.
RENAMED = {
    ("memory", "toy"): {("wide_ratio",): ("ratio",)},
    ("accuracy", "toy"): {("base",): ("untuned",)},
    ("accuracy", "minilm"): {("gap",): ("cls_gap",), ("untrained",): ("untuned", "cls"), ("runs",): ("settings", "runs"),
                             ("learning_rates",): ("learning_rates", "cls"), ("lr_selection",): ("lr_selection", "cls")},
    ("rank", "minilm"): {("mean_share",): ("mean_share", "cls"), ("spectra",): ("spectra", "cls"),
                         ("rank_90_median",): ("rank_90_median", "cls"), ("runs", "full"): ("runs", "full cls")},
    ("rank", "toy"): {},
    ("reference", "minilm"): {("settings", "full"): ("settings", "cls: full"),
                              ("settings", "qv r=8"): ("settings", "cls: LoRA qv r=8"),
                              ("ratios", "full"): ("ratios", "cls: full"), ("ratios", "qv r=8"): ("ratios", "cls: LoRA qv r=8"),
                              ("parts", "full"): ("parts", "cls: full"), ("parts", "qv r=8"): ("parts", "cls: LoRA qv r=8")},
    ("time", "minilm"): {(k,): ("results", 0, k) for k in ("batch", "tokens", "flops", "flop_ratio")},
}
# Old keys that were a verdict (or its parts) among the figures, and the verdict's name for them now.
VERDICT_KEYS = {"parts": "parts", "verdict": "verdict", "fraction_verdict": ("parts", "under 1%"),
                "range_verdict": ("parts", "10x-10,000x"), "agreement": "agreement"}


def leaves(value, path=()):
    """``{path: value}`` of every number, text, boolean or null in a JSON value (empty containers kept as leaves)."""
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(leaves(v, path + (k,)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(leaves(v, path + (i,)))
        return out
    return {path: value}


def old_claims(results: dict) -> dict:
    """``{claim: {base: {"figures", "verdict"}}}`` of a version-1 results.json."""
    out = {}
    for key, claim in results["claims"].items():
        figures = dict(claim["figures"])
        if key == "compatibility":
            out[key] = old_compatibility(claim)
            continue
        minilm = figures.pop("minilm", None)
        toy_verdict = claim["bases"].get("toy", claim["verdict"]) if claim["bases"] else claim["verdict"]
        slots = {}
        if claim["bases"].keys() != {"minilm"}:
            slots["toy"] = {"figures": figures, "verdict": toy_verdict}
        if minilm is not None:
            slots["minilm"] = {"figures": minilm, "verdict": claim["bases"]["minilm"]}
        out[key] = slots
    return out


def old_compatibility(claim: dict) -> dict:
    """Claim 13's old figures (per architecture under "gpt" / "llama") in the new per-base shape."""
    f = claim["figures"]
    arch = {"gpt": "toy", "llama": "llama"}
    slots = {new: {"figures": {k: f[k][old] for k in ("summary", "untuned", "rates", "gaps") if old in f[k]}, "verdict": None}
             for old, new in arch.items()}
    for old, new in arch.items():
        slots[new]["figures"]["facts"] = {"val_loss": f["base_val_loss"][old]}
    if "minilm_gaps" in f:
        labels = {"default": "PEFT's default targets", "attention": "all attention"}
        slots["minilm"] = {"figures": {"gaps": {f"{labels[k.split(' r=')[0]]} r={k.split(' r=')[1]}": v
                                                for k, v in f["minilm_gaps"].items()}}, "verdict": None}
    slots["comparison"] = {"figures": {"differences": f["differences"], "clear": f["clear"]}, "verdict": claim["verdict"]}
    return slots


def new_claims(results: dict) -> dict:
    out = {}
    for key, claim in results["claims"].items():
        slots = {b: {"figures": s["figures"], "verdict": s["verdict"]} for b, s in claim["bases"].items()}
        if claim.get("comparison"):
            slots["comparison"] = {"figures": claim["comparison"], "verdict": claim["verdict"]}
        for slot in slots.values():  # a claim of one base: its verdict is the claim's
            if slot["verdict"] is None and len(claim["bases"]) == 1:
                slot["verdict"] = {"verdict": claim["verdict"]}
        out[key] = slots
    return out


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b or abs(a - b) <= 1e-12 * max(abs(a), abs(b))
    return a == b


def within_traced(a, b) -> bool:
    """Two tracemalloc figures that differ by no more than the Python objects of a process's history."""
    if isinstance(a, int) and isinstance(b, int):
        return abs(a - b) <= TRACED_BYTES
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= TRACED_FRACTION * max(1.0, abs(a))
    return False


def compare(old: dict, new: dict) -> tuple:
    """(lines, differences): one line per claim and base, then each difference."""
    lines, differences = [], 0
    for key in old:
        for base, o in old[key].items():
            n = new.get(key, {}).get(base)
            name = f"{key} [{base}]"
            if n is None:
                lines.append(f"{name}: MISSING in the new results")
                differences += 1
                continue
            timed = TIMED.get(key, set())
            renamed = RENAMED.get((key, base), {})
            new_leaves = leaves(n["figures"])
            verdict = n["verdict"] if isinstance(n["verdict"], dict) else {"verdict": n["verdict"]}
            checked = skipped = 0
            found = set()
            diffs, traced = [], []
            for path, value in leaves(o["figures"]).items():
                if key == "time" and base == "minilm" and path[0] in ("repeats", "blas_threads", "clock", "full", "lora", "ratio"):
                    skipped += 1
                    continue
                if any(isinstance(p, str) and p in timed for p in path):
                    skipped += 1
                    continue
                target = path
                for old_prefix, new_prefix in renamed.items():
                    if path[:len(old_prefix)] == old_prefix:
                        target = new_prefix + path[len(old_prefix):]
                if target not in new_leaves and path in leaves(n["figures"]):  # renamed where the new value is absent
                    target = path
                at = next((i for i, p in enumerate(path) if p in VERDICT_KEYS), None)
                if at is not None:  # a verdict among the old figures: now in the verdict
                    where = VERDICT_KEYS[path[at]]
                    where = (where,) if isinstance(where, str) else where
                    got = leaves(verdict).get(where + path[at + 1:], leaves(verdict).get(where))
                    is_timed = (key, None) in TIMED_VERDICTS or (key, path[-1] if len(path) > at + 1 else None) in TIMED_VERDICTS
                    if not same(value, got) and not is_timed:
                        diffs.append(f"    verdict {'.'.join(map(str, path))}: {value!r} -> {got!r}")
                    checked += 1
                    continue
                if target not in new_leaves and (target[-1],) in leaves(verdict):  # a figure the verdict now computes
                    got = leaves(verdict)[(target[-1],)]
                else:
                    got = new_leaves.get(target, "(absent)")
                found.add(target)
                checked += 1
                if same(value, got):
                    continue
                line = f"    {'.'.join(map(str, path))}: {value!r} -> {got!r}"
                if any(isinstance(p, str) and p in TRACED.get(key, ()) for p in path) and within_traced(value, got):
                    traced.append(line)
                else:
                    diffs.append(line)
            old_verdict = o["verdict"] if isinstance(o["verdict"], str) else None
            new_verdict = verdict.get("verdict")
            verdict_note = ""
            if old_verdict is not None and old_verdict != new_verdict:
                if (key, None) in TIMED_VERDICTS:
                    verdict_note = f"; verdict {old_verdict} -> {new_verdict} (decided on a timing)"
                else:
                    diffs.append(f"    verdict: {old_verdict} -> {new_verdict}")
            added = len(set(new_leaves) - found)
            status = "identical" if not diffs else f"{len(diffs)} DIFFERENT"
            status += f" ({len(traced)} tracemalloc figures within its process noise)" if traced else ""
            lines.append(f"{name}: {status} -- {checked} figures compared, {skipped} timings/settings left out, "
                         f"{added} figures only in the new results{verdict_note}")
            lines += diffs
            differences += len(diffs)
    for key in new:
        if key not in old:
            lines.append(f"{key}: only in the new results")
    return lines, differences


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    old, new = (json.load(open(path)) for path in argv)
    normal = {1: old_claims, 2: new_claims}
    old_n = normal[old.get("version", 1)](old)
    new_n = normal[new.get("version", 1)](new)
    lines, differences = compare(old_n, new_n)
    print(f"old: {argv[0]} ({old['meta'].get('command', old['meta'].get('commands'))})")
    print(f"new: {argv[1]} ({new['meta'].get('command', new['meta'].get('commands'))})")
    print("\n".join(lines))
    print(f"\n{differences} figure(s) differ" if differences else "\nevery figure of the old results is in the new ones, equal")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
