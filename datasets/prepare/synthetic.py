"""Synthetic GTEA-61-like dataset, written in the real on-disk layouts.

    python -m datasets.prepare.synthetic --outDir DIR [--layout course|egornn|videos|egtea|gtea61raw] [--classes N]
        [--instances K] [--users S1 S2 S3 S4] [--seed S] [--size WxH] [--ifMissing]
        [--noShort] [--noQuirks] [--fps F] [--firstFrame 0|1]

What is in a video (all sizes scale with the frame height; defaults 160x120, 3 instances per
class and user, 4 users, 8 classes, lengths 10..28 frames):
  * a table seen from above: a tiled tablecloth and a few grey clutter blobs, with a per-user
    colour, tile contrast, brightness and skin tone (the test user is a mild domain shift);
  * an egocentric camera: the whole scene drifts and jitters by a few pixels every frame;
  * one large, high-contrast object whose NOUN sets its colour, shape and texture
    (cup: red disc with a dark rim; box: blue square; jam: orange striped jar; bread: brown
    dotted loaf; tea: green triangle; sugar: white/grey chequered box; spoon: grey bar) with a
    darker lid on top;
  * a skin-coloured hand (and forearm, entering from the bottom) that moves with the object;
  * the VERB sets the motion: take = hand reaches the object then carries it towards the
    camera (down-right); put = take played backwards; open = hand lifts the lid up and away;
    close = open backwards; push = object pushed to the right; pull = push backwards;
    stir = spoon circling in the cup. take/put, open/close and push/pull are exact time
    reversals: a single frame cannot tell them apart, only the frame order can.
Outputs per video, consistent with each other:
  * RGB frames;
  * motion maps (course layout only): 255 * min(1, speed / (1.5 px per frame at 120 px
    height)) on the pixels of the parts that move relative to the SCENE (object, lid, spoon,
    hand); the camera motion is not marked;
  * flow_x / flow_y between frames k and k+1 (so one image fewer than RGB), 8-bit as
    dense_flow wrote GTEA-61's: round(255 (clip(d, -20, 20) + 20) / 40) for a displacement d in
    pixels (0 -> 128), warp-flow-like, i.e. the object and hand motion only (camera motion
    removed).
The videos layout writes the same videos as files to prepare (python -m datasets.prepare),
with what a preparation should find:
  * videos/<user>/<class>/<inst>.mp4: the RGB frames, H.264 (crf 17) at --fps (default 15);
  * truth/<user>/<class>/<inst>/mapNNNN.png: the motion maps above, one per frame;
  * truth/<user>/<class>/<inst>/truth.npz: "flow" (N-1, H, W, 2) float32, the true optical
    flow from frame k to k+1 in pixels (x, y), camera motion included; "scene_flow", the same
    without the camera motion (what camera-compensated flow should give); "moving" (N, H, W)
    bool, the pixels that move in the scene; "camera" (N, 2), the camera offsets.
  The camera's step between frames is a whole-pixel translation of 1-2 px (median, up to 5),
  enough that uncompensated flow marks the whole background as moving.
The egtea layout writes a small release in EGTEA Gaze+'s form (the input of
python -m datasets.prepare --egtea, see datasets/egtea.py):
  * cropped_clips/<session>/<clip>.mp4, sessions named like EGTEA's (P01-R01-PastaSalad), clip =
    <session>-<start ms>-<end ms>-F<start frame>-F<end frame> at 24 frames/s;
  * action_idx.txt, verb_idx.txt, noun_idx.txt: "<name> <1-based index>" a line, names as
    EGTEA writes them (EGTEA_ACTIONS): spaces and slashes in verbs, underscores in nouns, a
    two-noun action named "Put trash,trash_container";
  * train_splitK.txt / test_splitK.txt, K = 1..3: "<clip> <action> <verb> <noun> [<noun2>]",
    1-based, five columns for the two-noun action; split K tests on session K and trains on
    the others;
  * quirks as users meet them: one clip listed in the split files but absent from disk
    (EGTEA_MISSING_CLIP's position), and one clip on disk that no split file lists.
The gtea61raw layout writes a small raw GTEA-61 release (the input of python -m datasets.prepare
--gtea61, see datasets/prepare/gtea61raw.py): labels/<stem>.txt ("<verb><noun(s)> (start-end)" lines,
1-based inclusive, and one line without "><"), videos/<stem>.mp4 or png/<stem>/NNNNNNNNNN.png, with
every rule of the original's cutting (GTEA61RAW_RECORDINGS); grey frames between the instances.
Quirks in the course layout (default on, --noQuirks to disable): one `rgb0003(1).png`
duplicate, `.DS_Store` files and one missing motion-map index. Too-short videos (default on,
--noShort to disable): two videos of 4 and 3 frames in the first and third user.
Numbering: RGB frames and motion maps from --firstFrame (1, the default, as the course release
and datasets.prepare; 0 as Ego-RNN's prepareGTEA61Dataset.py writes image_00000.jpg ...); flow
always from 1, as both releases number it.

Output is a pure function of the arguments (same bytes for the same seed). Generation goes to
a temporary sibling folder that is renamed to DIR at the end, after writing DIR/.complete, so
an interrupted run is never mistaken for a complete dataset.
"""
import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import zlib

