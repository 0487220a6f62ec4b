"""The verify report, rendered from results.json alone: one table of claims and verdicts, then a
section per claim -- its prose and plots from each claim's ``render`` -- and where every figure came from.

``write_report(results, folder, claims)`` is all ``minilora verify`` and ``minilora report`` do to
write a report; ``load_results`` reads a results.json back, checking it field by field
(``ResultsError`` names the file and the field).
"""

from __future__ import annotations

import json
from pathlib import Path

from minilora.errors import LoadError

# The claims come from an article about LoRA that is not part of the repository; each is
# restated in our own words in its module's CLAIM and listed in docs/claims.md.
ARTICLE = "the source article on LoRA (restated, with each claim's key and thresholds, in minilora's docs/claims.md)"
FORMAT = "minilora verify results"
VERSION = 2  # 1: the results.json of the layout before claims x bases (one run() per claim)


class ResultsError(LoadError, ValueError):
    """A results.json that cannot be read or rendered: it names the file and the field."""


# ---------------------------------------------------------------------------
# reading results.json back
# ---------------------------------------------------------------------------

CLAIM_FIELDS = {"number": int, "title": str, "claim": str, "measured": str, "bases": dict, "verdict": str, "provenance": dict}
BASE_FIELDS = {"short": str, "title": str, "in_text": str, "figures": dict}
META_FIELDS = {"mode": str, "seed": int, "bases": list, "commands": list}


def load_results(path, claims: dict) -> dict:
    """results.json at ``path``, checked: its format and version, and every field the report reads
    (``claims``: ``{key: claim module}``, those this minilora knows)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: cannot read it: {err}") from None
    try:
        results = json.loads(text)
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}: not a complete JSON file ({err.msg} at line {err.lineno}, column {err.colno}): "
                           "cut short or edited by hand? Make it again with minilora verify") from None
    _check(path, "", results, {"format": str, "version": int, "meta": dict, "claims": dict})
    if results["format"] != FORMAT:
        raise ResultsError(f"{path}: format is {results['format']!r}, not {FORMAT!r}: not a results.json of minilora verify")
    if results["version"] != VERSION:
        raise ResultsError(f"{path}: version is {results['version']}, written by another version of minilora; this one reads "
                           f"version {VERSION}: make it again with this minilora's `minilora verify`")
    _check(path, "meta", results["meta"], META_FIELDS)
    for key, claim in results["claims"].items():
        where = f"claims.{key}"
        if key not in claims:
            raise ResultsError(f"{path}: {where}: no claim of this minilora is called {key!r} (claims: {', '.join(claims)})")
        _check(path, where, claim, CLAIM_FIELDS)
        for base, slot in claim["bases"].items():
            _check(path, f"{where}.bases.{base}", slot, BASE_FIELDS)
            if "verdict" not in slot:
                raise ResultsError(f"{path}: {where}.bases.{base}: the field 'verdict' is missing")
    return results


def _check(path, where: str, value, fields: dict) -> None:
    if not isinstance(value, dict):
        raise ResultsError(f"{path}: {where or 'the file'} is a {type(value).__name__}, not an object")
    for name, kind in fields.items():
        field = f"{where}.{name}" if where else name
        if name not in value:
            raise ResultsError(f"{path}: the field {field!r} is missing")
        if not isinstance(value[name], kind) or isinstance(value[name], bool) and kind is int:
            raise ResultsError(f"{path}: the field {field!r} is a {type(value[name]).__name__}, not a {kind.__name__}")


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def multi_base(claim: dict, module) -> bool:
    """A claim measured on several bases shows each base's verdict and headline (a claim of one base does not)."""
    return len(module.BASES) > 1 and all(slot["verdict"] is not None for slot in claim["bases"].values())


def verdict_cell(claim: dict, shown_per_base: bool) -> str:
    """The verdict, and each base's where the claim is measured on several."""
    if not shown_per_base:
        return f"**{claim['verdict']}**"
    return f"**{claim['verdict']}** (" + "; ".join(f"{slot['short']}: {slot['verdict']['verdict']}"
                                                   for slot in claim["bases"].values()) + ")"


