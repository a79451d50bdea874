"""Check this implementation against a local checkout of the original Ego-RNN code.

    git clone https://github.com/swathikirans/ego-rnn /tmp/ego-rnn
    python -m tools.verify_original --egornnSrc /tmp/ego-rnn [--datasetDir DIR] [--seqLen 7] [--memSize 512] [--steps 3]

The original code is imported at run time from --egornnSrc (it is not part of this repository).
It targets torch 0.3 on a GPU, so a few run-time patches are applied to it, and printed. Then:

  1. The original RGB (attentionModel), flow (flow_resnet34) and two-stream
     (twoStreamAttentionModel) models are built from one seed and their state dicts saved with
     torch.save(model.state_dict()), as the original scripts do.
  2. forward: evaluate.py (this project's test pipeline, fp32) on those files gives, video by
     video, the logits of the original test pipeline: the original makeDataset* classes and
     spatial_transforms (Scale(256), CenterCrop(224)) on the test users, the original model
     loaded from the file; RGB: linspace frames; flow: the mean over 5 stacks; two-stream: the
     centre stack.
  3. training: a few optimiser steps of RGB stage 1 and stage 2 and of the flow model, run by the
     original main-run-rgb.py / main-run-flow.py `main_run` itself (its parameter sets, train /
     eval modes, optimiser), and by this project's training step (utils.train.train_step), from the
     same weights on the same batch, dropout off: the number of trainable parameters and the
     optimiser settings must be equal, the loss and every parameter and buffer after the first
     step equal to float rounding, and after the last step within twice what one rounding of
     the input does to this project's own run (see compare_training).

Exit status 0 when every check agrees within its tolerance, 1 otherwise, 2 for a wrong argument.
"""
import contextlib
import csv
import importlib
import io
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
import warnings

import numpy as np
import torch
import torch.nn as nn

import datasets.gtea61 as G
import models
import utils.experiment as E
from datasets import GTEA61, DatasetError
from datasets.gtea61 import _LAYOUTS, _top
from datasets.prepare.synthetic import dataset_kind
from datasets.transforms import _BILINEAR, TF, ClipTransform, resize_size
from models.backbone import imagenet_cache_path
from models.checkpoints import load_checkpoint
from models.recipe import DEFAULTS, TEST_USERS, TRAIN_USERS
from tools import evaluation
from utils.arguments import base_parser
from utils.cli import Parser
from utils.paths import default_dataset_dir
from utils.errors import NonFiniteLossError, UserError, run_cli
from utils.experiment import Experiment, build_stage_model, prepare_model
from utils.train import train_step

ORIGINAL_URL = "https://github.com/swathikirans/ego-rnn"
# What the checks import or run from the checkout.
ORIGINAL_FILES = ("objectAttentionModelConvLSTM.py", "MyConvLSTMCell.py", "resnetMod.py", "flow_resnet.py",
                  "twoStreamModel.py", "spatial_transforms.py", "makeDatasetRGB.py", "makeDatasetFlow.py",
                  "makeDatasetTwoStream.py", "main-run-rgb.py", "main-run-flow.py")
ORIGINAL_MODULES = ("objectAttentionModelConvLSTM", "MyConvLSTMCell", "resnetMod", "flow_resnet", "twoStreamModel",
                    "spatial_transforms", "makeDatasetRGB", "makeDatasetFlow", "makeDatasetTwoStream",
                    "tensorboardX")
STACK = 5      # flow frames per stack, both codes' default
FLOW_SEGS = 5  # flow stacks averaged per test video (eval-run-flow.py --numSegs)

# Tolerances. fp32 on the CPU; the two codes batch the frames differently (the original runs
# the ResNet frame by frame), so results agree to float rounding, not bit for bit.
LOGIT_TOL = 1e-4   # relative to the largest |logit|
LOSS_TOL = 1e-5    # absolute, per step
PARAM_TOL = 1e-5   # absolute, every parameter and buffer after one step (one Adam step moves a weight ~lr)
FLOAT64_TOL = 1e-10  # both of those in a float64 check (float64 rounding is ~1e-9 of float32's)
SPREAD = 2         # later steps: this many times the spread one rounding of the input causes
NOISE = {torch.float32: 1e-7, torch.float64: 1e-16}  # that rounding: the batch x (1 + NOISE N(0, 1)), ~1 ulp
# The flow training check runs both codes in float64: the flow ResNet trains from a random start with
# BatchNorm in train mode on a few clips, which multiplies a float32 rounding of the input a million
# times in three SGD steps (its spread was 39 % of how far the steps moved the weights). In float64 the
# same amplification leaves the spread far below the limit; what is compared (trainable set, modes,
# SGD settings, loss) does not depend on the dtype.
FLOW_CHECK_DTYPE = torch.float64
MAX_SHARE = 0.05   # ... and that tolerance at most this share of how far the steps moved the parameters
CAM_MARGIN = 2.0   # training seed: the CAM class's ImageNet logit this many logit ranges above the rest

# --selfTest: differences planted on this project's side, the checks that can see each (the
# training batch comes from the original's transforms, so frame choice and crop reach the forward
# checks only; the optimiser only the training checks; flow trains with SGD, which has no eps),
# and whether it changes only arithmetic: the training checks compare the trainable set and the
# optimiser settings before any number, so those plants leave that comparison agreeing and must be
# reported by the numbers (the step-1 and last-step tolerances, float64 for flow).
PLANTS = {
    "frames": ("RGB frames shifted by one (each clip frame the next file)", ("forward",), False),
    "crop": ("centre crop moved by one pixel to the right", ("forward",), False),
    "eps": ("Adam eps 1e-8 instead of 1e-4", ("training rgb",), False),
    "layer4_bn": ("layer4's BatchNorms left in train mode in RGB stage 2", ("training rgb",), True),
    "flow_bn": ("the flow model's BatchNorms in eval mode", ("training flow",), True),
}

PATCHES = [
    "`.cuda()` of tensors and modules returns them unchanged (CPU run)",
    "torch.utils.model_zoo.load_url downloads nothing: it returns torchvision's ResNet-34 ImageNet file if it is in "
    "the torch cache, else an empty dict (the model keeps its seeded random initialisation)",
    "main-run-*.py, as source text: `async=True` -> `non_blocking=True` (a keyword since Python 3.7), "
    "`.data[0]` -> `.item()` (0-dim tensors cannot be indexed), the module-level `__main__()` call dropped "
    "(the tool calls main_run itself, with this project's stage defaults: lr, milestones, decay)",
    "tensorboardX.SummaryWriter: a writer that writes nothing (not installed here)",
    "main_run's makeDataset and torch.utils.data.DataLoader give the one fixed batch per epoch, so one "
    "epoch is one optimiser step",
    "main_run's model constructor (attentionModel / flow_resnet34) returns the seed model loaded from its saved "
    "state dict, with the dataset's class count (the script takes 61 from --dataset gtea61)",
    "dropout off (p = 0) on both sides in the training checks: the two codes draw different masks",
    "deprecation warnings of torch 0.3 calls (xavier_normal, F.sigmoid, TypedStorage, scheduler order) silenced",
]

