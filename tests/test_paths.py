"""Defaults that let the usage line run as typed: --datasetDir from GTEA61_DIR, data/GTEA61 or make
demo's data/synthetic_gtea61 (each from a temporary working directory), and the stage-2 error that
names the stage-1 command and make demo's stage 1."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from utils.paths import default_dataset_dir
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY = ["--pretrained", "none", "--frameSize", "64", "--seqLen", "4", "--trainBatchSize", "4", "--memSize", "16",
        "--valBatchSize", "8", "--numWorkers", "0", "--precision", "fp32", "--camVideos", "0", "--numEpochs", "1"]


def resolve(monkeypatch, cwd, env=None):
    """default_dataset_dir() run in `cwd` -> (folder, printed lines)."""
    monkeypatch.chdir(cwd)
    if env is None:
        monkeypatch.delenv("GTEA61_DIR", raising=False)
    else:
        monkeypatch.setenv("GTEA61_DIR", str(env))
    lines = []
    return default_dataset_dir(announce=lines.append), lines


def make_synthetic_marker(cwd):
    d = cwd / "data" / "synthetic_gtea61"
    d.mkdir(parents=True)
    (d / ".complete").write_text("{}")  # what datasets.prepare.synthetic writes last
    return d


def test_environment_variable_comes_first(monkeypatch, tmp_path):
    real = tmp_path / "elsewhere" / "gtea"
    real.mkdir(parents=True)
    (tmp_path / "data" / "GTEA61").mkdir(parents=True)
    make_synthetic_marker(tmp_path)
    folder, lines = resolve(monkeypatch, tmp_path, env=real)
    assert folder == str(real)
    assert len(lines) == 1 and "GTEA61_DIR" in lines[0] and "SYNTHETIC" not in lines[0]


def test_environment_variable_naming_no_folder_is_an_error(monkeypatch, tmp_path):
    (tmp_path / "data" / "GTEA61").mkdir(parents=True)  # no silent fallback past a wrong variable
    with pytest.raises(UserError, match="GTEA61_DIR=.*nope.*no such folder"):
        resolve(monkeypatch, tmp_path, env=tmp_path / "nope")


def test_data_gtea61_in_the_working_directory(monkeypatch, tmp_path):
    (tmp_path / "data" / "GTEA61").mkdir(parents=True)
    make_synthetic_marker(tmp_path)
    folder, lines = resolve(monkeypatch, tmp_path)
    assert folder == os.path.join("data", "GTEA61")
    assert os.path.samefile(folder, tmp_path / "data" / "GTEA61")
    assert len(lines) == 1 and "SYNTHETIC" not in lines[0]


def test_synthetic_fallback_says_so(monkeypatch, tmp_path):
    make_synthetic_marker(tmp_path)
    folder, lines = resolve(monkeypatch, tmp_path)
    assert os.path.samefile(folder, tmp_path / "data" / "synthetic_gtea61")
    assert len(lines) == 1 and "SYNTHETIC" in lines[0] and "not GTEA-61 numbers" in lines[0]


def test_unfinished_synthetic_dataset_is_not_used(monkeypatch, tmp_path):
    (tmp_path / "data" / "synthetic_gtea61").mkdir(parents=True)  # generation interrupted: no marker
    with pytest.raises(UserError):
        resolve(monkeypatch, tmp_path)


def test_none_names_all_three_and_make_demo(monkeypatch, tmp_path):
    with pytest.raises(UserError) as e:
        resolve(monkeypatch, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    for needle in ("GTEA61_DIR", os.path.join("data", "GTEA61"), os.path.join("data", "synthetic_gtea61"),
                   "make demo", "--datasetDir"):
        assert needle in msg, needle


def run_in(cwd, *args, env_var=None):
    env = {k: v for k, v in os.environ.items() if k != "GTEA61_DIR"}
    if env_var is not None:
        env["GTEA61_DIR"] = str(env_var)
    return subprocess.run([PY, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", ["rgb", "flow", "twostream", "ms", "ms_op", "evaluate", "replicate"])
def test_every_script_without_dataset_stops_with_the_error(monkeypatch, tmp_path, capsys, kind):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GTEA61_DIR", raising=False)
    if kind == "evaluate":
        import evaluate
        with pytest.raises(UserError, match="no --datasetDir given"):
            evaluate.parse_args(["--model", "rgb", "--modelStateDict", "x.pth"])
    elif kind == "replicate":
        import replicate
        assert replicate.cli(["--table", "1"]) == 2
        assert capsys.readouterr().err.startswith("error: no --datasetDir given")
    else:
        from utils.experiment import run
        with pytest.raises(UserError, match="no --datasetDir given"):
            run(kind, [])
    assert os.listdir(tmp_path) == []  # nothing written


def test_usage_line_without_dataset_is_one_line(tmp_path):
    p = run_in(tmp_path, ROOT / "main_ms_op.py", "--stage", "2", "--lr", "1e-4", "--seqLen", "16")
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert err[0].startswith("error: no --datasetDir given") and "`make demo`" in err[0], err[0]
    assert not (tmp_path / "experiments").exists()


@pytest.fixture(scope="module")
def demo_cwd(tmp_path_factory):
    """A working directory holding a (tiny) data/synthetic_gtea61 as `make demo` leaves it."""
    cwd = tmp_path_factory.mktemp("cwd")
    subprocess.run([PY, "-m", "datasets.prepare.synthetic", "--outDir", cwd / "data" / "synthetic_gtea61",
                    "--classes", "3", "--instances", "1", "--size", "80x60"], cwd=ROOT, check=True, capture_output=True)
    return cwd


@pytest.mark.filterwarnings("ignore")
def test_usage_line_runs_on_the_synthetic_fallback(demo_cwd):
    """Stage 1 then `--stage 2 --lr 1e-4` with no --datasetDir, --outDir or --stage1Dict."""
    p1 = run_in(demo_cwd, ROOT / "main_ms_op.py", "--stage", "1", *TINY)
    assert p1.returncode == 0, p1.stderr[-3000:]
    assert "--datasetDir not given: using data/synthetic_gtea61, the SYNTHETIC" in p1.stdout.splitlines()[0]
    assert (demo_cwd / "experiments" / "main_ms_op_seq4" / "stage1" / "best_model.pth").is_file()
    p2 = run_in(demo_cwd, ROOT / "main_ms_op.py", "--stage", "2", "--lr", "1e-4", *TINY)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "SYNTHETIC" in p2.stdout.splitlines()[0]
    assert (demo_cwd / "experiments" / "main_ms_op_seq4" / "stage2" / "summary.json").is_file()
    # GTEA61_DIR wins over the synthetic fallback, and evaluate.py uses the same default
    p3 = run_in(demo_cwd, ROOT / "evaluate.py", "--model", "ms_op", "--modelStateDict",
                demo_cwd / "experiments" / "main_ms_op_seq4" / "stage2" / "best_model.pth", "--numWorkers", "0",
                env_var=demo_cwd / "data" / "synthetic_gtea61")
    assert p3.returncode == 0, p3.stderr[-3000:]
    announce = next(ln for ln in p3.stdout.splitlines() if ln.startswith("--datasetDir not given"))
    assert "(from GTEA61_DIR)" in announce and "SYNTHETIC" not in announce
    # the checkpoint itself says that it was trained on the synthetic generator's data
    assert "trained on SYNTHETIC data" in p3.stdout


def test_stage2_without_stage1_names_the_command_and_the_demo(demo_cwd):
    p = run_in(demo_cwd, ROOT / "main_ms_op.py", "--stage", "2", "--lr", "1e-4", "--outDir", "runs/x", *TINY)
    err = p.stderr.strip().splitlines()[-1:]  # after the dataset's warning about short videos
    assert p.returncode == 2 and err[0].startswith("error: stage 2 needs"), p.stderr[-2000:]
    want = "python main_ms_op.py --stage 1 --seqLen 4 --outDir runs/x --memSize 16 --frameSize 64 --pretrained none"
    assert os.path.join("runs/x", "stage1", "best_model.pth") in err[0] and want in err[0], err[0]
    assert "--datasetDir" not in err[0].split("`")[1]  # the default dataset needs no argument
    assert "make demo" not in err[0]

    # with make demo's stage 1 present (any stage-1 checkpoint will do here)
    demo = demo_cwd / "experiments" / "demo_ms_op" / "stage1"
    demo.mkdir(parents=True)
    made = demo_cwd / "experiments" / "main_ms_op_seq4" / "stage1" / "best_model.pth"
    if not made.is_file():  # this test run alone
        assert run_in(demo_cwd, ROOT / "main_ms_op.py", "--stage", "1", *TINY).returncode == 0
    shutil.copy(made, demo / "best_model.pth")
    try:
        p = run_in(demo_cwd, ROOT / "main_ms_op.py", "--stage", "2", "--outDir", "runs/x", *TINY)
        err = p.stderr.strip().splitlines()[-1:]
        assert p.returncode == 2 and err[0].startswith("error: stage 2 needs"), p.stderr[-2000:]
        path = os.path.join("experiments", "demo_ms_op")
        assert f"--stage1Dict {os.path.join(path, 'stage1', 'best_model.pth')}" in err[0], err[0]
        assert f"--outDir {path}" in err[0], err[0]  # stage 2 reads <outDir>/stage1 (the usage-line test)
    finally:
        shutil.rmtree(demo_cwd / "experiments" / "demo_ms_op")
