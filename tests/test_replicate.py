"""replicate.py: the command grid of Tables 1-3 (dry run), argument checks, tables and crossval.md
from finished results, failure handling, and a real tiny grid that is rerun after losing a result."""
import contextlib
import io
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path.insert(0, str(ROOT))
import replicate  # noqa: E402

TINY_EXTRA = ("--trainBatchSize 4 --valBatchSize 4 --numWorkers 0 --pretrained none --precision fp32 "
              "--memSize 16 --camVideos 0")


def rep(*args, timeout=600):
    """replicate.py as a user runs it."""
    return subprocess.run([PY, "replicate.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def call(*args):
    """replicate.cli in this process (no second torch import: the dry-run tests take milliseconds)."""
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = replicate.cli([str(a) for a in args])
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def dry(*args):
    p = call(*args, "--dryRun")
    assert p.returncode == 0, p.stderr[-3000:]
    return [shlex.split(line) for line in p.stdout.splitlines() if line.strip()]


def opt(cmd, name, n=1):
    """Value(s) of --name in an argv list (None when absent)."""
    if name not in cmd:
        return None
    i = cmd.index(name)
    return cmd[i + 1] if n == 1 else cmd[i + 1:i + 1 + n]


def values(cmd, name):
    i = cmd.index(name) + 1
    out = []
    while i < len(cmd) and not cmd[i].startswith("--"):
        out.append(cmd[i])
        i += 1
    return out


def by_out(cmds):
    return {opt(c, "--outDir"): c for c in cmds}


def result_dir(cmd):
    stage = opt(cmd, "--stage") or "1"
    return os.path.join(opt(cmd, "--outDir"), f"stage{stage}")


def assert_one_line_error(p, needle=""):
    assert p.returncode == 2, (p.returncode, p.stdout[-1000:], p.stderr[-2000:])
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), p.stderr
    assert needle in err[0], err[0]


# ----------------------------------------------------------------------------- dry run

def test_dry_run_lists_every_cell_with_its_arguments(tmp_path):
    out = str(tmp_path / "rep")
    cmds = dry("--table", "all", "--datasetDir", "DATA", "--outDir", out)
    assert not os.path.exists(out), "--dryRun must not write anything"
    assert len(cmds) == 31  # Table 1: 4 stage-1 + 7; Tables 2-3: 2 x (9 + OP-only)
    outs = by_out(cmds)
    assert len(outs) == len(cmds), "every cell has its own folder"
    for c in cmds:
        assert c[0] == PY and os.path.basename(c[1]) in replicate.SCRIPT_KIND
        assert "--resume" in c and "--overwrite" not in c
        assert opt(c, "--datasetDir") == "DATA"
    # commands that read a checkpoint come after the command that writes it
    position = {result_dir(c): i for i, c in enumerate(cmds)}
    for i, c in enumerate(cmds):
        for name in ("--stage1Dict", "--flowModel", "--rgbModel"):
            if name in c:
                assert os.path.basename(opt(c, name)) == "best_model.pth"
                assert position[os.path.dirname(opt(c, name))] < i, (name, c)

    stage1 = {}
    for c in cmds:
        if os.path.basename(c[1]) == "main_rgb.py" and opt(c, "--stage") == "1":
            key = (int(opt(c, "--seqLen")), "--noAttention" not in c)
            assert key not in stage1, "stage 1 runs once per clip length and attention setting"
            stage1[key] = os.path.join(result_dir(c), "best_model.pth")
    assert set(stage1) == {(7, True), (7, False), (16, True), (16, False)}

    for table, L in ((2, 7), (3, 16)):
        grid = [c for c in cmds if f"{os.sep}grid{os.sep}" in opt(c, "--outDir") and opt(c, "--seqLen") == str(L)]
        seen = set()
        for c in grid:
            script = os.path.basename(c[1])
            assert script in ("main_ms.py", "main_ms_op.py")
            assert opt(c, "--stage") == "2"
            assert opt(c, "--stage1Dict") == stage1[(L, True)]
            assert "--noAttention" not in c
            variant = ("regression" if "--regression" in c else "op_only" if "--noMS" in c
                       else "ms_op" if script == "main_ms_op.py" else "ms")
            if variant == "regression":
                assert script == "main_ms.py"
            seen.add((variant, float(opt(c, "--lr"))))
        assert seen == {(v, lr) for v in ("ms", "regression", "ms_op") for lr in (1e-3, 1e-4, 1e-5)} | {
            ("op_only", 1e-4)}, table

    for L in (7, 16):
        conv = outs[os.path.join(out, "table1", f"convlstm_seq{L}")]
        att = outs[os.path.join(out, "table1", f"attention_seq{L}")]
        two = outs[os.path.join(out, "table1", f"twostream_seq{L}")]
        assert os.path.basename(conv[1]) == "main_rgb.py" and "--noAttention" in conv
        assert opt(conv, "--stage1Dict") == stage1[(L, False)]
        assert os.path.basename(att[1]) == "main_rgb.py" and "--noAttention" not in att
        assert opt(att, "--stage1Dict") == stage1[(L, True)]
        for c in (conv, att):
            assert opt(c, "--stage") == "2" and float(opt(c, "--lr")) == 1e-4 and opt(c, "--seqLen") == str(L)
        assert os.path.basename(two[1]) == "main_twostream.py" and opt(two, "--seqLen") == str(L)
        assert opt(two, "--rgbModel") == os.path.join(result_dir(att), "best_model.pth")
        assert opt(two, "--flowModel") == os.path.join(out, "table1", "flow", "stage1", "best_model.pth")
    flows = [c for c in cmds if os.path.basename(c[1]) == "main_flow.py"]
    assert len(flows) == 1 and "--seqLen" not in flows[0]


def test_dry_run_options_reach_every_command():
    cmds = dry("--table", "1", "--datasetDir", "D", "--epochs1", "30", "--epochs2", "15", "--epochsFlow", "75",
               "--epochsTwoStream", "5", "--frameSize", "112", "--seed", "3", "--pretrained", "none",
               "--extra", "--trainBatchSize 8 --numWorkers 2")
    assert len(cmds) == 11
    for c in cmds:
        assert c[-4:] == ["--trainBatchSize", "8", "--numWorkers", "2"], "--extra comes last, verbatim"
        assert opt(c, "--frameSize") == "112" and opt(c, "--seed") == "3" and opt(c, "--pretrained") == "none"
        script, stage = os.path.basename(c[1]), opt(c, "--stage")
        if script == "main_flow.py":
            assert opt(c, "--numEpochs") == "75" and values(c, "--stepSize") == ["15", "30", "50"]
        elif script == "main_twostream.py":
            assert opt(c, "--numEpochs") == "5" and "--stepSize" not in c
        elif stage == "1":
            assert opt(c, "--numEpochs") == "30" and values(c, "--stepSize") == ["3", "8", "15"]
        else:
            assert opt(c, "--numEpochs") == "15" and values(c, "--stepSize") == ["3", "8"]
    kept = dry("--table", "1", "--datasetDir", "D", "--epochs1", "30", "--paperMilestones")
    assert all("--stepSize" not in c for c in kept)
    default = dry("--table", "1", "--datasetDir", "D")
    assert all("--numEpochs" not in c and "--stepSize" not in c and "--seed" not in c for c in default)


def test_dry_run_table_selection_clip_lengths_and_lrs():
    t2 = dry("--table", "2", "--datasetDir", "D")
    assert len(t2) == 11 and {opt(c, "--seqLen") for c in t2} == {"7"}
    t3 = dry("--table", "3", "--datasetDir", "D", "--seqLens", "8", "--lrs", "3e-4", "1e-4")
    assert {opt(c, "--seqLen") for c in t3} == {"8"}
    assert {opt(c, "--lr") for c in t3 if opt(c, "--stage") == "2"} == {"3e-4", "1e-4"}
    assert sum("--noMS" in c for c in t3) == 1
    no_op = dry("--table", "2", "--datasetDir", "D", "--lrs", "1e-3")
    assert len(no_op) == 4 and all("--noMS" not in c for c in no_op), "OP-only runs at lr 1e-4 only"
    t1 = dry("--table", "1", "--datasetDir", "D", "--seqLens", "16")
    assert {opt(c, "--seqLen") for c in t1 if opt(c, "--seqLen")} == {"16"}
    assert replicate.map_columns([1, 2, 3], [4, 16]) == {7: 4, 16: 16}
    assert replicate.map_columns([1, 2, 3], [16, 4]) == {7: 4, 16: 16}
    assert replicate.map_columns([3], [8]) == {16: 8}
    assert replicate.map_columns([1], None) == {7: 7, 16: 16}
    assert replicate.fmt_lr(1e-4) == "1e-4" and replicate.fmt_lr(2.5e-4) == "2.5e-4"
    assert replicate.scaled_milestones([25, 75, 150], 1, 300) == [1]


def test_dry_run_crossval_has_four_leave_one_user_out_splits(tmp_path):
    out = str(tmp_path / "cv")
    cmds = dry("--table", "2", "--datasetDir", "D", "--outDir", out, "--lrs", "1e-4", "--crossval")
    assert len(cmds) == 4 * 5
    for test in ("S1", "S2", "S3", "S4"):
        split = [c for c in cmds if opt(c, "--outDir").startswith(os.path.join(out, "crossval", f"test_{test}") + os.sep)]
        assert len(split) == 5
        for c in split:
            assert values(c, "--testUsers") == [test]
            assert sorted(values(c, "--trainUsers") + [test]) == ["S1", "S2", "S3", "S4"]
            if "--stage1Dict" in c:
                assert opt(c, "--stage1Dict").startswith(os.path.join(out, "crossval", f"test_{test}") + os.sep)


@pytest.mark.parametrize("args, needle", [
    (["--extra", "--lr 1e-2"], "--lr"),
    (["--extra", "--seqLe 4"], "--seqLen"),
    (["--extra", "--noSuchOption 1"], "--noSuchOption"),
    (["--seqLens", "7", "16"], "at most 1"),
    (["--seqLens", "3"], "seqLen"),                       # the OP head needs 4 frames: main_ms_op.py refuses
    (["--lrs", "0"], "--lrs"),
    (["--frameSize", "64", "--extra", "--frameSize 64"], "once"),
])
def test_bad_arguments_give_one_line_errors(args, needle):
    assert_one_line_error(call("--table", "2", "--datasetDir", "D", "--dryRun", *args), needle)


def test_errors_from_the_command_line(tmp_path):
    assert_one_line_error(rep("--table", "2", "--datasetDir", tmp_path / "nope", "--outDir", tmp_path / "o"),
                          "--datasetDir")
    assert not (tmp_path / "o").exists()
    assert_one_line_error(rep("--table", "2", "--datasetDir", "D", "--dryRun", "--extra", "--bogus 1"), "--bogus")
    assert_one_line_error(rep("--table", "4", "--datasetDir", "D", "--dryRun"), "--table")
    # no --datasetDir and no default dataset in the working directory
    env = {k: v for k, v in os.environ.items() if k != "GTEA61_DIR"}
    assert_one_line_error(subprocess.run([PY, ROOT / "replicate.py", "--table", "1", "--dryRun"], cwd=tmp_path,
                                         env=env, capture_output=True, text=True, timeout=120), "--datasetDir")


def test_paper_schedules_are_the_papers():
    """The schedules the plan scales, against docs/design.md §1-§2 (Ego-RNN's scripts) by hand."""
    from models.recipe import DEFAULTS
    assert replicate.PAPER_SCHEDULE == {"stage1": (300, [25, 75, 150]), "stage2": (150, [25, 75]),
                                        "flow": (750, [150, 300, 500]), "twostream": (250, None)}
    assert DEFAULTS["rgb"][2]["lr"] == replicate.TABLE1_LR == 1e-4


# ----------------------------------------------------------------------------- tables from results

def fake_results(cmds, accuracy):
    """summary.json for every command, as the scripts write them (nothing is trained)."""
    for i, c in enumerate(cmds):
        d = result_dir(c)
        os.makedirs(d, exist_ok=True)
        best, final = accuracy(i, c)
        with open(os.path.join(d, "summary.json"), "w") as f:
            json.dump({"best_test_accuracy": best, "final_test_accuracy": final, "best_epoch": 3, "epochs": 5,
                       "num_test_videos": 116, "seconds": 1.0, "dataset": opt(c, "--datasetDir")}, f)


def test_tables_and_crossval_from_finished_cells(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / ".complete").write_text(json.dumps({"version": 1, "layout": "course", "classes": 8, "instances": 3,
                                                "users": ["S1", "S2", "S3", "S4"], "seed": 0}))
    out = tmp_path / "rep"
    args = ["--table", "all", "--datasetDir", data, "--outDir", out, "--crossval", "--epochs1", "5",
            "--epochs2", "5", "--epochsFlow", "5", "--epochsTwoStream", "5"]
    cmds = dry(*args)
    assert len(cmds) == 4 * 31
    split_no = {"S1": 1, "S2": 2, "S3": 3, "S4": 4}
    fake_results(cmds, lambda i, c: (10.0 * split_no[values(c, "--testUsers")[0]] + (i % 31) / 10, 5.0))
    p = call(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "0 to run" in p.stdout and "[1/" not in p.stdout, "finished cells are not launched"
    cv = (out / "crossval.md").read_text()
    assert "SYNTHETIC" in cv and "not GTEA-61" in cv
    # cell 0 of every split: 10, 20, 30, 40 (+0.0)
    xs = [10.0, 20.0, 30.0, 40.0]
    rows = [ln for ln in cv.splitlines() if ln.startswith("| 1 | Two stream") and "7 frames" in ln]
    assert rows, cv
    for split in ("S1", "S2", "S3", "S4"):
        t = (out / "crossval" / f"test_{split}" / "table2.md").read_text()
        assert f"test {split}" in t
    mean_std = f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"
    ms_rows = [ln for ln in cv.splitlines() if "| Ego-rnn + MS Task |" in ln and "lr 1e-3" in ln]
    assert len(ms_rows) == 2 and all("5.00 ± 0.00" in ln and "| 4 |" in ln for ln in ms_rows), ms_rows
    first = [c for c in cmds[:31]]
    k = next(i for i, c in enumerate(first) if "twostream_seq7" in opt(c, "--outDir"))
    expect = [10.0 * s + k / 10 for s in (1, 2, 3, 4)]
    assert f"{statistics.mean(expect):.2f} ± {statistics.stdev(expect):.2f}" in rows[0], (rows[0], mean_std)
    for t in (1, 2, 3):
        md = (out / "crossval" / "test_S1" / f"table{t}.md").read_text()
        assert "SYNTHETIC" in md and "not GTEA-61 numbers" in md and "Epochs: stage 1: 5 (paper 300)" in md
        assert (out / "crossval" / "test_S1" / "tables.png").read_bytes()[:4] == b"\x89PNG"


def test_fixed_split_tables_layout_and_gtea61_caption(tmp_path):
    data = tmp_path / "gtea61"
    data.mkdir()
    out = tmp_path / "rep"
    args = ["--table", "all", "--datasetDir", data, "--outDir", out, "--lrs", "1e-3", "1e-4"]
    cmds = dry(*args)
    done = [c for c in cmds if not opt(c, "--outDir").endswith("op_only_seq7_lr1e-4")]
    assert len(done) == len(cmds) - 1
    fake_results(done, lambda i, c: (50.0, 45.5))
    p = call(*args)
    # the cell without a result is launched and fails (the dataset folder is empty): reported, exit 1
    assert p.returncode == 1, p.stderr[-3000:]
    assert "1 cell(s) did not finish" in p.stderr and "grid/op_only_seq7_lr1e-4: failed: exit 2: error:" in p.stderr
    t1 = (out / "table1.md").read_text()
    assert "Dataset: GTEA-61" in t1 and "SYNTHETIC" not in t1 and "not GTEA-61" not in t1
    lines = [ln for ln in t1.splitlines() if ln.startswith("|")]
    assert lines[0].count("|") == 8 and "7 frames: paper" in lines[0] and "16 frames: final" in lines[0]
    assert lines[2] == "| ConvLSTM | 52.59 | 50.00 | 45.50 | 57.76 | 50.00 | 45.50 |"
    assert lines[4] == "| Temporal-warp flow | 42.24 | 50.00 | 45.50 | 42.24 | 50.00 | 45.50 |"
    assert "Epochs: stage 1: 5 (paper 300); stage 2: 5 (paper 150); flow: 5 (paper 750); two-stream: 5 (paper 250)." in t1
    t2 = (out / "table2.md").read_text()
    rows = {ln.split("|")[1].strip(): [x.strip() for x in ln.split("|")[2:-1]]
            for ln in t2.splitlines() if ln.startswith("| Ego")}
    assert rows["Ego-rnn + MS Task"] == ["7", "50.00", "45.50", "56", "50.00", "45.50", "44", "-", "-"]
    assert rows["Ego-rnn + MS Task + Order Task"][:3] == ["8", "50.00", "45.50"]
    op = next(v for k, v in rows.items() if k.startswith("Ego-rnn + Order Task"))
    assert op == ["-", "-", "-", "-", "-", "-", "-", "-", "-"]
    assert "Not finished:" in t2 and "`grid/op_only_seq7_lr1e-4`: failed" in t2
    t3 = (out / "table3.md").read_text()
    assert "16 frames" in t3 and "| Ego-rnn + MS Task | 11 | 50.00 | 45.50 | 65 |" in t3
    res = json.loads((out / "results.json").read_text())
    status = {c["key"]: c["status"] for c in res["cells"]}
    assert status["grid/ms_seq7_lr1e-4"] == "finished earlier" and status["grid/op_only_seq7_lr1e-4"] == "failed"
    assert "grid/ms_seq7_lr1e-5" not in status
    assert (out / "tables.png").read_bytes()[:4] == b"\x89PNG"


def test_tables_only_writes_the_finished_cells_and_trains_nothing(tmp_path):
    data = tmp_path / "gtea61"
    data.mkdir()
    out = tmp_path / "rep"
    args = ["--table", "2", "--datasetDir", data, "--outDir", out, "--lrs", "1e-4"]
    cmds = dry(*args)
    done = [c for c in cmds if "grid/ms_seq7_lr1e-4" in opt(c, "--outDir")]
    fake_results(done, lambda i, c: (61.25, 40.5))
    p = call(*args, "--tablesOnly")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "1/5 cells finished" in p.stdout and "[1/" not in p.stdout and "progress:" not in p.stdout
    assert not (out / "logs").exists(), "--tablesOnly launched a cell"
    rows = {ln.split("|")[1].strip(): [x.strip() for x in ln.split("|")[2:-1]]
            for ln in (out / "table2.md").read_text().splitlines() if ln.startswith("| Ego")}
    assert rows["Ego-rnn + MS Task"][3:6] == ["56", "61.25", "40.50"], rows  # lr 1e-4 column
    assert rows["Ego-rnn + MS Task + Order Task"][3:6] == ["57", "-", "-"], rows
    status = {c["key"]: c["status"] for c in json.loads((out / "results.json").read_text())["cells"]}
    assert status["grid/ms_seq7_lr1e-4"] == "finished" and status["grid/ms_op_seq7_lr1e-4"] == "not run"


def test_progress_line_counts_cells_and_weighs_the_time_left_by_epochs():
    from tools.replicate_plan import Cell, progress_line
    a = Cell("shared/a", "main_rgb.py", ["--numEpochs", "30"], "o/a", 1, role="stage1")
    b = Cell("grid/b", "main_ms.py", ["--numEpochs", "15"], "o/b", 2, role="stage2")
    c = Cell("table1/flow", "main_flow.py", [], "o/c", 1, role="flow")  # paper default: 750 epochs
    d = Cell("grid/d", "main_ms.py", ["--numEpochs", "15"], "o/d", 2, role="stage2")
    a.status, d.status = "done", "failed"
    # 600 s for 30 epochs; b (running, 15) and c (750) still to train: 600 x 765 / 30 = 15300 s
    assert progress_line([a, b, c, d], ["grid/b"], 600.0, 30) == \
        "progress: 1/4 cells done, running grid/b, elapsed 0:10:00, about 4:15:00 left"
    assert progress_line([a, b, c, d], ["grid/b"], 5.0, 0).endswith("elapsed 0:00:05, time left: known when a "
                                                                    "cell has finished")


def test_failed_stage1_skips_its_dependents(tmp_path):
    data = tmp_path / "gtea"
    data.mkdir()
    p = call("--table", "2", "--lrs", "1e-4", "--datasetDir", data, "--outDir", tmp_path / "o")
    assert p.returncode == 1
    assert "shared/ego_rnn_stage1_seq7: failed: exit 2: error:" in p.stderr
    assert p.stderr.count(": skipped: needs shared/ego_rnn_stage1_seq7") == 4
    assert p.stdout.count("[1/5]") == 1 and "[2/5]" not in p.stdout


# ----------------------------------------------------------------------------- a real tiny grid

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("replicate")
    data = base / "synth"
    g = subprocess.run([PY, "-m", "datasets.prepare.synthetic", "--outDir", str(data), "--classes", "2",
                        "--instances", "1", "--size", "64x48", "--noShort", "--noQuirks"], cwd=ROOT, capture_output=True, text=True)
    assert g.returncode == 0, g.stderr
    out = base / "rep"
    args = ["--seqLens", "4", "--lrs", "1e-4", "--epochs1", "1", "--epochs2", "1", "--epochsFlow", "1",
            "--epochsTwoStream", "1", "--frameSize", "64", "--jobs", "2", "--datasetDir", data, "--outDir", out,
            "--extra", TINY_EXTRA]
    p = rep("--table", "2", *args)
    yield {"data": data, "out": out, "args": args, "first": p}
    shutil.rmtree(base, ignore_errors=True)  # ~1.5 GB of checkpoints


def files_with_mtimes(root, skip=()):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            path = os.path.join(d, n)
            rel = os.path.relpath(path, root)
            if not any(rel.startswith(s) for s in skip):
                out[rel] = os.stat(path).st_mtime_ns
    return out


def table_rows(md):
    """{row label: cells} of the markdown table (header and rule excluded)."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")][2:]
    return {ln.split("|")[1].strip(): [x.strip() for x in ln.split("|")[2:-1]] for ln in lines}


def check_table2(out):
    rows = table_rows((out / "table2.md").read_text())
    assert len(rows) == 4
    for name, vals in rows.items():
        assert len(vals) == 9
        assert vals[0] in ("-", "7", "12", "8") and vals[1] == vals[2] == "-"  # lr 1e-3: not run
        best, final = float(vals[4]), float(vals[5])                          # lr 1e-4: ours
        assert 0 <= final <= best <= 100, (name, vals)
        assert vals[7] == vals[8] == "-"


def test_tiny_grid_runs_then_reruns_only_the_lost_cell(tiny):
    p, out = tiny["first"], tiny["out"]
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "5 to run" in p.stdout
    cells = ["shared/ego_rnn_stage1_seq4", "grid/ms_seq4_lr1e-4", "grid/ms_regression_seq4_lr1e-4",
             "grid/ms_op_seq4_lr1e-4", "grid/op_only_seq4_lr1e-4"]
    for c in cells:
        stage = "stage1" if c.startswith("shared") else "stage2"
        s = json.loads((out / c / stage / "summary.json").read_text())
        assert s["epochs"] == 1 and s["dataset"] == str(tiny["data"])
        assert (out / "logs" / (c.replace("/", "__") + ".log")).is_file()
    args = json.loads((out / "grid/ms_op_seq4_lr1e-4/stage2/args.json").read_text())
    assert args["stage1Dict"] == str(out / "shared/ego_rnn_stage1_seq4/stage1/best_model.pth")
    assert args["seqLen"] == 4 and args["lr"] == 1e-4 and args["stage"] == 2
    check_table2(out)
    md = (out / "table2.md").read_text()
    assert "SYNTHETIC" in md and "not GTEA-61 numbers" in md and "ours: 4 frames" in md
    assert (out / "tables.png").read_bytes()[:4] == b"\x89PNG"

    lost = "grid/ms_regression_seq4_lr1e-4"
    before = files_with_mtimes(out, skip=(lost, "logs", "table", "results.json", ".replicate.lock"))
    (out / lost / "stage2" / "summary.json").unlink()
    again = rep("--table", "2", *tiny["args"])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "4 finished earlier, 1 to run" in again.stdout and f"[1/1] {lost}" in again.stdout
    assert (out / lost / "stage2" / "summary.json").is_file()
    assert files_with_mtimes(out, skip=(lost, "logs", "table", "results.json", ".replicate.lock")) == before
    check_table2(out)
    statuses = {c["key"]: c["status"] for c in json.loads((out / "results.json").read_text())["cells"]}
    assert statuses == {**{c: "finished earlier" for c in cells}, lost: "done"}


def test_tiny_table1_reuses_the_shared_stage1_and_chains_two_stream(tiny):
    out = tiny["out"]
    shared = out / "shared/ego_rnn_stage1_seq4/stage1/best_model.pth"
    assert shared.is_file()
    mtime = shared.stat().st_mtime_ns
    p = rep("--table", "1", *tiny["args"])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "6 cells, 1 finished earlier, 5 to run" in p.stdout
    assert shared.stat().st_mtime_ns == mtime
    two = json.loads((out / "table1/twostream_seq4/stage1/args.json").read_text())
    assert two["flowModel"] == str(out / "table1/flow/stage1/best_model.pth")
    assert two["rgbModel"] == str(out / "table1/attention_seq4/stage2/best_model.pth")
    rows = table_rows((out / "table1.md").read_text())
    assert list(rows) == ["ConvLSTM", "ConvLSTM-attention", "Temporal-warp flow", "Two stream (joint train)"]
    for name, vals in rows.items():
        assert len(vals) == 6
        assert 0 <= float(vals[2]) <= float(vals[1]) <= 100      # 7-frame column, ours at 4 frames
        assert vals[3] != "-" and vals[4] == vals[5] == "-"     # 16-frame column: paper only


# ----------------------------------------------------------------------------- --jobs

def test_jobs_run_cells_side_by_side_after_the_cells_they_need(tmp_path, monkeypatch):
    """--jobs 2 on Table 1 with a stand-in for the scripts (each "trains" 0.1 s and writes its
    summary.json): no cell starts before the cells it needs have finished, cells do overlap, the
    devices alternate, an interrupted plan resumes, and the tables equal those of --jobs 1."""
    import threading

    from tools import replicate_plan
    data = tmp_path / "synthetic_data"
    data.mkdir()
    lock, events = threading.Lock(), []

    def fake_run_cell(cell, extra, log_dir, verbose, env_extra=None, procs=None):
        with lock:
            events.append(("start", cell.key, time.monotonic(), dict(env_extra or {})))
        time.sleep(0.1)
        os.makedirs(cell.result_dir, exist_ok=True)
        acc = 10 + sum(map(ord, cell.key)) % 80  # a fixed number per cell
        with open(cell.summary_path, "w") as f:
            json.dump({"best_test_accuracy": acc, "final_test_accuracy": acc - 1, "best_epoch": 1, "epochs": 1,
                       "num_test_videos": 3, "seconds": 0.2, "dataset": str(data)}, f)
        with lock:
            events.append(("end", cell.key, time.monotonic(), None))
        return 0, "", os.path.join(log_dir, "x.log")

    monkeypatch.setattr(replicate_plan, "run_cell", fake_run_cell)
    common = ["--table", "1", "--seqLens", "4", "8", "--datasetDir", data]
    one = call(*common, "--outDir", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    events.clear()
    # an interrupted parallel run: two stage-1 cells already finished
    opts = replicate.parse_args([str(a) for a in common + ["--outDir", tmp_path / "two"]])
    cells = replicate.build_plan(opts, [1], replicate.map_columns([1], [4, 8]), str(tmp_path / "two"))
    for c in [c for c in cells if c.key.startswith("shared/ego_rnn")]:
        fake_run_cell(c, [], str(tmp_path), False)
    events.clear()
    two = call(*common, "--outDir", tmp_path / "two", "--jobs", "2", "--devices", "cuda:0,cuda:1")
    assert two.returncode == 0, two.stderr
    assert "2 finished earlier" in two.stdout and "2 at a time" in two.stdout
    start = {k: t for e, k, t, _ in events if e == "start"}
    end = {k: t for e, k, t, _ in events if e == "end"}
    by_key = {c.key: c for c in cells}
    assert set(start) == {c.key for c in cells if not c.key.startswith("shared/ego_rnn")}
    for key, t in start.items():
        for dep in by_key[key].deps:
            assert dep not in end or end[dep] <= t, (key, dep)  # finished earlier, or before it started
    assert sum(t < end[k] and start[k] < end[key] for key, t in start.items() for k in start if k != key) > 0
    devices = [env["CUDA_VISIBLE_DEVICES"] for e, _, _, env in events if e == "start"]
    assert set(devices) == {"0", "1"}
    for t in (1,):
        assert (tmp_path / "one" / f"table{t}.md").read_text().replace(str(tmp_path / "one"), "OUT") == \
               (tmp_path / "two" / f"table{t}.md").read_text().replace(str(tmp_path / "two"), "OUT")


def test_jobs_and_devices_arguments():
    assert_one_line_error(call("--table", "1", "--datasetDir", "D", "--jobs", "0", "--dryRun"), "--jobs")
    assert_one_line_error(call("--table", "1", "--datasetDir", "D", "--devices", "gpu0", "--dryRun"), "--devices")
    from tools.replicate_plan import device_env
    assert [device_env(["cuda:0", "cuda:1"], s, 4)["CUDA_VISIBLE_DEVICES"] for s in range(4)] == ["0", "1", "0", "1"]
    assert device_env(["cpu"], 0, 1) == {"CUDA_VISIBLE_DEVICES": ""}


def test_egtea_split_is_passed_to_every_cell_and_tables_have_no_paper_column(tmp_path):
    data = tmp_path / "egtea"
    data.mkdir()
    out = tmp_path / "rep"
    args = ["--table", "1", "--dataset", "egtea", "--split", "2", "--datasetDir", data, "--outDir", out]
    cmds = dry(*args)
    assert cmds and all(opt(c, "--dataset") == "egtea" and opt(c, "--split") == "2" for c in cmds)
    assert all(opt(c, "--trainUsers") is None and opt(c, "--testUsers") is None for c in cmds)
    fake_results(cmds, lambda i, c: (60.0, 55.0))
    p = call(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    t1 = (out / "table1.md").read_text()
    assert "EGTEA Gaze+ split 2" in t1 and "train_split2.txt" in t1 and "GTEA-61" not in t1
    assert "paper" not in t1.split("| Configuration")[1].splitlines()[0]
    lines = [ln for ln in t1.splitlines() if ln.startswith("|")]
    assert lines[0].count("|") == 6            # configuration + best/final for 7 and 16 frames
    assert lines[2] == "| ConvLSTM | 60.00 | 55.00 | 60.00 | 55.00 |"
    assert "42.24" not in t1 and "the paper's S2" not in t1
    assert (out / "tables.png").read_bytes()[:4] == b"\x89PNG"
    # --split belongs to EGTEA, --crossval to GTEA-61
    assert_one_line_error(call("--table", "1", "--split", "2", "--datasetDir", data, "--outDir", out, "--dryRun"), "--split 2")
    assert_one_line_error(call("--table", "1", "--dataset", "egtea", "--crossval", "--datasetDir", data, "--outDir", out,
                               "--dryRun"), "--crossval")
