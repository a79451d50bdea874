"""The arguments of the five experiment scripts, stated once.

`ARGS` is one table: each row is a flag with its default, its help, the experiments whose script
shows it, and three marks that the rest of the code reads instead of keeping lists of its own:

    resume   must be the same when `--resume` continues a run (numEpochs may grow)
    record   written into every checkpoint's run record (utils/checkpoint_record.py)
    stage2   compared with the stage-1 checkpoint's record when stage 2 starts from it (and with
             the flow and RGB checkpoints' records by two-stream)

Every experiment's namespace has every row: a flag that a script does not show takes its default,
so code reads `args.noMS` on an rgb run as well as on an ms_op run.

The paper's settings themselves (users, schedules, flow lr, loss weights) live in models/recipe.py;
the rows here only point at them.
"""
import os
from dataclasses import dataclass, field

from datasets.egtea import split_names
from models.recipe import (EXPERIMENTS, FLOW_LR, MS_WEIGHT, OP_FRAMES, OP_WEIGHT, STAGES, TEST_USERS,
                           TRAIN_USERS)
from utils.cli import Parser
from utils.device import PRECISIONS
from utils.errors import UserError

SELECT = ("test", "val", "last")
DATASETS = ("gtea61", "egtea")
RGB = ("rgb", "ms", "ms_op")
MS = ("ms", "ms_op")


