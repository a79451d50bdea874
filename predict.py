"""Classify a video of your own with a trained checkpoint, and show where the model looked.

    python predict.py --video my_clip.mp4 --modelStateDict experiments/main_ms_op_seq16/stage2/best_model.pth
    python predict.py --video recording.mp4 --modelStateDict CKPT --window 2 --stride 1    # what happens when

PATH is a video file (anything PyAV decodes) or a folder of frames (sorted by name). The model's
experiment (RGB / MS / MS+OP / flow / two-stream), class names, seqLen, frame size, stack size and
attention come from the checkpoint; for the original Ego-RNN release's files, which record
none of it, they come from the weights and the original's settings (seqLen 25, 224 px), and the
class names from --classNames.

The clip is evaluate.py's: the video is decoded as datasets.prepare decodes it (every frame,
short side scaled down to 256; --fps resamples), the frames are the seqLen at
floor(linspace(1, N, seqLen, endpoint=False)), resized and centre-cropped by the test
transform; flow is computed from those frames with the preparation code (datasets/prepare/warpflow.py),
stacks as evaluate.py takes them (flow model: the mean logits of --numSeg stacks; two-stream:
the centre stack). So a video prepared into a dataset (PNG, the course layout) and scored by
evaluate.py gets the same logits here (tests/test_predict.py); JPEG frames differ a little.
The flow method, warp and flow scale are the ones the checkpoint's data were prepared with (its
"preparation" record; an original Ego-RNN file: TV-L1 + warp, source scale as dense_flow);
--flow, --flowScale or --noWarp override them with a warning naming both. A video shorter than
seqLen is taken as the loaders take it (frames repeated), down to their minimum of 5 frames (a
flow model: 5 flow frames, or stackSize if more).

Writes to --outDir: prediction.json (top-k, logits, the frames used); for models with attention
cam.mp4 (the frames the model saw, the CAM on top, the predicted action on each frame) and
cam.png; with --window / --stride (seconds), every window is classified too: timeline.csv
(start, end, first frame and frame count, top-k) and timeline.png. A window [s, s + window)
holds the frames whose time t has s <= t < s + window: a frame exactly on its end is the next's.
"""
import hashlib
import math
import os
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from datasets.gtea61 import MIN_FRAMES, clip_positions, eval_flow_starts
from datasets.prepare.prepare import read_rgb
from datasets.transforms import ClipTransform
from datasets.prepare.video import VideoError, VideoWriter, frame_times, natural_key, read_frames, resized
from datasets.prepare.warpflow import FLOW_SCALES, RaftWeightsError, encode_flow, flow_factor, flow_method, warp_flow
from models.checkpoints import checkpoint_info, load_checkpoint
from models.recipe import build_from_checkpoint, forward
from utils.cli import Parser, show_progress
from utils.checkpoint_record import checkpoint_preparation, preparation_differences, saved_config, synthetic_note
from utils.data import to_device
from utils.device import PRECISIONS, pick_device, pick_precision
from utils.errors import UserError, run_cli
from utils.io import atomic_write_csv, atomic_write_json
from utils.plots import cam_maps, cam_overlay, save_cam_strip, save_timeline
from utils.train import autocast

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


