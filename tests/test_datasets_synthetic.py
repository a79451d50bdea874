"""Synthetic generator: deterministic, motion maps ignore the camera, CLI, loads in both layouts."""
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from datasets import GTEA61, DatasetError
from datasets.prepare import synthetic as syn

ROOT = Path(__file__).resolve().parents[1]

SMALL = ["--classes", "4", "--instances", "1", "--users", "S1", "S2", "S3", "--size", "64x48"]


def tree_digest(root):
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(d, f)
            h.update(os.path.relpath(p, root).encode())
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small_course(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "course"
    assert syn.main(["--outDir", str(out), *SMALL]) == 0
    return str(out)


def test_class_names():
    assert syn.class_names(8) == list(syn.DEFAULT_CLASSES)
    pool = syn.class_pool()
    assert len(set(pool)) == len(pool) and "stir_spoon,cup" in pool
    for name in pool:
        verb, noun = name.split("_", 1)
        assert all(n in syn.NOUNS for n in noun.split(","))


def test_deterministic_for_a_seed(tmp_path, small_course):
    again = tmp_path / "again"
    assert syn.main(["--outDir", str(again), *SMALL]) == 0
    assert tree_digest(again) == tree_digest(small_course)
    other = tmp_path / "other"
    assert syn.main(["--outDir", str(other), *SMALL, "--seed", "1"]) == 0
    assert tree_digest(other) != tree_digest(small_course)


def test_egornn_layout_deterministic_and_loadable(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["--layout", "egornn", "--classes", "2", "--instances", "1", "--users", "S1", "S2",
            "--size", "48x36", "--noShort"]
    assert syn.main(["--outDir", str(a), *args]) == 0
    assert syn.main(["--outDir", str(b), *args]) == 0
    assert tree_digest(a) == tree_digest(b)
    assert os.path.isfile(a / "frames" / "S1" / "take_cup" / "1" / "image_00001.jpg")
    ds = GTEA61(a, ["S1", "S2"], "twostream", train=True, seqLen=4, frameSize=32)
    assert ds.layout == "egornn" and len(ds) == 4 and ds.num_skipped == 0
    assert ds.classes == ["put_cup", "take_cup"]
    ds[0]


def test_course_dataset_loads_with_quirks(small_course, capsys):
    names = syn.class_names(4)
    rgb0 = os.path.join(small_course, "processed_frames2", "S1", names[0], "1", "rgb")
    assert os.path.isfile(os.path.join(rgb0, "rgb0003(1).png"))
    assert os.path.isfile(os.path.join(rgb0, ".DS_Store"))
    assert os.path.isfile(os.path.join(small_course, "processed_frames2", "S1", ".DS_Store"))
    maps = os.path.join(small_course, "processed_frames2", "S1", names[1], "1", "mmaps")
    rgbs = os.path.join(small_course, "processed_frames2", "S1", names[1], "1", "rgb")
    assert len(os.listdir(maps)) == len(os.listdir(rgbs)) - 1  # one map index missing

    for modality in ("rgb", "flow", "twostream", "rgb_mmaps"):
        ds = GTEA61(small_course, ["S1", "S3"], modality, train=True, seqLen=8, frameSize=32, mapSize=1)
        assert ds.classes == sorted(names)
        assert ds.num_skipped == 2 and len(ds) == 6  # the 4- and 3-frame videos
        for i in range(len(ds)):
            ds[i]
    assert "skipped 2 video" in capsys.readouterr().err
    ds = GTEA61(small_course, ["S1"], "rgb", train=False, seqLen=4, frameSize=32)
    vid = ds.video_ids.index(f"processed_frames2/S1/{names[0]}/1")
    real = [f for f in os.listdir(rgb0) if re.fullmatch(r"rgb\d{4}\.png", f)]
    assert ds.num_frames[vid] == len(real) == len(os.listdir(rgb0)) - 2  # no duplicate, no .DS_Store
    test = GTEA61(small_course, ["S2"], "rgb", train=False, seqLen=4, frameSize=32)
    assert test.num_skipped == 0 and len(test) == 4


def test_no_short_and_no_quirks(tmp_path):
    out = tmp_path / "clean"
    assert syn.main(["--outDir", str(out), *SMALL, "--noShort", "--noQuirks"]) == 0
    ds = GTEA61(out, ["S1", "S2", "S3"], "rgb_mmaps", train=False, seqLen=4, frameSize=32, mapSize=1)
    assert ds.num_skipped == 0 and len(ds) == 12
    assert not any(".DS_Store" in f or "(1)" in f for _, _, fs in os.walk(out) for f in fs)


def test_if_missing_and_refusals(tmp_path, small_course, capsys):
    t = time.time()
    assert syn.main(["--outDir", small_course, "--ifMissing", *SMALL]) == 0
    assert time.time() - t < 2
    assert "already complete" in capsys.readouterr().out
    # a folder with other content is never overwritten
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert syn.main(["--outDir", str(other), *SMALL, "--ifMissing"]) == 2
    assert "not a complete synthetic dataset" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep"
    assert syn.main(["--outDir", str(tmp_path / "x"), "--classes", "99"]) == 2
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_generation_failing_midway_leaves_nothing_and_reruns(tmp_path, monkeypatch, small_course, error):
    """Ctrl-C or a full disk after some videos are written: no dataset folder and no partial
    files are left; rerunning writes the complete dataset."""
    out = tmp_path / "d"
    real_render, real_save = syn.render_video, syn._save
    rendered, saved = [], []

    def render(*a, **k):
        rendered.append(1)
        if len(rendered) == 4:
            raise error()
        return real_render(*a, **k)

    def save(*a, **k):
        saved.append(a[1])
        return real_save(*a, **k)
    monkeypatch.setattr(syn, "render_video", render)
    monkeypatch.setattr(syn, "_save", save)
    with pytest.raises(error):
        syn.main(["--outDir", str(out), *SMALL])
    assert len(saved) > 20 and all(".tmp-" in p for p in saved)  # three videos were on disk
    assert not out.exists() and os.listdir(tmp_path) == []
    monkeypatch.setattr(syn, "render_video", real_render)
    assert syn.main(["--outDir", str(out), *SMALL, "--ifMissing"]) == 0
    assert syn.is_complete(out) and tree_digest(out) == tree_digest(small_course)


# The generator, slowed down so that a kill lands in the middle of writing the videos.
SLOW_GENERATOR = ("import sys, time; from datasets.prepare import synthetic as s; save = s._save; "
                  "s._save = lambda *a: (time.sleep(0.01), save(*a)); sys.exit(s.main(sys.argv[1:]))")


def test_generation_killed_midway_is_never_read_and_reruns(tmp_path, small_course):
    """SIGKILL (no clean-up runs) while videos are being written: the dataset folder does not
    exist, so nothing can read the half-written videos; rerunning with --ifMissing writes the
    complete dataset, identical to an uninterrupted generation."""
    out = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_GENERATOR, "--outDir", str(out), *SMALL], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    written = []
    deadline = time.time() + 120
    while time.time() < deadline and len(written) < 30 and proc.poll() is None:
        written = [f for d, _, fs in os.walk(tmp_path) for f in fs if f.endswith(".png")]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the generator finished before it could be killed"
    assert len(written) >= 30
    assert not out.exists() and not syn.is_complete(out)
    with pytest.raises(DatasetError, match=str(out)):
        GTEA61(out, ["S1"], "rgb", train=False, seqLen=4, frameSize=32)
    killed = [e for e in os.listdir(tmp_path) if e.startswith(f".d.tmp-{proc.pid}-")]
    assert len(killed) == 1
    running = tmp_path / f".d.tmp-{os.getppid()}-x"  # another generator still at work: not touched
    running.mkdir()
    assert syn.main(["--outDir", str(out), *SMALL, "--ifMissing"]) == 0
    assert syn.is_complete(out) and tree_digest(out) == tree_digest(small_course)
    assert sorted(os.listdir(tmp_path)) == sorted(["d", running.name])  # the killed run's work folder is gone
    ds = GTEA61(out, ["S1", "S2", "S3"], "rgb_mmaps", train=False, seqLen=4, frameSize=32, mapSize=1)
    assert len(ds) == 10 and ds.num_skipped == 2


@pytest.mark.parametrize("cls", ["take_cup", "close_box", "push_bread", "stir_spoon,cup"])
def test_motion_maps_and_flow_ignore_camera_motion(cls):
    n = 12
    moving = syn.render_video(cls, 1, n, size=(80, 60), seed=5)
    still = syn.render_video(cls, 1, n, size=(80, 60), seed=5, camera=False)
    cam = moving["camera"]
    assert len({tuple(c) for c in cam}) > n // 2  # the camera does move
    # the background changes between frames (camera motion is visible in the RGB) ...
    bg = ~(moving["moving"][:-1] | moving["moving"][1:])
    diff = np.abs(moving["rgb"][1:].astype(int) - moving["rgb"][:-1]).sum(-1) > 0
    assert (diff & bg).sum() > 0.1 * bg.sum()
    # ... but maps and flow only mark what moves in the scene: they equal the still-camera
    # video's, shifted by the camera offset
    M = syn._Video(cls, 80, 60, np.random.default_rng(0)).M
    H, W = 60, 80
    for k in range(n):
        dx, dy = cam[k] - M
        ys, xs = slice(max(0, -dy), min(H, H - dy)), slice(max(0, -dx), min(W, W - dx))
        ys2, xs2 = slice(ys.start + dy, ys.stop + dy), slice(xs.start + dx, xs.stop + dx)
        assert np.array_equal(moving["mmaps"][k][ys, xs], still["mmaps"][k][ys2, xs2])
        if k < n - 1:
            for a in ("flow_x", "flow_y"):
                assert np.array_equal(moving[a][k][ys, xs], still[a][k][ys2, xs2])
    assert (moving["mmaps"] > 0).any()
    assert not (moving["mmaps"][~moving["moving"]]).any()
    assert (moving["flow_x"][~moving["moving"][:-1]] == 128).all()


def test_flow_images_hold_dense_flows_levels_of_the_scene_flow():
    # GTEA-61's flow images were written by dense_flow: level = round(255 (clip(d, -20, 20) + 20) / 40),
    # so 0 px -> 128, +1 px -> 134 (133.875), -1 px -> 121 (121.125), +-20 px -> 255 / 0
    v = syn.render_video("take_cup", 1, 10, size=(80, 60), seed=3)
    d = v["scene_flow"]  # (N-1, H, W, 2), the displacement each flow pixel stands for
    for axis, name in ((0, "flow_x"), (1, "flow_y")):
        want = np.floor(255 * (np.clip(d[..., axis].astype(np.float64), -20, 20) + 20) / 40 + 0.5)
        assert np.array_equal(v[name].astype(np.float64), want), name
    assert (np.abs(d) > 0.5).any()  # something moved by at least a level


def test_reversed_verbs_are_time_reversals():
    for a, b in (("take_cup", "put_cup"), ("open_box", "close_box"), ("push_bread", "pull_bread")):
        va = syn._Video(a, 160, 120, np.random.default_rng(1))
        vb = syn._Video(b, 160, 120, np.random.default_rng(1))
        for t in np.linspace(0, 1, 9):
            pa, pb = va.parts(float(t)), vb.parts(1 - float(t))
            for k in pa:
                assert (pa[k] is None and pb[k] is None) or np.allclose(pa[k], pb[k])
