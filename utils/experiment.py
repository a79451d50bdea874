"""What the five experiment scripts share: data, model building, and the stage-1 -> stage-2
sequence. Each `main_*.py` only names its experiment, then calls `main(experiment)`; the
arguments are utils/arguments.py's table, the paper's recipe models/recipe.py's.

Experiments:
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
from datasets.egtea import EGTEA, INDEX_FILES
from datasets.markers import is_synthetic, preparation
from models.batch_share import share_dropouts
from models.checkpoints import CheckpointError, checkpoint_info, load_checkpoint
from models.recipe import DEFAULTS, FAMILY, STAGES, TEST_USERS, TRAIN_USERS, Recipe, build_model
from models.speed import install
from models.stages import set_stage
from utils import distributed
from utils.arguments import RECORD_KEYS, STAGE2_KEYS, base_parser, check_args
from utils.batchnorm import calibrate_batchnorm
from utils.checkpoint_record import check_config, check_stage1, saved_config
from utils.data import CPU_WORKER_NICE, make_loader
from utils.device import pick_precision
from utils.errors import UserError, run_cli
from utils.on_device import DeviceLoader, use_on_device
from utils.paths import dataset_suffixed, default_dataset_dir, missing_stage1_message
from utils.plots import save_cam_figures
from utils.run_state import RESULT_FILES, seed_everything
from utils.tensorboard import add_images
from utils.train import bars, fit

FLOW_MODEL = "experiments/main_flow/stage1/best_model.pth"  # two-stream's default --flowModel


def stage_args(args, family, stage):
    """Copy of args with the stage's defaults filled in (the paper's schedule, GTEA-61's users)."""
    a = argparse.Namespace(**vars(args))
    a.trainUsers = list(TRAIN_USERS) if a.trainUsers is None else a.trainUsers
    a.testUsers = list(TEST_USERS) if a.testUsers is None else a.testUsers
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

    def __init__(self, experiment, args, stage, device, precision, num_classes=None, classes=None):
        super().__init__(experiment, stage, stage_args(args, FAMILY[experiment], stage))
        self.device, self.precision = device, precision
        self.num_classes, self.classes = num_classes, classes
        self.stage_dir = os.path.join(args.outDir, f"stage{stage}")
        self.val_set = self.val_loader = None  # --select val: stage_datasets / stage_loaders fill them

    def run_config(self):
        """What shapes this model and its data, saved in every checkpoint and checked when a
        later stage, the two-stream script or evaluate.py loads it (utils/checkpoint_record.py)."""
        record = {k: getattr(self.args, k) for k in RECORD_KEYS}  # the rows marked `record`
        record.update(self.model_config())
        if self.family == "rgb":
            record["stackSize"] = None  # RGB models read no flow
        if self.args.select != "val":
            record["valFraction"] = None
        # precision: the test accuracy recorded with the checkpoint was measured in it, and
        # evaluate.py evaluates in it by default (one accuracy per checkpoint); synthetic: the
        # generator's data, which evaluate.py and predict.py say first
        return {"classes": list(self.classes), **record, "msKind": self.ms if self.heads_on else None,
                "preparation": self.preparation(), "precision": self.precision,
                "synthetic": bool(self.args.datasetDir) and is_synthetic(self.args.datasetDir)}

    def preparation(self):
        """The dataset's preparation as datasets.prepare recorded it (None: made elsewhere), read
        once: predict.py and evaluate.py follow it (utils/checkpoint_record.py checkpoint_preparation)."""
        if not hasattr(self, "_preparation"):
            self._preparation = preparation(self.args.datasetDir) if self.args.datasetDir else None
        return self._preparation

    def checkpoint(self, model, epoch, test_acc):
        return {"model": model.state_dict(), "experiment": self.experiment, "family": self.family,
                "stage": self.stage, "num_classes": self.num_classes, "classes": list(self.classes),
                "epoch": epoch, "test_acc": test_acc, "model_config": self.model_config(),
                "config": self.run_config(), "seqLen": self.args.seqLen, "frameSize": self.args.frameSize,
                "stackSize": self.args.stackSize}

    def resolved_args(self):
        d = dict(vars(self.args))
        d.update(stage=self.stage, device=str(self.device), precision=self.precision,
                 num_classes=self.num_classes, experiment=self.experiment, world_size=distributed.world_size())
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
    """This run's values of `keys` (default: the arguments marked `stage2` in utils/arguments.py),
    to compare with a checkpoint's record (utils/checkpoint_record.py); noAttention is recorded as attention."""
    a = exp.args
    values = {k: getattr(a, k) for k in STAGE2_KEYS if k != "noAttention"}
    values.update(classes=list(exp.classes), attention=not a.noAttention, stackSize=a.stackSize)
    keys = keys or [k for k in ("classes",) + STAGE2_KEYS if k != "noAttention"] + ["attention"]
    # dataset and split first: a run on another split also differs in trainUsers (the split's file)
    out = {"dataset": a.dataset, "split": a.split}
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
        raise UserError(missing_stage1_message(exp.experiment, a, path, base_parser(exp.experiment, "").parse_args([])))
    what = "--stage1Dict" if a.stage1Dict else "stage 1"
    check_stage1(path, exp.family, what)
    check_config(path, saved_config(path), expected_config(exp), what)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the backbone's weights come from the checkpoint
        model = exp.build_model("none")
    load_checkpoint(model.egornn, path)
    return model


