"""The measurements of ``minilora verify``: a matrix of claims by base models.

``core/``    what everything uses: the Session, verdicts, memory tracing, timing, provenance
``runs/``    fine-tuning runs on any base: one spec, the grid, learning rates, summaries, the run cache
``bases/``   one module per base model (the toy GPT, all-MiniLM-L6-v2, the LLaMA twin), one protocol
``claims/``  one module per claim of docs/claims.md: measure(base, session), verdict(figures), render(...)

Claims import core, runs and bases; bases import core, runs and models; no claim imports another,
and only ``minilora.verify`` imports the claims (``tests/test_imports.py``). docs/architecture.md
shows how to add a base and a claim. ``finetune``, ``intrinsic_rank``, ``modularity`` and
``quantization`` here are the old import paths, kept for the course notebooks.
"""
