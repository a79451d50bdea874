"""Trajectory motion maps (`--maps idt`): the points of Improved Dense Trajectories (Wang &
Schmid, "Action Recognition with Improved Trajectories", ICCV 2013), the paper's MS targets.

    tracker = Tracker((h, w))
    for k in range(N - 1):
        done = tracker.step(rgb[k], flow[k], H[k])  # flow: compensated, frame k -> k+1
    done += tracker.finish()                        # done: [(frame index, uint8 map)], in order
    for k, rgb, flow, mmap in idt_frames(pairs): ...  # what datasets.prepare.warpflow.flows_and_maps uses

Each step, as IDT does it (its parameter names in brackets):
  1. Dense sampling. Frame k is scaled by 1/sqrt(2) again and again [scale_stride], up to
     8 scales [scale_num] while the short side stays >= 32 px [patch_size]. On each scale a
     grid of one point per 5 x 5 px cell [min_distance], at the cell's centre, in the cells
     that hold no tracked point yet (on frame 0: all of them). A point is not sampled in a
     homogeneous area: where the smaller eigenvalue of the autocorrelation matrix (3 x 3,
     cv2.cornerMinEigenVal) is not above 0.001 x its largest value on the frame [quality]
     (nothing can be tracked on a plain surface; a frame without texture gets no point).
  2. Tracking. A point P of frame k moves by the camera-compensated flow of frame k
     (datasets.prepare.warpflow.warp_flow: the motion relative to the scene), median-filtered 3 x 3
     and read at the point's rounded position on its own scale, and then by the camera's
     homography H (scene point of frame k -> frame k+1): P' = H (P + f(P)). IDT tracks with
     the plain flow and measures each step with the compensated one; with the compensated
     flow and H both known this is the same thing, and P' is where the point is seen in frame
     k+1, so its marks lie on the thing it follows. A point leaving the frame ends its
     trajectory, which is dropped (as in IDT).
  3. A trajectory ends after L = 15 steps [track_length] (16 points, frames k .. k+15); its
     cell is free and gets a new point on the next frame.
  4. Removal, on the compensated steps d_1 .. d_L (in pixels of the frame):
     static:  max |d_i| <= 1/240 of the frame's short side (IDT: 1 px at its 240-320 px
              frames; relative here so the maps do not change with the resolution, as
              datasets.prepare.warpflow's MOVING): the point moved with the camera, not in the scene;
     erratic: max |d_i| > 70 % of sum |d_i| and > 1/12 of the short side (IDT: 20 px
              [max_dis]): one large jump is a tracking error, not a motion.
     IDT's further rules on the spread of the positions (std of both coordinates below
     sqrt(3) px: static; of either above 50 px: random) are left out: the positions include
     the camera's motion, and the compensated steps above are what separates the scene's
     motion from it.
  5. Marks. Every point of a surviving trajectory marks its frame: a disk of MARK = 2 px
     radius around it, 5 px across as the grid's step, so the points of a moving region tile
     it and the loaders' resize to 7 x 7 or 14 x 14 and 0.4 threshold sees a region, not dots
     (on 4 synthetic videos, seed 0 of datasets.prepare.quality, radius 2 gave a 7 x 7 IoU
     of 0.40, radius 3 0.29, radius 1 0.04: single dots vanish in the resize). Maps are 0 or
     255, one per frame, as datasets.prepare.warpflow's.
At the end of a video the trajectories it cut short are judged by the same rules (IDT drops
them; here the last 15 frames would otherwise be marked only by the few trajectories that
started exactly 15 frames before the end).
A frame's map is final once every trajectory that may pass it has ended, 15 frames later:
`step` returns the maps that became final, `idt_frames` delays the frames to match.
"""
import collections
import math

import numpy as np

STEP = 5                    # grid cell (px at each scale) [min_distance]
SCALE = 1 / math.sqrt(2)    # between scales [scale_stride]
MAX_SCALES = 8              # [scale_num]
MIN_SIDE = 32               # smallest scale's short side [patch_size]
QUALITY = 0.001             # homogeneous: min eigenvalue <= QUALITY x its max [quality]
L = 15                      # trajectory length in steps [track_length]
MIN_STEP = 1.0 / 240        # static: largest compensated step <= this x short side (IDT 1 px)
MAX_JUMP = 1.0 / 12         # erratic: a step above this x short side (IDT 20 px) ...
ERRATIC = 0.7               # ... and above this share of the trajectory's length
MARK = 2                    # disk radius (px) drawn around each kept point


