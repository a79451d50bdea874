"""Prepare a dataset from raw videos (or complete one that has frames): RGB frames,
camera-compensated warp flow and motion maps, in either layout the loaders read.

    python -m datasets.prepare --videos DIR --outDir DATASET [--layout course|egornn]
        [--flow tvl1|farneback|raft] [--noWarp] [--flowScale output|source] [--maps idt|flow]
        [--fps N] [--shortSide 256] [--numWorkers N]
        [--only frames|flow|mmaps ...] [--overwrite] [--skipBad] [--raftWeights PATH]
    python -m datasets.prepare --frames DATASET [--outDir DIR] [--only flow|mmaps ...] ...
    python -m datasets.prepare --egtea RELEASE --outDir DATASET ...   (EGTEA Gaze+, datasets/egtea.py)
    python -m datasets.prepare --gtea61 RAW --outDir DATASET ...      (raw GTEA-61, datasets/prepare/gtea61raw.py)
    python -m datasets.prepare --list FILE --outDir DATASET ...       (any list of video files)

Inputs:
  --videos DIR   DIR/<user>/<class>/<instance>.<ext> (mp4, avi, mov, mkv, webm; any names,
                 commas allowed as in `stir_spoon,cup`), decoded with PyAV (datasets/prepare/video.py:
                 every frame once, presentation order, rotation applied, optional --fps and
                 --shortSide);
  --egtea DIR    an EGTEA Gaze+ release: cropped_clips/<session>/<clip>.mp4 with action_idx.txt,
                 verb_idx.txt, noun_idx.txt and train/test_split1..3.txt. Every clip a split file
                 lists is prepared as the video <session>/<clip>; the index and split files are
                 copied to DATASET, which --dataset egtea reads. A listed clip missing from
                 cropped_clips is a warning with the count; a clip on disk that no split lists
                 is not prepared (said once); a split line naming an action absent from
                 action_idx.txt is a one-line error before anything is written;
  --gtea61 RAW   the raw GTEA-61 release: label files (S1_Cheese_C1.txt) and, for each, a video or
                 a folder of frames of the same stem; every labelled instance is prepared as the
                 video <user>/<action>/<k>, cut as Ego-RNN's prepareGTEA61Dataset.py cuts it (rules
                 in datasets/prepare/gtea61raw.py; the classes and instance counts are printed first). A bad
                 label line or a missing recording is a one-line error and the others go on;
  --list FILE    one video file a line (relative to FILE's folder or absolute; further columns,
                 such as labels, are ignored), prepared as the video <parent folder>/<file stem>;
                 index and split files next to FILE (EGTEA's names) are copied to DATASET;
  --frames DIR   a dataset root in either layout: writes what a video lacks there (motion maps
                 in the Ego-RNN layout, flow where missing), computed from its frames as they
                 are (no resizing). With --outDir elsewhere the frames are copied there too.

What is written per video (N frames), numbered as the loaders read them (datasets/gtea61.py):
  course   processed_frames2/<u>/<c>/<i>/rgb/rgb0001.png .. N
           processed_frames2/<u>/<c>/<i>/mmaps/map0001.png .. N
           flow_x_processed/<u>/<c>/<i>/flow_x_00001.png .. N-1   (and flow_y_processed)
  egornn   frames/<u>/<c>/<i>/image_00001.jpg .. N
           mmaps/<u>/<c>/<i>/map_00001.png .. N
           flow_x/<u>/<c>/<i>/flow_x_00001.jpg .. N-1             (and flow_y)
--gtea61 numbers RGB frames and motion maps from 0 instead (rgb0000.png, image_00000.jpg: the
label's start frame), as Ego-RNN's prepareGTEA61Dataset.py numbers its copies, so that the loaders'
floor(linspace(1, N, T, endpoint=False)) picks the labelled frames start + floor(i) as the original
pipeline does; flow stays numbered from 1. Flow k goes from the k-th frame written to the
(k+1)-th, so there is one flow image fewer than RGB frames: a video's last frame has no next one
to compute flow towards. Motion map k belongs to frame k: by default (--maps idt) the points of
Improved Dense Trajectories tracked through the compensated flow that lie on it, the paper's MS
targets (datasets/prepare/trajectories.py); with --maps flow the moving regions of the
compensated flow towards frame k+1 and back towards frame k-1 (datasets/prepare/warpflow.py; the
first frame's from the forward flow only, the last frame's from the backward flow only).
Flow values are in pixels of the written frames (--flowScale output) or, as dense_flow wrote
them, of the source video (--flowScale source: x source / written short side).

Disk space: before writing, the output of the videos to do is estimated from their frame counts
and output sizes at the bytes per pixel in BYTES_PER_PIXEL (docs/egtea.md, "Disk space"); a run whose
estimate exceeds the free space of DATASET's disk stops there with a one-line error
(--noSpaceCheck skips the check).

Resilience:
  * every part of a video (rgb, mmaps, flow_x, flow_y folders) is written into
    DATASET/.prepare/tmp/ and renamed into place when complete (flow_y, flow_x, mmaps, then rgb:
    once a video's rgb folder is there, so is everything else), then a completion marker
    DATASET/.prepare/done/<part>/<u>/<c>/<i>.json records the settings (method, warp,
    flowScale, maps kind, VERSION, source, fps, shortSide) and what the run found (source and
    output frame sizes, refused homographies); `preparation` (datasets/markers.py) summarises
    them for the checkpoints (utils/experiment.py). A rerun skips the videos whose markers match,
    and redoes a video interrupted between its renames (a journal lists what it had started to
    place). Markers from other settings stop the run unless --overwrite. One run at a time per
    DATASET (a lock file).
  * a video that cannot be read is named in a one-line error and skipped; the others go on,
    and the run ends listing them with exit status 1 (0 with --skipBad).
"""
import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import queue
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, wait, FIRST_COMPLETED

