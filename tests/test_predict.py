"""predict.py against evaluate.py: a synthetic video prepared into a dataset and scored by
evaluate.py gets the same frames and the same logits from predict.py run on the video file
itself; the files it writes; one-line errors for bad input.

Everything runs in this process (the scripts' main functions through run_cli, as their command
lines do): a fresh interpreter costs several seconds here."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import datasets.prepare.prepare as prepare
import datasets.prepare.synthetic as syn
from utils.errors import run_cli

SEQ, SIZE, MEM, FPS = 4, 64, 16, 15
CLASSES = ["open_box", "put_cup", "take_cup"]  # the synthetic generator's first 3, sorted
TINY = ["--pretrained", "none", "--frameSize", str(SIZE), "--seqLen", str(SEQ), "--trainBatchSize", "4",
        "--memSize", str(MEM), "--valBatchSize", "8", "--numWorkers", "0", "--precision", "fp32", "--camVideos", "0"]


def cli(main, *argv):
    """Run a script's main as its command line does; returns the exit status."""
    with pytest.raises(SystemExit) as e:
        run_cli(main, [str(a) for a in argv])
    return e.value.code


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Synthetic videos (3 classes x 4 users, 80x60, 15 fps), the same prepared into a dataset
    (frames and Farneback warp flow), an RGB attention model trained 1 epoch on it, and flow
    and two-stream checkpoints written as the training scripts write them."""
    import models
    from utils.experiment import run as run_experiment
    root = tmp_path_factory.mktemp("predict")
    assert syn.main(["--outDir", str(root / "syn"), "--layout", "videos", "--classes", "3", "--instances", "1",
                     "--size", "80x60", "--noShort", "--fps", str(FPS)]) == 0
    assert prepare.main(["--videos", str(root / "syn" / "videos"), "--outDir", str(root / "data"), "--flow", "farneback",
                         "--only", "frames", "--only", "flow", "--numWorkers", "1", "--quiet"]) == 0
    state = (torch.get_num_threads(), torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    torch.set_num_threads(1)
    try:
        assert cli(lambda a: run_experiment("rgb", a), "--datasetDir", root / "data", "--outDir", root / "rgb",
                   "--stage", "1", "--numEpochs", "1", *TINY) == 0
        rgb_path = root / "rgb" / "stage1" / "best_model.pth"
        ck = torch.load(rgb_path, weights_only=True)
        # flow and two-stream: a seeded flow network and the trained RGB stream, in the
        # checkpoint format of utils/experiment.Experiment.checkpoint (training them costs 30 s)
        torch.manual_seed(0)
        flow = models.FlowResNet34(3, pretrained="none")
        with torch.no_grad():  # BatchNorm statistics of a flow network's size, not 0 / 1
            for m in flow.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        rgb = models.EgoRNN(3, mem_size=MEM, pretrained="none")
        models.load_checkpoint(rgb, rgb_path)
        two = models.TwoStream(3, flow, rgb)
        for name, model, model_config in (("flow", flow, {"stackSize": 5}),
                                          ("twostream", two, {"attention": True, "memSize": MEM, "stackSize": 5})):
            torch.save({"model": model.state_dict(), "experiment": name, "family": name, "num_classes": 3,
                        "classes": CLASSES, "model_config": model_config,
                        "config": dict(ck["config"], **model_config), "seqLen": SEQ, "frameSize": SIZE,
                        "stackSize": 5}, root / f"{name}.pth")
        yield root
    finally:
        torch.set_num_threads(state[0])
        torch.set_float32_matmul_precision(state[1])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = state[2:]
        torch.set_flush_denormal(False)


def evaluate_logits(setup, model, ckpt, tmp_path, *extra, name="eval"):
    import evaluate
    assert cli(evaluate.main, "--model", model, "--datasetDir", setup / "data", "--modelStateDict", ckpt,
               "--outDir", tmp_path / name, "--numWorkers", "0", *extra) == 0
    with open(tmp_path / name / "predictions.csv") as f:
        return {r["video"].split("/", 1)[1]: np.array([float(r[f"logit_{c}"]) for c in range(3)])
                for r in csv.DictReader(f)}


def predict(tmp_path, video, ckpt, *extra, name="out"):
    import predict as p
    assert cli(p.main, "--video", video, "--modelStateDict", ckpt, "--outDir", tmp_path / name, "--quiet", *extra) == 0
    with open(tmp_path / name / "prediction.json") as f:
        return json.load(f)


def expected_frames(n):
    """1-based frame numbers floor(linspace(1, N, seqLen, endpoint=False)): Ego-RNN's test frames."""
    return [int(np.floor(1 + i * (n - 1) / SEQ)) for i in range(SEQ)]


