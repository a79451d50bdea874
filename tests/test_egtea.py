"""EGTEA Gaze+ and split-file datasets: the synthetic release, datasets.prepare --egtea, labels from
the index and split files, verb and noun accuracy, missing and extra clips, --dataset / --split in
the scripts, and prepare -> train (both stages) -> evaluate end to end."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.prepare import synthetic as syn
from datasets import DatasetError
from datasets.egtea import EGTEA, derived_accuracy, verb_noun_of
from utils.errors import UserError

pytest.importorskip("av")
pytest.importorskip("cv2")

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY = ["--pretrained", "none", "--frameSize", "32", "--seqLen", "4", "--trainBatchSize", "4", "--memSize", "16",
        "--valBatchSize", "8", "--numWorkers", "0", "--precision", "fp32", "--camVideos", "0", "--numEpochs", "1"]


def run(*args, check=True):
    p = subprocess.run([PY, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def one_line_error(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in p.stderr, p.stderr[-2000:]
    for n in needles:
        assert n in last, (n, last)


def split_lines(path):
    """{clip: (action, verb, (nouns...))} of a split file, 1-based, read here without the project's code."""
    out = {}
    for line in Path(path).read_text().splitlines():
        clip, a, v, *nouns = line.split()
        out[clip] = (int(a), int(v), tuple(int(n) for n in nouns))
    return out


def index_names(path):
    return {int(line.rsplit(" ", 1)[1]): line.rsplit(" ", 1)[0] for line in Path(path).read_text().splitlines()}


@pytest.fixture(scope="session")
def release(tmp_path_factory):
    d = tmp_path_factory.mktemp("egtea") / "release"
    run("-m", "datasets.prepare.synthetic", "--layout", "egtea", "--outDir", d, "--instances", "1", "--size", "64x48")
    return d


