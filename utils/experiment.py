"""What the five experiment scripts share: arguments, data, model building, losses, optimisers,
and the stage-1 -> stage-2 sequence. Each `main_*.py` only names its experiment and its own
extra arguments, then calls `run(kind, argv)`.

Experiments (`kind`):
  rgb       Ego-RNN RGB stream (`--noAttention`: the ConvLSTM row of Table 1)
  ms        Ego-RNN + motion segmentation head (stage 2), classification or `--regression`
  ms_op     SAMSOP-Net: Ego-RNN + MS head + order prediction head (`--noMS`: OP only)
  flow      warp-flow ResNet-34 (one stage)
  twostream joint two-stream training from a flow and a stage-2 RGB model (one stage)
"""
import argparse
import os
import sys
import warnings

import torch
import torch.nn.functional as F

from utils.errors import UserError
from utils.train import autocast, fit, seed_everything  # noqa: F401  (autocast re-exported)

# Optimiser schedules of reference §1-2: per family and stage.
DEFAULTS = {
    "rgb": {1: dict(lr=1e-3, numEpochs=300, stepSize=[25, 75, 150], decayRate=0.1),
            2: dict(lr=1e-4, numEpochs=150, stepSize=[25, 75], decayRate=0.1)},
    "flow": {1: dict(lr=1e-2, numEpochs=750, stepSize=[150, 300, 500], decayRate=0.5)},
    # StepLR(step_size=1, gamma=0.99): the lr decays a little every epoch.
    "twostream": {1: dict(lr=1e-2, numEpochs=250, stepSize=[1], decayRate=0.99)},
}
FAMILY = {"rgb": "rgb", "ms": "rgb", "ms_op": "rgb", "flow": "flow", "twostream": "twostream"}
STAGES = {"rgb": (1, 2), "flow": (1,), "twostream": (1,)}
OP_FRAMES = 4
SELECT = ("test", "val", "last")
FLOW_MODEL = "experiments/main_flow/stage1/best_model.pth"  # two-stream's default --flowModel
DATASETS = ("gtea61", "egtea")
# GTEA-61's users. The parser's defaults are these very list objects, so that check_args can tell
# them from users typed on the command line (refused with --dataset egtea, whose splits select videos).
TRAIN_USERS, TEST_USERS = ["S1", "S3", "S4"], ["S2"]


# ----------------------------------------------------------------------------- arguments

