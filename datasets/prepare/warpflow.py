"""Camera-compensated ("warp") optical flow and motion maps, as Ego-RNN's inputs were made.

    method = flow_method("tvl1")                   # or "farneback", "raft"
    flow, H, valid = warp_flow(prev, cur, method)  # (H, W, 2) float32 pixels, homography, mask
    x, y = encode_flow(flow)                       # two uint8 images, 128 = zero, +-20 px
    for k, rgb, flow, mmap in flows_and_maps(frames, method): ...   # a whole video

Warp flow (dense_flow's warp tool, docs/design.md §9): the flow from `prev` to `cur`; a
homography of the camera motion fitted with RANSAC to matches made of a grid of flow samples
plus ORB keypoint matches; `cur` warped back by it onto `prev`; the flow again. What is left
is the motion of things relative to the scene. Keypoints alone are not enough: on low-texture
frames (a table, a wall, the synthetic scenes) ORB finds few points and many of them on the
moving hand, so the fit can follow the hand; the flow grid covers the whole frame, where the
background is the majority that RANSAC keeps.

The warp follows dense_flow's warp tool: the homography is used only when there are more than
MIN_MATCHES matches and more than MIN_INLIERS of them are RANSAC inliers (else the identity:
no compensation, counted by `flows_and_maps`); pixels of the warped frame whose source lies
outside the frame take the previous frame's pixels, so their flow is zero, and the written flow
is set to zero there. Where we differ on purpose (docs/deviations.md, with the measured effects):
the matches are a grid of flow samples plus ORB keypoint matches between the two frames
(dense_flow: SURF matches against the video's first frame, and flow samples read with a wrong
vertical component); and dense_flow also fills a 5 px band inside the frame's edges from the
previous frame, which erases the motion of hands entering the frame there; we fill only the
pixels whose source is outside.

Encoding (dense_flow's exactly): each axis clipped to +-20 px and mapped linearly,
v = round(255 * (f + 20) / 40), so zero motion is 127.5, written 128, and one level is
0.157 px. The loaders' horizontal flip 255 - v is then exactly the flow -f.
`decode_flow` inverts it: f = 40 v / 255 - 20 (128 -> +0.078 px, half a level).

Motion maps (`motion_map`, `flows_and_maps`): a pixel of frame k moves when its compensated
flow exceeds MOVING (1/240 of the frame's short side per frame: 0.5 px at 160x120, 1 px at
320x240, so the maps do not change with the resolution) both towards frame k+1 and back towards frame k-1
(one of them at the ends of a video). Why both: where an object moves over a plain surface,
the surface it is about to cover has no match in the next frame, and flow methods give it the
object's motion, a band as wide as the step in front of the object; towards the previous
frame the same happens behind it, so the band shows in only one of the two. Then the mask is
smoothed by a guided filter with the frame as guide (radius 8 px at a 120 px short side), so
its edges follow the image's, and cut at 0.5: maps are 0 or 255 (the loaders resize them to
the map size and binarise at datasets/transforms.py's MMAP_THRESHOLD, which then decides only at
the edges of moving regions). Pixels the warp brings in from outside the frame are 0. 0.5 px at
120 px is above what the camera compensation leaves on the static background (median 0.07 px
on the synthetic videos) and below the hands' motion; 1/240 gave higher IoU than 1/120 at
both 160x120 and 320x240 (docs/benchmarks.md); datasets/prepare/quality.py measures the maps
against ground truth.

Trajectory maps (kind "idt", `--maps idt`, datasets.prepare's default): the points of improved dense trajectories tracked
through the forward compensated flow and the homography (datasets/prepare/trajectories.py); no backward
flow is needed.
"""
import os

import numpy as np

from datasets.prepare import trajectories

BOUND = 20.0
FLOW_LEVELS = 255.0 / (2 * BOUND)  # 8-bit levels per pixel of flow
MOVING = 1.0 / 240  # compensated flow above this fraction of the short side per frame is motion
GUIDE_RADIUS = 8    # guided filter radius in px at a 120 px short side (scaled with the frame)
GUIDE_EPS = 1e-2    # guided filter regularisation (colours in 0..1)
METHODS = ("tvl1", "farneback", "raft")

# OpenCV's DualTVL1 defaults, and the faster setting used here (datasets/prepare/quality.py
# measures both: speed and end-point error against the synthetic videos' true flow).
TVL1_DEFAULT = dict(tau=0.25, lambda_=0.15, theta=0.3, nscales=5, warps=5, epsilon=0.01,
                    innnerIterations=30, outerIterations=10, scaleStep=0.8, gamma=0.0,
                    medianFiltering=5)
