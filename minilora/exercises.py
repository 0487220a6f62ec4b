"""The checks behind the course's exercises (``notebooks/01_autograd.ipynb`` ... ``10_capstone.ipynb``).

Each exercise is a named function in an nbgrader *solution* cell; the autograded *test*
cell after it runs the student's function through these checks, which compare the result
with one known another way (a small case worked by hand, the library, PyTorch) and, when
it is wrong, say so in the exercise's own words:

    check("3.1 lora_forward", lambda: lora_forward(x, W, A, B, alpha, r), expected,
          expects="x Wᵀ + (α/r)(x Aᵀ)Bᵀ, a Tensor of shape (N, out)")

The first word of the label is the exercise's number, the second the function the student
writes. Whatever goes wrong inside the student's code -- nbgrader's stub
(``NotImplementedError``), an exception of the engine or of NumPy, a function that was never
defined (its cell had a syntax error), a cell stopped at the grader's time limit -- becomes an
``ExerciseError`` (an ``AssertionError``: nbgrader counts it as a failed test) whose message
names the exercise and says what was expected. A known mistake can be named outright:
``mistakes={"what went wrong": the result that mistake gives}``.

The hidden tests (docs/course.md) also use ``forbid``: while the student's code runs, a
library function the exercise re-implements is swapped for one that raises
"exercise N.M must not call X"; and ``stand_in``: where the student's function calls the
function of an earlier exercise, the reference takes its place while it runs, so that each
exercise is graded on its own.
"""

from __future__ import annotations

import sys

import numpy


class ExerciseError(AssertionError):
    """An exercise that is not solved (yet): the message names it and says what it expects."""


def _function(exercise: str) -> str:
    """The function an exercise's label names: "3.1 lora_forward (differentiable)" -> "lora_forward"."""
    words = exercise.split()
    return words[1] if len(words) > 1 else "your function"


def fail(exercise: str, problem: str):
    """Raise the ExerciseError of ``exercise`` with ``problem`` in words."""
    raise ExerciseError(f"exercise {exercise}: {problem}")


def _as_array(value) -> numpy.ndarray:
    """A result as a NumPy float64 array: minilora Tensors, torch tensors, arrays and numbers."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    elif hasattr(value, "numpy"):  # a minilora Tensor (or anything with .numpy())
        value = value.numpy()
    return numpy.asarray(value, dtype=numpy.float64)


def result_of(exercise: str, compute, expects: str, parts: tuple = ()):
    """``compute()`` (the student's function on the test's inputs), with everything that can go
    wrong inside it reported as an ExerciseError in the exercise's words. ``parts`` names the items
    of a tuple the function must return, e.g. ``("y", "P")``."""
    name = _function(exercise)
    try:
        result = compute()
    except ExerciseError:
        raise
    except NotImplementedError as err:  # nbgrader's stub
        raise ExerciseError(f"exercise {exercise} is not solved yet (its function still raises "
                            f"NotImplementedError); expected: {expects}") from err
    except NameError as err:
        raise ExerciseError(f"exercise {exercise}: {err} -- did the cell that defines {name} run? (a syntax "
                            f"error in it, or an error above it, leaves it undefined); expected: {expects}") from err
    except KeyboardInterrupt as err:  # what the grader's per-cell time limit sends
        raise ExerciseError(f"exercise {exercise} was interrupted before it finished (grading stops a cell that "
                            f"runs past its time limit: an endless loop?); expected: {expects}") from err
    except Exception as err:  # the engine's or NumPy's own words, then the exercise's
        raise ExerciseError(f"exercise {exercise}: {name} raised {type(err).__name__}: {err}; "
                            f"expected: {expects}") from err
    if parts and not (isinstance(result, (tuple, list)) and len(result) == len(parts)):
        got = f"a {type(result).__name__}" + (f" of {len(result)} items" if isinstance(result, (tuple, list)) else "")
        fail(exercise, f"return a tuple ({', '.join(parts)}); got {got}")
    return result


def _shape_problem(got: numpy.ndarray, want: numpy.ndarray, expects: str) -> str:
    # the expected shape once: in the words of the exercise if they give it, else here
    problem = f"got shape {got.shape}" + ("" if str(want.shape) in expects else f" instead of {want.shape}")
    if got.size == want.size and got.squeeze().shape == want.squeeze().shape:
        problem += " (the same number of values: an axis of size 1 added or dropped? keepdims?)"
    elif got.shape == want.shape[::-1]:
        problem += " (transposed?)"
    return problem


def check(exercise: str, compute, expected, expects: str, atol: float = 1e-6, rtol: float = 1e-5,
          mistakes: dict | None = None) -> None:
    """Run ``compute()`` and compare its result with ``expected``: same shape, and
    ``|got - expected| <= atol + rtol |expected|`` everywhere. ``expects`` says in words what the
    result should be; it goes into every failure message. ``mistakes`` maps the words for a known
    mistake to the result it gives: a result that matches one is reported by those words."""
    got = result_of(exercise, compute, expects)
    try:
        got = _as_array(got)
    except (TypeError, ValueError) as err:
        raise ExerciseError(f"exercise {exercise}: expected {expects}; got a {type(got).__name__}, not numbers") from err
    want = _as_array(expected)
    for words, wrong in (mistakes or {}).items():
        wrong = _as_array(wrong)
        right = wrong.shape == want.shape and numpy.allclose(wrong, want, rtol=rtol, atol=atol)
        if got.shape == wrong.shape and numpy.allclose(got, wrong, rtol=rtol, atol=atol) and not right:
            fail(exercise, f"{words}; expected {expects}")
    if got.shape != want.shape:
        fail(exercise, f"expected {expects}; {_shape_problem(got, want, expects)}")
    if not numpy.isfinite(got).all():
        fail(exercise, f"expected {expects}; got NaN or infinite values")
    bad = numpy.abs(got - want) > atol + rtol * numpy.abs(want)
    if bad.any():
        worst = float(numpy.abs(got - want).max())
        fail(exercise, f"expected {expects}; {int(bad.sum())} of {want.size} values are off "
                       f"(largest difference {worst:.3g}, tolerance {atol:g} + {rtol:g}·|expected|)")
    print(f"exercise {exercise}: passed")


def check_true(exercise: str, compute, expects: str) -> None:
    """Run ``compute()``, which returns True when the student's result has the property ``expects``."""
    if not result_of(exercise, compute, expects):
        fail(exercise, f"expected {expects}; the result does not have that property")
    print(f"exercise {exercise}: passed")


