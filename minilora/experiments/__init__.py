"""One module per claim of the source article, each with ``run(ctx) -> ClaimResult``.

Experiment functions return figures; they never print or plot on their own
(``run`` saves the plots into the report folder), so notebooks and tests call
the same functions with their own sizes.
"""
