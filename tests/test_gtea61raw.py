"""python -m datasets.prepare --gtea61: the raw GTEA-61 release (label files and recordings) cut into
instances by the rules of Ego-RNN's prepareGTEA61Dataset.py, on the synthetic raw release
(datasets.prepare.synthetic --layout gtea61raw). Expected values are written out by hand from the
generator's table (GTEA61RAW_RECORDINGS) or read from the label files with this file's own regex."""
import re
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("av")
pytest.importorskip("cv2")

from datasets.prepare import gtea61raw, prepare  # noqa: E402
from datasets.prepare import synthetic as syn  # noqa: E402
from utils.errors import UserError  # noqa: E402

# by hand from GTEA61RAW_RECORDINGS: instances numbered per user and action in label-file name order
# (S1_Cheese_C1 before S1_Tea_C1) then line order; stir<cup> and stir<spoon,cup> are one class;
# put_tea of S1 and S2 dropped, of S3 kept
EXPECTED = {
    "S1": {"take_cup": 3, "put_cup": 1, "stir_spoon,cup": 1, "open_jam": 1},
    "S2": {"take_cup": 1, "put_cup": 1, "stir_spoon,cup": 1, "open_jam": 1},
    "S3": {"take_cup": 1, "put_cup": 1, "stir_spoon,cup": 1, "open_jam": 1, "put_tea": 1},
}
# instance -> (label file, 1-based line number), by hand (line 1 of each file is its title line)
SOURCE = {"S1/take_cup/1": ("S1_Cheese_C1", 2), "S1/take_cup/2": ("S1_Cheese_C1", 4),
          "S1/take_cup/3": ("S1_Tea_C1", 2), "S1/stir_spoon,cup/1": ("S1_Cheese_C1", 5),
          "S2/take_cup/1": ("S2_Tea_C1", 2), "S2/put_cup/1": ("S2_Tea_C1", 3),
          "S2/stir_spoon,cup/1": ("S2_Tea_C1", 5), "S2/open_jam/1": ("S2_Tea_C1", 6)}
FAST = ["--flow", "farneback", "--numWorkers", "1"]


def label_range(raw, stem, line):
    text = (raw / "labels" / f"{stem}.txt").read_text().splitlines()[line - 1]
    start, end = re.search(r"\((\d+)-(\d+)\)", text).groups()
    return int(start), int(end)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("gtea61raw") / "raw"
    assert syn.main(["--layout", "gtea61raw", "--outDir", str(d), "--size", "64x48"]) == 0
    return d


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("gtea61raw") / "prepared"
    assert prepare.main(["--gtea61", str(raw), "--outDir", str(out), *FAST]) == 0
    return out


def test_label_lines_by_hand():
    assert gtea61raw.parse_line("<pour><honey,bread> (120-180) [x]") == ("pour_honey,bread", 120, 180)
    assert gtea61raw.parse_line("<stir><cup> (1-5)") == ("stir_spoon,cup", 1, 5)  # the original's rename
    assert gtea61raw.parse_line("<stir><spoon,cup> (7-7)") == ("stir_spoon,cup", 7, 7)
    assert gtea61raw.parse_line("S1_Cheese_C1 (annotation)") is None  # no '><': not an instance
    for bad in ("<take><cup> (9-x)", "<take><cup>", "<take><cup> (0-4)", "<take><cup> (8-4)"):
        with pytest.raises(ValueError):
            gtea61raw.parse_line(bad)


def test_classes_and_instances(prepared, capsys):
    found = {}
    for d in sorted((prepared / "processed_frames2").glob("*/*/*")):
        found.setdefault(d.parts[-3], {}).setdefault(d.parts[-2], []).append(int(d.name))
    assert {u: {c: sorted(k) for c, k in cs.items()} for u, cs in found.items()} == {
        u: {c: list(range(1, n + 1)) for c, n in cs.items()} for u, cs in EXPECTED.items()}
    # the loader reads it: classes from the folder names of all users
    from datasets import GTEA61
    ds = GTEA61(prepared, ["S1", "S2", "S3"], "rgb", train=False, seqLen=2, frameSize=32)
    assert ds.classes == ["open_jam", "put_cup", "put_tea", "stir_spoon,cup", "take_cup"] and len(ds) == 15


def test_frames_are_the_labelled_range(raw, prepared):
    # S2's recording is a PNG folder: frame f of the instance is exactly file start + f - 1
    pngs = sorted((raw / "png" / "S2_Tea_C1").glob("*.png"))
    for rel, (stem, line) in SOURCE.items():
        start, end = label_range(raw, stem, line)
        got = sorted((prepared / "processed_frames2" / rel / "rgb").glob("rgb*.png"))
        assert len(got) == end - start + 1, rel  # inclusive range
        assert len(list((prepared / "flow_x_processed" / rel).glob("*.png"))) == end - start
        if stem.startswith("S2"):
            for k, path in enumerate(got):
                assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(pngs[start - 1 + k]))), rel
        # the recordings have uniform grey frames around every instance: a range cut one frame early or
        # late starts or ends on one
        for path in (got[0], got[-1]):
            assert np.asarray(Image.open(path)).std() > 5, (rel, path.name)


