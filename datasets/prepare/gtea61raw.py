"""The raw GTEA-61 release (videos and label files) cut into action instances, as Ego-RNN's
prepareGTEA61Dataset.py cuts it; `python -m datasets.prepare --gtea61 RAW --outDir DATASET` then
writes each instance's frames, warp flow and motion maps (datasets/prepare/prepare.py).

RAW holds, anywhere below it (e.g. labels/ and videos/ or png/):
  * one label file per recording, `S1_Cheese_C1.txt`: user = the first two characters of its name;
  * for each label file, a video of the same stem (any container PyAV reads: S1_Cheese_C1.mp4) or
    a folder of its frames (S1_Cheese_C1/0000000001.png ..., each named by its frame number).
Rules, the original's:
  * a label line containing `><` is an instance: action = the text of the first <...> + "_" + the
    text of the second (`<pour><honey,bread> (120-180) ...` gives pour_honey,bread), frames
    (start-end) inclusive; frame f is the file whose name holds the number f in a frame folder
    (the original copies `str(f).zfill(5) + '.jpg'`; a folder whose numbers are not its positions
    1, 2, ... is named in a warning), the f-th decoded frame counting from 1 in a video; other
    lines are ignored (counted in the summary);
  * instances are numbered per user and action from 1, in label-file name order then line order:
    <user>/<action>/<k>;
  * `stir_cup` is renamed `stir_spoon,cup`, and the put_tea instances of S1 and S2 are dropped
    (the original script deletes S1/put_tea and S2/put_tea at its end; their numbers stay used);
  * the frames of the range that exist are kept: a range past the recording's end (or over a gap
    in a folder's numbers) is cut there, as the original's copy of a missing file fails and goes on;
    the cut instances are listed in one warning, and one left with fewer than MIN_FRAMES frames
    is an error;
  * a malformed range or a label file without a recording is a one-line error naming the file and
    line; the other instances go on.
Each instance is written numbered from 0, as the original's copies (image_00000 = the label's
start frame): the loaders pick file floor(i), i = linspace(1, N, T, endpoint=False), so the
frames shown are the original pipeline's, start + floor(i) (datasets/prepare/prepare.py).
"""
import os
import re
import sys
from collections import Counter

from datasets.prepare.video import VIDEO_EXTS, natural_key

LABEL_EXT = ".txt"
FRAME_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
RENAMED = {"stir_cup": "stir_spoon,cup"}
DROPPED = {("S1", "put_tea"), ("S2", "put_tea")}
_RANGE = re.compile(r"\(\s*(\d+)\s*-\s*(\d+)\s*\)")
_NUMBER = re.compile(r"(\d+)\D*$")  # a frame file's number: the last digits of its name
MIN_FRAMES = 5  # the loaders skip shorter videos (datasets/gtea61.py)


class Instance:
    """One labelled action: where its frames come from and where it goes."""

    def __init__(self, rel, source, start, end, where):
        self.rel = rel          # "<user>/<action>/<k>"
        self.source = source    # video file, or a folder of frames
        self.start, self.end = start, end  # 1-based, inclusive
        self.where = where      # "<label file> line <n>", for messages
        self.frames = None      # a frame folder's: the files of start..end that exist, in number order
        self.last = None        # the recording's last frame number when the range runs past it

    def clipped(self):
        """What the warning says of an instance cut short."""
        return f"{self.rel} ({self.where}: frames {self.start}-{self.end}, the recording ends at {self.last})"


def parse_line(line):
    """(action, start, end) of a label line; None when it is not an instance (no `><`); ValueError
    naming what is wrong when it is one with an unreadable action or range."""
    if "><" not in line:
        return None
    # the original's reading: the first two <...> fields, whatever follows them
    b1 = line.find("<")
    e1 = line.find(">", b1)
    b2 = line.find("<", e1)
    e2 = line.find(">", b2)
    if min(b1, e1, b2, e2) < 0:
        raise ValueError("expected <verb><noun(s)> (start-end)")
    action = RENAMED.get(line[b1 + 1:e1] + "_" + line[b2 + 1:e2], line[b1 + 1:e1] + "_" + line[b2 + 1:e2])
    m = _RANGE.search(line, e2)
    if not m:
        raise ValueError("no frame range (start-end) after the action")
    start, end = int(m.group(1)), int(m.group(2))
    if start < 1 or end < start:
        raise ValueError(f"frame range ({start}-{end}) is not 1 <= start <= end")
    return action, start, end


def frame_files(folder):
    """The image files of a frame folder, in the order of their numbers."""
    names = [n for n in os.listdir(folder) if not n.startswith(".")
             and os.path.splitext(n)[1].lower() in FRAME_EXTS]
    return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


def numbered_frames(folder):
    """{frame number: path} of a frame folder: the number is the last digits of the file's name
    (0000000057.png is frame 57); files without digits are not frames; a number given twice
    keeps the first file in name order."""
    out = {}
    for path in frame_files(folder):
        m = _NUMBER.search(os.path.splitext(os.path.basename(path))[0])
        if m:
            out.setdefault(int(m.group(1)), path)
    return out