EXCLUDED = [
    "scheduler stepped before each epoch in the original (docs/deviations.md): --steps stays below the first lr "
    "milestone, so both run at a constant lr",
    "class ids counted per user in the original: the logits are compared video by video (matched by user, class "
    "and instance) and the training batch gives both sides the same labels",
    "training crops (the original's corner crops one pixel short) and random flow starts: the training checks "
    "feed both sides one fixed batch made by the original test transforms",
    "two-stream RGB frames counted over the flow frames in the original loader (one fewer): the original two-stream "
    "model gets the original RGB test pipeline's clip (frames over the RGB count) with its loader's centre flow stack",
    "files this project ignores (`*(1).*` duplicates, OS files): the original reads the videos through a folder "
    "in its own layout linking the frames this project lists under their own numbers (image_%05d.jpg), so it "
    "opens by number what it would open in the release; videos whose numbering lacks a number it opens are left "
    "out (it would crash on them)",
    "the MS and OP heads (SAMSOP-Net's additions) have no original counterpart: stage 2 is Ego-RNN's stage 2",
]


def parse_args(argv):
    p = Parser(prog="python -m tools.verify_original", description=__doc__)
    p.add_argument("--egornnSrc", required=True, help=f"a plain checkout of {ORIGINAL_URL}")
    p.add_argument("--datasetDir", default=None, help="any dataset this project reads, with optical flow "
                   "(default: $GTEA61_DIR, else data/GTEA61, else make demo's data/synthetic_gtea61)")
    p.add_argument("--seqLen", type=int, default=7, help="frames per RGB clip on both sides")
    p.add_argument("--memSize", type=int, default=512, help="ConvLSTM memory channels on both sides")
    p.add_argument("--steps", type=int, default=3, help="optimiser steps per training check (at most 20)")
    p.add_argument("--batchSize", type=int, default=4, help="training videos in the fixed batch")
    p.add_argument("--trainUsers", nargs="+", default=list(TRAIN_USERS), help="users whose videos make the training batch")
    p.add_argument("--testUsers", nargs="+", default=list(TEST_USERS), help="users whose videos the forward checks score")
    p.add_argument("--seed", type=int, default=0, help="seeds the models both sides start from")
    p.add_argument("--calibrationClips", type=int, default=16,
                   help="without ImageNet weights: training clips that estimate the BatchNorm statistics")
    p.add_argument("--videos", type=int, default=None, help="at most this many test videos (spread over the "
                   "classes) and training videos: a quicker, weaker check (default: all)")
    p.add_argument("--frameSize", type=int, default=224, help="crop side of both test pipelines (the original "
                   "models pool a 7x7 map, so they need 224; smaller sizes serve stand-in trees)")
    p.add_argument("--selfTest", action="store_true", help="then rerun the checks with five differences planted "
                   "on this project's side (RGB frames shifted by one, centre crop moved by one pixel, Adam eps "
                   "1e-8, and two that change only arithmetic: layer4's BatchNorms in train mode in RGB stage 2, "
                   "the flow BatchNorms in eval mode): exit 0 only when the honest run agrees and each plant turns "
                   "a check that agreed into a difference (the arithmetic ones with the settings comparison agreeing)")
    p.add_argument("--workDir", default=None, help="keep the checkpoints and logs here (default: a temporary "
                   "folder, deleted at the end)")
    args = p.parse_args(argv)
    for name in ("seqLen", "memSize", "steps", "batchSize", "frameSize") + (("videos",) if args.videos else ()):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} must be positive (got {getattr(args, name)})")
    if args.steps > 20:
        raise UserError(f"--steps {args.steps}: at most 20, below the first lr milestone (25), where the original's "
                        f"early scheduler step (a listed deviation) would change the lr one step before ours")
    check_source(args.egornnSrc)
    if args.datasetDir is None:
        args.datasetDir = default_dataset_dir()
    return args


def check_source(src):
    """One-line error unless `src` holds the original files the checks use."""
    if not os.path.isdir(src):
        raise UserError(f"--egornnSrc {src}: no such folder; clone {ORIGINAL_URL} and pass its folder")
    missing = [f for f in ORIGINAL_FILES if not os.path.isfile(os.path.join(src, f))]
    if missing:
        raise UserError(f"--egornnSrc {src}: not a checkout of the original Ego-RNN code ({len(missing)} of its "
                        f"files missing, e.g. {missing[0]}); pass the folder of a clone of {ORIGINAL_URL}")


# ----------------------------------------------------------------------------- the original code

class _SummaryWriter:
    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):  # add_scalar, export_scalars_to_json, close, ...
        return lambda *args, **kwargs: None


class Original:
    """The original code, imported from `src` under the run-time patches (see PATCHES)."""

    def __init__(self, src):
        check_source(src)
        self.src = os.path.abspath(src)
        self.imagenet = None  # "cache" | "none", set when a pretrained model is built
        self.frame_size = 224  # the test transforms' crop (--frameSize)

    def module_names(self):
        """The top-level names the original's files import each other by: ORIGINAL_MODULES and every
        .py file of the checkout."""
        files = {os.path.splitext(f)[0] for f in os.listdir(self.src) if f.endswith(".py")}
        return sorted(set(ORIGINAL_MODULES) | {f for f in files if f.isidentifier()})

    @contextlib.contextmanager
    def runtime(self):
        """The patches, applied while the original code runs, undone afterwards. Modules of the
        original's names imported before (another checkout's, or anything else called
        spatial_transforms) are set aside, so that its imports find its own files, and put back."""
        import torch.utils.model_zoo as model_zoo
        names = self.module_names()
        saved = dict(tensor_cuda=torch.Tensor.cuda, module_cuda=nn.Module.cuda, load_url=model_zoo.load_url,
                     modules={n: sys.modules.get(n) for n in names}, path=list(sys.path))
        for name in names:
            sys.modules.pop(name, None)
        torch.Tensor.cuda = lambda self, *a, **k: self
        nn.Module.cuda = lambda self, *a, **k: self
        model_zoo.load_url = self._load_url
        writer = types.ModuleType("tensorboardX")
        writer.SummaryWriter = _SummaryWriter
        sys.modules["tensorboardX"] = writer
        sys.path.insert(0, self.src)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield self
        finally:
            torch.Tensor.cuda, nn.Module.cuda = saved["tensor_cuda"], saved["module_cuda"]
            model_zoo.load_url = saved["load_url"]
            sys.path[:] = saved["path"]
            for name, module in saved["modules"].items():  # another checkout may be loaded next
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module

    def _load_url(self, url, *args, **kwargs):
        path = imagenet_cache_path()
        if "resnet34" in url and os.path.isfile(path):
            self.imagenet = "cache"
            return torch.load(path, map_location="cpu", weights_only=True)
        self.imagenet = "none"
        return {}

    def module(self, name):
        return importlib.import_module(name)

    def main_script(self, filename):
        """The namespace of main-run-*.py, executed with the source patches (its main_run not run)."""
        path = os.path.join(self.src, filename)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        text = re.sub(r"\basync\s*=", "non_blocking=", text)
        text = text.replace(".data[0]", ".item()")
        text = re.sub(r"^__main__\(\)\s*$", "", text, flags=re.M)
        ns = {"__name__": "egornn_" + re.sub(r"\W", "_", filename[:-3]), "__file__": path}
        exec(compile(text, path, "exec"), ns)  # noqa: S102 - the user's checkout of the original code
        return ns

    # ---- the original models and pipelines
    def rgb_model(self, num_classes, mem_size):
        return self.module("objectAttentionModelConvLSTM").attentionModel(num_classes=num_classes, mem_size=mem_size)

    def flow_model(self, num_classes, pretrained):
        return self.module("flow_resnet").flow_resnet34(pretrained, channels=2 * STACK, num_classes=num_classes)

    def twostream_model(self, num_classes, mem_size, flow_path="", rgb_path=""):
        return self.module("twoStreamModel").twoStreamAttentionModel(
            flowModel=flow_path, frameModel=rgb_path, stackSize=STACK, memSize=mem_size, num_classes=num_classes)

    def test_transform(self):
        """eval-run-*.py's spatial transform."""
        st = self.module("spatial_transforms")
        normalize = st.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        return st.Compose([st.Scale(resize_size(self.frame_size)), st.CenterCrop(self.frame_size), st.ToTensor(),
                           normalize])

    def rgb_dataset(self, root, seq_len):
        return self.module("makeDatasetRGB").makeDataset(root, spatial_transform=self.test_transform(),
                                                         seqLen=seq_len, fmt=".jpg")

    def flow_dataset(self, root, segments):
        """eval-run-flow.py's dataset (segments stacks) or main-run-flow.py's validation one (centre stack)."""
        if segments > 1:
            return self.module("makeDatasetFlow").makeDataset(root, spatial_transform=self.test_transform(),
                                                              sequence=True, numSeg=segments, stackSize=STACK,
                                                              fmt=".jpg", phase="Test")
        return self.module("makeDatasetFlow").makeDataset(root, spatial_transform=self.test_transform(),
                                                          sequence=False, stackSize=STACK, fmt=".jpg", phase="Test")

    def twostream_dataset(self, root, seq_len):
        return self.module("makeDatasetTwoStream").makeDataset(
            root, spatial_transform=self.test_transform(), sequence=False, numSeg=1, stackSize=STACK, fmt=".jpg",
            phase="Test", seqLen=seq_len)