# Fewer, coarser steps: the scales halve (scaleStep 0.5: the 5th is 1/16 of the frame, where
# the default 0.8 stops at 0.41, and fast hands need the coarse levels), 3 warps, 10 x 2
# iterations, epsilon 0.02. Chosen among about 30 settings on synthetic videos for speed,
# end-point error and motion-map IoU (docs/benchmarks.md, "Video preparation").
TVL1_TUNED = dict(TVL1_DEFAULT, nscales=5, warps=3, epsilon=0.02, innnerIterations=10,
                  outerIterations=2, scaleStep=0.5)
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def _cv2():
    import cv2
    return cv2


def encode_flow(flow):
    """(H, W, 2) float flow in pixels -> (x, y) uint8 images: round(255 (clip(f) + 20) / 40),
    dense_flow's mapping (zero motion 127.5 -> 128)."""
    f = np.clip(np.asarray(flow, np.float64), -BOUND, BOUND)
    v = np.rint((f + BOUND) * FLOW_LEVELS).astype(np.uint8)
    return np.ascontiguousarray(v[..., 0]), np.ascontiguousarray(v[..., 1])


def decode_flow(x, y):
    """Inverse of encode_flow (up to the rounding): (H, W, 2) float32 pixels."""
    return np.stack([x, y], -1).astype(np.float32) / np.float32(FLOW_LEVELS) - np.float32(BOUND)


FLOW_SCALES = ("source", "output")


def flow_factor(flow_scale, sizes):
    """What flow in pixels of the frames it was computed on is multiplied by before it is
    written: 1 for "output"; source short side / output short side for "source" (dense_flow
    computed flow on the frames as decoded, so its values are in the source's pixels). sizes:
    datasets.prepare.video.resized's."""
    if flow_scale == "output" or not sizes:
        return 1.0
    if flow_scale != "source":
        raise ValueError(f"flow scale must be one of {', '.join(FLOW_SCALES)}, got {flow_scale!r}")
    return min(sizes["sourceSize"]) / min(sizes["outputSize"])


def gray(rgb):
    return _cv2().cvtColor(np.ascontiguousarray(rgb), _cv2().COLOR_RGB2GRAY)


# ---- flow methods --------------------------------------------------------------------------
class OpenCVFlow:
    """TV-L1 or Farneback on grey frames (one OpenCV thread: preparation runs one process per
    core instead)."""

    def __init__(self, name, params=None):
        cv2 = _cv2()
        self.name = name
        if name == "tvl1":
            p = dict(TVL1_TUNED if params is None else params)
            self._tvl1 = cv2.optflow.DualTVL1OpticalFlow_create(**p)
            self.params = p
        elif name == "farneback":
            self.params = dict(FARNEBACK if params is None else params)
        else:
            raise ValueError(name)

    def __call__(self, prev_rgb, cur_rgb):
        a, b = gray(prev_rgb), gray(cur_rgb)
        if self.name == "tvl1":
            return self._tvl1.calc(a, b, None)
        return _cv2().calcOpticalFlowFarneback(a, b, None, **self.params)


RAFT_FILES = {"raft_large": "raft_large_C_T_SKHT_V2-ff5fadd5.pth", "raft_small": "raft_small_C_T_V2-01064c6d.pth"}


class RaftWeightsError(Exception):
    """RAFT weights that cannot be found or loaded (one line)."""


def find_raft_weights(path=None):
    """The RAFT weights file: `path`, else torchvision's file names in the torch hub cache."""
    if path:
        if not os.path.isfile(path):
            raise RaftWeightsError(f"--raftWeights {path}: no such file (give a torchvision RAFT state dict)")
        return path
    import torch
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    for name in RAFT_FILES.values():
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    raise RaftWeightsError(
        f"--flow raft needs torchvision's RAFT weights: none in {folder} (expected "
        f"{RAFT_FILES['raft_large']} or {RAFT_FILES['raft_small']}); copy one there or pass "
        "--raftWeights PATH, or use --flow tvl1")