import numpy as np
from PIL import Image

from datasets.markers import SYNTHETIC_MARKER, is_complete
from datasets.prepare.video import write_video
from datasets.prepare.warpflow import encode_flow
from utils.cli import Parser

SYNTHETIC_MARKER_KEYS = ("layout", "classes", "instances", "users")
FORMAT_VERSION = 1
DEFAULT_USERS = ("S1", "S2", "S3", "S4")
LAYOUTS = ("course", "egornn", "videos", "egtea", "gtea61raw")
VIDEO_FPS = 15
DEFAULT_CLASSES = ("take_cup", "put_cup", "open_box", "close_box",
                   "take_jam", "put_jam", "open_jam", "close_jam")
REVERSED = {"put": "take", "close": "open", "pull": "push"}  # verb -> verb played backwards

# noun -> (body colour, lid colour, shape)
NOUNS = {
    "cup": ((205, 35, 35), (95, 10, 10), "disc"),
    "box": ((35, 75, 215), (15, 25, 100), "square"),
    "jam": ((250, 170, 20), (140, 20, 125), "stripes"),
    "bread": ((165, 105, 45), (80, 45, 15), "dots"),
    "tea": ((30, 165, 70), (5, 70, 25), "triangle"),
    "sugar": ((245, 245, 245), (60, 60, 60), "checker"),
    "spoon": ((150, 150, 165), (150, 150, 165), "bar"),
}
# per-user look: table colour, tile contrast, brightness gain, colour tint, skin tone
USER_STYLES = (
    ((150, 128, 105), 14, 1.00, (0, 0, 0), (225, 172, 140)),
    ((128, 130, 136), 12, 0.95, (-4, 0, 6), (215, 160, 125)),
    ((160, 150, 124), 16, 1.05, (6, 3, -4), (232, 185, 155)),
    ((132, 124, 108), 10, 0.92, (0, 4, 0), (205, 150, 118)),
)


def class_pool():
    """All class names the generator can draw, in the order `--classes N` takes them."""
    pool = list(DEFAULT_CLASSES) + ["stir_spoon,cup"]
    for noun in ("bread", "tea", "sugar", "cup", "box", "jam"):
        for a, b in (("take", "put"), ("open", "close"), ("push", "pull")):
            for name in (f"{a}_{noun}", f"{b}_{noun}"):
                if name not in pool:
                    pool.append(name)
    return pool


MAX_CLASSES = 74  # 2 x the pool: beyond it, the pool again as take_cup_2, ... (GTEA 71-sized sets)


def class_names(n):
    pool = class_pool()
    if not 2 <= n <= MAX_CLASSES:
        raise ValueError(f"--classes must be between 2 and {MAX_CLASSES}, got {n}")
    # a repeated class looks like its original (same verb and noun, other draws): a dataset
    # of that size for checking the loaders, not a task a model can learn beyond the pool
    names = pool + [f"{c}_2" for c in pool]
    return names[:n]


def _ease(x):
    x = min(max(x, 0.0), 1.0)
    return x * x * (3 - 2 * x)


def _rot(v, a):
    c, s = math.cos(a), math.sin(a)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


class _Video:
    """Geometry of one video; `parts(t)` gives the scene positions of its moving parts."""

    def __init__(self, cls, W, H, rng):
        self.verb, noun = cls.split("_", 1)
        if noun.rsplit("_", 1)[-1].isdigit():  # take_cup_2: a repeat of take_cup (class_names)
            noun = noun.rsplit("_", 1)[0]
        self.backwards = self.verb in REVERSED
        self.base_verb = REVERSED.get(self.verb, self.verb)
        u = H / 120.0
        self.u = u
        if self.base_verb == "stir":
            self.tool, noun = noun.split(",")  # "spoon,cup": spoon stirs in the cup
        else:
            self.tool = None
        self.noun = noun
        self.body_col, self.lid_col, self.shape = NOUNS[noun]
        self.r = 23 * u * rng.uniform(0.9, 1.1)
        self.M = int(round(12 * u))  # camera margin
        self.obj = np.array([self.M + W / 2 + rng.uniform(-12, 12) * u,
                             self.M + H / 2 + rng.uniform(-8, 6) * u])
        self.angle = rng.uniform(-0.25, 0.25)
        self.approach = rng.uniform(0.28, 0.38)
        self.phase = rng.uniform(0, 2 * math.pi)
        r = self.r
        self.lid_off = np.array([0.0, -0.85 * r])
        if self.base_verb == "take":
            self.rest = self.obj + np.array([75, 80]) * u
            self.grip = self.obj + np.array([0.8 * r, 0.45 * r])
            self.disp = _rot(np.array([45.0, 50.0]) * u, self.angle)
        elif self.base_verb == "open":
            self.rest = self.obj + np.array([75, 70]) * u
            self.grip = self.obj + self.lid_off + np.array([0.75 * r, -0.1 * r])
            self.disp = _rot(np.array([38.0, -30.0]) * u, self.angle)
        elif self.base_verb == "push":
            self.rest = self.obj + np.array([-55, 80]) * u
            self.grip = self.obj + np.array([-1.05 * r, 0.3 * r])
            self.disp = _rot(np.array([55.0, -4.0]) * u, self.angle)

    def parts(self, t):
        """{part: centre (x, y) in scene coordinates} at normalised time t in [0, 1]."""
        if self.backwards:
            t = 1.0 - t
        o = self.obj
        if self.base_verb == "stir":
            th = self.phase + 2 * math.pi * 2 * t
            spoon = o + 0.45 * self.r * np.array([math.cos(th), 0.6 * math.sin(th)])
            return {"body": o, "lid": None, "spoon": spoon,
                    "hand": spoon + np.array([0.0, -1.2 * self.r])}
        a = _ease(t / self.approach)
        b = _ease((t - self.approach) / (1 - self.approach))
        hand = self.rest + a * (self.grip - self.rest) + b * self.disp
        if self.base_verb == "open":
            return {"body": o, "lid": o + self.lid_off + b * self.disp, "spoon": None, "hand": hand}
        body = o + b * self.disp
        return {"body": body, "lid": body + self.lid_off, "spoon": None, "hand": hand}