def _cv2():
    import cv2
    return cv2


def scales(h, w):
    """Scale factors 1, 1/sqrt(2), ... while the short side stays >= MIN_SIDE (at least one)."""
    n, side = 0, min(h, w)
    while side >= MIN_SIDE and n < MAX_SCALES:
        side *= SCALE
        n += 1
    return [SCALE ** i for i in range(max(n, 1))]


def keep(steps):
    """Boolean per trajectory: not static, not erratic. steps: (n, m) lengths |d_i| in units
    of the frame's short side (zero-padded beyond a trajectory's end)."""
    largest, total = steps.max(1), steps.sum(1)
    static = largest <= MIN_STEP
    erratic = (largest > ERRATIC * total) & (largest > MAX_JUMP)
    return ~static & ~erratic


class _Scale:
    """The live trajectories of one scale: positions in pixels of the full frame."""

    def __init__(self, c, h, w):
        self.c = c
        self.size = (max(1, round(w * c)), max(1, round(h * c)))  # (w, h) of this scale
        self.pos = np.zeros((0, L + 1, 2), np.float32)   # points, frame start .. start+age
        self.steps = np.zeros((0, L), np.float32)         # compensated step lengths (px)
        self.start = np.zeros(0, np.int64)
        self.age = np.zeros(0, np.int64)

    def to_scale(self, p):  # full-frame pixel coordinates -> this scale's (pixel centres)
        return (p + 0.5) * self.c - 0.5

    def from_scale(self, p):
        return (p + 0.5) / self.c - 0.5

    def take(self, idx):
        self.pos, self.steps, self.start, self.age = self.pos[idx], self.steps[idx], self.start[idx], self.age[idx]