def parse_args(argv):
    p = Parser(description=__doc__)
    p.add_argument("--video", required=True, help="a video file, or a folder of frames")
    p.add_argument("--modelStateDict", required=True, help="checkpoint (this project's or the original Ego-RNN's)")
    p.add_argument("--topk", type=int, default=5, help="actions listed, most probable first")
    p.add_argument("--outDir", default=None,
                   help="default: experiments/predict/<folder>_<name>-<8 hex digits of the video's path>")
    p.add_argument("--window", type=float, default=None, help="also classify windows of this many seconds")
    p.add_argument("--stride", type=float, default=None, help="seconds between window starts (default: --window)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when a GPU is visible, else cpu")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 (default) gives evaluate.py's logits; bf16 is faster on GPUs and bf16 CPUs; auto: bf16 "
                   "where the hardware runs it natively")
    p.add_argument("--batchSize", type=int, default=8, help="clips per forward pass (windows)")
    p.add_argument("--fps", type=float, default=None,
                   help="video: resample to this rate, as datasets.prepare --fps; frame folder: its frame rate")
    p.add_argument("--shortSide", type=int, default=256,
                   help="scale video frames down to this short side first, as datasets.prepare does (0: keep)")
    p.add_argument("--flow", default=None, choices=["farneback", "tvl1", "raft"],
                   help="optical flow for flow and two-stream models (default: the checkpoint's data's)")
    p.add_argument("--flowScale", default=None, choices=list(FLOW_SCALES),
                   help="flow values in pixels of the source video or of the frames read (default: the "
                   "checkpoint's data's)")
    p.add_argument("--noWarp", action="store_true", help="plain flow, without the camera compensation")
    p.add_argument("--raftWeights", default=None, help="torchvision RAFT state dict (--flow raft)")
    p.add_argument("--numSeg", type=int, default=5, help="flow stacks averaged per clip (flow model), as evaluate.py")
    p.add_argument("--seqLen", type=int, default=None, help="default: the checkpoint's, else 25 as the original")
    p.add_argument("--classNames", default=None,
                   help="text file, one class name per line in class-id order (needed for original Ego-RNN files)")
    p.add_argument("--camFps", type=float, default=4.0, help="frame rate of cam.mp4")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --outDir")
    p.add_argument("--quiet", action="store_true", help="no progress bar (drawn on a terminal only anyway)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- the model

def default_out_dir(video):
    """experiments/predict/<folder>_<name>-<hash>: the video's folder and name to read, and a hash of
    its path, so that S2/take_cup/1.mp4 and S2/open_box/1.mp4, or two recordings named 1.mp4
    anywhere, never write to the same folder. The path is hashed as given (normalised): the folder
    is under the current one, as a relative path is read from it."""
    path = os.path.normpath(video)
    folder, name = os.path.split(os.path.abspath(path))
    stem = name if os.path.isdir(path) else os.path.splitext(name)[0]
    digest = hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return os.path.join("experiments", "predict", f"{os.path.basename(folder)}_{stem}-{digest}")


def resolve_model(args):
    """Everything the checkpoint says about its model (or what its weights imply), as a dict."""
    path = args.modelStateDict
    info = checkpoint_info(path)  # CheckpointError (exit 2) for a file that is no model of ours
    config, meta = saved_config(path), info["meta"]
    family = info["family"]
    attention = bool(config.get("attention", True))  # the original release's RGB models all have it
    if family == "rgb":
        name = meta.get("experiment") or "rgb"
        name = "convlstm" if name == "rgb" and not attention else name
    else:
        name = family
    classes = list(config.get("classes") or meta.get("classes") or [])
    if args.classNames:
        try:
            with open(args.classNames, encoding="utf-8") as f:
                given = [ln.strip() for ln in f if ln.strip()]
        except OSError as e:
            raise UserError(f"--classNames {args.classNames}: {e.strerror}")
        if classes and given != classes:
            raise UserError(f"--classNames {args.classNames} differs from the class names recorded in {path}: "
                            "leave --classNames out")
        classes = given
    if not classes:
        raise UserError(f"{path} records no class names (an original Ego-RNN file?): pass --classNames FILE, "
                        f"{info['num_classes']} names one per line in class-id order (sorted, for GTEA-61)")
    if len(classes) != info["num_classes"]:
        raise UserError(f"--classNames {args.classNames} has {len(classes)} names, {path} has "
                        f"{info['num_classes']} classes")
    seq_len = args.seqLen or config.get("seqLen") or 25
    if seq_len < 1:
        raise UserError(f"--seqLen must be positive (got {seq_len})")
    return dict(family=family, name=name, classes=classes, attention=attention, seqLen=seq_len,
                frameSize=config.get("frameSize") or 224, memSize=info["mem_size"] or 512,
                stackSize=info["stack_size"] or 5, numSeg=args.numSeg if family == "flow" else 1,
                recorded=bool(config), preparation=checkpoint_preparation(config),
                synthetic_note=synthetic_note(path, config))


def flow_settings(args, spec):
    """(method, warp, flowScale) for the flow: the checkpoint's data's unless the command line
    says otherwise, which is a warning naming both."""
    prep, where = spec["preparation"]

    def recorded(key, default):  # a dataset whose videos differ records a list: its first value
        value = prep.get(key, default)
        return (value[0] if value else default) if isinstance(value, list) else value

    used = {"flow": args.flow or recorded("flow", "tvl1"),
            "warp": False if args.noWarp else recorded("warp", True),
            "flowScale": args.flowScale or recorded("flowScale", "source")}
    for key, had, now in preparation_differences(prep, used, ("flow", "warp", "flowScale")):
        option = {"flow": f"--flow {now}", "warp": "--noWarp", "flowScale": f"--flowScale {now}"}[key]
        print(f"warning: {option}: {args.modelStateDict}'s training data had {key} {had} ({where}); "
              f"this run uses {key} {now}, so its inputs differ from the training data", file=sys.stderr)
    return used["flow"], used["warp"], used["flowScale"]


def load_model(path, device):
    """The checkpoint's model, for inference: its action classifier, without the MS and OP heads."""
    model = build_from_checkpoint(path, heads=False)
    load_checkpoint(model, path)
    return model.to(device).eval()


# ----------------------------------------------------------------------------- the input

class Source:
    """A video file or a folder of frames: the frame times (seconds) up front, then the frames."""

    def __init__(self, path, fps, short_side):
        self.path, self.fps, self.short_side = path, fps, short_side
        self.sizes = {}  # the frames' size as decoded and as read (datasets.prepare.video.resized)
        if os.path.isdir(path):
            names = sorted((n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTS) and not n.startswith(".")),
                           key=natural_key)
            if not names:
                raise UserError(f"--video {path}: a folder without frames ({', '.join(IMAGE_EXTS)} files)")
            self.files = [os.path.join(path, n) for n in names]
            self.times = [k / fps if fps else float(k) for k in range(len(names))]
            self.rate = fps
        elif os.path.isfile(path):
            self.files = None
            try:
                self.times = [float(t) for t in frame_times(path, fps)]
            except VideoError as e:
                raise UserError(str(e)) from None
            steps = np.diff(self.times)
            self.rate = fps or (1.0 / float(np.median(steps)) if len(steps) and np.median(steps) > 0 else None)
        else:
            raise UserError(f"--video {path}: no such file or folder")

    @property
    def duration(self):
        """Seconds the frames cover: the last frame lasts one frame interval."""
        return self.times[-1] + 1.0 / self.rate if self.rate else float(len(self.times))

    def frames(self):
        try:
            if self.files is not None:
                for f in self.files:
                    yield read_rgb(f)
            else:
                yield from resized(read_frames(self.path, self.fps), self.short_side, self.sizes)
        except VideoError as e:
            raise UserError(str(e)) from None


