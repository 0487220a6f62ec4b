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
    # --- 1.5 matmul as an op --------------------------------------------------------------
    Mistake("1.5", "b's gradient not summed over a's leading axes", "b's gradient is not summed over a's leading axes",
            change=[("a.data.reshape(-1, k).T @ g.reshape(-1, m)", "np.swapaxes(a.data, -1, -2) @ g")]),
    Mistake("1.5", "b's gradient transposed: gᵀ a", "got shape (6, 5) instead of (5, 6) (transposed?)",
            change=[("a.data.reshape(-1, k).T @ g.reshape(-1, m)", "g.reshape(-1, m).T @ a.data.reshape(-1, k)")]),
    Mistake("1.5", "a's gradient g b instead of g bᵀ", "my_matmul raised ValueError: matmul",
            change=[("grad_a = g @ b.data.T", "grad_a = g @ b.data")]),
    Mistake("1.5", "calls the engine's matmul", "exercise 1.5 must not call matmul", source="""
def my_matmul(a, b):
    return a @ b
"""),
    # --- 1.6 softmax as an op -------------------------------------------------------------
    Mistake("1.6", "the backward is the Jacobian's diagonal alone, g s (1 − s)", "the gradient is the Jacobian's diagonal alone",
            change=[("(s * (g - (g * s).sum(axis=-1, keepdims=True)),)", "(g * s * (1 - s),)")]),
    Mistake("1.6", "exp of the raw inputs (overflows)", "not finite for inputs of size ~1200: subtract each row's maximum",
            change=[("np.exp(x.data - x.data.max(axis=-1, keepdims=True))", "np.exp(x.data)")]),
    Mistake("1.6", "the row sums without keepdims", "my_softmax raised ValueError: operands could not be broadcast",
            change=[("z / z.sum(axis=-1, keepdims=True)", "z / z.sum(axis=-1)")]),
    Mistake("1.6", "the softmax over the first axis", "the softmax is taken over the first axis",
            change=[("x.data.max(axis=-1, keepdims=True)", "x.data.max(axis=0)"), ("z.sum(axis=-1, keepdims=True)", "z.sum(axis=0)")]),
    Mistake("1.6", "calls the library's softmax", "exercise 1.6 must not call softmax", source="""
from minilora.nn import functional as F

def my_softmax(x):
    return F.softmax(x, dim=-1)
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
    # --- 2.2 a transformer block ----------------------------------------------------------
    Mistake("2.2", "post-LN: the LayerNorm after each residual sum", "post-LN: the LayerNorm is applied after each residual sum", source="""
def transformer_block(x, p, n_head):
    B, T, C = x.shape
    linear = lambda h, name: h @ p[name + ".weight"].T + p[name + ".bias"]
    heads = lambda t: t.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)
    q, k, v = np.split(linear(x, "attn.c_attn"), 3, axis=-1)
    y, P = causal_self_attention(heads(q), heads(k), heads(v))
    x = layer_norm(x + linear(y.transpose(0, 2, 1, 3).reshape(B, T, C), "attn.c_proj"), p["ln_1.weight"], p["ln_1.bias"])
    m = gelu_tanh(linear(x, "mlp.c_fc"))
    return layer_norm(x + linear(m, "mlp.c_proj"), p["ln_2.weight"], p["ln_2.bias"]), P
"""),
    Mistake("2.2", "the MLP's output without the residual", "the MLP branch is not added to x",
            change=[('return x + linear(m, "mlp.c_proj"), P', 'return linear(m, "mlp.c_proj"), P')]),
    Mistake("2.2", "the heads split by a reshape alone", "the heads were split by a reshape alone",
            change=[("t.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)", "t.reshape(B, n_head, T, hs)"),
                    ("y.transpose(0, 2, 1, 3).reshape(B, T, C)", "y.reshape(B, T, C)")]),
    Mistake("2.2", "x W instead of x Wᵀ", "transformer_block raised ValueError: matmul",
            change=[('h @ p[name + ".weight"].T', 'h @ p[name + ".weight"]')]),
    Mistake("2.2", "calls the library's Block", "exercise 2.2 must not call Block.forward", source="""