def check_op(exercise: str, op, inputs: tuple, value, upstream, grads: tuple, expects: str,
             atol: float = 1e-6, rtol: float = 1e-5, mistakes: dict | None = None) -> None:
    """An op written with ``Tensor._make``: ``op(*inputs)`` must be a Tensor equal to ``value``,
    linked to the inputs as its parents, whose backward closure maps the gradient ``upstream``
    to ``grads``, one gradient per input, as a tuple. ``mistakes``: words -> the gradients
    (a tuple, one per input) that a known mistake gives."""
    from minilora.tensor import Tensor

    out = result_of(exercise, lambda: op(*inputs), expects)
    if not isinstance(out, Tensor):
        fail(exercise, f"return a Tensor made with Tensor._make(data, parents, backward); got a {type(out).__name__}")
    check(f"{exercise} (forward)", lambda: out.data, value, expects=expects, atol=atol, rtol=rtol)
    parents = getattr(out, "_parents", ())
    if not (isinstance(parents, tuple) and len(parents) == len(inputs)
            and all(p is x for p, x in zip(parents, inputs))):
        fail(exercise, f"the output's parents must be the tuple of its inputs -- ({', '.join('x' for _ in inputs)},), "
                       f"mind the comma; got a {type(parents).__name__}")
    result = result_of(f"{exercise} (backward)", lambda: out._backward(numpy.asarray(upstream)), expects)
    if not (isinstance(result, (tuple, list)) and len(result) == len(inputs)):
        got = f"a {type(result).__name__}" + (f" of shape {result.shape}" if hasattr(result, "shape") else "")
        fail(exercise, f"the backward closure must return a tuple with one gradient per parent, "
                       f"like (g * ...,) -- the comma makes it a tuple; it returned {got}")
    for i, want in enumerate(grads):
        check(f"{exercise} (backward)", lambda: result[i], want, atol=atol, rtol=rtol,
              expects=f"the gradient with respect to input {i + 1} of {len(grads)}, given the upstream gradient g",
              mistakes={words: wrong[i] for words, wrong in (mistakes or {}).items()})


def check_order(exercise: str, compute, nodes: dict) -> None:
    """``compute()`` must return each of ``nodes`` (name -> Tensor) once and nothing else, every
    node after those of its parents that are among ``nodes``."""
    expects = f"a list of the {len(nodes)} nodes ({', '.join(nodes)}), each once, every node after its parents"
    order = result_of(exercise, compute, expects)
    names = {id(node): name for name, node in nodes.items()}
    if not isinstance(order, (list, tuple)):
        fail(exercise, f"return a list of Tensors; got a {type(order).__name__}")
    seen = []
    for node in order:
        if id(node) not in names:
            fail(exercise, f"the order holds a node that needs no gradient (shape {getattr(node, 'shape', '?')}): "
                           f"keep only the tensors with requires_grad")
        if id(node) in seen:
            fail(exercise, f"{names[id(node)]} appears twice: list each node once, even one used twice")
        seen.append(id(node))
    missing = [name for key, name in names.items() if key not in seen]
    if missing:
        hint = ("include the leaves (the tensors with no parents) too" if all(not nodes[n]._parents for n in missing)
                else "every node the root depends on belongs in it")
        fail(exercise, f"{', '.join(missing)} missing from the order: {hint}")
    position = {key: i for i, key in enumerate(seen)}
    for node in order:
        for parent in node._parents:
            if id(parent) in position and position[id(parent)] > position[id(node)]:
                fail(exercise, f"{names[id(node)]} comes before its parent {names[id(parent)]}: "
                               f"every node must come after all of its parents")
    print(f"exercise {exercise}: passed")


