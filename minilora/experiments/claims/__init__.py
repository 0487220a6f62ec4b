"""The claims ``minilora verify`` measures: one module per claim, named by its key (docs/claims.md).

A claim module defines

    KEY, NUMBER        its key (``--only``) and its number in docs/claims.md, which orders the report
    TITLE, CLAIM       its title; the claim, in our own words (never the article's)
    MEASURED           what it measures, one line (``render`` may say it more precisely)
    BASES              the bases it runs on; ``bases(session)`` may choose among them (default: those
                       of ``BASES`` chosen with ``--bases``, else the first)
    measure(base, session) -> figures    everything measured on one base, as plain JSON
    verdict(figures) -> {"verdict", "parts", "thresholds", ...}   read off the figures alone
    render(figures, verdict, plot, quick) -> {"figure", "body", "plots"[, "measured"]}
                       the headline figure, the section's Markdown and its plots (``plot(fig, name)``
                       saves a matplotlib figure into the report), from the figures alone
    compare(slots) -> figures          (optional) what the bases' figures say together; a "verdict"
                       in it is the claim's verdict
    render_comparison(claim) -> str    (optional) the section comparing the bases

Only ``minilora.verify`` imports the claims (it finds every module here); a claim imports the
core, the runs and the bases, never another claim (``tests/test_imports.py``).
"""
