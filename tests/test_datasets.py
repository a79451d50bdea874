"""GTEA61 loader: layouts, labels, file filtering, frame choice, modalities, bad input."""
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import (FLOW_MEAN, FLOW_STD, GTEA61, IMAGENET_MEAN, IMAGENET_STD, DatasetError,
                      detect_layout)


def rgb_values(x):
    """Channel-0 pixel value (0..255) of each frame of an "rgb" tensor, from its mean."""
    v = x[:, 0].mean(dim=(1, 2)) * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return [int(round(float(a) * 255)) for a in v]


def flow_values(x):
    """(S, 10) pixel values of a "flow" tensor."""
    v = x.mean(dim=(2, 3)) * FLOW_STD + FLOW_MEAN
    return (v * 255).round().long().tolist()


def linspace_numbers(n, t):
    return [int(np.floor(i)) for i in np.linspace(1, n, t, endpoint=False)]


def assert_one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert str(needle) in msg, msg
    return msg


# ---- layouts and labels -------------------------------------------------------------------
@pytest.mark.parametrize("layout,prefix", [("course", "processed_frames2"), ("egornn", "frames")])
def test_both_layouts_found(tree, layout, prefix):
    for user in ("S1", "S2"):
        tree.video(user, "take_cup", 1, 6, layout=layout)
        tree.video(user, "put_cup", 1, 7, layout=layout)
    assert detect_layout(tree.root) == layout
    for modality in ("rgb", "flow", "twostream"):
        ds = GTEA61(tree.root, ["S1"], modality, train=False, seqLen=4, frameSize=32, mapSize=1)
        assert ds.layout == layout
        assert ds.classes == ["put_cup", "take_cup"] and ds.num_classes == 2
        assert len(ds) == 2 and ds.labels == [0, 1]
        top = "flow_x_processed" if layout == "course" else "flow_x"
        first = top if modality == "flow" else prefix
        assert ds.video_ids == [f"{first}/S1/put_cup/1", f"{first}/S1/take_cup/1"]


def test_labels_from_union_of_all_users(tree):
    # S1: a, b, "stir_spoon,cup";  S2: no "b";  S3: "b" exists but is empty, plus "c" (only S3)
    for c in ("a_x", "b_y", "stir_spoon,cup"):
        tree.video("S1", c, 1, 5)
    for c in ("a_x", "stir_spoon,cup"):
        tree.video("S2", c, 1, 5)
    tree.video("S3", "a_x", 1, 5)
    tree.video("S3", "c_z", 1, 5)
    os.makedirs(os.path.join(tree.root, "processed_frames2", "S3", "b_y"))
    expected = ["a_x", "b_y", "c_z", "stir_spoon,cup"]
    for users in (["S1"], ["S2"], ["S3"], ["S2", "S3"]):
        ds = GTEA61(tree.root, users, "rgb", train=False, seqLen=2, frameSize=16)
        assert ds.classes == expected  # the union over ALL users, whatever `users` is
        for vid, label in zip(ds.video_ids, ds.labels):
            assert ds.classes[label] == vid.split("/")[2]
    ds = GTEA61(tree.root, ["S2"], "rgb", train=False, seqLen=2, frameSize=16)
    assert ds.labels == [0, 3]


def test_duplicates_and_hidden_files_ignored(tree):
    base = tree.video("S1", "take_cup", 1, 6)
    rgb = os.path.join(base, "rgb")
    junk = np.full((30, 40, 3), 255, np.uint8)
    for name in ("rgb0003(1).png", "._rgb0001.png", "rgb0007.png.bak", "Thumbs.db"):
        Image.fromarray(junk).save(os.path.join(rgb, name), format="PNG")
    for d in (rgb, os.path.join(tree.root, "processed_frames2", "S1"),
              os.path.join(tree.root, "processed_frames2", "S1", "take_cup")):
        open(os.path.join(d, ".DS_Store"), "wb").close()
    os.makedirs(os.path.join(tree.root, "processed_frames2", "S1", "take_cup", ".hidden_inst", "rgb"))
    os.makedirs(os.path.join(tree.root, "processed_frames2", "S1", "__MACOSX"))
    ds = GTEA61(tree.root, ["S1"], "rgb", train=False, seqLen=6, frameSize=16)
    assert ds.classes == ["take_cup"] and len(ds) == 1 and ds.num_frames == [6]
    assert rgb_values(ds[0]["rgb"]) == [10 * k for k in linspace_numbers(6, 6)]  # never 255


