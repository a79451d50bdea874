"""Every command the documentation shows names something that exists: `python -m X.Y` a module
importlib finds (found, not run; a package needs its __main__), and `python S.py`, `torchrun ...
S.py`, `bash S.sh` a file of the repository. Read: README.md, RESULTS.md, docs/*.md, the Makefile,
tools/*.sh, and the docstrings and help texts of the code. A module moved without its commands
fails here, not in a reader's shell."""
import glob
import importlib.util
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# an interpreter as the docs, the Makefile and the shell scripts spell it
PY = r"(?:\bpython3?|\$\(PY\)|\$\{?PY\}?|\"\$py\"|\$py)"
MODULE = re.compile(PY + r"\s+-m\s+([A-Za-z_][\w.]*)")
SCRIPT = re.compile(r"(?:" + PY + r"|\bbash)\s+([\w./-]+\.(?:py|sh))\b")
# torchrun's options and their values (HOST:29500, c10d), over `\` line ends, then the script
TORCHRUN = re.compile(r"\btorchrun(?:\s+(?:--?[\w-]+(?:=\S+)?|[\w.:]+|\\))*?\s+([\w./-]+\.py)\b")


def documents(root):
    """The files whose commands are checked, relative to `root`."""
    names = ["README.md", "RESULTS.md", "Makefile"] + [os.path.relpath(p, root) for p in sorted(
        glob.glob(os.path.join(root, "docs", "*.md")) + glob.glob(os.path.join(root, "tools", "*.sh")))]
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("tests", "data", "experiments",
                                                                               "__pycache__"))
        names += [os.path.relpath(os.path.join(folder, f), root) for f in sorted(files) if f.endswith(".py")]
    return [n for n in names if os.path.isfile(os.path.join(root, n))]


def commands(text):
    """([(module, line)], [(script path, line)]) of the commands in `text`."""
    def found(pattern):
        return [(m.group(1).rstrip("."), text.count("\n", 0, m.start()) + 1) for m in pattern.finditer(text)]
    return found(MODULE), found(SCRIPT) + found(TORCHRUN)


def runnable(module):
    """Whether `python -m module` finds something to run, without running it."""
    try:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations is not None:  # a package runs its __main__
            spec = importlib.util.find_spec(module + ".__main__")
    except (ImportError, ValueError):  # a parent that is not a package, or none at all
        return False
    return spec is not None


def stale(root, names):
    """['file:line: what'] for every command in `names` (relative to `root`) that names nothing."""
    out, cache = [], {}
    for name in names:
        modules, scripts = commands(open(os.path.join(root, name), encoding="utf-8").read())
        for module, line in modules:
            if module not in cache:
                cache[module] = runnable(module)
            if not cache[module]:
                out.append(f"{name}:{line}: python -m {module}: no such module")
        for script, line in scripts:
            if not os.path.isfile(os.path.join(root, script)):
                out.append(f"{name}:{line}: {script}: no such file")
    return out


def test_every_documented_command_names_something_that_exists():
    names = documents(ROOT)
    assert "README.md" in names and "docs/data.md" in names and "Makefile" in names
    assert not stale(ROOT, names), "commands naming a module or file that is not there:\n" + "\n".join(
        stale(ROOT, names))


def test_the_scan_sees_the_commands_and_a_stale_path(tmp_path):
    """A planted stale module and script are reported, the live ones beside them are not (a check
    that could not fail would prove nothing)."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "main_rgb.py").write_text("")
    (tmp_path / "docs" / "x.md").write_text(
        "Make the data with `python -m datasets.synthetic --outDir D` (moved), then\n"
        "```\n"
        "python -m datasets.prepare.synthetic --outDir D\n"
        "python main_rgb.py --datasetDir D\n"
        "torchrun --standalone --nproc_per_node 2 main_old.py --device cpu\n"
        "$(PY) -m pytest -q && bash tools/gone.sh\n"
        "```\n")
    modules, scripts = commands((tmp_path / "docs" / "x.md").read_text())
    assert modules == [("datasets.synthetic", 1), ("datasets.prepare.synthetic", 3), ("pytest", 6)]
    assert scripts == [("main_rgb.py", 4), ("tools/gone.sh", 6), ("main_old.py", 5)]
    assert stale(str(tmp_path), ["docs/x.md"]) == [
        "docs/x.md:1: python -m datasets.synthetic: no such module",
        "docs/x.md:6: tools/gone.sh: no such file",
        "docs/x.md:5: main_old.py: no such file"]


@pytest.mark.parametrize("module, expected", [
    ("datasets.prepare", True),            # a package with a __main__
    ("datasets.prepare.synthetic", True),
    ("datasets", False),                   # a package without one
    ("datasets.prepare.nothing", False),
    ("datasets.gtea61.sub", False),        # under a module, not a package
])
def test_runnable(module, expected):
    assert runnable(module) is expected


def test_every_make_target_is_defined_and_listed_by_make_help():
    """A target declared .PHONY but never defined does nothing and exits 0; `make help` lists
    every target with its line of help."""
    import shutil
    import subprocess
    text = open(os.path.join(ROOT, "Makefile"), encoding="utf-8").read()
    phony = re.search(r"^\.PHONY:(.*)$", text, re.M).group(1).split()
    defined = re.findall(r"^([a-z][\w-]*):(?!=)", text, re.M)
    assert {"help", "test", "demo", "clean-demo"} <= set(phony)
    assert not set(phony) - set(defined), f"declared, never defined: {set(phony) - set(defined)}"
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    # a make of its own: under `make test` the parent's MAKEFLAGS / MAKELEVEL would add "Entering directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    listed = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True,
                            env=env).stdout
    names = [line.split()[0] for line in listed.splitlines() if line.startswith("  ")]
    assert sorted(names) == sorted(phony), listed
    # clean-demo removes the demo's outputs and nothing else
    dry = subprocess.run(["make", "-n", "clean-demo"], cwd=ROOT, capture_output=True, text=True, check=True,
                         env=env).stdout
    assert dry.split() == ["rm", "-rf", "experiments/demo_ms_op", "data/synthetic_gtea61"], dry
