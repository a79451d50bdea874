"""TensorBoard event files of main_ms_op.py's two stages (the demo's script, tiny settings, --select
val), read back with tensorboard's own readers: every tag once per epoch with log.csv's values,
hparams with the accuracies, CAM images. Resume after SIGKILL: tests/test_training.py. Also the
curves.png panel of the heads."""
import csv
import glob
import json

import pytest

from tests.test_training import TINY, run, synthetic_data

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2  # noqa: E402

EPOCHS = 2
# tag: log.csv column it must equal (None: not in log.csv)
EPOCH_TAGS = {"loss/train": "train_loss", "accuracy/train": "train_acc", "loss/test": "test_loss",
              "accuracy/test": "test_acc", "loss/val": "val_loss", "accuracy/val": "val_acc", "lr": "lr",
              "time/epoch_seconds": "seconds", "time/clips_per_second": None}
HEAD_TAGS = {"ms/loss": "ms_loss", "op/loss": "op_loss", "op/accuracy": "op_acc"}
RESULT_TAGS = ["hparams/selected_test_accuracy", "hparams/best_test_accuracy", "hparams/final_test_accuracy"]


def raw_scalars(log_dir):
    """[(tag, step, value)] of every scalar record in every event file of a run, as written:
    EventAccumulator would hide a step written twice (it drops older points on an out-of-order step)."""
    out = []
    for path in sorted(glob.glob(f"{log_dir}/events.out.tfevents.*")):
        for event in EventFileLoader(path).Load():
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "scalars" or v.HasField("simple_value"):
                    value = v.simple_value if v.HasField("simple_value") else float(v.tensor.float_val[0])
                    out.append((v.tag, event.step, value))
    return out


def check_once_per_epoch(log_dir, tags, epochs):
    """Every tag in `tags` has exactly steps 1..epochs in the raw records; returns {tag: {step: value}}."""
    seen = {}
    for tag, step, value in raw_scalars(log_dir):
        assert step not in seen.setdefault(tag, {}), f"{tag} step {step} written twice in {log_dir}"
        seen[tag][step] = value
    for tag in tags:
        assert sorted(seen.get(tag, {})) == list(range(1, epochs + 1)), (tag, seen.get(tag))
    return seen


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    data = synthetic_data(tmp_path_factory, instances=1)
    out = tmp_path_factory.mktemp("tb") / "ms_op"
    run("main_ms_op.py", "--datasetDir", data, "--outDir", out, "--numEpochs", str(EPOCHS), "--select", "val",
        *TINY, "--frameSize", "32")  # 32: the smallest ResNet-34 input, a 1 x 1 map
    return out