def video_key(path):
    """user/class/instance of a video folder or video id of either code."""
    return "/".join(os.path.normpath(path).split(os.sep)[-3:])


def dropout_off(model):
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


# ----------------------------------------------------------------------------- data

def original_layout(dataset_dir, users, out, seq_len, limit=None):
    """A folder in the original's layout (frames/, flow_x/, flow_y/ of `users`) linking the files this
    project lists for each video under the original's names and THEIR OWN numbers (image_%05d.jpg,
    flow_x_%05d.jpg), so the original opens by number what it would open in the release. Videos whose
    numbering lacks a number the original asks for (it would crash; this project falls back to
    positions) are left out, and at most `limit` videos, spread over the classes, are linked.
    Returns dict(root, num_classes, classes, keys (linked videos), dataset (the scan), kept (indices),
    left_out (videos left out for their numbering))."""
    ds = GTEA61(dataset_dir, users, "twostream", train=False, seqLen=seq_len, stackSize=STACK)
    by_position = set(ds.by_position)
    kept = [i for i, vid in enumerate(ds.video_ids) if vid not in by_position]
    if limit is not None and len(kept) > limit:
        kept = [kept[j] for j in spread(len(kept), limit)]
    for i in kept:
        v, key = ds._videos[i], video_key(ds.video_ids[i])
        links = [(os.path.join(out, "frames", key, f"image_{num:05d}.jpg"), os.path.join(v["rgb_dir"], name))
                 for num, name in v["rgb"]]
        for num, px, py in v["flow"]:
            links.append((os.path.join(out, "flow_x", key, f"flow_x_{num:05d}.jpg"), px))
            links.append((os.path.join(out, "flow_y", key, f"flow_y_{num:05d}.jpg"), py))
        for link, target in links:  # the original opens them by name; PIL reads PNG under .jpg
            _link(target, link)
    return dict(root=out, num_classes=ds.num_classes, classes=ds.classes, dataset=ds, kept=kept,
                keys=[video_key(ds.video_ids[i]) for i in kept], left_out=sorted(by_position))


def _link(target, link):
    os.makedirs(os.path.dirname(link), exist_ok=True)
    try:
        os.symlink(os.path.abspath(target), link)
    except OSError:
        if os.path.isdir(target):
            shutil.copytree(target, link)
        else:
            shutil.copyfile(target, link)


def project_subset(dataset_dir, layout, out):
    """The videos of `layout` (original_layout's result) in the dataset's own layout, as links to their
    folders, with every class folder present (empty where no video is linked) so the class ids stay
    those of the whole dataset: what evaluate.py scores on this project's side."""
    ds = layout["dataset"]
    L = _LAYOUTS[ds.layout]
    tops = [t for t in (_top(dataset_dir, L[k]) for k in ("rgb", "flow_x", "flow_y")) if t]
    for top in tops:
        for u in ds.users:
            for c in ds.classes:
                os.makedirs(os.path.join(out, top, u, c), exist_ok=True)
        for key in layout["keys"]:
            if os.path.isdir(os.path.join(dataset_dir, top, key)):
                _link(os.path.join(dataset_dir, top, key), os.path.join(out, top, key))
    if L.get("mmaps_top") and os.path.isdir(os.path.join(dataset_dir, L["mmaps_top"])):
        for key in layout["keys"]:
            if os.path.isdir(os.path.join(dataset_dir, L["mmaps_top"], key)):
                _link(os.path.join(dataset_dir, L["mmaps_top"], key), os.path.join(out, L["mmaps_top"], key))
    return out


def spread(n, k):
    """k indices spread over range(n) (several classes in a small batch)."""
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(k, n))})


# ----------------------------------------------------------------------------- the checks

class Report:
    def __init__(self):
        self.ok = True
        self.results = {}  # check -> (ok, whether its settings comparison agreed; None: it has none)

    def line(self, ok, text, check=None, settings=None):
        self.ok &= bool(ok)
        if check is not None:
            self.results[check] = (bool(ok), settings)
        print(f"{text}: {'OK' if ok else 'DIFFERENT'}", flush=True)


class Verdict(tuple):
    """(ok, text) of a training check, and .settings: whether its trainable parameter count and
    optimiser settings agreed (None when it stopped before comparing them)."""

    def __new__(cls, ok, text, settings=None):
        verdict = super().__new__(cls, (ok, text))
        verdict.settings = settings
        return verdict


def compare_logits(ref, ours):
    """ref, ours: {video key: logits (C,)} -> (ok, text). Every video of one must be in the other."""
    if set(ref) != set(ours):
        only = sorted(set(ref) ^ set(ours))
        return False, f"{len(ref)} and {len(ours)} videos, {len(only)} not in both (e.g. {only[0]})"
    keys = sorted(ref)
    a = torch.stack([torch.as_tensor(ref[k], dtype=torch.float64) for k in keys])
    b = torch.stack([torch.as_tensor(ours[k], dtype=torch.float64) for k in keys])
    if a.shape != b.shape:
        return False, f"logit shapes {tuple(a.shape)} and {tuple(b.shape)}"
    diff = (a - b).abs().max().item()
    largest = a.abs().max().item()
    tol = max(1e-7, LOGIT_TOL * largest)
    same_pred = int((a.argmax(1) == b.argmax(1)).sum())
    return diff <= tol, (f"{len(keys)} videos, max |logit diff| {diff:.1e} (tol {tol:.0e}; largest |logit| "
                         f"{largest:.3g}, logit std {a.std().item():.3g}), same top-1 on {same_pred}")


def _max_abs_diff(a, b):
    if torch.equal(a, b):  # the frozen tensors: no arithmetic on most of the backbone
        return 0.0
    if not a.is_floating_point():
        a, b = a.double(), b.double()
    return (a - b).abs().max().item()


