"""utils/arguments.py: one table of the run-defining arguments, from which the parsers, the
resume check, the stage-2 check and the checkpoint record are derived."""
import json

import pytest
import torch

import utils.experiment as E
from models.recipe import EXPERIMENTS, FLOW_LR, MS_WEIGHT, OP_WEIGHT, TEST_USERS, TRAIN_USERS
from utils.arguments import ARGS, RECORD_KEYS, RESUME_KEYS, STAGE2_KEYS, base_parser, check_args
from utils.errors import UserError
from utils.run_state import check_same_run


def options_of(experiment):
    return {s for a in base_parser(experiment, "")._actions for s in a.option_strings}


def test_every_experiment_gets_a_namespace_of_one_shape():
    shapes = {e: sorted(vars(base_parser(e, "").parse_args([]))) for e in EXPERIMENTS}
    assert all(keys == shapes["rgb"] for keys in shapes.values())
    assert shapes["rgb"] == sorted(a.name for a in ARGS)


def test_each_script_shows_the_flags_of_its_rows_and_no_others():
    for a in ARGS:
        for e in EXPERIMENTS:
            assert (f"--{a.name}" in options_of(e)) == (e in a.experiments), (a.name, e)
    # by hand: the OP flags belong to SAMSOP-Net, the MS flags to both MS experiments
    assert "--opWeight" in options_of("ms_op") and "--opWeight" not in options_of("ms")
    assert "--msWeight" in options_of("ms") and "--flowLr" not in options_of("rgb")
    args = base_parser("rgb", "").parse_args([])
    assert (args.noMS, args.opWeight, args.msWeight, args.flowLr) == (False, OP_WEIGHT, MS_WEIGHT, FLOW_LR)


def test_the_paper_constants_are_the_defaults():
    assert (MS_WEIGHT, OP_WEIGHT, FLOW_LR) == (1.0, 1.0, 1e-4)
    args = base_parser("ms_op", "").parse_args([])
    check_args("ms_op", args)
    assert (args.trainUsers, args.testUsers) == (["S1", "S3", "S4"], ["S2"]) == (list(TRAIN_USERS), list(TEST_USERS))


@pytest.mark.parametrize("row", [a for a in ARGS if a.name not in ("stage",)], ids=lambda a: a.name)
def test_resume_refuses_a_change_exactly_of_the_rows_marked_resume(row, tmp_path):
    old = {a.name: a.default for a in ARGS}
    new = dict(old)
    new[row.name] = ["changed"] if row.name != "precision" else "bf16"
    path = tmp_path / "args.json"
    path.write_text(json.dumps(old))
    if row.resume:
        with pytest.raises(UserError, match=f"--{row.name} was"):
            check_same_run(str(path), new)
    else:
        check_same_run(str(path), new)  # numEpochs may grow, --numWorkers may differ, ...
    # by hand: the optimiser's settings must match, the epochs and workers need not
    assert {"lr", "seqLen", "seed", "msWeight", "opWeight"} <= set(RESUME_KEYS)
    assert not {"numEpochs", "numWorkers", "outDir", "resume", "overwrite"} & set(RESUME_KEYS)


def test_the_record_and_the_stage2_check_follow_the_table(tmp_path):
    args = base_parser("ms_op", "").parse_args(["--datasetDir", str(tmp_path), "--outDir", str(tmp_path / "o")])
    check_args("ms_op", args)
    exp = E.Experiment("ms_op", args, 2, device=torch.device("cpu"), precision="fp32", num_classes=2,
                       classes=["a", "b"])
    exp._preparation = None
    record = exp.run_config()
    assert set(RECORD_KEYS) <= set(record)
    expected = E.expected_config(exp)
    assert {k for k in STAGE2_KEYS if k != "noAttention"} | {"attention", "classes"} == set(expected)
    assert expected["attention"] is True and record["seqLen"] == 16 and expected["testUsers"] == ["S2"]
