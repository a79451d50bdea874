"""Clip transforms: the test-time path equals the original Ego-RNN PIL pipeline; one crop and
flip per clip, shared by frames, flow and maps; flow_x inverted on flips."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import FLOW_MEAN, FLOW_STD, GTEA61, IMAGENET_MEAN, IMAGENET_STD
from datasets.transforms import POSITIONS, SCALES, ClipParams, ClipTransform, resize_size


def original_test_transform(img, size=256, crop=224, flow=False):
    """Ego-RNN's test transform, re-implemented from its description with PIL and numpy:
    Scale(size) (short side to `size`, long side int(size * long / short), bilinear; no-op
    when the short side already equals `size`), CenterCrop(crop) with
    x1 = int(round((w - crop) / 2)), ToTensor (/255), Normalize (flow: the means of the
    ImageNet means and stds)."""
    w, h = img.size
    if not ((w <= h and w == size) or (h <= w and h == size)):
        if w < h:
            img = img.resize((size, int(size * h / w)), Image.BILINEAR)
        else:
            img = img.resize((int(size * w / h), size), Image.BILINEAR)
    w, h = img.size
    x1, y1 = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
    img = img.crop((x1, y1, x1 + crop, y1 + crop))
    a = np.asarray(img, dtype=np.float32) / np.float32(255)
    if flow:
        return (a - np.float32(np.mean(IMAGENET_MEAN))) / np.float32(np.mean(IMAGENET_STD))
    a = a.transpose(2, 0, 1)
    mean = np.array(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.array(IMAGENET_STD, np.float32)[:, None, None]
    return (a - mean) / std


@pytest.mark.parametrize("size", [(320, 240), (240, 320), (300, 256), (257, 500), (96, 72)])
def test_test_pipeline_equals_original(tree, size):
    rng = np.random.default_rng(sum(size))
    w, h = size
    frames = {k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k in range(1, 8)}
    # smooth content as well as noise: half of each frame is a gradient
    for k, f in frames.items():
        f[:, : w // 2] = (np.linspace(0, 255, w // 2)[None, :, None] * k / 7).astype(np.uint8)
    base = tree.video("S1", "take_cup", 1, 7, size=size, frame=lambda k: frames[k])
    ds = GTEA61(tree.root, ["S1"], "twostream", train=False, seqLen=5)  # frameSize 224
    item = ds[0]
    for t, k in enumerate(int(np.floor(i)) for i in np.linspace(1, 7, 5, endpoint=False)):
        ref = original_test_transform(Image.open(f"{base}/rgb/rgb{k:04d}.png").convert("RGB"))
        assert np.abs(item["rgb"][t].numpy() - ref).max() < 1e-6
    start = int(np.ceil((6 - 5) / 2))  # the original's centre flow stack (6 flow frames)
    for j in range(5):
        for c, axis in enumerate("xy"):
            path = f"{tree.root}/flow_{axis}_processed/S1/take_cup/1/flow_{axis}_{start + j:05d}.png"
            ref = original_test_transform(Image.open(path).convert("L"), flow=True)
            assert np.abs(item["flow"][0, 2 * j + c].numpy() - ref).max() < 1e-6


@pytest.mark.parametrize("frame_size", [224, 112, 32])
def test_test_path_is_torchvision_resize_then_centre_crop(frame_size):
    import torchvision.transforms as T
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8))
    ours = ClipTransform(train=False, frameSize=frame_size).rgb([img], None)[0]
    tv = T.Compose([T.Resize(resize_size(frame_size)), T.CenterCrop(frame_size), T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)
    assert resize_size(224) == 256 and resize_size(112) == 128
    assert torch.equal(ours, tv)


def test_crop_boxes_are_exact_squares_at_their_corners():
    tf = ClipTransform(train=True, frameSize=224)
    w, h = 341, 256  # a 4:3 frame after resizing to 256
    for scale in SCALES:
        c = int(256 * scale)
        boxes = {p: tf.crop_box(w, h, ClipParams(scale, p)) for p in POSITIONS}
        assert boxes["tl"] == (0, 0, c, c)
        assert boxes["tr"] == (w - c, 0, c, c)
        assert boxes["bl"] == (0, h - c, c, c)
        assert boxes["br"] == (w - c, h - c, c, c)
        assert boxes["c"] == (w // 2 - c // 2, h // 2 - c // 2, c, c)


def test_params_drawn_from_python_random():
    tf = ClipTransform(train=True)
    random.seed(3)
    a = [tf.draw() for _ in range(2000)]
    random.seed(3)
    torch.manual_seed(99)
    assert [tf.draw() for _ in range(2000)] == a
    assert {(p.scale, p.position, p.flip) for p in a} == {(s, p, f) for s in SCALES
                                                          for p in POSITIONS for f in (0, 1)}
    assert ClipTransform(train=False).draw() is None


def _pattern(w, h):
    """255 in the left third and in the top quarter, else 0: asymmetric both ways."""
    p = np.zeros((h, w), np.uint8)
    p[:, : w // 3] = 255
    p[: h // 4, :] = 255
    return p


@pytest.mark.parametrize("map_scale", [1, 2])
def test_one_crop_and_flip_per_clip_shared_by_frames_and_maps(tree, map_scale):
    w, h = 64, 48
    pat = _pattern(w, h)

    def frame(k):  # R: the pattern, G: frame number, B: a vertical gradient
        f = np.zeros((h, w, 3), np.uint8)
        f[..., 0] = pat
        f[..., 1] = 10 * k
        f[..., 2] = np.linspace(0, 255, h)[:, None]
        return f

    small = np.asarray(Image.fromarray(pat).resize((w // map_scale, h // map_scale), Image.NEAREST))
    tree.video("S1", "take_cup", 1, 8, size=(w, h), frame=frame, mmap=lambda k: small)
    ds = GTEA61(tree.root, ["S1"], "rgb_mmaps", train=True, seqLen=6, frameSize=32, mapSize=4,
                regression=True)
    random.seed(0)
    seen_r, flips = set(), set()
    for _ in range(40):
        item = ds[0]
        r = item["rgb"][:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # (T, 32, 32) in [0, 1]
        for t in range(1, r.shape[0]):
            assert torch.equal(r[t], r[0])  # the same crop and flip for every frame
        seen_r.add(r[0].numpy().tobytes())
        # the map went through the same crop and flip: compare with the frame's own R channel
        want = Image.fromarray((r[0].numpy() * 255).round().astype(np.uint8)).resize((4, 4), Image.BILINEAR)
        want = np.asarray(want, np.float32) / 255
        for t in range(r.shape[0]):
            assert np.abs(item["mmaps"][t].numpy() - want).max() < 0.15
        flips.add(bool(r[0][:, :8].mean() < r[0][:, -8:].mean()))  # bright third on the right
    assert len(seen_r) >= 8 and flips == {True, False}


def test_flip_inverts_flow_x_only():
    g = np.tile(np.linspace(0, 255, 50).astype(np.uint8), (40, 1))
    x = Image.fromarray(g)
    y = Image.fromarray(g[::-1].copy())
    tf = ClipTransform(train=True, frameSize=32)
    for scale in SCALES:
        for pos in POSITIONS:
            plain = tf.flow([x], [y], ClipParams(scale, pos, False))
            flipped = tf.flow([x], [y], ClipParams(scale, pos, True))
            px, py = (plain * FLOW_STD + FLOW_MEAN) * 255
            fx, fy = (flipped * FLOW_STD + FLOW_MEAN) * 255
            assert torch.allclose(fx, 255 - px.flip(-1), atol=1e-3)
            assert torch.allclose(fy, py.flip(-1), atol=1e-3)
    # constant "no motion" flow stays (almost) no motion: 128 -> 127 in x
    c = Image.fromarray(np.full((40, 50), 128, np.uint8))
    out = (tf.flow([c], [c], ClipParams(1.0, "c", True)) * FLOW_STD + FLOW_MEAN) * 255
    assert torch.allclose(out[0], torch.full((32, 32), 127.0), atol=1e-3)
    assert torch.allclose(out[1], torch.full((32, 32), 128.0), atol=1e-3)


def test_rgb_flip_mirrors_and_maps_follow():
    img = Image.fromarray(np.stack([_pattern(64, 48)] * 3, -1))
    m = Image.fromarray(_pattern(64, 48))
    for regression in (False, True):
        tf = ClipTransform(train=True, frameSize=32, mapSize=4, regression=regression)
        for pos in POSITIONS:
            a = tf.rgb([img], ClipParams(0.875, pos, False))
            b = tf.rgb([img], ClipParams(0.875, pos, True))
            assert torch.equal(b, a.flip(-1))
            ma = tf.mmaps([m], ClipParams(0.875, pos, False))
            mb = tf.mmaps([m], ClipParams(0.875, pos, True))
            assert torch.equal(mb, ma.flip(-1))
            if not regression:
                assert set(torch.unique(ma).tolist()) <= {0.0, 1.0}
