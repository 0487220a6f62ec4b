"""The runs of one verify, on any base: each trained once per session (and at most once per code
version on this machine, through the run cache), with learning rates chosen once on the validation split.

``train(session, base, specs)`` is how a claim gets its runs: a spec without a learning rate
takes the rate chosen for its setting (``rates_for``), a run another claim already asked for is
handed back, one in the run cache is read back, and only the rest are trained -- by the base
(``base.finetune``). Every run a claim reads is counted in its provenance (``session.used``).
"""

from __future__ import annotations

import dataclasses

from minilora.experiments.runs import rates as tuning
from minilora.experiments.runs.cache import RunCache, request, run_key, trained_provenance
from minilora.experiments.runs.spec import RunSpec, setting_name
from minilora.experiments.runs.summary import metric


def train(session, base, specs) -> list:
    """The RunResult of each spec on ``base``, rates resolved first (``resolved``)."""
    return trained(session, base, resolved(session, base, specs))


def trained(session, base, specs) -> list:
    """The RunResult of each spec as it is (every rate given), each trained once per session."""
    out = []
    for spec in specs:
        base.check(spec)
        result = session.once(("run", base.name, spec), lambda spec=spec: _train_or_read(session, base, spec))
        if session.claim is not None:
            session.used.setdefault(session.claim, {})[(base.name, spec)] = result.provenance
        out.append(result)
    return out


def _train_or_read(session, base, spec):
    env = base.environment(session)
    cache = session.once(("run cache",), RunCache.from_env)
    req = request(base.name, spec, {**env.provenance, **base.run_identity(session)})
    run_id = run_key(req)
    if cache is not None:
        result = cache.read(req, spec)
        if result is not None:
            result.provenance["run"] = run_id
            return result
    result = base.finetune(spec, session)
    result.provenance = trained_provenance(req, result.seconds)
    if cache is not None:
        cache.write(req, result)
    return result


def resolved(session, base, specs, tuned_targets=None, default_target=None) -> list:
    """``specs`` with each missing learning rate filled in from the rates chosen for ``base``
    (``rates_for``; the tuned target sets and the default one are the base's unless given)."""
    def rate_for(chosen, spec):
        if spec.method != "lora" and spec.method not in chosen[spec.task]:  # a method no rate is chosen for
            return base.default_lr(spec)
        tuned = base.TUNED_TARGETS[spec.task] if tuned_targets is None else tuned_targets
        default = base.DEFAULT_TARGET if default_target is None else default_target
        return tuning.nearest_setting_rate(chosen[spec.task], spec, tuned, default)

    tasks = sorted({s.task for s in specs})
    return tuning.with_rates(specs, lambda: {t: rates_for(session, base, t, tuned_targets)[0] for t in tasks}, rate_for)


def tuned_specs(session, base, task: str, tuned_targets=None) -> dict:
    """``{setting: RunSpec without a rate}`` of the settings whose rate is chosen on ``task``: the base's
    ``BASELINE_METHODS`` (full fine-tuning; MiniLM's probe first), and LoRA at each of ``tuning.TUNED_RANKS``
    on each tuned target set, at the grid's first seed."""
    grid = base.grid(session.quick)
    common = dict(seed=grid.seeds[0], **grid.common(task))
    targets = base.TUNED_TARGETS[task] if tuned_targets is None else tuned_targets
    specs = [RunSpec(task, method, **common) for method in base.BASELINE_METHODS]
    specs += [RunSpec(task, "lora", t, r, **common) for t in targets for r in tuning.TUNED_RANKS]
    return {setting_name(s): s for s in specs}


def rates_for(session, base, task: str, tuned_targets=None) -> tuple:
    """(``{setting: rate}``, the selection table ``{setting: [rate, {rate: row}]}``) of one task on ``base``,
    chosen once per session.

    Full mode: every tuned setting (``tuned_specs``) is trained at each rate of the base's grid
    (``base.rate_grid``) and scored on the validation split; ``tuning.choose_rate_extended`` keeps the
    best rate among the runs that beat the base's floor there (``base.rate_floor``: the untuned base's
    validation figure, or MiniLM's linear probe, chosen first), extending the grid past a winning edge
    at most twice. Quick mode: the base's default rates (``base.default_lr``), nothing trained, an
    empty table."""
    def choose():
        settings = tuned_specs(session, base, task, tuned_targets)
        rates = {name: base.default_lr(spec) for name, spec in settings.items()}
        table = {}
        if session.quick:
            return rates, table
        key, higher = metric(task)
        for name, spec in settings.items():
            floor = base.rate_floor(session, task, table)
            rates[name], rows = tuning.choose_rate_extended(
                base.rate_grid(spec), lambda lr, spec=spec: trained(session, base, [dataclasses.replace(spec, lr=lr)])[0].val,
                key, higher, floor)
            table[name] = [rates[name], rows]
        return rates, table

    targets = None if tuned_targets is None else tuple(tuned_targets)
    return session.once(("rates", base.name, task, targets), choose)
