"""From videos to datasets: decoding (counts, order, rate, rotation), warp flow on a known camera
motion, the flow encoding, datasets.prepare into both layouts and the loaders, training on the
result, bad videos, and a run killed mid-video then resumed."""
import fractions
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import GTEA61, markers
from datasets.prepare import prepare
from datasets.prepare import synthetic as syn
from datasets.prepare import warpflow
from datasets.prepare.video import probe, read_frames, write_video
from utils.errors import UserError

av = pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
FAST = ["--flow", "farneback", "--numWorkers", "1"]


def tree_digest(root, skip=(markers.STATE,)):
    """Hash of every file's path and bytes under root (folders in `skip` left out)."""
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(root)):
        dirs[:] = sorted(x for x in dirs if x not in skip)
        for f in sorted(files):
            p = os.path.join(d, f)
            h.update(os.path.relpath(p, root).encode())
            h.update(Path(p).read_bytes())
    return h.hexdigest()


def count(folder, prefix):
    return len([f for f in os.listdir(folder) if f.startswith(prefix)])


def level_video(path, n, codec, fps, size=(64, 48), **kw):
    """n frames, frame k uniformly grey at level 10 * k: the decoded level says which frame it is."""
    w, h = size
    frames = np.stack([np.full((h, w, 3), 10 * k, np.uint8) for k in range(n)])
    write_video(path, frames, fps, codec, **kw)


def levels(frames):
    return [int(round(float(f.mean()) / 10)) for f in frames]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """The synthetic dataset as videos: 2 classes x 4 users, one video each, 64x48."""
    out = tmp_path_factory.mktemp("syn") / "videos"
    assert syn.main(["--outDir", str(out), "--layout", "videos", "--classes", "2", "--instances", "1",
                     "--size", "64x48", "--noShort"]) == 0
    return out


@pytest.fixture(scope="module")
def prepared(videos, tmp_path_factory):
    """datasets.prepare of `videos` into both layouts (Farneback: fast)."""
    out = {}
    for layout in ("course", "egornn"):
        d = tmp_path_factory.mktemp("prep") / layout
        assert prepare.main(["--videos", str(videos / "videos"), "--outDir", str(d), "--layout", layout, *FAST]) == 0
        out[layout] = d
    return out


# ---- decoding -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,codec,fps", [("a.mp4", "libx264", fractions.Fraction(30000, 1001)),
                                            ("b.avi", "mpeg4", 25), ("c.webm", "libvpx-vp9", 15),
                                            ("d.mov", "mjpeg", 12), ("e.mkv", "ffv1", 24)])
def test_decoded_frames_are_the_containers_in_order(tmp_path, name, codec, fps):
    path = str(tmp_path / name)
    level_video(path, 23, codec, fps)
    with av.open(path) as c:  # the container's own count: its header, else its packets
        s = c.streams.video[0]
        listed = s.frames or sum(1 for p in c.demux(s) if p.size)
    assert listed == 23
    frames = list(read_frames(path))
    assert len(frames) == listed
    assert levels(frames) == list(range(23))  # each frame once, in presentation order


def test_fps_resampling_takes_the_nearest_frame(tmp_path):
    path = str(tmp_path / "v.mp4")
    level_video(path, 23, "libx264", 25)
    for fps in (10, 50):
        # output time j / fps shows source frame argmin_k |k / 25 - j / fps| (ties: the earlier)
        expected, j = [], 0
        while j / fps <= 22 / 25 + 1e-9:
            d = [abs(k / 25 - j / fps) for k in range(23)]
            expected.append(min(range(23), key=lambda k: (round(d[k], 9), k)))
            j += 1
        assert levels(read_frames(path, fps=fps)) == expected
    assert levels(read_frames(path, fps=10))[:4] == [0, 2, 5, 7]  # 2.5 and 7.5: ties


def _set_rotation(path, matrix):
    """Write a display matrix into an mp4's track header (what phones record)."""
    b = bytearray(Path(path).read_bytes())
    i = b.find(b"tkhd")
    version = b[i + 4]
    off = i + 8 + (28 if version == 1 else 20) + 8 + 8
    assert struct.unpack(">9i", b[off:off + 36]) == (65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30)
    b[off:off + 36] = struct.pack(">9i", *matrix)
    Path(path).write_bytes(bytes(b))


# tkhd display matrices (16.16 fixed point) and where the top-left corner of the stored frame shows
ROTATIONS = {90: ((0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30), (64, 48), "top-right"),    # clockwise
             180: ((-65536, 0, 0, 0, -65536, 0, 0, 0, 1 << 30), (48, 64), "bottom-right"),
             270: ((0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30), (64, 48), "bottom-left")}