# ----------------------------------------------------------------------------- the clips

def plan_clip(first, n, spec, name, start, end):
    """The frames (absolute indices) a clip over frames first .. first + n - 1 takes: RGB at
    the test positions, flow stacks (flow k: from frame k to k + 1) at the test starts."""
    clip = dict(name=name, start=start, end=end, first=first, n=n, rgb=[], flow=[])
    if spec["family"] in ("rgb", "twostream"):
        clip["rgb"] = [first + p for p in clip_positions(n, spec["seqLen"])]
    if spec["family"] in ("flow", "twostream"):
        nf, k = n - 1, spec["stackSize"]
        clip["flow"] = [[first + p for p in range(s, min(s + k, nf))]
                        for s in eval_flow_starts(nf, k, spec["numSeg"])]
    needed = clip["rgb"] + [f + 1 for stack in clip["flow"] for f in stack]
    clip["ready"] = max(needed)  # the clip can be made once this frame is decoded
    return clip


def min_frames(spec):
    """(frames a clip needs, why): the loaders' minimum (datasets/gtea61.py): MIN_FRAMES RGB
    frames (fewer than seqLen are repeated), and for flow max(MIN_FRAMES, stackSize) flow frames,
    one RGB frame more."""
    needs = [(MIN_FRAMES, f"the loaders' minimum of {MIN_FRAMES}")]
    if spec["family"] in ("flow", "twostream"):
        k = max(MIN_FRAMES, spec["stackSize"])
        needs.append((k + 1, f"the loaders' minimum of {k} flow frames"))
    return max(needs, key=lambda n: n[0])


