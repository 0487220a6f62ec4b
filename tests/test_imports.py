"""No import cycle in ``minilora/``: the layers of docs/architecture.md point one way; and the
experiments' matrix keeps its rules (claims import core, runs and bases; bases import core, runs and
models; no claim imports another; only verify imports the claims).

Every module is parsed with ``ast`` (nothing is imported), and each of its import
statements -- at the top or inside a function, where a cycle usually hides -- gives an
edge to the module it loads. Importing ``a.b.c`` also runs the package ``a.b``'s
``__init__``, so that is an edge too, unless ``a.b`` is a package the importer sits in
(its ``__init__`` has run already). A package's ``__init__`` re-exporting its own
submodules is therefore no cycle: a submodule does not import its package back.

The few cycles allowed are named below, each with its reason.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each allowed cycle, with its reason: a model and its Hugging Face checkpoint loader need each
# other, and the model imports the loader inside the methods that call it.
ALLOWED = {
    frozenset({"minilora.models.gpt", "minilora.models.hf"}): "GPT.from_pretrained/save_pretrained call hf.py, which builds GPTs",
    frozenset({"minilora.models.bert", "minilora.models.bert_hf"}): "BERT's from_pretrained/save_pretrained call bert_hf.py, which builds BERTs",
    frozenset({"minilora.models.llama", "minilora.models.llama_hf"}): "LlamaForCausalLM.from_pretrained/save_pretrained call llama_hf.py, which builds LLaMAs",
}

EXPERIMENTS = "minilora.experiments"
# The old import paths of four experiment modules, kept for the course notebooks 01-06 until they move
# to the new ones: each re-exports names of a claim or a base, so it may import a claim (nothing imports it).
LEGACY = {f"{EXPERIMENTS}.{name}" for name in ("finetune", "intrinsic_rank", "modularity", "quantization")}


def module_files(package: Path = ROOT / "minilora") -> dict:
    """``{dotted name: path}`` for every module of the package; a package is named by its ``__init__``."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def packages_above(name: str) -> set:
    """``a.b.c`` -> ``{"a", "a.b"}``: the packages whose ``__init__`` importing it runs first."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def imported(name: str, path: Path, modules: dict) -> set:
    """The modules of ``modules`` that the module ``name`` (at ``path``) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..a import x
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from a import b`` loads the module a.b if there is one, else takes a name from a
            targets |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    edges = set()
    for target in targets & set(modules):
        edges.add(target)
        edges |= packages_above(target) - packages_above(name)
    return edges - {name}


def import_graph(modules: dict) -> dict:
    return {name: imported(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative):
    each is a set of modules every one of which imports, through the others, every other."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def describe(component: frozenset, graph: dict) -> str:
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & component))}" for m in sorted(component))


def test_no_import_cycle_in_minilora():
    graph = import_graph(module_files())
    unexpected = [c for c in cycles(graph) if c not in ALLOWED]
    assert not unexpected, "import cycles (each module -> the modules of its cycle it imports):\n" + "\n".join(
        describe(c, graph) for c in unexpected)


def test_the_allowed_cycles_still_exist():
    """An allowed cycle that is gone is removed from ALLOWED, so the list says what is true."""
    found = set(cycles(import_graph(module_files())))
    assert set(ALLOWED) <= found, sorted(map(sorted, set(ALLOWED) - found))


def test_the_graph_sees_what_python_runs(tmp_path):
    """The rules above, on a package made for the purpose: a function-level import and a
    package's ``__init__`` reached through its submodule close cycles; a package importing its
    own submodules does not."""
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "def f():\n    from p import b\n",  # inside a function: still an edge
        "b.py": "import p.a\n",
        "sub/__init__.py": "from p.sub.x import X\nfrom p import c\n",  # re-exports its own module: no cycle
        "sub/x.py": "from . import y\nX = 1\n",
        "sub/y.py": "",
        "c.py": "from p.sub import y\n",  # runs p.sub's __init__, which imports c: a cycle
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(module_files(pkg))
    assert graph["p.a"] == {"p.b"} and graph["p.sub.x"] == {"p.sub.y"}
    assert graph["p.c"] == {"p.sub", "p.sub.y"}
    assert set(cycles(graph)) == {frozenset({"p.a", "p.b"}), frozenset({"p.sub", "p.c"})}