@pytest.mark.parametrize("degrees", sorted(ROTATIONS))
def test_rotation_metadata_is_applied(tmp_path, degrees):
    matrix, shape, corner = ROTATIONS[degrees]
    path = str(tmp_path / "portrait.mp4")
    frames = np.zeros((3, 48, 64, 3), np.uint8)
    frames[:, :16, :16] = 255  # a white square in the top-left corner
    write_video(path, frames, 25)
    _set_rotation(path, matrix)
    out = list(read_frames(path))
    assert len(out) == 3 and out[0].shape == (*shape, 3)
    corners = {"top-left": out[0][:16, :16], "top-right": out[0][:16, -16:],
               "bottom-left": out[0][-16:, :16], "bottom-right": out[0][-16:, -16:]}
    for name, pixels in corners.items():
        assert (pixels.mean() > 200) == (name == corner), (name, pixels.mean())


def test_short_side(tmp_path):
    path = str(tmp_path / "v.mp4")
    level_video(path, 3, "libx264", 25)
    assert next(read_frames(path, short_side=100)).shape == (48, 64, 3)  # never enlarged
    assert probe(path)["frames"] == 3
    # 70 x 48 to short side 30: the long side is 70 * 30 / 48 = 43.75, rounded to 44 (int() gives 43).
    # Left half black, right half white, lossless: the edge stays in the middle, the levels stay.
    frame = np.zeros((48, 70, 3), np.uint8)
    frame[:, 35:] = 255
    for name, frames, want, axis in (("wide.mkv", frame, (30, 44), 1), ("tall.mkv", frame.transpose(1, 0, 2),
                                                                       (44, 30), 0)):
        write_video(str(tmp_path / name), np.stack([frames] * 3), 25, "ffv1", pix_fmt="yuv444p")
        out = next(read_frames(str(tmp_path / name), short_side=30))
        assert out.shape == (*want, 3)
        line = out.mean(axis=(1 - axis, 2))  # along the long side: 0 up to the middle, 255 after
        assert (line[:21] < 3).all() and (line[23:] > 252).all(), line
        assert abs(out.mean() - 127.5) < 3