def plan_clips(source, spec, window, stride):
    """The whole video as one clip, plus the windows [s, s + window) at s = 0, stride, ... (and
    one ending at the video's end, so the tail is covered)."""
    times, n = np.asarray(source.times), len(source.times)
    need, why = min_frames(spec)
    what = f"{n} frames" + (f" ({source.duration:.2f} s)" if source.rate else "")
    if n < need:
        raise UserError(f"--video {source.path} has {what}; the model's clip needs {need} ({why}): "
                        "use a longer video")
    clips = [plan_clip(0, n, spec, "video", 0.0, source.duration)]
    if window is None:
        return clips
    total = source.duration
    if window > total + 1e-9:
        raise UserError(f"--window {window:g}: the video is only {total:.2f} s long; use a shorter --window "
                        "or leave it out")
    starts = list(np.arange(0.0, total - window + 1e-9, stride))
    if starts[-1] + window < total - 1e-6:
        starts.append(total - window)
    for i, s in enumerate(starts):
        a = int(np.searchsorted(times, s - 1e-9, side="left"))
        b = int(np.searchsorted(times, s + window - 1e-9, side="left"))
        if b - a < need:
            raise UserError(f"--window {window:g}: the window at {s:.2f} s holds {b - a} frames of this "
                            f"{source.rate:.3g} frames/s video, the model's clip needs {need} ({why}): "
                            "use a longer --window")
        clips.append(plan_clip(a, b - a, spec, f"window {i}", float(s), float(s + window)))
    return clips


class ClipMaker:
    """Streams the frames once and hands out clips (uint8, as the loaders make them with
    normalize=False) as soon as their last frame is decoded; keeps only the frames clips still
    need, each already resized and centre-cropped (the test transform is per frame)."""

    def __init__(self, clips, spec, flow_method=None, warp=True, flow_scale="output", sizes=None):
        self.clips = sorted(clips, key=lambda c: c["ready"])
        self.transform = ClipTransform(False, spec["frameSize"])
        self.flow_method, self.warp = flow_method, warp
        self.flow_scale, self.sizes = flow_scale, sizes if sizes is not None else {}
        self.refs = {}
        for c in clips:
            for i in c["rgb"]:
                self.refs[("rgb", i)] = self.refs.get(("rgb", i), 0) + 1
            for i in {f for stack in c["flow"] for f in stack}:
                self.refs[("flow", i)] = self.refs.get(("flow", i), 0) + 1
        self.store = {}

    def _crop(self, arr):
        return np.asarray(self.transform.frame(Image.fromarray(arr), None))

    def __call__(self, frames):
        pending, prev = list(self.clips), None
        for i, rgb in enumerate(frames):
            if ("rgb", i) in self.refs:
                self.store[("rgb", i)] = self._crop(rgb)
            if ("flow", i - 1) in self.refs:
                flow, _, _, _ = warp_flow(prev, rgb, self.flow_method, self.warp)
                flow = flow * flow_factor(self.flow_scale, self.sizes)
                self.store[("flow", i - 1)] = tuple(self._crop(a) for a in encode_flow(flow))
            prev = rgb
            while pending and pending[0]["ready"] <= i:
                yield self._make(pending.pop(0))
        if pending:  # fewer frames decoded than the first pass counted
            raise UserError(f"the video gave fewer frames on the second read ({i + 1}) than on the first")

    def _make(self, clip):
        out = {}
        if clip["rgb"]:
            out["rgb"] = torch.from_numpy(np.stack([self.store[("rgb", i)] for i in clip["rgb"]])
                                          .transpose(0, 3, 1, 2).copy())
        if clip["flow"]:
            stacks = []
            for stack in clip["flow"]:
                xs = [self.store[("flow", i)][0] for i in stack]
                ys = [self.store[("flow", i)][1] for i in stack]
                s = np.empty((2 * len(stack),) + xs[0].shape, np.uint8)
                s[0::2], s[1::2] = xs, ys  # channels x1, y1, ..., as ClipTransform.flow
                stacks.append(s)
            out["flow"] = torch.from_numpy(np.stack(stacks))
        for key in [("rgb", i) for i in clip["rgb"]] + [("flow", i) for i in {f for st in clip["flow"] for f in st}]:
            self.refs[key] -= 1
            if self.refs[key] == 0:
                del self.store[key]
        return clip, out