import numpy as np

from datasets.markers import STATE, SYNTHETIC_MARKER, read_json
from datasets.prepare import gtea61raw, warpflow
from datasets.prepare.gtea61raw import frame_files
from datasets.prepare.video import (VIDEO_EXTS, VideoError, estimated_frames, output_size, probe,
                                    read_frames, resized)
from datasets.prepare.warpflow import RaftWeightsError, find_raft_weights
from utils.cli import Parser, show_progress
from utils.errors import UserError

PARTS = ("frames", "flow", "mmaps")
# Version of what is written: 2 = dense_flow's 8-bit mapping, warp border and homography rule,
# --flowScale, motion-map threshold relative to the frame size (1: before). In every marker.
VERSION = 2
FOUND = ("sourceSize", "outputSize", "refused", "clippedAt")  # marker entries the run found (not settings)
FLOW_SCALES = warpflow.FLOW_SCALES
DEFAULT_FLOW_SCALE = "output"  # docs/data.md, "Flow scale": fewer clipped values at hand speeds
DEFAULT_MAPS = "idt"  # the paper's MS targets (§2, §3); docs/data.md, "Motion maps": flow maps measured against them
# per layout and folder kind: (folder pattern relative to the root, file name pattern)
LAYOUTS = {
    "course": {"rgb": ("processed_frames2/{rel}/rgb", "rgb{:04d}.png"),
               "mmaps": ("processed_frames2/{rel}/mmaps", "map{:04d}.png"),
               "flow_x": ("flow_x_processed/{rel}", "flow_x_{:05d}.png"),
               "flow_y": ("flow_y_processed/{rel}", "flow_y_{:05d}.png")},
    "egornn": {"rgb": ("frames/{rel}", "image_{:05d}.jpg"),
               "mmaps": ("mmaps/{rel}", "map_{:05d}.png"),
               "flow_x": ("flow_x/{rel}", "flow_x_{:05d}.jpg"),
               "flow_y": ("flow_y/{rel}", "flow_y_{:05d}.jpg")},
}
KINDS = {"frames": ("rgb",), "flow": ("flow_y", "flow_x"), "mmaps": ("mmaps",)}
PLACE_ORDER = ("flow_y", "flow_x", "mmaps", "rgb")  # rgb last: the loaders start from it
JPEG_QUALITY = 95
# Bytes per output pixel and frame, all parts together (RGB + flow x, y + motion map), for the
# disk-space check. RGB at what a photograph costs (matplotlib's grace_hopper.jpg at short side
# 256: PNG level 1 1.82 B/px, JPEG 95 0.50 B/px); the synthetic videos' flat colours cost a
# fifth to a half of these (docs/egtea.md, "Disk space"), camera video more.
BYTES_PER_PIXEL = {"course": 2.0 + 2 * 0.5 + 0.05, "egornn": 0.5 + 2 * 0.15 + 0.05}
FILE_SLACK = 2048  # bytes per file beyond its size: half of a 4 KB file-system block on average
_OS_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx"}


def _visible(name):
    return not (name.startswith(".") or name.lower() in _OS_NAMES)


def _listdir(path):
    return sorted(n for n in os.listdir(path) if _visible(n))


def folder(root, layout, kind, rel):
    return os.path.join(root, LAYOUTS[layout][kind][0].format(rel=rel))


def filename(layout, kind, number):
    return LAYOUTS[layout][kind][1].format(number)


# ---- image files ----------------------------------------------------------------------------
def _cv2():
    import cv2
    return cv2


