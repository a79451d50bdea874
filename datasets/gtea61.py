"""GTEA-61 dataset: one loader for both on-disk layouts and all modalities.

Layouts (auto-detected by `detect_layout`):
  course  processed_frames2/<user>/<class>/<inst>/rgb/rgbNNNN.png
          processed_frames2/<user>/<class>/<inst>/mmaps/mapNNNN.png     (motion maps)
          flow_x_processed/<user>/<class>/<inst>/flow_x_NNNNN.png       (and flow_y_processed)
          (`processed_frames/` is accepted as well as `processed_frames2/`)
  egornn  frames/<user>/<class>/<inst>/image_NNNNN.jpg
          flow_x/<user>/<class>/<inst>/flow_x_NNNNN.jpg                (and flow_y)
          mmaps/<user>/<class>/<inst>/map_NNNNN.png   (motion maps: not in the original release;
                                                       python -m datasets.prepare writes them)
Either extension (.png/.jpg/.jpeg) is accepted in both layouts.

What `GTEA61(...)[i]` returns (a dict; T = seqLen, S = numSeg, F = frameSize, s = mapSize):
  "rgb"   float32 (T, 3, F, F)   time, channel (R, G, B), height, width; ImageNet-normalised
                                 (modalities rgb, twostream, rgb_mmaps)
  "flow"  float32 (S, 10, F, F)  stack, channel (x1, y1, x2, y2, ..., x5, y5), height, width;
                                 (v/255 - 0.449) / 0.226; S = 1 unless numSeg > 1
                                 (modalities flow, twostream; 10 = 2 * stackSize)
  "mmaps" float32 (T, s, s)      time, height, width; motion map of each RGB frame, through
                                 the same crop and flip; {0, 1} (> 0.4) or raw [0, 1] when
                                 regression=True (modality rgb_mmaps)
  "frame_numbers" int64 (T,)      the frame number each RGB position shows (RGB modalities)
  "label" int, "index" int (position in this dataset)

Videos, users and labels:
  * users are the folders under the layout's top folder (S1..S4); `users` selects videos.
  * class ids come from the sorted union of class-folder names over ALL users found in the
    root (RGB and flow folders together), so a class missing or empty for one user never
    shifts anyone's labels, and every modality and split of one root agrees on the ids.
  * ignored: hidden and OS files (.DS_Store, ._*, Thumbs.db, desktop.ini, __MACOSX) and any
    file whose name is not exactly <prefix><digits>.<ext>, e.g. the `rgb0003(1).png`
    duplicates.
  * videos with fewer than 5 frames (flow: fewer than max(5, stackSize)) are skipped; they
    are counted in `num_skipped` and listed once in a warning printed to stderr.

Frame choice: by file NUMBER, as Ego-RNN's loaders open files (`image_%05d % floor(i)`):
  * N = the number of frame files of the video. RGB frame t is the file whose number is
    floor(i_t), i = linspace(1, N, seqLen, endpoint=False). A release numbered from 1 (the course
    release, datasets.prepare --videos) and one numbered from 0 (Ego-RNN's prepareGTEA61Dataset.py
    and datasets.prepare --gtea61: image_00000 ...) both give the original's frames; image_00000
    is never shown.
  * flow: the numbers present in both flow_x and flow_y, N_f = their count; a stack is the
    files numbered p .. p + stackSize - 1 from a start number p:
      test:     numSeg == 1: p = ceil((N_f - stackSize) / 2) (the original's centre stack);
                numSeg > 1: p = int(linspace(1, N_f - stackSize + 1, numSeg, endpoint=False))
                (the original makeDatasetFlow's evaluation stacks); N_f <= stackSize: p = 1;
      training: a start drawn uniformly over every stack of consecutive files (the original's
                randint(1, N_f - stackSize) never drew the last start); numSeg > 1 draws numSeg
                independent starts, sorted.
  * where a number the rule asks for does not exist (a gap in the numbering, or a numbering
    that starts at neither 0 nor 1; the original would crash), that video falls back to the
    position rule: the k-th frame is the k-th existing file in number order. Such videos are
    counted in one warning. The choice is made once per video when the folder is scanned.
  * RGB always uses the RGB frame count, in every modality. (The original two-stream loader
    used the flow count for the RGB frames too; flow has one frame fewer, so its RGB frames
    differed slightly from the RGB-only model's. Here the RGB stream of the two-stream model
    sees exactly what the RGB model sees.)
  * motion maps: map number = RGB frame number; a missing map number takes the nearest
    existing one (ties: the later one, as the course code searched forward first).
"""
import bisect
import hashlib
import math
import os
import random
import re
import sys

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .cache import FrameCache
from .transforms import (FLOW_MEAN, FLOW_STD, IMAGENET_MEAN, IMAGENET_STD,  # noqa: F401
                         ClipTransform)