def test_bad_labels_are_one_line_errors_and_the_rest_goes_on(raw, tmp_path, capsys):
    bad = tmp_path / "raw"
    shutil.copytree(raw, bad)
    lines = (bad / "labels" / "S3_Cheese_C1.txt").read_text().splitlines()
    lines[1] = "<take><cup> (9-x)"             # line 2: malformed range
    lines[2] = "<put><cup> (400-410)"          # line 3: beyond the video's end
    (bad / "labels" / "S3_Cheese_C1.txt").write_text("\n".join(lines) + "\n")
    (bad / "labels" / "S4_Coffee_C1.txt").write_text("title\n<take><cup> (1-5)\n")  # no recording
    out = tmp_path / "out"
    capsys.readouterr()
    assert prepare.main(["--gtea61", str(bad), "--outDir", str(out), *FAST]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert any("S3_Cheese_C1.txt line 2" in e and "range" in e for e in errors), errors
    assert any("S3_Cheese_C1.txt line 3" in e and "(400-410)" in e for e in errors), errors
    assert any("S4_Coffee_C1.txt line 2" in e and "no video or frame folder" in e for e in errors), errors
    assert "Traceback" not in err
    done = {str(p.relative_to(out / "processed_frames2")) for p in (out / "processed_frames2").glob("*/*/*")}
    assert "S1/take_cup/3" in done and "S2/open_jam/1" in done and "S3/open_jam/1" in done
    assert "S3/put_cup/1" not in done and not (out / "processed_frames2" / "S4").exists()


def test_egornn_layout_only_frames_and_rerun(raw, tmp_path, capsys):
    out = tmp_path / "e"
    args = ["--gtea61", str(raw), "--outDir", str(out), "--layout", "egornn", "--only", "frames", *FAST]
    assert prepare.main(args) == 0
    start, end = label_range(raw, "S1_Tea_C1", 2)
    files = sorted(p.name for p in (out / "frames" / "S1" / "take_cup" / "3").iterdir())
    assert files == [f"image_{k:05d}.jpg" for k in range(0, end - start + 1)]  # the original's: from 0
    assert not (out / "flow_x").exists()
    capsys.readouterr()
    assert prepare.main(args) == 0  # resumable: nothing left to do
    assert "preparing 0 video(s)" in capsys.readouterr().err
    with pytest.raises(UserError, match="--fps applies to"):
        prepare.main(["--gtea61", str(raw), "--outDir", str(tmp_path / "f"), "--fps", "10"])


# ----------------------------------------------------------------------------- frames by number
# Raw releases written here as frame folders whose file numbered f has grey level f, so every
# frame read says which labelled frame it is.
def grey_release(root, recordings):
    """recordings: {stem: (frame numbers on disk, ["(start-end)" ...])}."""
    (root / "labels").mkdir(parents=True)
    for stem, (numbers, ranges) in recordings.items():
        d = root / "png" / stem
        d.mkdir(parents=True)
        for f in numbers:
            Image.fromarray(np.full((8, 8, 3), f, np.uint8)).save(d / f"{f:010d}.png")
        lines = [f"{stem} (annotation)"] + [f"<take><cup> {r}" if k % 2 == 0 else f"<put><cup> {r}"
                                             for k, r in enumerate(ranges)]
        (root / "labels" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    return root


def greys(folder):
    """The grey level of each written frame, in file-number order."""
    files = sorted(folder.iterdir(), key=lambda p: int(re.search(r"(\d+)\.", p.name).group(1)))
    return [int(round(np.asarray(Image.open(p)).mean())) for p in files]


FRAMES = ["--only", "frames", "--shortSide", "0", "--numWorkers", "1", "--quiet"]


@pytest.mark.parametrize("layout", ["course", "egornn"])
def test_loader_shows_the_original_pipelines_labelled_frames(tmp_path, layout):
    raw = grey_release(tmp_path / "raw", {"S1_Grey_C1": (range(1, 101), ["(20-59)"])})
    out = tmp_path / "out"
    assert prepare.main(["--gtea61", str(raw), "--outDir", str(out), "--layout", layout, *FRAMES]) == 0
    from datasets import GTEA61
    from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
    ds = GTEA61(out, ["S1"], "rgb", train=False, seqLen=16, frameSize=32)
    rgb = ds[0]["rgb"][:, 0]  # (T, F, F), the red channel: grey frames
    shown = [int(round(((x * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255).mean().item())) for x in rgb]
    # N = 40 frames (20..59), T = 16: i = 1 + k 39/16 = 1, 3.4375, 5.875, 8.3125, ..., 37.5625 by hand;
    # the original shows image_%05d % floor(i) of its copies numbered from 0, the labelled frame 20 + floor(i)
    assert shown == [21, 23, 25, 28, 30, 33, 35, 38, 40, 42, 45, 47, 50, 52, 55, 57]
    assert shown == [20 + int(i) for i in np.floor(np.linspace(1, 40, 16, endpoint=False))]


def test_frame_folders_are_read_by_number(tmp_path, capsys):
    raw = grey_release(tmp_path / "raw", {
        "S1_Zero_C1": (range(0, 100), ["(20-59)", "(70-79)"]),                           # numbered from 0
        "S2_Gap_C1": ([f for f in range(1, 101) if f != 30], ["(20-59)", "(70-79)"]),    # 30 missing
        "S3_Plain_C1": (range(1, 101), ["(20-59)"])})                                   # 1, 2, ...: no warning
    out = tmp_path / "out"
    capsys.readouterr()
    assert prepare.main(["--gtea61", str(raw), "--outDir", str(out), *FRAMES]) == 0
    err = capsys.readouterr().err
    rgb = out / "processed_frames2"
    assert greys(rgb / "S1" / "take_cup" / "1" / "rgb") == list(range(20, 60))
    assert greys(rgb / "S1" / "put_cup" / "1" / "rgb") == list(range(70, 80))
    assert greys(rgb / "S2" / "take_cup" / "1" / "rgb") == [f for f in range(20, 60) if f != 30]
    assert greys(rgb / "S2" / "put_cup" / "1" / "rgb") == list(range(70, 80))  # not shifted by the gap
    assert greys(rgb / "S3" / "take_cup" / "1" / "rgb") == list(range(20, 60))
    warning = [ln for ln in err.splitlines() if "numbered otherwise" in ln]
    assert len(warning) == 1, err
    assert "S1_Zero_C1 (files numbered 0..99)" in warning[0], warning
    assert "S2_Gap_C1 (files numbered 1..100, 1 number(s) missing)" in warning[0], warning
    assert "S3_Plain_C1" not in warning[0]


def test_a_range_past_the_end_keeps_the_frames_that_exist(tmp_path, capsys):
    raw = grey_release(tmp_path / "raw", {
        "S1_Long_C1": (range(1, 101), ["(10-49)", "(90-110)"]),   # 90..100 exist: 11 frames kept
        "S2_Long_C1": (range(1, 51), ["(44-60)", "(48-70)"])})    # 44..50: 7 kept; 48..50: 3, an error
    out = tmp_path / "out"
    capsys.readouterr()
    assert prepare.main(["--gtea61", str(raw), "--outDir", str(out), *FRAMES]) == 1
    err = capsys.readouterr().err
    rgb = out / "processed_frames2"
    assert greys(rgb / "S1" / "take_cup" / "1" / "rgb") == list(range(10, 50))
    assert greys(rgb / "S1" / "put_cup" / "1" / "rgb") == list(range(90, 101))
    assert greys(rgb / "S2" / "take_cup" / "1" / "rgb") == list(range(44, 51))
    assert not (rgb / "S2" / "put_cup").exists()
    clipped = [ln for ln in err.splitlines() if "past the end of their recording" in ln]
    assert len(clipped) == 1 and clipped[0].startswith("warning: 2 instance(s)"), err
    assert "S1/put_cup/1 (" in clipped[0] and "S1_Long_C1.txt line 3: frames 90-110, the recording ends at 100" \
        in clipped[0], clipped
    assert "S2/take_cup/1 (" in clipped[0] and "frames 44-60, the recording ends at 50" in clipped[0], clipped
    assert "S2/put_cup" not in clipped[0] and "S1/take_cup" not in clipped[0]
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert any("S2_Long_C1.txt line 3" in e and "(48-70)" in e and "holds 3 of them" in e for e in errors), err


def test_a_video_labelled_past_its_end_keeps_its_frames(raw, tmp_path, capsys):
    bad = tmp_path / "raw"
    shutil.copytree(raw, bad)
    labels = bad / "labels" / "S3_Cheese_C1.txt"
    lines = labels.read_text().splitlines()
    start, end = (int(x) for x in re.search(r"\((\d+)-(\d+)\)", lines[-1]).groups())
    total = end + syn.GTEA61RAW_GAP  # the recording's frames, by the generator's table
    lines[-1] = f"<put><tea> ({start}-{total + 20})"
    labels.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    capsys.readouterr()
    assert prepare.main(["--gtea61", str(bad), "--outDir", str(out), *FRAMES]) == 0
    err = capsys.readouterr().err
    frames = list((out / "processed_frames2" / "S3" / "put_tea" / "1" / "rgb").glob("rgb*.png"))
    assert len(frames) == total - start + 1, err
    clipped = [ln for ln in err.splitlines() if "past the end of their recording" in ln]
    assert len(clipped) == 1 and f"S3/put_tea/1 (" in clipped[0] and f"the recording ends at {total}" in clipped[0], err
