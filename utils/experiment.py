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

from datasets import GTEA61
from datasets.cache import _writable_dir, default_cache_dir
from datasets.egtea import EGTEA, INDEX_FILES, split_names
from datasets.prepare import preparation
from models.batch_share import share_dropouts
from models.checkpoints import CheckpointError, checkpoint_info, load_checkpoint
from models.recipe import DEFAULTS, FAMILY, OP_FRAMES, STAGES, Recipe, build_model  # noqa: F401  (re-exported)
from models.speed import install
from models.stages import set_stage
from utils import distributed
from utils.batchnorm import calibrate_batchnorm
from utils.cli import Parser
from utils.config import check_config, saved_config
from utils.data import CPU_WORKER_NICE, make_loader
from utils.defaults import dataset_suffixed, default_dataset_dir, missing_stage1_message
from utils.device import cpu_has_native_bf16, pick_device, pick_precision  # noqa: F401  (re-exported)
from utils.errors import UserError, run_cli
from utils.on_device import DeviceLoader, use_on_device
from utils.plots import save_cam_figures
from utils.tensorboard import add_images
from utils.train import RESULT_FILES, autocast, fit, seed_everything  # noqa: F401  (autocast re-exported)

SELECT = ("test", "val", "last")
FLOW_MODEL = "experiments/main_flow/stage1/best_model.pth"  # two-stream's default --flowModel
DATASETS = ("gtea61", "egtea")
# GTEA-61's users. The parser's defaults are these very list objects, so that check_args can tell
# them from users typed on the command line (refused with --dataset egtea, whose splits select videos).
TRAIN_USERS, TEST_USERS = ["S1", "S3", "S4"], ["S2"]


# ----------------------------------------------------------------------------- arguments