MIN_FRAMES = 5
MODALITIES = ("rgb", "flow", "twostream", "rgb_mmaps")

_EXT = r"\.(?:png|jpe?g)$"
_LAYOUTS = {
    "course": {
        "rgb": ("processed_frames2", "processed_frames"),
        "flow_x": ("flow_x_processed",),
        "flow_y": ("flow_y_processed",),
        "rgb_sub": "rgb",
        "rgb_re": re.compile(r"^rgb(\d+)" + _EXT, re.I),
        "mmaps_sub": "mmaps",
        "mmaps_re": re.compile(r"^map(\d+)" + _EXT, re.I),
        "rgb_pattern": "processed_frames2/<user>/<class>/<inst>/rgb/rgbNNNN.png",
        "flow_pattern": "{d}/<user>/<class>/<inst>/flow_{a}_NNNNN.png",
    },
    "egornn": {
        "rgb": ("frames",),
        "flow_x": ("flow_x",),
        "flow_y": ("flow_y",),
        "rgb_sub": None,
        "rgb_re": re.compile(r"^image_(\d+)" + _EXT, re.I),
        "mmaps_sub": None,
        "mmaps_top": "mmaps",  # written by datasets.prepare; not in the original release
        "mmaps_re": re.compile(r"^map_(\d+)" + _EXT, re.I),
        "rgb_pattern": "frames/<user>/<class>/<inst>/image_NNNNN.jpg",
        "flow_pattern": "{d}/<user>/<class>/<inst>/flow_{a}_NNNNN.jpg",
    },
}
_FLOW_RE = {a: re.compile(r"^flow_" + a + r"_(\d+)" + _EXT, re.I) for a in ("x", "y")}
_OS_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx", "$recycle.bin",
             "system volume information"}
_EXPECTED = ("expected processed_frames2/<user>/<class>/<inst>/rgb/rgbNNNN.png (course layout) "
             "or frames/<user>/<class>/<inst>/image_NNNNN.jpg (Ego-RNN layout)")


class DatasetError(Exception):
    """One-line, user-facing error naming the path and what is expected.

    When a DataLoader worker raises it, PyTorch re-raises it in the main process as
    DatasetError("Caught DatasetError in DataLoader worker ...<traceback>..."); the
    constructor reduces such a message back to the original single line."""

    def __init__(self, message=""):
        message = str(message)
        if message.startswith("Caught ") and "\n" in message:
            lines = [ln for ln in message.splitlines() if ln.strip()]
            m = re.match(r"^(?:[\w.]+\.)?DatasetError: (.*)$", lines[-1])
            if m:
                message = m.group(1)
        message = message.replace("\r", " ").replace("\n", " ")
        super().__init__(message)


# ---- file system helpers ----------------------------------------------------------------
def _visible(name):
    return not (name.startswith(".") or name.lower() in _OS_NAMES)


def _natural_key(name):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p]


