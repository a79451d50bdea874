"""Frames are chosen by file number as the original opens them, floor(linspace(1, N, seqLen,
endpoint=False)) with N the number of files, on releases numbered from 0 and from 1, with the
position rule as the fallback of a video whose numbering lacks a number. The RGB frames of a clip
come from the RGB frame count in every modality. The original two-stream
loader used the flow count (one fewer) for its RGB frames; here the two-stream RGB stream sees
exactly the frames of the RGB model.

Frame k of the test videos is uniform with value 10 * k (tests/conftest.py), so a clip's values
name its frames. Expected frame numbers are worked out by hand below."""
import pytest
import torch

from datasets import FLOW_MEAN, FLOW_STD, GTEA61, IMAGENET_MEAN, IMAGENET_STD

# N frames, seqLen -> frame numbers, by hand: 1 + floor(i * (N - 1) / seqLen), i = 0 .. seqLen-1
#   N = 11, seqLen 4: steps of 10/4 = 2.5 -> 1, 3.5, 6, 8.5 -> 1, 3, 6, 8
#   (the flow count, N = 10: steps of 9/4 = 2.25 -> 1, 3.25, 5.5, 7.75 -> 1, 3, 5, 7)
#   N = 9, seqLen 3: steps of 8/3 -> 1, 3.67, 6.33 -> 1, 3, 6   (flow count 8: 1, 3.33, 5.67 -> 1, 3, 5)
#   N = 13, seqLen 5: steps of 12/5 = 2.4 -> 1, 3.4, 5.8, 8.2, 10.6 -> 1, 3, 5, 8, 10
#   (flow count 12: steps of 2.2 -> 1, 3.2, 5.4, 7.6, 9.8 -> 1, 3, 5, 7, 9)
CASES = [(11, 4, [1, 3, 6, 8]), (9, 3, [1, 3, 6]), (13, 5, [1, 3, 5, 8, 10])]


def frame_numbers(rgb):
    """Frame numbers of a normalised "rgb" clip (T, 3, F, F) of uniform frames."""
    v = rgb[:, 0].mean(dim=(1, 2)) * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return [round(float(a) * 255 / 10) for a in v]


@pytest.mark.parametrize("first", [0, 1])
@pytest.mark.parametrize("n,t,numbers", CASES)
def test_rgb_frames_are_chosen_by_file_number(tree, capsys, first, n, t, numbers):
    """Ego-RNN opens image_%05d % floor(i): the same NUMBERS whether the release counts from 1 (course,
    datasets.prepare) or from 0 (prepareGTEA61Dataset.py); from 0, image_00000 is never shown and the
    last file is the N-th. By position the release from 0 would show frame numbers one lower."""
    tree.video("S1", "take_cup", 1, None, numbers=range(first, first + n), layout="egornn", flow=False)
    ds = GTEA61(tree.root, ["S1"], "rgb", train=False, seqLen=t, frameSize=16)
    assert ds.num_frames == [n] and ds.by_position == []
    assert frame_numbers(ds[0]["rgb"]) == numbers and ds[0]["frame_numbers"].tolist() == numbers
    assert "warning" not in capsys.readouterr().err


def test_missing_numbers_fall_back_to_positions_in_one_warning(tree, capsys):
    # N = 11, seqLen 4: the rule asks for numbers 1, 3, 6, 8 (CASES); positions 1, 3, 6, 8 (1-based)
    tree.video("S1", "a_x", 1, None, numbers=range(2, 13), layout="egornn", flow=False)  # from 2: no 1
    tree.video("S1", "b_y", 1, None, numbers=[1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12], layout="egornn",
               flow=False)  # 3 missing
    tree.video("S1", "c_z", 1, None, numbers=[1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12], layout="egornn",
               flow=False)  # 4 missing, but 1, 3, 6, 8 exist: by number
    ds = GTEA61(tree.root, ["S1"], "rgb", train=False, seqLen=4, frameSize=16)
    assert [frame_numbers(ds[i]["rgb"]) for i in range(3)] == [[2, 4, 7, 9], [1, 4, 7, 9], [1, 3, 6, 8]]
    assert ds.by_position == ["frames/S1/a_x/1", "frames/S1/b_y/1"]
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "2 video(s) lack a frame number" in err, err
    assert "S1/a_x/1" in err and "S1/b_y/1" in err and "c_z" not in err


@pytest.mark.parametrize("first", [0, 1])
def test_flow_test_stacks_are_chosen_by_file_number(tree, first):
    # 10 flow files numbered first .. first + 9 (N_f = 10). numSeg 1: ceil((10 - 5) / 2) = 3 -> files
    # 3..7. numSeg 3: int(linspace(1, 6, 3, endpoint=False)) = 1, 2, 4 -> 1..5, 2..6, 4..8.
    tree.video("S1", "take_cup", 1, None, numbers=range(first, first + 11), layout="egornn")
    for num_seg, starts in ((1, [3]), (3, [1, 2, 4])):
        ds = GTEA61(tree.root, ["S1"], "flow", train=False, frameSize=16, numSeg=num_seg)
        assert ds.by_position == []
        x = ds[0]["flow"][:, 0::2].mean(dim=(2, 3)) * FLOW_STD + FLOW_MEAN  # flow_x of file k: 10 * k
        assert (x * 255 / 10).round().long().tolist() == [list(range(s, s + 5)) for s in starts]


@pytest.mark.parametrize("n,t,numbers", CASES)
@pytest.mark.parametrize("layout", ["course", "egornn"])
def test_twostream_rgb_frames_use_the_rgb_frame_count(tree, n, t, numbers, layout):
    tree.video("S1", "take_cup", 1, n, layout=layout)  # n RGB frames, n - 1 flow frames
    for train in (False, True):
        kw = dict(seqLen=t, frameSize=32, mapSize=1)
        two = GTEA61(tree.root, ["S1"], "twostream", train=train, **kw)
        rgb = GTEA61(tree.root, ["S1"], "rgb", train=train, **kw)
        assert two.num_frames == [n]
        assert frame_numbers(two[0]["rgb"]) == numbers
        assert frame_numbers(rgb[0]["rgb"]) == numbers
        # the GPU path: decoded frames, transformed later on the device
        src = two.get(0, source=True)["rgb_src"]
        assert [int(f[..., 0].float().mean().round()) // 10 for f in src] == numbers
        assert two[0]["flow"].shape == (1, 10, 32, 32)
