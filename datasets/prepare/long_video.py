"""A long synthetic recording: actions of the synthetic generator one after another, in one
video file, with the truth of what happens when (for predict.py's sliding windows and its speed).

    python -m datasets.prepare.long_video --out data/long_synthetic.mp4 [--seconds 60] [--fps 30]
        [--size 320x240] [--actionSeconds 5] [--classes 8] [--user 1] [--seed 0]

Writes the video (H.264) and, beside it, <name>.csv: start_s, end_s, action of every segment.
Each segment is datasets.prepare.synthetic.render_video of the next class (cycling through the
generator's first --classes classes in its order: take_cup, put_cup, open_box, ...) for
--actionSeconds, rendered at --fps; user index 1 is S2, the generator's test user. Synthetic
data: not a GTEA-61 recording.
"""
import os
import sys

from datasets.prepare.synthetic import class_names, render_video
from datasets.prepare.video import VideoWriter
from utils.cli import Parser
from utils.io import atomic_write_csv


def write_long_video(path, seconds=60, fps=30, size=(320, 240), action_seconds=5, classes=8, user=1, seed=0):
    """Write the recording to `path`; returns [(start_s, end_s, action)]."""
    names = class_names(classes)
    per_action = max(1, round(action_seconds * fps))
    total = round(seconds * fps)
    segments, done, k = [], 0, 0
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), "." + os.path.basename(path) + ".tmp" +
                       os.path.splitext(path)[1])
    with VideoWriter(tmp, fps) as w:
        while done < total:
            n = min(per_action, total - done)
            cls = names[k % len(names)]
            # one segment at a time: render_video keeps the whole segment (and its flow) in memory
            for rgb in render_video(cls, user, max(n, 2), size, seed, instance=k + 1)["rgb"][:n]:
                w.write(rgb)
            segments.append((done / fps, (done + n) / fps, cls))
            done, k = done + n, k + 1
    os.replace(tmp, path)
    return segments


def main(argv=None):
    ap = Parser(prog="python -m datasets.prepare.long_video", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="video file to write (.mp4)")
    ap.add_argument("--seconds", type=float, default=60, help="length of the video")
    ap.add_argument("--fps", type=float, default=30, help="frames per second")
    ap.add_argument("--size", default="320x240", help="WxH, even numbers (H.264)")
    ap.add_argument("--actionSeconds", type=float, default=5, help="length of each action")
    ap.add_argument("--classes", type=int, default=8, help="cycle through the generator's first N classes")
    ap.add_argument("--user", type=int, default=1, help="user index of the look (1: S2, the test user)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the scene and the motions")
    args = ap.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        ap.exit(2, f"error: --size {args.size}: expected WxH, e.g. 320x240\n")
    if w % 2 or h % 2 or w < 16 or h < 16:
        ap.exit(2, f"error: --size {args.size}: width and height must be even and at least 16 (H.264)\n")
    if args.seconds <= 0 or args.fps <= 0 or args.actionSeconds <= 0 or args.classes < 1:
        ap.exit(2, "error: --seconds, --fps, --actionSeconds and --classes must be positive\n")
    segments = write_long_video(args.out, args.seconds, args.fps, (w, h), args.actionSeconds, args.classes,
                                args.user, args.seed)
    truth = os.path.splitext(args.out)[0] + ".csv"
    atomic_write_csv(truth, ["start_s", "end_s", "action"], [[f"{a:.3f}", f"{b:.3f}", c] for a, b, c in segments])
    print(f"{args.out}: {args.seconds:g} s at {args.fps:g} fps, {w}x{h}, {len(segments)} actions "
          f"(synthetic); truth in {truth}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