def test_short_videos_skipped_counted_and_reported_once(tree, capsys):
    tree.video("S1", "take_cup", 1, 4)
    tree.video("S1", "take_cup", 2, 5)
    tree.video("S1", "put_cup", 1, 3)
    ds = GTEA61(tree.root, ["S1"], "rgb", train=True, seqLen=4, frameSize=16)
    assert len(ds) == 1 and ds.num_skipped == 2
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "skipped 2 video" in err
    assert "S1/take_cup/1 (4)" in err and "S1/put_cup/1 (3)" in err
    for _ in range(3):
        ds[0]
    assert capsys.readouterr().err == ""
    # all videos too short: an error, which says so
    with pytest.raises(DatasetError) as e:
        GTEA61(tree.root, ["S1"], "flow", train=True)  # flow has one frame fewer: 3, 4, 2
    assert_one_line_error(e, "no videos for user(s) S1", "3 skipped")


# ---- frame choice ---------------------------------------------------------------------------
@pytest.mark.parametrize("n,t", [(11, 16), (11, 4), (25, 7), (5, 5), (23, 16)])
def test_rgb_frames_follow_linspace_rule(tree, n, t):
    tree.video("S1", "take_cup", 1, n, flow=False, mmaps=False)
    for train in (False, True):
        ds = GTEA61(tree.root, ["S1"], "rgb", train=train, seqLen=t, frameSize=16)
        x = ds[0]["rgb"]
        assert x.shape == (t, 3, 16, 16) and x.dtype == torch.float32
        assert rgb_values(x) == [10 * k for k in linspace_numbers(n, t)]


def test_gap_in_numbering_uses_kth_existing_frame(tree):
    numbers = [1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]  # 6 and 7 missing: 11 frames
    tree.video("S1", "take_cup", 1, None, numbers=numbers, flow=False, mmaps=False)
    ds = GTEA61(tree.root, ["S1"], "rgb", train=False, seqLen=8, frameSize=16)
    assert ds.num_frames == [11]
    expected = [10 * numbers[p - 1] for p in linspace_numbers(11, 8)]
    assert rgb_values(ds[0]["rgb"]) == expected


@pytest.mark.parametrize("n", [6, 7, 12, 20])
def test_flow_stacks_centre_segments_and_random(tree, n):
    tree.video("S1", "take_cup", 1, n + 1, mmaps=False)  # n flow frames numbered 1..n
    ds = GTEA61(tree.root, ["S1"], "flow", train=False, frameSize=16)
    x = ds[0]["flow"]
    assert x.shape == (1, 10, 16, 16)
    start = math.ceil((n - 5) / 2)  # Ego-RNN's test stack (1-based)
    expected = [v for k in range(start, start + 5) for v in (10 * k, 10 * k + 5)]  # x1,y1,...
    assert flow_values(x) == [expected]

    ds = GTEA61(tree.root, ["S1"], "flow", train=False, frameSize=16, numSeg=3)
    starts = [int(s) for s in np.linspace(1, n - 5 + 1, 3, endpoint=False)]
    assert flow_values(ds[0]["flow"]) == [[v for k in range(s, s + 5) for v in (10 * k, 10 * k + 5)]
                                          for s in starts]

    ds = GTEA61(tree.root, ["S1"], "flow", train=True, frameSize=16)
    for _ in range(15):
        vals = flow_values(ds[0]["flow"])[0]
        s = vals[1] // 10  # y is never inverted
        assert vals[1::2] == [10 * k + 5 for k in range(s, s + 5)]
        xs = vals[0::2]
        assert xs in ([10 * k for k in range(s, s + 5)], [255 - 10 * k for k in range(s, s + 5)])
    seen = {ds.flow_starts(n)[0] + 1 for _ in range(1000)}
    assert seen == set(range(1, n - 5 + 2))  # every valid start, including the last


