"""The verify report: one table of claims and verdicts, then a section per claim."""

from __future__ import annotations

# The claims come from an article about LoRA that is not part of the repository; each is
# restated in our own words in its module's CLAIM and listed in docs/claims.md.
ARTICLE = "the source article on LoRA (restated, with each claim's key and thresholds, in minilora's docs/claims.md)"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def verdict_cell(r) -> str:
    """The verdict, and each base model's where the claim was measured on both."""
    if not r.bases:
        return f"**{r.verdict}**"
    from minilora.experiments.common import BASE_SHORT

    return f"**{r.verdict}** (" + "; ".join(f"{BASE_SHORT[b]}: {v}" for b, v in r.bases.items()) + ")"


def render_table(results) -> str:
    """The summary table, as markdown (also what the command prints)."""
    lines = ["| # | claim | measured | figure | verdict |", "|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        lines.append(f"| {i} | {_cell(r.title)} | {_cell(r.measured)} | {_cell(r.figure)} | {verdict_cell(r)} |")
    return "\n".join(lines)


def _cache_sentence(cache: dict) -> str:
    """What the run read back from ``MINILORA_RUN_CACHE`` instead of training: its time is not the time above."""
    n = cache.get("runs", 0)
    if not n:
        return ""
    runs, their = ("run was", "its") if n == 1 else ("runs were", "their")
    return (f" {n} fine-tuning {runs} read back from a run cache (`MINILORA_RUN_CACHE`) rather than trained by this "
            f"command, so the time above leaves out {their} {cache['training_seconds'] / 60:.1f} min of training "
            "(as measured when trained).")


def render_readme(results, meta: dict) -> str:
    """README.md of the report folder."""
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items() if v)
    parts = [
        "# minilora verify",
        "",
        f"Each claim of {ARTICLE}, measured in miniature. Mode: **{meta.get('mode')}** "
        f"(`{meta.get('command')}`), seed {meta.get('seed')}, {meta.get('seconds', 0) / 60:.1f} min on "
        f"{meta.get('machine', {}).get('cpus')} CPUs, arrays on the {meta.get('machine', {}).get('device', 'CPU (NumPy)')}; "
        f"{versions}. Every figure, setting and seed is in "
        "`results.json`; each verdict is computed from the figures against the thresholds stated in its section."
        + _cache_sentence(meta.get("run_cache") or {}),
        "",
        render_table(results),
        "",
    ]
    for i, r in enumerate(results, 1):
        parts += [f"## {i}. {r.title}", "", f"> Claim ({r.key}, in our words): {r.claim}", "", f"**Measured:** {r.measured}  ",
                  f"**Figure:** {r.figure}  ", f"**Verdict:** {verdict_cell(r).replace('**', '')}"]
        if r.thresholds:
            parts.append("  \n**Thresholds:** " + ", ".join(f"{k} = {v}" for k, v in r.thresholds.items()))
        parts.append("")
        if r.body:
            parts += [r.body.strip(), ""]
        for plot in r.plots:
            parts += [f"![{r.title}]({plot})", ""]
        settings = {k: v for k, v in r.settings.items()}
        if settings:
            parts += ["<details><summary>settings</summary>", "", "```", *[f"{k}: {v}" for k, v in settings.items()],
                      "```", "", "</details>", ""]
    return "\n".join(parts)
