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
FAST = ["--flow", "farneback", "--numWorkers", "1", "--quiet"]


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
    assert files == [f"image_{k:05d}.jpg" for k in range(1, end - start + 2)]
    assert not (out / "flow_x").exists()
    capsys.readouterr()
    assert prepare.main(args) == 0  # resumable: nothing left to do
    assert "preparing 0 video(s)" in capsys.readouterr().err
    with pytest.raises(UserError, match="--fps applies to"):
        prepare.main(["--gtea61", str(raw), "--outDir", str(tmp_path / "f"), "--fps", "10"])