@pytest.fixture(scope="session")
def prepared(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("egtea") / "prepared"
    p = run("-m", "datasets.prepare", "--egtea", release, "--outDir", out, "--flow", "farneback", "--numWorkers", "2",
            "--quiet")
    return out, p.stderr


def test_synthetic_release_has_egtea_form(release):
    actions = index_names(release / "action_idx.txt")
    # EGTEA's names: slashes and spaces in verbs, underscores in nouns, two nouns joined by a comma
    assert actions[5] == "Divide/Pull Apart paper_towel" and actions[6] == "Put trash,trash_container"
    assert sorted(actions) == list(range(1, 7))
    nouns = index_names(release / "noun_idx.txt")
    assert "trash_container" in nouns.values() and "condiment_container" in nouns.values()
    widths = {len(line.split()) for k in (1, 2, 3) for p in ("train", "test")
              for line in (release / f"{p}_split{k}.txt").read_text().splitlines()}
    assert widths == {4, 5}  # the two-noun action's lines have a fifth column
    for k in (1, 2, 3):
        for a, v, n in split_lines(release / f"train_split{k}.txt").values():
            assert (len(n) == 2) == (a == 6)
            assert [nouns[i] for i in n] == ["trash", "trash_container"] if a == 6 else True
    on_disk = {p.stem: p.parent.name for p in (release / "cropped_clips").glob("*/*.mp4")}
    for clip, session in on_disk.items():  # <session>-<start ms>-<end ms>-F<frame>-F<frame>
        parts = clip.split("-")
        assert session == "-".join(parts[:3]) and len(parts) == 7
        assert int(parts[4]) > int(parts[3]) and parts[5].startswith("F") and int(parts[6][1:]) > int(parts[5][1:])
    listed = set()
    for k in (1, 2, 3):
        train, test = split_lines(release / f"train_split{k}.txt"), split_lines(release / f"test_split{k}.txt")
        assert train and test and not set(train) & set(test)
        assert {c.split("-")[0] for c in test} == {f"P0{k}"}  # split k tests on session k
        listed |= set(train) | set(test)
    assert len(listed - set(on_disk)) == 1  # one listed clip missing on disk
    assert len(set(on_disk) - listed) == 1  # one clip on disk in no split


def test_labels_match_index_names_for_every_clip(prepared):
    """Each clip's label names the action the generator rendered for it, via action_idx.txt."""
    root, _ = prepared
    truth = {name: syn.EGTEA_ACTIONS[ai] for _, ai, name, _, _ in syn.egtea_plan(1, 0)}
    names = index_names(root / "action_idx.txt")
    seen = 0
    for k in (1, 2, 3):
        for part in ("train", "test"):
            ds = EGTEA(root, [f"{part}_split{k}"], "rgb", train=False, seqLen=4, frameSize=32)
            lines = split_lines(root / f"{part}_split{k}.txt")
            assert len(ds) == len(lines) - len(ds.missing)
            for clip, label in zip(ds.video_keys, ds.labels):
                a, v, n = lines[clip]
                assert ds.classes[label] == names[a] == truth[clip][0]
                assert label == a - 1  # EGTEA's indices are 1..K: id = index - 1
                assert ds.class_index[label] == a
                assert ds.verbs[ds.class_verb[label]] == truth[clip][1]
                assert tuple(ds.nouns[i] for i in ds.class_nouns[label]) == truth[clip][2]
                assert ds.nouns[ds.class_noun[label]] == truth[clip][2][0]
                seen += 1
    assert seen == 3 * (18 - 1)  # every listed clip that exists: tested in one split, trained on in two


def test_missing_and_extra_clips(release, prepared, capsys):
    root, log = prepared
    assert "warning: 1 of the 18 clips listed" in log and "not in" in log
    assert "1 clip(s)" in log and "in no split file" in log
    extra = next(c.stem for c in (release / "cropped_clips").glob("*/*.mp4")
                 if not any(c.stem in (release / f"{p}_split{k}.txt").read_text()
                            for p in ("train", "test") for k in (1, 2, 3)))
    prepared_clips = {p.name for p in (root / "processed_frames2").glob("*/*")}
    assert len(prepared_clips) == 17 and extra not in prepared_clips
    for name in ["action_idx.txt", "verb_idx.txt", "noun_idx.txt"] + [f"{p}_split{k}.txt" for p in ("train", "test")
                                                                        for k in (1, 2, 3)]:
        assert (root / name).read_bytes() == (release / name).read_bytes()
    capsys.readouterr()
    ds = EGTEA(root, ["train_split1"], "rgb", train=True, seqLen=4, frameSize=32)
    err = capsys.readouterr().err
    assert len(ds.missing) == 1 and "warning: 1 of the 12 clips" in err


def _hand_made_root(root, action_lines, split_rows, verb_lines=None, noun_lines=None):
    """A prepared root written by hand: index and split files, 5 frames per clip."""
    root.mkdir(parents=True)
    (root / "action_idx.txt").write_text("".join(f"{line}\n" for line in action_lines))
    for name, lines in (("verb_idx.txt", verb_lines), ("noun_idx.txt", noun_lines)):
        if lines is not None:
            (root / name).write_text("".join(f"{line}\n" for line in lines))
    (root / "test_split1.txt").write_text("".join(f"{row}\n" for row in split_rows))
    for row in split_rows:
        clip = row.split()[0]
        d = root / "processed_frames2" / "-".join(clip.split("-")[:3]) / clip / "rgb"
        d.mkdir(parents=True)
        for k in range(1, 6):
            Image.fromarray(np.full((32, 32, 3), 10 * k, np.uint8)).save(d / f"rgb{k:04d}.png")


def test_one_based_indices_become_zero_based_ids(tmp_path):
    # indices out of order in the file and with a gap: ids follow the index, not the line order
    _hand_made_root(tmp_path / "r", ["Wash/Rinse pan 7", "Take plate 2", "Put eating_utensil 5"],
                    ["P01-R01-X-1-2-F1-F2 7 1 1", "P01-R01-X-3-4-F3-F4 2 2 2", "P01-R01-X-5-6-F5-F6 5 3 3"])
    ds = EGTEA(tmp_path / "r", ["test_split1"], "rgb", train=False, seqLen=2, frameSize=32)
    assert ds.classes == ["Take plate", "Put eating_utensil", "Wash/Rinse pan"]
    assert ds.class_index == [2, 5, 7]
    assert ds.labels == [2, 0, 1]
    assert ds.verbs == ["1", "2", "3"] and ds.class_verb == [1, 2, 0]  # no verb_idx.txt: indices as names


# EGTEA's columns, by hand: verb and noun indices distinct and gapped (a verb/noun column swap names
# verbs 4, 6, 11 that verb_idx.txt lacks, or gives other ids), one two-noun action with a fifth column
HAND_ACTIONS = ["Take plate 2", "Put trash,trash_container 5", "Put trash 7", "Cut bell_pepper 9"]
HAND_VERBS = ["Cut 3", "Take 10", "Put 12"]
HAND_NOUNS = ["plate 4", "trash 6", "trash_container 8", "bell_pepper 11"]
HAND_ROWS = ["P01-R01-X-1-2-F1-F2 2 10 4", "P01-R01-X-3-4-F3-F4 5 12 6 8", "P01-R01-X-5-6-F5-F6 7 12 6",
             "P01-R01-X-7-8-F7-F8 9 3 11"]


@pytest.mark.parametrize("index_files", [True, False])
def test_verb_and_noun_columns_by_hand(tmp_path, index_files):
    _hand_made_root(tmp_path / "r", HAND_ACTIONS, HAND_ROWS, *((HAND_VERBS, HAND_NOUNS) if index_files else ()))
    ds = EGTEA(tmp_path / "r", ["test_split1"], "rgb", train=False, seqLen=2, frameSize=32)
    assert ds.classes == ["Take plate", "Put trash,trash_container", "Put trash", "Cut bell_pepper"]
    assert ds.labels == [0, 1, 2, 3]
    # verbs and nouns in the order of their file index: verbs 3, 10, 12; nouns 4, 6, 8, 11
    assert ds.class_verb == [1, 2, 2, 0]
    assert ds.class_nouns == [(0,), (1, 2), (1,), (3,)] and ds.class_noun == [0, 1, 1, 3]
    if index_files:  # names as the files write them
        assert [ds.verbs[v] for v in ds.class_verb] == ["Take", "Put", "Put", "Cut"]
        assert [[ds.nouns[n] for n in ns] for ns in ds.class_nouns] == [
            ["plate"], ["trash", "trash_container"], ["trash"], ["bell_pepper"]]
    else:  # the indices as text
        assert ds.verbs == ["3", "10", "12"] and ds.nouns == ["4", "6", "8", "11"]
    # noun accuracy compares the noun column (the first noun), as published EGTEA figures: "Put trash"
    # for "Put trash,trash_container" is the right noun; noun set accuracy compares all nouns: wrong
    verb, noun, nouns, _, _ = verb_noun_of(ds)
    assert noun == [0, 1, 1, 3] and nouns == [(0,), (1, 2), (1,), (3,)]
    labels, preds = [0, 1, 2, 3], [0, 2, 1, 0]
    assert derived_accuracy(labels, preds, verb) == pytest.approx(75.0)  # take=take, put=put, put=put, cut!=take
    assert derived_accuracy(labels, preds, noun) == pytest.approx(75.0)  # plate, trash, trash; bell_pepper!=plate
    assert derived_accuracy(labels, preds, nouns) == pytest.approx(25.0)  # only plate=plate


def test_clips_disagreeing_on_verb_or_nouns_warn_once_and_keep_the_most_common(tmp_path, capsys):
    rows = HAND_ROWS + ["P01-R01-X-9-10-F9-F10 7 12 6", "P01-R01-X-11-12-F11-F12 7 3 6"]
    _hand_made_root(tmp_path / "r", HAND_ACTIONS, rows, HAND_VERBS, HAND_NOUNS)
    for _ in range(2):  # train, validation and test sets read the same files: one warning
        ds = EGTEA(tmp_path / "r", ["test_split1"], "rgb", train=False, seqLen=2, frameSize=32)
    assert ds.verbs[ds.class_verb[2]] == "Put"  # lines 3 and 5 say Put (12), line 6 Cut (3)
    err = [line for line in capsys.readouterr().err.splitlines() if "disagree" in line or "kept" in line]
    assert len(err) == 1, err
    assert "action 7" in err[0] and "test_split1.txt line 3" in err[0] and "test_split1.txt line 6" in err[0]


@pytest.mark.parametrize("line", ["P01-R01-X-7-8-F7-F8", "P01-R01-X-7-8-F7-F8 9 3"])
def test_split_line_of_one_or_three_columns_is_a_one_line_error(tmp_path, line):
    _hand_made_root(tmp_path / "r", HAND_ACTIONS, HAND_ROWS[:3] + [line], HAND_VERBS, HAND_NOUNS)
    with pytest.raises(DatasetError) as e:
        EGTEA(tmp_path / "r", ["test_split1"], "rgb", train=False, seqLen=2, frameSize=32)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "r" / "test_split1.txt") + " line 4: expected"), msg