import minilora
from minilora.models.gpt import Block, GPTConfig

def transformer_block(x, p, n_head):
    block = Block(GPTConfig(n_layer=1, n_head=n_head, n_embd=x.shape[-1]), 0).double()
    block.load_state_dict({k: minilora.tensor(v, dtype=minilora.float64) for k, v in p.items()})
    return block(minilora.tensor(x, dtype=minilora.float64)).numpy(), None
"""),
    # --- 2.3 next-token pairs -------------------------------------------------------------
    Mistake("2.3", "inputs and targets swapped", "inputs and targets are swapped",
            change=[("return ids[:, :-1], ids[:, 1:]", "return ids[:, 1:], ids[:, :-1]")]),
    Mistake("2.3", "shifted along the batch axis", "shifted along the batch axis",
            change=[("return ids[:, :-1], ids[:, 1:]", "return ids[:-1], ids[1:]")]),
    Mistake("2.3", "np.roll: the last target wraps around to the first token", "the inputs keep the last position, which has no next token",
            change=[("return ids[:, :-1], ids[:, 1:]", "return ids, np.roll(ids, -1, axis=1)")]),
    Mistake("2.3", "targets not shifted", "the targets are the inputs themselves",
            change=[("return ids[:, :-1], ids[:, 1:]", "return ids[:, :-1], ids[:, :-1]")]),
    # --- 2.4 cross-entropy ----------------------------------------------------------------
    Mistake("2.4", "the sum over positions instead of the mean", "the sum over positions: the loss is their mean",
            change=[("-picked.mean()", "-picked.sum()")]),
    Mistake("2.4", "exp of the raw logits (overflows)", "not finite for large logits",
            change=[("z = logits - logits.max(axis=-1, keepdims=True)", "z = logits")]),
    Mistake("2.4", "minus the probability instead of minus its log", "take the log of the target's probability", source="""
def cross_entropy(logits, targets):
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = z / z.sum(axis=-1, keepdims=True)
    return float(-np.take_along_axis(probs, targets[..., None], axis=-1).mean())
