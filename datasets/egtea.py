"""EGTEA Gaze+, and any dataset released as video clips with split files in its form.

The release, as its users have it:
  cropped_clips/<session>/<clip>.mp4    session = the first three dash-separated parts of the clip
                                        name (P21-R04-ContinentalBreakfast), then start and end
                                        in ms, start and end frame
  action_idx.txt                        "<name> <index>" a line, 1-based, names with spaces,
  verb_idx.txt, noun_idx.txt            slashes and underscores ("Inspect/Read recipe 1",
                                        "Put trash,trash_container 12", "cutting_board 5")
  train_split1.txt .. train_split3.txt  "<clip> <action> <verb> <noun> [<noun2> ...]" a line, all
  test_split1.txt .. test_split3.txt    1-based; an action naming two nouns has a fifth column

`python -m datasets.prepare --egtea DIR --outDir ROOT` turns it into a prepared root: the frames,
warp flow and motion maps of every listed clip in the course layout, one folder per clip
(processed_frames2/<session>/<clip>/rgb/rgbNNNN.png, flow_x_processed/<session>/<clip>/...), with
copies of the index and split files next to them. `EGTEA(ROOT, ["train_split1"], ...)` reads it:

  * class ids come from action_idx.txt, never from folder order: the actions in the order of
    their 1-based index, id 0 for the smallest (so id = index - 1 for EGTEA's 1..106);
    `class_index[id]` is the file's index. Verb and nouns of each action come from the split
    files' columns: `class_verb[id]` / `class_noun[id]` (the first noun, column 4) are 0-based
    ids into `verbs` / `nouns` (the names of verb_idx.txt / noun_idx.txt as written, or their
    indices as text when those files are absent), `class_nouns[id]` the tuple of all its nouns.
    Clips of one action that disagree on verb or nouns are one warning naming both lines; the
    most common reading is kept.
  * `users` names one split file (without .txt): the split is the video selection, as users are
    for GTEA-61, so `--trainUsers` / `--testUsers`, the checkpoint records and the validation
    hold-out work unchanged; the scripts pass train_splitK / test_splitK (--dataset egtea --split K).
  * a clip listed in the split file that the root does not hold is skipped with one warning giving
    the count (EGTEA lists a few clips it does not ship); a split line naming an action index that
    action_idx.txt lacks is a one-line DatasetError.
Everything else (frame choice, transforms, motion maps, frame cache) is GTEA61's.
"""
import os
import sys

from .gtea61 import GTEA61, DatasetError, _LAYOUTS, _subdirs, _top

INDEX_FILES = {"action": "action_idx.txt", "verb": "verb_idx.txt", "noun": "noun_idx.txt"}
SPLITS = (1, 2, 3)
CLIPS = "cropped_clips"


def split_names(k):
    """The train and test split files of EGTEA's split k (without .txt)."""
    return f"train_split{k}", f"test_split{k}"


def release_files():
    """Every index and split file name of a release, as datasets.prepare copies them."""
    return list(INDEX_FILES.values()) + [f"{n}.txt" for k in SPLITS for n in split_names(k)]


def session_of(clip):
    """EGTEA's session folder of a clip: the first three dash-separated parts of its name."""
    parts = clip.split("-")
    if len(parts) < 4:
        raise DatasetError(f"clip name {clip!r} is not <session>-...: EGTEA names clips "
                           "P21-R04-ContinentalBreakfast-291175-294945-F006979-F007088")
    return "-".join(parts[:3])


def read_index(path):
    """{1-based index: name} of an index file ("<name> <index>" a line; names may hold spaces)."""
    if not os.path.isfile(path):
        raise DatasetError(f"index file not found: {path} (a release has action_idx.txt, verb_idx.txt and "
                           "noun_idx.txt at its root; datasets.prepare --egtea copies them)")
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) < 1:
                raise DatasetError(f"{path} line {n}: expected '<name> <1-based index>', got {line!r}")
            k = int(parts[1])
            if k in out:
                raise DatasetError(f"{path} line {n}: index {k} given twice ({out[k]!r} and {parts[0]!r})")
            out[k] = parts[0]
    if not out:
        raise DatasetError(f"{path} is empty: expected '<name> <1-based index>' lines")
    return out