def test_split_naming_an_absent_action_is_a_one_line_error(release, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(release, bad)
    lines = (bad / "test_split2.txt").read_text().splitlines()
    clip = lines[3].split()[0]
    lines[3] = f"{clip} 99 1 1"
    (bad / "test_split2.txt").write_text("\n".join(lines) + "\n")
    from datasets.prepare import prepare
    from utils.errors import user_error_types
    with pytest.raises(user_error_types()) as e:  # run_cli prints it as one `error:` line, exit 2
        prepare.main(["--egtea", str(bad), "--outDir", str(tmp_path / "out"), "--flow", "farneback"])
    msg = str(e.value)
    assert "\n" not in msg and "test_split2.txt line 4" in msg and "action 99 is not in" in msg
    assert "action_idx.txt" in msg
    assert not (tmp_path / "out").exists()  # nothing written


def test_verb_and_noun_accuracy_by_hand():
    # 4 actions: (verb, noun) = (take, cup), (take, box), (put, cup), (put, box)
    verb, noun = [0, 0, 1, 1], [0, 1, 0, 1]
    labels = [0, 1, 2, 3, 3]
    preds = [1, 1, 0, 2, 3]
    # verb: 0->1 take=take yes; 1->1 yes; 2->0 put/take no; 3->2 put=put yes; 3->3 yes: 4/5
    assert derived_accuracy(labels, preds, verb) == pytest.approx(80.0)
    # noun: 0->1 cup/box no; 1->1 yes; 2->0 cup=cup yes; 3->2 box/cup no; 3->3 yes: 3/5
    assert derived_accuracy(labels, preds, noun) == pytest.approx(60.0)

    class GteaLike:  # GTEA-61 names are <verb>_<noun(s)>
        classes = ["close_jam", "open_jam", "stir_spoon,cup", "take_jam"]
    v, n, ns, verbs, nouns = verb_noun_of(GteaLike)
    assert verbs == ["close", "open", "stir", "take"] and v == [0, 1, 2, 3]
    assert nouns == ["cup", "jam", "spoon"] and n == [1, 1, 2, 1] and ns == [(1,), (1,), (2, 0), (1,)]


def test_dataset_arguments(release, prepared):
    from utils import experiment as E
    root, _ = prepared

    def check(*argv):
        args = E.base_parser("ms_op", "").parse_args(list(argv))
        E.check_args("ms_op", args)
        return args

    args = check("--dataset", "egtea", "--datasetDir", str(root), "--split", "3")
    assert (args.trainUsers, args.testUsers) == (["train_split3"], ["test_split3"])
    assert check("--dataset", "egtea", "--datasetDir", str(root)).split == 1
    with pytest.raises(UserError, match="--trainUsers select GTEA-61 users"):
        check("--dataset", "egtea", "--datasetDir", str(root), "--trainUsers", "S1")
    with pytest.raises(UserError, match="--testUsers"):
        check("--dataset", "egtea", "--datasetDir", str(root), "--testUsers", "S2")
    with pytest.raises(UserError, match="--split 2 applies to --dataset egtea"):
        check("--split", "2")
    with pytest.raises(UserError, match="needs --datasetDir"):
        check("--dataset", "egtea")
    from datasets import DatasetError
    with pytest.raises(DatasetError, match="not a prepared root: run python -m datasets.prepare --egtea"):
        EGTEA(release, ["train_split1"], "rgb", train=True)
    a = check("--datasetDir", str(root))  # GTEA-61 on a split-file root
    with pytest.raises(UserError, match="pass --dataset egtea"):
        E.dataset_class(a)


def test_validation_holdout_on_a_split(prepared):
    root, _ = prepared
    kw = dict(seqLen=4, frameSize=32)
    full = EGTEA(root, ["train_split1"], "rgb", train=True, **kw)
    train = EGTEA(root, ["train_split1"], "rgb", train=True, holdout=(0.5, "train"), **kw)
    val = EGTEA(root, ["train_split1"], "rgb", train=False, holdout=(0.5, "val"), **kw)
    assert not set(train.video_keys) & set(val.video_keys)
    assert sorted(train.video_keys + val.video_keys) == sorted(full.video_keys)
    # by hand: train_split1 lists sessions 2 and 3, one clip per action each, less the missing clip of
    # session 2's action 1: action 1 has 1 clip (none held: a class keeps at least one), actions 2-6 have
    # 2 (round(0.5 * 2) = 1 held each), so 5 of the 11 clips are held out, one per action 2-6
    from collections import Counter
    assert len(full) == 11
    assert Counter(val.labels) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    assert Counter(train.labels) == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1}


