"""Checkpoints record the configuration that shapes their model and data, and every script that
loads one checks it: stage 2 against stage 1, two-stream against its flow and RGB models,
evaluate.py against the users it scores. Also --stackSize end to end and --select."""
import csv
import json

import pytest
import torch

from tests.conftest import run_here
from tests.test_training import TINY, assert_one_line_error, read_log, run, synthetic_data
from utils.checkpoint_record import check_config
from utils.errors import UserError

# every key Experiment.run_config records, with two values a run may differ in (falsy ones
# first where the key can take one: False, 0, [] and "" differ from what they are not)
RECORDED = {"classes": ([], ["open_box", "put_cup"]), "attention": (False, True), "memSize": (0, 16),
            "ms": (None, "classification"), "msInput": ("attention", "layer4"), "op": (False, True),
            "opInput": ("flat", "pooled"), "seqLen": (0, 4), "frameSize": (64, 224), "stackSize": (0, 5),
            "msKind": ("classification", "regression"), "trainUsers": ([], ["S1", "S3"]),
            "testUsers": (["S2"], ["S3"]), "select": ("test", "val"), "valFraction": (0.0, 0.15),
            "dataset": ("gtea61", "egtea"), "split": (0, 1)}
# How --noAttention shows in the message; the other keys show as --key
SHOWN = {"attention": "attention", "classes": "classes"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_data(tmp_path_factory, instances=2)


@pytest.fixture(scope="module")
def models_(data, tmp_path_factory):
    """A val-selected RGB stage 1 (attention) and a last-epoch flow model with 3-frame stacks."""
    out = tmp_path_factory.mktemp("cfg")
    run("main_rgb.py", "--datasetDir", data, "--outDir", out / "rgb", "--stage", "1", "--numEpochs", "2",
        "--select", "val", "--keepLast", *TINY)
    run("main_flow.py", "--datasetDir", data, "--outDir", out / "flow", "--numEpochs", "2", "--stackSize", "3",
        "--select", "last", "--lr", "0.05", *TINY)
    return out


def with_users(path, out, train, test):
    """A copy of a checkpoint whose record says it was trained on `train` and tested on `test`."""
    ck = torch.load(path, weights_only=True)
    ck["config"]["trainUsers"], ck["config"]["testUsers"] = train, test
    torch.save(ck, out)
    return out


def test_checkpoints_record_their_configuration(models_):
    rgb = torch.load(models_ / "rgb" / "stage1" / "best_model.pth", weights_only=True)["config"]
    assert rgb["classes"] == ["open_box", "put_cup", "take_cup"]
    assert (rgb["attention"], rgb["memSize"], rgb["seqLen"], rgb["frameSize"]) == (True, 16, 4, 64)
    assert rgb["trainUsers"] == ["S1", "S3", "S4"] and rgb["testUsers"] == ["S2"]
    assert rgb["select"] == "val" and rgb["valFraction"] == 0.15 and rgb["msKind"] is None
    # the unit table below covers every recorded key checked on loading; the preparation is
    # followed by predict.py / evaluate.py (tests/test_predict.py), here None: the synthetic
    # generator's data, not made by datasets.prepare
    assert set(rgb) == set(RECORDED) | {"preparation", "precision", "synthetic"} and rgb["preparation"] is None
    # the precision it trained and evaluated in (TINY: fp32), and the generator's data
    assert rgb["precision"] == "fp32" and rgb["synthetic"] is True
    flow = torch.load(models_ / "flow" / "stage1" / "best_model.pth", weights_only=True)
    assert flow["config"]["stackSize"] == 3 and flow["stackSize"] == 3
    assert flow["model"]["conv1.weight"].shape[1] == 6  # 2 x 3 flow frames
    assert flow["config"]["trainUsers"] == ["S1", "S3", "S4"] and flow["config"]["testUsers"] == ["S2"]


def test_check_config_refuses_every_difference_falsy_values_included():
    for key, (a, b) in RECORDED.items():
        for have, want in ((a, b), (b, a)):
            if have is None or want is None:
                continue
            with pytest.raises(UserError, match=SHOWN.get(key, f"--{key}")) as e:
                check_config("ck.pth", {key: have}, {key: want}, "--stage1Dict")
            assert "ck.pth" in str(e.value) and "\n" not in str(e.value)
            check_config("ck.pth", {key: have}, {key: have}, "--stage1Dict")  # the same: accepted
    # a tuple and a list of the same users are the same setting, in either place
    for have, want in ((("S1", "S3"), ["S1", "S3"]), (["S1", "S3"], ("S1", "S3"))):
        check_config("ck.pth", {"trainUsers": have}, {"trainUsers": want}, "--stage1Dict")
    with pytest.raises(UserError, match="--trainUsers"):
        check_config("ck.pth", {"trainUsers": ("S1", "S3")}, {"trainUsers": ["S1", "S4"]}, "--stage1Dict")
    # None, or a key one side lacks, is not compared (files without a record); 0 and False are
    for saved, expected in (({"memSize": None}, {"memSize": 16}), ({"memSize": 16}, {"memSize": None}),
                            ({}, {"memSize": 16}), ({"memSize": 16}, {})):
        check_config("ck.pth", saved, expected, "--stage1Dict")
    with pytest.raises(UserError, match="no attention"):
        check_config("ck.pth", {"attention": True}, {"attention": False}, "--stage1Dict")


def test_last_pth_loads_weights_only(models_):
    state = torch.load(models_ / "rgb" / "stage1" / "last.pth", weights_only=True)
    assert state["epoch"] == 2 and torch.is_tensor(state["rng"]["numpy"]["mt"])


def test_select_val_picks_the_epoch_of_the_best_validation_accuracy(models_):
    d = models_ / "rgb" / "stage1"
    rows = read_log(d / "log.csv")
    val = [float(r["val_acc"]) for r in rows]
    first_best = val.index(max(val)) + 1
    summary = json.loads((d / "summary.json").read_text())
    assert summary["select"] == "val" and summary["selected_epoch"] == first_best
    assert summary["selected_test_accuracy"] == pytest.approx(float(rows[first_best - 1]["test_acc"]))
    assert torch.load(d / "best_model.pth", weights_only=True)["epoch"] == first_best
    args = json.loads((d / "args.json").read_text())
    assert args["select"] == "val" and args["valFraction"] == 0.15


def test_select_last_keeps_the_last_epoch(models_):
    d = models_ / "flow" / "stage1"
    assert torch.load(d / "best_model.pth", weights_only=True)["epoch"] == 2
    s = json.loads((d / "summary.json").read_text())
    assert s["select"] == "last" and s["selected_epoch"] == 2
    assert s["selected_test_accuracy"] == s["final_test_accuracy"]


def test_stage2_refuses_a_stage1_of_another_configuration(models_, data, tmp_path):
    s1 = models_ / "rgb" / "stage1" / "best_model.pth"
    # --numEpochs 1: a refusal that went missing fails in seconds, not at the timeout
    base = ["--datasetDir", data, "--outDir", tmp_path / "o", "--stage", "2", "--numEpochs", "1", "--stage1Dict", s1,
            *TINY]
    assert_one_line_error(run_here("main_rgb.py", *base, "--noAttention"),
                          "--stage1Dict", "attention", "no attention (--noAttention)")
    assert_one_line_error(run_here("main_ms_op.py", *base, "--seqLen", "5"), "--seqLen 4", "--seqLen 5")
    assert_one_line_error(run_here("main_ms.py", *base, "--memSize", "8"), "--memSize 16", "--memSize 8")
    assert_one_line_error(run_here("main_rgb.py", *base, "--trainUsers", "S1", "S3"), "--trainUsers")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.pth"))
    # a val-selected stage 2 needs a val-selected stage 1 (else stage 1 trained on its val videos)
    ck = torch.load(s1, weights_only=True)
    ck["config"]["select"], ck["config"]["valFraction"] = "test", None
    torch.save(ck, tmp_path / "s1_test.pth")
    assert_one_line_error(run_here("main_rgb.py", *base[:-len(TINY) - 1], tmp_path / "s1_test.pth", "--select", "val",
                                   *TINY), "--select test", "--select val")
    # a stage-2 checkpoint, or a model of another experiment, is no stage 1
    ck = torch.load(s1, weights_only=True)
    ck["stage"], ck["experiment"] = 2, "ms_op"
    torch.save(ck, tmp_path / "s2.pth")
    assert_one_line_error(run_here("main_ms_op.py", *base[:-len(TINY) - 1], tmp_path / "s2.pth", "--select", "val",
                                   *TINY), f"--stage1Dict {tmp_path / 's2.pth'} is a stage-2 checkpoint of ms_op")
    flow = models_ / "flow" / "stage1" / "best_model.pth"
    assert_one_line_error(run_here("main_ms.py", *base[:-len(TINY) - 1], flow, *TINY),
                          f"--stage1Dict {flow} holds a flow model (flow), not an Ego-RNN stage 1")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.pth"))


def test_stage2_from_the_same_configuration_runs_and_evaluates_to_its_training_accuracy(models_, data, tmp_path):
    # in bf16 (a stage 1 in fp32 is a configuration like any other): evaluate.py then evaluates in bf16 too
    run("main_ms_op.py", "--datasetDir", data, "--outDir", tmp_path, "--stage", "2", "--numEpochs", "2",
        "--stage1Dict", models_ / "rgb" / "stage1" / "best_model.pth", "--select", "val", *TINY, "--precision", "bf16")
    ck = torch.load(tmp_path / "stage2" / "best_model.pth", weights_only=True)
    assert ck["config"]["opInput"] == "flat" and ck["config"]["msKind"] == "classification"
    s = 2  # layer4 side at 64 px: fc6 reads the flattened map
    assert ck["model"]["op_head.fc6.0.weight"].shape == (1024, 512 * s * s)
    assert ck["config"]["precision"] == "bf16"
    p = run("evaluate.py", "--model", "ms_op", "--datasetDir", data, "--modelStateDict", tmp_path / "stage2" /
            "best_model.pth", "--outDir", tmp_path / "ev", "--numWorkers", "0")
    lines = p.stdout.splitlines()
    assert lines[0].startswith("note: ") and "SYNTHETIC" in lines[0], p.stdout
    assert lines[1] == "precision bf16 (the precision of the run that trained it)", p.stdout
    trained = json.loads((tmp_path / "stage2" / "summary.json").read_text())
    evaluated = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert evaluated["precision"] == "bf16"
    # one accuracy per checkpoint: the selected epoch's test accuracy as training logged it
    assert evaluated["accuracy"] == pytest.approx(trained["selected_test_accuracy"], abs=1e-3)
    assert f"accuracy {trained['selected_test_accuracy']:.2f}% " in p.stdout


def test_overlapping_train_and_test_users_are_refused(data, tmp_path):
    p = run_here("main_rgb.py", "--datasetDir", data, "--outDir", tmp_path, "--trainUsers", "S1", "S2",
                 "--testUsers", "S2", "--numEpochs", "1", *TINY)
    assert_one_line_error(p, "--trainUsers", "--testUsers", "S2")
    assert not tmp_path.joinpath("stage1").exists()


def test_evaluate_scores_the_checkpoints_test_users_only(models_, data, tmp_path):
    flow = with_users(models_ / "flow" / "stage1" / "best_model.pth", tmp_path / "f.pth", ["S1", "S2", "S4"], ["S3"])
    # evaluate.py reads the stack size and the test users from the checkpoint
    run("evaluate.py", "--model", "flow", "--datasetDir", data, "--modelStateDict", flow,
        "--outDir", tmp_path / "ev", "--numWorkers", "0")
    s = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert s["test_users"] == ["S3"]
    rows = list(csv.reader(open(tmp_path / "ev" / "predictions.csv")))[1:]
    assert rows and all("/S3/" in r[0] for r in rows)
    # scoring a user the checkpoint was trained on needs --allowTrainUsers
    p = run_here("evaluate.py", "--model", "flow", "--datasetDir", data, "--modelStateDict", flow, "--testUsers", "S2",
                 "--outDir", tmp_path / "ev2")
    assert_one_line_error(p, "S2", "--allowTrainUsers")
    assert not (tmp_path / "ev2" / "predictions.csv").exists()
    run("evaluate.py", "--model", "flow", "--datasetDir", data, "--modelStateDict", flow, "--testUsers", "S2",
        "--allowTrainUsers", "--outDir", tmp_path / "ev3", "--numWorkers", "0")
    assert json.loads((tmp_path / "ev3" / "summary.json").read_text())["test_users"] == ["S2"]


def test_stack_size_3_through_evaluate_and_two_stream(models_, data, tmp_path):
    flow = models_ / "flow" / "stage1" / "best_model.pth"
    rgb = models_ / "rgb" / "stage1" / "best_model.pth"
    assert_one_line_error(run_here("evaluate.py", "--model", "flow", "--datasetDir", data, "--modelStateDict", flow,
                                   "--stackSize", "5", "--outDir", tmp_path / "ev4"), "--stackSize 3")
    # a flow model of other users is refused, naming them
    other = with_users(flow, tmp_path / "other.pth", ["S1", "S2", "S4"], ["S3"])
    assert_one_line_error(run_here("main_twostream.py", "--datasetDir", data, "--outDir", tmp_path / "bad",
                                   "--flowModel", other, "--rgbModel", rgb, "--numEpochs", "1", *TINY),
                          "--flowModel", "--trainUsers")
    # no --stackSize: the flow model's 3 is read back
    run("main_twostream.py", "--datasetDir", data, "--outDir", tmp_path / "ts", "--numEpochs", "1", "--flowModel",
        flow, "--rgbModel", rgb, *TINY)
    ts = torch.load(tmp_path / "ts" / "stage1" / "best_model.pth", weights_only=True)
    assert ts["config"]["stackSize"] == 3 and ts["model"]["flow_model.conv1.weight"].shape[1] == 6
    assert json.loads((tmp_path / "ts" / "stage1" / "args.json").read_text())["stackSize"] == 3
    run("evaluate.py", "--model", "twostream", "--datasetDir", data, "--modelStateDict",
        tmp_path / "ts" / "stage1" / "best_model.pth", "--outDir", tmp_path / "ev5", "--numWorkers", "0")
    assert json.loads((tmp_path / "ev5" / "summary.json").read_text())["test_users"] == ["S2"]
    assert_one_line_error(run_here("main_twostream.py", "--datasetDir", data, "--outDir", tmp_path / "ts5",
                                   "--flowModel", flow, "--rgbModel", rgb, "--stackSize", "5", "--numEpochs", "1",
                                   *TINY),
                          "--stackSize 3", "--stackSize 5")