def test_motion_map_missing_index_uses_nearest(tree):
    tree.video("S1", "take_cup", 1, 12, map_numbers=[1, 2, 3, 6, 7, 8, 12])
    ds = GTEA61(tree.root, ["S1"], "rgb_mmaps", train=False, seqLen=24, frameSize=16,
                mapSize=2, regression=True)
    m = ds[0]["mmaps"]
    assert m.shape == (24, 2, 2)
    got = [int(round(float(v) * 255)) for v in m.mean(dim=(1, 2))]
    frames = linspace_numbers(12, 24)
    assert {4, 5, 9, 10, 11} <= set(frames)
    # 4 -> 3, 5 -> 6, 9 -> 8, 10 -> 12 (8 and 12 equally near: the later one), 11 -> 12
    nearest = {4: 3, 5: 6, 9: 8, 10: 12, 11: 12}
    assert got == [10 * nearest.get(k, k) for k in frames]


def test_mmaps_binarised_at_04_or_raw(tree):
    # map value 10*k: 100/255 = 0.392 (below 0.4) for k=10, 110/255 = 0.431 (above) for k=11
    tree.video("S1", "take_cup", 1, 12)
    kw = dict(seqLen=24, frameSize=32, mapSize=4)  # every frame, each twice
    raw = GTEA61(tree.root, ["S1"], "rgb_mmaps", train=False, regression=True, **kw)[0]["mmaps"]
    cls = GTEA61(tree.root, ["S1"], "rgb_mmaps", train=False, regression=False, **kw)[0]["mmaps"]
    frames = torch.tensor(linspace_numbers(12, 24)).float()
    assert torch.allclose(raw, (frames * 10 / 255).view(24, 1, 1).expand(24, 4, 4))
    assert set(torch.unique(cls).tolist()) == {0.0, 1.0}
    assert torch.equal(cls, (raw > 0.4).float())
    assert torch.equal(cls.mean(dim=(1, 2)), (frames >= 11).float())


# ---- shapes per modality ----------------------------------------------------------------------
def test_modalities_outputs(tree):
    for inst in (1, 2):
        tree.video("S1", "take_cup", inst, 9)
    common = dict(seqLen=6, frameSize=32, mapSize=1)
    specs = {"rgb": {"rgb": (6, 3, 32, 32)}, "flow": {"flow": (1, 10, 32, 32)},
             "twostream": {"rgb": (6, 3, 32, 32), "flow": (1, 10, 32, 32)},
             "rgb_mmaps": {"rgb": (6, 3, 32, 32), "mmaps": (6, 1, 1)}}
    for modality, shapes in specs.items():
        for train in (True, False):
            ds = GTEA61(tree.root, ["S1"], modality, train=train, **common)
            item = ds[1]
            rgb = "rgb" in shapes
            assert set(item) == set(shapes) | {"label", "index"} | ({"frame_numbers"} if rgb else set())
            assert item["index"] == 1 and item["label"] == 0 and isinstance(item["label"], int)
            if rgb:  # floor(linspace(1, 9, 6, endpoint=False)): 1, 2.33, 3.67, 5, 6.33, 7.67
                assert item["frame_numbers"].tolist() == [1, 2, 3, 5, 6, 7]
            for k, shape in shapes.items():
                assert tuple(item[k].shape) == shape and item[k].dtype == torch.float32
    ds = GTEA61(tree.root, ["S1"], "twostream", train=False, numSeg=5, **common)
    assert ds[0]["flow"].shape == (5, 10, 32, 32)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["rgb"].shape == (2, 6, 3, 32, 32) and batch["label"].tolist() == [0, 0]


# ---- bad input --------------------------------------------------------------------------------
def test_missing_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError) as e:
        GTEA61(missing, ["S1"], "rgb", train=True)
    assert_one_line_error(e, str(missing), "not found", "processed_frames2")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DatasetError) as e:
        detect_layout(f)
    assert_one_line_error(e, str(f), "not a folder")


def test_folder_in_neither_layout(tmp_path, tree):
    (tmp_path / "other" / "S1").mkdir(parents=True)
    with pytest.raises(DatasetError) as e:
        detect_layout(tmp_path / "other")
    assert_one_line_error(e, str(tmp_path / "other"), "neither", "processed_frames2", "frames/")
    tree.video("S1", "take_cup", 1, 5)  # tree.root is tmp_path/gtea
    with pytest.raises(DatasetError) as e:
        GTEA61(tmp_path, ["S1"], "rgb", train=True)
    assert_one_line_error(e, "did you mean", tree.root)


