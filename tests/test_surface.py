"""``import minilora`` gives PyTorch's surface, and every ``minilora`` name the README, the
docs and the notebooks use resolves.

A dotted name (``minilora.nn.Linear``) is looked up in a fresh interpreter that has done
``import minilora`` and nothing else -- what a student's script starts from. The suite
itself has imported everything long ago, so an attribute that only exists because some
other test imported its module would pass here and fail for the student. One subprocess
serves all names: it imports minilora once, then forks a child per name (``os.fork``), so
each child starts from that same fresh state. An import statement the docs write out
(``from minilora.experiments import params``) works whatever was imported before it, so
those run one after the other in the subprocess itself, after the names.
"""

import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DOTTED = re.compile(r"\bminilora(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(r"\bfrom\s+(minilora(?:\.\w+)*)\s+import\s+([\w ,]+)")
PLAIN_IMPORT = re.compile(r"\bimport\s+(minilora(?:\.\w+)*)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

RESOLVER = textwrap.dedent('''
    import json, os, sys
    import minilora

    def lookup(dotted):  # minilora.a.b: attributes of the package, as a student types them
        obj = minilora
        for part in dotted.split(".")[1:]:
            obj = getattr(obj, part)

    def error(err):
        return f"{type(err).__name__}: {err}"

    failures, items = {}, json.load(sys.stdin)
    for target in [t for kind, t in items if kind == "name"]:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: look the one name up, report, exit without cleanup
            os.close(read)
            try:
                lookup(target)
                message = ""
            except Exception as err:
                message = error(err)
            os.write(write, message.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            message = pipe.read().decode()
        os.waitpid(pid, 0)
        if message:
            failures[target] = message
    for target in [t for kind, t in items if kind == "statement"]:  # "from minilora.x import y", "import minilora.x"
        try:
            exec(target, {})
        except Exception as err:
            failures[target] = error(err)
    print(json.dumps(failures))
''')


def unresolved(items) -> dict:
    """``{target: error}`` for the ``(kind, target)`` pairs that fail after a bare ``import minilora``."""
    result = subprocess.run([sys.executable, "-c", RESOLVER], input=json.dumps(sorted(items)),
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def names_in_prose(text: str) -> set:
    """Import statements written in running text, then every other dotted ``minilora.`` name."""
    found = set()
    for match in FROM_IMPORT.finditer(text):
        for name in match.group(2).split(","):
            name = name.split(" as ")[0].strip()
            if name:
                found.add(("statement", f"from {match.group(1)} import {name}"))
    found |= {("statement", f"import {m.group(1)}") for m in PLAIN_IMPORT.finditer(text)}
    rest = PLAIN_IMPORT.sub("", FROM_IMPORT.sub("", text))
    return found | {("name", m.group(0)) for m in DOTTED.finditer(rest)}


def names_in_code(source: str) -> set:
    """The imports of a piece of Python (by its syntax tree), then the dotted names of the rest."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a fragment or a cell with IPython syntax: read it as text
        return names_in_prose(source)
    found, lines = set(), source.splitlines()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minilora"):
            found |= {("statement", f"from {node.module} import {a.name}") for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {("statement", f"import {a.name}") for a in node.names if a.name.startswith("minilora")}
        else:
            continue
        for i in range(node.lineno - 1, node.end_lineno):
            lines[i] = ""
    return found | {("name", m.group(0)) for m in DOTTED.finditer("\n".join(lines))}


def documented_names() -> dict:
    """``{(kind, target): [files that use it]}`` over README.md, docs/*.md and the notebooks."""
    uses = {}

    def add(items, where):
        for item in items:
            uses.setdefault(item, []).append(where)

    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) in ("python", "py"):
                add(names_in_code(match.group(2)), path.name)
        add(names_in_prose(FENCE.sub(lambda m: "" if m.group(1) in ("python", "py") else m.group(0), text)), path.name)
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            add(names_in_code(source) if cell["cell_type"] == "code" else names_in_prose(source), path.name)
    return uses


def test_every_minilora_name_in_the_readme_docs_and_notebooks_resolves():
    uses = documented_names()
    assert len(uses) >= 20, f"only {len(uses)} names found: is the scan still reading the docs? {sorted(uses)}"
    failures = unresolved(uses)
    report = "\n".join(f"  {target} ({', '.join(sorted(set(uses[(k, t)])))}): {failures[target]}"
                       for (k, t) in sorted(uses) for target in [t] if target in failures)
    assert not failures, ("names the docs use that fail after a bare `import minilora` (add the package to "
                          "minilora.SUBMODULES, or write the import out in the docs):\n" + report)


def test_the_resolver_can_fail():
    """The check above is only as good as its resolver: names that do not exist must fail it."""
    bad = {("name", "minilora.no_such_package"), ("name", "minilora.nn.NoSuchLayer"),
           ("statement", "from minilora.tensor import NoSuchName"), ("statement", "import minilora.no_such_module"),
           ("name", "minilora.tensor.Tensor")}  # minilora.tensor is the function, as torch.tensor
    assert sorted(unresolved(bad | {("name", "minilora.nn.Linear")})) == sorted(t for _, t in bad)


def test_the_scan_reads_imports_prose_and_code():
    assert names_in_prose("use `from minilora.peft import LoraConfig, get_peft_model` or `minilora.nn.Linear`.") == {
        ("statement", "from minilora.peft import LoraConfig"), ("statement", "from minilora.peft import get_peft_model"),
        ("name", "minilora.nn.Linear")}
    code = "import minilora.nn.functional as F\nfrom minilora.experiments import (\n    params,\n)\nx = minilora.optim.AdamW\n"
    assert names_in_code(code) == {("statement", "import minilora.nn.functional"),
                                   ("statement", "from minilora.experiments import params"),
                                   ("name", "minilora.optim.AdamW")}


PACKAGES = ["nn", "nn.functional", "optim", "models", "peft", "quant", "data", "tasks", "train", "pretrain"]


def test_import_minilora_gives_torchs_surface_lazily():
    """As ``import torch; torch.nn.Linear``: every package is an attribute after ``import minilora``
    alone, imported on first use (``import minilora`` itself loads none of them)."""
    script = textwrap.dedent(f'''
        import sys
        import minilora as ml
        loaded = sorted(m for m in sys.modules if m.startswith("minilora."))
        assert "minilora.models" not in loaded and "minilora.peft" not in loaded, loaded
        for name in {PACKAGES!r}:
            obj = ml
            for part in name.split("."):
                obj = getattr(obj, part)
            assert obj is sys.modules["minilora." + name], name
        assert ml.nn.Linear(3, 4)(ml.ones(2, 3)).shape == (2, 4)
        assert ml.optim.AdamW is sys.modules["minilora.optim"].AdamW
        assert set({PACKAGES[:1]!r}) <= set(dir(ml))
        try:
            ml.no_such_thing
        except AttributeError as err:
            assert "no attribute 'no_such_thing'" in str(err)
        else:
            raise AssertionError("minilora.no_such_thing resolved")
    ''')
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr

