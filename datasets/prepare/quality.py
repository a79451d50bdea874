"""Quality and speed of datasets.prepare's flow and motion maps, against the synthetic videos'
ground truth (synthetic data: not a GTEA-61 measurement).

    python -m datasets.prepare.synthetic --layout videos --outDir data/synthetic_videos
    python -m datasets.prepare.quality --data data/synthetic_videos [--videos 8] [--seed 1]
        [--methods farneback tvl1 tvl1-default] [--mapSizes 7 14 28] [--json PATH]

For each flow method, without and with the camera compensation (the warp), on every pair of
consecutive frames of `--videos` videos (spread evenly over the dataset), decoded exactly as
datasets.prepare decodes them (source size):
  bg |flow|   median flow magnitude on static pixels (not moving in the scene at frame k):
              the camera motion that is left (the true value is 0 with the warp; without it,
              the camera's step, `camera` in the table); `removed` = 1 - warp / no warp;
  EPE moving  mean end-point error on the moving pixels, against the true flow the output
              stands for: the scene flow (camera removed) with the warp, the seen flow without;
  EPE all     the same over every pixel;
  IoU full    motion map (datasets.prepare.warpflow.motion_map) > 0.4 against the true mask, pooled
              over all frames (intersection sum / union sum). The true mask is the
              generator's motion map > 0.4, as the loaders binarise it: the parts moving
              faster than 0.6 px per frame at 120 px;
  IoU s x s   both maps through the loaders' test transform (datasets.transforms.
              ClipTransform: resize, centre crop, s x s bilinear), then > 0.4: what the MS
              head is trained on;
  pos s x s   positive rate: the share of those s x s cells > 0.4 (the truth's share in
              the second table);
  H refused   frame pairs whose camera homography was refused (datasets.prepare.warpflow: not more
              than 50 matches or 25 RANSAC inliers; the identity is used), of all pairs;
  frames/s    video frames per second through datasets.prepare.warpflow.flows_and_maps, all of
              datasets.prepare's work except decoding and writing: per frame the flow, or
              flow + homography + warp + flow, plus the backward flow of the maps; one OpenCV
              thread; the methods run one after the other on each video, so a changing
              machine load touches them alike.
`tvl1-default` is OpenCV's DualTVL1 with its default parameters, `tvl1` the tuned setting
datasets.prepare uses (datasets.prepare.warpflow.TVL1_TUNED).
A second table compares the two kinds of motion maps of `datasets.prepare --maps` on the
compensated flow of each method: `flow` (datasets.prepare.warpflow.motion_map) and `idt` (trajectory
maps, datasets/prepare/trajectories.py), with the seconds per frame of the whole making (flow + maps)
and of the tracking alone.

    python -m datasets.prepare.quality --data DIR --flowScaleError 2

measures only the 8-bit writing of flow at the two --flowScale choices, on the true scene flow
of every video, for frames written at 1/FACTOR of the source's size: the mean end-point error
of the decoded flow, in written pixels, over all and over moving pixels, and the share of
pixels clipped at +-20 px.
"""
import json
import os
import sys
import time

import numpy as np

from datasets.prepare import warpflow
from datasets.transforms import MMAP_THRESHOLD, ClipTransform
from datasets.prepare.video import read_frames
from utils.cli import Parser

METHODS = {"farneback": lambda: warpflow.OpenCVFlow("farneback"),
           "tvl1": lambda: warpflow.OpenCVFlow("tvl1", warpflow.TVL1_TUNED),
           "tvl1-default": lambda: warpflow.OpenCVFlow("tvl1", warpflow.TVL1_DEFAULT)}


def videos_of(root, count, seed=0):
    """(user, class, instance) of `count` videos drawn without replacement (all if 0)."""
    vids = []
    base = os.path.join(root, "videos")
    for u in sorted(os.listdir(base)):
        for c in sorted(os.listdir(os.path.join(base, u))):
            for f in sorted(os.listdir(os.path.join(base, u, c))):
                if f.endswith(".mp4"):
                    vids.append((u, c, f[:-4]))
    if count and count < len(vids):
        vids = [vids[i] for i in sorted(np.random.default_rng(seed).choice(len(vids), count, replace=False))]
    return vids


def small_maps(maps, size):
    """uint8 maps (T, H, W) -> float (T, s, s) in [0, 1] through the loaders' test transform."""
    from PIL import Image
    t = ClipTransform(train=False, frameSize=224, mapSize=size, regression=True)
    return t.mmaps([Image.fromarray(m) for m in maps], None).numpy()


class Score:
    def __init__(self, sizes):
        self.bg, self.epe_mov, self.epe_all = [], [], []
        self.inter = {s: 0 for s in ["full", *sizes]}
        self.union = {s: 0 for s in ["full", *sizes]}
        self.pos = {s: 0 for s in ["full", *sizes]}        # predicted positive cells
        self.true_pos = {s: 0 for s in ["full", *sizes]}
        self.cells = {s: 0 for s in ["full", *sizes]}
        self.track_seconds = 0.0
        self.seconds, self.frames, self.pairs, self.refused = 0.0, 0, 0, 0

    def iou(self, key, pred, truth):
        self.inter[key] += int((pred & truth).sum())
        self.union[key] += int((pred | truth).sum())
        self.pos[key] += int(pred.sum())
        self.true_pos[key] += int(truth.sum())
        self.cells[key] += pred.size

    def result(self):
        bg = np.concatenate(self.bg)
        out = {"bg_median": float(np.median(bg)), "epe_moving": float(np.concatenate(self.epe_mov).mean()),
               "epe_all": float(np.mean(self.epe_all)), "fps": self.frames / self.seconds, "frames": self.frames,
               "pairs": self.pairs, "refused": self.refused, "track_s_per_frame": self.track_seconds / self.frames}
        for k in self.inter:
            out[f"iou_{k}"] = self.inter[k] / max(self.union[k], 1)
            out[f"pos_{k}"] = self.pos[k] / max(self.cells[k], 1)
            out[f"true_pos_{k}"] = self.true_pos[k] / max(self.cells[k], 1)
        return out


def measure(root, vids, methods, sizes, log=print):
    import cv2
    from PIL import Image
    cv2.setNumThreads(1)
    flows = {m: METHODS[m]() for m in methods}
    scores = {(m, w): Score(sizes) for m in methods for w in (False, True, "idt")}
    camera = []
    for vi, (u, c, i) in enumerate(vids):
        frames = list(read_frames(os.path.join(root, "videos", u, c, i + ".mp4")))
        folder = os.path.join(root, "truth", u, c, i)
        truth = np.load(os.path.join(folder, "truth.npz"))
        moving = truth["moving"]
        # the true mask: the generator's motion maps binarised as the loaders do
        true_maps = np.stack([np.asarray(Image.open(os.path.join(folder, f"map{k + 1:04d}.png")))
                              for k in range(len(frames))])
        true_mask = true_maps > MMAP_THRESHOLD * 255
        true_small = {s: small_maps(true_maps, s) > MMAP_THRESHOLD for s in sizes}
        for k in range(len(frames) - 1):
            camera.append(np.linalg.norm(truth["flow"][k][~moving[k]], axis=-1))
        for m in methods:  # one method after the other on each video (the timing is fair)
            for warp in (False, True, "idt"):  # "idt": with the warp, trajectory maps
                sc = scores[m, warp]
                t0 = time.perf_counter()
                stats = {}
                out = list(warpflow.flows_and_maps(frames, flows[m], bool(warp), stats=stats,
                                                   kind="idt" if warp == "idt" else "flow"))
                sc.seconds += time.perf_counter() - t0
                sc.track_seconds += stats.get("track_s", 0.0)
                sc.refused += stats["refused"]
                sc.frames += len(frames)
                sc.pairs += len(frames) - 1
                maps = np.stack([mm for _, _, _, mm in out])
                for k, _, flow, _ in out[:-1]:
                    true = truth["scene_flow"][k] if warp else truth["flow"][k]
                    err = np.linalg.norm(flow - true, axis=-1)
                    sc.bg.append(np.linalg.norm(flow[~moving[k]], axis=-1))
                    sc.epe_mov.append(err[moving[k]])
                    sc.epe_all.append(err.mean())
                sc.iou("full", maps > MMAP_THRESHOLD * 255, true_mask)
                for s in sizes:
                    sc.iou(s, small_maps(maps, s) > MMAP_THRESHOLD, true_small[s])
        log(f"  {vi + 1}/{len(vids)} videos", file=sys.stderr, flush=True)
    return {f"{m}{' + warp, idt maps' if w == 'idt' else ' + warp' if w else ''}": sc.result()
            for (m, w), sc in scores.items()}, \
        float(np.median(np.concatenate(camera)))


def flow_scale_error(root, factor):
    """{scale: (mean error all, mean error moving, clipped share)} of encode_flow at the two
    --flowScale choices, on the true scene flow (source pixels), frames 1/factor of the source."""
    err = {s: [0.0, 0.0, 0] for s in warpflow.FLOW_SCALES}
    n_all = n_moving = 0
    for u, c, i in videos_of(root, 0):
        truth = np.load(os.path.join(root, "truth", u, c, i, "truth.npz"))
        for flow, moving in zip(truth["scene_flow"].astype(np.float64), truth["moving"]):
            out = flow / factor  # the same motion in pixels of the written frames
            for scale, values, back in (("source", flow, factor), ("output", out, 1.0)):
                e = np.linalg.norm(warpflow.decode_flow(*warpflow.encode_flow(values)) / back - out, axis=-1)
                err[scale][0] += e.sum()
                err[scale][1] += e[moving].sum()
                err[scale][2] += int((np.abs(values) > warpflow.BOUND).any(-1).sum())
            n_all += moving.size
            n_moving += int(moving.sum())
    return {s: (a / n_all, m / max(n_moving, 1), c / n_all) for s, (a, m, c) in err.items()}