def test_prepare_train_both_stages_and_evaluate(prepared, tmp_path):
    root, _ = prepared
    out = tmp_path / "ms_op"
    run("main_ms_op.py", "--dataset", "egtea", "--split", "1", "--datasetDir", root, "--outDir", out, *TINY)
    for stage in (1, 2):
        ck = __import__("torch").load(out / f"stage{stage}" / "best_model.pth", weights_only=True)
        assert ck["config"]["dataset"] == "egtea" and ck["config"]["split"] == 1
        assert ck["classes"] == [a[0] for a in syn.EGTEA_ACTIONS]
    summary = json.loads((out / "stage2" / "summary.json").read_text())
    assert summary["epochs"] == 1

    # stage 2 of another split from this stage 1, and evaluate on another split: refused
    from utils.experiment import run as run_experiment
    import evaluate
    with pytest.raises(UserError, match="was trained with --split 1, this run has --split 2"):
        run_experiment("ms_op", ["--dataset", "egtea", "--split", "2", "--datasetDir", str(root), "--outDir",
                                 str(tmp_path / "x"), "--stage", "2", "--stage1Dict",
                                 str(out / "stage1" / "best_model.pth"), *TINY])
    ev = ["evaluate.py", "--model", "ms_op", "--datasetDir", root, "--modelStateDict", out / "stage2" / "best_model.pth",
          "--numWorkers", "0"]
    with pytest.raises(UserError, match="trained on split 1"):
        evaluate.main([str(x) for x in ev[1:]] + ["--split", "2"])
    run(*ev)
    res = out / "stage2" / "eval_test_split1"
    summary = json.loads((res / "summary.json").read_text())
    with open(res / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    truth = split_lines(root / "test_split1.txt")
    names = index_names(root / "action_idx.txt")
    assert len(rows) == summary["num_videos"] == len(truth)  # the missing clip is in split 2, not 1
    # the expected figures, from the split files' verb and noun columns (ids are index - 1 here)
    verb_of = {a: v for a, v, _ in truth.values()}
    noun_of = {a: n for a, _, n in truth.values()}
    hits = {"action": 0, "verb": 0, "noun": 0, "noun_set": 0}
    per_class = {}
    for r in rows:
        clip = r["video"].split("/")[-1]
        t, p_ = int(r["label"]) + 1, int(r["pred"]) + 1
        assert t == truth[clip][0]
        hits["action"] += t == p_
        hits["verb"] += verb_of[t] == verb_of.get(p_, -1)
        hits["noun"] += noun_of[t][0] == noun_of.get(p_, (-1,))[0]  # the noun column
        hits["noun_set"] += noun_of[t] == noun_of.get(p_, -1)
        per_class.setdefault(names[t], []).append(t == p_)
    n = len(rows)
    assert summary["accuracy"] == pytest.approx(100 * hits["action"] / n, abs=1e-3)
    assert summary["verb_accuracy"] == pytest.approx(100 * hits["verb"] / n, abs=1e-3)
    assert summary["noun_accuracy"] == pytest.approx(100 * hits["noun"] / n, abs=1e-3)
    assert summary["noun_set_accuracy"] == pytest.approx(100 * hits["noun_set"] / n, abs=1e-3)
    mca = np.mean([100 * np.mean(v) for v in per_class.values()])
    assert summary["mean_class_accuracy"] == pytest.approx(mca, abs=1e-3)
    assert summary["class_index"] == [1, 2, 3, 4, 5, 6]


def test_gtea71_sized_dataset_in_the_gtea_layout(tmp_path, classes=71, users=("S1", "P6")):
    """A GTEA 71-sized dataset (71 classes; users named as GTEA Gaze+'s may be) in GTEA-61's folder
    layout: the loader takes the classes from the folder names of all users, whatever their number
    (docs/data.md, "GTEA 71 and GTEA Gaze+", has the full-size check)."""
    from datasets import GTEA61
    out = tmp_path / "d"
    assert syn.main(["--outDir", str(out), "--classes", str(classes), "--instances", "1", "--users", *users,
                     "--size", "32x32", "--noShort", "--noQuirks"]) == 0
    names = sorted(p.name for p in (out / "processed_frames2" / users[0]).iterdir())
    assert len(names) == classes
    ds = GTEA61(out, users[1:2], "rgb", train=False, seqLen=2, frameSize=32)
    assert ds.num_classes == classes and ds.classes == names
    assert [ds.classes[label] for label in ds.labels] == [k.split("/")[1] for k in ds.video_keys]


def test_preparation_that_would_not_fit_stops_before_writing(release, tmp_path, monkeypatch):
    import collections
    from datasets.prepare import prepare
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(prepare.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(UserError) as e:
        prepare.main(["--egtea", str(release), "--outDir", str(tmp_path / "out"), "--flow", "farneback", "--quiet"])
    # 17 clips of 10-28 frames at 64 x 48: at least 17 * 10 * 3072 px * 3.05 B/px = 1.6 MB > 1000 B free
    import re
    m = re.search(r"the output is estimated at ([\d.]+) MB and its disk has 0.0 MB free", str(e.value))
    assert m and 1.6 <= float(m.group(1)) < 20 and "--noSpaceCheck" in str(e.value)
    assert not (tmp_path / "out" / "processed_frames2").exists()


def test_mean_over_splits(tmp_path, capsys):
    import evaluate
    figures = {1: (50.0, 40.0), 2: (60.0, 55.0), 3: (25.0, 10.0)}  # (top-1, mean class accuracy)
    dirs = []
    for k, (acc, mca) in figures.items():
        d = tmp_path / f"eval_test_split{k}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({
            "dataset_kind": "egtea", "split": k, "model": "rgb", "accuracy": acc, "mean_class_accuracy": mca,
            "verb_accuracy": 70.0, "noun_accuracy": 30.0 + k, "num_videos": 10}))
        dirs.append(str(d))
    assert evaluate.main(["--splitMean", *dirs[::-1]]) == 0
    out = capsys.readouterr().out
    # by hand: (50 + 60 + 25) / 3 = 45, (40 + 55 + 10) / 3 = 35, nouns (31 + 32 + 33) / 3 = 32
    assert "mean over splits 1, 2, 3: top-1 45.00%, mean class accuracy 35.0%, verb 70.0%, noun 32.0%" in out
    assert json.loads((tmp_path / "eval_test_split1" / "splits_mean.json").read_text())["mean"]["accuracy"] == 45.0
    with pytest.raises(UserError, match="split 2 given twice"):
        evaluate.main(["--splitMean", dirs[1], dirs[1]])