class Tracker:
    """Dense trajectories of one video, fed frame after frame (module docstring)."""

    def __init__(self, shape, keep_tracks=False):
        self.h, self.w = shape[:2]
        self.short = min(self.h, self.w)
        self.scales = [_Scale(c, self.h, self.w) for c in scales(self.h, self.w)]
        self.t = 0                      # frame the live points are on
        self.marks = {}                 # frame -> 0/1 uint8 points mask, until final
        self.emitted = 0                # frames whose map was returned
        self.kept = [] if keep_tracks else None  # (start, (m+1, 2) points) of each kept trajectory

    def _sample(self, grey):
        """New points on frame self.t in the empty cells of every scale (step 1)."""
        cv2 = _cv2()
        for s in self.scales:
            g = grey if s.c == 1 else cv2.resize(grey, s.size, interpolation=cv2.INTER_AREA)
            eig = cv2.cornerMinEigenVal(g, 3, 3)
            cw, ch = s.size[0] // STEP, s.size[1] // STEP
            if cw == 0 or ch == 0:
                continue
            taken = np.zeros((ch, cw), bool)
            if len(s.age):
                p = np.floor(s.to_scale(s.pos[np.arange(len(s.age)), s.age])).astype(np.int64) // STEP
                inside = (p[:, 0] >= 0) & (p[:, 0] < cw) & (p[:, 1] >= 0) & (p[:, 1] < ch)
                taken[p[inside, 1], p[inside, 0]] = True
            ys, xs = np.mgrid[0:ch, 0:cw] * STEP + STEP // 2
            new = ~taken & (eig[ys, xs] > QUALITY * eig.max())
            if not new.any():
                continue
            p = s.from_scale(np.stack([xs[new], ys[new]], 1).astype(np.float32))
            pos = np.zeros((len(p), L + 1, 2), np.float32)
            pos[:, 0] = p
            s.pos = np.concatenate([s.pos, pos])
            s.steps = np.concatenate([s.steps, np.zeros((len(p), L), np.float32)])
            s.start = np.concatenate([s.start, np.full(len(p), self.t)])
            s.age = np.concatenate([s.age, np.zeros(len(p), np.int64)])

    def _judge(self, s, idx):
        """Mark the trajectories idx of scale s that survive the rules (step 4, 5)."""
        if not len(idx):
            return
        ok = idx[keep(s.steps[idx] / self.short)]
        if self.kept is not None:
            self.kept += [(int(s.start[j]), s.pos[j, :s.age[j] + 1].copy()) for j in ok]
        pts = np.rint(s.pos[ok]).astype(np.int64)                       # (n, L+1, 2)
        frame = s.start[ok, None] + np.arange(L + 1)                    # (n, L+1)
        use = (np.arange(L + 1) <= s.age[ok, None]) & (pts[..., 0] >= 0) & (pts[..., 0] < self.w) \
            & (pts[..., 1] >= 0) & (pts[..., 1] < self.h)
        frame, x, y = frame[use], pts[..., 0][use], pts[..., 1][use]
        for f in np.unique(frame):
            self.marks[f][y[frame == f], x[frame == f]] = 1

    def step(self, rgb, flow, H):
        """Sample on frame t (rgb), track to t+1 through the compensated flow (H, W, 2) of frame
        t and the homography H; returns the maps that became final [(k, map)]."""
        cv2 = _cv2()
        self.marks.setdefault(self.t, np.zeros((self.h, self.w), np.uint8))
        self.marks.setdefault(self.t + 1, np.zeros((self.h, self.w), np.uint8))
        self._sample(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY))
        flow = np.ascontiguousarray(flow, np.float32)
        H = np.asarray(H, np.float64)
        for s in self.scales:
            n = len(s.age)
            if not n:
                continue
            # step 2: the median-filtered compensated flow of this scale, in its pixels
            f = flow if s.c == 1 else cv2.resize(flow, s.size, interpolation=cv2.INTER_AREA) * np.float32(s.c)
            f = cv2.medianBlur(f, 3)
            rows = np.arange(n)
            p = s.pos[rows, s.age]
            q = s.to_scale(p)
            xi = np.clip(np.rint(q[:, 0]).astype(np.int64), 0, s.size[0] - 1)
            yi = np.clip(np.rint(q[:, 1]).astype(np.int64), 0, s.size[1] - 1)
            d = f[yi, xi] / np.float32(s.c)          # compensated step in full-frame pixels
            m = p + d
            den = H[2, 0] * m[:, 0] + H[2, 1] * m[:, 1] + H[2, 2]
            nxt = np.stack([(H[0, 0] * m[:, 0] + H[0, 1] * m[:, 1] + H[0, 2]) / den,
                            (H[1, 0] * m[:, 0] + H[1, 1] * m[:, 1] + H[1, 2]) / den], 1).astype(np.float32)
            out = ~((nxt[:, 0] >= -0.5) & (nxt[:, 0] < self.w - 0.5) & (nxt[:, 1] >= -0.5) & (nxt[:, 1] < self.h - 0.5))
            s.steps[rows, s.age] = np.linalg.norm(d, axis=1)
            s.age = s.age + 1
            s.pos[rows, s.age] = nxt
            s.take(~out)  # left the frame: dropped
            ended = np.flatnonzero(s.age == L)  # step 3
            self._judge(s, ended)
            s.take(s.age < L)
        self.t += 1
        # every trajectory passing frame t+1-L has ended (the live ones started after it)
        return self._final(self.t - L)

    def finish(self):
        """End of the video: judge the trajectories it cut short; returns the remaining maps."""
        self.marks.setdefault(self.t, np.zeros((self.h, self.w), np.uint8))
        for s in self.scales:
            self._judge(s, np.flatnonzero(s.age > 0))
            s.take(np.zeros(len(s.age), bool))
        return self._final(self.t)

    def _final(self, last):
        cv2 = _cv2()
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * MARK + 1, 2 * MARK + 1))
        out = []
        while self.emitted <= last:
            m = self.marks.pop(self.emitted)
            out.append((self.emitted, cv2.dilate(m, kernel) * np.uint8(255)))
            self.emitted += 1
        return out


def idt_frames(pairs, keep_flow=True, stats=None):
    """(k, rgb_k, flow_k, map_k) in order from datasets.prepare.warpflow's frame pairs
    (rgb_k, rgb_k+1, compensated flow_k, H_k, valid_k; the last frame with None after it),
    each frame held back until its map is final. stats["track_s"]: seconds spent tracking."""
    import time
    tracker, held = None, collections.deque()
    for k, (rgb, nxt, flow, H, _) in enumerate(pairs):
        if tracker is None:
            tracker = Tracker(rgb.shape)
        held.append((k, rgb, flow if keep_flow else None))
        t0 = time.perf_counter()
        done = tracker.step(rgb, flow, H) if nxt is not None else tracker.finish()
        if stats is not None:
            stats["track_s"] = stats.get("track_s", 0.0) + time.perf_counter() - t0
        for j, m in done:
            k0, rgb0, f0 = held.popleft()
            assert k0 == j
            yield k0, rgb0, f0, m