def resolve_cache_dir(args):
    """The frame-cache folder of --cacheDir (auto: see datasets/cache.py), or None."""
    value = args.cacheDir
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
    set_stage(model, exp.stage)
    return model


def stage_datasets(exp):
    """(train set, test set) of this stage; fills exp.num_classes, exp.classes and exp.val_set.
    With --select val the validation videos (exp.val_set) are a fixed share of each class's
    training videos (datasets.gtea61.validation_split), left out of the training set."""
    a = exp.args
    GTEA61 = dataset_class(a)
    common = dict(seqLen=a.seqLen, stackSize=a.stackSize, frameSize=a.frameSize, mapSize=exp.map_size,
                  regression=a.regression, cache=resolve_cache_dir(a))
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
    if args.dataset == "egtea":
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
    common = dict(seed=a.seed, num_workers=a.numWorkers, pin_memory=gpu, normalize=not gpu,
                  source=gpu and not a.cpuTransforms, process=process)
    if exp.val_set is not None:
        exp.val_loader = make_loader(exp.val_set, a.valBatchSize, shuffle=False, **common)
    mode = a.dataOnDevice
    if mode == "auto" and a.cpuTransforms:
        mode = "off"  # --cpuTransforms asks for the PIL transforms in DataLoader workers
    if use_on_device(mode, train_set, exp.device):
        train_loader = DeviceLoader(train_set, a.trainBatchSize, seed=a.seed, device=exp.device, process=process,
                                    progress=bars(exp))
        print(f"training set on {exp.device}: {train_loader.nbytes / 1e9:.2f} GB of decoded frames, no DataLoader")
    else:
        train_loader = make_loader(train_set, a.trainBatchSize, shuffle=True, nice=0 if gpu else CPU_WORKER_NICE,
                                   **common)
    return train_loader, make_loader(test_set, a.valBatchSize, shuffle=False, **common)


def run(experiment, argv=None, description=None):
    args = base_parser(experiment, description or __doc__).parse_args(argv)
    check_args(experiment, args)
    if args.datasetDir is None:
        args.datasetDir = default_dataset_dir()
    if args.outDir is None:
        args.outDir = dataset_suffixed(args, "experiments/main_flow" if experiment == "flow"
                                       else f"experiments/main_{experiment}_seq{args.seqLen}")
    stages = [args.stage] if args.stage else list(STAGES[experiment])

    torch.set_flush_denormal(True)  # subnormal ConvLSTM states slow CPU steps 2.5-4.5x (docs/design.md §8)
    device = distributed.setup(args.device)  # torchrun: joins the process group, one GPU per process
    precision = pick_precision(args.precision, device)
    world = distributed.world_size()
    processes = f", {world} processes ({torch.distributed.get_backend()}), {args.trainBatchSize} clips per " \
                f"global batch" if world > 1 else ""
    print(f"{experiment}: stages {stages}, device {device}{processes}, precision {precision}, output {args.outDir}")

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
        exp = Experiment(experiment, args, stage, device=device, precision=precision)
        a = exp.args
        train_set, test_set = stage_datasets(exp)
        model = prepare_model(exp, build_stage_model(exp, train_set))
        train_loader, test_loader = stage_loaders(exp, train_set, test_set)
        held_out = f" ({len(exp.val_set)} held out for validation)" if exp.val_set is not None else ""
        print(f"stage {stage}: {len(train_set)} train{held_out} / {len(test_set)} test videos, {exp.num_classes} "
              f"classes, lr {a.lr}, {a.numEpochs} epochs, milestones {a.stepSize} x{a.decayRate}, "
              f"selection: {a.select}")
        summary = fit(exp, model, train_loader, test_loader, val_loader=exp.val_loader)
        summaries.append(summary)
        if exp.family == "rgb" and model.egornn.attention and a.camVideos > 0 and distributed.is_main():
            best = torch.load(os.path.join(exp.stage_dir, "best_model.pth"), map_location="cpu", weights_only=True)
            model.load_state_dict(best["model"])
            paths = save_cam_figures(model, test_set, os.path.join(exp.stage_dir, "cam"), device, num_videos=a.camVideos)
            print(f"CAM figures: {len(paths)} in {os.path.join(exp.stage_dir, 'cam')}")
            add_images(exp.stage_dir, "cam", paths, summary["selected_epoch"])
        distributed.barrier()
        print(f"stage {stage} done: selected epoch {summary['selected_epoch']} ({a.select}), test accuracy "
              f"{summary['selected_test_accuracy']:.2f}%; best test accuracy {summary['best_test_accuracy']:.2f}% "
              f"(epoch {summary['best_epoch']}), final {summary['final_test_accuracy']:.2f}%, "
              f"{summary['seconds']:.0f}s; log {exp.stage_dir}/log.csv, curves {exp.stage_dir}/curves.png")
    return 0


def main(experiment, description=None):
    run_cli(lambda argv: distributed.run_process(run, experiment, argv, description=description), sys.argv[1:])
