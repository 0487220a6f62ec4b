"""The checks behind the course's exercises (``notebooks/01_autograd.ipynb`` ... ``06_qlora.ipynb``).

Each exercise is a named function in an nbgrader *solution* cell; the autograded *test*
cell after it calls ``check``, which runs the student's function and compares its result
with one computed another way (by the library, by PyTorch, by finite differences):

    check("3.1 lora_forward", lambda: lora_forward(x, W, A, B, s), expected=h_library,
          expects="x Wᵀ + s · (x Aᵀ) Bᵀ, one row per input row, shape (4, 6)")

An exercise left unsolved still raises nbgrader's stub ``NotImplementedError``; ``check``
turns that, a wrong shape or wrong values into an ``ExerciseError`` whose message names
the exercise and says what was expected. How the student versions are made is in
docs/course.md (``make exercises``).
"""

from __future__ import annotations

import numpy


class ExerciseError(AssertionError):
    """An exercise that is not solved (yet): the message names it and says what it expects."""


def _as_array(value) -> numpy.ndarray:
    """A result as a NumPy float64 array: minilora Tensors, torch tensors, arrays and numbers."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    elif hasattr(value, "numpy"):  # a minilora Tensor (or anything with .numpy())
        value = value.numpy()
    return numpy.asarray(value, dtype=numpy.float64)


def run(exercise: str, compute, expects: str):
    """``compute()``, with an unsolved exercise (nbgrader's stub raises NotImplementedError)
    reported by name."""
    try:
        return compute()
    except NotImplementedError as err:
        raise ExerciseError(
            f"exercise {exercise} is not solved yet (its function still raises NotImplementedError); "
            f"expected: {expects}"
        ) from err


def check(exercise: str, compute, expected, expects: str, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Run ``compute()`` (the student's function on the test's inputs) and compare it with
    ``expected``: same shape, and ``|got - expected| <= atol + rtol |expected|`` everywhere.
    ``expects`` says in words what the result should be; it goes into every failure message."""
    got = run(exercise, compute, expects)
    try:
        got = _as_array(got)
    except (TypeError, ValueError) as err:
        raise ExerciseError(f"exercise {exercise}: expected {expects}; got a {type(got).__name__}, not numbers") from err
    want = _as_array(expected)
    if got.shape != want.shape:
        raise ExerciseError(f"exercise {exercise}: expected {expects}, shape {want.shape}; got shape {got.shape}")
    if not numpy.isfinite(got).all():
        raise ExerciseError(f"exercise {exercise}: expected {expects}; got NaN or infinite values")
    bad = numpy.abs(got - want) > atol + rtol * numpy.abs(want)
    if bad.any():
        worst = float(numpy.abs(got - want).max())
        raise ExerciseError(
            f"exercise {exercise}: expected {expects}; {int(bad.sum())} of {want.size} values are off "
            f"(largest difference {worst:.3g}, tolerance {atol:g} + {rtol:g}·|expected|)"
        )
    print(f"exercise {exercise}: passed")


def check_true(exercise: str, compute, expects: str) -> None:
    """Run ``compute()``, which returns True when the student's result has the property ``expects``."""
    if not run(exercise, compute, expects):
        raise ExerciseError(f"exercise {exercise}: expected {expects}; the result does not have that property")
    print(f"exercise {exercise}: passed")


__all__ = ["ExerciseError", "check", "check_true", "run"]