# ----------------------------------------------------------------------------- outputs

def shown_name(path):
    """The last two parts of a path (a video's class folder and file name, for the synthetic ones)."""
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    return "/".join(parts[-2:])


def top_k(probs, classes, k):
    idx = np.argsort(-probs, kind="stable")[:k]
    return [{"action": classes[i], "class_id": int(i), "probability": round(float(probs[i]), 6)} for i in idx]


def format_table(top):
    width = max(len("action"), *(len(t["action"]) for t in top))
    lines = [f"{'rank':>4}  {'action':<{width}}  probability"]
    lines += [f"{r:>4}  {t['action']:<{width}}  {t['probability']:11.4f}" for r, t in enumerate(top, 1)]
    return "\n".join(lines)


def cam_frames(rgb_uint8, attention, titles, size=224):
    """The clip's frames (T, 3, F, F) uint8 with the CAM on top and titles[t] written above
    frame t, at least `size` px wide -> (T, H, W, 3) uint8 with even H and W (H.264)."""
    frames = rgb_uint8.permute(0, 2, 3, 1).numpy().astype(np.float32) / 255
    over = cam_overlay(frames, cam_maps(attention, frames.shape[1:3]))
    F = over.shape[1]
    side = max(size, F + F % 2)
    band = 2 * (10 * math.ceil(max(map(len, titles)) * 6 / side + 1e-9) + 4) // 2
    out = []
    for im, title in zip(over, titles):
        canvas = Image.new("RGB", (side, side + band), (0, 0, 0))
        canvas.paste(Image.fromarray(im).resize((side, side), Image.BILINEAR), (0, band))
        draw = ImageDraw.Draw(canvas)
        per_line = max(1, side // 6)
        for j in range(0, len(title), per_line):
            draw.text((3, 2 + 10 * (j // per_line)), title[j:j + per_line], fill=(255, 255, 255))
        out.append(np.asarray(canvas))
    return np.stack(out)


class CamVideo:
    """cam.mp4, written as clips finish: clip i's frames go out once clips 0 .. i-1 have (the
    windows finish almost in order), into a temporary file renamed into place at the end."""

    def __init__(self, path, fps):
        self.path, self.tmp = path, os.path.join(os.path.dirname(path) or ".", ".cam.tmp.mp4")
        self.writer, self.waiting, self.next = VideoWriter(self.tmp, fps), {}, 0

    def add(self, i, frames):
        self.waiting[i] = frames
        while self.next in self.waiting:
            for f in self.waiting.pop(self.next):
                self.writer.write(f)
            self.next += 1

    def close(self):
        self.writer.close()
        os.replace(self.tmp, self.path)

    def discard(self):
        self.writer.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def main(argv=None):
    args = parse_args(argv)
    for name in ("topk", "batchSize", "numSeg"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be positive (got {getattr(args, name)})")
    if args.window is not None and args.window <= 0:
        raise UserError(f"--window must be positive (got {args.window})")
    if args.stride is not None and (args.window is None or args.stride <= 0):
        raise UserError("--stride needs --window and must be positive")
    stride = args.stride or args.window
    if args.fps is not None and args.fps <= 0:
        raise UserError(f"--fps must be positive (got {args.fps})")
    if not (os.path.isfile(args.video) or os.path.isdir(args.video)):
        raise UserError(f"--video {args.video}: no such file or folder")
    if args.window is not None and os.path.isdir(args.video) and not args.fps:
        raise UserError("--window on a folder of frames needs --fps (the rate its frames were taken at)")


    spec = resolve_model(args)
    if spec["synthetic_note"]:
        print(spec["synthetic_note"], flush=True)
    out_dir = args.outDir or default_out_dir(args.video)
    if os.path.exists(os.path.join(out_dir, "prediction.json")) and not args.overwrite:
        raise UserError(f"{out_dir} already holds prediction.json; pass --overwrite or another --outDir")
    device = pick_device(args.device)
    args.precision = pick_precision(args.precision, device)
    # evaluate.py's settings, so that the logits are its logits
    torch.set_flush_denormal(True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    model = load_model(args.modelStateDict, device)
    method, flow_name, warp, flow_scale = None, None, False, None
    if spec["family"] in ("flow", "twostream"):
        flow_name, warp, flow_scale = flow_settings(args, spec)
        try:
            method = flow_method(flow_name, args.raftWeights)
        except RaftWeightsError as e:
            raise UserError(str(e)) from None

    t0 = time.time()
    source = Source(args.video, args.fps, args.shortSide)
    clips = plan_clips(source, spec, args.window, stride)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --outDir {out_dir}: {e.strerror}")
    classes, C, k = spec["classes"], len(spec["classes"]), min(args.topk, len(spec["classes"]))
    print(f"{args.video}: {len(source.times)} frames" + (f", {source.duration:.2f} s" if source.rate else "")
          + f"; {spec['name']} model ({C} classes, seqLen {spec['seqLen']}, {spec['frameSize']} px"
          + (f", {'warp ' if warp else ''}{flow_name} flow at {flow_scale} scale" if method else "")
          + ("" if spec["recorded"] else "; no configuration in the file: the original's settings")
          + f") on {device.type}",
          file=sys.stderr, flush=True)

    results, cam = {}, {}
    with_cam = spec["family"] in ("rgb", "twostream") and spec["attention"]
    cam_video = CamVideo(os.path.join(out_dir, "cam.mp4"), args.camFps) if with_cam else None
    window_order = {name: i for i, name in enumerate(
        c["name"] for c in sorted(clips, key=lambda c: c["start"]) if c["name"] != "video")}
    bar = tqdm(total=len(clips), unit="clip", desc="predict", disable=not show_progress(args.quiet),
               dynamic_ncols=True)
    model_secs = 0.0

    def run(batch):
        nonlocal model_secs
        t = time.time()
        inputs = to_device({key: torch.stack([o[key] for _, o in batch]) for key in batch[0][1]}, device)
        with torch.no_grad(), autocast(device, args.precision):
            out = forward(model, inputs, spec["family"])
        logits = out["logits"].float().cpu()
        attn = out.get("attention")
        attn = attn.float().cpu() if attn is not None else None
        if device.type == "cuda":
            torch.cuda.synchronize()
        model_secs += time.time() - t
        for b, (clip, o) in enumerate(batch):
            results[clip["name"]] = (clip, logits[b])
            if cam_video is None:
                continue
            if clip["name"] == "video":
                cam["video"] = (o["rgb"], attn[b])
            else:  # windows go to cam.mp4 in time order as they finish; the frames are not kept
                p = torch.softmax(logits[b], 0)
                what = f"{classes[int(p.argmax())]} {float(p.max()):.2f}"
                cam_video.add(window_order[clip["name"]], cam_frames(o["rgb"], attn[b], [
                    f"{source.times[i]:.2f} s ({clip['start']:.1f}-{clip['end']:.1f}): {what}" for i in clip["rgb"]]))
        bar.update(len(batch))

    batch = []
    try:
        for item in ClipMaker(clips, spec, method, warp, flow_scale, source.sizes)(source.frames()):
            batch.append(item)
            if len(batch) == args.batchSize:
                run(batch)
                batch = []
        if batch:
            run(batch)
    except BaseException:  # Ctrl-C or an error: no half-written cam.mp4 left behind
        if cam_video is not None:
            cam_video.discard()
        raise
    finally:
        bar.close()
    secs = time.time() - t0

    # the whole video
    clip, logits = results["video"]
    probs = torch.softmax(logits, 0).numpy()
    top = top_k(probs, classes, k)
    frame_numbers = [i + 1 for i in clip["rgb"]]
    prediction = {
        "video": args.video, "checkpoint": args.modelStateDict, "model": spec["name"], "classes": classes,
        "seqLen": spec["seqLen"], "frameSize": spec["frameSize"], "num_frames": len(source.times),
        "duration_s": round(source.duration, 4) if source.rate else None, "fps": args.fps, "shortSide": args.shortSide,
        "flow": (flow_name + (" + warp" if warp else "")) if method else None, "flowScale": flow_scale,
        "precision": args.precision, "device": device.type, "synthetic_training_data": bool(spec["synthetic_note"]),
        "top": top, "logits": [round(float(v), 7) for v in logits],
        "frame_numbers": frame_numbers, "frame_times_s": [round(source.times[i], 4) for i in clip["rgb"]],
        "flow_stacks": [[i + 1 for i in st] for st in clip["flow"]],
        "clips": len(clips), "seconds": round(secs, 3), "clips_per_s": round(len(clips) / max(secs, 1e-9), 3)}
    windows = sorted((c for name, c in results.items() if name != "video"), key=lambda r: r[0]["start"])
    if windows:
        rows, probs_t = [], []
        for c, lg in windows:
            p = torch.softmax(lg, 0).numpy()
            probs_t.append(p)
            rows.append([f"{c['start']:.3f}", f"{c['end']:.3f}", c["first"] + 1, c["n"]]
                        + [v for t in top_k(p, classes, k) for v in (t["action"], f"{t['probability']:.6f}")])
        header = ["start_s", "end_s", "first_frame", "frames"] + \
            [h for r in range(1, k + 1) for h in (f"action_{r}", f"prob_{r}")]
        atomic_write_csv(os.path.join(out_dir, "timeline.csv"), header, rows)
        save_timeline([c["start"] for c, _ in windows], [c["end"] for c, _ in windows], np.stack(probs_t), classes,
                      os.path.join(out_dir, "timeline.png"),
                      title=f"{shown_name(args.video)}: {spec['name']}, {args.window:g} s windows every {stride:g} s")
        prediction.update(window_s=args.window, stride_s=stride, windows=len(windows))
    if with_cam:
        rgb, attn = cam["video"]
        name = top[0]["action"]
        save_cam_strip(rgb.permute(0, 2, 3, 1).numpy() / 255.0, cam_maps(attn, rgb.shape[-2:]),
                       os.path.join(out_dir, "cam.png"),
                       f"{shown_name(args.video)}  predicted: {name} ({top[0]['probability']:.2f})",
                       frame_labels=[f"frame {n}" for n in frame_numbers])
        if not windows:
            cam_video.add(0, cam_frames(rgb, attn, [f"frame {n}: {name} {top[0]['probability']:.2f}"
                                                    for n in frame_numbers]))
        cam_video.close()
    atomic_write_json(os.path.join(out_dir, "prediction.json"), prediction)

    print(format_table(top))
    if windows:
        print(f"{len(windows)} windows of {args.window:g} s every {stride:g} s: timeline.csv, timeline.png")
    print(f"{len(clips)} clip(s) in {secs:.1f} s: {len(clips) / max(secs, 1e-9):.2f} clips/s "
          f"({len(clips) / max(model_secs, 1e-9):.2f} clips/s in the model; the rest decoding"
          f"{' and flow' if method else ''}); results in {out_dir}")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