def default_workers():
    """DataLoader workers: one per core up to 8 (2 on a 2-core machine, 8 on a GPU host); under
    torchrun the node's cores are shared by its processes."""
    return max(1, min(8, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


@dataclass(frozen=True)
class Arg:
    name: str
    default: object
    help: str
    experiments: tuple = EXPERIMENTS  # the scripts that show the flag
    resume: bool = False
    record: bool = False
    stage2: bool = False
    options: dict = field(default_factory=dict)  # argparse's type, nargs, choices, action


def _users(which, users):
    return f"GTEA-61 users to {which} on (default: {' '.join(users)})"


ARGS = (
    Arg("stage", None, "run only this stage",
        options=dict(type=int, choices=(1, 2))),
    Arg("datasetDir", None, "GTEA-61 root (course or Ego-RNN layout); with --dataset egtea a root prepared by "
        "python -m datasets.prepare --egtea, required (default: $GTEA61_DIR, else data/GTEA61, else make "
        "demo's data/synthetic_gtea61)", resume=True),
    Arg("dataset", "gtea61", "gtea61: videos selected by user folders; egtea: EGTEA Gaze+ or any split-file "
        "dataset (datasets/egtea.py), videos selected by --split", resume=True, record=True, stage2=True,
        options=dict(choices=DATASETS)),
    Arg("split", None, "--dataset egtea: train on train_splitK.txt, test on test_splitK.txt (default: 1)",
        resume=True, record=True, stage2=True, options=dict(type=int, choices=(1, 2, 3))),
    Arg("trainUsers", None, _users("train", TRAIN_USERS), resume=True, record=True, stage2=True,
        options=dict(nargs="+")),
    Arg("testUsers", None, _users("test", TEST_USERS), resume=True, record=True, stage2=True,
        options=dict(nargs="+")),
    Arg("outDir", None, "output folder, one stageN/ inside (default: experiments/main_<experiment>_seq<seqLen>)"),
    Arg("seqLen", 16, "frames per clip (RGB)", resume=True, record=True, stage2=True, options=dict(type=int)),
    Arg("trainBatchSize", 32, "clips per training batch", resume=True, options=dict(type=int)),
    Arg("valBatchSize", 32, "clips per test / validation batch", options=dict(type=int)),
    Arg("numEpochs", None, "epochs of each stage run (default: the paper's for the stage)", options=dict(type=int)),
    Arg("lr", None, "learning rate (default: the paper's for the stage)", resume=True, options=dict(type=float)),
    Arg("stepSize", None, "lr decay epochs, milestones (default: the paper's for the stage)", resume=True,
        options=dict(type=int, nargs="+")),
    Arg("decayRate", None, "lr decay factor (default: the paper's for the stage)", resume=True,
        options=dict(type=float)),
    Arg("memSize", 512, "ConvLSTM memory channels", resume=True, record=True, stage2=True, options=dict(type=int)),
    Arg("stackSize", None, "flow frames per stack (default: 5; two-stream: the flow model's)", resume=True,
        record=True, options=dict(type=int)),
    Arg("pretrained", "imagenet", "imagenet | none | PATH to a resnet34 state dict", resume=True),
    Arg("frameSize", 224, "side of the square crop fed to ResNet-34", resume=True, record=True, stage2=True,
        options=dict(type=int)),
    Arg("numWorkers", default_workers(), "DataLoader worker processes (default: one per core, up to 8; this "
        "machine: %(default)s)", options=dict(type=int)),
    Arg("cacheDir", "auto", "decoded-frame cache (datasets/cache.py): auto = <datasetDir>/.cache/frames if "
        "writable, else <outDir>/.frame_cache; none = decode every frame every epoch"),
    Arg("seed", 0, "seeds weights, clip order, crops, flips and OP permutations", resume=True,
        options=dict(type=int)),
    Arg("select", "test", "which epoch becomes best_model.pth: best on the test users (the paper's protocol), "
        "best on a held-out share of the training videos (val), or the last one", resume=True, record=True,
        options=dict(choices=SELECT)),
    Arg("valFraction", 0.15, "--select val: share of each class's training videos held out (fixed split)",
        resume=True, record=True, options=dict(type=float)),
    Arg("device", "auto", "auto: cuda when a GPU is visible, else cpu", options=dict(choices=("auto", "cpu", "cuda"))),
    Arg("cpuTransforms", False, "on a GPU, resize/crop/flip the RGB frames with PIL in the DataLoader workers (the "
        "CPU pipeline, exact) instead of on the GPU (faster; pixels within a few levels of PIL's)",
        options=dict(action="store_true")),
    Arg("dataOnDevice", "auto", "hold the decoded training frames on the device and transform them there, "
        "without a DataLoader (RGB models; auto: on a GPU when they take under a quarter of its free memory; "
        "on: also on the CPU; utils/on_device.py)", resume=True, options=dict(choices=("auto", "on", "off"))),
    Arg("precision", "auto", "bf16 autocast where the hardware runs it natively (auto), or force one",
        resume=True, options=dict(choices=PRECISIONS)),
    Arg("resume", False, "continue an interrupted run from last.pth", options=dict(action="store_true")),
    Arg("overwrite", False, "replace the results in the stage folder", options=dict(action="store_true")),
    Arg("camVideos", 3, "test videos drawn in cam/ (RGB models)", options=dict(type=int)),
    Arg("keepLast", False, "keep last.pth (weights, optimiser state and RNGs of the last epoch) when the stage "
        "finishes; an unfinished stage always keeps it for --resume", options=dict(action="store_true")),
    Arg("quiet", False, "no progress bars and no per-epoch lines (log.csv has them): only the run's first line, "
        "each stage's start and result, warnings and errors. Bars are drawn on a terminal only anyway",
        options=dict(action="store_true")),
    # RGB models
    Arg("stage1Dict", None, "stage-1 checkpoint (default: <outDir>/stage1/best_model.pth)", RGB, resume=True),
    Arg("noAttention", False, "plain ConvLSTM: layer4 features, no CAM", RGB, resume=True, stage2=True,
        options=dict(action="store_true")),
    # the motion-segmentation head
    Arg("regression", False, "MS head as regression (MSE on raw maps)", MS, resume=True,
        options=dict(action="store_true")),
    Arg("msInput", "attention", "features the MS head reads: attended (paper) or plain layer4 (SparNet)", MS,
        resume=True, record=True, options=dict(choices=("attention", "layer4"))),
    Arg("msWeight", MS_WEIGHT, "weight of the MS loss in the total loss", MS, resume=True, options=dict(type=float)),
    # the order-prediction head
    Arg("noMS", False, "order prediction only (the paper's ablation)", ("ms_op",), resume=True,
        options=dict(action="store_true")),
    Arg("opWeight", OP_WEIGHT, "weight of the OP loss in the total loss", ("ms_op",), resume=True,
        options=dict(type=float)),
    Arg("opInput", "flat", "what fc6 of the OP head reads per frame: the flattened 512 x s x s layer4 map (the "
        "paper's code) or its global average (512)", ("ms_op",), resume=True, record=True,
        options=dict(choices=("flat", "pooled"))),
    # two-stream
    Arg("flowModel", None, "best flow model (default: experiments/main_flow/stage1/best_model.pth)", ("twostream",)),
    Arg("rgbModel", None, "best stage-2 RGB model (default: experiments/main_rgb_seq<seqLen>/stage2/best_model.pth)",
        ("twostream",)),
    Arg("flowLr", FLOW_LR, "lr of the flow layer4 (docs/design.md §2)", ("twostream",), resume=True,
        options=dict(type=float)),
)

RESUME_KEYS = tuple(a.name for a in ARGS if a.resume)
RECORD_KEYS = tuple(a.name for a in ARGS if a.record)
STAGE2_KEYS = tuple(a.name for a in ARGS if a.stage2)
# the settings most compared between runs, first in TensorBoard's hparams table
HPARAMS_FIRST = ("experiment", "stage", "lr", "seqLen", "numEpochs", "trainBatchSize", "precision")


def hparam_names(experiment):
    """The arguments that define a run's numbers, as TensorBoard's hparams (utils/tensorboard.py):
    HPARAMS_FIRST, then the experiment's rows marked `resume` in table order. Housekeeping flags
    (folders, workers, cache, device, output) are left out."""
    rows = [a.name for a in ARGS if a.resume and experiment in a.experiments and a.name not in HPARAMS_FIRST]
    return HPARAMS_FIRST + tuple(rows)


def base_parser(experiment, description):
    """The parser of one experiment's script: its rows of ARGS as flags, every other row as a
    default, so that the namespace has one shape for all experiments."""
    p = Parser(description=description)
    for a in ARGS:
        if experiment not in a.experiments:
            p.set_defaults(**{a.name: a.default})
            continue
        options = dict(a.options)
        text = a.help
        if a.name == "stage":
            options["choices"] = STAGES[experiment]
            text = f"run only this stage (default: {' then '.join(map(str, STAGES[experiment]))})"
        p.add_argument(f"--{a.name}", default=a.default, help=text, **options)
    return p


def check_dataset_args(args):
    """--dataset / --split against --trainUsers / --testUsers, then the users filled in. With
    --dataset egtea the split files select the videos: trainUsers / testUsers become
    [train_splitK] / [test_splitK], so that every record and check made for users (checkpoint
    records, resume, the overlap check) covers splits."""
    if args.dataset == "egtea":
        given = [f"--{n}" for n in ("trainUsers", "testUsers") if getattr(args, n) is not None]
        if given:
            raise UserError(f"{' and '.join(given)} select GTEA-61 users; --dataset egtea selects videos by "
                            f"split file: use --split 1|2|3")
        if args.datasetDir is None:
            raise UserError("--dataset egtea needs --datasetDir: a root prepared by "
                            "python -m datasets.prepare --egtea RELEASE --outDir ROOT")
        args.split = args.split or 1
        train, test = split_names(args.split)
        args.trainUsers, args.testUsers = [train], [test]
        return
    if args.split is not None:
        raise UserError(f"--split {args.split} applies to --dataset egtea; GTEA-61 selects videos by "
                        f"--trainUsers / --testUsers")
    args.trainUsers = list(TRAIN_USERS) if args.trainUsers is None else args.trainUsers
    args.testUsers = list(TEST_USERS) if args.testUsers is None else args.testUsers


def check_args(experiment, args):
    """One-line errors for values no run can use; fills in the users (check_dataset_args)."""
    check_dataset_args(args)
    for name in ("lr", "numEpochs", "trainBatchSize", "valBatchSize", "seqLen", "frameSize", "memSize",
                 "stackSize", "decayRate"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be positive (got {value})")
    if args.numWorkers < 0:
        raise UserError(f"--numWorkers must be >= 0 (got {args.numWorkers})")
    if experiment == "ms_op" and args.seqLen < OP_FRAMES:
        raise UserError(f"--seqLen {args.seqLen} is too short for the order prediction head, "
                        f"which shuffles {OP_FRAMES} frames of the clip: use --seqLen >= {OP_FRAMES}")
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if experiment == "twostream" and args.stepSize is not None and len(args.stepSize) != 1:
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