def table(results, camera, sizes):
    head = ["method", "bg |flow| (px)", "removed", "EPE moving (px)", "EPE all (px)", "IoU full",
            *[f"IoU {s}x{s}" for s in sizes], "frames/s", "H refused"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        if name.endswith("idt maps"):
            continue
        plain = results.get(name.replace(" + warp", ""))
        removed = f"{100 * (1 - r['bg_median'] / plain['bg_median']):.0f} %" if name.endswith("warp") else ""
        cells = [name, f"{r['bg_median']:.3f}", removed, f"{r['epe_moving']:.2f}", f"{r['epe_all']:.3f}",
                 f"{r['iou_full']:.3f}", *[f"{r[f'iou_{s}']:.3f}" for s in sizes], f"{r['fps']:.1f}",
                 f"{r['refused']}/{r['pairs']}" if name.endswith("warp") else ""]
        rows.append("| " + " | ".join(cells) + " |")
    rows.append(f"\ncamera: median true |flow| on static pixels without compensation {camera:.3f} px")
    return "\n".join(rows)


def maps_table(results, sizes):
    """flow maps against idt maps, each on the same compensated flow."""
    head = ["method", "maps", "IoU full", *[f"IoU {s}x{s}" for s in sizes], *[f"pos {s}x{s}" for s in sizes],
            "s/frame (flow + maps)", "s/frame (tracking)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    truth = None
    for name, r in results.items():
        if not name.endswith("warp") and not name.endswith("idt maps"):
            continue
        kind = "idt" if name.endswith("idt maps") else "flow"
        cells = [name.split(" + ")[0], kind, f"{r['iou_full']:.3f}", *[f"{r[f'iou_{s}']:.3f}" for s in sizes],
                 *[f"{r[f'pos_{s}']:.3f}" for s in sizes], f"{1 / r['fps']:.4f}",
                 f"{r['track_s_per_frame']:.4f}" if kind == "idt" else ""]
        rows.append("| " + " | ".join(cells) + " |")
        truth = r
    rows.append(f"| truth | | | {' | ' * (len(sizes) - 1)}| " + " | ".join(f"{truth[f'true_pos_{s}']:.3f}" for s in sizes)
                + " | | |")
    return "\n".join(rows)


def main(argv=None):
    ap = Parser(prog="python -m datasets.prepare.quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="python -m datasets.prepare.synthetic --layout videos output")
    ap.add_argument("--videos", type=int, default=8, help="videos measured, drawn at random (0: all)")
    ap.add_argument("--seed", type=int, default=1, help="which videos are drawn (the parameters of "
                    "datasets.prepare.warpflow were chosen on seed 0's)")
    ap.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=["farneback", "tvl1", "tvl1-default"],
                    help="flow methods measured, each without and with the warp")
    ap.add_argument("--mapSizes", type=int, nargs="+", default=[7, 14, 28],
                    help="motion-map sizes at which the IoU is measured (the loaders' resize)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--flowScaleError", type=float, default=None, metavar="FACTOR",
                    help="only the 8-bit error of --flowScale source / output for frames 1/FACTOR of the source")
    args = ap.parse_args(argv)
    if not os.path.isdir(os.path.join(args.data, "truth")):
        print(f"error: {args.data} is not a synthetic videos dataset (no truth/ folder): make one with "
              f"python -m datasets.prepare.synthetic --layout videos --outDir {args.data}", file=sys.stderr)
        return 2
    if args.flowScaleError:
        for scale, (a, m, c) in flow_scale_error(args.data, args.flowScaleError).items():
            print(f"--flowScale {scale}: mean |decoded - true| {a:.4f} written px, on moving pixels {m:.4f}; "
                  f"clipped {100 * c:.3f} % of pixels")
        return 0
    import cv2
    vids = videos_of(args.data, args.videos, args.seed)
    first = next(read_frames(os.path.join(args.data, "videos", *vids[0][:2], vids[0][2] + ".mp4")))
    print(f"{len(vids)} synthetic videos of {args.data}, {first.shape[1]}x{first.shape[0]}; OpenCV {cv2.__version__}, "
          "1 thread", file=sys.stderr)
    results, camera = measure(args.data, vids, args.methods, args.mapSizes)
    print(table(results, camera, args.mapSizes))
    print()
    print(maps_table(results, args.mapSizes))
    if "tvl1" in args.methods and "tvl1-default" in args.methods:
        for w in ("", " + warp"):
            a, b = results["tvl1" + w], results["tvl1-default" + w]
            print(f"tvl1{w}: {a['fps'] / b['fps']:.1f}x the default's speed, EPE moving "
                  f"{a['epe_moving'] - b['epe_moving']:+.3f} px, EPE all {a['epe_all'] - b['epe_all']:+.3f} px")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"videos": vids, "size": list(first.shape[1::-1]), "camera_bg_median": camera,
                       "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
