"""The catalogue of wrong solutions to the course's exercises (docs/course.md, "What the hidden tests catch").

Each entry is a solution cell a student might hand in: the mistake an exercise exists to
catch (a forward difference in 1.4, B A formed in 3.1, α/√r for α/r ...), a call to the
library function the exercise re-implements, and the engine's or NumPy's errors that a slip
produces (a missing comma, a transposed factor). Most are the reference solution with one
change (``change``: pairs of old and new text); the others are written out (``source``).
``message`` is part of what the exercise's hidden test must say about it: the feedback a
student gets.

tests/test_exercises.py checks each entry in this process -- it must fail its own
exercise's hidden test, with that message, and no other exercise's -- and
tests/test_course.py hands in composite submissions, one entry in every exercise, to
``nbgrader autograde``, which must give each exercise 0 points.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mistake:
    exercise: str  # "1.4"
    what: str  # the mistake, in words (docs/course.md lists them)
    message: str  # a part of the message the hidden test must give
    source: str = ""  # the solution cell as handed in, or
    change: list = ()  # (old, new) text replacements that turn the reference solution into it

    def solution(self, reference: str) -> str:
        """The cell handed in, given the reference solution (without nbgrader's markers)."""
        if self.source:
            return self.source
        for old, new in self.change:
            assert old in reference, f"{self.exercise} {self.what}: {old!r} is not in the reference solution"
            reference = reference.replace(old, new)
        return reference


MISTAKES = [
    # --- 1.1 sin as an op -----------------------------------------------------------------
    Mistake("1.1", "the backward closure returns an array, not a tuple (the missing comma)", "the backward closure must return a tuple with one gradient per parent",
            change=[("(g * np.cos(x.data),)", "(g * np.cos(x.data))")]),
    Mistake("1.1", "the backward closure ignores the upstream gradient g", "the gradient ignores the upstream g",
            change=[("(g * np.cos(x.data),)", "(np.cos(x.data),)")]),
    Mistake("1.1", "the derivative of cos, −sin, instead of sin's", "the derivative of cos; sin's is cos",
            change=[("(g * np.cos(x.data),)", "(-g * np.sin(x.data),)")]),
    Mistake("1.1", "the parents given as the tensor itself, not a tuple", "the output's parents must be the tuple of its inputs",
            change=[("(x,), lambda", "[x], lambda")]),
    # --- 1.2 unbroadcast ------------------------------------------------------------------
    Mistake("1.2", "calls the library's unbroadcast", "exercise 1.2 must not call unbroadcast", source="""
from minilora.tensor import unbroadcast

def my_unbroadcast(grad, shape):
    return unbroadcast(grad, shape)
"""),
    Mistake("1.2", "sums the stretched axes without keeping them (no keepdims)", "an axis of size 1 added or dropped? keepdims?",
            change=[("axis=stretched, keepdims=True", "axis=stretched")]),
    Mistake("1.2", "sums only the prepended axes, not the stretched ones", "the stretched axes (size 1 in the input) are not summed",
            change=[("return grad.sum(axis=stretched, keepdims=True)", "return grad")]),
    # --- 1.3 topological order ------------------------------------------------------------
    Mistake("1.3", "leaves the leaves out", "include the leaves",
            change=[("or not node.requires_grad:", "or not node.requires_grad or not node._parents:")]),
    Mistake("1.3", "no record of visited nodes: a node used twice is listed twice", "appears twice: list each node once",
            change=[("if id(node) in seen or not node.requires_grad:", "if not node.requires_grad:")]),
    Mistake("1.3", "appends a node before its parents (outputs first)", "comes before its parent",
            change=[('        for parent in node._parents:\n            visit(parent)\n        order.append(node)', '        order.append(node)\n        for parent in node._parents:\n            visit(parent)')]),
    Mistake("1.3", "keeps tensors that need no gradient", "keep only the tensors with requires_grad",
            change=[("if id(node) in seen or not node.requires_grad:", "if id(node) in seen:")]),
    Mistake("1.3", "calls the engine's sort", "exercise 1.3 must not call _topological_order", source="""
def topological_order(root):
    from minilora.tensor import _topological_order
    return _topological_order(root)
"""),
    # --- 1.4 numerical gradient -----------------------------------------------------------
    Mistake("1.4", "a forward difference (its error is of order ε)", "that is a forward difference",
            change=[("(f(x + step) - f(x - step)) / (2 * eps)", "(f(x + step) - f(x)) / eps")]),
    Mistake("1.4", "divides by ε instead of 2ε", "twice the gradient: a central difference divides by 2ε",
            change=[("/ (2 * eps)", "/ eps")]),
    Mistake("1.4", "ignores the eps argument", "use the eps argument",
            change=[("step[i] = eps", "step[i] = 1e-6"), ("/ (2 * eps)", "/ 2e-6")]),
    Mistake("1.4", "steps x in place and never puts it back", "x was changed", source="""
def numerical_gradient(f, x, eps=1e-6):
    grad = np.zeros_like(x, dtype=np.float64)
    for i in np.ndindex(x.shape):
        x[i] += eps
        up = f(x)
        x[i] -= 2 * eps
        grad[i] = (up - f(x)) / (2 * eps)
    return grad
"""),
    # --- 2.1 causal self-attention --------------------------------------------------------
    Mistake("2.1", "the scores are not divided by √hs", "the scores are not divided by √hs",
            change=[(" / np.sqrt(hs)", "")]),
    Mistake("2.1", "the scores divided by hs instead of √hs", "divided by hs, not by √hs",
            change=[("/ np.sqrt(hs)", "/ hs")]),
    Mistake("2.1", "no causal mask", "P is not zero above the diagonal",
            change=[('    scores = np.where(future, -np.inf, scores)\n', "")]),
    Mistake("2.1", "the softmax over the queries' axis instead of the keys'", "take the softmax over the last axis (the keys)",
            change=[("axis=-1", "axis=-2")]),
    Mistake("2.1", "exp of the raw scores (overflows)", "subtract each row's maximum before exp",
            change=[('    scores = scores - scores.max(axis=-1, keepdims=True)\n', "")]),
    Mistake("2.1", "returns y alone", "return a tuple (y, P)",
            change=[("return P @ v, P", "return P @ v")]),
    Mistake("2.1", "k.T, which reverses all four axes", "causal_self_attention raised ValueError: matmul",
            change=[("np.swapaxes(k, -1, -2)", "k.T")]),
    Mistake("2.1", "calls the library's attention", "exercise 2.1 must not call scaled_dot_product_attention", source="""
import minilora
from minilora.nn import functional as F

def causal_self_attention(q, k, v):
    t = lambda a: minilora.tensor(a, dtype=minilora.float64)
    y = F.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=True).numpy()
    return y, None
"""),
    # --- 2.2 next-token pairs -------------------------------------------------------------
    Mistake("2.2", "inputs and targets swapped", "inputs and targets are swapped",
            change=[("return ids[:, :-1], ids[:, 1:]", "return ids[:, 1:], ids[:, :-1]")]),
    Mistake("2.2", "shifted along the batch axis", "shifted along the batch axis",
            change=[("return ids[:, :-1], ids[:, 1:]", "return ids[:-1], ids[1:]")]),
    Mistake("2.2", "np.roll: the last target wraps around to the first token", "the inputs keep the last position, which has no next token",
            change=[("return ids[:, :-1], ids[:, 1:]", "return ids, np.roll(ids, -1, axis=1)")]),
    Mistake("2.2", "targets not shifted", "the targets are the inputs themselves",
            change=[("return ids[:, :-1], ids[:, 1:]", "return ids[:, :-1], ids[:, :-1]")]),
    # --- 2.3 cross-entropy ----------------------------------------------------------------
    Mistake("2.3", "the sum over positions instead of the mean", "the sum over positions: the loss is their mean",
            change=[("-picked.mean()", "-picked.sum()")]),
    Mistake("2.3", "exp of the raw logits (overflows)", "not finite for large logits",
            change=[("z = logits - logits.max(axis=-1, keepdims=True)", "z = logits")]),
    Mistake("2.3", "minus the probability instead of minus its log", "take the log of the target's probability", source="""
def cross_entropy(logits, targets):
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = z / z.sum(axis=-1, keepdims=True)
    return float(-np.take_along_axis(probs, targets[..., None], axis=-1).mean())
"""),
    Mistake("2.3", "the minus sign left out", "the loss is minus the log-probability",
            change=[("-picked.mean()", "picked.mean()")]),
    Mistake("2.3", "calls the library's cross-entropy", "exercise 2.3 must not call cross_entropy", source="""
import minilora
from minilora.nn import functional as F

def cross_entropy(logits, targets):
    V = logits.shape[-1]
    return float(F.cross_entropy(minilora.tensor(logits.reshape(-1, V)), minilora.tensor(targets.reshape(-1))).data)
"""),
    # --- 3.1 the LoRA forward -------------------------------------------------------------
    Mistake("3.1", "forms the (out x in) product B A", "B A (or its transpose) was formed",
            change=[("(alpha / r) * (down @ B.T)", "(alpha / r) * (x @ (B @ A).T)")]),
    Mistake("3.1", "scales by rsLoRA's α/√r instead of α/r", "the update is scaled by α/√r",
            change=[("(alpha / r)", "(alpha / r ** 0.5)")]),
    Mistake("3.1", "computes in NumPy, on .data", "not a NumPy array; got a ndarray", source="""
def lora_forward(x, W, A, B, alpha, r):
    return x.data @ W.data.T + (alpha / r) * (x.data @ A.data.T) @ B.data.T
"""),
    Mistake("3.1", "B not transposed", "lora_forward raised RuntimeError: matmul: shapes (5, 4) and (12, 4) cannot be multiplied",
            change=[("down @ B.T", "down @ B")]),
    Mistake("3.1", "leaves out the frozen layer's output", "the frozen layer's output x Wᵀ is missing",
            change=[("x @ W.T + ", "")]),
    # --- 3.2 dA and dB --------------------------------------------------------------------
    Mistake("3.2", "returns (dB, dA)", "return (dA, dB) in that order",
            change=[("return dA, dB", "return dB, dA")]),
    Mistake("3.2", "leaves out the scaling s", "the scaling s is missing",
            change=[("s * g.T @ u", "g.T @ u"), ("s * (g @ B).T @ x", "(g @ B).T @ x")]),
    Mistake("3.2", "dB transposed: (x Aᵀ)ᵀ g", "got shape (3, 6) instead of (6, 3) (transposed?)",
            change=[("s * g.T @ u", "s * u.T @ g")]),
    Mistake("3.2", "lets the engine differentiate", "exercise 3.2 must not call Tensor.backward", source="""
import minilora

def lora_grads(x, A, B, g, s):
    A_t = minilora.tensor(A, dtype=minilora.float64, requires_grad=True)
    B_t = minilora.tensor(B, dtype=minilora.float64, requires_grad=True)
    h = (minilora.tensor(x, dtype=minilora.float64) @ A_t.T) @ B_t.T * s
    (h * minilora.tensor(g, dtype=minilora.float64)).sum().backward()
    return A_t.grad, B_t.grad
"""),
    # --- 3.3 merge ------------------------------------------------------------------------
    Mistake("3.3", "scales by rsLoRA's α/√r instead of α/r", "the update is scaled by α/√r",
            change=[("(alpha / r)", "(alpha / r ** 0.5)")]),
    Mistake("3.3", "adds to W in place", "merge changed W in place", source="""
def merge(W, A, B, alpha, r):
    W += (alpha / r) * (B @ A)
    return W
"""),
    Mistake("3.3", "adds (B A)ᵀ", "merge raised ValueError: operands could not be broadcast",
            change=[("(B @ A)", "(B @ A).T")]),
    Mistake("3.3", "returns the update alone", "that is ΔW alone",
            change=[("return W + ", "return ")]),
    # --- 4.1 a mixed batch, the slow way --------------------------------------------------
    Mistake("4.1", "the whole batch with the active adapter", "every row was computed with the same adapter", source="""
def mixed_batch_by_hand(model, x, names):
    return model(x)[0].numpy()
"""),
    Mistake("4.1", "the base rows (no adapter) treated as an adapter's name", "mixed_batch_by_hand raised", source="""
def mixed_batch_by_hand(model, x, names):
    rows = []
    for row, name in zip(x, names):
        model.set_adapter(name)
        rows.append(model(row[None])[0].numpy())
    return np.concatenate(rows)
"""),
    Mistake("4.1", "stacks the rows, adding an axis", "an axis of size 1 added or dropped",
            change=[("np.concatenate(rows)", "np.stack(rows)")]),
    Mistake("4.1", "the one-pass mixed batch itself", "exercise 4.1 must not call model(x, adapter_names=...)", source="""
def mixed_batch_by_hand(model, x, names):
    return model(x, adapter_names=names)[0].numpy()
"""),
    # --- 4.2 the weighted sum of the updates ----------------------------------------------
    Mistake("4.2", "leaves out the scalings s_i", "the scalings s_i are missing",
            change=[("w * layer.scaling[name] * (B @ A)", "w * (B @ A)")]),
    Mistake("4.2", "one scaling, the first adapter's, for all", "every adapter is scaled by the first one's s",
            change=[("layer.scaling[name]", "layer.scaling[adapters[0]]")]),
    Mistake("4.2", "ignores the weights", "the weights w_i are not applied",
            change=[("w * layer.scaling[name]", "layer.scaling[name]")]),
    Mistake("4.2", "A B instead of B A", "weighted_delta raised ValueError: matmul",
            change=[("(B @ A)", "(A @ B)")]),
    Mistake("4.2", "calls the library's ΔW", "exercise 4.2 must not call LoRALinear.get_delta_weight", source="""
def weighted_delta(layer, adapters, weights):
    return sum(w * layer.get_delta_weight(n).numpy() for n, w in zip(adapters, weights))
"""),
    # --- 5.1 energy in the top r ----------------------------------------------------------
    Mistake("5.1", "assumes the singular values come sorted", "the σ were not sorted",
            change=[("np.sort(np.asarray(singular_values, dtype=np.float64))[::-1]", "np.asarray(singular_values, dtype=np.float64)")]),
    Mistake("5.1", "sorts in increasing order", "sorted in increasing order",
            change=[("[::-1] ** 2", " ** 2")]),
    Mistake("5.1", "sums σ instead of σ²", "σ, not σ², was summed",
            change=[("[::-1] ** 2", "[::-1]")]),
    Mistake("5.1", "calls the library's energy_share", "exercise 5.1 must not call energy_share", source="""
from minilora.experiments import intrinsic_rank

def energy_in_top(singular_values, r):
    return intrinsic_rank.energy_share(singular_values, r)
"""),
    # --- 5.2 φ ----------------------------------------------------------------------------
    Mistake("5.2", "divides by max(i, j)", "divided by max(i, j)",
            change=[("/ min(i, j)", "/ max(i, j)")]),
    Mistake("5.2", "the Frobenius norm, not its square", "the norm is not squared",
            change=[("np.sum((U1.T @ U2) ** 2)", "np.linalg.norm(U1.T @ U2)")]),
    Mistake("5.2", "the left-singular vectors (U of the SVD) instead of the right ones", "phi raised ValueError: matmul",
            change=[("[2].T[:, :i]", "[0][:, :i]"), ("[2].T[:, :j]", "[0][:, :j]")]),
    Mistake("5.2", "calls the library's subspace_similarity", "exercise 5.2 must not call subspace_similarity", source="""
from minilora.experiments.intrinsic_rank import subspace_similarity

def phi(A1, A2, i, j):
    return subspace_similarity(A1, A2, i, j)
"""),
    # --- 6.1 the NF4 levels ---------------------------------------------------------------
    Mistake("6.1", "returns the library's table", "the levels do not change with offset", source="""
from minilora import quant

def nf4_levels(offset=0.9677083):
    return quant.NF4_VALUES
"""),
    Mistake("6.1", "8 negative and 7 positive levels", "7 positive and 8 negative levels",
            change=[("positive + [0.0] + negative", "[-v for v in positive] + [0.0] + [-v for v in negative]")]),
    Mistake("6.1", "not divided by the largest level", "the levels are not divided by the largest one",
            change=[("return levels / levels.max()", "return levels")]),
    Mistake("6.1", "eight levels on each side, 17 in all", "got shape (17,) instead of (16,)",
            change=[("np.linspace(offset, 0.5, 8)[:-1]", "np.linspace(offset, 0.5, 9)[:-1]")]),
    Mistake("6.1", "calls the library's create_normal_map", "exercise 6.1 must not call create_normal_map", source="""
from minilora import quant

def nf4_levels(offset=0.9677083):
    return quant.create_normal_map(offset)
"""),
    # --- 6.2 block-wise absmax ------------------------------------------------------------
    Mistake("6.2", "the largest value of a block instead of the largest |value|", "not the largest |value|",
            change=[("np.abs(blocks).max(axis=1)", "blocks.max(axis=1)")]),
    Mistake("6.2", "one absmax for the whole matrix", "one absmax for the whole matrix",
            change=[("np.abs(blocks).max(axis=1).astype(np.float32)", "np.float32(np.abs(W).max())"), ("absmax.astype(np.float64)[:, None]", "np.float64(absmax)")]),
    Mistake("6.2", "absmax kept in float64", "absmax must be float32",
            change=[("np.abs(blocks).max(axis=1).astype(np.float32)", "np.abs(blocks).max(axis=1)")]),
    Mistake("6.2", "calls the library's quantize_nf4", "exercise 6.2 must not call quantize_nf4", source="""
from minilora import quant

def quantize_blocks(W, levels, block_size=64):
    q = quant.quantize_nf4(W, block_size=block_size, double_quant=False)
    return quant.unpack_indices(q).reshape(-1, block_size), q.absmax
"""),
    # --- 6.3 double quantization ----------------------------------------------------------
    Mistake("6.3", "quantizes the constants without subtracting their mean", "the mean was not subtracted first",
            change=[("mean = np.float32(absmax.mean(dtype=np.float64))", "mean = np.float32(0)")]),
    Mistake("6.3", "one scale for all the constants", "one scale for all the constants",
            change=[("range(0, len(c), block_size)", "range(0, len(c), len(c))"), ("start + block_size]", "start + len(c)]")]),
    Mistake("6.3", "a grid of ±128 steps", "symmetric 8-bit codes go from −127 to 127",
            change=[("/ 127", "/ 128")]),
    Mistake("6.3", "drops the last, shorter group", "the last, shorter group was dropped", source="""
def double_quantized(absmax, block_size=256):
    mean = np.float32(absmax.mean(dtype=np.float64))
    c = absmax.astype(np.float64) - mean
    groups = c[: len(c) // block_size * block_size].reshape(-1, block_size)
    s = (np.abs(groups).max(axis=1) / 127).astype(np.float32)
    return (np.rint(groups / s[:, None]) * s[:, None] + mean).astype(np.float32).reshape(-1)
"""),
    Mistake("6.3", "calls the library's double quantization", "exercise 6.3 must not call _quantize_absmax", source="""
from minilora import quant

def double_quantized(absmax, block_size=256):
    mean, c8, scale = quant._quantize_absmax(absmax, block_size)
    return (c8 * np.repeat(scale, block_size)[: len(absmax)] + mean).astype(np.float32)
"""),
]


def by_exercise() -> dict:
    """number -> its mistakes, in catalogue order."""
    found: dict = {}
    for mistake in MISTAKES:
        found.setdefault(mistake.exercise, []).append(mistake)
    return found
