"""The packages are layered: models/ and datasets/ are the bottom, utils/ and tools/ sit on them,
the scripts at the top. An AST walk of every module's imports fails on an import cycle, on a
package module importing a top-level script, and on an import inside a function that is not
marked as deliberate (`# lazy: <why>` on its line: a heavy optional dependency)."""
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("models", "datasets", "utils", "tools")


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