def _shape_mask(shape, dx, dy, r, u):
    """Boolean mask and shade factor (1 = body colour) of a body shape at offsets dx, dy."""
    shade = None
    if shape == "disc":
        d2 = dx * dx + dy * dy
        m = d2 < r * r
        shade = np.where(d2 > (0.72 * r) ** 2, 0.55, 1.0)
    elif shape == "square":
        m = (np.abs(dx) < r) & (np.abs(dy) < r)
    elif shape == "stripes":
        m = (np.abs(dx) < 0.8 * r) & (np.abs(dy) < r)
        shade = np.where(((dy + r) // (5 * u)) % 2 == 0, 1.0, 0.6)
    elif shape == "dots":
        m = (np.abs(dx) < 1.15 * r) & (np.abs(dy) < 0.75 * r)
        p = 8 * u
        qx, qy = np.mod(dx, p) - p / 2, np.mod(dy, p) - p / 2
        shade = np.where(qx * qx + qy * qy < (2 * u) ** 2, 0.5, 1.0)
    elif shape == "triangle":
        m = (dy < r) & (np.abs(dx) < 0.6 * (dy + r))
    elif shape == "checker":
        m = (np.abs(dx) < r) & (np.abs(dy) < r)
        p = 9 * u
        shade = np.where(((dx // p) + (dy // p)) % 2 == 0, 1.0, 0.7)
    elif shape == "bar":
        m = (np.abs(dx) < 3 * u) & (dy < 0) & (dy > -1.3 * r)
    else:
        raise ValueError(shape)
    return m, shade


def render_video(cls, user_index, length, size=(160, 120), seed=0, instance=1, camera=True):
    """Render one video. Returns dict with uint8 arrays: "rgb" (N, H, W, 3), "mmaps"
    (N, H, W), "flow_x" / "flow_y" (N-1, H, W), bool "moving" (N, H, W) (pixels of the
    parts that move relative to the scene), "camera" (N, 2) integer (x, y) offsets of the
    frame in the scene, and the true flow from frame k to k+1 in pixels, float32 (N-1, H, W, 2)
    (x, y): "scene_flow" (the parts' motion, camera removed: what flow_x / flow_y encode) and
    "flow" (what is seen: scene_flow minus the camera's step). camera=False keeps the camera
    still (same video otherwise)."""
    W, H = size
    rng = np.random.default_rng([seed, user_index, zlib.crc32(cls.encode()), instance, length])
    style = USER_STYLES[user_index % len(USER_STYLES)]
    table, contrast, gain, tint, skin = style
    if user_index >= len(USER_STYLES):  # extra users: a random but mild variation
        urng = np.random.default_rng([seed, user_index, 7])
        table = tuple(int(c + urng.integers(-12, 13)) for c in table)
        gain = gain * urng.uniform(0.95, 1.05)
    v = _Video(cls, W, H, rng)
    u, M, r = v.u, v.M, v.r

    # static scene (tablecloth + clutter) on a canvas larger than the frame by M each side
    CH, CW = H + 2 * M, W + 2 * M
    yy, xx = np.mgrid[0:CH, 0:CW].astype(np.float32)
    tile = 20 * u
    check = ((xx // tile + yy // tile) % 2) * 2 - 1
    scene = np.empty((CH, CW, 3), np.float32)
    scene[:] = np.array(table, np.float32)
    scene += (contrast * check)[..., None]
    for _ in range(3):  # clutter blobs away from the object
        for _try in range(10):
            c = np.array([rng.uniform(0, CW), rng.uniform(0, CH)])
            if np.linalg.norm(c - v.obj) > 3 * r:
                break
        rad = rng.uniform(6, 11) * u
        grey = rng.uniform(80, 190)
        blob = (xx - c[0]) ** 2 + (yy - c[1]) ** 2 < rad * rad
        scene[blob] = (grey, grey * 0.97, grey * 0.93)

    # camera: smooth drift plus jitter, integer offsets in [0, 2M]
    cam = np.empty((length, 2), np.int64)
    pos = np.array([M + rng.uniform(-3, 3) * u, M + rng.uniform(-3, 3) * u])
    vel = rng.normal(0, 1.0, 2) * u
    for k in range(length):
        cam[k] = np.clip(np.round(pos + rng.normal(0, 0.6, 2) * u), 0, 2 * M)
        vel = 0.85 * vel + rng.normal(0, 0.7, 2) * u
        pos = np.clip(pos + vel, 1, 2 * M - 1)
    if not camera:
        cam[:] = M

    ts = np.linspace(0.0, 1.0, length) if length > 1 else np.zeros(1)
    parts = [v.parts(float(t)) for t in ts]
    flick = 1 + rng.normal(0, 0.012, length)
    fy, fx = np.mgrid[0:H, 0:W].astype(np.float32)
    body_col = np.array(v.body_col, np.float32)
    lid_col = np.array(v.lid_col, np.float32)
    skin_col = np.array(skin, np.float32)
    tool_col = np.array(NOUNS[v.tool][0], np.float32) if v.tool else None
    shape = v.shape
    full_speed = 1.5 * u

    def speed(name, k):
        a, b = max(k - 1, 0), min(k + 1, length - 1)
        if b == a or parts[k][name] is None:
            return 0.0
        return float(np.linalg.norm(parts[b][name] - parts[a][name]) / (b - a))

    rgb = np.empty((length, H, W, 3), np.uint8)
    mm = np.zeros((length, H, W), np.uint8)
    moving = np.zeros((length, H, W), bool)
    fxs = np.full((max(length - 1, 0), H, W), 128, np.uint8)
    fys = np.full((max(length - 1, 0), H, W), 128, np.uint8)
    scene_flow = np.zeros((max(length - 1, 0), H, W, 2), np.float32)
    for k in range(length):
        ox, oy = cam[k]
        img = scene[oy:oy + H, ox:ox + W].copy()
        owner = np.full((H, W), -1, np.int8)  # topmost moving-part id per pixel
        layers = []  # (name, mask)
        p = parts[k]
        # body
        dx, dy = fx + ox - p["body"][0], fy + oy - p["body"][1]
        m, shade = _shape_mask(shape, dx, dy, r, u)
        img[m] = body_col * (shade[m][:, None] if shade is not None else 1.0)
        layers.append(("body", m))
        if p["lid"] is not None:
            dx, dy = fx + ox - p["lid"][0], fy + oy - p["lid"][1]
            lw = (0.85 if shape == "stripes" else 1.05) * r
            m = (np.abs(dx) < lw) & (np.abs(dy) < 0.28 * r)
            img[m] = lid_col
            layers.append(("lid", m))
        if p["spoon"] is not None:
            dx, dy = fx + ox - p["spoon"][0], fy + oy - p["spoon"][1]
            m, _ = _shape_mask("bar", dx, dy, r, u)
            img[m] = tool_col
            layers.append(("spoon", m))
        # hand: forearm from the bottom edge, then the hand blob on top
        h = p["hand"]
        dx, dy = fx + ox - h[0], fy + oy - h[1]
        arm_dir = np.array([0.45, 1.0]) / math.hypot(0.45, 1.0)
        along = dx * arm_dir[0] + dy * arm_dir[1]
        across = -dx * arm_dir[1] + dy * arm_dir[0]
        arm = (along > 0) & (np.abs(across) < 7.5 * u)
        hand = (dx / (10.5 * u)) ** 2 + (dy / (8.5 * u)) ** 2 < 1
        m = arm | hand
        img[m] = skin_col * np.where(hand[m], 1.0, 0.9)[:, None]
        layers.append(("hand", m))

        for i, (name, m) in enumerate(layers):
            owner[m] = i
            s = speed(name, k)
            val = int(round(255 * min(1.0, s / full_speed)))
            mm[k][m] = val
            moving[k][m] = val > 0
        if k < length - 1:  # flow from frame k to k+1: the displacement of the visible part
            for i, (name, _) in enumerate(layers):
                sel = owner == i
                d = parts[k + 1][name] - p[name]
                if not sel.any() or not np.any(d):
                    continue
                fxs[k][sel], fys[k][sel] = encode_flow(d)
                scene_flow[k][sel] = d
        lit = img * (gain * flick[k]) + np.array(tint, np.float32)
        rgb[k] = np.clip(np.round(lit), 0, 255).astype(np.uint8)
    # what a flow method sees: every pixel also moves by minus the camera's step
    flow = scene_flow - (cam[1:] - cam[:-1]).astype(np.float32)[:, None, None, :]
    return {"rgb": rgb, "mmaps": mm, "flow_x": fxs, "flow_y": fys, "moving": moving, "camera": cam,
            "scene_flow": scene_flow, "flow": flow}


# --layout egtea: (EGTEA-style action name, verb, nouns, the class rendered for it). Index files
# number them from 1 in this order; the names are written as EGTEA writes them: verbs with spaces
# and slashes, nouns with underscores, and an action naming two nouns joined by a comma, whose
# split lines have a fifth column (EGTEA's "Put trash,trash_container").
EGTEA_ACTIONS = (
    ("Take cup", "Take", ("cup",), "take_cup"),
    ("Put cup", "Put", ("cup",), "put_cup"),
    ("Open condiment_container", "Open", ("condiment_container",), "open_box"),
    ("Close condiment_container", "Close", ("condiment_container",), "close_box"),
    ("Divide/Pull Apart paper_towel", "Divide/Pull Apart", ("paper_towel",), "take_jam"),
    ("Put trash,trash_container", "Put", ("trash", "trash_container"), "put_jam"),
)
EGTEA_SESSIONS = ("P01-R01-PastaSalad", "P02-R03-BaconAndEggs", "P03-R05-Cheeseburger")
EGTEA_FPS = 24
EGTEA_MISSING_CLIP = (1, 0)  # (session, action) whose first clip is listed but not written


def egtea_plan(instances, seed):
    """[(session index, action index (0-based), clip name, frames)]: `instances` clips per action
    and session, plus one extra clip of the first session (on disk, in no split file)."""
    rng = np.random.default_rng([seed, 24])
    rows = []
    for si, session in enumerate(EGTEA_SESSIONS):
        t = 1000 * int(rng.integers(10, 60))  # ms into the session video
        for j in range(instances + (1 if si == 0 else 0)):
            for ai in range(len(EGTEA_ACTIONS)):
                n = int(rng.integers(10, 29))
                t += int(rng.integers(2000, 9000))
                end = t + round(1000 * (n - 1) / EGTEA_FPS)
                f0 = round(t * EGTEA_FPS / 1000)
                name = f"{session}-{t}-{end}-F{f0:06d}-F{f0 + n - 1:06d}"
                rows.append((si, ai, name, n, j == instances))  # last: the extra round
                t = end
    return [r for r in rows if not r[4] or r[1] == 0]


def write_egtea(out, instances, size, seed, verbose=True):
    """The egtea layout (see the module docstring)."""
    verbs = list(dict.fromkeys(a[1] for a in EGTEA_ACTIONS))
    nouns = list(dict.fromkeys(n for a in EGTEA_ACTIONS for n in a[2]))
    for fname, names in (("action_idx.txt", [a[0] for a in EGTEA_ACTIONS]), ("verb_idx.txt", verbs),
                         ("noun_idx.txt", nouns)):
        with open(os.path.join(out, fname), "w") as f:
            f.writelines(f"{name} {k + 1}\n" for k, name in enumerate(names))
    rows = egtea_plan(instances, seed)
    listed = [r for r in rows if not r[4]]
    missing = next(r for r in listed if (r[0], r[1]) == EGTEA_MISSING_CLIP)
    t0 = time.time()
    for si, ai, name, n, _ in rows:
        if (si, ai, name) == missing[:3]:
            continue
        inst = int(name.split("-")[3]) % 1000  # varies the render within one action and session
        vid = render_video(EGTEA_ACTIONS[ai][3], si, n, size, seed, inst)
        d = os.path.join(out, "cropped_clips", EGTEA_SESSIONS[si])
        os.makedirs(d, exist_ok=True)
        write_video(os.path.join(d, name + ".mp4"), vid["rgb"], EGTEA_FPS)
    for k in range(1, 4):
        for part in ("train", "test"):
            with open(os.path.join(out, f"{part}_split{k}.txt"), "w") as f:
                for si, ai, name, _, _ in listed:
                    if (si == k - 1) == (part == "test"):
                        a = EGTEA_ACTIONS[ai]
                        cols = [ai + 1, verbs.index(a[1]) + 1] + [nouns.index(n) + 1 for n in a[2]]
                        f.write(f"{name} {' '.join(map(str, cols))}\n")
    if verbose:
        print(f"  {len(rows) - 1} clips in {time.time() - t0:.1f}s ({len(listed)} listed in the splits, "
              f"one of them missing on disk; one clip in no split)", file=sys.stderr, flush=True)


# --layout gtea61raw: recordings as GTEA-61's raw release has them, one label file each. Every
# instance is (verb, noun field as the label writes it, class rendered); the original's rules all
# occur: stir<cup> (renamed stir_spoon,cup), a comma in a noun field, put_tea of S1 and S2
# (dropped) and of S3 (kept), take_cup in two label files of S1 (numbered on across them), a
# line without "><" in each file (ignored). S2's recording is a folder of PNG frames, the others
# are videos.
GTEA61RAW_RECORDINGS = {
    "S1_Cheese_C1": [("take", "cup", "take_cup"), ("put", "cup", "put_cup"), ("take", "cup", "take_cup"),
                     ("stir", "cup", "stir_spoon,cup")],
    "S1_Tea_C1": [("take", "cup", "take_cup"), ("put", "tea", "put_tea"), ("open", "jam", "open_jam")],
    "S2_Tea_C1": [("take", "cup", "take_cup"), ("put", "cup", "put_cup"), ("put", "tea", "put_tea"),
                  ("stir", "spoon,cup", "stir_spoon,cup"), ("open", "jam", "open_jam")],
    "S3_Cheese_C1": [("take", "cup", "take_cup"), ("put", "cup", "put_cup"), ("stir", "spoon,cup", "stir_spoon,cup"),
                     ("open", "jam", "open_jam"), ("put", "tea", "put_tea")],
}
GTEA61RAW_FRAME_FOLDERS = ("S2_Tea_C1",)
GTEA61RAW_GAP = 3  # grey frames before each instance: a cut one frame off shows them


def write_gtea61raw(out, size, seed, fps, verbose=True):
    """The gtea61raw layout: labels/<stem>.txt, videos/<stem>.mp4 or png/<stem>/NNNNNNNNNN.png."""
    rng = np.random.default_rng([seed, 61])
    W, H = size
    os.makedirs(os.path.join(out, "labels"))
    for ui, (stem, instances) in enumerate(GTEA61RAW_RECORDINGS.items()):
        frames, lines = [], [f"{stem} (annotation)"]
        for j, (verb, noun, cls) in enumerate(instances):
            frames += [np.full((H, W, 3), 128, np.uint8)] * GTEA61RAW_GAP
            n = int(rng.integers(6, 11))
            clip = render_video(cls, int(stem[1]) - 1, n, size, seed, j + 1)["rgb"]
            lines.append(f"<{verb}><{noun}> ({len(frames) + 1}-{len(frames) + n})")  # 1-based, inclusive
            frames += list(clip)
        frames += [np.full((H, W, 3), 128, np.uint8)] * GTEA61RAW_GAP
        with open(os.path.join(out, "labels", stem + ".txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        if stem in GTEA61RAW_FRAME_FOLDERS:
            d = os.path.join(out, "png", stem)
            os.makedirs(d)
            for k, rgb in enumerate(frames, 1):
                _save(rgb, os.path.join(d, f"{k:010d}.png"), "course")
        else:
            os.makedirs(os.path.join(out, "videos"), exist_ok=True)
            write_video(os.path.join(out, "videos", stem + ".mp4"), frames, fps)
    if verbose:
        print(f"  {len(GTEA61RAW_RECORDINGS)} recordings", file=sys.stderr, flush=True)


def _lengths(rng, n):
    return [int(x) for x in rng.integers(10, 29, n)]


def plan(classes, instances, users, seed, short=True):
    """[(user_index, user, class, instance_name, length)] for the whole dataset."""
    rng = np.random.default_rng([seed, 12345])
    out = []
    for ui, user in enumerate(users):
        for ci, cls in enumerate(classes):
            for j, n in enumerate(_lengths(rng, instances)):
                out.append([ui, user, cls, str(j + 1), n])
    if short:
        for ui, ci, n in ((0, 2 % len(classes), 4), (2, 3 % len(classes), 3)):
            if ui < len(users):
                for row in out:
                    if row[0] == ui and row[2] == classes[ci] and row[3] == str(instances):
                        row[4] = n
    return [tuple(r) for r in out]


def _save(arr, path, layout):
    im = Image.fromarray(arr)
    if layout == "course":
        im.save(path, format="PNG", compress_level=1)
    else:
        im.save(path, format="JPEG", quality=92)


def write_videos(out, rows, size, seed, fps, verbose=True):
    """The videos layout: each video as an H.264 mp4 plus the generator's truth for it."""
    t0 = time.time()
    for n_done, (ui, user, cls, inst, n) in enumerate(rows):
        vid = render_video(cls, ui, n, size, seed, int(inst))
        d_vid = os.path.join(out, "videos", user, cls)
        d_truth = os.path.join(out, "truth", user, cls, inst)
        os.makedirs(d_vid, exist_ok=True)
        os.makedirs(d_truth)
        write_video(os.path.join(d_vid, f"{inst}.mp4"), vid["rgb"], fps)
        for k in range(n):
            _save(vid["mmaps"][k], os.path.join(d_truth, f"map{k + 1:04d}.png"), "course")
        np.savez_compressed(os.path.join(d_truth, "truth.npz"), flow=vid["flow"],
                            scene_flow=vid["scene_flow"], moving=vid["moving"], camera=vid["camera"])
        if verbose and (n_done + 1) % 24 == 0:
            print(f"  {n_done + 1}/{len(rows)} videos", file=sys.stderr, flush=True)
    if verbose:
        print(f"  {len(rows)} videos in {time.time() - t0:.1f}s", file=sys.stderr, flush=True)


def generate(out, layout="course", classes=8, instances=3, users=DEFAULT_USERS, seed=0,
             size=(160, 120), short=True, quirks=True, verbose=True, fps=VIDEO_FPS, first_frame=1):
    """Write a complete dataset to the new folder `out` (must not exist or be empty).
    first_frame: the number of each video's first RGB frame and motion map (1: the course release
    and datasets.prepare; 0: Ego-RNN's prepareGTEA61Dataset.py, image_00000 ...). Flow is numbered
    from 1 in both (Ego-RNN's flow release starts at flow_x_00001)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    names = class_names(classes)
    users = list(users)
    W, H = size
    if layout == "egtea":
        return write_egtea(out, instances, size, seed, verbose)
    if layout == "gtea61raw":
        return write_gtea61raw(out, size, seed, fps, verbose)
    if layout == "videos":
        return write_videos(out, plan(names, instances, users, seed, short), size, seed, fps, verbose)
    ext = "png" if layout == "course" else "jpg"
    rgb_top, fx_top, fy_top = (("processed_frames2", "flow_x_processed", "flow_y_processed")
                               if layout == "course" else ("frames", "flow_x", "flow_y"))
    rows = plan(names, instances, users, seed, short)
    t0 = time.time()
    for n_done, (ui, user, cls, inst, n) in enumerate(rows):
        vid = render_video(cls, ui, n, size, seed, int(inst))
        rel = os.path.join(user, cls, inst)
        if layout == "course":
            d_rgb = os.path.join(out, rgb_top, rel, "rgb")
            d_map = os.path.join(out, rgb_top, rel, "mmaps")
            os.makedirs(d_map)
        else:
            d_rgb = os.path.join(out, rgb_top, rel)
        d_fx, d_fy = os.path.join(out, fx_top, rel), os.path.join(out, fy_top, rel)
        for d in (d_rgb, d_fx, d_fy):
            os.makedirs(d)
        for k in range(n):
            if layout == "course":
                _save(vid["rgb"][k], os.path.join(d_rgb, f"rgb{k + first_frame:04d}.png"), layout)
                _save(vid["mmaps"][k], os.path.join(d_map, f"map{k + first_frame:04d}.png"), layout)
            else:
                _save(vid["rgb"][k], os.path.join(d_rgb, f"image_{k + first_frame:05d}.jpg"), layout)
        for k in range(n - 1):
            _save(vid["flow_x"][k], os.path.join(d_fx, f"flow_x_{k + 1:05d}.{ext}"), layout)
            _save(vid["flow_y"][k], os.path.join(d_fy, f"flow_y_{k + 1:05d}.{ext}"), layout)
        if verbose and (n_done + 1) % 24 == 0:
            print(f"  {n_done + 1}/{len(rows)} videos", file=sys.stderr, flush=True)
    if quirks and layout == "course":
        first = os.path.join(out, rgb_top, users[0], names[0], "1")
        shutil.copyfile(os.path.join(first, "rgb", f"rgb{first_frame + 2:04d}.png"),
                        os.path.join(first, "rgb", f"rgb{first_frame + 2:04d}(1).png"))
        for d in (os.path.join(out, rgb_top, users[0]), os.path.join(first, "rgb")):
            with open(os.path.join(d, ".DS_Store"), "wb") as f:
                f.write(b"\x00\x00\x00\x01Bud1")
        second = os.path.join(out, rgb_top, users[0], names[1], "1", "mmaps")
        n = len(os.listdir(second))
        os.remove(os.path.join(second, f"map{n // 2 + first_frame - 1:04d}.png"))
    if verbose:
        print(f"  {len(rows)} videos in {time.time() - t0:.1f}s", file=sys.stderr, flush=True)


def _params(args):
    params = {"version": FORMAT_VERSION, "layout": args.layout, "classes": args.classes,
              "instances": args.instances, "users": list(args.users), "seed": args.seed,
              "size": list(args.size), "short": args.short, "quirks": args.quirks}
    if args.firstFrame != 1:  # recorded only when not the default: older datasets stay complete
        params["firstFrame"] = args.firstFrame
    if args.layout == "videos":
        params["fps"] = args.fps
    if args.layout == "egtea":  # its own actions, sessions and frame rate
        params.update(classes=len(EGTEA_ACTIONS), users=list(EGTEA_SESSIONS), fps=EGTEA_FPS)
        for k in ("short", "quirks"):
            params.pop(k)
    if args.layout == "gtea61raw":  # its own recordings
        params.update(fps=args.fps, recordings=sorted(GTEA61RAW_RECORDINGS))
        for k in ("classes", "instances", "users", "short", "quirks"):
            params.pop(k)
    return params


def dataset_kind(dataset_dir):
    """('synthetic' | 'GTEA-61', reason): synthetic when the folder holds this generator's marker
    (with its settings), a file whose name starts with "synthetic", or is itself named so;
    replicate.py's captions and the verifier say which."""
    base = os.path.basename(os.path.normpath(dataset_dir))
    try:
        entries = os.listdir(dataset_dir)
    except OSError:
        entries = []
    if SYNTHETIC_MARKER in entries:
        try:
            with open(os.path.join(dataset_dir, SYNTHETIC_MARKER)) as f:
                params = json.load(f)
        except (OSError, ValueError):
            params = None
        if isinstance(params, dict) and all(k in params for k in SYNTHETIC_MARKER_KEYS):
            desc = ", ".join(f"{k} {params[k] if not isinstance(params[k], list) else ' '.join(map(str, params[k]))}"
                             for k in ("classes", "instances", "users", "size", "seed") if k in params)
            return "synthetic", f"marker {SYNTHETIC_MARKER} of datasets.prepare.synthetic: {desc}"
    for e in sorted(entries):
        if e.lower().startswith("synthetic"):
            return "synthetic", f"file {e}"
    if base.lower().startswith("synthetic"):
        return "synthetic", f"folder name {base}"
    return "GTEA-61", "no synthetic marker in the folder"


def _size(text):
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 160x120, got {text!r}") from None
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError(f"frames must be at least 32x32, got {text!r}")
    return w, h


def remove_stale_work(parent, name):
    """Delete the hidden work folders `.<name>.tmp-<pid>-*` / `.<name>.old-<pid>-*` of earlier runs
    whose process is gone (killed before it could clean up); a running generator's are kept."""
    pattern = re.compile(r"\." + re.escape(name) + r"\.(tmp|old)-(\d+)-")
    for entry in os.listdir(parent):
        m = pattern.match(entry)
        if not m or int(m.group(2)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(2)), 0)
            continue  # that process still runs (or the pid is someone else's now): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        print(f"removed {os.path.join(parent, entry)}, left by an interrupted run", file=sys.stderr)


def main(argv=None):
    ap = Parser(prog="python -m datasets.prepare.synthetic",
                description="Write a small synthetic GTEA-61-like dataset.\n\n"
                "    python -m datasets.prepare.synthetic --outDir data/synthetic_gtea61\n"
                "    python -m datasets.prepare.synthetic --layout videos --outDir data/synthetic_videos")
    ap.add_argument("--outDir", dest="out", metavar="DIR", required=True, help="dataset folder to create")
    ap.add_argument("--layout", choices=LAYOUTS, default="course",
                    help="course / egornn: frames, flow (and maps) as images; videos: mp4 files plus the "
                         "true flow and motion masks, the input of python -m datasets.prepare; egtea: a small "
                         "release in EGTEA Gaze+'s form (clips, index and split files: --egtea of datasets.prepare); "
                         "gtea61raw: raw GTEA-61 recordings and label files (--gtea61 of datasets.prepare)")
    ap.add_argument("--fps", type=float, default=VIDEO_FPS, help="frame rate of the videos layout")
    ap.add_argument("--classes", type=int, default=8, help=f"number of classes (2..{MAX_CLASSES}; beyond "
                    f"{len(class_pool())}, repeats of the first ones under new names)")
    ap.add_argument("--instances", type=int, default=3, help="videos per class and user")
    ap.add_argument("--users", nargs="+", default=list(DEFAULT_USERS), help="user folders to write")
    ap.add_argument("--seed", type=int, default=0, help="seeds the scenes, motions and lengths")
    ap.add_argument("--size", type=_size, default=(160, 120), help="frame size WxH (default: 160x120)")
    ap.add_argument("--ifMissing", dest="if_missing", action="store_true",
                    help="do nothing if --outDir already holds a complete dataset")
    ap.add_argument("--noShort", dest="short", action="store_false",
                    help="do not add the two videos shorter than 5 frames")
    ap.add_argument("--noQuirks", dest="quirks", action="store_false",
                    help="do not add the duplicate / .DS_Store / missing-map quirks")
    ap.add_argument("--firstFrame", type=int, choices=(0, 1), default=1,
                    help="number of each video's first RGB frame (and motion map): 1 as the course release and "
                         "datasets.prepare, 0 as Ego-RNN's prepareGTEA61Dataset.py (image_00000.jpg); flow from 1")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.out)
    params = _params(args)

    def fail(msg):
        print(f"error: {msg}", file=sys.stderr)
        return 2

    if args.instances < 1:
        return fail(f"--instances must be >= 1, got {args.instances}")
    if args.layout in ("videos", "egtea", "gtea61raw") and (args.size[0] % 2 or args.size[1] % 2):
        return fail(f"--size {args.size[0]}x{args.size[1]}: H.264 videos need an even width and height")
    if args.fps <= 0:
        return fail(f"--fps must be positive, got {args.fps}")
    try:
        class_names(args.classes)
    except ValueError as e:
        return fail(str(e))
    if len(set(args.users)) != len(args.users):
        return fail(f"--users has duplicates: {' '.join(args.users)}")

    if os.path.exists(out):
        if is_complete(out):
            if args.if_missing:
                try:
                    with open(os.path.join(out, SYNTHETIC_MARKER)) as f:
                        old = json.load(f)
                except (OSError, ValueError):
                    old = None
                note = "" if old == params else " (made with other settings; delete it to regenerate)"
                print(f"synthetic dataset already complete at {out}{note}")
                return 0
        elif not os.path.isdir(out) or os.listdir(out):
            return fail(f"{out} exists and is not a complete synthetic dataset (no {SYNTHETIC_MARKER}); "
                        "remove it or choose another --outDir")

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    remove_stale_work(parent, os.path.basename(out))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-{os.getpid()}-", dir=parent)
    try:
        print(f"writing synthetic dataset ({args.layout} layout) to {out}", file=sys.stderr, flush=True)
        generate(tmp, args.layout, args.classes, args.instances, args.users, args.seed,
                 args.size, args.short, args.quirks, fps=args.fps, first_frame=args.firstFrame)
        with open(os.path.join(tmp, SYNTHETIC_MARKER), "w") as f:
            json.dump(params, f, indent=1, sort_keys=True)
            f.write("\n")
        old = None
        if os.path.exists(out):  # an empty folder or a complete older dataset: replace it
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-{os.getpid()}-", dir=parent)
            os.rename(out, os.path.join(old, "d"))
        os.rename(tmp, out)
        tmp = None
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"done: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