@pytest.mark.parametrize("stage", [1, 2])
def test_every_tag_once_per_epoch_with_log_csv_values(stages, stage):
    d = stages / f"stage{stage}"
    tags = dict(EPOCH_TAGS, **(HEAD_TAGS if stage == 2 else {}))
    ea = EventAccumulator(str(d / "tb"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    expected = set(tags) | set(RESULT_TAGS)
    assert set(ea.Tags()["scalars"]) == expected, ea.Tags()["scalars"]  # stage 1: no ms/ or op/ tags
    for tag in tags:
        assert [e.step for e in ea.Scalars(tag)] == list(range(1, EPOCHS + 1)), tag
    with open(d / "log.csv") as f:
        rows = list(csv.DictReader(f))
    for tag, column in tags.items():
        if column is None:
            continue
        got = [e.value for e in ea.Scalars(tag)]
        want = [float(r[column]) for r in rows]
        # log.csv rounds (lr 3 digits, seconds 1 decimal); the events hold float32
        assert got == pytest.approx(want, rel=2e-3, abs=0.051 if tag.startswith("time/") else 1e-5), tag
    n_train = json.loads((d / "summary.json").read_text())["num_train_videos"]
    for e, r in zip(ea.Scalars("time/clips_per_second"), rows):
        # clips per second of training time: above clips per epoch-second (which includes evaluation)
        assert e.value > 0.99 * n_train / float(r["seconds"])
    s = json.loads((d / "summary.json").read_text())
    for tag in RESULT_TAGS:
        (e,) = ea.Scalars(tag)
        assert (e.step, e.value) == (EPOCHS, pytest.approx(s[tag.split("/")[1]], abs=1e-4))
    check_once_per_epoch(d / "tb", tags, EPOCHS)
    assert 0 < s["tensorboard_seconds"] < s["seconds"]


def test_hparams_hold_the_settings_and_result_metrics(stages):
    d = stages / "stage2" / "tb"
    ea = EventAccumulator(str(d))
    ea.Reload()
    content = ea.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(1e-4)  # stage 2's default
    assert start.hparams["select"].string_value == "val" and start.hparams["stage"].number_value == 2
    assert start.hparams["trainUsers"].string_value == "S1 S3 S4"
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert sorted(m.name.tag for m in exp.metric_infos) == sorted(RESULT_TAGS)
    # the settings that define the run, the most compared first (TensorBoard's columns in this
    # order); housekeeping flags left out
    names = [h.name for h in exp.hparam_infos]
    assert names[:7] == ["experiment", "stage", "lr", "seqLen", "numEpochs", "trainBatchSize", "precision"]
    assert start.hparams["experiment"].string_value == "ms_op" and start.hparams["numEpochs"].number_value == EPOCHS
    for housekeeping in ("cacheDir", "camVideos", "cpuTransforms", "numWorkers", "outDir", "device", "resume",
                         "overwrite", "quiet", "keepLast", "valBatchSize"):
        assert housekeeping not in names and housekeeping not in start.hparams, housekeeping
    assert {"seed", "memSize", "frameSize", "noMS", "opInput", "msWeight"} <= set(names)
    assert "flowLr" not in names  # two-stream's own
    # booleans as booleans, not the numbers 0 and 1
    types = {h.name: api_pb2.DataType.Name(h.type) for h in exp.hparam_infos}
    assert types["noMS"] == types["regression"] == "DATA_TYPE_BOOL", types
    assert start.hparams["noMS"].WhichOneof("kind") == "bool_value" and start.hparams["noMS"].bool_value is False
    assert types["lr"] == "DATA_TYPE_FLOAT64" and types["experiment"] == "DATA_TYPE_STRING"


def test_cam_figures_are_images_of_the_run(stages):
    ea = EventAccumulator(str(stages / "stage2" / "tb"), size_guidance={"images": 0})
    ea.Reload()
    pngs = glob.glob(str(stages / "stage2" / "cam" / "*.png"))
    assert len(ea.Tags()["images"]) == len(pngs) == 1
    (img,) = ea.Images(ea.Tags()["images"][0])
    assert img.encoded_image_string[:4] == b"\x89PNG" and img.width > 0
    assert img.step == json.loads((stages / "stage2" / "summary.json").read_text())["selected_epoch"]


def test_curves_of_a_stage_with_heads_draw_ms_and_op(stages):
    from utils.plots import save_curves
    for stage, heads in ((1, []), (2, ["MS loss", "OP loss", "OP accuracy"])):
        with open(stages / f"stage{stage}" / "log.csv") as f:
            rows = list(csv.reader(f))[1:]
        drawn = save_curves(rows, stages / f"c{stage}.png")
        assert drawn == ["train loss", "test loss", "train accuracy", "test accuracy"] + heads


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step", "ignore:pretrained=.none.")
def test_clips_per_second_is_over_the_training_seconds_only(tmp_path, monkeypatch):
    """A stage whose epochs take 4 s of training and 6 s of evaluation on utils.train's clock (a
    fake one, moved only by the stubbed epoch and evaluation): time/clips_per_second is the training
    clips / 4 s, time/epoch_seconds 10 s."""
    import types

    import datasets.prepare.synthetic as syn
    import utils.train as T
    from utils.experiment import run as run_experiment
    from utils.tensorboard import epoch_scalars
    # the function alone: clips over train_seconds, whatever the epoch's seconds
    row = epoch_scalars(1, 0.1, {"loss": 1.0, "acc": 50.0}, {"loss": 1.0, "acc": 50.0}, {}, 10.0, 4.0, 9)
    assert row["time/clips_per_second"] == 9 / 4 and row["time/epoch_seconds"] == 10.0

    assert syn.main(["--outDir", str(tmp_path / "data"), "--classes", "3", "--instances", "1", "--size", "48x36"]) == 0
    clock = [1000.0]
    monkeypatch.setattr(T, "time", types.SimpleNamespace(time=lambda: clock[0]))

    def train_one_epoch(exp, model, loader, optimizer, epoch, generator):
        clock[0] += 4.0
        nan = float("nan")
        return {"loss": 1.0, "acc": 50.0, "ms_loss": nan, "op_loss": nan, "op_acc": nan}

    def evaluate(exp, model, loader, keep_logits=False):
        clock[0] += 6.0
        return {"loss": 1.0, "acc": 50.0, "videos_per_process": [len(loader.dataset)]}
    monkeypatch.setattr(T, "train_one_epoch", train_one_epoch)
    monkeypatch.setattr(T, "evaluate", evaluate)
    out = tmp_path / "rgb"
    assert run_experiment("rgb", ["--datasetDir", str(tmp_path / "data"), "--outDir", str(out), "--stage", "1",
                                  "--numEpochs", "2", *TINY, "--frameSize", "32", "--camVideos", "0"]) == 0
    n_train = json.loads((out / "stage1" / "summary.json").read_text())["num_train_videos"]
    ea = EventAccumulator(str(out / "stage1" / "tb"))
    ea.Reload()
    assert [e.value for e in ea.Scalars("time/epoch_seconds")] == [10.0, 10.0]
    assert [e.value for e in ea.Scalars("time/clips_per_second")] == pytest.approx([n_train / 4] * 2, rel=1e-6)


def test_curves_mark_the_selected_epoch_and_the_lr_decays(tmp_path):
    from utils.plots import save_curves
    # log.csv rows: epoch, lr, train loss/acc, test loss/acc, ms, op, op acc, seconds, val loss/acc
    lrs = ["0.001", "0.001", "0.0001", "0.0001", "1e-05", "1e-05"]
    rows = [[e, lr, "1.0", "50", "1.1", str(40 + e), "", "", "", "1.0", "", ""] for e, lr in enumerate(lrs, 1)]
    drawn = save_curves(rows, tmp_path / "c.png", selected=4)
    assert drawn[4:] == ["lr decay before epoch 3", "lr decay before epoch 5", "selected epoch 4"]
    assert save_curves(rows[:2], tmp_path / "c.png", selected=None)[4:] == []  # no decay yet, none selected
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