class RaftFlow:
    """torchvision's RAFT (large or small, whichever the weights are) on the GPU if there is one."""
    name = "raft"

    def __init__(self, weights=None, device=None):
        import torch
        from torchvision.models.optical_flow import raft_large, raft_small
        path = find_raft_weights(weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
            raise RaftWeightsError(f"cannot read RAFT weights {path}: {str(e).splitlines()[0][:160]}") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        for build in (raft_large, raft_small):
            model = build(weights=None)
            try:
                model.load_state_dict(state)
                break
            except (RuntimeError, TypeError, AttributeError):
                model = None
        if model is None:
            raise RaftWeightsError(f"{path} holds neither torchvision's raft_large nor raft_small weights")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.eval().to(self.device)
        self.torch = torch

    def __call__(self, prev_rgb, cur_rgb):
        torch = self.torch
        h, w = prev_rgb.shape[:2]
        # RAFT needs sizes divisible by 8 and at least 128 (its correlation pyramid)
        ph, pw = max(-h % 8, 128 - h), max(-w % 8, 128 - w)

        def prep(rgb):
            t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
            t = t.to(self.device) / 127.5 - 1.0
            return torch.nn.functional.pad(t, (0, pw, 0, ph), mode="replicate")

        with torch.inference_mode():
            flow = self.model(prep(prev_rgb), prep(cur_rgb), num_flow_updates=12)[-1]
        return flow[0, :, :h, :w].permute(1, 2, 0).float().cpu().numpy()


def flow_method(name, raft_weights=None, tvl1_params=None):
    if name == "raft":
        return RaftFlow(raft_weights)
    if name in ("tvl1", "farneback"):
        return OpenCVFlow(name, tvl1_params if name == "tvl1" else None)
    raise ValueError(f"flow method must be one of {', '.join(METHODS)}, got {name!r}")


# ---- camera motion ---------------------------------------------------------------------------
GRID = 16          # flow samples: one every GRID/2 .. GRID px (about 300 on a 320x240 frame)
RANSAC_PX = 1.0    # reprojection error of an inlier
MIN_MATCHES = 50   # dense_flow: a homography only from more than 50 matches ...
MIN_INLIERS = 25   # ... of which more than 25 RANSAC inliers, else the identity


def _orb_matches(a, b, n=1000):
    cv2 = _cv2()
    orb = cv2.ORB_create(nfeatures=n)
    ka, da = orb.detectAndCompute(a, None)
    kb, db = orb.detectAndCompute(b, None)
    if da is None or db is None or len(ka) < 4 or len(kb) < 4:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(da, db)
    src = np.float32([ka[m.queryIdx].pt for m in matches]).reshape(-1, 2)
    dst = np.float32([kb[m.trainIdx].pt for m in matches]).reshape(-1, 2)
    return src, dst


def camera_homography(prev_rgb, cur_rgb, flow, keypoints=True):
    """(H, ok): the 3x3 homography H mapping a pixel of `prev` to where the static scene shows
    it in `cur`; the identity and ok=False when the fit is refused (too few matches or inliers,
    or degenerate)."""
    cv2 = _cv2()
    h, w = flow.shape[:2]
    step = max(4, min(GRID, min(h, w) // 12))
    ys, xs = np.mgrid[step // 2:h:step, step // 2:w:step]
    src = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32)
    dst = src + flow[ys.ravel(), xs.ravel()]
    if keypoints:
        ks, kd = _orb_matches(gray(prev_rgb), gray(cur_rgb))
        src, dst = np.concatenate([src, ks]), np.concatenate([dst, kd])
    if len(src) <= MIN_MATCHES:
        return np.eye(3), False
    H, inliers = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_PX, maxIters=2000, confidence=0.995)
    if H is None or int(inliers.sum()) <= MIN_INLIERS or not np.all(np.isfinite(H)) \
            or abs(np.linalg.det(H[:2, :2]) - 1) > 0.5:
        return np.eye(3), False  # weak or degenerate fit: better no compensation than a wild one
    return H, True


def _inside(H, w, h):
    """Pixels x whose H x lies inside a w x h frame."""
    cv2 = _cv2()
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    p = cv2.perspectiveTransform(np.stack([xs, ys], -1).reshape(-1, 1, 2), H).reshape(h, w, 2)
    return (p[..., 0] >= 0) & (p[..., 0] <= w - 1) & (p[..., 1] >= 0) & (p[..., 1] <= h - 1)


def warp_onto(img, H, base):
    """(out, valid): img seen through the homography H, out(x) = img(H x), where H x lies inside
    the frame (`valid`), and `base`'s pixels elsewhere (dense_flow: no stretched edge stripes,
    and zero flow there)."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    out = cv2.warpPerspective(img, H, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)
    valid = _inside(H, w, h)
    out[~valid] = base[~valid]
    return out, valid


def warp_flow(prev_rgb, cur_rgb, method, warp=True, keypoints=True):
    """(flow, H, valid, ok): the camera-compensated flow from prev to cur (plain flow and the
    identity when warp=False), zero where the warp had no source (~valid); ok=False when the
    homography was refused (the identity is used)."""
    flow = method(prev_rgb, cur_rgb)
    h, w = flow.shape[:2]
    if not warp:
        return flow, np.eye(3), np.ones((h, w), bool), True
    H, ok = camera_homography(prev_rgb, cur_rgb, flow, keypoints)
    if not ok:
        return flow, H, np.ones((h, w), bool), False
    # cur_w(x) = cur(H x): the second frame seen from the first frame's camera
    cur_w, valid = warp_onto(cur_rgb, H, prev_rgb)
    flow = method(prev_rgb, cur_w)
    flow[~valid] = 0
    return flow, H, valid, True


def backward_flow(prev_rgb, cur_rgb, method, H):
    """(flow, valid): the compensated flow from cur back to prev, with prev seen from cur's
    camera (H from warp_flow; the identity gives plain backward flow)."""
    h, w = cur_rgb.shape[:2]
    Hi = np.linalg.inv(H)
    if np.allclose(Hi, np.eye(3)):
        return method(cur_rgb, prev_rgb), np.ones((h, w), bool)
    prev_w, valid = warp_onto(prev_rgb, Hi, cur_rgb)
    flow = method(cur_rgb, prev_w)
    flow[~valid] = 0
    return flow, valid


def motion_map(rgb, flows, valids=()):
    """uint8 motion map of a frame (0 or 255) from its compensated flows: forward (to the next
    frame) and backward (to the previous one), whichever exist (see the module docstring)."""
    cv2 = _cv2()
    speed = np.min([np.sqrt((f.astype(np.float32) ** 2).sum(-1)) for f in flows], axis=0)
    h, w = speed.shape
    moving = (speed > MOVING * min(h, w)).astype(np.float32)
    for v in valids:
        moving[~v] = 0
    radius = max(1, round(GUIDE_RADIUS * min(h, w) / 120))
    smooth = cv2.ximgproc.guidedFilter(np.ascontiguousarray(rgb, np.float32) / 255, moving, radius, GUIDE_EPS)
    return np.where(smooth > 0.5, 255, 0).astype(np.uint8)


MAPS = ("flow", "idt")  # motion maps from the compensated flow, or trajectory maps (datasets/prepare/trajectories.py)


def _pairs(frames, method, warp, stats):
    """(rgb_k, rgb_k+1, flow_k, H_k, valid_k) for each frame k, the compensated flow from k to
    k+1 with its homography and mask (warp_flow); the last frame with Nones after it."""
    prev = None
    for rgb in frames:
        if prev is not None:
            fwd, H, valid, ok = warp_flow(prev, rgb, method, warp)
            if stats is not None and not ok:
                stats["refused"] += 1
            yield prev, rgb, fwd, H, valid
        prev = rgb
    if prev is not None:
        yield prev, None, None, None, None


def flows_and_maps(frames, method, warp=True, flow=True, maps=True, stats=None, kind="flow"):
    """Run over a video's frames once. Yields (k, rgb_k, flow_k, map_k) for k = 0 .. N-1 in
    order, one frame behind the input (map k needs frame k+1; kind "idt": up to 16 frames
    behind, datasets/prepare/trajectories.py): flow_k is the (compensated) flow from frame k to k+1
    (None for the last frame or when flow=False), map_k the motion map of frame k (None when
    maps=False): `motion_map` (kind "flow") or the trajectory map (kind "idt").
    stats["refused"] (if a dict is given) counts the frame pairs whose homography was refused."""
    if kind not in MAPS:
        raise ValueError(f"maps must be one of {', '.join(MAPS)}, got {kind!r}")
    if stats is not None:
        stats.setdefault("refused", 0)
    pairs = _pairs(frames, method, warp, stats)
    if maps and kind == "idt":
        yield from trajectories.idt_frames(pairs, flow, stats)
        return
    back = back_valid = None
    for k, (prev, rgb, fwd, H, valid) in enumerate(pairs):
        m = None
        if maps and rgb is None:  # the last frame: backward flow only
            m = (motion_map(prev, [back], [back_valid]) if back is not None
                 else np.zeros(prev.shape[:2], np.uint8))
        elif maps:
            fl, vs = [fwd], [valid]
            if back is not None:
                fl.append(back)
                vs.append(back_valid)
            m = motion_map(prev, fl, vs)
            back, back_valid = backward_flow(prev, rgb, method, H)
        yield k, prev, fwd if flow else None, m