def default_workers():
    """DataLoader workers: one per core up to 8 (2 on a 2-core machine, 8 on a GPU host); under
    torchrun the node's cores are shared by its processes."""
    return max(1, min(8, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


def base_parser(kind, description):
    p = Parser(description=description)
    stages = STAGES[FAMILY[kind]]
    p.add_argument("--stage", type=int, choices=stages, default=None,
                   help="run only this stage (default: " + " then ".join(map(str, stages)) + ")")
    p.add_argument("--datasetDir", default=None, help="GTEA-61 root (course or Ego-RNN layout); with --dataset egtea "
                   "a root prepared by python -m datasets.prepare --egtea, required (default: $GTEA61_DIR, else "
                   "data/GTEA61, else make demo's data/synthetic_gtea61)")
    p.add_argument("--dataset", choices=DATASETS, default="gtea61",
                   help="gtea61: videos selected by user folders; egtea: EGTEA Gaze+ or any split-file "
                        "dataset (datasets/egtea.py), videos selected by --split")
    p.add_argument("--split", type=int, choices=(1, 2, 3), default=None,
                   help="--dataset egtea: train on train_splitK.txt, test on test_splitK.txt (default: 1)")
    p.add_argument("--trainUsers", nargs="+", default=TRAIN_USERS, help="GTEA-61 users to train on")
    p.add_argument("--testUsers", nargs="+", default=TEST_USERS, help="GTEA-61 users to test on")
    p.add_argument("--outDir", default=None, help=f"output folder, one stageN/ inside (default: experiments/main_{kind}_seq<seqLen>)")
    p.add_argument("--seqLen", type=int, default=16, help="frames per clip (RGB)")
    p.add_argument("--trainBatchSize", type=int, default=32, help="clips per training batch")
    p.add_argument("--valBatchSize", type=int, default=32, help="clips per test / validation batch")
    p.add_argument("--numEpochs", type=int, default=None, help="epochs of each stage run (default: the paper's for the stage)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the paper's for the stage)")
    p.add_argument("--stepSize", type=int, nargs="+", default=None, help="lr decay epochs, milestones (default: the paper's for the stage)")
    p.add_argument("--decayRate", type=float, default=None, help="lr decay factor (default: the paper's for the stage)")
    p.add_argument("--memSize", type=int, default=512, help="ConvLSTM memory channels")
    p.add_argument("--stackSize", type=int, default=None,
                   help="flow frames per stack (default: 5; two-stream: the flow model's)")
    p.add_argument("--pretrained", default="imagenet", help="imagenet | none | PATH to a resnet34 state dict")
    p.add_argument("--frameSize", type=int, default=224, help="side of the square crop fed to ResNet-34")
    p.add_argument("--numWorkers", type=int, default=default_workers(),
                   help="DataLoader worker processes (default: one per core, up to 8; this machine: %(default)s)")
    p.add_argument("--cacheDir", default="auto",
                   help="decoded-frame cache (datasets/cache.py): auto = <datasetDir>/.cache/frames if "
                        "writable, else <outDir>/.frame_cache; none = decode every frame every epoch")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, clip order, crops, flips and OP permutations")
    p.add_argument("--select", choices=SELECT, default="test",
                   help="which epoch becomes best_model.pth: best on the test users (the paper's protocol), "
                        "best on a held-out share of the training videos (val), or the last one")
    p.add_argument("--valFraction", type=float, default=0.15,
                   help="--select val: share of each class's training videos held out (fixed split)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: cuda when a GPU is visible, else cpu")
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
        p.add_argument("--stage1Dict", default=None, help="stage-1 checkpoint (default: <outDir>/stage1/best_model.pth)")
        p.add_argument("--noAttention", action="store_true", help="plain ConvLSTM: layer4 features, no CAM")
    if kind in ("ms", "ms_op"):
        p.add_argument("--regression", action="store_true", help="MS head as regression (MSE on raw maps)")
        p.add_argument("--msInput", choices=["attention", "layer4"], default="attention",
                       help="features the MS head reads: attended (paper) or plain layer4 (SparNet)")
        p.add_argument("--msWeight", type=float, default=1.0, help="weight of the MS loss in the total loss")
    if kind == "ms_op":
        p.add_argument("--noMS", action="store_true", help="order prediction only (the paper's ablation)")
        p.add_argument("--opWeight", type=float, default=1.0, help="weight of the OP loss in the total loss")
        p.add_argument("--opInput", choices=["flat", "pooled"], default="flat",
                       help="what fc6 of the OP head reads per frame: the flattened 512 x s x s layer4 map "
                            "(the paper's code) or its global average (512)")
    if kind == "twostream":
        p.add_argument("--flowModel", default=None, help="best flow model (default: experiments/main_flow/stage1/best_model.pth)")
        p.add_argument("--rgbModel", default=None,
                       help="best stage-2 RGB model (default: experiments/main_rgb_seq<seqLen>/stage2/best_model.pth)")
        p.add_argument("--flowLr", type=float, default=1e-4, help="lr of the flow layer4 (docs/design.md §2)")
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
                            "python -m datasets.prepare --egtea RELEASE --outDir ROOT")
        args.split = args.split or 1
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


# ----------------------------------------------------------------------------- experiments

class Experiment(Recipe):
    """One stage of one experiment as this run trains it: the paper's recipe (models/recipe.py)
    plus the run's device, precision, classes and output folder, for `utils.train.fit`."""

    def __init__(self, kind, args, stage, device, precision, num_classes, classes):
        super().__init__(kind, stage, stage_args(args, FAMILY[kind], stage))
        self.name = kind
        self.device, self.precision = device, precision
        self.num_classes, self.classes = num_classes, classes
        self.stage_dir = os.path.join(args.outDir, f"stage{stage}")

    def run_config(self):
        """What shapes this model and its data, saved in every checkpoint and checked when a
        later stage, the two-stream script or evaluate.py loads it (utils/config.py)."""
        a = self.args
        return {"classes": list(self.classes), **self.model_config(), "seqLen": a.seqLen,
                "frameSize": a.frameSize, "stackSize": a.stackSize if self.family != "rgb" else None,
                "msKind": self.ms if self.heads_on else None, "trainUsers": list(a.trainUsers),
                "testUsers": list(a.testUsers), "select": a.select,
                "valFraction": a.valFraction if a.select == "val" else None,
                "dataset": getattr(a, "dataset", "gtea61"), "split": getattr(a, "split", None),
                "preparation": self.preparation()}

    def preparation(self):
        """The dataset's preparation as datasets.prepare recorded it (None: made elsewhere), read
        once: predict.py and evaluate.py follow it (utils/config.py checkpoint_preparation)."""
        if not hasattr(self, "_preparation"):
            self._preparation = preparation(self.args.datasetDir) if self.args.datasetDir else None
        return self._preparation

    def checkpoint(self, model, epoch, test_acc):
        return {"model": model.state_dict(), "experiment": self.kind, "family": self.family,
                "stage": self.stage, "num_classes": self.num_classes, "classes": list(self.classes),
                "epoch": epoch, "test_acc": test_acc, "model_config": self.model_config(),
                "config": self.run_config(), "seqLen": self.args.seqLen, "frameSize": self.args.frameSize,
                "stackSize": self.args.stackSize}

    def resolved_args(self):
        d = dict(vars(self.args))
        d.update(stage=self.stage, device=str(self.device), precision=self.precision,
                 num_classes=self.num_classes, experiment=self.kind, world_size=distributed.world_size())
        return d


# ----------------------------------------------------------------------------- the run

def flow_stack_size(path):
    """The stack size a flow checkpoint was trained with (its record, else its conv1), or 5."""
    if not os.path.isfile(path):
        return 5  # the missing file is reported when the model is built
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


def build_stage_model(exp, train_set, from_scratch=False, calibration_clips=32):
    """The model of this stage, initialised as the paper says: stage 1 from the ImageNet backbone
    (--pretrained), stage 2 from the best stage-1 checkpoint, two-stream from its flow and RGB
    checkpoints. from_scratch: stage 2 from random weights instead of a stage 1 (bench.py times a
    stage without training the one before). Random backbones get their BatchNorm statistics from
    `calibration_clips` training clips (utils/batchnorm.py)."""
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
        exp.rgb_attention = rgb_saved.get("attention", True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # every weight comes from the two checkpoints
            model = build_model("twostream", exp.num_classes, exp.model_config())
        load_checkpoint(model.flow_model, flow_path)
        load_checkpoint(model.rgb_model, rgb_path)
        return model

    if exp.stage == 1 or from_scratch:
        model = exp.build_model(a.pretrained).to(exp.device)
        if a.pretrained == "none" and exp.family == "rgb":
            calibrate_batchnorm(model, train_set, exp, num_clips=calibration_clips)
        return model

    # Stage 2 starts from the best stage-1 weights of the same configuration; the heads start fresh.
    path = a.stage1Dict or os.path.join(a.outDir, "stage1", "best_model.pth")
    if not os.path.isfile(path):
        raise UserError(missing_stage1_message(exp.kind, a, path, base_parser(exp.kind, "").parse_args([])))
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


def prepare_model(exp, model):
    """Model on the run's device and memory format; trainable parameters of the stage set.
    Dropout masks are drawn per global batch, and under torchrun the BatchNorms that train use the
    global batch's statistics, so that results do not depend on the number of processes
    (models/batch_share.py, utils/distributed.py)."""
    share_dropouts(model)
    if distributed.world_size() > 1:
        distributed.sync_batchnorms(model)
    model = install(model.to(exp.device), exp.device, exp.precision)  # memory format, fast kernels: models/speed.py
    exp.bind(model)
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


def default_flow_model(args):
    return os.path.join(dataset_suffixed(args, os.path.dirname(os.path.dirname(FLOW_MODEL))), "stage1",
                        "best_model.pth")


def dataset_class(args):
    """GTEA61, or datasets.egtea.EGTEA for --dataset egtea; a GTEA-61 run on a split-file root
    is told to pass --dataset egtea."""
    if getattr(args, "dataset", "gtea61") == "egtea":
        return EGTEA
    if os.path.isfile(os.path.join(args.datasetDir, INDEX_FILES["action"])):
        raise UserError(f"--datasetDir {args.datasetDir} holds {INDEX_FILES['action']}: a split-file dataset "
                        "(EGTEA Gaze+ form); pass --dataset egtea --split 1|2|3")
    return GTEA61


def stage_loaders(exp, train_set, test_set):
    """(train loader, test loader); exp.val_loader is the validation set's (or None)."""
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
    mode = getattr(a, "dataOnDevice", "off")
    if mode == "auto" and getattr(a, "cpuTransforms", False):
        mode = "off"  # --cpuTransforms asks for the PIL transforms in DataLoader workers
    if use_on_device(mode, train_set, exp.device):
        train_loader = DeviceLoader(train_set, a.trainBatchSize, a.seed, exp.device, process)
        print(f"training set on {exp.device}: {train_loader.nbytes / 1e9:.2f} GB of decoded frames, no DataLoader")
    else:
        train_loader = make_loader(train_set, a.trainBatchSize, True, a.seed, a.numWorkers, gpu, not gpu, source,
                                   process, nice=0 if gpu else CPU_WORKER_NICE)
    return (train_loader,
            make_loader(test_set, a.valBatchSize, False, a.seed, a.numWorkers, gpu, not gpu, source, process))


def run(kind, argv=None, description=None, extra_args=None):
    parser = base_parser(kind, description or __doc__)
    if extra_args:
        extra_args(parser)
    args = parser.parse_args(argv)
    check_args(kind, args)
    if args.datasetDir is None:
        args.datasetDir = default_dataset_dir()
    if args.outDir is None:
        args.outDir = dataset_suffixed(args, "experiments/main_flow" if kind == "flow"
                                       else f"experiments/main_{kind}_seq{args.seqLen}")
    family = FAMILY[kind]
    stages = [args.stage] if args.stage else list(STAGES[family])

    torch.set_flush_denormal(True)  # subnormal ConvLSTM states slow CPU steps 2.5-4.5x (docs/design.md §8)
    device = distributed.setup(args.device)  # torchrun: joins the process group, one GPU per process
    precision = pick_precision(args.precision, device)
    world = distributed.world_size()
    processes = f", {world} processes ({torch.distributed.get_backend()}), {args.trainBatchSize} clips per " \
                f"global batch" if world > 1 else ""
    print(f"{kind}: stages {stages}, device {device}{processes}, precision {precision}, output {args.outDir}")

    # Check every stage folder before hours of training, so a refusal comes first.
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
            best = torch.load(os.path.join(exp.stage_dir, "best_model.pth"), map_location="cpu", weights_only=True)
            model.load_state_dict(best["model"])
            paths = save_cam_figures(model, test_set, os.path.join(exp.stage_dir, "cam"), device, a.camVideos)
            print(f"CAM figures: {len(paths)} in {os.path.join(exp.stage_dir, 'cam')}")
            add_images(exp.stage_dir, "cam", paths, summary["selected_epoch"])
        distributed.barrier()
        print(f"stage {stage} done: selected epoch {summary['selected_epoch']} ({a.select}), test accuracy "
              f"{summary['selected_test_accuracy']:.2f}%; best test accuracy {summary['best_test_accuracy']:.2f}% "
              f"(epoch {summary['best_epoch']}), final {summary['final_test_accuracy']:.2f}%, "
              f"{summary['seconds']:.0f}s; log {exp.stage_dir}/log.csv, curves {exp.stage_dir}/curves.png")
    return 0


def main(kind, extra_args=None, description=None):
    run_cli(lambda argv: distributed.run_process(run, kind, argv, description=description, extra_args=extra_args), sys.argv[1:])