def render_table(claims: dict, sections: dict | None = None) -> str:
    """The summary table, as markdown (also what the command prints); ``sections`` the rendered sections
    (without them, the headline figures are left out)."""
    lines = ["| # | claim | measured | figure | verdict |", "|---|---|---|---|---|"]
    for key, claim in claims.items():
        s = (sections or {}).get(key, {})
        verdict = s.get("verdict", "**" + claim["verdict"] + "**")
        lines.append(f"| {claim['number']} | {_cell(claim['title'])} | {_cell(s.get('measured', claim['measured']))} | "
                     f"{_cell(s.get('figure', ''))} | {verdict} |")
    return "\n".join(lines)


class Plots:
    """Where a claim's ``render`` saves its plots: ``plots(fig, name)`` writes a matplotlib figure into the
    report folder (names of a claim's other bases get the base's name in front) and returns the file name."""

    def __init__(self, folder: Path, prefix: str = ""):
        self.folder, self.prefix = folder, prefix

    def __call__(self, fig, name: str) -> str:
        import matplotlib.pyplot as plt

        name = self.prefix + name
        fig.savefig(self.folder / name, dpi=110, metadata={"Software": None})
        plt.close(fig)
        return name

    def file(self, name: str) -> Path:
        """Where a claim writes another file of the report (a sub-folder is made): ``name`` in the report folder."""
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def render_claim(key: str, claim: dict, module, folder: Path, where: str) -> dict:
    """One claim's section: ``{"figure", "measured", "verdict", "body", "plots", "thresholds"}``."""
    import matplotlib

    matplotlib.use("Agg")
    quick = claim["provenance"].get("mode") == "quick"
    if hasattr(module, "render_claim"):  # a claim told as one piece over its bases (claim 13)
        s = _rendering(where, lambda: module.render_claim(claim, Plots(folder), quick))
        return {**s, "verdict": verdict_cell(claim, False), "thresholds": (claim["comparison"] or {}).get("thresholds", {})}
    per_base = multi_base(claim, module)
    parts, thresholds = {}, {}
    for i, (name, slot) in enumerate(claim["bases"].items()):
        plots = Plots(folder, "" if name == module.BASES[0] else f"{name}_")
        parts[name] = _rendering(f"{where}.bases.{name}.figures",
                                 lambda: module.render(slot["figures"], slot["verdict"], plots, quick))
        prefix = f"{slot['short']}: " if per_base and i else ""
        thresholds.update({prefix + k: v for k, v in (slot["verdict"] or {}).get("thresholds", {}).items()})
    if not per_base:
        (only,) = parts.values()
        return {**only, "measured": only.get("measured", claim["measured"]), "verdict": verdict_cell(claim, False),
                "thresholds": thresholds}
    body = []
    for name, slot in claim["bases"].items():
        body += [f"### On {slot['title']}", "", f"**Verdict on {slot['in_text']}: {slot['verdict']['verdict']}.** "
                 f"{parts[name]['body'].strip()}", ""]
    compared = hasattr(module, "render_comparison") and len(claim["bases"]) > 1
    comparison = _rendering(where, lambda: module.render_comparison(claim)) if compared else ""
    if comparison:
        body += ["### The bases compared", "", comparison.strip()]
    return {"figure": " · ".join(f"{slot['short']}: {parts[name]['figure']}" for name, slot in claim["bases"].items()),
            "measured": claim["measured"], "verdict": verdict_cell(claim, True), "body": "\n".join(body).strip(),
            "plots": [p for part in parts.values() for p in part["plots"]], "thresholds": thresholds}


def _rendering(where: str, render) -> dict:
    """``render()``, a field it looks for and does not find reported as ``ResultsError`` naming where."""
    try:
        return render()
    except KeyError as err:
        raise ResultsError(f"{where}: the field {err.args[0]!r} is missing") from None
    except (TypeError, IndexError, ValueError, AttributeError) as err:
        raise ResultsError(f"{where}: a field is not what the report reads ({type(err).__name__}: {err})") from None


def _settings(claim: dict) -> list:
    lines = []
    for name, slot in claim["bases"].items():
        prefix = f"{slot['short']}: " if len(claim["bases"]) > 1 else ""
        lines += [f"{prefix}{k}: {json.dumps(v)}" for k, v in slot["figures"].get("settings", {}).items()]
    return lines