def test_no_videos_for_requested_users(tree):
    tree.video("S1", "take_cup", 1, 5)
    tree.video("S2", "take_cup", 1, 5)
    with pytest.raises(DatasetError) as e:
        GTEA61(tree.root, ["S1", "S7"], "rgb", train=True)
    assert_one_line_error(e, "S7", os.path.join(tree.root, "processed_frames2"), "S1, S2")
    os.makedirs(os.path.join(tree.root, "processed_frames2", "S3", "take_cup"))  # user without videos
    with pytest.raises(DatasetError) as e:
        GTEA61(tree.root, ["S3"], "rgb", train=True)
    assert_one_line_error(e, "no videos for user(s) S3", "rgbNNNN.png")


def test_motion_maps_absent(tree, tmp_path):
    tree.video("S1", "take_cup", 1, 6, mmaps=False)
    with pytest.raises(DatasetError) as e:
        GTEA61(tree.root, ["S1"], "rgb_mmaps", train=True)
    assert_one_line_error(e, os.path.join(tree.root, "processed_frames2", "S1", "take_cup", "1", "mmaps"),
                          "does not exist")
    eg = type(tree)(tmp_path / "eg")
    eg.video("S1", "take_cup", 1, 6, layout="egornn")
    with pytest.raises(DatasetError) as e:
        GTEA61(eg.root, ["S1"], "rgb_mmaps", train=True)
    assert_one_line_error(e, eg.root, "Ego-RNN layout", "mmaps/mapNNNN.png")
    GTEA61(eg.root, ["S1"], "rgb", train=True)  # fine without maps


def test_flow_absent(tree, tmp_path):
    tree.video("S1", "take_cup", 1, 6, flow=False)
    for modality in ("flow", "twostream"):
        with pytest.raises(DatasetError) as e:
            GTEA61(tree.root, ["S1"], modality, train=True)
        assert_one_line_error(e, tree.root, "flow_x_processed")
    # flow_x present, one video's flow_y folder missing
    other = type(tree)(tmp_path / "o")
    other.video("S1", "take_cup", 1, 6)
    other.video("S1", "take_cup", 2, 6)
    import shutil
    missing = os.path.join(other.root, "flow_y_processed", "S1", "take_cup", "2")
    shutil.rmtree(missing)
    with pytest.raises(DatasetError) as e:
        GTEA61(other.root, ["S1"], "twostream", train=True)
    assert_one_line_error(e, missing, "flow_y_NNNNN")


def test_rgb_absent_for_rgb_modality(tree):
    tree.video("S1", "take_cup", 1, 6)
    import shutil
    shutil.rmtree(os.path.join(tree.root, "processed_frames2"))
    assert len(GTEA61(tree.root, ["S1"], "flow", train=True)) == 1
    with pytest.raises(DatasetError) as e:
        GTEA61(tree.root, ["S1"], "rgb", train=True)
    assert_one_line_error(e, tree.root, "processed_frames2/")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_image_named(tree, damage):
    base = tree.video("S1", "take_cup", 1, 6)
    bad = os.path.join(base, "rgb", "rgb0001.png")
    data = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write({"garbage": b"not an image at all", "truncated": data[: len(data) // 2],
                 "empty": b""}[damage])
    ds = GTEA61(tree.root, ["S1"], "rgb", train=True, seqLen=4, frameSize=16)
    with pytest.raises(DatasetError) as e:
        ds[0]
    assert_one_line_error(e, bad, "cannot read image")


def test_worker_error_stays_one_line(tree):
    base = tree.video("S1", "take_cup", 1, 6)
    bad = os.path.join(base, "rgb", "rgb0004.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG broken")
    ds = GTEA61(tree.root, ["S1"], "rgb", train=False, seqLen=4, frameSize=16)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1)
    with pytest.raises(DatasetError) as e:
        next(iter(loader))
    msg = assert_one_line_error(e, bad)
    assert msg.startswith("cannot read image")


def test_bad_arguments(tree):
    tree.video("S1", "take_cup", 1, 6)
    with pytest.raises(ValueError):
        GTEA61(tree.root, ["S1"], "depth", train=True)
    with pytest.raises(ValueError):
        GTEA61(tree.root, [], "rgb", train=True)
    assert len(GTEA61(tree.root, "S1", "rgb", train=True)) == 1  # a single name is accepted
