"""End-to-end runs of the five scripts and evaluate.py on a tiny generated dataset: output files,
learning, exact resume after SIGKILL, refusal to overwrite, and the one-line errors."""
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import run_here

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY = ["--pretrained", "none", "--frameSize", "64", "--seqLen", "4", "--trainBatchSize", "4", "--memSize", "16",
        "--valBatchSize", "8", "--numWorkers", "0", "--precision", "fp32", "--camVideos", "1"]


def run(*args, check=True, timeout=300):
    p = subprocess.run([PY, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def read_log(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_one_line_error(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    err = p.stderr.strip().splitlines()
    assert err and err[-1].startswith("error: "), p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in err[-1], (n, err[-1])


def synthetic_data(tmp_path_factory, instances):
    """A small synthetic GTEA-61 (3 classes, 80x60) for a test module's runs."""
    d = tmp_path_factory.mktemp("data") / "syn"
    run("-m", "datasets.prepare.synthetic", "--outDir", d, "--classes", "3", "--instances", str(instances),
        "--size", "80x60")
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_data(tmp_path_factory, instances=1)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """rgb (stages 1+2) and flow, shared by the tests below."""
    out = tmp_path_factory.mktemp("runs")
    run("main_rgb.py", "--datasetDir", data, "--outDir", out / "rgb", "--numEpochs", "2", *TINY)
    run("main_flow.py", "--datasetDir", data, "--outDir", out / "flow", "--numEpochs", "1", "--keepLast", *TINY)
    return out


def check_stage_dir(d, epochs, cam, keep_last=False):
    for f in ["args.json", "log.csv", "best_model.pth", "curves.png", "summary.json"]:
        assert (d / f).is_file(), d / f
    # a finished stage drops last.pth (the optimiser's state: --resume skips a finished stage)
    assert (d / "last.pth").is_file() == keep_last, d / "last.pth"
    rows = read_log(d / "log.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                             "ms_loss", "op_loss", "op_acc", "seconds", "val_loss", "val_acc"]
    summary = json.loads((d / "summary.json").read_text())
    accs = [float(r["test_acc"]) for r in rows]
    assert summary["best_test_accuracy"] == pytest.approx(max(accs), abs=1e-3)
    assert summary["final_test_accuracy"] == pytest.approx(accs[-1], abs=1e-3)
    assert summary["epochs"] == epochs and summary["seconds"] > 0
    assert accs.index(max(accs)) + 1 == summary["best_epoch"]
    assert (d / "curves.png").read_bytes()[:4] == b"\x89PNG"
    if cam:
        pngs = list((d / "cam").glob("*.png"))
        assert pngs and pngs[0].read_bytes()[:4] == b"\x89PNG"
    args = json.loads((d / "args.json").read_text())
    assert args["precision"] == "fp32"
    return rows, summary


def test_rgb_two_stages_write_everything(runs):
    rows1, _ = check_stage_dir(runs / "rgb" / "stage1", 2, cam=True)
    rows2, _ = check_stage_dir(runs / "rgb" / "stage2", 2, cam=True)
    assert float(rows1[0]["lr"]) == pytest.approx(1e-3) and float(rows2[0]["lr"]) == pytest.approx(1e-4)
    assert rows2[0]["ms_loss"] == "" and rows2[0]["op_loss"] == ""
    ckpt = torch.load(runs / "rgb" / "stage2" / "best_model.pth", weights_only=True)
    assert ckpt["num_classes"] == 3 and ckpt["classes"] == ["open_box", "put_cup", "take_cup"]


def test_flow_single_stage(runs):
    check_stage_dir(runs / "flow" / "stage1", 1, cam=False, keep_last=True)
    assert not (runs / "flow" / "stage2").exists()


def test_resume_skips_a_finished_stage_without_last_pth(runs, data):
    stage = runs / "rgb" / "stage2"
    before = {f: (stage / f).stat().st_mtime_ns for f in ["log.csv", "best_model.pth", "summary.json"]}
    p = run("main_rgb.py", "--datasetDir", data, "--outDir", runs / "rgb", "--numEpochs", "2", "--resume", *TINY)
    assert p.stdout.count("finished earlier") == 2, p.stdout
    assert before == {f: (stage / f).stat().st_mtime_ns for f in before}
    assert not (stage / "last.pth").exists()


@pytest.mark.parametrize("script,extra", [("main_ms.py", []), ("main_ms.py", ["--regression", "--msInput", "layer4"]),
                                          ("main_ms_op.py", []), ("main_ms_op.py", ["--noMS"])])
def test_ms_and_op_stage2_from_shared_stage1(runs, data, tmp_path, script, extra):
    out = tmp_path / "x"
    run(script, "--datasetDir", data, "--outDir", out, "--stage", "2", "--numEpochs", "1",
        "--stage1Dict", runs / "rgb" / "stage1" / "best_model.pth", *extra, *TINY)
    rows, _ = check_stage_dir(out / "stage2", 1, cam=True)
    assert (rows[0]["ms_loss"] != "") == ("--noMS" not in extra)
    assert (rows[0]["op_loss"] != "") == (script == "main_ms_op.py")
    if script == "main_ms_op.py":
        # a whole number of the training clips, in %; the loss of a fresh 12-way head is near ln 12
        clips = json.loads((out / "stage2" / "summary.json").read_text())["num_train_videos"]
        correct = float(rows[0]["op_acc"]) * clips / 100
        assert abs(correct - round(correct)) < 1e-3 and 0 <= round(correct) <= clips, (rows[0]["op_acc"], clips)
        assert abs(float(rows[0]["op_loss"]) - math.log(12)) < 0.5, rows[0]["op_loss"]


def test_twostream_from_flow_and_rgb(runs, data, tmp_path):
    out = tmp_path / "ts"
    run("main_twostream.py", "--datasetDir", data, "--outDir", out, "--numEpochs", "1",
        "--flowModel", runs / "flow" / "stage1" / "best_model.pth",
        "--rgbModel", runs / "rgb" / "stage2" / "best_model.pth", *TINY)
    check_stage_dir(out / "stage1", 1, cam=False)
    # the streams are the given models: every tensor two-stream does not train equals the file's
    got = torch.load(out / "stage1" / "best_model.pth", weights_only=True)["model"]
    flow = torch.load(runs / "flow" / "stage1" / "best_model.pth", weights_only=True)["model"]
    rgb = torch.load(runs / "rgb" / "stage2" / "best_model.pth", weights_only=True)["model"]
    frozen_flow = [k for k in flow if not k.startswith("layer4.")]
    trained_rgb = {f"backbone.layer4.{b}.conv{c}.weight" for b in range(3) for c in (1, 2)} | \
        {"backbone.fc.weight", "backbone.fc.bias"}
    frozen_rgb = [k for k in rgb if k.startswith("egornn.backbone.") and k[len("egornn."):] not in trained_rgb]
    assert len(frozen_flow) > 100 and len(frozen_rgb) > 150
    differ = [k for k in frozen_flow if not torch.equal(got["flow_model." + k], flow[k])] + \
        [k for k in frozen_rgb if not torch.equal(got["rgb_model." + k[len("egornn."):]], rgb[k])]
    assert not differ, differ[:5]


def test_evaluate_writes_predictions(runs, data, tmp_path):
    out = tmp_path / "ev"
    # no --model: the checkpoint's experiment
    p = run("evaluate.py", "--datasetDir", data, "--outDir", out, "--numWorkers", "0",
            "--modelStateDict", runs / "rgb" / "stage2" / "best_model.pth", "--topk", "2", "5")
    rows = list(csv.reader(open(out / "predictions.csv")))
    assert rows[0] == ["video", "label", "pred", "logit_0", "logit_1", "logit_2"]
    assert len(rows) > 1 and all(r[0].startswith("processed_frames2/S2/") for r in rows[1:])
    for r in rows[1:]:
        logits = [float(v) for v in r[3:]]
        assert int(r[2]) == max(range(3), key=logits.__getitem__)
    s = json.loads((out / "summary.json").read_text())
    assert s["model"] == "rgb"
    acc = 100 * sum(r[1] == r[2] for r in rows[1:]) / (len(rows) - 1)
    assert s["accuracy"] == pytest.approx(acc, abs=1e-3) and s["num_videos"] == len(rows) - 1
    assert set(s["per_class_accuracy"]) == {"open_box", "put_cup", "take_cup"}
    assert (out / "confusion_matrix.png").is_file() and "accuracy" in p.stdout
    assert (out / "per_class.png").read_bytes()[:4] == b"\x89PNG"
    # top-k from the logits in predictions.csv: the true class's logit has fewer than k above it
    rank = [sum(float(v) > float(r[3 + int(r[1])]) for v in r[3:]) for r in rows[1:]]
    assert s["top2_accuracy"] == pytest.approx(100 * sum(x < 2 for x in rank) / len(rank), abs=1e-3)
    assert s["top5_accuracy"] == 100.0  # 3 classes
    assert f"top-2 {s['top2_accuracy']:.2f}%" in p.stdout
    # the checkpoint's model kind and the asked one disagree
    for other in ("flow", "ms_op", "convlstm"):  # another family, another experiment, no attention
        p = run_here("evaluate.py", "--model", other, "--datasetDir", data, "--outDir", tmp_path / "ev2",
                     "--modelStateDict", runs / "rgb" / "stage2" / "best_model.pth")
        assert_one_line_error(p, "best_model.pth", f"--model {other}", "'rgb'")
        assert not (tmp_path / "ev2").exists()


def test_loss_falls_on_tiny_set(data, tmp_path):
    # 32 px frames (a quarter of TINY's pixels): the loss falls there too, in a quarter of the time
    run("main_rgb.py", "--datasetDir", data, "--outDir", tmp_path, "--stage", "1", "--numEpochs", "10",
        "--lr", "1e-2", "--stepSize", "100", *TINY, "--frameSize", "32")
    losses = [float(r["train_loss"]) for r in read_log(tmp_path / "stage1" / "log.csv")]
    # 7 clips and Dropout(0.7): single epochs are noisy, the trend is not
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses


def _resume_args(data, out):
    # --stepSize 2: the lr decays after epoch 2, inside the run, so a resume that does not restore
    # the scheduler logs another lr for epoch 3 (killed in epoch 2) or leaves it behind (epoch 3)
    return ["main_ms_op.py", "--datasetDir", data, "--outDir", out, "--numEpochs", "3", "--stepSize", "2",
            "--stage1Dict", out.parent / "s1.pth", "--stage", "2", *TINY[:-6], "--numWorkers", "1",
            "--precision", "fp32", "--camVideos", "0"]


def test_resume_after_sigkill_matches_uninterrupted_run(runs, data, tmp_path):
    import shutil
    shutil.copy(runs / "rgb" / "stage1" / "best_model.pth", tmp_path / "s1.pth")
    full, killed = tmp_path / "full", tmp_path / "killed"
    run(*_resume_args(data, full), "--keepLast")
    proc = subprocess.Popen([PY, *map(str, _resume_args(data, killed))], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = killed / "stage2" / "log.csv"
    deadline = time.time() + 240
    while time.time() < deadline and not (log.exists() and len(read_log(log)) >= 1):
        time.sleep(0.05)
    time.sleep(0.5)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(read_log(log))
    assert done < 3, "the run finished before it could be killed"
    assert (killed / "stage2" / "last.pth").is_file(), "an unfinished stage keeps last.pth for --resume"
    run(*_resume_args(data, killed), "--resume", "--keepLast")

    a, b = read_log(full / "stage2" / "log.csv"), read_log(killed / "stage2" / "log.csv")
    assert [r["epoch"] for r in b] == ["1", "2", "3"]
    for rows in (a, b):  # stage-2 lr 1e-4, x0.1 after epoch 2
        assert [float(r["lr"]) for r in rows] == pytest.approx([1e-4, 1e-4, 1e-5])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)
    ma = torch.load(full / "stage2" / "best_model.pth", weights_only=True)
    mb = torch.load(killed / "stage2" / "best_model.pth", weights_only=True)
    assert ma["epoch"] == mb["epoch"]
    for k in ma["model"]:
        assert torch.equal(ma["model"][k], mb["model"][k]), k
    # and the run ends in the same state: scheduler, optimiser lr and moments
    la = torch.load(full / "stage2" / "last.pth", weights_only=False)
    lb = torch.load(killed / "stage2" / "last.pth", weights_only=False)
    assert la["scheduler"] == lb["scheduler"] and la["scheduler"]["last_epoch"] == 3
    assert [g["lr"] for g in la["optimizer"]["param_groups"]] == [g["lr"] for g in lb["optimizer"]["param_groups"]]
    for i, s in la["optimizer"]["state"].items():
        for k, v in s.items():
            assert torch.equal(v, lb["optimizer"]["state"][i][k]), (i, k)
    # TensorBoard: after the kill and --resume, every tag once per epoch (read from the raw
    # records, where a step written twice would show), with the uninterrupted run's values
    pytest.importorskip("tensorboard")
    from tests.test_tensorboard import EPOCH_TAGS, HEAD_TAGS, check_once_per_epoch
    tags = [t for t in list(EPOCH_TAGS) + list(HEAD_TAGS) if not t.endswith("/val")]  # --select test
    ta = check_once_per_epoch(full / "stage2" / "tb", tags, 3)
    tb = check_once_per_epoch(killed / "stage2" / "tb", tags, 3)
    for tag in tags:
        if not tag.startswith("time/"):
            assert ta[tag] == tb[tag], tag


def test_resume_with_other_settings_is_refused(runs, data, tmp_path):
    import shutil
    shutil.copytree(runs / "flow", tmp_path / "flow")
    stage = tmp_path / "flow" / "stage1"
    (stage / "summary.json").unlink()  # an unfinished run
    before = (stage / "last.pth").stat().st_mtime_ns
    p = run_here("main_flow.py", "--datasetDir", data, "--outDir", tmp_path / "flow", "--numEpochs", "2", "--resume",
                 "--lr", "0.5", *TINY)
    assert_one_line_error(p, "--lr", "--overwrite")
    assert (stage / "last.pth").stat().st_mtime_ns == before


def test_refuses_to_overwrite_results(runs, data):
    stage = runs / "flow" / "stage1"
    before = {f: (stage / f).stat().st_mtime_ns for f in ["log.csv", "best_model.pth", "last.pth"]}
    p = run_here("main_flow.py", "--datasetDir", data, "--outDir", runs / "flow", "--numEpochs", "1", *TINY)
    assert_one_line_error(p, "already holds results", "--resume", "--overwrite")
    assert before == {f: (stage / f).stat().st_mtime_ns for f in before}


def test_bad_inputs_give_one_line_errors(runs, data, tmp_path):
    # --numEpochs 1: a refusal that went missing fails in seconds, not at the timeout
    base = ["--datasetDir", data, "--outDir", tmp_path / "o", "--numEpochs", "1", *TINY]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    other = tmp_path / "other"
    run("-m", "datasets.prepare.synthetic", "--outDir", other, "--classes", "4", "--instances", "1", "--size", "80x60")
    cases = [
        # stage 2 without a stage-1 checkpoint: says where it looked
        (["main_rgb.py", *base, "--stage", "2"], str(tmp_path / "o" / "stage1" / "best_model.pth")),
        # a checkpoint of another model
        (["main_rgb.py", *base, "--stage", "2", "--stage1Dict", runs / "flow" / "stage1" / "best_model.pth"],
         "flow"),
        # too few frames for the order prediction head
        (["main_ms_op.py", *base, "--seqLen", "3"], "--seqLen"),
        (["main_rgb.py", *base, "--lr", "0"], "--lr"),
        (["main_rgb.py", *base, "--numEpochs", "-1"], "--numEpochs"),
        (["main_rgb.py", *base, "--bogus"], "--bogus"),
        (["evaluate.py", "--model", "rgb"], "--modelStateDict"),
        # dataset errors from the data layer
        (["main_rgb.py", *base[2:], "--datasetDir", tmp_path / "nope"], str(tmp_path / "nope")),
        (["main_rgb.py", *base, "--testUsers", "S9"], "S9"),
        # an output folder that cannot be created
        (["main_rgb.py", *base[:2], "--outDir", blocker / "sub", *base[4:]], str(blocker / "sub")),
        # a checkpoint with another class count
        (["evaluate.py", "--model", "rgb", "--datasetDir", other, "--outDir", tmp_path / "e",
          "--modelStateDict", runs / "rgb" / "stage2" / "best_model.pth"], "classes"),
    ]
    for args, needle in cases:
        assert_one_line_error(run_here(*args), needle)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.pth"))


@pytest.mark.filterwarnings("ignore:pretrained=.none.")
def test_evaluate_original_egornn_checkpoint_gives_the_models_logits(data, tmp_path):
    """An original-format Ego-RNN file, through evaluate.py's test pipeline (resize 256, centre
    crop 224, linspace frames, fp32), gives the logits of the model it was saved from."""
    from datasets import GTEA61
    from models import EgoRNN
    from tests.test_models import _original_rgb_state, _randomise_bn
    torch.manual_seed(3)
    model = EgoRNN(3, mem_size=16, pretrained="none").eval()
    _randomise_bn(model)
    path = tmp_path / "best_model_state_dict_rgb_split2.pth"
    torch.save(_original_rgb_state(model), path)
    run("evaluate.py", "--model", "rgb", "--datasetDir", data, "--modelStateDict", path, "--seqLen", "4",
        "--memSize", "16", "--outDir", tmp_path / "ev", "--numWorkers", "0")
    rows = list(csv.reader(open(tmp_path / "ev" / "predictions.csv")))[1:]
    test_set = GTEA61(data, ["S2"], "rgb", train=False, seqLen=4, frameSize=224, mapSize=7)
    assert len(rows) == len(test_set)
    with torch.no_grad():
        for r in rows:
            i = test_set.video_ids.index(r[0])
            expected = model(test_set[i]["rgb"][None])["logits"][0]
            got = torch.tensor([float(v) for v in r[3:]])
            assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (got, expected)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    p = run("main_rgb.py", "--datasetDir", data, "--outDir", tmp_path, "--stage", "1", "--numEpochs", "3",
            "--lr", "1e-3", "--stepSize", "1", "--decayRate", "1e33", *TINY, check=False)  # lr 1e30 from epoch 2
    assert p.returncode == 3, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "non-finite" in last and "Traceback" not in p.stderr
    state = torch.load(tmp_path / "stage1" / "last.pth", weights_only=False)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert len(read_log(tmp_path / "stage1" / "log.csv")) == state["epoch"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_get_the_umask_permissions_and_stay_atomic(tmp_path, umask, mode):
    """Results are shared in a lab: every writer of utils/io.py (logs, JSON, checkpoints, figures) and
    the frame cache give a new file the permissions open() would, 0644 under umask 022."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from datasets.cache import FrameCache
    from utils.io import atomic_savefig, atomic_torch_save, atomic_write_csv, atomic_write_json
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_write_csv(tmp_path / "a.csv", ["x"], [[1]])
        atomic_torch_save({"w": torch.zeros(1)}, tmp_path / "a.pth")
        fig = plt.figure()
        atomic_savefig(fig, tmp_path / "a.png")
        plt.close(fig)
        cache = FrameCache(str(tmp_path / "cache"))
        cache._write(str(tmp_path / "cache" / "v" / "f.frame"), np.zeros((2, 2, 3), np.uint8))
    finally:
        os.umask(old)
    written = [tmp_path / n for n in ("a.json", "a.csv", "a.pth", "a.png")] + list((tmp_path / "cache").rglob("*.frame"))
    assert len(written) == 5
    for path in written:
        assert os.stat(path).st_mode & 0o777 == mode, path
    assert not list(tmp_path.rglob(".tmp-*"))  # no temporary file left behind


@pytest.mark.filterwarnings("ignore:pretrained=.none.")
def test_mean_class_accuracy_is_the_mean_over_classes(tmp_path, monkeypatch):
    """Test clips per class 3 / 1 / 2 (open_box / put_cup / take_cup) and a model that gets every
    put_cup clip wrong and the others right. By hand: top-1 5/6 = 83.3333 %, per class 100 / 0 / 100,
    mean class accuracy (100 + 0 + 100) / 3 = 66.6667 %; a mean over clips would give 83.3333 % again."""
    import shutil

    import datasets.prepare.synthetic as syn
    from models import EgoRNN
    from tools import evaluation
    from tests.test_models import _original_rgb_state
    data = tmp_path / "data"
    assert syn.main(["--outDir", str(data), "--classes", "3", "--instances", "3", "--users", "S2", "--size", "48x36",
                     "--noShort", "--noQuirks"]) == 0
    for cls, inst in (("put_cup", 2), ("put_cup", 3), ("take_cup", 3)):
        for top in ("processed_frames2", "flow_x_processed", "flow_y_processed"):
            shutil.rmtree(data / top / "S2" / cls / str(inst))
    path = tmp_path / "model_rgb_state_dict.pth"
    torch.save(_original_rgb_state(EgoRNN(3, mem_size=16, pretrained="none")), path)

    def forward(model, batch, family):  # put_cup (1) predicted as open_box (0), the rest right
        label = batch["label"]
        return {"logits": torch.nn.functional.one_hot(torch.where(label == 1, 0, label), 3).float()}
    monkeypatch.setattr(evaluation, "forward", forward)
    assert evaluation.main(["--model", "rgb", "--datasetDir", str(data), "--modelStateDict", str(path), "--seqLen", "4",
                          "--memSize", "16", "--frameSize", "32", "--outDir", str(tmp_path / "ev"),
                          "--numWorkers", "0"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv")))
    assert sorted(r["label"] for r in rows) == ["0", "0", "0", "1", "2", "2"]  # the counts the figures assume
    s = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert s["per_class_accuracy"] == {"open_box": 100.0, "put_cup": 0.0, "take_cup": 100.0}
    assert s["accuracy"] == pytest.approx(83.3333, abs=1e-3)
    assert s["mean_class_accuracy"] == pytest.approx(66.6667, abs=1e-3)