def _numbering(stem, numbers):
    """A warning's words for a folder whose numbers are not its positions 1, 2, ..., or None."""
    if numbers == list(range(1, len(numbers) + 1)):
        return None
    missing = numbers[-1] - numbers[0] + 1 - len(numbers) if numbers else 0
    return (f"{stem} (files numbered {numbers[0]}..{numbers[-1]}" + (f", {missing} number(s) missing" if missing else "")
            + ")") if numbers else f"{stem} (no numbered files)"


def scan(root):
    """([Instance], errors, summary) of a raw release: errors are one-line messages (the instances
    they concern are left out), summary a dict of counts for the report."""
    labels, recordings = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            recordings.setdefault(d, os.path.join(dirpath, d))  # a folder of frames, perhaps
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            path = os.path.join(dirpath, name)
            if name.startswith("."):
                continue
            if ext.lower() in VIDEO_EXTS:
                recordings[stem] = path  # a video wins over a folder of the same name
            elif ext.lower() == LABEL_EXT and _is_label_file(path):
                if name in labels:
                    raise ValueError(f"two label files named {name}: {labels[name]} and {path} (keep one)")
                labels[name] = path
    instances, errors = [], []
    count = Counter()  # (user, action) -> instances numbered so far
    ignored = dropped = 0
    for name in sorted(labels):  # the original's order: label file names, then lines
        path, stem, user = labels[name], name[:-len(LABEL_EXT)], name[:2]
        source = recordings.get(stem)
        if source is not None and os.path.isdir(source) and not frame_files(source):
            source = None
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        found = False
        for n, line in enumerate(lines, 1):
            try:
                parsed = parse_line(line)
            except ValueError as e:
                errors.append(f"{path} line {n}: {e}: {line.strip()!r}")
                continue
            if parsed is None:
                ignored += line.strip() != ""
                continue
            action, start, end = parsed
            count[user, action] += 1
            if source is None:
                if not found:
                    errors.append(f"{path} line {n}: no video or frame folder named {stem} under {root} "
                                  f"(expected {stem}.mp4 or {stem}/ with its frames): its instances are skipped")
                found = True
                continue
            if (user, action) in DROPPED:
                dropped += 1
                continue
            instances.append(Instance(f"{user}/{action}/{count[user, action]}", source, start, end,
                                      f"{path} line {n}"))
    if not labels:
        raise ValueError(f"no label files under {root} (expected S1_Cheese_C1.txt ... with lines "
                         "such as '<take><bread> (12-40)')")
    # a frame folder's frames are known now: each instance takes the files its range names
    kept, folders, renumbered = [], {}, []
    for inst in instances:
        if os.path.isdir(inst.source):
            if inst.source not in folders:
                folders[inst.source] = numbered_frames(inst.source)
                note = _numbering(os.path.basename(inst.source), sorted(folders[inst.source]))
                if note:
                    renumbered.append(note)
            numbers = folders[inst.source]
            inst.frames = [numbers[f] for f in range(inst.start, inst.end + 1) if f in numbers]
            if len(inst.frames) < inst.end - inst.start + 1:
                last = max(numbers, default=0)
                inst.last = last if inst.end > last else None
                if len(inst.frames) < MIN_FRAMES:
                    errors.append(f"{inst.where}: frames ({inst.start}-{inst.end}) but {inst.source} holds "
                                  f"{len(inst.frames)} of them (an instance needs {MIN_FRAMES})")
                    continue
        kept.append(inst)
    summary = {"label_files": len(labels), "instances": len(kept), "ignored_lines": ignored,
               "dropped_put_tea": dropped, "classes": Counter(i.rel.split("/")[1] for i in kept),
               "users": sorted({i.rel.split("/")[0] for i in kept}), "renumbered": renumbered}
    return kept, errors, summary


def _is_label_file(path):
    """A .txt file with at least one `><` line (notes or lists lying next to the labels are not)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return any("><" in line for line in f)
    except OSError:
        return False


def print_summary(summary, errors, file=None):
    """The classes and instance counts found, and the lines ignored."""
    file = file or sys.stderr
    classes = summary["classes"]
    print(f"GTEA-61 labels: {summary['label_files']} label file(s), {summary['instances']} instance(s) of "
          f"{len(classes)} class(es), users {' '.join(summary['users'])}; {summary['ignored_lines']} line(s) "
          f"without '><' ignored; {summary['dropped_put_tea']} put_tea instance(s) of S1/S2 dropped "
          f"(as the original); {len(errors)} error(s)", file=file)
    print("classes: " + ", ".join(f"{c} {k}" for c, k in sorted(classes.items())), file=file, flush=True)
    if summary["renumbered"]:
        print(f"warning: {len(summary['renumbered'])} frame folder(s) numbered otherwise than 1, 2, ... by "
              f"position: {', '.join(summary['renumbered'])}; frame f of the labels is the file numbered f, "
              "as the original's script copies it", file=file, flush=True)


def print_clipped(clipped, file=None):
    """One warning listing the instances whose range ran past their recording's end."""
    file = file or sys.stderr
    if clipped:
        print(f"warning: {len(clipped)} instance(s) labelled past the end of their recording keep the frames "
              f"that exist, as the original's copy does: {'; '.join(clipped)}", file=file, flush=True)
