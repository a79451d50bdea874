"""The packages are layered. Bottom to top:

    models            the networks: import nothing of the project outside models/
    datasets          the loaders (datasets/*.py) and what they read back of the tools' output
    utils             training, evaluation and the scripts' common parts
    datasets.prepare  the data workshop: video preparation and the synthetic generators
    tools             the verifier, the benches, replicate.py's plan, the demo
    (scripts)         main_*.py, evaluate.py, predict.py, replicate.py, bench.py

A module imports its own layer and those below it, never one above (the paper's code reads
without the workshop's). An AST walk of every module's imports fails on an upward import, on an
import cycle, on a package module importing a top-level script, and on an import inside a
function that is not marked as deliberate (`# lazy: <why>` on its line: a heavy optional
dependency)."""
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("models", "datasets", "utils", "tools")
LAYERS = ("models", "datasets", "utils", "datasets.prepare", "tools")  # bottom to top; the scripts above all


def modules():
    """{module name: path} of the repository's own Python files (tests excluded)."""
    found = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("tests", "data", "experiments", "__pycache__"))
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                found[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, f)
    return found


def imports(path, known):
    """[(imported module, line, inside a function?, marked lazy?)] of one file."""
    text = open(path).read()
    lines = text.splitlines()
    tree = ast.parse(text)
    inner = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    inner.add(id(sub))

    def resolve(name):
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name

    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside the same package
                base = ".".join(path_module(path, known).split(".")[:-node.level] if not path.endswith("__init__.py")
                                else path_module(path, known).split(".")[:len(path_module(path, known).split(".")) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module
            # `from pkg import sub` names the submodule; `from pkg import name` the package
            names = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        for n in set(names):
            r = resolve(n)
            if r:
                out.append((r, node.lineno, id(node) in inner, "# lazy:" in lines[node.lineno - 1]))
    return out


def path_module(path, known):
    return next(m for m, p in known.items() if p == path)


def graph():
    known = modules()
    return known, {m: sorted({r for r, *_ in imports(p, known) if r != m}) for m, p in known.items()}


def is_script(module):
    return module.split(".")[0] not in PACKAGES


def layer(module):
    """The index in LAYERS of the layer `module` is in (the longest that names it: datasets.prepare.x
    is in datasets.prepare, not datasets); len(LAYERS) for a top-level script."""
    names = [n for n in LAYERS if module == n or module.startswith(n + ".")]
    return LAYERS.index(max(names, key=len)) if names else len(LAYERS)


def layer_name(index):
    return LAYERS[index] if index < len(LAYERS) else "scripts"


def test_no_import_cycle():
    known, edges = graph()
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in known:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_packages_never_import_scripts():
    known, edges = graph()
    upward = [(m, r) for m in known if not is_script(m) for r in edges[m] if is_script(r)]
    assert not upward, f"package modules importing top-level scripts: {upward}"


def test_every_layer_is_there():
    known = modules()
    assert [n for n in LAYERS if n not in known] == [], "a layer of LAYERS is no package any more"


def upward_imports():
    known, edges = graph()
    return [f"{m} ({layer_name(layer(m))}) imports {r} ({layer_name(layer(r))})"
            for m in known for r in edges[m] if layer(r) > layer(m)]


def test_no_import_of_a_layer_above():
    upward = upward_imports()
    assert not upward, (f"upward imports (layers, bottom to top: {', '.join(LAYERS)}, scripts):\n"
                        + "\n".join(upward))


def test_imports_at_the_top():
    known = modules()
    inside = [f"{os.path.relpath(p, ROOT)}:{line} imports {r}" for m, p in known.items()
              for r, line, inner, lazy in imports(p, known) if inner and not lazy]
    assert not inside, "imports inside functions (move them to the top, or mark `# lazy: <why>`):\n" + "\n".join(inside)


def test_the_walk_sees_a_cycle(tmp_path, monkeypatch):
    """The walk itself: two modules importing each other are a cycle, a package importing a
    script is upward (a check that could not fail would prove nothing)."""
    pkg = tmp_path / "utils"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from utils.b import f\n")
    (pkg / "b.py").write_text("def f():\n    import utils.a\n    import script\n")
    (tmp_path / "script.py").write_text("import utils.a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    with __import__("pytest").raises(AssertionError, match="cycles"):
        test_no_import_cycle()
    with __import__("pytest").raises(AssertionError, match="upward|top-level"):
        test_packages_never_import_scripts()
    with __import__("pytest").raises(AssertionError, match="inside functions"):
        test_imports_at_the_top()


def test_the_walk_sees_an_upward_import(tmp_path, monkeypatch):
    """Each layer importing the one above it is reported, and only that: the same imports
    downward are not."""
    for pkg in ("models", "datasets", "datasets/prepare", "utils", "tools"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "models" / "net.py").write_text("import datasets.loader\n")
    (tmp_path / "datasets" / "loader.py").write_text("from utils import train\n")
    (tmp_path / "utils" / "train.py").write_text("def f():\n    from datasets.prepare import gen  # lazy: as in a tool\n")
    (tmp_path / "datasets" / "prepare" / "gen.py").write_text("import tools.check\nimport datasets.loader\n")
    (tmp_path / "tools" / "check.py").write_text("from datasets.prepare import gen\nimport utils.train\n")
    (tmp_path / "script.py").write_text("import tools.check\nimport models.net\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    with __import__("pytest").raises(AssertionError, match="upward imports"):
        test_no_import_of_a_layer_above()
    assert sorted(upward_imports()) == ["datasets.loader (datasets) imports utils.train (utils)",
                                "datasets.prepare.gen (datasets.prepare) imports tools.check (tools)",
                                "models.net (models) imports datasets.loader (datasets)",
                                "utils.train (utils) imports datasets.prepare.gen (datasets.prepare)"]