class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: <what>; see --help`, exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def default_workers():
    """DataLoader workers: one per core up to 8 (2 on a 2-core machine, 8 on a GPU host); under
    torchrun the node's cores are shared by its processes."""
    return max(1, min(8, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


def base_parser(kind, description):
    p = Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    stages = STAGES[FAMILY[kind]]
    p.add_argument("--stage", type=int, choices=stages, default=None,
                   help="run only this stage (default: " + " then ".join(map(str, stages)) + ")")
    p.add_argument("--datasetDir", default=None, help="GTEA-61 root (course or Ego-RNN layout); default: "
                   "$GTEA61_DIR, else data/GTEA61, else make demo's data/synthetic_gtea61 (utils/defaults.py). "
                   "--dataset egtea: a root prepared by python -m datasets.prepare --egtea (required)")
    p.add_argument("--dataset", choices=DATASETS, default="gtea61",
                   help="gtea61: videos selected by user folders; egtea: EGTEA Gaze+ or any split-file "
                        "dataset (datasets/egtea.py), videos selected by --split")
    p.add_argument("--split", type=int, choices=(1, 2, 3), default=None,
                   help="--dataset egtea: train on train_splitK.txt, test on test_splitK.txt (default 1)")
    p.add_argument("--trainUsers", nargs="+", default=TRAIN_USERS, help="GTEA-61 users to train on")
    p.add_argument("--testUsers", nargs="+", default=TEST_USERS, help="GTEA-61 users to test on")
    p.add_argument("--outDir", default=None, help=f"default experiments/main_{kind}_seq<seqLen>")
    p.add_argument("--seqLen", type=int, default=16, help="frames per clip (RGB)")
    p.add_argument("--trainBatchSize", type=int, default=32)
    p.add_argument("--valBatchSize", type=int, default=32)
    p.add_argument("--numEpochs", type=int, default=None, help="default: the paper's for the stage")
    p.add_argument("--lr", type=float, default=None, help="default: the paper's for the stage")
    p.add_argument("--stepSize", type=int, nargs="+", default=None, help="lr decay epochs (milestones)")
    p.add_argument("--decayRate", type=float, default=None, help="lr decay factor")
    p.add_argument("--memSize", type=int, default=512, help="ConvLSTM memory channels")
    p.add_argument("--stackSize", type=int, default=None,
                   help="flow frames per stack (default 5; two-stream: the flow model's)")
    p.add_argument("--pretrained", default="imagenet", help="imagenet | none | PATH to a resnet34 state dict")
    p.add_argument("--frameSize", type=int, default=224)
    p.add_argument("--numWorkers", type=int, default=default_workers())
    p.add_argument("--cacheDir", default="auto",
                   help="decoded-frame cache (datasets/cache.py): auto = <datasetDir>/.cache/frames if "
                        "writable, else <outDir>/.frame_cache; none = decode every frame every epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--select", choices=SELECT, default="test",
                   help="which epoch becomes best_model.pth: best on the test users (the paper's protocol), "
                        "best on a held-out share of the training videos (val), or the last one")
    p.add_argument("--valFraction", type=float, default=0.15,
                   help="--select val: share of each class's training videos held out (fixed split)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--cpuTransforms", action="store_true",
                   help="on a GPU, resize/crop/flip the RGB frames with PIL in the DataLoader workers (the CPU "
                        "pipeline, exact) instead of on the GPU (faster; pixels within a few levels of PIL's)")
    p.add_argument("--dataOnDevice", choices=["auto", "on", "off"], default="auto",
                   help="hold the decoded training frames on the device and transform them there, without "
                        "a DataLoader (RGB models; auto: on a GPU when they take under a quarter of its free "
                        "memory; on: also on the CPU; utils/on_device.py)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="bf16 autocast where the hardware runs it natively (auto), or force one")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from last.pth")
    p.add_argument("--overwrite", action="store_true", help="replace the results in the stage folder")
    p.add_argument("--camVideos", type=int, default=3, help="test videos drawn in cam/ (RGB models)")
    if FAMILY[kind] == "rgb":
        p.add_argument("--stage1Dict", default=None, help="stage-1 checkpoint (default <outDir>/stage1/best_model.pth)")
        p.add_argument("--noAttention", action="store_true", help="plain ConvLSTM: layer4 features, no CAM")
    if kind in ("ms", "ms_op"):
        p.add_argument("--regression", action="store_true", help="MS head as regression (MSE on raw maps)")
        p.add_argument("--msInput", choices=["attention", "layer4"], default="attention",
                       help="features the MS head reads: attended (paper) or plain layer4 (SparNet)")
        p.add_argument("--msWeight", type=float, default=1.0)
    if kind == "ms_op":
        p.add_argument("--noMS", action="store_true", help="order prediction only (the paper's ablation)")
        p.add_argument("--opWeight", type=float, default=1.0)
        p.add_argument("--opInput", choices=["flat", "pooled"], default="flat",
                       help="what fc6 of the OP head reads per frame: the flattened 512 x s x s layer4 map "
                            "(the paper's code) or its global average (512)")
    if kind == "twostream":
        p.add_argument("--flowModel", default=None, help="best flow model (default experiments/main_flow/stage1/best_model.pth)")
        p.add_argument("--rgbModel", default=None,
                       help="best stage-2 RGB model (default experiments/main_rgb_seq<seqLen>/stage2/best_model.pth)")
        p.add_argument("--flowLr", type=float, default=1e-4, help="lr of the flow layer4 (reference §2)")
    return p


def check_dataset_args(args):
    """--dataset / --split against --trainUsers / --testUsers. With --dataset egtea the split files
    select the videos: trainUsers / testUsers become [train_splitK] / [test_splitK], so that every
    record and check made for users (checkpoint configs, resume, the overlap check) covers splits."""
    dataset = getattr(args, "dataset", "gtea61")
    if dataset == "egtea":
        given = [f"--{n}" for n, d in (("trainUsers", TRAIN_USERS), ("testUsers", TEST_USERS))
                 if getattr(args, n) is not d]
        if given:
            raise UserError(f"{' and '.join(given)} select GTEA-61 users; --dataset egtea selects videos by "
                            f"split file: use --split 1|2|3")
        if args.datasetDir is None:
            raise UserError("--dataset egtea needs --datasetDir: a root prepared by "
                            "python -m datasets.prepare --egtea RELEASE --out ROOT")
        args.split = args.split or 1
        from datasets.egtea import split_names
        train, test = split_names(args.split)
        args.trainUsers, args.testUsers = [train], [test]
    elif getattr(args, "split", None) is not None:
        raise UserError(f"--split {args.split} applies to --dataset egtea; GTEA-61 selects videos by "
                        f"--trainUsers / --testUsers")


def check_args(kind, args):
    check_dataset_args(args)
    for name in ("lr", "numEpochs", "trainBatchSize", "valBatchSize", "seqLen", "frameSize", "memSize", "stackSize"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be positive (got {value})")
    if args.decayRate is not None and args.decayRate <= 0:
        raise UserError(f"--decayRate must be positive (got {args.decayRate})")
    if args.numWorkers < 0:
        raise UserError(f"--numWorkers must be >= 0 (got {args.numWorkers})")
    if kind == "ms_op" and args.seqLen < OP_FRAMES:
        raise UserError(f"--seqLen {args.seqLen} is too short for the order prediction head, "
                        f"which shuffles {OP_FRAMES} frames of the clip: use --seqLen >= {OP_FRAMES}")
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if kind == "twostream" and args.stepSize is not None and len(args.stepSize) != 1:
        raise UserError(f"--stepSize: two-stream decays the lr every N epochs (StepLR): give one value, "
                        f"got {args.stepSize}")
    if args.frameSize < 32:
        raise UserError(f"--frameSize {args.frameSize} is too small for ResNet-34: use >= 32")
    both = [u for u in args.testUsers if u in args.trainUsers]
    if both:
        raise UserError(f"--trainUsers and --testUsers share {' '.join(both)}: a user is either trained "
                        f"on or tested on, not both")
    if args.select == "val" and not 0 < args.valFraction < 1:
        raise UserError(f"--valFraction must be between 0 and 1 (got {args.valFraction})")



def stage_args(args, family, stage):
    """Copy of args with the stage's defaults filled in."""
    a = argparse.Namespace(**vars(args))
    for k, v in DEFAULTS[family][stage].items():
        if getattr(a, k) is None:
            setattr(a, k, list(v) if isinstance(v, list) else v)
    if a.stackSize is None:  # two-stream: the flow model's own
        a.stackSize = flow_stack_size(a.flowModel or default_flow_model(a)) if family == "twostream" else 5
    a.stage = stage
    return a


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu")
    return torch.device(name)


def cpu_has_native_bf16(cpuinfo=None):
    """True on CPUs with bf16 matrix instructions: AMX (Intel Xeon 4th gen on) or AVX512_BF16
    (AMD Zen 4 on, Intel Cooper Lake). On both, bf16 training runs about 2x (Zen 4) to 4x (AMX)
    faster than fp32 (README "Speed"); elsewhere bf16 is emulated and slower than fp32."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_precision(name, device):
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


# ----------------------------------------------------------------------------- experiments

class Experiment:
    """One stage of one experiment: the pieces `utils.train.fit` needs."""

    def __init__(self, kind, args, stage, device, precision, num_classes, classes):
        self.kind, self.name, self.stage = kind, kind, stage
        self.family = FAMILY[kind]
        self.args = stage_args(args, self.family, stage)
        self.device, self.precision = device, precision
        self.num_classes, self.classes = num_classes, classes
        self.stage_dir = os.path.join(args.outDir, f"stage{stage}")
        self.rgb_attention = True  # two-stream: the RGB model's, read from its checkpoint
        from models import feature_map_size
        self.map_size = feature_map_size(args.frameSize)

    # what the heads add in this stage (MS and OP are trained in stage 2 only, as in the paper)
    @property
    def ms(self):
        if self.kind == "ms" or (self.kind == "ms_op" and not self.args.noMS):
            return "regression" if self.args.regression else "classification"
        return None

    @property
    def op(self):
        return self.kind == "ms_op"

    @property
    def heads_on(self):
        return self.stage == 2

    def modality(self, train):
        if self.family == "flow":
            return "flow"
        if self.family == "twostream":
            return "twostream"
        return "rgb_mmaps" if (self.ms and self.heads_on and train) else "rgb"

    def model_config(self):
        a = self.args
        if self.family == "rgb":
            return {"attention": not a.noAttention, "memSize": a.memSize,
                    "ms": self.ms if self.heads_on else None,
                    "msInput": getattr(a, "msInput", "attention"),
                    "op": self.op and self.heads_on, "opInput": getattr(a, "opInput", "flat")}
        if self.family == "flow":
            return {"stackSize": a.stackSize}
        return {"attention": self.rgb_attention, "memSize": a.memSize, "stackSize": a.stackSize}

    def run_config(self):
        """What shapes this model and its data, saved in every checkpoint and checked when a
        later stage, the two-stream script or evaluate.py loads it (utils/config.py)."""
        a = self.args
        return {"classes": list(self.classes), **self.model_config(), "seqLen": a.seqLen,
                "frameSize": a.frameSize, "stackSize": a.stackSize if self.family != "rgb" else None,
                "msKind": self.ms if self.heads_on else None, "trainUsers": list(a.trainUsers),
                "testUsers": list(a.testUsers), "select": a.select,
                "valFraction": a.valFraction if a.select == "val" else None,
                "dataset": getattr(a, "dataset", "gtea61"), "split": getattr(a, "split", None)}

    def build_model(self, pretrained):
        import models
        cfg = self.model_config()
        if self.family == "rgb":
            return models.SAMSOPNet(self.num_classes, mem_size=cfg["memSize"], attention=cfg["attention"],
                                    ms=cfg["ms"], ms_input=cfg["msInput"], op=cfg["op"], pretrained=pretrained,
                                    ms_size=self.map_size, op_input=cfg["opInput"])
        if self.family == "flow":
            return models.FlowResNet34(self.num_classes, pretrained=pretrained, in_channels=2 * self.args.stackSize)
        raise AssertionError("two-stream models are built from their two checkpoints")

    # ---- forward and losses
    def forward(self, model, batch, generator, train):
        if self.family == "flow":
            return model(batch["flow"])
        if self.family == "twostream":
            return model(batch["flow"], batch["rgb"])
        return model(batch["rgb"], generator=generator, heads=train and self.heads_on,
                     frame_numbers=batch.get("frame_numbers"))

    def losses(self, out, batch):
        loss = F.cross_entropy(out["logits"].float(), batch["label"])
        result = {"ce": loss.detach()}
        if "ms_out" in out:
            ms_out = out["ms_out"].float()
            head = self._ms_head
            result["ms_loss"] = head.loss(ms_out.flatten(0, 1), batch["mmaps"].flatten(0, 1))
            loss = loss + self.args.msWeight * result["ms_loss"]
        if "op_logits" in out:
            result["op_loss"] = self._op_head.loss(out["op_logits"], out["op_target"])
            loss = loss + self.args.opWeight * result["op_loss"]
        result["loss"] = loss
        return result

    # ---- stages, optimisers
    def set_train_mode(self, model):
        from models.stages import set_train_mode
        set_train_mode(model, self.stage)

    def make_optimizer(self, model):
        from models.stages import param_groups
        a = self.args
        if self.family == "rgb":
            return torch.optim.Adam(param_groups(model, self.stage, a.lr), lr=a.lr, weight_decay=4e-5, eps=1e-4)
        if self.family == "flow":
            return torch.optim.SGD(param_groups(model, self.stage, a.lr), lr=a.lr, momentum=0.9, weight_decay=5e-4)
        return torch.optim.SGD(param_groups(model, self.stage, a.lr, flow_lr=a.flowLr), lr=a.lr,
                               momentum=0.9, weight_decay=5e-4)

    def make_scheduler(self, optimizer):
        a = self.args
        if self.family == "twostream":
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=a.stepSize[0], gamma=a.decayRate)
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=a.stepSize, gamma=a.decayRate)

    def checkpoint(self, model, epoch, test_acc):
        return {"model": model.state_dict(), "experiment": self.kind, "family": self.family,
                "stage": self.stage, "num_classes": self.num_classes, "classes": list(self.classes),
                "epoch": epoch, "test_acc": test_acc, "model_config": self.model_config(),
                "config": self.run_config(), "seqLen": self.args.seqLen, "frameSize": self.args.frameSize,
                "stackSize": self.args.stackSize}

    def resolved_args(self):
        d = dict(vars(self.args))
        from utils.distributed import world_size
        d.update(stage=self.stage, device=str(self.device), precision=self.precision,
                 num_classes=self.num_classes, experiment=self.kind, world_size=world_size())
        return d


# ----------------------------------------------------------------------------- the run

def flow_stack_size(path):
    """The stack size a flow checkpoint was trained with (its record, else its conv1), or 5."""
    if not os.path.isfile(path):
        return 5  # the missing file is reported when the model is built
    from models.checkpoints import CheckpointError, checkpoint_info
    try:
        info = checkpoint_info(path)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    return info["meta"].get("stackSize") or info["stack_size"] or 5


def _load_model_file(path, what, hint):
    if not path or not os.path.isfile(path):
        raise UserError(f"{what}: no checkpoint at {path}; {hint}")
    return path


def expected_config(exp, *keys):
    """This run's values of `keys`, to compare with a checkpoint's record (utils/config.py)."""
    a = exp.args
    values = {"classes": list(exp.classes), "memSize": a.memSize, "seqLen": a.seqLen,
              "frameSize": a.frameSize, "stackSize": a.stackSize, "trainUsers": list(a.trainUsers),
              "testUsers": list(a.testUsers), "attention": not getattr(a, "noAttention", False)}
    # dataset and split first: a run on another split also differs in trainUsers (the split's file)
    out = {"dataset": getattr(a, "dataset", "gtea61"), "split": getattr(a, "split", None)}
    out.update({k: values[k] for k in keys})
    if a.select == "val":  # a val-selected stage starts from val-selected models with the same split
        out.update(select="val", valFraction=a.valFraction)
    return out


def build_stage_model(exp, train_set):
    """The model of this stage, initialised as the paper says."""
    import models
    from models.checkpoints import load_checkpoint
    from utils.config import check_config, saved_config
    a = exp.args
    if exp.family == "twostream":
        flow_path = _load_model_file(a.flowModel or default_flow_model(a), "--flowModel",
                                     "train it with main_flow.py or pass --flowModel PATH")
        rgb_path = _load_model_file(a.rgbModel or dataset_suffixed(a, f"experiments/main_rgb_seq{a.seqLen}")
                                    + "/stage2/best_model.pth",
                                    "--rgbModel", "train it with main_rgb.py (stage 2) or pass --rgbModel PATH")
        users = ("classes", "frameSize", "trainUsers", "testUsers")
        check_config(flow_path, saved_config(flow_path), expected_config(exp, *users, "stackSize"), "--flowModel")
        rgb_saved = saved_config(rgb_path)
        check_config(rgb_path, rgb_saved, expected_config(exp, *users, "memSize", "seqLen"), "--rgbModel")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flow = models.FlowResNet34(exp.num_classes, pretrained="none", in_channels=2 * a.stackSize)
            exp.rgb_attention = rgb_saved.get("attention", True)
            rgb = models.EgoRNN(exp.num_classes, mem_size=a.memSize, attention=exp.rgb_attention, pretrained="none")
        load_checkpoint(flow, flow_path)
        load_checkpoint(rgb, rgb_path)
        return models.TwoStream(exp.num_classes, flow, rgb)

    if exp.stage == 1:
        model = exp.build_model(a.pretrained).to(exp.device)
        if a.pretrained == "none" and exp.family == "rgb":
            from utils.batchnorm import calibrate_batchnorm
            calibrate_batchnorm(model, train_set, exp)
        return model

    # Stage 2 starts from the best stage-1 weights of the same configuration; the heads start fresh.
    path = a.stage1Dict or os.path.join(a.outDir, "stage1", "best_model.pth")
    if not os.path.isfile(path):
        from utils.defaults import missing_stage1_message
        raise UserError(missing_stage1_message(exp.kind, a, path))
    check_config(path, saved_config(path), expected_config(
        exp, "classes", "attention", "memSize", "seqLen", "frameSize", "trainUsers", "testUsers"),
        "--stage1Dict" if a.stage1Dict else "stage 1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the backbone's weights come from the checkpoint
        model = exp.build_model("none")
    load_checkpoint(model.egornn, path)
    return model


def resolve_cache_dir(args):
    """The frame-cache folder of --cacheDir (auto: see datasets/cache.py), or None."""
    from datasets.cache import _writable_dir, default_cache_dir
    value = getattr(args, "cacheDir", None)
    if value is None or str(value).lower() in ("none", ""):
        return None
    if value == "auto":
        if not os.path.isdir(args.datasetDir):
            return None  # the dataset itself will report the missing folder
        return default_cache_dir(args.datasetDir, args.outDir)
    if not _writable_dir(value):
        raise UserError(f"--cacheDir {value}: cannot create or write that folder; pass a writable "
                        f"folder or --cacheDir none")
    return value


def configure_backends(device):
    """cuDNN picks the fastest convolution algorithms for the fixed clip shapes (CUDA only)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def channels_last(device, precision):
    """NHWC weights and activations: the fast layout for cuDNN and for oneDNN's bf16 kernels.
    Never for fp32 on the CPU, where it would change the results' last bits."""
    return device.type == "cuda" or precision == "bf16"


def prepare_model(exp, model):
    """Model on the run's device and memory format; trainable parameters of the stage set.
    Dropout masks are drawn per global batch, and under torchrun the BatchNorms that train use the
    global batch's statistics, so that results do not depend on the number of processes
    (models/batch_share.py, utils/distributed.py)."""
    from models.batch_share import share_dropouts
    from models.stages import set_stage
    from utils import distributed
    share_dropouts(model)
    if distributed.world_size() > 1:
        distributed.sync_batchnorms(model)
    model = model.to(exp.device)
    if channels_last(exp.device, exp.precision):
        model = model.to(memory_format=torch.channels_last)
    exp._ms_head = getattr(model, "ms_head", None)
    exp._op_head = getattr(model, "op_head", None)
    set_stage(model, exp.stage)
    return model


def stage_datasets(exp):
    """(train set, test set) of this stage; fills exp.num_classes, exp.classes and exp.val_set.
    With --select val the validation videos (exp.val_set) are a fixed share of each class's
    training videos (datasets.gtea61.validation_split), left out of the training set."""
    a = exp.args
    GTEA61 = dataset_class(a)
    common = dict(seqLen=a.seqLen, stackSize=a.stackSize, frameSize=a.frameSize, mapSize=exp.map_size,
                  regression=bool(getattr(a, "regression", False)), cache=resolve_cache_dir(a))
    val = a.select == "val"
    train_set = GTEA61(a.datasetDir, a.trainUsers, exp.modality(train=True), train=True,
                       holdout=(a.valFraction, "train") if val else None, **common)
    test_set = GTEA61(a.datasetDir, a.testUsers, exp.modality(train=False), train=False, **common)
    val_set = GTEA61(a.datasetDir, a.trainUsers, exp.modality(train=False), train=False,
                     holdout=(a.valFraction, "val"), **common) if val else None
    exp.num_classes, exp.classes, exp.val_set = train_set.num_classes, train_set.classes, val_set
    return train_set, test_set


def dataset_suffixed(args, folder):
    """A default experiment folder, with _egtea_split<K> for --dataset egtea (runs on another
    dataset or split never land in, or start from, GTEA-61's folders)."""
    if getattr(args, "dataset", "gtea61") == "egtea":
        return f"{folder}_egtea_split{args.split}"
    return folder


def default_flow_model(args):
    return os.path.join(dataset_suffixed(args, os.path.dirname(os.path.dirname(FLOW_MODEL))), "stage1",
                        "best_model.pth")


def dataset_class(args):
    """GTEA61, or datasets.egtea.EGTEA for --dataset egtea; a GTEA-61 run on a split-file root
    is told to pass --dataset egtea."""
    if getattr(args, "dataset", "gtea61") == "egtea":
        from datasets.egtea import EGTEA
        return EGTEA
    from datasets import GTEA61
    from datasets.egtea import INDEX_FILES
    if os.path.isfile(os.path.join(args.datasetDir, INDEX_FILES["action"])):
        raise UserError(f"--datasetDir {args.datasetDir} holds {INDEX_FILES['action']}: a split-file dataset "
                        "(EGTEA Gaze+ form); pass --dataset egtea --split 1|2|3")
    return GTEA61


def stage_loaders(exp, train_set, test_set):
    """(train loader, test loader); exp.val_loader is the validation set's (or None)."""
    from utils import distributed
    from utils.data import make_loader
    a = exp.args
    process = (distributed.rank(), distributed.world_size())  # this process's share (torchrun)
    # On a GPU the workers send uint8: decoded RGB frames that the GPU resizes, crops, flips and
    # normalises (datasets/transforms.py), flow clips that it normalises; with --cpuTransforms the
    # RGB frames are transformed in the workers with PIL, as on the CPU.
    gpu = exp.device.type == "cuda"
    source = gpu and not getattr(a, "cpuTransforms", False)
    val_set = getattr(exp, "val_set", None)
    exp.val_loader = None if val_set is None else \
        make_loader(val_set, a.valBatchSize, False, a.seed, a.numWorkers, gpu, not gpu, source, process)
    from utils.on_device import DeviceLoader, use_on_device
    mode = getattr(a, "dataOnDevice", "off")
    if mode == "auto" and getattr(a, "cpuTransforms", False):
        mode = "off"  # --cpuTransforms asks for the PIL transforms in DataLoader workers
    if use_on_device(mode, train_set, exp.device):
        train_loader = DeviceLoader(train_set, a.trainBatchSize, a.seed, exp.device, process)
        print(f"training set on {exp.device}: {train_loader.nbytes / 1e9:.2f} GB of decoded frames, no DataLoader")
    else:
        train_loader = make_loader(train_set, a.trainBatchSize, True, a.seed, a.numWorkers, gpu, not gpu, source,
                                   process)
    return (train_loader,
            make_loader(test_set, a.valBatchSize, False, a.seed, a.numWorkers, gpu, not gpu, source, process))


def run(kind, argv=None, description=None, extra_args=None):
    parser = base_parser(kind, description or __doc__)
    if extra_args:
        extra_args(parser)
    args = parser.parse_args(argv)
    check_args(kind, args)
    if args.datasetDir is None:
        from utils.defaults import default_dataset_dir
        args.datasetDir = default_dataset_dir()
    if args.outDir is None:
        args.outDir = dataset_suffixed(args, "experiments/main_flow" if kind == "flow"
                                       else f"experiments/main_{kind}_seq{args.seqLen}")
    family = FAMILY[kind]
    stages = [args.stage] if args.stage else list(STAGES[family])

    torch.set_flush_denormal(True)  # subnormal ConvLSTM states slow CPU steps 2.5-4.5x (reference §8)
    from utils import distributed
    device = distributed.setup(args.device)  # torchrun: joins the process group, one GPU per process
    precision = pick_precision(args.precision, device)
    world = distributed.world_size()
    processes = f", {world} processes ({torch.distributed.get_backend()}), {args.trainBatchSize} clips per " \
                f"global batch" if world > 1 else ""
    print(f"{kind}: stages {stages}, device {device}{processes}, precision {precision}, output {args.outDir}")

    # Check every stage folder before hours of training, so a refusal comes first.
    from utils.train import RESULT_FILES
    todo = []
    for stage in stages:
        d = os.path.join(args.outDir, f"stage{stage}")
        done = os.path.exists(os.path.join(d, "summary.json"))
        has = any(os.path.exists(os.path.join(d, f)) for f in RESULT_FILES)
        if has and not (args.resume or args.overwrite):
            raise UserError(f"{d} already holds results; pass --resume to continue or --overwrite to replace them")
        if done and args.resume:
            print(f"stage {stage}: finished earlier ({d}/summary.json), skipped")
            continue
        todo.append(stage)

    args.cacheDir = resolve_cache_dir(args)

    configure_backends(device)
    summaries = []
    for stage in todo:
        seed_everything(args.seed)
        exp = Experiment(kind, args, stage, device, precision, num_classes=None, classes=None)
        a = exp.args
        train_set, test_set = stage_datasets(exp)
        model = prepare_model(exp, build_stage_model(exp, train_set))
        train_loader, test_loader = stage_loaders(exp, train_set, test_set)
        held_out = f" ({len(exp.val_set)} held out for validation)" if exp.val_set is not None else ""
        print(f"stage {stage}: {len(train_set)} train{held_out} / {len(test_set)} test videos, {exp.num_classes} "
              f"classes, lr {a.lr}, {a.numEpochs} epochs, milestones {a.stepSize} x{a.decayRate}, "
              f"selection: {a.select}")
        summary = fit(exp, model, train_loader, test_loader, exp.val_loader)
        summaries.append(summary)
        if exp.family == "rgb" and model.egornn.attention and a.camVideos > 0 and distributed.is_main():
            from utils.plots import save_cam_figures
            best = torch.load(os.path.join(exp.stage_dir, "best_model.pth"), map_location="cpu", weights_only=True)
            model.load_state_dict(best["model"])
            paths = save_cam_figures(model, test_set, os.path.join(exp.stage_dir, "cam"), device, a.camVideos)
            print(f"CAM figures: {len(paths)} in {os.path.join(exp.stage_dir, 'cam')}")
            from utils.tensorboard import add_images
            add_images(exp.stage_dir, "cam", paths, summary["selected_epoch"])
        distributed.barrier()
        print(f"stage {stage} done: selected epoch {summary['selected_epoch']} ({a.select}), test accuracy "
              f"{summary['selected_test_accuracy']:.2f}%; best test accuracy {summary['best_test_accuracy']:.2f}% "
              f"(epoch {summary['best_epoch']}), final {summary['final_test_accuracy']:.2f}%, "
              f"{summary['seconds']:.0f}s; log {exp.stage_dir}/log.csv, curves {exp.stage_dir}/curves.png")
    return 0


def main(kind, extra_args=None, description=None):
    from utils.distributed import run_process
    from utils.errors import run_cli
    run_cli(lambda argv: run_process(run, kind, argv, description=description, extra_args=extra_args), sys.argv[1:])