def read_split(path, actions, index_path="action_idx.txt"):
    """[(clip, action, verb, nouns, line number)] of a split file, 1-based as written: nouns is the
    tuple of columns 4, 5, ... (verb and nouns None when the line has only two columns). An action
    that `actions` ({index: name}) lacks is an error."""
    if not os.path.isfile(path):
        raise DatasetError(f"split file not found: {path} (EGTEA's are train_split1.txt .. test_split3.txt "
                           "at the release root)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) in (1, 3) or not all(x.isdigit() for x in fields[1:]):
                raise DatasetError(f"{path} line {n}: expected '<clip> <action> <verb> <noun> [<noun2> ...]' "
                                   f"(1-based indices), got {line.strip()!r}")
            a = int(fields[1])
            if a not in actions:
                raise DatasetError(f"{path} line {n}: action {a} is not in {index_path} (indices "
                                   f"{min(actions)}..{max(actions)}): use the split and index files of "
                                   "one release")
            v, o = (int(fields[2]), tuple(int(x) for x in fields[3:])) if len(fields) > 2 else (None, None)
            rows.append((fields[0], a, v, o, n))
    return rows


_WARNED = set()


def _warn_once(msg):
    """Print a warning once per process (train, validation and test sets read the same files)."""
    if msg not in _WARNED:
        _WARNED.add(msg)
        print(msg, file=sys.stderr, flush=True)


class Release:
    """The index and split files of a release (or of a prepared root, which holds copies)."""

    def __init__(self, root):
        self.root = os.fspath(root)
        self.action_path = os.path.join(self.root, INDEX_FILES["action"])
        actions = read_index(self.action_path)
        self.index = sorted(actions)                       # 1-based file index of each class id
        self.classes = [actions[k] for k in self.index]
        self.class_id = {k: i for i, k in enumerate(self.index)}
        self.actions = actions
        # verb and nouns of each action, from every split file present: the most common reading
        # (a release with clips that disagree still trains; the warning names both lines)
        readings = {}  # action -> {(verb, nouns): [count, "file line n"]}
        for name in sorted(os.listdir(self.root)):
            if name.endswith(".txt") and "_split" in name:
                for clip, a, v, o, n in read_split(os.path.join(self.root, name), actions, self.action_path):
                    if v is not None:
                        seen = readings.setdefault(a, {}).setdefault((v, o), [0, f"{name} line {n}"])
                        seen[0] += 1
        vn, conflicts = {}, []
        for a, found in readings.items():
            ranked = sorted(found.items(), key=lambda kv: -kv[1][0])  # stable: ties keep file order
            vn[a] = ranked[0][0]
            if len(ranked) > 1:
                conflicts.append((a, ranked[0], ranked[1]))
        if conflicts:
            a, (keep, (k1, where1)), (other, (k2, where2)) = conflicts[0]
            _warn_once(f"warning: {self.root}: action {a} ({actions[a]!r}) has verb/nouns {keep[0]}/"
                       f"{','.join(map(str, keep[1]))} ({k1} clip(s), first at {where1}) but {other[0]}/"
                       f"{','.join(map(str, other[1]))} at {where2} ({k2} clip(s)); kept the most common"
                       + (f" ({len(conflicts)} actions disagree so)" if len(conflicts) > 1 else ""))
        self.verbs, self.verb_of = self._labels("verb", [(vn[k][0],) if k in vn else None for k in self.index])
        self.nouns, self.nouns_of = self._labels("noun", [vn[k][1] if k in vn else None for k in self.index])
        self.verb_of = [None if v is None else v[0] for v in self.verb_of]
        self.noun_of = [None if o is None else o[0] for o in self.nouns_of]

    def _labels(self, what, per_class):
        """(names, per class a tuple of 0-based ids or None) for verbs or nouns; per_class holds
        tuples of 1-based file indices."""
        path = os.path.join(self.root, INDEX_FILES[what])
        table = read_index(path) if os.path.isfile(path) else {}
        used = {k for ks in per_class if ks is not None for k in ks}
        for k in sorted(used):
            if table and k not in table:
                raise DatasetError(f"a split file of {self.root} names {what} {k}, which {path} lacks")
        keys = sorted(set(table) | used)
        pos = {k: i for i, k in enumerate(keys)}
        return ([table.get(k, str(k)) for k in keys],
                [None if ks is None else tuple(pos[k] for k in ks) for ks in per_class])

    def split(self, name):
        """Rows of split file `name` (without .txt), as read_split."""
        return read_split(os.path.join(self.root, name + ".txt"), self.actions, self.action_path)


def clip_folders(root, top):
    """{clip name: "<session>/<clip>"} of the clip folders under root/top (two levels)."""
    out = {}
    for session in _subdirs(os.path.join(root, top)):
        for clip in _subdirs(os.path.join(root, top, session)):
            out.setdefault(clip, f"{session}/{clip}")
    return out


class EGTEA(GTEA61):
    """Clips of one split file of a prepared root (see the module docstring); the arguments are
    GTEA61's, with `users` the split file's name, e.g. ["train_split1"]."""

    def __init__(self, root, *args, **kwargs):
        root = os.fspath(root)
        if os.path.isdir(os.path.join(root, CLIPS)) and not any(
                os.path.isdir(os.path.join(root, top)) for layout in _LAYOUTS.values() for top in layout["rgb"]):
            raise DatasetError(f"{root} is a release of video clips ({CLIPS}/), not a prepared root: run "
                               f"python -m datasets.prepare --egtea {root} --outDir ROOT and pass --datasetDir ROOT")
        super().__init__(root, *args, **kwargs)

    def _scan(self):
        if len(self.users) != 1:
            raise DatasetError(f"a split-file dataset reads one split file, got {' '.join(self.users)} "
                               "(use --dataset egtea --split K, not --trainUsers / --testUsers)")
        release = Release(self.root)
        self.release = release
        self.classes, self.num_classes = release.classes, len(release.classes)
        self.class_index = release.index
        self.verbs, self.nouns = release.verbs, release.nouns
        self.class_verb, self.class_noun = release.verb_of, release.noun_of
        self.class_nouns = release.nouns_of
        rows = release.split(self.users[0])
        split_path = os.path.join(self.root, self.users[0] + ".txt")

        L = _LAYOUTS[self.layout]
        tops = {k: _top(self.root, L[k]) for k in ("rgb", "flow_x", "flow_y")}
        if self._needs_rgb and tops["rgb"] is None:
            raise DatasetError(f"{self.root} has no {L['rgb'][0]}/ folder: prepare the release first "
                               f"(python -m datasets.prepare --egtea RELEASE --outDir {self.root})")
        if self._needs_flow and (tops["flow_x"] is None or tops["flow_y"] is None):
            raise DatasetError(f"modality {self.modality} needs optical flow but {self.root} has none: "
                               f"python -m datasets.prepare --frames {self.root} --only flow")
        primary = tops["rgb"] if self._needs_rgb else tops["flow_x"]
        primary_dir = os.path.join(self.root, primary)
        where = clip_folders(self.root, primary)

        self.video_ids, self.video_keys, self.labels, self.num_frames = [], [], [], []
        self._videos, skipped, missing = [], [], []
        for clip, action, *_ in rows:
            rel = where.get(clip)
            if rel is None:
                missing.append(clip)
                continue
            vid = f"{primary}/{rel}"
            v = self._read_video(L, tops, primary, rel, vid, skipped)
            if v is None:
                continue
            self.video_ids.append(vid)
            self.video_keys.append(clip)
            self.labels.append(release.class_id[action])
            self.num_frames.append(len(v["rgb"]) if "rgb" in v else len(v["flow"]))
            self._videos.append(v)
        self.missing = missing
        if missing:
            print(f"warning: {len(missing)} of the {len(rows)} clips of {split_path} are not in {primary_dir} "
                  f"(missing from the release, or not prepared), skipped: {', '.join(missing[:3])}"
                  f"{' ...' if len(missing) > 3 else ''}", file=sys.stderr, flush=True)
        self._finish_scan(L, primary, primary_dir, skipped)

    def __repr__(self):
        return (f"EGTEA(root={self.root!r}, split={self.users[0]}, modality={self.modality}, "
                f"train={self.train}, videos={len(self)}, classes={self.num_classes}, "
                f"missing={len(self.missing)}, skipped={self.num_skipped})")


def verb_noun_of(dataset):
    """(class -> verb id, class -> noun id, class -> noun ids, verb names, noun names) of a
    dataset, or None when it has no verbs and nouns. The noun is the split file's noun column
    (column 4, the first noun), what published EGTEA noun accuracies and public readers of the
    split files compare; the noun ids are all of them (columns 4, 5, ...: "Put trash,trash_container"
    has two). GTEA-61's class names are <verb>_<noun(s)> (take_cup, stir_spoon,cup), split at the
    first underscore, the nouns at the commas."""
    if hasattr(dataset, "class_verb"):
        if any(v is None for v in dataset.class_verb) or any(n is None for n in dataset.class_nouns):
            return None
        return dataset.class_verb, dataset.class_noun, dataset.class_nouns, dataset.verbs, dataset.nouns
    if not all("_" in c for c in dataset.classes):
        return None
    pairs = [(v, tuple(n.split(","))) for v, n in (c.split("_", 1) for c in dataset.classes)]
    verbs = sorted({v for v, _ in pairs})
    nouns = sorted({n for _, ns in pairs for n in ns})
    sets = [tuple(nouns.index(n) for n in ns) for _, ns in pairs]
    return [verbs.index(v) for v, _ in pairs], [ns[0] for ns in sets], sets, verbs, nouns


def derived_accuracy(labels, preds, class_to_part):
    """% of videos whose predicted action has the true action's verb, noun (the first) or noun set
    (all of them, so "Put trash" is wrong for "Put trash,trash_container"): the verb and noun
    accuracy of an action classifier, with no verb or noun head."""
    if not len(labels):
        return None
    hits = sum(class_to_part[p] == class_to_part[t] for t, p in zip(labels, preds))
    return 100.0 * hits / len(labels)
