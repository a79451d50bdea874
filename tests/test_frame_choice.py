"""The RGB frames of a clip come from the RGB frame count in every modality (reference.md
section 1: frame numbers floor(linspace(1, N, seqLen, endpoint=False))). The original two-stream
loader used the flow count (one fewer) for its RGB frames; here the two-stream RGB stream sees
exactly the frames of the RGB model.

Frame k of the test videos is uniform with value 10 * k (tests/conftest.py), so a clip's values
name its frames. Expected frame numbers are worked out by hand below."""
import pytest
import torch

from datasets import GTEA61, IMAGENET_MEAN, IMAGENET_STD

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


def test_hand_computed_cases_are_the_reference_formula():
    import math
    for n, t, numbers in CASES:
        assert [math.floor(1 + i * (n - 1) / t) for i in range(t)] == numbers


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