def layer(name: str) -> str | None:
    """Which part of the experiments' matrix a module is in: "core", "runs", "bases", "claims", or None."""
    parts = name.split(".")
    if name.startswith(EXPERIMENTS + ".") and len(parts) > 2 and parts[2] in ("core", "runs", "bases", "claims"):
        return parts[2]
    return None


# Within minilora.experiments, what each part may import (besides its own part; anything outside
# experiments -- models, peft, train, ... -- is the layers below, checked by the cycle test above).
MAY_IMPORT = {"core": set(), "runs": {"core"}, "bases": {"core", "runs"}, "claims": {"core", "runs", "bases"}}


def matrix_violations(modules: dict) -> list:
    """Every import that breaks the experiments' rules, as sentences."""
    graph = import_graph(modules)
    claims = {m for m in modules if layer(m) == "claims" and m != f"{EXPERIMENTS}.claims"}
    bases = {m for m, path in modules.items() if layer(m) == "bases" and defines_base(path)}
    out = []
    for name, targets in sorted(graph.items()):
        own = layer(name)
        for target in sorted(targets):
            theirs = layer(target)
            if target in claims and name in claims:
                out.append(f"{name} imports the claim {target}: no claim imports another")
            elif target in claims and name != "minilora.verify" and name not in LEGACY:
                out.append(f"{name} imports the claim {target}: only minilora.verify imports the claims")
            elif target in bases and name != target and own == "bases":
                out.append(f"{name} imports the base {target}: no base imports another")
            elif own in MAY_IMPORT and target.startswith(EXPERIMENTS + ".") and theirs != own and theirs not in MAY_IMPORT[own]:
                out.append(f"{name} ({own}) imports {target}: {own} may import {sorted(MAY_IMPORT[own]) or 'nothing else'} "
                           "of minilora.experiments")
    return out


def defines_base(path: Path) -> bool:
    """Whether a module assigns ``BASE`` at its top level (what makes a module of bases/ a base)."""
    return any(isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "BASE" for t in node.targets)
               for node in ast.parse(path.read_text()).body)


def test_the_experiments_keep_their_rules():
    modules = module_files()
    assert sum(layer(m) == "claims" for m in modules) > 1 and sum(layer(m) == "bases" for m in modules) > 1, \
        "minilora/experiments/ has no claims/ and bases/ packages: the claim x base layout is missing"
    violations = matrix_violations(modules)
    assert not violations, "\n".join(violations)


def test_the_matrix_rules_catch_what_they_name(tmp_path):
    """The rules above on a made-up experiments package: a claim importing another claim, a base importing
    a claim, core importing runs, a module outside verify importing a claim -- each is named."""
    root = tmp_path / "minilora"
    files = {
        "__init__.py": "", "verify.py": "from minilora.experiments.claims import a\n", "other.py": "import minilora.experiments.claims.a\n",
        "experiments/__init__.py": "", "experiments/core/__init__.py": "", "experiments/core/x.py": "from minilora.experiments.runs import y\n",
        "experiments/runs/__init__.py": "", "experiments/runs/y.py": "",
        "experiments/bases/__init__.py": "", "experiments/bases/toy.py": "from minilora.experiments.claims import a\nBASE = 1\n",
        "experiments/bases/big.py": "from minilora.experiments.bases import toy\nBASE = 2\n",
        "experiments/claims/__init__.py": "", "experiments/claims/a.py": "from minilora.experiments.claims import b\n",
        "experiments/claims/b.py": "from minilora.experiments import core, runs, bases\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    found = "\n".join(matrix_violations(module_files(root)))
    assert "minilora.experiments.claims.a imports the claim minilora.experiments.claims.b: no claim imports another" in found
    assert "minilora.experiments.bases.toy imports the claim" in found
    assert "minilora.experiments.bases.big imports the base minilora.experiments.bases.toy" in found
    assert "minilora.experiments.core.x (core) imports minilora.experiments.runs" in found
    assert "minilora.other imports the claim minilora.experiments.claims.a" in found
    assert not [line for line in found.splitlines() if line.startswith(("minilora.verify ", "minilora.experiments.claims.b "))]