def graph_nodes(root) -> list:
    """Every Tensor the graph of ``root`` holds (``root`` included): for tests that look at how a
    result was computed, e.g. that no (out x in) matrix was formed on the way."""
    nodes, stack, seen = [], [root], set()
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            nodes.append(node)
            stack.extend(node._parents)
    return nodes


def _bound_at(function) -> tuple:
    """Where ``function`` is defined, as (the module or class that holds it, its name), read off its
    ``__module__`` and ``__qualname__``: ``Tensor.backward`` -> (the class Tensor, "backward")."""
    owner = sys.modules.get(getattr(function, "__module__", None))
    *path, name = getattr(function, "__qualname__", "?").split(".")
    for part in path:
        owner = getattr(owner, part, None)
    if getattr(owner, name, None) is not function:
        raise ValueError(f"forbid: {function!r} is not a function of a module or a class")
    return owner, name


class forbid:
    """``with forbid("1.2", unbroadcast):`` -- while the block runs, each of the functions (a
    module's function, a class's method such as ``Tensor.backward``, or a pair ``(function, what
    the student would have written)`` to name it in the message) raises
    ``ExerciseError("exercise 1.2 must not call unbroadcast ...")``, wherever it is bound: where it
    is defined, in minilora's other modules, in the notebook's namespace (``__main__``) and in the
    namespace of the code that opened the block (where the student's functions live). A call that
    the student's code caught and swallowed still fails the exercise when the block ends."""

    def __init__(self, exercise: str, *functions):
        self.exercise, self.calls, self.swaps = exercise, [], []
        namespaces = [sys._getframe(1).f_globals]  # the caller's: the notebook's, or the grader's
        namespaces += [vars(m) for key, m in list(sys.modules.items())
                       if (key == "__main__" or key.startswith("minilora")) and hasattr(m, "__dict__")]
        for function in functions:
            original, shown = function if isinstance(function, tuple) else (function, None)
            owner, name = _bound_at(original)
            raiser = self._raiser(shown or (f"{owner.__name__}.{name}" if isinstance(owner, type) else name))
            self.swaps.append((owner, name, original, raiser))
            if not isinstance(owner, type):  # a function: every other name bound to it too
                self.swaps += [(table, key, original, raiser) for table in namespaces
                               for key, value in list(table.items()) if value is original]

    def _raiser(self, name: str):
        def raiser(*args, **kwargs):
            self.calls.append(name)
            raise ExerciseError(f"exercise {self.exercise} must not call {name}: the exercise is to write it yourself")
        return raiser

    @staticmethod
    def _set(holder, key, value) -> None:
        if isinstance(holder, dict):
            holder[key] = value
        else:
            setattr(holder, key, value)

    def __enter__(self):
        for holder, key, _, raiser in self.swaps:
            self._set(holder, key, raiser)
        return self

    def __exit__(self, kind, error, traceback):
        for holder, key, original, _ in reversed(self.swaps):
            self._set(holder, key, original)
        if kind is None and self.calls:
            fail(self.exercise, f"must not call {self.calls[0]}: the exercise is to write it yourself")
        return False


_UNBOUND = object()  # a name the namespace did not hold before stand_in bound it


class stand_in:
    """``with stand_in(causal_self_attention=reference):`` -- while the block runs, each name is
    bound to the function (or class) given, in the namespace of the code that opened the block (the
    notebook's), and put back afterwards: a student's function that calls an earlier exercise's
    function by its name gets the reference instead, so that a mistake there is not graded twice."""

    def __init__(self, **functions):
        self.namespace, self.functions, self.before = sys._getframe(1).f_globals, functions, {}

    def __enter__(self):
        self.before = {name: self.namespace.get(name, _UNBOUND) for name in self.functions}
        self.namespace.update(self.functions)
        return self

    def __exit__(self, kind, error, traceback):
        for name, value in self.before.items():
            if value is _UNBOUND:
                self.namespace.pop(name, None)
            else:
                self.namespace[name] = value
        return False


__all__ = ["ExerciseError", "check", "check_op", "check_order", "check_true", "fail", "forbid", "graph_nodes", "result_of",
           "stand_in"]