def write_image(path, arr):
    """RGB (H, W, 3) or grey (H, W) uint8 as PNG (fast compression) or JPEG (quality 95)."""
    cv2 = _cv2()
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if path.endswith(".png"):
        ok = cv2.imwrite(path, arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        ok = cv2.imwrite(path, arr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f"cannot write {path}")


def read_rgb(path):
    from PIL import Image
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:
        raise VideoError(f"cannot read frame {path}: {e} (re-extract or delete it)") from None


# ---- one video ------------------------------------------------------------------------------
class Job:
    """One video: where it comes from, what to write and with which settings."""

    def __init__(self, rel, source, parts, settings, estimate, frame_numbers=None, span=None):
        self.rel = rel                      # "<user>/<class>/<inst>"
        self.source = source                # video file (or --gtea61: a folder of frames), or a list of frame files
        self.span = span                    # --gtea61: the datasets.prepare.gtea61raw.Instance cut from the source
        self.parts = tuple(parts)           # subset of PARTS to write
        self.settings = settings            # {part: dict} recorded in the markers
        self.estimate = estimate            # frames, for the progress bar
        self.frame_numbers = frame_numbers  # --frames: the frames' own numbers


def _frames_of(job, opts, sizes, stats):
    """The video's frames scaled to --shortSide (sizes: datasets.prepare.video.resized)."""
    if job.span is not None:
        frames = _span_frames(job.span, stats)
    elif isinstance(job.source, str):
        frames = read_frames(job.source, opts["fps"])
    else:
        frames = (read_rgb(p) for p in job.source)
    return resized(frames, opts["shortSide"], sizes)


def _span_frames(inst, stats):
    """Frames start..end (1-based, inclusive) of a --gtea61 recording: a frame folder's files of
    those numbers (found when the labels were read), a video's decoded frames, decoded up to the
    end only. A video that ends first keeps the frames it has (stats["clippedAt"]: its last frame),
    as the original's copy of the files that exist, unless they are fewer than MIN_FRAMES."""
    if inst.frames is not None:
        for path in inst.frames:
            yield read_rgb(path)
        return
    n = 0
    for n, rgb in enumerate(read_frames(inst.source, None), 1):
        if n >= inst.start:
            yield rgb
        if n == inst.end:
            return
    if n - inst.start + 1 < gtea61raw.MIN_FRAMES:
        raise VideoError(f"{inst.where}: frames ({inst.start}-{inst.end}) but {inst.source} has {n} frames "
                         f"(an instance needs {gtea61raw.MIN_FRAMES})")
    stats["clippedAt"] = n


def _run_job(job, opts, progress):
    """Write one video's parts into a fresh staging folder; returns (staging, frame count,
    what the marker adds to the settings: sizes and the frame pairs whose homography was
    refused)."""
    cv2 = _cv2()
    cv2.setNumThreads(1)  # one process per core instead (--numWorkers)
    layout = opts["layout"]
    staging = _staging(opts["out"], job.rel)
    shutil.rmtree(staging, ignore_errors=True)
    kinds = [k for p in job.parts for k in KINDS[p]]
    for k in kinds:
        os.makedirs(os.path.join(staging, k))

    def put(kind, number, arr):
        write_image(os.path.join(staging, kind, filename(layout, kind, number)), arr)

    want_flow, want_maps = "flow" in job.parts, "mmaps" in job.parts
    sizes, stats = {}, {"refused": 0}
    frames = _frames_of(job, opts, sizes, stats)
    if want_flow or want_maps:
        frames = warpflow.flows_and_maps(frames, opts["_method"], opts["warp"], want_flow, want_maps, stats,
                                         kind=opts["maps"])
    else:
        frames = ((k, rgb, None, None) for k, rgb in enumerate(frames))
    numbers = job.frame_numbers
    # --gtea61: numbered from 0 as the original's copies, so that the loaders' floor(linspace(1, N, T))
    # picks the labelled frames the original pipeline shows
    first = 0 if job.span is not None else 1
    n = pending = 0
    for k, rgb, flow, mmap in frames:
        n += 1
        num = numbers[k] if numbers else k + first
        if "frames" in job.parts:
            if isinstance(job.source, str):
                put("rgb", num, rgb)
            else:  # --frames with another --outDir: the frame files are copied as they are
                src = job.source[k]
                shutil.copyfile(src, os.path.join(staging, "rgb", os.path.basename(src)))
        if flow is not None:
            x, y = warpflow.encode_flow(flow * warpflow.flow_factor(opts["flowScale"], sizes))
            put("flow_x", k + 1, x)
            put("flow_y", k + 1, y)
        if mmap is not None:
            put("mmaps", num, mmap)
        pending += 1
        if progress is not None and pending >= 4:
            progress(pending)
            pending = 0
    if progress is not None and pending:
        progress(pending)
    return staging, n, dict(sizes, **{k: stats[k] for k in FOUND if k in stats})


def _place(job, opts, staging, found):
    """Move the staged folders into the dataset, then write the completion markers: the
    settings, and what the run found (`found`: sizes, refused homographies)."""
    out, layout = opts["out"], opts["layout"]
    kinds = [k for k in PLACE_ORDER if any(k in KINDS[p] for p in job.parts)]
    targets = [folder(out, layout, k, job.rel) for k in kinds]
    journal = _state(out, "journal", job.rel)
    _write_json(journal, {"targets": [os.path.relpath(t, out) for t in targets]})
    for kind, target in zip(kinds, targets):
        _remove(target, out)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(os.path.join(staging, kind), target)
    for p in job.parts:
        _write_json(_state(out, "done/" + p, job.rel), dict(job.settings[p], **found))
    os.remove(journal)
    shutil.rmtree(staging, ignore_errors=True)


def _remove(path, out):
    """Delete a folder being replaced: moved aside first, so the name is free at once."""
    if os.path.lexists(path):
        trash = os.path.join(out, STATE, "trash", f"{os.getpid()}-{time.monotonic_ns()}")
        os.makedirs(os.path.dirname(trash), exist_ok=True)
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _staging(out, rel):
    return os.path.join(out, STATE, "tmp", hashlib.sha1(rel.encode()).hexdigest()[:16])


def _state(out, kind, rel):
    return os.path.join(out, STATE, kind, rel + ".json")


def _write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def process(job, opts, progress=None):
    """Prepare one video; returns (job.rel, frames, error message or None, what the run found:
    sizes, the frame pairs whose homography was refused, a --gtea61 video's last frame when the
    labelled range ran past it)."""
    try:
        staging, n, found = _run_job(job, opts, progress)
    except OSError:
        raise  # a full or read-only disk stops the run (main() says so in one line)
    except Exception as e:  # noqa: BLE001 - one strange video must not stop a long run
        shutil.rmtree(_staging(opts["out"], job.rel), ignore_errors=True)
        if isinstance(e, VideoError):
            return job.rel, 0, str(e), {}
        msg = str(e).strip().splitlines()[-1][:200] if str(e).strip() else ""
        return job.rel, 0, f"{job.source if isinstance(job.source, str) else job.rel}: {type(e).__name__}: {msg}", {}
    _place(job, opts, staging, found)
    return job.rel, n, None, found


# ---- worker processes -----------------------------------------------------------------------
_WORKER = {}


def _init_worker(opts, q):
    opts = dict(opts)
    if opts["_needs_method"]:
        opts["_method"] = warpflow.flow_method(opts["flow"], opts["raftWeights"])
    _WORKER.update(opts=opts, q=q)


def _worker(job):
    q = _WORKER["q"]
    return process(job, _WORKER["opts"], lambda k: q.put(k))


# ---- planning -------------------------------------------------------------------------------
def _scan_videos(root):
    """[(rel, path)] of DIR/<user>/<class>/<inst>.<ext>; UserError on duplicates."""
    if not os.path.isdir(root):
        raise UserError(f"--videos {root}: no such folder (expected <user>/<class>/<instance>.mp4 inside)")
    found, misplaced = {}, []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        depth = len(os.path.relpath(dirpath, root).split(os.sep)) if dirpath != root else 0
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if not _visible(name) or ext.lower() not in VIDEO_EXTS:
                continue
            path = os.path.join(dirpath, name)
            if depth != 2:
                misplaced.append(os.path.relpath(path, root))
                continue
            rel = "/".join(os.path.relpath(dirpath, root).split(os.sep) + [stem])
            if rel in found:
                raise UserError(f"two videos for {rel}: {found[rel]} and {path} (keep one)")
            found[rel] = path
    if misplaced:
        print(f"warning: ignored {len(misplaced)} video(s) not at <user>/<class>/<instance>.<ext>: "
              + ", ".join(misplaced[:5]) + (" ..." if len(misplaced) > 5 else ""), file=sys.stderr)
    if not found:
        raise UserError(f"--videos {root}: no videos at <user>/<class>/<instance>.<ext> "
                        f"({', '.join(VIDEO_EXTS)})")
    return sorted(found.items())


def _video_file(folder_, stem):
    for ext in VIDEO_EXTS:
        path = os.path.join(folder_, stem + ext)
        if os.path.isfile(path):
            return path
    return None


def _scan_egtea(root):
    """([(rel, path)], release files to copy) of an EGTEA-style release (datasets/egtea.py)."""
    from datasets.egtea import CLIPS, Release, release_files, session_of  # lazy: imports torch, which preparing never needs
    if not os.path.isdir(root):
        raise UserError(f"--egtea {root}: no such folder (expected {CLIPS}/ and action_idx.txt inside)")
    release = Release(root)  # reads every split file: a bad action index stops here
    splits = sorted(n for n in os.listdir(root) if n.endswith(".txt") and "_split" in n)
    if not splits:
        raise UserError(f"--egtea {root}: no split files (train_split1.txt .. test_split3.txt)")
    listed = sorted({clip for n in splits for clip, *_ in release.split(n[:-4])})
    found, missing = [], []
    for clip in listed:
        rel = f"{session_of(clip)}/{clip}"
        path = _video_file(os.path.join(root, CLIPS, session_of(clip)), clip)
        (found.append((rel, path)) if path else missing.append(clip))
    extra = []
    clips_dir = os.path.join(root, CLIPS)
    names = set(listed)
    for session in (_listdir(clips_dir) if os.path.isdir(clips_dir) else []):
        d = os.path.join(clips_dir, session)
        if os.path.isdir(d):
            extra += [n for n in _listdir(d) if os.path.splitext(n)[1].lower() in VIDEO_EXTS
                      and os.path.splitext(n)[0] not in names]
    if missing:
        print(f"warning: {len(missing)} of the {len(listed)} clips listed in {', '.join(splits)} are not in "
              f"{clips_dir}, skipped (the loaders skip them too): {', '.join(missing[:3])}"
              f"{' ...' if len(missing) > 3 else ''}", file=sys.stderr)
    if extra:
        print(f"note: {len(extra)} clip(s) in {clips_dir} are in no split file and are not prepared: "
              f"{', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}", file=sys.stderr)
    if not found:
        raise UserError(f"--egtea {root}: none of the {len(listed)} listed clips is in {clips_dir} "
                        "(expected <session>/<clip>.mp4 there)")
    copies = [os.path.join(root, n) for n in release_files() if os.path.isfile(os.path.join(root, n))]
    return found, copies


def _scan_list(path):
    """([(rel, path)], release files to copy) of a --list file."""
    from datasets.egtea import release_files  # lazy: imports torch, which preparing never needs
    if not os.path.isfile(path):
        raise UserError(f"--list {path}: no such file (one video path a line)")
    base = os.path.dirname(os.path.abspath(path))
    found, missing, seen = [], [], {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            video = fields[0] if os.path.isabs(fields[0]) else os.path.join(base, fields[0])
            rel = f"{os.path.basename(os.path.dirname(video)) or 'videos'}/{os.path.splitext(os.path.basename(video))[0]}"
            if rel in seen:
                if seen[rel] != os.path.abspath(video):
                    raise UserError(f"--list {path} line {n}: {fields[0]} and {seen[rel]} would both be prepared "
                                    f"as {rel} (same folder name and file stem): rename one")
                continue
            seen[rel] = os.path.abspath(video)
            (found.append((rel, video)) if os.path.isfile(video) else missing.append(fields[0]))
    if missing:
        print(f"warning: {len(missing)} video(s) of {path} do not exist, skipped: {', '.join(missing[:3])}"
              f"{' ...' if len(missing) > 3 else ''}", file=sys.stderr)
    if not found:
        raise UserError(f"--list {path}: no existing video file listed")
    copies = [os.path.join(base, n) for n in release_files() if os.path.isfile(os.path.join(base, n))]
    return sorted(found), copies


def _scan_gtea61(root):
    """([(rel, recording)], [], {rel: Instance}, [label errors]) of a raw GTEA-61 release."""
    if not os.path.isdir(root):
        raise UserError(f"--gtea61 {root}: no such folder (expected label files S1_Cheese_C1.txt and videos)")
    try:
        instances, errors, summary = gtea61raw.scan(root)
    except ValueError as e:
        raise UserError(f"--gtea61 {root}: {e}") from None
    gtea61raw.print_summary(summary, errors)
    for err in errors:
        print(f"error: {err}", file=sys.stderr)
    if not instances:
        raise UserError(f"--gtea61 {root}: no instance to prepare ({len(errors)} error(s) above)")
    return ([(i.rel, i.source) for i in instances], [], {i.rel: i for i in instances}, errors)


def _synthetic_marker(args):
    """The synthetic generator's marker of the release being prepared, or None: at the root of an
    --egtea or --gtea61 release, in a --videos folder or its parent (the generator's videos layout
    puts them in DIR/videos/ and its marker in DIR)."""
    source = args.egtea or args.gtea61 or args.videos
    if not source:
        return None
    places = [source] + ([os.path.dirname(os.path.abspath(source))] if args.videos else [])
    return next((m for m in (os.path.join(p, SYNTHETIC_MARKER) for p in places) if os.path.isfile(m)), None)


def copy_release_files(paths, out):
    """Copy the index and split files (and a synthetic release's marker) into the dataset root."""
    for src in paths:
        dst = os.path.join(out, os.path.basename(src))
        tmp = f"{dst}.tmp-{os.getpid()}"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def estimate_bytes(jobs, layout, short_side):
    """Estimated bytes the jobs will write (BYTES_PER_PIXEL x output pixels x frames)."""
    total = 0
    for job in jobs:
        if not isinstance(job.source, str) or os.path.isdir(job.source):
            continue
        try:
            info = probe(job.source)
        except VideoError:
            continue
        w, h = output_size(info["width"], info["height"], short_side)
        files = sum(len(KINDS[p]) for p in job.parts)  # image files per frame
        # the parts' shares of BYTES_PER_PIXEL: RGB 2/3, flow 1/3, maps ~0; half a 4 KB block per file
        share = sum({"frames": 0.66, "flow": 0.33, "mmaps": 0.01}[p] for p in job.parts)
        total += job.estimate * (w * h * BYTES_PER_PIXEL[layout] * share + files * FILE_SLACK)
    return total


def check_space(jobs, layout, args):
    """Stop before writing when the estimated output exceeds the free space of --outDir's disk."""
    need = estimate_bytes(jobs, layout, args.shortSide)
    free = shutil.disk_usage(args.out).free
    def size(b):
        return f"{b / 1e9:.1f} GB" if b >= 1e8 else f"{b / 1e6:.1f} MB"
    if not args.quiet:
        print(f"estimated output {size(need)} ({BYTES_PER_PIXEL[layout]:.2f} bytes per pixel and frame, "
              f"{layout} layout); {size(free)} free on {args.out}", file=sys.stderr)
    if need > free and not args.noSpaceCheck:
        raise UserError(f"--outDir {args.out}: the output is estimated at {size(need)} and its disk has "
                        f"{size(free)} free: free space, choose --outDir on a larger disk, a smaller "
                        "--shortSide or --fps, or the egornn layout (JPEG, about 4x smaller); --noSpaceCheck "
                        "skips this check")
    return need


def _scan_frames(root):
    """(layout, [(rel, [frame paths], [frame numbers])]) of a dataset root in either layout."""
    from datasets.gtea61 import _LAYOUTS, _frame_files, _subdirs, _top, detect_layout  # lazy: imports torch
    layout = detect_layout(root)
    L = _LAYOUTS[layout]
    top = _top(root, L["rgb"])
    if top is None:
        raise UserError(f"--frames {root}: no RGB frames ({L['rgb_pattern']})")
    videos = []
    for u in _subdirs(os.path.join(root, top)):
        for c in _subdirs(os.path.join(root, top, u)):
            for i in _subdirs(os.path.join(root, top, u, c)):
                d = os.path.join(root, top, u, c, i)
                if L["rgb_sub"]:
                    d = os.path.join(d, L["rgb_sub"])
                files = _frame_files(d, L["rgb_re"]) or []
                if files:
                    videos.append((f"{u}/{c}/{i}", [os.path.join(d, f) for _, f in files], [k for k, _ in files]))
    if not videos:
        raise UserError(f"--frames {root}: no frames found ({L['rgb_pattern']})")
    return layout, videos


def _has_files(path):
    try:
        return any(_visible(n) for n in os.listdir(path))
    except OSError:
        return False


def plan(args, opts):
    """The jobs of this run, and how many videos are already done."""
    out, layout = opts["out"], opts["layout"]
    method = {"flow": args.flow, "warp": not args.noWarp, "version": VERSION}
    common = {"flow": dict(method, flowScale=args.flowScale), "mmaps": dict(method, maps=args.maps),
              "frames": {}}  # frames are the same bytes in every version: no conflict over it
    spans = opts.get("_spans") or {}
    if args.videos or args.egtea or args.list or args.gtea61:
        items = []
        for rel, path in opts["_videos"]:
            st = os.stat(path)
            src = {"source": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                   "fps": args.fps, "shortSide": args.shortSide}
            if rel in spans:  # --gtea61: one labelled range of the recording
                src["frames"] = [spans[rel].start, spans[rel].end]
            items.append((rel, path, None, src))
    else:
        items = [(rel, files, nums, {"source": "frames"}) for rel, files, nums in opts["_frames"]]
    jobs, done, conflicts = [], 0, []
    for rel, source, nums, src in items:
        settings = {p: dict(common[p], **src) for p in PARTS}
        journal = read_json(_state(out, "journal", rel))
        if journal is not None:  # killed while placing this video: what it had placed goes
            for t in journal.get("targets", []):
                _remove(os.path.join(out, t), out)
            os.remove(_state(out, "journal", rel))
        todo = []
        for p in opts["only"]:
            marker = read_json(_state(out, "done/" + p, rel))
            present = all(_has_files(folder(out, layout, k, rel)) for k in KINDS[p])
            if not args.overwrite and present:
                if marker is not None and {k: v for k, v in marker.items() if k not in FOUND} == settings[p]:
                    continue  # done
                if marker is not None:
                    conflicts.append((rel, p))
                    continue
                continue  # data already there that this tool did not write: kept (--frames)
            todo.append(p)
        if not todo:
            done += 1
            continue
        if rel in spans:
            span = spans[rel]
            est = len(span.frames) if span.frames is not None else span.end - span.start + 1
        elif isinstance(source, str):
            try:
                est = estimated_frames(source, args.fps)
            except VideoError:
                est = 0
        else:
            est = len(source)
        jobs.append(Job(rel, source, todo, settings, est, nums, spans.get(rel)))
    if conflicts:
        rel, p = conflicts[0]
        raise UserError(f"{out} already holds {len(conflicts)} part(s) made with other settings or from another "
                        f"source (first: {p} of {rel}, see {_state(out, 'done/' + p, rel)}): pass --overwrite to "
                        "remake them, or choose another --outDir")
    return jobs, done


# ---- command line ---------------------------------------------------------------------------
def parse_args(argv):
    p = Parser(prog="python -m datasets.prepare", description="\n\n".join(__doc__.split("\n\n")[:2]),
               epilog="The module docstring (datasets/prepare/prepare.py) says what is written where.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", help="folder of videos: <user>/<class>/<instance>.<ext>")
    src.add_argument("--frames", help="dataset root (either layout) to complete with flow / motion maps")
    src.add_argument("--egtea", help="EGTEA Gaze+ release: cropped_clips/<session>/<clip>.mp4 + index and split files")
    src.add_argument("--list", help="file of video paths, one a line (further columns ignored)")
    src.add_argument("--gtea61", help="raw GTEA-61 release: label files S1_Cheese_C1.txt and their videos "
                     "(or frame folders), cut into instances as Ego-RNN's prepareGTEA61Dataset.py")
    p.add_argument("--outDir", dest="out", metavar="DIR", help="dataset to write (required but with --frames, whose default is the "
                   "--frames root)")
    p.add_argument("--layout", choices=tuple(LAYOUTS), default=None,
                   help="course (PNG) or egornn (JPEG); default course, or the --frames root's")
    p.add_argument("--flow", choices=("tvl1", "farneback", "raft"), default="tvl1",
                   help="optical flow method (default tvl1; farneback: fast on a CPU; raft: GPU)")
    p.add_argument("--noWarp", action="store_true", help="plain flow, without the camera compensation")
    p.add_argument("--flowScale", choices=FLOW_SCALES, default=DEFAULT_FLOW_SCALE,
                   help="flow values in pixels of the written frames (output, the default) or of the source "
                   "video as dense_flow wrote them (source: x source/output short side)")
    p.add_argument("--maps", choices=warpflow.MAPS, default=DEFAULT_MAPS,
                   help=f"motion maps: idt = points of improved dense trajectories, the paper's MS targets "
                   f"(datasets/prepare/trajectories.py); flow = moving regions of the compensated flow "
                   f"(datasets/prepare/warpflow.py); default {DEFAULT_MAPS}")
    p.add_argument("--fps", type=float, default=None,
                   help="resample the videos to this rate: at each j / fps the nearest frame "
                   "(datasets/prepare/video.py; default: every frame)")
    p.add_argument("--shortSide", type=int, default=None,
                   help="scale frames down so the short side is this (default 256; 0: source size)")
    p.add_argument("--numWorkers", dest="workers", metavar="N", type=int, default=os.cpu_count() or 1,
                   help="videos prepared in parallel (default: one per core)")
    p.add_argument("--only", action="append", choices=PARTS, default=None,
                   help="write only this part (repeatable); default: all (--frames: flow and mmaps)")
    p.add_argument("--overwrite", action="store_true", help="remake parts that are already there")
    p.add_argument("--skipBad", action="store_true", help="exit 0 even if some videos could not be read")
    p.add_argument("--raftWeights", default=None, help="torchvision RAFT state dict (default: the torch hub cache)")
    p.add_argument("--quiet", action="store_true",
                   help="print warnings and errors only (the progress bar is drawn on a terminal only anyway)")
    p.add_argument("--noSpaceCheck", action="store_true",
                   help="write even if the estimated output exceeds the free disk space")
    return p.parse_args(argv)


def check_args(args):
    if args.workers < 1:
        raise UserError(f"--numWorkers must be >= 1 (got {args.workers})")
    if args.frames:
        for name in ("fps", "shortSide"):
            if getattr(args, name) is not None:
                raise UserError(f"--{name} applies to --videos only: --frames uses the frames as they are")
        args.out = os.path.abspath(args.out or args.frames)
    else:
        if not args.out:
            source = ("--videos" if args.videos else "--egtea" if args.egtea else "--list" if args.list
                      else "--gtea61")
            raise UserError(f"{source} needs --outDir DATASET (the folder to write)")
        if args.gtea61 and args.fps is not None:
            raise UserError("--fps applies to --videos, --egtea and --list: GTEA-61's label files count the "
                            "recordings' own frames")
        args.out = os.path.abspath(args.out)
        args.shortSide = 256 if args.shortSide is None else args.shortSide
        if args.shortSide < 0:
            raise UserError(f"--shortSide must be >= 0 (got {args.shortSide})")
        if args.fps is not None and args.fps <= 0:
            raise UserError(f"--fps must be positive (got {args.fps})")
        if os.path.isdir(args.out) and _has_files(args.out) and not os.path.isdir(os.path.join(args.out, STATE)) \
                and not args.overwrite:
            raise UserError(f"--outDir {args.out} holds files that datasets.prepare did not write: choose an empty "
                            "or new folder, or pass --overwrite")
    if args.flow == "raft":
        try:
            find_raft_weights(args.raftWeights)
        except RaftWeightsError as e:
            raise UserError(str(e)) from None


class _Lock:
    """One run at a time per dataset: an exclusive lock on DATASET/.prepare/lock."""

    def __init__(self, out):
        os.makedirs(os.path.join(out, STATE), exist_ok=True)
        self.f = open(os.path.join(out, STATE, "lock"), "w")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.close()
            raise UserError(f"another datasets.prepare is writing {out}: wait for it to finish") from None

    def release(self):
        self.f.close()


def _progress_bar(total, quiet):
    from tqdm import tqdm
    return tqdm(total=total, unit="frame", disable=not show_progress(quiet), dynamic_ncols=True, smoothing=0.1,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} frames [{elapsed}<{remaining}, {rate_fmt}]")


def run_jobs(jobs, opts, workers, quiet=False):
    """Prepare every job; returns [(rel, frames, error)] in completion order."""
    results = []
    bar = _progress_bar(sum(j.estimate for j in jobs), quiet)
    try:
        if workers == 1 or len(jobs) <= 1:
            _init_worker(opts, None)
            local = _WORKER["opts"]
            for job in jobs:
                results.append(_report(process(job, local, bar.update), bar))
            return results
        ctx = mp.get_context("spawn")  # OpenCV's thread pool does not survive fork
        q = ctx.Queue()
        pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                                   initargs=(opts, q))
        try:
            pending = {pool.submit(_worker, j) for j in jobs}
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(q, bar)
                for f in finished:
                    results.append(_report(f.result(), bar))
            _drain(q, bar)
        except BaseException:
            # Ctrl-C or an error: stop now; the videos in progress stay unfinished (no marker)
            for p in list(getattr(pool, "_processes", {}).values()):
                p.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return results
    finally:
        bar.close()


def _drain(q, bar):
    while True:
        try:
            bar.update(q.get_nowait())
        except queue.Empty:
            return


def _report(result, bar):
    rel, n, err, _ = result
    if err:
        bar.write(f"error: {err}", file=sys.stderr)
    return result


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    if args.frames:
        layout, frames = _scan_frames(args.frames)
        if args.layout and args.layout != layout:
            raise UserError(f"--layout {args.layout}: {args.frames} is in the {layout} layout, and --frames "
                            "keeps the layout (prepare the videos again with --videos to change it)")
        only = args.only or (["frames", "flow", "mmaps"] if os.path.abspath(args.frames) != args.out
                             else ["flow", "mmaps"])
        if "frames" in only and os.path.abspath(args.frames) == args.out:
            only.remove("frames")  # the frames are the input
    else:
        layout, frames = args.layout or "course", None
        only = args.only or list(PARTS)
        if args.egtea:
            videos, copies = _scan_egtea(args.egtea)
        elif args.list:
            videos, copies = _scan_list(args.list)
        elif args.gtea61:
            videos, copies, spans, label_errors = _scan_gtea61(args.gtea61)
        else:
            videos, copies = _scan_videos(args.videos), []
    if not args.gtea61:
        spans, label_errors = {}, []
    only = [p for p in PARTS if p in only]
    opts = {"_spans": spans, "out": args.out, "layout": layout, "flow": args.flow, "warp": not args.noWarp, "fps": args.fps,
            "shortSide": args.shortSide, "raftWeights": args.raftWeights, "only": only, "_frames": frames,
            "flowScale": args.flowScale, "maps": args.maps,
            "_needs_method": "flow" in only or "mmaps" in only, "_videos": None if args.frames else videos}
    lock = _Lock(args.out)
    try:
        shutil.rmtree(os.path.join(args.out, STATE, "tmp"), ignore_errors=True)  # a killed run's
        shutil.rmtree(os.path.join(args.out, STATE, "trash"), ignore_errors=True)
        jobs, done = plan(args, opts)
        if not args.frames:
            check_space(jobs, layout, args)
            # a synthetic release's marker goes along, so that results on it say they are synthetic
            marker = _synthetic_marker(args)
            copy_release_files(copies + ([marker] if marker else []), args.out)
        worker_opts = {k: v for k, v in opts.items() if k not in ("_frames", "_videos", "_spans")}
        what = ", ".join(only)
        method = f"{args.flow}{'' if args.noWarp else ' + warp'}" if opts["_needs_method"] else ""
        if not args.quiet:
            print(f"preparing {len(jobs)} video(s) ({what}{'; ' + method if method else ''}; {layout} layout) "
                  f"into {args.out}" + (f"; {done} already done" if done else ""), file=sys.stderr, flush=True)
        t0 = time.time()
        try:
            results = run_jobs(jobs, worker_opts, args.workers, args.quiet)
        except OSError as e:
            raise UserError(f"cannot write {e.filename or args.out}: {e.strerror or e} (free some space or "
                            "fix the permissions, then rerun: finished videos are kept)") from None
    finally:
        lock.release()
    bad = [(rel, err) for rel, _, err, _ in results if err] + [(err.split(":")[0], err) for err in label_errors]
    frames_done = sum(n for _, n, _, _ in results)
    secs = time.time() - t0
    if not args.quiet:
        print(f"done: {len(results) - len(bad)} video(s), {frames_done} frames in {secs:.1f} s "
              f"({frames_done / max(secs, 1e-9):.1f} frames/s) -> {args.out}", file=sys.stderr)
    refused = sorted((rel, found["refused"]) for rel, _, _, found in results if found.get("refused"))
    if refused:  # dense_flow's rule: no homography from <= 50 matches or <= 25 inliers
        listing = ", ".join(f"{rel} {r}" for rel, r in refused[:10]) + (", ..." if len(refused) > 10 else "")
        print(f"camera homography refused (identity used) on {sum(r for _, r in refused)} frame pair(s) in "
              f"{len(refused)} video(s): {listing}", file=sys.stderr)
    if args.gtea61:
        for rel, _, _, found in results:
            if found.get("clippedAt"):
                spans[rel].last = found["clippedAt"]
        gtea61raw.print_clipped([inst.clipped() for rel, inst in sorted(spans.items()) if inst.last is not None])
    if bad:
        listing = "; ".join(f"{rel}" for rel, _ in bad)
        msg = (f"{len(bad)} video(s) could not be read and were skipped: {listing} (errors above; fix or "
               "remove them and rerun: the others are done)")
        if args.skipBad:
            print(f"warning: {msg}", file=sys.stderr)
            return 0
        print(f"error: {msg}", file=sys.stderr)
        return 1
    return 0