def state_diff(a, b):
    """(largest |a - b| over every tensor of two state dicts with the same keys, its key)."""
    diffs = {k: _max_abs_diff(a[k], b[k]) if a[k].numel() else 0.0 for k in a}
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst


def moved(state, start):
    """How far the steps moved the floating-point tensors (not the step counters)."""
    return max(_max_abs_diff(state[k], start[k]) for k in state if state[k].is_floating_point() and state[k].numel())


BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def norm_diff(a, b):
    """The L2 norm of a - b over every trainable-kind tensor of two state dicts (BatchNorm running
    statistics left out: checked by their largest |diff| after step 1), taken together."""
    total = 0.0
    for k in a:
        if k.endswith(BUFFERS):
            continue
        if a[k].is_floating_point() and a[k].numel() and not torch.equal(a[k], b[k]):
            total += (a[k].double() - b[k].double()).pow(2).sum().item()
    return total ** 0.5


def optimizer_summary(opt, kind=None):
    """(optimiser class, trainable parameter count, hyper-parameters of each group)."""
    skip = {"params", "name", "initial_lr"}
    return (kind or type(opt).__name__, sum(p.numel() for g in opt.param_groups for p in g["params"]),
            [{k: v for k, v in g.items() if k not in skip} for g in opt.param_groups])


def compare_settings(ref, ours):
    """(ok, [text]): the trainable parameter count and the optimiser settings of the two runs, set
    before any step."""
    (t1, c1, g1), (t2, c2, g2) = ref["optimizer"], ours["optimizer"]
    same_opt = t1 == t2 and [sorted(g.items()) for g in g1] == [sorted(g.items()) for g in g2]
    return c1 == c2 and same_opt, [f"trainable {c1:,} {'=' if c1 == c2 else '!='} {c2:,}",
                                   f"same {t2} settings" if same_opt else f"optimisers differ: {t1} {g1} / {t2} {g2}"]


def compare_training(ref, ours, noisy, dtype=torch.float32):
    """ref (the original), ours (this project), noisy (this project on the batch x (1 + 1 ulp noise)):
    dict(losses, step1, final: state dicts in this project's keys, optimizer summary; ours: start),
    computed in `dtype`. Returns a Verdict: (ok, text), and whether the settings agreed.

    After one step both codes must agree to float rounding (PARAM_TOL, FLOAT64_TOL in float64): same trainable set, lr,
    weight decay, eps, train/eval modes. Later steps amplify rounding (a ReLU that flips, batch
    statistics in the flow model), so the final state must agree within SPREAD times what a
    change of one rounding in the input does to this project's own run, or PARAM_TOL if larger, both
    as the L2 norm over all parameters and buffers; that tolerance must be at most MAX_SHARE of how far
    the steps moved them (L2), else the check could not tell a real difference from rounding and fails."""
    if set(ref["final"]) != set(ours["final"]):
        only = sorted(set(ref["final"]) ^ set(ours["final"]))
        return Verdict(False, f"different parameters and buffers, e.g. {only[0]}")
    ok, parts = compare_settings(ref, ours)
    if ours.get("stopped"):  # a non-finite loss: a difference of the numbers, found at that step
        return Verdict(False, "; ".join(parts + [f"this project's run stopped: {ours['stopped']} (the original's "
                                                 f"losses {'/'.join(f'{x:.5f}' for x in ref['losses'])})"]), ok)
    if len(ref["losses"]) != len(ours["losses"]) or not ours["losses"]:
        return Verdict(False, f"{len(ref['losses'])} and {len(ours['losses'])} losses")
    loss_floor, param_floor = (FLOAT64_TOL, FLOAT64_TOL) if dtype == torch.float64 else (LOSS_TOL, PARAM_TOL)

    loss1 = abs(ref["losses"][0] - ours["losses"][0])
    diff1, worst1 = state_diff(ref["step1"], ours["step1"])
    ok1 = loss1 <= loss_floor and diff1 <= param_floor
    parts.append(f"step 1: |loss diff| {loss1:.1e}, parameters and buffers |diff| <= {diff1:.1e} (tol {loss_floor:g} / "
                 f"{param_floor:g}; the step moved them up to {moved(ours['step1'], ours['start']):.1e})"
                 + ("" if diff1 <= param_floor else f", worst {worst1}"))

    loss_diff = max(abs(a - b) for a, b in zip(ref["losses"], ours["losses"]))
    diff, worst = state_diff(ref["final"], ours["final"])
    spread_loss = max(abs(a - b) for a, b in zip(noisy["losses"], ours["losses"]))
    spread, spread_worst = state_diff(noisy["final"], ours["final"])
    # Measured over all parameters together (L2): a largest |diff| is decided by the few weights behind a
    # ReLU that flips under rounding, which Adam turns into a full step in the other direction.
    diff2, spread2, went2 = (norm_diff(ref["final"], ours["final"]), norm_diff(noisy["final"], ours["final"]),
                             norm_diff(ours["final"], ours["start"]))
    loss_tol, tol2 = max(loss_floor, SPREAD * spread_loss), max(param_floor, SPREAD * spread2)
    share = tol2 / went2 if went2 > 0 else float("inf")
    counters = [k for k in ours["final"] if not ours["final"][k].is_floating_point()
                and not torch.equal(ref["final"][k], ours["final"][k])]  # step counts: exactly equal
    okn = loss_diff <= loss_tol and diff2 <= tol2 and share <= MAX_SHARE and not counters
    n = len(ours["losses"])
    parts.append(f"after {n} steps: losses {'/'.join(f'{x:.5f}' for x in ours['losses'])}, |loss diff| <= "
                 f"{loss_diff:.1e} (tol {loss_tol:.1e}); parameters, L2 over all: |diff| {diff2:.1e}, "
                 f"rounding spread {spread2:.1e}, tol {tol2:.1e} = {100 * share:.2g} % of how far the steps moved "
                 f"them ({went2:.1e}; limit {100 * MAX_SHARE:g} %); largest single |diff| {diff:.1e} ({worst}), "
                 f"spread {spread:.1e} ({spread_worst})"
                 + (f"; counters differ: {counters[0]}" if counters else "")
                 + ("" if share <= MAX_SHARE else ": the check cannot tell a difference from rounding here"))
    return Verdict(ok and ok1 and okn, "; ".join(parts), ok)


# ----------------------------------------------------------------------------- running both codes