def assert_same_logits(got, want):
    got = np.asarray(got)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max())), (got, want)


@pytest.mark.parametrize("model", ["rgb", "flow", "twostream"])
def test_prediction_equals_evaluate_on_the_prepared_video(setup, tmp_path, capsys, model):
    ckpt = setup / "rgb" / "stage1" / "best_model.pth" if model == "rgb" else setup / f"{model}.pth"
    want = evaluate_logits(setup, model, ckpt, tmp_path)
    video = "S2/put_cup/1"
    got = predict(tmp_path, setup / "syn" / "videos" / (video + ".mp4"), ckpt, "--topk", "2")
    assert_same_logits(got["logits"], want[video])
    n = len(os.listdir(setup / "data" / "processed_frames2" / video / "rgb"))
    assert got["num_frames"] == n
    if model != "flow":
        assert got["frame_numbers"] == expected_frames(n)
    if model != "rgb":  # the flow the checkpoint's data were prepared with (the setup's: Farneback + warp)
        assert got["flow"] == "farneback + warp" and got["flowScale"] == "output"
    if model == "flow":  # 5 stacks of 5 flow frames at int(linspace(1, N_f - 4, 5, endpoint=False))
        nf = n - 1
        assert got["flow_stacks"] == [[int(s) + j for j in range(5)] for s in np.linspace(1, nf - 4, 5, endpoint=False)]
    p = torch.softmax(torch.tensor(want[video]), 0).numpy()
    order = np.argsort(-p)[:2]
    assert [t["action"] for t in got["top"]] == [CLASSES[i] for i in order]
    out = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(out) if line.split()[:3] == ["rank", "action", "probability"])
    for r in range(2):  # the printed table: rank, action, probability
        rank, action, prob = out[head + 1 + r].split()
        # 4 decimals of a probability equal up to 1e-5: one rounding step either way
        assert (rank, action) == (str(r + 1), CLASSES[order[r]]) and abs(float(prob) - p[order[r]]) <= 6e-5
    assert "clips/s" in out[-1]


def test_a_folder_of_frames_is_a_video(setup, tmp_path):
    """The prepared frames of a video, given as a folder, give evaluate.py's logits too."""
    ckpt = setup / "rgb" / "stage1" / "best_model.pth"
    want = evaluate_logits(setup, "rgb", ckpt, tmp_path)
    got = predict(tmp_path, setup / "data" / "processed_frames2" / "S2" / "take_cup" / "1" / "rgb", ckpt)
    assert_same_logits(got["logits"], want["S2/take_cup/1"])


def test_training_records_the_preparation_and_predict_and_evaluate_follow_it(setup, tmp_path, capsys):
    """The RGB run copied the dataset's markers into its config; a flow model run with another
    flow scale, or evaluated on data prepared otherwise, is a warning naming both."""
    import evaluate
    prep = torch.load(setup / "rgb" / "stage1" / "best_model.pth", weights_only=True)["config"]["preparation"]
    assert {k: prep[k] for k in ("flow", "warp", "flowScale", "version")} == \
        {"flow": "farneback", "warp": True, "flowScale": "output", "version": prepare.VERSION}
    video = setup / "syn" / "videos" / "S2" / "put_cup" / "1.mp4"
    capsys.readouterr()
    got = predict(tmp_path, video, setup / "flow.pth", "--flowScale", "source")
    err = capsys.readouterr().err
    assert got["flowScale"] == "source" and "--flowScale source" in err and "flowScale output" in err, err
    ck = torch.load(setup / "flow.pth", weights_only=True)
    ck["config"]["preparation"] = dict(ck["config"]["preparation"], flow="tvl1")
    torch.save(ck, tmp_path / "tvl1.pth")
    assert cli(evaluate.main, "--model", "flow", "--datasetDir", setup / "data", "--modelStateDict",
               tmp_path / "tvl1.pth", "--outDir", tmp_path / "ev", "--numWorkers", "0") == 0
    warning = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and "flow farneback" in warning[0] and "flow tvl1" in warning[0], warning