# ---- warp flow ------------------------------------------------------------------------------
def _textured(h, w, seed=0):
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 2.0)
    return np.clip((noise - noise.mean()) * 4 + 128, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method", ["farneback", "tvl1"])
def test_camera_translation_is_removed_and_object_motion_kept(method):
    scene = _textured(140, 180)
    square = _textured(24, 24, seed=1)
    dx, dy = 3, -2  # the camera moves by (3, -2): the scene moves by (-3, +2) in the image
    a = scene[10:130, 10:170].copy()
    b = scene[10 + dy:130 + dy, 10 + dx:170 + dx].copy()
    a[40:64, 60:84] = square  # an object that moves 4 px right in the scene between a and b
    b[40 - dy:64 - dy, 64 - dx:88 - dx] = square
    m = warpflow.flow_method(method)
    plain, _, _, _ = warpflow.warp_flow(a, b, m, warp=False)
    bg = np.ones(a.shape[:2], bool)
    bg[30:75, 50:100] = False
    bg[:8], bg[-8:], bg[:, :8], bg[:, -8:] = False, False, False, False
    assert np.allclose(np.median(plain[bg], 0), (-dx, -dy), atol=0.3)
    flow, H, valid, ok = warpflow.warp_flow(a, b, m)
    assert ok and np.allclose(H[:2, 2], (-dx, -dy), atol=0.3) and np.allclose(H[:2, :2], np.eye(2), atol=0.02)
    # no source for the warp: zero flow (dense_flow), not the flow of stretched edge stripes
    assert (flow[~valid] == 0).all() and 0 < (~valid).mean() < 0.2
    mag = np.linalg.norm(flow[bg & valid], axis=-1)
    assert np.median(mag) < 0.1 and np.percentile(mag, 95) < 0.4
    assert np.allclose(np.median(flow[44:60, 64:80], axis=(0, 1)), (4, 0), atol=1.0)
    mmap = warpflow.motion_map(a, [flow], [valid])
    assert mmap[44:60, 64:80].mean() > 200 and (mmap[bg] > 0).mean() < 0.02


def test_motion_map_needs_motion_both_ways_so_occlusion_bands_stay_out():
    """3 frames, a still textured scene, a brighter square stepping 8 px right per frame. In frame 1
    the square covers x 48..71; x 72..79 is about to be covered (flow towards frame 2 gives it the
    square's motion) and x 40..47 was just uncovered (flow back to frame 0 does the same): each
    band moves in one direction only, the square in both. Either direction alone marks the bands
    (TV-L1 here: about 70 % of each)."""
    step, x1 = 8, 48
    scene = _textured(96, 128, seed=5) // 2 + 32
    square = (_textured(24, 24, seed=1) // 2 + 124).astype(np.uint8)
    frames = []
    for k in range(3):
        f = scene.copy()
        f[36:60, x1 + step * (k - 1):x1 + step * (k - 1) + 24] = square
        frames.append(f)
    maps = [m for _, _, _, m in warpflow.flows_and_maps(frames, warpflow.flow_method("tvl1"))]
    moving = maps[1] > 0
    assert moving[36:60, x1:x1 + 24].mean() > 0.8                  # the square
    assert moving[36:60, x1 + 24:x1 + 24 + step].mean() < 0.1      # the leading band
    assert moving[36:60, x1 - step:x1].mean() < 0.1                # the trailing band
    assert moving[:30].mean() < 0.02 and moving[66:].mean() < 0.02  # the still scene


def test_flow_encoding_is_dense_flows_and_the_loaders_flip_is_exact(tmp_path):
    # hand computation: v = round(255 * (clip(f, -20, 20) + 20) / 40); 0 -> 127.5 -> 128,
    # 1 -> 133.875 -> 134, -1 -> 121.125 -> 121, 0.3 -> 129.4125 -> 129, -0.3 -> 125.5875 -> 126
    x, y = warpflow.encode_flow(np.array([[[0.0, 1.0], [20.0, -20.0], [-1.0, 50.0], [0.3, -0.3]]], np.float32))
    assert x.tolist() == [[128, 255, 121, 129]] and y.tolist() == [[134, 0, 255, 126]]
    # the loaders' flip (255 - v) of f's level is -f's level (the old 128 + 6.375 f was one off)
    assert 255 - 134 == 121 and 255 - 129 == 126
    # decoding: f = 40 v / 255 - 20
    # 0 -> -20, 121 -> -1.0196, 128 -> 0.0784, 134 -> 1.0196, 255 -> 20, 127 -> -0.0784
    got = warpflow.decode_flow(np.uint8([0, 128, 255]), np.uint8([121, 134, 127]))
    assert np.allclose(got, [[-20.0, -1.0196], [0.0784, 1.0196], [20.0, -0.0784]], atol=1e-4)
    zero_x, _ = warpflow.encode_flow(np.zeros((48, 64, 2), np.float32))
    for ext in ("png", "jpg"):
        p = str(tmp_path / f"f.{ext}")
        prepare.write_image(p, zero_x)
        assert (np.asarray(Image.open(p)) == 128).all()


def test_warp_fills_pixels_without_source_from_the_previous_frame():
    """An exact translation H (a pixel x of prev is at x + (-3, 2) in cur). Hand computation:
    0 <= x - 3 <= W - 1 -> columns 3 .. W-1; 0 <= y + 2 <= H - 1 -> rows 0 .. H-3. Inside,
    out(x, y) = cur(x - 3, y + 2); outside, prev."""
    h, w = 40, 50
    prev, cur = _textured(h, w, seed=3), _textured(h, w, seed=4)
    H = np.array([[1.0, 0, -3], [0, 1, 2], [0, 0, 1]])
    out, valid = warpflow.warp_onto(cur, H, prev)
    want = np.zeros((h, w), bool)
    want[0:h - 2, 3:w] = True
    assert (valid == want).all()
    assert (out[~want] == prev[~want]).all()
    assert (out[0:h - 2, 3:w] == cur[2:h, 0:w - 3]).all()


def _grid_matches(h, w, consistent, seed=0):
    """A flow field whose grid samples (step 4 from 2 on these small frames) follow the
    translation (1.5, -0.5) for the first `consistent` samples and point 5-15 px elsewhere for
    the others."""
    rng = np.random.default_rng(seed)
    flow = np.zeros((h, w, 2), np.float32)
    flow[...] = (1.5, -0.5)
    ys, xs = np.mgrid[2:h:4, 2:w:4]
    for n, (y, x) in enumerate(zip(ys.ravel(), xs.ravel())):
        if n >= consistent:
            r, t = rng.uniform(5, 15), rng.uniform(0, 2 * np.pi)
            flow[y, x] += (r * np.cos(t), r * np.sin(t))
    return flow, ys.size


@pytest.mark.parametrize("h, w, consistent, accepted", [
    (20, 40, 50, False),   # 5 x 10 = 50 samples, all on the translation: not more than 50 matches
    (16, 54, 52, True),    # 4 x 13 = 52 samples, all inliers
    (16, 54, 25, False),   # 52 samples, 25 inliers: not more than 25
    (16, 54, 26, True)])   # 52 samples, 26 inliers
def test_homography_needs_more_than_50_matches_and_25_inliers(h, w, consistent, accepted):
    flow, samples = _grid_matches(h, w, consistent)
    assert samples == (50 if h == 20 else 52)
    frame = np.zeros((h, w, 3), np.uint8)
    H, ok = warpflow.camera_homography(frame, frame, flow, keypoints=False)
    assert ok == accepted
    if accepted:
        assert np.allclose(H[:2, 2], (1.5, -0.5), atol=1e-3) and np.allclose(H[:2, :2], np.eye(2), atol=1e-4)
    else:
        assert (H == np.eye(3)).all()


def test_refused_homographies_are_counted_per_video():
    # 24 x 24 frames: 6 x 6 = 36 grid samples and no ORB keypoints (ORB keeps 31 px from the
    # edges): every one of the 3 frame pairs is refused
    frames = [_textured(24, 24, seed=k) for k in range(4)]
    stats = {}
    out = list(warpflow.flows_and_maps(frames, warpflow.flow_method("farneback"), stats=stats))
    assert len(out) == 4 and stats == {"refused": 3}


def test_still_video_gives_flow_128_in_both_layouts(tmp_path):
    still = np.repeat(_textured(48, 64)[None], 6, 0)
    os.makedirs(tmp_path / "v" / "S1" / "c")
    write_video(str(tmp_path / "v" / "S1" / "c" / "1.mkv"), still, 25, "ffv1")  # lossless: equal frames
    for layout, d, warp in (("course", "flow_x_processed", []), ("egornn", "flow_x", ["--noWarp"])):
        out = tmp_path / layout
        # TV-L1 gives exactly zero flow between equal frames (Farneback up to 0.1 px)
        assert prepare.main(["--videos", str(tmp_path / "v"), "--outDir", str(out), "--layout", layout,
                             *warp, *FAST, "--flow", "tvl1"]) == 0
        for axis in ("x", "y"):
            folder = out / d.replace("_x", "_" + axis) / "S1" / "c" / "1"
            files = sorted(os.listdir(folder))
            assert len(files) == 5
            for f in files:
                assert (np.asarray(Image.open(folder / f)) == 128).all(), (layout, f)


def test_motion_threshold_is_a_fraction_of_the_short_side():
    """A uniform compensated flow of 0.75 px: moving at a 120 px short side (threshold 120 / 240
    = 0.5 px), still at 240 px (threshold 1 px); 1.25 px moves at 240. The guided filter keeps
    a uniform mask as it is."""
    for (h, w), speed, want in (((120, 160), 0.75, 255), ((240, 320), 0.75, 0), ((240, 320), 1.25, 255)):
        flow = np.zeros((h, w, 2), np.float32)
        flow[..., 0] = speed
        mmap = warpflow.motion_map(_textured(h, w), [flow])
        assert (mmap == want).all(), (h, speed)


def test_flow_scale_source_or_output_and_the_marker_records_the_preparation(tmp_path):
    """A 64 x 48 video whose content moves 3 px left per frame, prepared at --shortSide 32
    (43 x 32: a factor 48 / 32 = 1.5) without the warp: the flow written is -2 px (output
    pixels) or -3 px (source pixels). The markers hold the settings and the sizes."""
    scene = _textured(48, 100, seed=7)
    frames = np.stack([scene[:, 3 * k:3 * k + 64] for k in range(5)])
    os.makedirs(tmp_path / "v" / "S1" / "c")
    write_video(str(tmp_path / "v" / "S1" / "c" / "1.mkv"), frames, 25, "ffv1", pix_fmt="yuv444p")
    for scale, want in (("output", -2.0), ("source", -3.0)):
        out = tmp_path / scale
        assert prepare.main(["--videos", str(tmp_path / "v"), "--outDir", str(out), "--noWarp", "--shortSide", "32",
                             "--flowScale", scale, "--only", "flow", *FAST]) == 0
        fx = [np.asarray(Image.open(out / "flow_x_processed" / "S1" / "c" / "1" / f"flow_x_{k:05d}.png"))
              for k in range(1, 5)]
        fy = [np.asarray(Image.open(out / "flow_y_processed" / "S1" / "c" / "1" / f"flow_y_{k:05d}.png"))
              for k in range(1, 5)]
        flow = warpflow.decode_flow(np.stack(fx), np.stack(fy))[:, 6:-6, 6:-6]  # away from the edges
        assert abs(np.median(flow[..., 0]) - want) < 0.3 and abs(np.median(flow[..., 1])) < 0.2, (scale, np.median(flow, (0, 1, 2)))
        with open(out / ".prepare" / "done" / "flow" / "S1" / "c" / "1.json") as f:
            marker = json.load(f)
        assert {k: marker[k] for k in ("flow", "warp", "flowScale", "version", "sourceSize", "outputSize", "refused")} \
            == {"flow": "farneback", "warp": False, "flowScale": scale, "version": 2, "sourceSize": [64, 48],
                "outputSize": [43, 32], "refused": 0}
        assert markers.preparation(str(out)) == {"flow": "farneback", "warp": False, "flowScale": scale, "version": 2,
                                                 "sourceSize": [64, 48], "outputSize": [43, 32], "videos": 1}
    assert markers.preparation(str(tmp_path / "v")) is None  # not made by datasets.prepare


# ---- datasets.prepare -----------------------------------------------------------------------
def test_synthetic_videos_layout(videos):
    names = syn.class_names(2)
    for user in syn.DEFAULT_USERS:
        for cls in names:
            truth = np.load(videos / "truth" / user / cls / "1" / "truth.npz")
            n = len(truth["moving"])
            frames = list(read_frames(str(videos / "videos" / user / cls / "1.mp4")))
            assert len(frames) == n == count(videos / "truth" / user / cls / "1", "map")
            step = np.diff(truth["camera"], axis=0)[:, None, None, :]
            assert np.allclose(truth["flow"], truth["scene_flow"] - step, atol=1e-5)
            maps = np.stack([np.asarray(Image.open(videos / "truth" / user / cls / "1" / f"map{k + 1:04d}.png"))
                             for k in range(n)])
            assert not maps[~truth["moving"]].any() and maps[truth["moving"]].all()
            # the true flow is the decoded pixels' motion: frame k at x is frame k+1 at x + flow(x).
            # On the parts that move (> 1 px, 4 px from the edges) it explains the change from
            # frame to frame, where the camera's step alone does not (error levels, mean over frames)
            h, w = frames[0].shape[:2]
            ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
            err_truth, err_camera = [], []
            for k in range(n - 1):
                a, b = frames[k].astype(np.float32), frames[k + 1].astype(np.float32)
                parts = truth["moving"][k] & (np.linalg.norm(truth["scene_flow"][k], axis=-1) > 1)
                parts[:4], parts[-4:], parts[:, :4], parts[:, -4:] = False, False, False, False
                if parts.sum() < 20:
                    continue
                camera = np.broadcast_to(-step[k, 0, 0], truth["flow"][k].shape)  # the scene's motion alone
                for flow, errs in ((truth["flow"][k], err_truth), (camera, err_camera)):
                    seen = cv2.remap(b, (xs + flow[..., 0]).astype(np.float32), (ys + flow[..., 1]).astype(np.float32),
                                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                    errs.append(np.abs(a - seen)[parts].mean())
            assert err_truth and np.mean(err_truth) < 0.5 * np.mean(err_camera), (err_truth, err_camera)
    assert np.abs(step).max() > 0  # the camera moves


def test_prepare_writes_what_the_loaders_read(videos, prepared):
    names = syn.class_names(2)
    for layout, root in prepared.items():
        for user in syn.DEFAULT_USERS:
            for cls in names:
                n = probe(str(videos / "videos" / user / cls / "1.mp4"))["frames"]
                if layout == "course":
                    base = root / "processed_frames2" / user / cls / "1"
                    rgb, maps = base / "rgb", base / "mmaps"
                    fx, fy = root / "flow_x_processed" / user / cls / "1", root / "flow_y_processed" / user / cls / "1"
                    assert sorted(os.listdir(rgb))[:2] == ["rgb0001.png", "rgb0002.png"]
                    assert sorted(os.listdir(maps))[-1] == f"map{n:04d}.png"
                else:
                    rgb, maps = root / "frames" / user / cls / "1", root / "mmaps" / user / cls / "1"
                    fx, fy = root / "flow_x" / user / cls / "1", root / "flow_y" / user / cls / "1"
                    assert sorted(os.listdir(rgb))[0] == "image_00001.jpg"
                    assert sorted(os.listdir(maps))[-1] == f"map_{n:05d}.png"
                    assert sorted(os.listdir(fx))[-1] == f"flow_x_{n - 1:05d}.jpg"
                # one RGB frame and one map per decoded frame; flow k goes from frame k to k+1
                assert len(os.listdir(rgb)) == len(os.listdir(maps)) == n
                assert len(os.listdir(fx)) == len(os.listdir(fy)) == n - 1
        for modality in ("rgb", "flow", "twostream", "rgb_mmaps"):
            ds = GTEA61(root, ["S1", "S3", "S4"], modality, train=True, seqLen=4, frameSize=32, mapSize=7)
            assert ds.layout == layout and len(ds) == 6 and ds.classes == sorted(names)
            item = ds[0]
            if modality == "rgb_mmaps":
                assert item["mmaps"].shape == (4, 7, 7)
                assert set(np.unique(item["mmaps"].numpy())) <= {0.0, 1.0}
            if modality in ("flow", "twostream"):
                assert item["flow"].shape == (1, 10, 32, 32)
    # the course layout's PNGs are the decoded frames, bit for bit; the two layouts the same up to JPEG
    a = np.asarray(Image.open(prepared["course"] / "processed_frames2" / "S2" / names[0] / "1" / "rgb" / "rgb0003.png"))
    assert np.array_equal(a, list(read_frames(str(videos / "videos" / "S2" / names[0] / "1.mp4")))[2])
    b = np.asarray(Image.open(prepared["egornn"] / "frames" / "S2" / names[0] / "1" / "image_00003.jpg"))
    assert np.abs(a.astype(int) - b).mean() < 3
    ma = np.asarray(Image.open(prepared["course"] / "processed_frames2" / "S2" / names[0] / "1" / "mmaps" / "map0003.png"))
    mb = np.asarray(Image.open(prepared["egornn"] / "mmaps" / "S2" / names[0] / "1" / "map_00003.png"))
    assert set(np.unique(ma)) <= {0, 255} and (ma != mb).mean() < 0.05


def test_one_epoch_of_samsop_net_on_prepared_videos(prepared, tmp_path):
    # the Ego-RNN layout: its motion maps are the new path (both layouts load above)
    out = tmp_path / "run"
    p = subprocess.run([PY, "main_ms_op.py", "--datasetDir", str(prepared["egornn"]), "--outDir", str(out),
                        "--numEpochs", "1", "--pretrained", "none", "--frameSize", "32", "--seqLen", "4",
                        "--memSize", "8", "--trainBatchSize", "6", "--valBatchSize", "8", "--numWorkers", "0",
                        "--precision", "fp32", "--camVideos", "0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    log = (out / "stage2" / "log.csv").read_text().splitlines()
    assert len(log) == 2 and float(log[1].split(",")[6]) > 0  # the MS loss ran on the maps


def test_rerun_skips_done_videos_and_refuses_other_settings(videos, prepared, capsys):
    root = str(prepared["course"])
    before = tree_digest(root)
    assert prepare.main(["--videos", str(videos / "videos"), "--outDir", root, *FAST]) == 0
    assert "0 video(s)" in capsys.readouterr().err and tree_digest(root) == before
    with pytest.raises(UserError, match="other settings"):
        prepare.main(["--videos", str(videos / "videos"), "--outDir", root, "--noWarp", *FAST])
    assert tree_digest(root) == before


def test_frames_input_adds_motion_maps_to_the_egornn_release(tmp_path):
    root = tmp_path / "release"
    assert syn.main(["--outDir", str(root), "--layout", "egornn", "--classes", "2", "--instances", "1",
                     "--users", "S1", "S2", "--size", "48x36", "--noShort"]) == 0
    with pytest.raises(Exception, match="datasets.prepare --frames"):
        GTEA61(root, ["S1"], "rgb_mmaps", train=True)
    flow_before = tree_digest(root / "flow_x")
    assert prepare.main(["--frames", str(root), "--only", "mmaps", *FAST]) == 0
    assert tree_digest(root / "flow_x") == flow_before  # the release's flow is left alone
    for d in (root / "frames").glob("*/*/*"):
        rel = d.relative_to(root / "frames")
        assert count(root / "mmaps" / rel, "map_") == count(d, "image_")
    ds = GTEA61(root, ["S1", "S2"], "rgb_mmaps", train=True, seqLen=4, frameSize=32)
    assert len(ds) == 4 and ds[0]["mmaps"].shape == (4, 7, 7)
    # a video whose flow is missing gets flow; the others keep theirs
    others = tree_digest(root / "flow_x" / "S2")
    victim = next((root / "flow_x").glob("S1/*/1"))
    rel = victim.relative_to(root / "flow_x")
    shutil.rmtree(victim)
    shutil.rmtree(root / "flow_y" / rel)
    assert prepare.main(["--frames", str(root), *FAST]) == 0
    assert count(root / "flow_x" / rel, "flow_x_") == count(root / "frames" / rel, "image_") - 1
    assert tree_digest(root / "flow_x" / "S2") == others


def test_bad_videos_are_named_and_skipped(videos, tmp_path):
    src = tmp_path / "v"
    shutil.copytree(videos / "videos" / "S1", src / "S1")
    good = sorted(src.glob("S1/*/1.mp4"))
    # moov at the end, cut: no index; moov first, cut: fewer frames than listed; not a video
    cut = Path(good[0]).read_bytes()
    (src / "S1" / good[0].parent.name / "cut.mp4").write_bytes(cut[:len(cut) // 2])
    noise = np.random.default_rng(0).integers(0, 256, (25, 48, 64, 3), dtype=np.uint8)
    write_video(str(src / "fast.mp4"), noise, 25, container_options={"movflags": "faststart"})
    fast = (src / "fast.mp4").read_bytes()
    (src / "S1" / good[1].parent.name / "short.mp4").write_bytes(fast[:len(fast) * 2 // 3])
    (src / "fast.mp4").unlink()
    (src / "S1" / good[1].parent.name / "notes.mp4").write_text("not a video")
    out = tmp_path / "out"
    cmd = [PY, "-m", "datasets.prepare", "--videos", str(src), "--outDir", str(out), *FAST]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 4
    for name in ("cut.mp4", "short.mp4", "notes.mp4"):
        assert sum(name in e for e in errors[:3]) == 1, (name, errors)
    assert "truncated" in next(e for e in errors if "short.mp4" in e)
    assert "3 video(s) could not be read" in errors[-1]
    for g in good:  # the others are complete
        rel = Path("S1") / g.parent.name / "1"
        assert count(out / "processed_frames2" / rel / "rgb", "rgb") == probe(str(g))["frames"]
    for bad in ("cut", "short", "notes"):
        assert not list((out / "processed_frames2" / "S1").glob(f"*/{bad}"))
        assert not list((out / "flow_x_processed" / "S1").glob(f"*/{bad}"))
    assert not list((out / markers.STATE / "tmp").rglob("*.png"))
    p = subprocess.run(cmd + ["--skipBad"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "warning: 3 video(s)" in p.stderr and "2 already done" in p.stderr, p.stderr


def test_killed_run_resumes_to_the_same_dataset(tmp_path):
    src = tmp_path / "syn"
    assert syn.main(["--outDir", str(src), "--layout", "videos", "--classes", "2", "--instances", "2",
                     "--users", "S1", "--size", "128x96", "--noShort"]) == 0
    ref, out = tmp_path / "ref", tmp_path / "out"
    args = ["--videos", str(src / "videos"), *FAST]
    assert prepare.main(args + ["--outDir", str(ref)]) == 0
    p = subprocess.Popen([PY, "-m", "datasets.prepare", *args, "--outDir", str(out)], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = out / markers.STATE / "done" / "frames"
    staging = out / markers.STATE / "tmp"
    deadline = time.time() + 120
    # kill it while it writes its second video: one video complete, one half-written
    while time.time() < deadline and p.poll() is None:
        if done.exists() and len(list(done.rglob("*.json"))) == 1 and any(staging.rglob("*.png")):
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    assert p.wait(30) == -signal.SIGKILL, "the run ended before it could be killed"
    # what the loaders would read is complete: every rgb folder in place has all its frames
    for d in (out / "processed_frames2").glob("*/*/*/rgb"):
        rel = d.relative_to(out)
        assert count(d, "rgb") == count(ref / rel, "rgb")
        assert count(d.parent / "mmaps", "map") == count(ref / rel.parent / "mmaps", "map")
    assert len(list((out / "processed_frames2").glob("*/*/*/rgb"))) < 4
    assert prepare.main(args + ["--outDir", str(out)]) == 0
    assert tree_digest(out) == tree_digest(ref)


def test_raft_needs_weights_and_runs_on_the_cpu(tmp_path, monkeypatch, videos):
    torch = pytest.importorskip("torch")
    from torchvision.models.optical_flow import raft_small
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="RAFT weights"):
        prepare.main(["--videos", str(videos / "videos"), "--outDir", str(tmp_path / "o"), "--flow", "raft"])
    with pytest.raises(UserError, match="no such file"):
        prepare.main(["--videos", str(videos / "videos"), "--outDir", str(tmp_path / "o"), "--flow", "raft",
                      "--raftWeights", str(tmp_path / "nope.pth")])
    torch.manual_seed(0)
    torch.save(raft_small(weights=None).state_dict(), tmp_path / "raft.pth")
    method = warpflow.flow_method("raft", str(tmp_path / "raft.pth"))
    # RAFT takes sizes that are multiples of 8 and at least 128: smaller or odd frames are padded
    # at the bottom and right by repeating their last row and column, and the flow is cut back to
    # the frame. So a frame and the same frame already padded that way (which RAFT takes as it is)
    # give the same flow on the frame's pixels, whatever the weights (random here: no download).
    scene = _textured(140, 140)
    for h, w in ((44, 60), (124, 122)):  # below the minimum; above it, not multiples of 8
        a, b = scene[:h, :w], scene[2:h + 2, 3:w + 3]  # the scene moved by (-3, -2) px
        ph, pw = max(128, -(-h // 8) * 8), max(128, -(-w // 8) * 8)
        a_pad, b_pad = (np.pad(x, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge") for x in (a, b))
        flow, whole = method(a, b), method(a_pad, b_pad)
        assert flow.shape == (h, w, 2) and flow.dtype == np.float32 and whole.shape == (ph, pw, 2)
        assert np.allclose(flow, whole[:h, :w], atol=1e-4), np.abs(flow - whole[:h, :w]).max()
        assert np.abs(flow - whole[-h:, -w:]).max() > 1e-2  # the comparison can tell the corners apart


def test_flow_scale_error_by_hand(tmp_path):
    """One frame pair of two pixels: (30, 0) px moving, (0, 0) px still, in source pixels;
    frames written at half size (true written flow (15, 0) and 0). Source scale: 30 clips to 20,
    written 255 -> 20 -> /2 = 10, error 5 in x, and 0 -> 128 -> 0.0784 -> /2 = 0.0392 per axis.
    Output scale: 15 -> round(223.125) = 223 -> 14.9804 (error 0.0196), 0 -> 0.0784 per axis."""
    from datasets.prepare import quality
    os.makedirs(tmp_path / "videos" / "S1" / "c")
    (tmp_path / "videos" / "S1" / "c" / "1.mp4").write_bytes(b"")
    os.makedirs(tmp_path / "truth" / "S1" / "c" / "1")
    np.savez(tmp_path / "truth" / "S1" / "c" / "1" / "truth.npz", scene_flow=np.float32([[[[30, 0], [0, 0]]]]),
             moving=np.array([[[True, False]]]))
    got = quality.flow_scale_error(str(tmp_path), 2)
    half, level = 0.0784314 / 2, 0.0784314
    src_moving, src_still = np.hypot(5, half), np.hypot(half, half)
    out_moving, out_still = np.hypot(15 - 14.9803922, level), np.hypot(level, level)
    assert np.allclose(got["source"], ((src_moving + src_still) / 2, src_moving, 0.5), atol=1e-5)
    assert np.allclose(got["output"], ((out_moving + out_still) / 2, out_moving, 0.0), atol=1e-5)


def test_panning_camera_backward_flow_and_motion_maps():
    """3 frames of a camera panning by (3, -2) px per frame over a textured scene (the scene moves
    by (-3, +2) in the image) while a square moves 4 px right per frame in the scene. By
    construction a pixel x of frame k+1 shows the scene point seen at x + (3, -2) in frame k: the
    backward warp (frame k seen from frame k+1's camera) has a source for columns 0..156 and rows
    2..119 only, the background's backward compensated flow is 0 and the square's (-4, 0). The
    last frame's map is made from that backward flow alone: the square marked, the background not."""
    dx, dy, v = 3, -2, 4
    scene = _textured(140, 180, seed=7)
    square = _textured(24, 24, seed=8)
    h, w = 120, 160
    frames, squares = [], []
    for k in range(3):
        f = scene[10 + k * dy:10 + k * dy + h, 10 + k * dx:10 + k * dx + w].copy()
        y, x = 40 - k * dy, 60 + v * k - k * dx  # the square's top-left corner in frame k
        f[y:y + 24, x:x + 24] = square
        frames.append(f)
        squares.append((y, x))
    m = warpflow.flow_method("tvl1")
    _, H, _, ok = warpflow.warp_flow(frames[1], frames[2], m)
    assert ok
    back, valid = warpflow.backward_flow(frames[1], frames[2], m, H)
    want = np.zeros((h, w), bool)
    want[2:, :w - 3] = True
    # H is fitted, so a pixel of slack at the borders of the source region
    assert valid[3:, :w - 4].all() and not valid[:1].any() and not valid[:, w - 2:].any()
    assert (back[~valid] == 0).all()
    y, x = squares[2]
    bg = want.copy()
    bg[y - 10:y + 34, x - 14:x + 38] = False  # the square, its occlusion bands, and a margin
    bg[:8], bg[-8:], bg[:, :8], bg[:, -8:] = False, False, False, False
    mag = np.linalg.norm(back[bg & valid], axis=-1)
    assert np.median(mag) < 0.1 and np.percentile(mag, 95) < 0.4, (np.median(mag), np.percentile(mag, 95))
    assert np.allclose(np.median(back[y + 4:y + 20, x + 4:x + 20], axis=(0, 1)), (-v, 0), atol=1.0)

    maps = [mm for _, _, _, mm in warpflow.flows_and_maps(frames, m)]
    for k in (1, 2):  # frame 1: both directions; frame 2 (the last): backward only
        y, x = squares[k]
        moving = maps[k] > 0
        still = np.ones((h, w), bool)
        still[y - 10:y + 34, x - 14:x + 38] = False
        still[:8], still[-8:], still[:, :8], still[:, -8:] = False, False, False, False
        assert moving[y + 2:y + 22, x + 2:x + 22].mean() > 0.8, (k, moving[y + 2:y + 22, x + 2:x + 22].mean())
        assert moving[still].mean() < 0.02, (k, moving[still].mean())
