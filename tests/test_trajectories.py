"""Trajectory motion maps (datasets/prepare/trajectories.py, `--maps idt`) on hand-made scenes whose
compensated flow and camera motion are given, so what is marked can be worked out by hand."""
import json

import numpy as np
import pytest

from datasets import markers
from datasets.prepare import prepare
from datasets.prepare import trajectories as T
from datasets.prepare.video import write_video

cv2 = pytest.importorskip("cv2")

H_, W_, S = 48, 64, 16   # frame size, square side
Y0, X0 = 16, 8           # the square's top-left corner on frame 0 (scene coordinates)


def texture(h, w, seed):
    """Random blocks of 2 x 2 px: corners everywhere, nothing homogeneous."""
    t = np.random.default_rng(seed).integers(0, 256, (h // 2 + 1, w // 2 + 1), dtype=np.uint8)
    return np.repeat(np.repeat(t, 2, 0), 2, 1)[:h, :w, None].repeat(3, 2)


def square_scene(n, v, cam):
    """n frames: a textured S x S square moving v px right per frame over a static textured
    background, the camera panning so the scene moves cam px right per frame. Returns frames,
    the compensated flows (v on the square, 0 elsewhere: the motion relative to the scene)
    and the homographies (the camera's step)."""
    bg, sq = texture(H_, W_ + 2 * n * cam + 8, 1), texture(S, S, 2)
    frames, flows = [], []
    for k in range(n):
        x = X0 + v * k + cam * k
        f = bg[:, n * cam - cam * k:n * cam - cam * k + W_].copy()
        f[Y0:Y0 + S, x:x + S] = sq
        frames.append(f)
        flow = np.zeros((H_, W_, 2), np.float32)
        flow[Y0:Y0 + S, x:x + S, 0] = v
        flows.append(flow)
    H = np.array([[1, 0, cam], [0, 1, 0], [0, 0, 1]], np.float64)
    return frames, flows, [H] * n


def run(frames, flows, Hs, keep_tracks=False):
    tr = T.Tracker(frames[0].shape, keep_tracks)
    out = []
    for k in range(len(frames) - 1):
        out += tr.step(frames[k], flows[k], Hs[k])
    out += tr.finish()
    assert [k for k, _ in out] == list(range(len(frames)))  # every frame once, in order
    return np.stack([m for _, m in out]), tr


def test_keep_rules_by_hand():
    """Steps in units of the short side: 1/48 each step is motion (largest 1/48 > 1/240);
    0.1 px steps are static; one 10 px jump alone is erratic (100 % of the length and
    10/48 > 1/12); the same jump among fourteen 1 px steps is 10/24 = 42 % of it: kept."""
    steps = np.zeros((4, 15))
    steps[0] = 1 / 48
    steps[1] = 0.1 / 48
    steps[2, 5] = 10 / 48
    steps[3] = 1 / 48
    steps[3, 5] = 10 / 48
    assert T.keep(steps).tolist() == [True, False, False, True]


def test_moving_square_is_marked_and_the_panning_background_is_not():
    """The camera pans 2 px per frame (the background's plain flow), the square moves 1 px
    per frame in the scene. The maps mark the square on every frame and nothing in the
    background rows above and below the square's path (their compensated steps are 0: static,
    though they move 2 px per frame in the image). The square's points advance by v + cam =
    3 px per frame."""
    v, cam, n = 1, 2, 12
    frames, flows, Hs = square_scene(n, v, cam)
    maps, tr = run(frames, flows, Hs, keep_tracks=True)
    pad = T.MARK + 1
    band = np.zeros((H_, W_), bool)
    band[Y0 - pad:Y0 + S + pad] = True
    assert maps.any(axis=(1, 2)).all()
    assert not maps[:, ~band].any(), "static background marked"
    for k in range(n):
        x = X0 + (v + cam) * k
        inner = maps[k, Y0 + 2:Y0 + S - 2, max(x + 2, 0):min(x + S - 2, W_)]
        assert (inner > 0).mean() > 0.6, (k, (inner > 0).mean())
    # (away from its edges, where a coarser scale's resized flow mixes the square's and the background's)
    on_square = [p for k, p in tr.kept if Y0 + 2 <= p[0, 1] < Y0 + S - 2 and 2 <= p[0, 0] - X0 - (v + cam) * k < S - 2]
    assert on_square and all(np.allclose(np.diff(p, axis=0), [v + cam, 0], atol=1e-4) for p in on_square)


def test_static_video_gives_empty_maps():
    frames = [texture(H_, W_, 3)] * 10
    zero = [np.zeros((H_, W_, 2), np.float32)] * 10
    maps, _ = run(frames, zero, [np.eye(3)] * 10)
    assert maps.shape == (10, H_, W_) and not maps.any()


def test_a_single_jump_is_dropped():
    """The square is still except one 10 px jump between frames 5 and 6: every trajectory
    that crosses the jump is erratic, every other one static, so nothing is marked."""
    frames, flows, Hs = square_scene(12, 0, 0)
    flows[5] = flows[5].copy()
    flows[5][Y0:Y0 + S, X0:X0 + S, 0] = 10
    maps, _ = run(frames, flows, Hs)
    assert not maps.any()


def test_trajectories_end_after_15_steps():
    """40 frames of a square moving 1 px per frame: no kept trajectory has more than 16
    points (L = 15 steps), and those the video did not cut short have exactly 16."""
    frames, flows, Hs = square_scene(40, 1, 0)
    flows = [f for f in flows]
    # the square would leave the 64 px frame: keep it in by moving it back every 20 frames
    frames = [frames[k % 20] for k in range(40)]
    flows = [flows[k % 20] if k % 20 != 19 else np.zeros_like(flows[0]) for k in range(40)]
    _, tr = run(frames, flows, Hs, keep_tracks=True)
    lengths = [len(p) for s, p in tr.kept]
    assert max(lengths) == 16  # IDT's track_length 15
    assert all(len(p) == 16 for s, p in tr.kept if s + 15 < 39)


def test_scales_follow_the_frame_size():
    """1/sqrt(2) steps while the short side stays >= 32: 48 px -> 48, 33.9 (2 scales);
    240 px -> 240 .. 240 / sqrt(2)^5 = 42.4 (6); at most 8; a tiny frame still has one."""
    assert len(T.scales(48, 64)) == 2 and len(T.scales(240, 320)) == 6
    assert len(T.scales(2000, 2000)) == 8 and T.scales(20, 20) == [1.0]


def test_prepare_maps_idt_writes_maps_and_records_them(tmp_path):
    """`--maps idt`, the default (the paper's MS targets), through datasets.prepare's command line:
    one 0/255 map per frame, more marks on the moving square than elsewhere, `maps: idt` in the
    marker and the record; the same dataset asked for flow maps is a conflict of settings."""
    frames, _, _ = square_scene(8, 2, 0)
    (tmp_path / "v" / "S1" / "c").mkdir(parents=True)
    write_video(str(tmp_path / "v" / "S1" / "c" / "1.mkv"), np.stack(frames), 25, "ffv1", pix_fmt="yuv444p")
    out = tmp_path / "out"
    args = ["--videos", str(tmp_path / "v"), "--outDir", str(out), "--flow", "farneback", "--shortSide", "0",
            "--numWorkers", "1", "--quiet"]
    assert prepare.main(args) == 0  # no --maps: the default
    from PIL import Image
    folder = out / "processed_frames2" / "S1" / "c" / "1" / "mmaps"
    maps = np.stack([np.asarray(Image.open(folder / f"map{k:04d}.png")) for k in range(1, 9)])
    assert set(np.unique(maps)) <= {0, 255} and maps.any()
    square = np.zeros(maps.shape, bool)
    for k in range(8):
        square[k, Y0:Y0 + S, X0 + 2 * k:X0 + 2 * k + S] = True
    assert maps[square].mean() > 2 * maps[~square].mean()
    with open(out / ".prepare" / "done" / "mmaps" / "S1" / "c" / "1.json") as f:
        assert json.load(f)["maps"] == "idt"
    assert markers.preparation(str(out))["maps"] == "idt"
    with pytest.raises(Exception, match="other settings"):
        prepare.main([*args, "--maps", "flow"])


def noisy_square_scene(n, v, noise, seed=0):
    """A still camera, a textured S x S square moving v px right per frame (v may be a fraction of
    a pixel), and compensated flows with each component off by up to `noise` px (uniform), as a
    flow method's residue on a static background: at most noise * sqrt(2) px on the background,
    between v - noise * sqrt(2) and v + noise * sqrt(2) px on the square."""
    rng = np.random.default_rng(seed)
    bg, sq = texture(H_, W_, 1), texture(S, S, 2)
    frames, flows = [], []
    for k in range(n):
        x = X0 + int(round(v * k))
        f = bg.copy()
        f[Y0:Y0 + S, x:x + S] = sq
        frames.append(f)
        flow = rng.uniform(-noise, noise, (H_, W_, 2)).astype(np.float32)
        flow[Y0:Y0 + S, x:x + S, 0] += v
        flows.append(flow)
    return frames, flows, [np.eye(3)] * n


def test_sub_pixel_motion_over_flow_noise():
    """48 px short side: static below 48 / 240 = 0.2 px per step, erratic above 48 / 12 = 4 px.
    Background noise of up to 0.1 px per component (0.14 px) is static however the median filter
    and the coarser scale mix it; the square's 0.5 px steps (0.36 .. 0.64 px with the noise) are
    motion. Rules applied to pixels (static at 1/240 px) would keep the noise as motion."""
    n, v = 12, 0.5
    frames, flows, Hs = noisy_square_scene(n, v, 0.1)
    maps, _ = run(frames, flows, Hs)
    pad = T.MARK + 1
    band = np.zeros((H_, W_), bool)
    band[Y0 - pad:Y0 + S + pad] = True
    assert not maps[:, ~band].any(), "flow noise on the static background marked"
    for k in range(n):
        x = X0 + int(round(v * k))
        inner = maps[k, Y0 + 2:Y0 + S - 2, x + 2:x + S - 2]
        assert (inner > 0).mean() > 0.6, (k, (inner > 0).mean())


def test_a_single_sub_pixel_step_is_motion_not_a_tracking_error():
    """A still square nudged 0.5 px once (between frames 5 and 6): every trajectory crossing the
    nudge has one step of 0.5 px, 100 % of its length but 0.5 / 48 = 1/96 of the short side, above
    the static 1/240 and far below the erratic 1/12, so the square is marked. (Judged in pixels,
    0.5 px would be above 1/12 px: dropped as a jump.)"""
    frames, flows, Hs = square_scene(12, 0, 0)
    flows[5] = flows[5].copy()
    flows[5][Y0:Y0 + S, X0:X0 + S, 0] = 0.5
    maps, _ = run(frames, flows, Hs)
    pad = T.MARK + 1
    band = np.zeros((H_, W_), bool)
    band[Y0 - pad:Y0 + S + pad, X0 - pad:X0 + S + pad] = True
    assert not maps[:, ~band].any()
    for k in range(12):
        assert (maps[k, Y0 + 2:Y0 + S - 2, X0 + 2:X0 + S - 2] > 0).mean() > 0.6, k