def test_an_original_flow_file_is_taken_as_tvl1_at_source_scale(setup, tmp_path):
    bare = tmp_path / "flow_state_dict.pth"  # weights only, as the original code saves them
    torch.save(torch.load(setup / "flow.pth", weights_only=True)["model"], bare)
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    got = predict(tmp_path, setup / "syn" / "videos" / "S2" / "put_cup" / "1.mp4", bare, "--classNames", names)
    assert got["flow"] == "tvl1 + warp" and got["flowScale"] == "source"


def test_a_video_shorter_than_seqlen_repeats_frames_as_the_loaders(setup, tmp_path):
    """6 frames, seqLen 8: floor(linspace(1, 6, 8, endpoint=False)) = floor(1, 1.625, 2.25,
    2.875, 3.5, 4.125, 4.75, 5.375) = 1 1 2 2 3 4 4 5."""
    frames = setup / "data" / "processed_frames2" / "S2" / "take_cup" / "1" / "rgb"
    short = tmp_path / "six"
    short.mkdir()
    for name in sorted(os.listdir(frames))[:6]:
        (short / name).write_bytes((frames / name).read_bytes())
    got = predict(tmp_path, short, setup / "rgb" / "stage1" / "best_model.pth", "--seqLen", "8")
    assert got["frame_numbers"] == [1, 1, 2, 2, 3, 4, 4, 5]


# A 10 frames/s video of 20 frames: frame k (from 0) at k / 10 s, 2.0 s long. Windows of 0.6 s every
# 0.5 s start at 0, 0.5 and 1.0, and a tail window ends at the video's end; every window edge lies
# exactly on a frame's time, and a frame on a window's end belongs to the next window only.
# (start s, end s, first frame numbered from 1, frames), by hand:
WINDOWS = [(0.0, 0.6, 1, 6),    # frames at 0.0 .. 0.5; 0.6 is the end
           (0.5, 1.1, 6, 6),    # 0.5 .. 1.0
           (1.0, 1.6, 11, 6),   # 1.0 .. 1.5
           (1.4, 2.0, 15, 6)]   # the tail: 1.4 .. 1.9


def test_windows_take_the_frames_from_their_start_up_to_before_their_end():
    from types import SimpleNamespace
    import predict as p
    source = SimpleNamespace(times=[k / 10 for k in range(20)], rate=10.0, duration=2.0, path="v.mp4")
    clips = p.plan_clips(source, {"family": "rgb", "seqLen": SEQ}, 0.6, 0.5)
    assert (clips[0]["first"], clips[0]["n"]) == (0, 20)  # the whole video
    got = [(c["start"], c["end"], c["first"] + 1, c["n"]) for c in clips[1:]]
    assert got == [pytest.approx(w) for w in WINDOWS]
    # stride = window: back to back, each frame in one window (0.5 s: frames 0-4, 5-9, ...)
    clips = p.plan_clips(source, {"family": "rgb", "seqLen": SEQ}, 0.5, 0.5)
    assert [(c["first"] + 1, c["n"]) for c in clips[1:]] == [(1, 5), (6, 5), (11, 5), (16, 5)]