"""),
    Mistake("2.4", "the minus sign left out", "the loss is minus the log-probability",
            change=[("-picked.mean()", "picked.mean()")]),
    Mistake("2.4", "calls the library's cross-entropy", "exercise 2.4 must not call cross_entropy", source="""
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
    # --- 3.4 merge ------------------------------------------------------------------------
    Mistake("3.4", "scales by rsLoRA's α/√r instead of α/r", "the update is scaled by α/√r",
            change=[("(alpha / r)", "(alpha / r ** 0.5)")]),
    Mistake("3.4", "adds to W in place", "merge changed W in place", source="""
def merge(W, A, B, alpha, r):
    W += (alpha / r) * (B @ A)
    return W
"""),
    Mistake("3.4", "adds (B A)ᵀ", "merge raised ValueError: operands could not be broadcast",
            change=[("(B @ A)", "(B @ A).T")]),
    Mistake("3.4", "returns the update alone", "that is ΔW alone",
            change=[("return W + ", "return ")]),
    # --- 4.1 LoRALinear -------------------------------------------------------------------
    Mistake("4.1", "B left at nn.Linear's random start", "B must start at zero",
            change=[("        nn.init.zeros_(self.lora_B.weight)", "        pass")]),
    Mistake("4.1", "the base layer not frozen", "only A and B train: freeze the base layer",
            change=[("        base_layer.requires_grad_(False)", "        pass")]),
    Mistake("4.1", "A and B in the default float32, whatever the base layer's dtype", "A and B must have the base layer's dtype",
            change=[("bias=False, dtype=dtype)", "bias=False)")]),
    Mistake("4.1", "scales by rsLoRA's α/√r instead of α/r", "the scaling is α/√r",
            change=[("self.scaling = lora_alpha / r", "self.scaling = lora_alpha / r ** 0.5")]),
    Mistake("4.1", "dropout on the layer's whole output", "dropout must act on the LoRA branch's input alone",
            change=[("return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling",
                     "return self.lora_dropout(y + self.lora_B(self.lora_A(x)) * self.scaling)")]),
    Mistake("4.1", "a merged layer still adds the update", "for a merged layer (self.merged True), the base layer's output alone",
            change=[("        if self.merged:                                                    # the update is inside W already\n            return y\n", "")]),
    Mistake("4.1", "wraps the library's layer", "exercise 4.1 must not call LoRALinear.update_layer", source="""
from minilora.peft import LoRALinear as Library

class LoRALinear(nn.Module):
    def __init__(self, base_layer, r, lora_alpha, lora_dropout=0.0):
        super().__init__()
        self.inner = Library(base_layer)
        self.inner.update_layer("default", r, lora_alpha, lora_dropout)

    def forward(self, x):
        return self.inner(x)
"""),
    # --- 4.2 merge and unmerge ------------------------------------------------------------
    Mistake("4.2", "merges without the scaling", "the update is not scaled",
            change=[("W.data + self.scaling * (self.lora_B.weight.data @ self.lora_A.weight.data)",
                     "W.data + (self.lora_B.weight.data @ self.lora_A.weight.data)")]),
    Mistake("4.2", "merging a merged layer adds ΔW again", "merging twice added ΔW twice", source="""
def merge(self):
    self.base_layer.weight.data = self.base_layer.weight.data + self.scaling * (self.lora_B.weight.data @ self.lora_A.weight.data)
    self.merged = True


def unmerge(self):
    if self.merged:
        self.base_layer.weight.data = self.base_layer.weight.data - self.scaling * (self.lora_B.weight.data @ self.lora_A.weight.data)
        self.merged = False
"""),
    Mistake("4.2", "unmerge adds the update instead of subtracting it", "unmerge added the update again",
            change=[("W.data - self.scaling", "W.data + self.scaling")]),
    Mistake("4.2", "merge replaces the base layer's Parameter", "merge replaced the base layer's Parameter", source="""
def merge(self):
    if not self.merged:
        W = self.base_layer.weight.data + self.scaling * (self.lora_B.weight.data @ self.lora_A.weight.data)
        self.base_layer.weight = nn.Parameter(W, requires_grad=False)
        self.merged = True


def unmerge(self):
    if self.merged:
        self.base_layer.weight.data = self.base_layer.weight.data - self.scaling * (self.lora_B.weight.data @ self.lora_A.weight.data)
        self.merged = False
"""),
    Mistake("4.2", "merged never recorded", "after merge, self.merged must be True",
            change=[("        self.merged = True\n", "")]),
    # --- 4.3 inject_lora ------------------------------------------------------------------
    Mistake("4.3", "a substring test instead of PEFT's rule", "was wrapped for targets",
            change=[('name == target or name.endswith("." + target)', "target in name")]),
    Mistake("4.3", "a name ending with the target, without the dot", "not if it merely contains it or ends with it",
            change=[('name == target or name.endswith("." + target)', "name.endswith(target)")]),
    Mistake("4.3", "exact names only", "nothing was wrapped for targets",
            change=[('name == target or name.endswith("." + target)', "name == target")]),
    Mistake("4.3", "freezes the model after wrapping", "nothing trains: freeze the model first",
            change=[("    model.requires_grad_(False)                                          # everything frozen; the new A and B train\n", ""),
                    ("    return names", "    model.requires_grad_(False)\n    return names")]),
    Mistake("4.3", "never freezes the rest of the model", "only the A and B of the wrapped layers may train",
            change=[("    model.requires_grad_(False)                                          # everything frozen; the new A and B train\n", "")]),
    Mistake("4.3", "calls the library's get_peft_model", "exercise 4.3 must not call get_peft_model", source="""
from minilora.peft import LoraConfig, get_peft_model

def inject_lora(model, target_modules, r, lora_alpha, lora_dropout=0.0):
    get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=target_modules, lora_dropout=lora_dropout))
    return target_modules
"""),
    # --- 5.1 the training loop ------------------------------------------------------------
    Mistake("5.1", "never zeroes the gradients", "the gradients were never zeroed",
            change=[("        optimizer.zero_grad()                                            # gradients accumulate: clear last step's\n", "")]),
    Mistake("5.1", "no gradient clipping", "the gradients were not clipped",
            change=[("        clip_grad_norm_(params, max_grad_norm)\n", "")]),
    Mistake("5.1", "trains in eval mode (dropout off)", "dropout was off: call model.train()",
            change=[("    model.train()                                                        # dropout on\n", "")]),
    Mistake("5.1", "zero_grad between backward and step", "the weights never changed",
            change=[("        optimizer.zero_grad()                                            # gradients accumulate: clear last step's\n        loss.backward()\n",
                     "        loss.backward()\n        optimizer.zero_grad()\n")]),
    Mistake("5.1", "calls the library's training loop", "exercise 5.1 must not call train", source="""
from minilora.train import TrainConfig, train

def train_lora(model, batches, steps, lr, max_grad_norm=1.0):
    config = TrainConfig(max_steps=steps, lr=lr, warmup_steps=0, weight_decay=0.0, grad_clip=max_grad_norm, progress=False)
    return train(model, lambda rng: batches(0), config).losses
"""),
    # --- 5.2 writing PEFT's files ---------------------------------------------------------
    Mistake("5.2", "keeps the adapter's name in the keys", "the adapter's name is not part of PEFT's keys",
            change=[('.lora_A.weight"] = np.ascontiguousarray(A)', '.lora_A.default.weight"] = np.ascontiguousarray(A)'),
                    ('.lora_B.weight"] = np.ascontiguousarray(B)', '.lora_B.default.weight"] = np.ascontiguousarray(B)')]),
    Mistake("5.2", "the model's names without PEFT's prefix", "PEFT's keys are 'base_model.model.' + the module's name",
            change=[('f"base_model.model.{name}.lora_A', 'f"{name}.lora_A'), ('f"base_model.model.{name}.lora_B', 'f"{name}.lora_B')]),
    Mistake("5.2", "A saved transposed, (in, r)", "(transposed?)",
            change=[("np.ascontiguousarray(A)", "np.ascontiguousarray(A.T)")]),
    Mistake("5.2", "lora_alpha left out of the config", "PEFT would fill in its default, lora_alpha = 8",
            change=[('"r": r, "lora_alpha": lora_alpha, ', '"r": r, ')]),
    Mistake("5.2", "the weights pickled with np.savez", "adapter_model.safetensors is not a safetensors file",
            change=[('save_file(tensors, str(folder / "adapter_model.safetensors"))',
                     'np.savez(folder / "adapter_model.safetensors.npz", **tensors)\n    (folder / "adapter_model.safetensors.npz").rename(folder / "adapter_model.safetensors")')]),
    Mistake("5.2", "calls the library's writer", "exercise 5.2 must not call save_folder", source="""
from minilora.io import save_folder

def save_adapter(folder, weights, r, lora_alpha, target_modules):
    tensors = {f"base_model.model.{n}.lora_{k}.weight": w for n, (A, B) in weights.items() for k, w in (("A", A), ("B", B))}
    save_folder(folder, "adapter_config.json", {"peft_type": "LORA", "r": r, "lora_alpha": lora_alpha,
                "target_modules": list(target_modules)}, "adapter_model.safetensors", tensors)
"""),
    # --- 5.3 reading PEFT's files ---------------------------------------------------------
    Mistake("5.3", "keeps PEFT's prefix in the module names", "drop PEFT's prefix 'base_model.model.'",
            change=[('key.removeprefix("base_model.model.").rsplit', "key.rsplit")]),
    Mistake("5.3", "A and B swapped", "A and B are swapped",
            change=[('(p["A.weight"], p["B.weight"])', '(p["B.weight"], p["A.weight"])')]),
    Mistake("5.3", "only the config's r, α assumed equal to it", "with r = 2 and lora_alpha = 6",
            change=[("    return config, {name:", '    config = {"r": config["r"], "lora_alpha": config["r"]}\n    return config, {name:')]),
    Mistake("5.3", "calls the library's reader", "exercise 5.3 must not call read_adapter", source="""
from minilora.peft.files import read_adapter
from safetensors.numpy import load_file

def load_adapter(folder):
    config, _ = read_adapter(folder, ["LORA"])
    raw = load_file(str(Path(folder) / "adapter_model.safetensors"))
    names = {k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in raw}
    return config, {n: (raw[f"base_model.model.{n}.lora_A.weight"], raw[f"base_model.model.{n}.lora_B.weight"]) for n in names}
"""),
    # --- 6.1 a mixed batch, the slow way --------------------------------------------------
    Mistake("6.1", "the whole batch with the active adapter", "every row was computed with the same adapter", source="""
def mixed_batch_by_hand(model, x, names):
    return model(x)[0].numpy()
"""),
    Mistake("6.1", "the base rows (no adapter) treated as an adapter's name", "mixed_batch_by_hand raised", source="""
def mixed_batch_by_hand(model, x, names):
    rows = []
    for row, name in zip(x, names):
        model.set_adapter(name)
        rows.append(model(row[None])[0].numpy())
    return np.concatenate(rows)
"""),
    Mistake("6.1", "stacks the rows, adding an axis", "an axis of size 1 added or dropped",
            change=[("np.concatenate(rows)", "np.stack(rows)")]),
    Mistake("6.1", "the one-pass mixed batch itself", "exercise 6.1 must not call model(x, adapter_names=...)", source="""
def mixed_batch_by_hand(model, x, names):
    return model(x, adapter_names=names)[0].numpy()
"""),
    # --- 6.2 the weighted sum of the updates ----------------------------------------------
    Mistake("6.2", "leaves out the scalings s_i", "the scalings s_i are missing",
            change=[("w * layer.scaling[name] * (B @ A)", "w * (B @ A)")]),
    Mistake("6.2", "one scaling, the first adapter's, for all", "every adapter is scaled by the first one's s",
            change=[("layer.scaling[name]", "layer.scaling[adapters[0]]")]),
    Mistake("6.2", "ignores the weights", "the weights w_i are not applied",
            change=[("w * layer.scaling[name]", "layer.scaling[name]")]),
    Mistake("6.2", "A B instead of B A", "weighted_delta raised ValueError: matmul",
            change=[("(B @ A)", "(A @ B)")]),
    Mistake("6.2", "calls the library's ΔW", "exercise 6.2 must not call LoRALinear.get_delta_weight", source="""
def weighted_delta(layer, adapters, weights):
    return sum(w * layer.get_delta_weight(n).numpy() for n, w in zip(adapters, weights))
"""),
    # --- 7.1 energy in the top r ----------------------------------------------------------
    Mistake("7.1", "assumes the singular values come sorted", "the σ were not sorted",
            change=[("np.sort(np.asarray(singular_values, dtype=np.float64))[::-1]", "np.asarray(singular_values, dtype=np.float64)")]),
    Mistake("7.1", "sorts in increasing order", "sorted in increasing order",
            change=[("[::-1] ** 2", " ** 2")]),
    Mistake("7.1", "sums σ instead of σ²", "σ, not σ², was summed",
            change=[("[::-1] ** 2", "[::-1]")]),
    Mistake("7.1", "calls the library's energy_share", "exercise 7.1 must not call energy_share", source="""
from minilora.experiments import intrinsic_rank

def energy_in_top(singular_values, r):
    return intrinsic_rank.energy_share(singular_values, r)
"""),
    # --- 7.2 φ ----------------------------------------------------------------------------
    Mistake("7.2", "divides by max(i, j)", "divided by max(i, j)",
            change=[("/ min(i, j)", "/ max(i, j)")]),
    Mistake("7.2", "the Frobenius norm, not its square", "the norm is not squared",
            change=[("np.sum((U1.T @ U2) ** 2)", "np.linalg.norm(U1.T @ U2)")]),
    Mistake("7.2", "the left-singular vectors (U of the SVD) instead of the right ones", "phi raised ValueError: matmul",
            change=[("[2].T[:, :i]", "[0][:, :i]"), ("[2].T[:, :j]", "[0][:, :j]")]),
    Mistake("7.2", "calls the library's subspace_similarity", "exercise 7.2 must not call subspace_similarity", source="""
from minilora.experiments.intrinsic_rank import subspace_similarity

def phi(A1, A2, i, j):
    return subspace_similarity(A1, A2, i, j)
"""),
    # --- 8.1 DoRA's magnitude -------------------------------------------------------------
    Mistake("8.1", "the norm of each column (axis 0) instead of each row", "got one norm per column",
            change=[("axis=1)", "axis=0)")]),
    Mistake("8.1", "the norm of W alone, the update left out", "the norm of W alone",
            change=[("(W + scaling * (B @ A))", "W")]),
    Mistake("8.1", "the squared norm", "the squared norm: take its square root",
            change=[("np.sqrt(np.sum(", "(np.sum(")]),
    Mistake("8.1", "the update without the scaling", "the update is not scaled",
            change=[("scaling * (B @ A)", "(B @ A)")]),
    Mistake("8.1", "calls the library's weight_norm", "exercise 8.1 must not call weight_norm", source="""
from minilora.peft import dora

def dora_magnitude(W, A, B, scaling):
    return dora.weight_norm(W, scaling * (B @ A))
"""),
    # --- 8.2 DoRA's forward pass ---------------------------------------------------------
    Mistake("8.2", "the bias rescaled with the rest", "the bias is rescaled by f too",
            change=[("f * (x @ W.T + (x @ A.T) @ B.T * scaling) + b", "f * (x @ W.T + b + (x @ A.T) @ B.T * scaling)")]),
    Mistake("8.2", "m times the norm", "it is m divided by the norm",
            change=[("f = m / Tensor(norm)", "f = m * Tensor(norm)")]),
    Mistake("8.2", "LoRA's output, f left out", "f is left out: that is LoRA's output",
            change=[("f * (x @ W.T + (x @ A.T) @ B.T * scaling) + b", "x @ W.T + (x @ A.T) @ B.T * scaling + b")]),
    Mistake("8.2", "the gradient taken through the norm", "with the norm held constant (sec. 4.3)", source="""
def dora_forward(x, W, b, A, B, m, scaling):
    norm = (((W + B @ A * scaling) ** 2).sum(1)) ** 0.5
    return m / norm * (x @ W.T + (x @ A.T) @ B.T * scaling) + b
"""),
    Mistake("8.2", "calls the library's DoRA layer", "exercise 8.2 must not call weight_norm", source="""
from minilora.peft import LoRALinear as Library

def dora_forward(x, W, b, A, B, m, scaling):
    layer = Library(nn.Linear(W.shape[1], W.shape[0], dtype=f64))
    layer.base_layer.weight.data, layer.base_layer.bias.data = W.data, b.data
    layer.update_layer("default", A.shape[0], scaling * A.shape[0], use_dora=True)
    layer.lora_A["default"].weight, layer.lora_B["default"].weight = A, B
    layer.lora_magnitude_vector["default"].weight = m
    return layer(x)
"""),
    # --- 9.1 the NF4 levels ---------------------------------------------------------------
    Mistake("9.1", "returns the library's table", "the levels do not change with offset", source="""
from minilora import quant

def nf4_levels(offset=0.9677083):
    return quant.NF4_VALUES
"""),
    Mistake("9.1", "8 negative and 7 positive levels", "7 positive and 8 negative levels",
            change=[("positive + [0.0] + negative", "[-v for v in positive] + [0.0] + [-v for v in negative]")]),
    Mistake("9.1", "not divided by the largest level", "the levels are not divided by the largest one",
            change=[("return levels / levels.max()", "return levels")]),
    Mistake("9.1", "eight levels on each side, 17 in all", "got shape (17,) instead of (16,)",
            change=[("np.linspace(offset, 0.5, 8)[:-1]", "np.linspace(offset, 0.5, 9)[:-1]")]),
    Mistake("9.1", "calls the library's create_normal_map", "exercise 9.1 must not call create_normal_map", source="""
from minilora import quant

def nf4_levels(offset=0.9677083):
    return quant.create_normal_map(offset)
"""),
    # --- 9.2 block-wise absmax ------------------------------------------------------------
    Mistake("9.2", "the largest value of a block instead of the largest |value|", "not the largest |value|",
            change=[("np.abs(blocks).max(axis=1)", "blocks.max(axis=1)")]),
    Mistake("9.2", "one absmax for the whole matrix", "one absmax for the whole matrix",
            change=[("np.abs(blocks).max(axis=1).astype(np.float32)", "np.float32(np.abs(W).max())"), ("absmax.astype(np.float64)[:, None]", "np.float64(absmax)")]),
    Mistake("9.2", "absmax kept in float64", "absmax must be float32",
            change=[("np.abs(blocks).max(axis=1).astype(np.float32)", "np.abs(blocks).max(axis=1)")]),
    Mistake("9.2", "calls the library's quantize_nf4", "exercise 9.2 must not call quantize_nf4", source="""
from minilora import quant

def quantize_blocks(W, levels, block_size=64):
    q = quant.quantize_nf4(W, block_size=block_size, double_quant=False)
    return quant.unpack_indices(q).reshape(-1, block_size), q.absmax
"""),
    # --- 9.3 double quantization ----------------------------------------------------------
    Mistake("9.3", "quantizes the constants without subtracting their mean", "the mean was not subtracted first",
            change=[("mean = np.float32(absmax.mean(dtype=np.float64))", "mean = np.float32(0)")]),
    Mistake("9.3", "one scale for all the constants", "one scale for all the constants",
            change=[("range(0, len(c), block_size)", "range(0, len(c), len(c))"), ("start + block_size]", "start + len(c)]")]),
    Mistake("9.3", "a grid of ±128 steps", "symmetric 8-bit codes go from −127 to 127",
            change=[("/ 127", "/ 128")]),
    Mistake("9.3", "drops the last, shorter group", "the last, shorter group was dropped", source="""
def double_quantized(absmax, block_size=256):
    mean = np.float32(absmax.mean(dtype=np.float64))
    c = absmax.astype(np.float64) - mean
    groups = c[: len(c) // block_size * block_size].reshape(-1, block_size)
    s = (np.abs(groups).max(axis=1) / 127).astype(np.float32)
    return (np.rint(groups / s[:, None]) * s[:, None] + mean).astype(np.float32).reshape(-1)
"""),
    Mistake("9.3", "calls the library's double quantization", "exercise 9.3 must not call _quantize_absmax", source="""
from minilora import quant

def double_quantized(absmax, block_size=256):
    mean, c8, scale = quant._quantize_absmax(absmax, block_size)
    return (c8 * np.repeat(scale, block_size)[: len(absmax)] + mean).astype(np.float32)
"""),
    # --- 10.1 what a setting trains -----------------------------------------------------
    Mistake("10.1", "r × in × out for each matrix", "r × in × out counts a full matrix",
            change=[("r * (shapes[n][0] + shapes[n][1])", "r * shapes[n][0] * shapes[n][1]")]),
    Mistake("10.1", "one layer's count", "that is one layer's count",
            change=[("return config.num_hidden_layers * sum(", "return sum(")]),
    Mistake("10.1", "'output.dense' read as the feed-forward's alone", "'output.dense' names two modules",
            change=[('name == t or name.endswith("." + t)', 'name == t or name == "attention.self." + t')]),
    Mistake("10.1", "exact names only", "nothing matched",
            change=[('name == t or name.endswith("." + t)', "name == t")]),
    Mistake("10.1", "calls the library's count", "exercise 10.1 must not call lora_count", source="""
def lora_trainable(config, r, target_modules):
    target = "qv" if sorted(target_modules) == ["query", "value"] else "attn"
    return minilm.lora_count(config, r, target)
"""),
]


def by_exercise() -> dict:
    """number -> its mistakes, in catalogue order."""
    found: dict = {}
    for mistake in MISTAKES:
        found.setdefault(mistake.exercise, []).append(mistake)
    return found