def _recording(cls, store):
    class Recorded(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            store.append(self)
    return Recorded


class _Batches:
    """What main_run's makeDataset returns: only its length is used."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


class _EpochBatches:
    """main_run's DataLoader: the one fixed batch per epoch; on_epoch(e) runs as epoch e starts."""

    def __init__(self, batch, on_epoch=None):
        self.batch, self.on_epoch, self.epoch = batch, on_epoch, 0

    def __iter__(self):
        if self.on_epoch is not None:
            self.on_epoch(self.epoch)
        self.epoch += 1
        yield self.batch


def _clone(state):
    return {k: v.detach().clone() for k, v in state.items()}


def run_original_main(orig, script, factory_name, build, seed_path, batch, kwargs, dtype=torch.float32):
    """main_run(**kwargs) of main-run-*.py, one batch per epoch, its model and batch in `dtype`.
    Returns dict(losses (its printed training losses), step1 / final (its model's state dicts),
    optimizer summary)."""
    made, optimizers, loaders, snapshots = [], [], [], []
    batch = (batch[0].to(dtype), batch[1])

    def factory(*args, **kw):  # the script's model constructor -> the seed model
        model = build()
        model.load_state_dict(torch.load(seed_path, map_location="cpu", weights_only=True))
        model.to(dtype)
        made.append(dropout_off(model))
        return model

    def snapshot(epoch):  # after the first epoch = after the first optimiser step
        if epoch == 1:
            snapshots.append(_clone(made[0].state_dict()))

    def data_loader(*args, **kw):  # the training loader is made first, then the validation one
        loaders.append(_EpochBatches(batch, None if loaders else snapshot))
        return loaders[-1]

    saved = dict(loader=torch.utils.data.DataLoader, adam=torch.optim.Adam, sgd=torch.optim.SGD)
    out = io.StringIO()
    with orig.runtime():
        ns = orig.main_script(script)
        ns[factory_name] = factory
        ns["makeDataset"] = lambda *a, **k: _Batches(len(batch[1]))
        torch.utils.data.DataLoader = data_loader
        torch.optim.Adam = _recording(saved["adam"], optimizers)
        torch.optim.SGD = _recording(saved["sgd"], optimizers)
        try:
            with contextlib.redirect_stdout(out):
                ns["main_run"](**kwargs)
        except SystemExit:  # the script's own exits (output folder exists, unknown dataset)
            raise RuntimeError(f"{script}: main_run exited early; its output:\n{out.getvalue()[-2000:]}") from None
        finally:
            torch.utils.data.DataLoader = saved["loader"]
            torch.optim.Adam, torch.optim.SGD = saved["adam"], saved["sgd"]
    losses = [float(x) for x in re.findall(r"^Train: Epoch = \d+ \| Loss = (\S+) \|", out.getvalue(), flags=re.M)]
    if len(made) != 1 or len(optimizers) != 1:
        raise RuntimeError(f"{script}: main_run built {len(made)} models and {len(optimizers)} optimisers, expected "
                           f"one of each; its output:\n{out.getvalue()[-2000:]}")
    final = _clone(made[0].state_dict())
    opt = optimizers[0]
    return dict(losses=losses, step1=snapshots[0] if snapshots else final, final=final,
                optimizer=optimizer_summary(opt, type(opt).__bases__[0].__name__))


def run_project(kind, stage, seed_path, batch, steps, args, num_classes, work, classes=None, dtype=torch.float32):
    """This project's stage: model as the scripts build it from the seed file, its optimiser,
    train modes and training step (utils.train.train_step), model and batch in `dtype`. Returns dict(losses, start, step1,
    final (state dicts of the EgoRNN / flow model), optimizer summary)."""
    argv = ["--datasetDir", args.datasetDir, "--outDir", work, "--seqLen", str(args.seqLen), "--memSize",
            str(args.memSize), "--frameSize", str(args.frameSize), "--stage", str(stage), "--device", "cpu", "--precision", "fp32", "--pretrained", "none"]
    if kind == "rgb":
        argv += ["--stage1Dict", seed_path]
    a = base_parser(kind, "").parse_args(argv)
    exp = Experiment(kind, a, stage, torch.device("cpu"), "fp32", num_classes=num_classes,
                     classes=classes if classes is not None else [str(c) for c in range(num_classes)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random backbone": every weight comes from the seed file
        if stage == 2:
            model = build_stage_model(exp, None)  # reads --stage1Dict as main_rgb.py --stage 2 does
        else:
            model = exp.build_model("none")
            load_checkpoint(model, seed_path)
    model = dropout_off(prepare_model(exp, model)).to(dtype)
    start = _clone(_core(model).state_dict())
    optimizer = exp.make_optimizer(model)
    scheduler = exp.make_scheduler(optimizer)
    inputs, labels = batch
    losses, step1, stopped = [], None, None
    try:
        for step in range(steps):
            exp.set_train_mode(model)
            data = {"rgb" if kind == "rgb" else "flow": inputs.to(dtype), "label": labels.clone()}
            _, result = train_step(exp, model, data, optimizer, None, step)
            losses.append(result["loss"].item())
            scheduler.step()  # one step is one epoch here, as on the original's side
            if step == 0:
                step1 = _clone(_core(model).state_dict())
    except NonFiniteLossError as e:  # the settings are still compared (compare_training)
        stopped = str(e).split(";")[0]
    return dict(losses=losses, start=start, step1=step1, final=_clone(_core(model).state_dict()),
                optimizer=optimizer_summary(optimizer), stopped=stopped)


def _core(model):
    """The part of a project model the original has: SAMSOPNet -> its EgoRNN."""
    return getattr(model, "egornn", model)


def in_project_keys(state, kind, num_classes, mem_size, path, dtype=torch.float32):
    """An original state dict, saved as the original does and read by this project's checkpoint
    loader into a fresh model in `dtype`: that model's state dict (this project's keys)."""
    torch.save(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = models.EgoRNN(num_classes, mem_size=mem_size, pretrained="none") if kind == "rgb" else \
            models.FlowResNet34(num_classes, pretrained="none")
    load_checkpoint(fresh.to(dtype), path)
    return _clone(fresh.state_dict())


def training_check(orig, kind, stage, script, factory_name, build, seed_path, batch, kwargs, args, C, work,
                   classes=None, dtype=torch.float32):
    """-> (ok, text) of one training check: the original main_run, this project's step, and this
    project's step on the batch x (1 + NOISE N(0, 1)) (the rounding spread), all in `dtype`."""
    try:
        return _training_check(orig, kind, stage, script, factory_name, build, seed_path, batch, kwargs, args, C,
                               work, classes, dtype)
    except NonFiniteLossError as e:  # reported, and the other checks go on
        return Verdict(False, f"this project's run stopped: {str(e).split(';')[0]}")


def _training_check(orig, kind, stage, script, factory_name, build, seed_path, batch, kwargs, args, C, work, classes,
                    dtype):
    os.makedirs(work, exist_ok=True)
    ref = run_original_main(orig, script, factory_name, build, seed_path, batch, kwargs, dtype)
    for k in ("step1", "final"):
        ref[k] = in_project_keys(ref[k], kind, C, args.memSize, os.path.join(work, "trained.pth"), dtype)
    ours = run_project(kind, stage, seed_path, batch, args.steps, args, C, os.path.join(work, "project"), classes, dtype)
    if ours["stopped"]:
        return compare_training(ref, ours, None, dtype)
    g = torch.Generator().manual_seed(args.seed)
    x = batch[0].to(dtype)
    noisy_batch = (x * (1 + NOISE[dtype] * torch.randn(x.shape, generator=g, dtype=dtype)), batch[1])
    noisy = run_project(kind, stage, seed_path, noisy_batch, args.steps, args, C, os.path.join(work, "project_noisy"),
                        classes, dtype)
    if noisy["stopped"]:
        return Verdict(False, "; ".join(compare_settings(ref, ours)[1] + [
            f"this project's run on the batch x (1 + 1 ulp noise) stopped: {noisy['stopped']}: the check cannot tell "
            "a difference from rounding here"]))
    return compare_training(ref, ours, noisy, dtype)


def project_logits(model, dataset_dir, ckpt, args, out_dir):
    """evaluate.py on a checkpoint -> {video key: logits} read back from its predictions.csv."""

    argv = ["--model", model, "--datasetDir", dataset_dir, "--modelStateDict", ckpt, "--seqLen", str(args.seqLen),
            "--memSize", str(args.memSize), "--testUsers", *args.testUsers, "--outDir", out_dir, "--numWorkers", "0",
            "--device", "cpu", "--batchSize", "4", "--stackSize", str(STACK), "--numSeg", str(FLOW_SEGS),
            "--frameSize", str(args.frameSize)]
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        evaluation.main(argv)
    with open(os.path.join(out_dir, "predictions.csv"), newline="") as f:
        return {video_key(r["video"]): torch.tensor([float(v) for k, v in r.items() if k.startswith("logit_")])
                for r in csv.DictReader(f)}


@torch.no_grad()
def original_logits(orig, kind, ckpt, test_root, args, num_classes):
    """The original test pipeline on its layout folder -> {video key: logits}."""
    out = {}
    with orig.runtime():
        if kind == "rgb":
            model = orig.rgb_model(num_classes, args.memSize)
        elif kind == "flow":
            model = orig.flow_model(num_classes, False)
        else:
            model = orig.twostream_model(num_classes, args.memSize)
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
        model.train(False)
        if kind == "rgb":  # eval-run-rgb.py: batch 1, (T, 1, 3, 224, 224)
            ds = orig.rgb_dataset(test_root, args.seqLen)
            for i, path in enumerate(ds.images):
                clip, _ = ds[i]
                out[video_key(path)] = model(clip.unsqueeze(0).permute(1, 0, 2, 3, 4))[0][0]
        elif kind == "flow":  # eval-run-flow.py: the mean logits of the stacks
            ds = orig.flow_dataset(test_root, FLOW_SEGS)
            for i, path in enumerate(ds.imagesX):
                stacks, _ = ds[i]
                out[video_key(path)] = torch.mean(model(stacks)[0], 0)
        else:  # eval-run-twoStream-joint.py, with the RGB test pipeline's clip (see EXCLUDED)
            ds = orig.twostream_dataset(test_root, args.seqLen)
            rgb = orig.rgb_dataset(test_root, args.seqLen)
            clips = {video_key(p): i for i, p in enumerate(rgb.images)}
            for i, path in enumerate(ds.imagesX):
                flow, _, _ = ds[i]
                clip, _ = rgb[clips[video_key(path)]]
                out[video_key(path)] = model(flow.unsqueeze(0), clip.unsqueeze(0).permute(1, 0, 2, 3, 4))[0]
    return out


@torch.no_grad()
def calibrate_batchnorm(model, clips):
    """BatchNorm statistics of a random backbone from a few clips (cumulative average), as
    --pretrained none does: a random ResNet-34 with mean 0 / variance 1 statistics saturates the
    ConvLSTM, which would make any comparison weak."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the clips
        m.train()
    for x in clips:
        model(x)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.eval()


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    orig = Original(args.egornnSrc)
    torch.set_flush_denormal(True)
    keep = args.workDir is not None
    if keep and os.path.isdir(args.workDir) and os.listdir(args.workDir):
        raise UserError(f"--workDir {args.workDir} is not empty; pass a new or empty folder")
    work = os.path.abspath(args.workDir) if keep else tempfile.mkdtemp(prefix="verify_original_")
    os.makedirs(work, exist_ok=True)
    try:
        return _main(args, orig, work)
    except DatasetError as e:
        raise UserError(f"--datasetDir {args.datasetDir}: {e} (the checks need RGB frames and optical flow)")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _revision(src):
    try:
        r = subprocess.run(["git", "-C", src, "log", "-1", "--format=%h %cs"], capture_output=True, text=True,
                           timeout=10)
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "no git metadata"
    except (OSError, subprocess.SubprocessError):
        return "no git metadata"


@contextlib.contextmanager
def planted(name):
    """One of PLANTS on this project's side while the block runs (None: nothing planted)."""
    saved = dict(choice=G.rgb_choice, frame=ClipTransform.frame, optimizer=E.Experiment.make_optimizer,
                 train_mode=E.Experiment.set_train_mode)
    if name == "frames":
        def rgb_choice(numbers, seq_len):
            chosen, ok = saved["choice"](numbers, seq_len)
            return [min(i + 1, len(numbers) - 1) for i in chosen], ok
        G.rgb_choice = rgb_choice
    elif name == "crop":
        def frame(self, img, params):
            if params is not None:
                return saved["frame"](self, img, params)
            img = TF.resize(img, self.short, interpolation=_BILINEAR)
            w, h, f = *img.size, self.frameSize
            return TF.crop(img, int(round((h - f) / 2.0)), int(round((w - f) / 2.0)) + 1, f, f)
        ClipTransform.frame = frame
    elif name == "eps":
        def make_optimizer(self, model):
            opt = saved["optimizer"](self, model)
            for g in opt.param_groups:
                if "eps" in g:
                    g["eps"] = 1e-8
            return opt
        E.Experiment.make_optimizer = make_optimizer
    elif name in ("layer4_bn", "flow_bn"):
        def set_train_mode(self, model):
            saved["train_mode"](self, model)
            if name == "layer4_bn" and self.family == "rgb" and self.stage == 2:
                for m in _core(model).backbone.layer4.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.train()
            if name == "flow_bn" and self.family == "flow":
                for m in model.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        E.Experiment.set_train_mode = set_train_mode
    try:
        yield
    finally:
        G.rgb_choice, ClipTransform.frame = saved["choice"], saved["frame"]
        E.Experiment.make_optimizer, E.Experiment.set_train_mode = saved["optimizer"], saved["train_mode"]


def dropout_layout(model, *inputs):
    """[(p, the module that runs right after it)] of every dropout in a forward pass of `model`."""
    calls, hooks = [], []
    for m in model.modules():
        if not list(m.children()):
            hooks.append(m.register_forward_hook(lambda mod, i, o: calls.append(mod)))
    try:
        with torch.no_grad():
            model.eval()(*inputs)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for k, m in enumerate(calls):
        if isinstance(m, nn.Dropout):
            after = calls[k + 1] if k + 1 < len(calls) else None
            out.append((m.p, f"{type(after).__name__}({after.in_features}, {after.out_features})"
                        if isinstance(after, nn.Linear) else type(after).__name__))
    return out


def twostream_fits(orig, C, mem_size):
    """Whether the original two-stream model's classifier reads 512 flow + mem_size RGB features."""
    with orig.runtime():
        last = [m for m in orig.twostream_model(C, mem_size).modules() if isinstance(m, nn.Linear)][-1]
    return last.in_features == 512 + mem_size


def compare_dropout(orig, C, args):
    """(ok, text): dropout probabilities and positions of the original's models and this project's."""
    F_ = args.frameSize
    clip, stack = torch.zeros(1, 1, 3, F_, F_), torch.zeros(1, 2 * STACK, F_, F_)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = {"rgb": dropout_layout(models.EgoRNN(C, mem_size=args.memSize, pretrained="none"), clip),
                "flow": dropout_layout(models.FlowResNet34(C, pretrained="none"), stack)}
        rgb_ours = models.EgoRNN(C, mem_size=args.memSize, pretrained="none")
        ours["twostream"] = dropout_layout(models.TwoStream(C, models.FlowResNet34(C, pretrained="none"), rgb_ours),
                                           stack, clip)
    with orig.runtime():
        theirs = {"rgb": dropout_layout(orig.rgb_model(C, args.memSize), clip.permute(1, 0, 2, 3, 4)),
                  "flow": dropout_layout(orig.flow_model(C, False), stack)}
        if twostream_fits(orig, C, args.memSize):
            theirs["twostream"] = dropout_layout(orig.twostream_model(C, args.memSize), stack,
                                                 clip.permute(1, 0, 2, 3, 4))
        else:
            ours.pop("twostream")
    ok = ours == theirs
    text = "; ".join(f"{k} {theirs[k]}" + ("" if ours[k] == theirs[k] else f" / this project {ours[k]}")
                     for k in theirs)
    return ok, text


class OpenedFrames:
    """Records the RGB frame files the original opens (PIL.Image.open), per video."""

    def __init__(self):
        self.numbers = {}

    @contextlib.contextmanager
    def recording(self):
        from PIL import Image
        saved = Image.open

        def opened(fp, *a, **k):
            name = os.path.basename(str(fp))
            m = re.match(r"image_(\d+)\.", name)
            if m:
                self.numbers.setdefault(video_key(os.path.dirname(str(fp))), []).append(int(m.group(1)))
            return saved(fp, *a, **k)
        Image.open = opened
        try:
            yield self
        finally:
            Image.open = saved


def compare_frame_numbers(opened, test):
    """(ok, text): the frame numbers this project's loader reads for each linked test video against the
    file numbers the original opened for it."""
    ds = test["dataset"]
    keys = set(test["keys"])
    with contextlib.redirect_stderr(io.StringIO()):  # its scan warnings were printed once already
        now = GTEA61(ds.root, ds.users, "rgb", train=False, seqLen=ds.seqLen)  # as chosen now (a plant changes it)
    ours = {video_key(vid): [num for num, _ in now.rgb_chosen(i)] for i, vid in enumerate(now.video_ids)
            if video_key(vid) in keys}
    bad = sorted(k for k in keys if ours.get(k) != opened.get(k))
    first = sorted(keys)[0]
    return not bad, (f"{len(keys)} videos, e.g. {first}: the original opened image numbers {opened.get(first)}, this "
                     f"project reads frame numbers {ours.get(first)}" + (f"; they differ on {len(bad)}" if bad else ""))


def estimate_seconds(orig, args, C, clip):
    """A rough time estimate from one timed original RGB forward of one clip."""
    with orig.runtime():
        model = orig.rgb_model(C, args.memSize).train(False)
        t = time.perf_counter()
        with torch.no_grad():
            model(clip.unsqueeze(1))
        per_frame = (time.perf_counter() - t) / clip.shape[0]
    forward = per_frame * (2 * args.seqLen + 2 * (FLOW_SEGS + 1) + 2 * args.seqLen) * args.n_test
    training = per_frame * 3 * 3 * args.steps * args.batchSize * args.seqLen * 3  # 3 runs, fwd + bwd
    honest = forward + training
    return honest, honest + (2 * forward + training * 5 / 3 if args.selfTest else 0)  # rgb checks twice, flow once


def _main(args, orig, work):
    print(f"original Ego-RNN code: {orig.src} ({_revision(orig.src)}); torch {torch.__version__}, CPU, fp32")
    orig.frame_size = args.frameSize
    test = original_layout(args.datasetDir, args.testUsers, os.path.join(work, "test"), args.seqLen, args.videos)
    train = original_layout(args.datasetDir, args.trainUsers, os.path.join(work, "train"), args.seqLen,
                            None if args.videos is None else max(args.videos, args.batchSize, args.calibrationClips))
    C, classes, test_root, train_root = test["num_classes"], test["classes"], test["root"], train["root"]
    if not test["keys"] or not train["keys"]:
        raise UserError(f"--datasetDir {args.datasetDir}: no video the original can read for the "
                        f"{'test' if not test['keys'] else 'training'} users (numbering it cannot open)")
    args.n_test = len(test["keys"])
    subset = project_subset(args.datasetDir, test, os.path.join(work, "project_test"))
    data_kind, reason = dataset_kind(args.datasetDir)
    print(f"dataset {args.datasetDir} ({data_kind.upper() if data_kind == 'synthetic' else data_kind}: {reason}): "
          f"{C} classes, test users {' '.join(args.testUsers)} ({args.n_test} videos"
          f"{'' if args.videos is None else f', --videos {args.videos}'}); seqLen {args.seqLen}, memSize "
          f"{args.memSize}, frameSize {args.frameSize}, {args.steps} steps on {args.batchSize} training videos, "
          f"seed {args.seed}")
    left_out = test["left_out"] + train["left_out"]
    if left_out:
        print(f"warning: {len(left_out)} video(s) left out: their numbering lacks a frame number the original "
              f"opens (it would crash on them): {', '.join(left_out[:5])}{' ...' if len(left_out) > 5 else ''}")
    print("run-time patches of the original code:")
    for p in PATCHES:
        print(f"  - {p}")
    print("deviations of this project excluded from the comparison (docs/deviations.md):")
    for e in EXCLUDED:
        print(f"  - {e}")

    # 1. the original models from one seed, saved as the original does
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    paths = {k: os.path.join(work, f"model_{k}_state_dict.pth") for k in ("rgb", "flow", "twostream")}
    with orig.runtime():
        rgb = orig.rgb_model(C, args.memSize)
        flow = orig.flow_model(C, True)
        rgb_train = orig.rgb_dataset(train_root, args.seqLen)
        flow_train = orig.flow_dataset(train_root, 1)
        if orig.imagenet != "cache":
            idx = spread(len(rgb_train), args.calibrationClips)
            calibrate_batchnorm(rgb.resNet, [rgb_train[i][0] for i in idx])
            calibrate_batchnorm(flow, [torch.stack([flow_train[i][0] for i in idx])])
        torch.save(rgb.state_dict(), paths["rgb"])
        torch.save(flow.state_dict(), paths["flow"])
        two = orig.twostream_model(C, args.memSize, paths["flow"], paths["rgb"])
        torch.save(two.state_dict(), paths["twostream"])
        idx = spread(len(rgb_train), args.batchSize)
        rgb_batch = (torch.stack([rgb_train[i][0] for i in idx]), torch.tensor([rgb_train[i][1] for i in idx]))
        flow_batch = (torch.stack([flow_train[i][0] for i in idx]), torch.tensor([flow_train[i][1] for i in idx]))
        paths["rgb_train"] = pin_cam_class(rgb, rgb_batch[0], os.path.join(work, "model_rgb_train_seed.pth"))
    if orig.imagenet == "cache":
        print("weights: torchvision's ImageNet ResNet-34 file from the torch cache through the original's pretrained "
              "path (the original downloaded resnet34-333f7ec4.pth); the rest seeded")
    else:
        print(f"weights: no ImageNet ResNet-34 file in the torch cache: seeded random initialisation (the original's), "
              f"BatchNorm statistics estimated from {len(spread(len(rgb_train), args.calibrationClips))} training clips")
    print(f"state dicts saved with torch.save(model.state_dict()): {', '.join(os.path.basename(p) for p in paths.values())}")
    print(f"RGB training seed: the ImageNet classifier's bias of class 0 raised by {CAM_MARGIN:g} x the range of its "
          f"logits on the batch, so both sides attend with the same CAM class at every step (near-tied ImageNet logits "
          f"would otherwise flip it under rounding); the forward checks use the unchanged seed")
    honest, total = estimate_seconds(orig, args, C, rgb_batch[0][0])
    print(f"estimated time: about {max(1, round(honest / 60))} min for the checks"
          + (f", {max(1, round(total / 60))} min with --selfTest" if args.selfTest else "")
          + " (from one timed forward; a busy machine takes longer)", flush=True)

    ctx = dict(orig=orig, args=args, C=C, classes=classes, paths=paths, test_root=test_root, subset=subset,
               test=test, rgb_batch=rgb_batch, flow_batch=flow_batch, work=work)
    report = Report()
    ok, text = compare_dropout(orig, C, args)
    report.line(ok, f"dropout probabilities and positions (off in the training checks): {text}")
    run_checks(ctx, report, "honest")
    print(f"{'all checks agree' if report.ok else 'DIFFERENCES FOUND'} (tolerances: logits {LOGIT_TOL:g} x "
          f"the largest |logit|; training, step 1: losses {LOSS_TOL:g}, parameters and buffers {PARAM_TOL:g} ({FLOAT64_TOL:g} in "
          f"float64); "
          f"after the last step: {SPREAD} x the rounding spread, at least those, at most {100 * MAX_SHARE:g} % of how "
          f"far the steps moved the parameters)")
    if not args.selfTest:
        return 0 if report.ok else 1
    outcomes = []
    for name, (what, reaches, arithmetic) in PLANTS.items():
        print(f"self-test, planted on this project's side: {what} (rerun: the {' and '.join(reaches)} checks, "
              f"the ones it can reach)", flush=True)
        planted_report = Report()
        with planted(name):
            run_checks(ctx, planted_report, name, reaches)
        outcomes.append(self_test_outcome(report, planted_report, arithmetic))
        print(f"self-test {name}: {outcomes[-1][1]}")
    caught = sum(o == "caught" for o, _ in outcomes)
    unshown = sum(o == "not shown" for o, _ in outcomes)
    print(f"self-test: {caught} of {len(outcomes)} planted differences caught"
          + (f", {unshown} not shown (every check they reach differs in the honest run)" if unshown else "")
          + f"; honest run {'agrees' if report.ok else 'DIFFERS'}")
    return 0 if report.ok and caught == len(outcomes) else 1


def self_test_outcome(honest, planted_report, arithmetic):
    """("caught" | "missed" | "not shown", text) of one plant: caught when a check that agreed in the
    honest run reports a difference with the plant (an arithmetic plant: with that check's settings
    comparison still agreeing, so that the numbers, not the settings, caught it); not shown when every
    check the plant reached already differed in the honest run."""
    agreed = [c for c in planted_report.results if honest.results.get(c, (False, None))[0]]
    if not agreed:
        return "not shown", ("NOT SHOWN (every check it reaches differs in the honest run already: "
                             f"{', '.join(planted_report.results)})")
    turned = [c for c in agreed if not planted_report.results[c][0]]
    if arithmetic:
        turned = [c for c in turned if planted_report.results[c][1]]
    if not turned:
        return "missed", "MISSED" + (" (no check reported it with the settings comparison agreeing)" if arithmetic
                                     else "")
    return "caught", (f"CAUGHT (reported as a difference by {', '.join(turned)}"
                      + (", the settings comparison agreeing: by the numbers)" if arithmetic else ")"))


def pin_cam_class(model, clips, path):
    """The RGB seed with the ImageNet classifier's class-0 bias raised CAM_MARGIN x the range of its logits
    on `clips` (B, T, 3, H, W) above the rest, saved to `path`."""
    with torch.no_grad():
        model.train(False)
        logits = model.resNet(clips.flatten(0, 1))[0]  # the ImageNet logits of every frame
        state = _clone(model.state_dict())
    state["resNet.fc.bias"][0] += CAM_MARGIN * (logits.max() - logits.min()).item() + 1.0
    torch.save(state, path)
    return path


def run_checks(ctx, report, label, reaches=("forward", "training rgb", "training flow")):
    """The forward and training checks (those named in `reaches`), reported into `report`."""
    orig, args, C, paths, work = ctx["orig"], ctx["args"], ctx["C"], ctx["paths"], os.path.join(ctx["work"], label)
    if "forward" in reaches:
        for kind, what in (("rgb", f"{args.seqLen} frames at floor(linspace(1, N, {args.seqLen})) by file number"),
                           ("flow", f"mean logits of {FLOW_SEGS} stacks"), ("twostream", "centre flow stack")):
            if kind == "twostream" and not twostream_fits(orig, C, args.memSize):
                print(f"forward twostream: skipped, the original two-stream classifier does not take 512 + "
                      f"--memSize {args.memSize} features (Ego-RNN's is Linear(512 * 2, C): --memSize 512)")
                continue
            opened = OpenedFrames()
            with opened.recording():
                ref = original_logits(orig, kind, paths[kind], ctx["test_root"], args, C)
            ours = project_logits(kind, ctx["subset"], paths[kind], args, os.path.join(work, f"eval_{kind}"))
            ok, text = compare_logits(ref, ours)
            report.line(ok, f"forward {kind:9s} evaluate.py vs the original test pipeline ({what}): {text}",
                        f"forward {kind}")
            if kind == "rgb":
                ok, text = compare_frame_numbers(opened.numbers, ctx["test"])
                report.line(ok, f"frame numbers: the files the original opens vs the frames this project reads: {text}",
                            "frame numbers")
    if "training rgb" in reaches:
        for stage in (1, 2):
            d = DEFAULTS["rgb"][stage]
            kwargs = dict(dataset="gtea61", stage=stage, train_data_dir="train", val_data_dir=None,
                          stage1_dict=paths["rgb_train"], seqLen=args.seqLen, trainBatchSize=args.batchSize,
                          valBatchSize=args.batchSize, numEpochs=args.steps, lr1=d["lr"], decay_factor=d["decayRate"],
                          decay_step=d["stepSize"], memSize=args.memSize, out_dir=os.path.join(work, "original"))
            verdict = training_check(orig, "rgb", stage, "main-run-rgb.py", "attentionModel",
                                     lambda: orig.rgb_model(C, args.memSize), paths["rgb_train"], ctx["rgb_batch"],
                                     kwargs, args, C, os.path.join(work, f"rgb_stage{stage}"), ctx["classes"])
            report.line(verdict[0], f"training rgb stage {stage} (main-run-rgb.py main_run vs utils.train.train_step, "
                                    f"Adam lr {d['lr']:g}, {args.steps} steps, CAM class pinned): {verdict[1]}",
                        f"training rgb stage {stage}", verdict.settings)
    if "training flow" in reaches:
        d = DEFAULTS["flow"][1]
        kwargs = dict(dataset="gtea61", trainDir="train", valDir="val", stackSize=STACK, trainBatchSize=args.batchSize,
                      valBatchSize=args.batchSize, numEpochs=args.steps, lr1=d["lr"], decay_factor=d["decayRate"],
                      decay_step=d["stepSize"], outDir=os.path.join(work, "original"))
        verdict = training_check(orig, "flow", 1, "main-run-flow.py", "flow_resnet34",
                                 lambda: orig.flow_model(C, False), paths["flow"], ctx["flow_batch"], kwargs, args, C,
                                 os.path.join(work, "flow"), ctx["classes"], FLOW_CHECK_DTYPE)
        report.line(verdict[0], f"training flow (main-run-flow.py main_run vs utils.train.train_step, SGD lr "
                                f"{d['lr']:g}, BatchNorm in train mode, {args.steps} steps, both codes in float64: in "
                                f"float32 the random start and train-mode BatchNorm amplify rounding past what the "
                                f"check can tell apart): {verdict[1]}", "training flow", verdict.settings)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