def test_cam_and_timeline_files(setup, tmp_path):
    from datasets.prepare.video import read_frames, write_video
    ckpt = setup / "rgb" / "stage1" / "best_model.pth"
    video = tmp_path / "v.mp4"
    write_video(video, syn.render_video("open_box", 1, 20, size=(80, 60))["rgb"], 10)
    got = predict(tmp_path, video, ckpt, "--window", "0.6", "--stride", "0.5", "--topk", "3")
    out = tmp_path / "out"
    assert got["num_frames"] == 20 and got["windows"] == len(WINDOWS)
    with open(out / "timeline.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(float(r["start_s"]), float(r["end_s"]), int(r["first_frame"]), int(r["frames"])) for r in rows] == \
        [pytest.approx(w) for w in WINDOWS]
    # every row: the same model on a folder holding just that window's frames
    frames = list(read_frames(video, short_side=256))
    for i, (_, _, first, n) in enumerate(WINDOWS):
        clip_dir = tmp_path / f"window{i}"
        clip_dir.mkdir()
        for k in range(first - 1, first - 1 + n):
            Image.fromarray(frames[k]).save(clip_dir / f"f{k:03d}.png")
        alone = predict(tmp_path, clip_dir, ckpt, "--topk", "3", name=f"alone{i}")
        assert [t["action"] for t in alone["top"]] == [rows[i][f"action_{k}"] for k in (1, 2, 3)]
        assert [t["probability"] for t in alone["top"]] == \
            pytest.approx([float(rows[i][f"prob_{k}"]) for k in (1, 2, 3)], abs=2e-6)
    # CAM video: seqLen frames per window, in time order; the strip and the timeline are images
    cam = list(read_frames(out / "cam.mp4"))
    assert len(cam) == SEQ * len(rows) and cam[0].shape[1] == 224 and cam[0].shape[0] > 224
    for png in ("cam.png", "timeline.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 300
    # without windows: the whole video's clip only
    predict(tmp_path, video, ckpt, name="whole")
    assert len(list(read_frames(tmp_path / "whole" / "cam.mp4"))) == SEQ
    assert not (tmp_path / "whole" / "timeline.csv").exists()


def test_original_egornn_file_needs_class_names_and_gives_the_same_logits(setup, tmp_path, capsys):
    from models import EgoRNN, load_checkpoint
    from tests.test_models import _original_rgb_state
    ckpt = setup / "rgb" / "stage1" / "best_model.pth"
    model = EgoRNN(3, mem_size=MEM, pretrained="none")
    load_checkpoint(model, ckpt)
    original = tmp_path / "model_rgb_state_dict.pth"
    torch.save(_original_rgb_state(model), original)
    video = setup / "syn" / "videos" / "S2" / "put_cup" / "1.mp4"
    assert_one_line_error(cli(__import__("predict").main, "--video", video, "--modelStateDict", original,
                              "--outDir", tmp_path / "x"), capsys, "--classNames")
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    # the frame size is the original's 224 (no record in the file): the same model at 224 px
    got = predict(tmp_path, video, original, "--classNames", names, "--seqLen", SEQ)
    mine = torch.load(ckpt, weights_only=True)
    mine["config"]["frameSize"] = 224
    torch.save(mine, tmp_path / "at224.pth")
    want = predict(tmp_path, video, tmp_path / "at224.pth", name="at224")
    assert_same_logits(got["logits"], np.array(want["logits"]))
    assert got["frameSize"] == 224 and got["seqLen"] == SEQ


def test_evaluate_reads_the_memory_size_of_a_file_without_a_record(setup, tmp_path, capsys):
    """A two-stream file holding only weights (as the original code saves them): evaluate.py
    takes the ConvLSTM size from the weights (16 here, 512 by default) and scores as with the record."""
    import evaluate
    want = evaluate_logits(setup, "twostream", setup / "twostream.pth", tmp_path)
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(setup / "twostream.pth", weights_only=True)["model"], bare)
    got = evaluate_logits(setup, "twostream", bare, tmp_path, "--seqLen", SEQ, "--frameSize", SIZE, name="bare")
    assert got.keys() == want.keys()
    for video in want:
        assert_same_logits(got[video], want[video])
    capsys.readouterr()
    assert_one_line_error(cli(evaluate.main, "--model", "twostream", "--datasetDir", setup / "data",
                              "--modelStateDict", bare, "--seqLen", SEQ, "--frameSize", SIZE, "--memSize", "32",
                              "--outDir", tmp_path / "x"), capsys, "--memSize 32", "--memSize 16")
    assert not (tmp_path / "x").exists()


def assert_one_line_error(code, capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err and err[-1].startswith("error: "), (code, err)
    assert not any("Traceback" in line for line in err)
    for n in needles:
        assert n in err[-1], (n, err[-1])


def test_bad_input_is_one_line_and_exit_2(setup, tmp_path, capsys):
    from datasets.prepare.video import write_video
    import predict as p
    ckpt = setup / "rgb" / "stage1" / "best_model.pth"
    video = setup / "syn" / "videos" / "S2" / "put_cup" / "1.mp4"

    def run(*argv):
        return cli(p.main, "--outDir", tmp_path / "o", *argv)

    assert_one_line_error(run("--video", tmp_path / "nothing.mp4", "--modelStateDict", ckpt), capsys,
                          "nothing.mp4", "no such file")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    assert_one_line_error(run("--video", text, "--modelStateDict", ckpt), capsys, "notes.mp4", "cannot open video")
    cut = tmp_path / "cut.mp4"  # the first half of a real file: truncated
    data = video.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    assert_one_line_error(run("--video", cut, "--modelStateDict", ckpt), capsys, "cut.mp4")
    other = tmp_path / "resnet.pth"
    torch.save({"weight": torch.zeros(3), "bias": torch.zeros(3)}, other)
    assert_one_line_error(run("--video", video, "--modelStateDict", other), capsys, "resnet.pth",
                          "not an Ego-RNN / SAMSOP-Net checkpoint")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    assert_one_line_error(run("--video", video, "--modelStateDict", junk), capsys, "junk.pth")
    short = tmp_path / "short.mp4"  # 3 frames; the loaders' minimum is 5
    write_video(short, np.zeros((3, 48, 64, 3), np.uint8), FPS)
    assert_one_line_error(run("--video", short, "--modelStateDict", ckpt), capsys, "short.mp4", "3 frames",
                          "needs 5")
    assert_one_line_error(run("--video", video, "--modelStateDict", ckpt, "--window", "60"), capsys, "--window")
    assert not (tmp_path / "o").exists()  # nothing written by a failed run
    # an earlier result is not overwritten
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "prediction.json").write_text("{}")
    assert_one_line_error(run("--video", video, "--modelStateDict", ckpt), capsys, "--overwrite")
    assert (tmp_path / "o" / "prediction.json").read_text() == "{}"


def test_large_video_is_scaled_down_as_datasets_prepare_does(setup, tmp_path):
    """A video larger than 256 px: predict.py decodes and scales it as datasets.prepare does
    (short side 256, INTER_AREA), so the prepared frames give the same logits."""
    from datasets.prepare.video import write_video
    ckpt = setup / "rgb" / "stage1" / "best_model.pth"
    video = tmp_path / "videos" / "S9" / "take_cup" / "1.mp4"
    video.parent.mkdir(parents=True)
    write_video(video, syn.render_video("take_cup", 0, 8, size=(320, 288))["rgb"], FPS)
    assert prepare.main(["--videos", str(tmp_path / "videos"), "--outDir", str(tmp_path / "data"), "--only", "frames",
                         "--numWorkers", "1", "--quiet"]) == 0
    frames = tmp_path / "data" / "processed_frames2" / "S9" / "take_cup" / "1" / "rgb"
    with Image.open(frames / "rgb0001.png") as im:
        assert im.size == (284, 256)  # 320 x 288 scaled by 256 / 288
    got = predict(tmp_path, video, ckpt)
    want = predict(tmp_path, frames, ckpt, name="frames")
    assert_same_logits(got["logits"], np.array(want["logits"]))


def test_long_video_is_one_action_after_another(tmp_path):
    from datasets.prepare.long_video import main
    from datasets.prepare.video import frame_times
    video = tmp_path / "long.mp4"
    assert main(["--out", str(video), "--seconds", "2", "--fps", "10", "--size", "48x32", "--actionSeconds", "0.7",
                 "--classes", "2"]) == 0
    assert len(frame_times(video)) == 20
    with open(tmp_path / "long.csv") as f:
        rows = [(float(r["start_s"]), float(r["end_s"]), r["action"]) for r in csv.DictReader(f)]
    assert rows == [(0.0, 0.7, "take_cup"), (0.7, 1.4, "put_cup"), (1.4, 2.0, "take_cup")]  # the generator's order


def test_the_default_output_folder_is_one_per_video_path():
    """Two videos named 1.mp4 in different class folders (GTEA-61's layout) must not write to the
    same folder; the same path, however spelled, goes to the same one."""
    from predict import default_out_dir
    take, open_ = default_out_dir("S2/take_cup/1.mp4"), default_out_dir("S2/open_box/1.mp4")
    assert take != open_
    assert default_out_dir("S3/take_cup/1.mp4") != take  # same folder name, other user
    assert default_out_dir("./S2/take_cup/1.mp4") == default_out_dir("S2//take_cup/1.mp4") == take
    assert take.startswith(os.path.join("experiments", "predict", "take_cup_1-"))