def provenance_line(p: dict) -> str:
    """Where a claim's figures came from, in one paragraph (results.json has all of it)."""
    commit = p.get("commit")
    code = f"commit {commit[:12]}" + ("" if p.get("clean") else " with uncommitted changes") if commit else "no git commit"
    runs = p.get("runs", {})
    cached = runs.get("from_cache", {})
    text = (f"**Provenance:** `{p['command']}` on {p['date']}, {code}, minilora source sha256 {p['code_sha256'][:12]}; "
            f"{p['wall_seconds']:.0f} s on {p['machine']['cpus']} CPUs (load {p['machine']['load_before']} before, "
            f"{p['machine']['load']} after)")
    if runs.get("trained") or cached:
        text += f"; fine-tuning runs: {len(runs.get('trained', []))} trained by this command"
        if cached:
            hashes = {c["code_sha256"] for c in cached.values()}
            text += (f", {len(cached)} read back from the run cache (trained by {len(hashes)} version"
                     f"{'s' if len(hashes) != 1 else ''} of the code; their recorded training time, not in the time above: "
                     f"{sum(c['wall_seconds'] or 0 for c in cached.values()) / 60:.1f} min)")
    return text + "."


def header(results: dict) -> list:
    claims = results["claims"].values()
    first = next(iter(claims), None)
    p = first["provenance"] if first else {}
    versions = ", ".join(f"{k} {v}" for k, v in p.get("versions", {}).items() if v)
    seconds = sum(c["provenance"]["wall_seconds"] for c in claims)
    commands = sorted({c["provenance"]["command"] for c in claims})
    commits = sorted({(c["provenance"].get("commit") or "none")[:12] + ("" if c["provenance"].get("clean") else "+changes")
                      for c in claims})
    cached = {run: c for claim in claims for run, c in claim["provenance"].get("runs", {}).get("from_cache", {}).items()}
    text = (f"Each claim of {ARTICLE}, measured in miniature. Mode: **{results['meta']['mode']}** "
            f"(`{'`, `'.join(commands)}`), seed {results['meta']['seed']}, {seconds / 60:.1f} min on "
            f"{p.get('machine', {}).get('cpus')} CPUs, arrays on the {p.get('machine', {}).get('device', 'CPU (NumPy)')}; "
            f"{versions}; code at {', '.join(commits)}. Every figure, setting and seed is in `results.json`; each verdict is "
            "computed from the figures against the thresholds stated in its section, and each section says where its "
            "figures came from.")
    if cached:
        hashes = {c["code_sha256"] for c in cached.values()}
        text += (f" {len(cached)} fine-tuning run{'s were' if len(cached) != 1 else ' was'} read back from a run cache "
                 f"(`MINILORA_RUN_CACHE`) rather than trained, under {len(hashes)} distinct code hash"
                 f"{'es' if len(hashes) != 1 else ''}; no time in the report comes from them.")
    return ["# minilora verify", "", text, ""]


def render_readme(results: dict, sections: dict) -> str:
    parts = [*header(results), render_table(results["claims"], sections), ""]
    for key, claim in results["claims"].items():
        s = sections[key]
        parts += [f"## {claim['number']}. {claim['title']}", "", f"> Claim ({key}, in our words): {claim['claim']}", "",
                  f"**Measured:** {s['measured']}  ", f"**Figure:** {s['figure']}  ", f"**Verdict:** {s['verdict'].replace('**', '')}"]
        if s["thresholds"]:
            parts.append("  \n**Thresholds:** " + ", ".join(f"{k} = {v}" for k, v in s["thresholds"].items()))
        parts.append("")
        if s["body"]:
            parts += [s["body"].strip(), ""]
        for plot in s["plots"]:
            parts += [f"![{claim['title']}]({plot})", ""]
        settings = _settings(claim)
        if settings:
            parts += ["<details><summary>settings</summary>", "", "```", *settings, "```", "", "</details>", ""]
        parts += [provenance_line(claim["provenance"]), ""]
    return "\n".join(parts)


def write_report(results: dict, folder, claims: dict, source: str = "results.json") -> dict:
    """README.md and every plot of ``results`` into ``folder`` (``claims``: ``{key: claim module}``); returns the sections."""
    folder = Path(folder)
    sections = {key: render_claim(key, claim, claims[key], folder, f"{source}: claims.{key}")
                for key, claim in results["claims"].items()}
    (folder / "README.md").write_text(render_readme(results, sections))
    return sections