def _subdirs(path):
    """Visible sub-folder names of `path`, naturally sorted ([] if `path` is not a folder)."""
    try:
        with os.scandir(path) as it:
            names = [e.name for e in it if _visible(e.name) and e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise DatasetError(f"cannot list folder {path}: {e.strerror or e}") from None
    return sorted(names, key=_natural_key)


def _frame_files(path, regex):
    """Sorted [(number, filename)] of the frame files in `path` matching `regex`, or None if
    `path` is not a folder. Duplicates of a number keep the first name in sorted order."""
    try:
        with os.scandir(path) as it:
            names = [e.name for e in it if _visible(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise DatasetError(f"cannot list folder {path}: {e.strerror or e}") from None
    found = {}
    for name in sorted(names):
        m = regex.match(name)
        if m:
            found.setdefault(int(m.group(1)), name)
    return sorted(found.items())


def _top(root, names):
    for n in names:
        p = os.path.join(root, n)
        if os.path.isdir(p):
            return n
    return None


def _describe_root_hint(root):
    """A hint when the layout sits one folder below `root`."""
    for sub in _subdirs(root):
        for layout in _LAYOUTS.values():
            if any(os.path.isdir(os.path.join(root, sub, n)) for n in layout["rgb"] + layout["flow_x"]):
                return f" (did you mean {os.path.join(root, sub)}?)"
    return ""


def detect_layout(root):
    """Return "course" or "egornn" for the dataset folder `root` (raises DatasetError)."""
    root = os.fspath(root)
    if not os.path.exists(root):
        raise DatasetError(f"dataset folder not found: {root} ({_EXPECTED} inside it)")
    if not os.path.isdir(root):
        raise DatasetError(f"dataset root is not a folder: {root} ({_EXPECTED} inside it)")
    for name, layout in _LAYOUTS.items():  # course first: it is the richer one
        if _top(root, layout["rgb"] + layout["flow_x"]):
            return name
    raise DatasetError(f"{root} holds neither GTEA-61 layout: {_EXPECTED}{_describe_root_hint(root)}")


def _load(path, mode):
    """Open an image once, decode it fully and return it in `mode`; DatasetError on failure."""
    try:
        with Image.open(path) as im:
            im.load()
            return im if im.mode == mode else im.convert(mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise DatasetError(f"cannot read image {path}: {reason} (expected a readable PNG/JPEG "
                           "frame; re-extract or delete this file)") from None


def validation_split(keys, labels, fraction):
    """The videos held out for validation (--select val): per class, round(fraction * n) of its
    n training videos, at least one when it has two or more, never all of them. Which ones is
    fixed by a hash of "<user>/<class>/<instance>": every stage, modality and seed holds out the
    same videos, so a val-selected stage 2 never selects on videos its stage 1 trained on."""
    by_class = {}
    for key, label in zip(keys, labels):
        by_class.setdefault(label, []).append(key)
    held = set()
    for members in by_class.values():
        n = len(members)
        count = min(n - 1, max(1 if n >= 2 else 0, round(fraction * n)))
        members = sorted(members, key=lambda k: hashlib.sha1(k.encode()).hexdigest())
        held.update(members[:count])
    return held


def clip_numbers(n, seq_len):
    """The seqLen frame numbers floor(linspace(1, n, seqLen, endpoint=False)) the original opens
    for a video of n frame files (every clip: RGB frames are never drawn at random)."""
    return [int(np.floor(i)) for i in np.linspace(1, n, seq_len, endpoint=False)]


def clip_positions(n, seq_len):
    """0-based positions of the clip's frames in a list of n frames numbered from 1 (the position
    rule). predict.py picks its frames in a decoded video with it."""
    return [k - 1 for k in clip_numbers(n, seq_len)]


def eval_flow_starts(n, stack_size, num_seg):
    """0-based start positions of the test-time flow stacks for n flow frames numbered from 1
    (module docstring): the start numbers minus one."""
    k = stack_size
    if n <= k:
        return [0] * num_seg
    if num_seg == 1:
        return [int(math.ceil((n - k) / 2)) - 1]
    return [int(p) - 1 for p in np.linspace(1, n - k + 1, num_seg, endpoint=False)]


def by_number(numbers, wanted):
    """Indices in the sorted frame numbers `numbers` of the `wanted` numbers, or None when one of
    them is missing."""
    index = {num: i for i, num in enumerate(numbers)}
    try:
        return [index[w] for w in wanted]
    except KeyError:
        return None


def rgb_choice(numbers, seq_len):
    """(indices into the sorted frame numbers of the clip's frames, True when chosen by number,
    False when by position because a number the rule asks for does not exist)."""
    chosen = by_number(numbers, clip_numbers(len(numbers), seq_len))
    return (chosen, True) if chosen is not None else (clip_positions(len(numbers), seq_len), False)


def flow_choice(numbers, stack_size, num_seg):
    """(indices of the test-time stack starts in the sorted flow numbers, by number?), as rgb_choice:
    every number start .. start + stackSize - 1 of every stack must exist to go by number."""
    starts = eval_flow_starts(len(numbers), stack_size, num_seg)
    wanted = [p + 1 + j for p in starts for j in range(min(stack_size, len(numbers)))]
    chosen = by_number(numbers, wanted)
    if chosen is None:
        return starts, False
    return chosen[::min(stack_size, len(numbers))], True


class GTEA61(Dataset):
    """GTEA-61 clips for one modality and a set of users (see the module docstring)."""

    def __init__(self, root, users, modality, train, seqLen=16, stackSize=5, numSeg=1,
                 frameSize=224, mapSize=7, regression=False, cache=None, holdout=None):
        """cache: None, a folder or a datasets.cache.FrameCache: decoded frames are stored
        there and read back in later epochs (byte-identical clips, see datasets/cache.py).
        holdout: None, or (fraction, "train" | "val"): the users' videos without, or only, the
        validation share of `validation_split`."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if isinstance(users, str):
            users = [u for u in re.split(r"[,\s]+", users) if u]
        users = list(users)
        if not users:
            raise ValueError("users must name at least one user, e.g. ['S1', 'S3', 'S4']")
        if seqLen < 1 or stackSize < 1 or numSeg < 1:
            raise ValueError(f"seqLen, stackSize and numSeg must be >= 1, got {seqLen}, {stackSize}, {numSeg}")
        self.root = os.fspath(root)
        self.users = users
        self.modality = modality
        self.train = bool(train)
        self.seqLen = int(seqLen)
        self.stackSize = int(stackSize)
        self.numSeg = int(numSeg)
        self.frameSize = int(frameSize)
        self.mapSize = int(mapSize)
        self.regression = bool(regression)
        self.layout = detect_layout(self.root)
        self.transform = ClipTransform(self.train, self.frameSize, self.mapSize, self.regression)
        if cache is not None and not isinstance(cache, FrameCache):
            cache = FrameCache(cache)
        self.cache = cache

        self._needs_rgb = modality in ("rgb", "twostream", "rgb_mmaps")
        self._needs_flow = modality in ("flow", "twostream")
        self._needs_mmaps = modality == "rgb_mmaps"
        self._by_position = []  # videos missing a frame number the rule asks for (_read_video)
        self._scan()
        if holdout is not None:
            self._keep_part(*holdout)

    # ---- indexing ---------------------------------------------------------------------
    def _scan(self):
        L = _LAYOUTS[self.layout]
        root = self.root
        tops = {k: _top(root, L[k]) for k in ("rgb", "flow_x", "flow_y")}

        # class names and users: union over every user of every top folder present
        classes, found_users = set(), set()
        for top in tops.values():
            if top is None:
                continue
            for u in _subdirs(os.path.join(root, top)):
                found_users.add(u)
                classes.update(_subdirs(os.path.join(root, top, u)))
        self.classes = sorted(classes)
        self.num_classes = len(self.classes)
        class_id = {c: i for i, c in enumerate(self.classes)}

        if self._needs_rgb and tops["rgb"] is None:
            raise DatasetError(f"modality {self.modality} needs RGB frames but {root} has no "
                               f"{L['rgb'][0]}/ folder: expected {L['rgb_pattern']}")
        if self._needs_mmaps and L["mmaps_sub"] is None and not os.path.isdir(os.path.join(root, L["mmaps_top"])):
            raise DatasetError(f"modality rgb_mmaps needs motion maps but {root} is in the Ego-RNN "
                               "layout (frames/...) without them (expected mmaps/<user>/<class>/<inst>/"
                               "map_NNNNN.png, or the course layout's mmaps/mapNNNN.png next to rgb/): make "
                               f"them with python -m datasets.prepare --frames {root} --only mmaps")
        if self._needs_flow:
            for a in ("x", "y"):
                if tops["flow_" + a] is None:
                    d = L["flow_" + a][0]
                    raise DatasetError(f"modality {self.modality} needs optical flow but {root} has no "
                                       f"{d}/ folder: expected " + L["flow_pattern"].format(d=d, a=a))
        primary = tops["rgb"] if self._needs_rgb else tops["flow_x"]
        primary_dir = os.path.join(root, primary)

        missing = [u for u in self.users if not os.path.isdir(os.path.join(primary_dir, u))]
        if missing:
            have = ", ".join(_subdirs(primary_dir)) or "none"
            raise DatasetError(f"no videos for user(s) {', '.join(missing)} in {primary_dir}: no such "
                               f"user folder (users found there: {have})")

        self.video_ids, self.video_keys, self.labels, self.num_frames = [], [], [], []
        self._videos = []  # per video: dict of frame lists and the frames chosen
        skipped = []
        for u in self.users:
            for c in _subdirs(os.path.join(primary_dir, u)):
                for inst in _subdirs(os.path.join(primary_dir, u, c)):
                    rel = os.path.join(u, c, inst)
                    vid = "/".join((primary, u, c, inst))
                    v = self._read_video(L, tops, primary, rel, vid, skipped)
                    if v is None:
                        continue
                    self.video_ids.append(vid)
                    self.video_keys.append(f"{u}/{c}/{inst}")
                    self.labels.append(class_id[c])
                    self.num_frames.append(len(v["rgb"]) if "rgb" in v else len(v["flow"]))
                    self._videos.append(v)
        self._finish_scan(L, primary, primary_dir, skipped)

    def _finish_scan(self, L, primary, primary_dir, skipped):
        """Warn about the videos skipped as too short; a DatasetError when none is left."""
        min_flow = max(MIN_FRAMES, self.stackSize)
        self.num_skipped = len(skipped)
        self.skipped = skipped
        gone = {vid for vid, _ in skipped}
        by_pos = self.by_position = [vid for vid in self._by_position if vid not in gone]
        if by_pos:
            listing = ", ".join(by_pos[:5]) + (f", ... {len(by_pos) - 5} more" if len(by_pos) > 5 else "")
            print(f"warning: {len(by_pos)} video(s) lack a frame number the original's rule asks for (a gap, or "
                  f"numbering from neither 0 nor 1): their frames are chosen by position in the sorted file list "
                  f"instead (the original would fail to open them): {listing}", file=sys.stderr, flush=True)
        if skipped:
            need = f"{MIN_FRAMES}" if min_flow == MIN_FRAMES or not self._needs_flow \
                else f"{MIN_FRAMES} (flow: {min_flow})"
            listing = ", ".join(f"{vid} ({n})" for vid, n in skipped[:10])
            more = f", ... {len(skipped) - 10} more" if len(skipped) > 10 else ""
            print(f"warning: skipped {len(skipped)} video(s) with fewer than {need} frames "
                  f"(users {', '.join(self.users)}, modality {self.modality}): {listing}{more}",
                  file=sys.stderr, flush=True)
        if not self._videos:
            extra = f" ({len(skipped)} skipped with too few frames)" if skipped else ""
            pattern = L["rgb_pattern"] if self._needs_rgb else L["flow_pattern"].format(d=primary, a="x")
            raise DatasetError(f"no videos for user(s) {', '.join(self.users)} in {primary_dir}{extra}: "
                               f"expected {pattern}")

    def _read_video(self, L, tops, primary, rel, vid, skipped):
        """The frame lists of one video folder `rel` (relative to the layout's top folders),
        or None when it has too few frames (then added to `skipped`)."""
        root = self.root
        min_flow = max(MIN_FRAMES, self.stackSize)
        v = {}
        if self._needs_rgb:
            d = os.path.join(root, primary, rel)
            if L["rgb_sub"]:
                d = os.path.join(d, L["rgb_sub"])
            files = _frame_files(d, L["rgb_re"]) or []
            if len(files) < MIN_FRAMES:
                skipped.append((vid, len(files)))
                return None
            v["rgb_dir"], v["rgb"] = d, files
            v["rgb_pick"], ok = rgb_choice([num for num, _ in files], self.seqLen)
            if not ok:
                self._by_position.append(vid)
        if self._needs_flow:
            flow = self._flow_files(tops, rel, vid)
            if len(flow) < min_flow:
                skipped.append((vid, len(flow)))
                return None
            v["flow"] = flow
            v["flow_eval"], ok = flow_choice([num for num, _, _ in flow], self.stackSize, self.numSeg)
            if not ok and (not self._by_position or self._by_position[-1] != vid):
                self._by_position.append(vid)
        if self._needs_mmaps:
            d = (os.path.join(root, primary, rel, L["mmaps_sub"]) if L["mmaps_sub"]
                 else os.path.join(root, L["mmaps_top"], rel))
            files = _frame_files(d, L["mmaps_re"])
            if not files:
                raise DatasetError(
                    f"motion maps missing for video {vid}: {d} "
                    f"{'has no motion-map files' if files is not None else 'does not exist'} "
                    "(modality rgb_mmaps expects mmaps/mapNNNN.png next to rgb/, or in the "
                    "Ego-RNN layout mmaps/<user>/<class>/<inst>/map_NNNNN.png)")
            v["mmaps_dir"] = d
            v["mmaps_nums"] = [n for n, _ in files]
            v["mmaps_names"] = [name for _, name in files]
        return v

    def _keep_part(self, fraction, part):
        if part not in ("train", "val"):
            raise ValueError(f"holdout part must be 'train' or 'val', got {part!r}")
        held = validation_split(self.video_keys, self.labels, fraction)
        keep = [i for i, k in enumerate(self.video_keys) if (k in held) == (part == "val")]
        if not keep:
            raise DatasetError(f"no {'validation' if part == 'val' else 'training'} videos left for user(s) "
                               f"{', '.join(self.users)} with --valFraction {fraction}: every class has a "
                               f"single video; use --select test or more training users")
        for name in ("video_ids", "video_keys", "labels", "num_frames", "_videos"):
            setattr(self, name, [getattr(self, name)[i] for i in keep])

    def _flow_files(self, tops, rel, vid):
        """[(number, x_path, y_path)] of the flow frames present in both flow_x and flow_y."""
        per_axis = {}
        for a in ("x", "y"):
            d = os.path.join(self.root, tops["flow_" + a], rel)
            files = _frame_files(d, _FLOW_RE[a])
            if files is None:
                raise DatasetError(f"optical flow missing for video {vid}: no folder {d} "
                                   f"(expected flow_{a}_NNNNN images there)")
            per_axis[a] = (d, dict(files))
        (dx, fx), (dy, fy) = per_axis["x"], per_axis["y"]
        nums = sorted(set(fx) & set(fy))
        return [(n, os.path.join(dx, fx[n]), os.path.join(dy, fy[n])) for n in nums]

    # ---- sampling -----------------------------------------------------------------------
    def rgb_chosen(self, index):
        """[(frame number, file name)] of the clip's seqLen RGB frames of video `index`."""
        v = self._videos[index]
        return [v["rgb"][p] for p in v["rgb_pick"]]

    def flow_starts(self, n, v=None):
        """0-based start positions (in the flow list) of the stacks of a video with n flow frames:
        drawn in training, else the test starts chosen at scan time for video dict `v`."""
        k = self.stackSize
        if self.train and n > k:
            return sorted(random.randint(0, n - k) for _ in range(self.numSeg))
        return v["flow_eval"] if v is not None else eval_flow_starts(n, k, self.numSeg)

    def __len__(self):
        return len(self._videos)

    def __getitem__(self, index):
        return self.get(index)

    def get(self, index, normalize=True, source=False):
        """dataset[index]; with normalize=False the "rgb" / "flow" clips stay uint8 and
        datasets.transforms.normalize_inputs finishes them (on the GPU: utils/train.to_device).
        source=True (implies normalize=False): instead of "rgb", the decoded frames "rgb_src"
        (T, H, W, 3) uint8 with their geometry "rgb_spec", transformed on the GPU
        by datasets.transforms.clips_on_device; the motion maps are made here as always."""
        if index < 0:
            index += len(self)
        v = self._videos[index]
        params = self.transform.draw()
        out = {}
        if self._needs_rgb:
            chosen = self.rgb_chosen(index)
            cache = {}
            imgs = []
            for _, name in chosen:
                if name not in cache:
                    cache[name] = self._image(os.path.join(v["rgb_dir"], name), "RGB")
                imgs.append(cache[name])
            if source:
                arrays = [np.asarray(im) for im in imgs]
                h, w = arrays[0].shape[:2]
                if any(a.shape[:2] != (h, w) for a in arrays):
                    raise DatasetError(f"{v['rgb_dir']}: frames of different sizes ({w}x{h} and others); "
                                       f"resize them to one size")
                out["rgb_src"] = torch.from_numpy(np.stack(arrays))
                out["rgb_spec"] = torch.tensor(self.transform.spec(w, h, params))
            else:
                out["rgb"] = self.transform.rgb(imgs, params, normalize)
            if self._needs_mmaps:
                out["mmaps"] = self._mmaps(v, [num for num, _ in chosen], params)
            # which video frame each position shows: a short video repeats frames in a clip
            out["frame_numbers"] = torch.tensor([num for num, _ in chosen])
        if self._needs_flow:
            flow = v["flow"]
            stacks = []
            cache = {}
            for start in self.flow_starts(len(flow), v):
                xs, ys = [], []
                for p in range(start, min(start + self.stackSize, len(flow))):
                    _, px, py = flow[p]
                    if px not in cache:
                        cache[px] = self._image(px, "L")
                        cache[py] = self._image(py, "L")
                    xs.append(cache[px])
                    ys.append(cache[py])
                stacks.append(self.transform.flow(xs, ys, params, normalize and not source))
            out["flow"] = torch.stack(stacks, 0)
        out["label"] = self.labels[index]
        out["index"] = index
        return out

    def _image(self, path, mode):
        """The decoded image, through the frame cache when there is one."""
        if self.cache is None:
            return _load(path, mode)
        return Image.fromarray(self.cache.array(path, mode, lambda: _load(path, mode)))

    def _mmaps(self, v, frame_numbers, params, image=None):
        """image: what reads a map (path, mode) -> PIL image; default self._image."""
        image = image or self._image
        nums, names = v["mmaps_nums"], v["mmaps_names"]
        cache = {}
        maps = []
        for f in frame_numbers:
            j = bisect.bisect_left(nums, f)
            if j == len(nums) or (nums[j] != f and j > 0 and f - nums[j - 1] < nums[j] - f):
                j -= 1  # the earlier one is strictly nearer (ties go to the later one)
            name = names[j]
            if name not in cache:
                cache[name] = image(os.path.join(v["mmaps_dir"], name), "L")
            maps.append(cache[name])
        return self.transform.mmaps(maps, params)

    def __repr__(self):
        return (f"GTEA61(root={self.root!r}, layout={self.layout}, users={self.users}, "
                f"modality={self.modality}, train={self.train}, videos={len(self)}, "
                f"classes={self.num_classes}, skipped={self.num_skipped})")
