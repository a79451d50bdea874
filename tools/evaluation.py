"""Evaluate a trained model on the test user(s): predictions.csv, summary.json, confusion_matrix.png,
per_class.png.

Reports action top-1 and top-5 accuracy (--topk: other k), mean class accuracy (the mean of the
per-class accuracies, the measure EGTEA papers quote; per_class.png draws them) and, where classes
are verb + noun (EGTEA's split files, GTEA-61's <verb>_<noun> names), verb and noun accuracy
derived from the action predictions: the share of videos whose predicted action has the true verb
(noun: the split file's noun column, the first noun, as published EGTEA figures count it; noun
set: all of the action's nouns).

Takes this project's checkpoints and the original Ego-RNN release's alike. The test pipeline is
the original's (short side to 256, centre crop 224, frames at floor(linspace(1, N, seqLen)),
flow: the mean logits of --numSeg stacks), with TF32 off, in the precision the checkpoint's run
recorded (bf16 where it trained in bf16), so that the accuracy printed is the test accuracy its
training printed and selected it by; in fp32 for files without that record, so that an original
checkpoint gives the original code's logits to float precision (--precision chooses).

    python evaluate.py --datasetDir DIR --modelStateDict experiments/main_ms_op_seq16/stage2/best_model.pth
    python evaluate.py --model rgb --datasetDir DIR --modelStateDict best_model_state_dict_rgb_split2.pth
    python evaluate.py --splitMean RUN1/stage2/eval_test_split1 RUN2/stage2/eval_test_split2 RUN3/stage2/eval_test_split3

The model's experiment comes from the checkpoint; --model confirms it (a contradiction is refused)
or, for an original Ego-RNN file, which records none, names it (default: the kind its weights show).

--splitMean reads the summary.json of EGTEA evaluations of splits 1, 2 and 3 (one model trained per
split) and prints each split's and the mean top-1 and mean class accuracy, the figures EGTEA papers
quote (also verb, noun and noun set accuracy), into splits_mean.json next to the first.
"""
import argparse
import json
import os
import sys
import warnings

import numpy as np
import torch
from tqdm import tqdm

from datasets.egtea import derived_accuracy, split_names, verb_noun_of
from datasets.markers import preparation
from models import feature_map_size
from models.checkpoints import checkpoint_info, load_checkpoint
from models.recipe import TEST_USERS, build_model, forward
from models.speed import install
from utils.arguments import default_workers
from utils.checkpoint_record import (EGORNN_PREPARATION, checkpoint_preparation, preparation_differences, saved_config,
                                     synthetic_note)
from utils.cli import Parser, show_progress
from utils.data import make_loader, to_device
from utils.device import PRECISIONS, pick_device, pick_precision
from utils.errors import UserError
from utils.experiment import dataset_class
from utils.io import atomic_write_csv, atomic_write_json
from utils.paths import default_dataset_dir
from utils.plots import save_confusion_matrix, save_per_class
from utils.train import autocast

MODELS = ["rgb", "convlstm", "flow", "twostream", "ms", "ms_op"]


def parse_args(argv):
    p = Parser(description=__doc__)
    p.add_argument("--model", choices=MODELS,
                   help="default: the checkpoint's experiment (convlstm: rgb trained with --noAttention); an "
                   "original Ego-RNN file: the kind its weights show (rgb, flow, twostream)")
    p.add_argument("--datasetDir", default=None,
                   help="default: $GTEA61_DIR, else data/GTEA61, else make demo's data/synthetic_gtea61")
    p.add_argument("--modelStateDict", help="checkpoint (this project's or the original Ego-RNN's); required unless --splitMean")
    p.add_argument("--splitMean", nargs="+", default=None, metavar="DIR",
                   help="EGTEA evaluation folders (or their summary.json) of splits 1, 2, 3: print the mean")
    p.add_argument("--seqLen", type=int, default=None, help="default: the checkpoint's, else 25 as the original")
    p.add_argument("--memSize", type=int, default=None,
                   help="default: the checkpoint's (read from its ConvLSTM weights), else 512")
    p.add_argument("--stackSize", type=int, default=None, help="default: the checkpoint's, else 5")
    p.add_argument("--numSeg", type=int, default=5, help="flow stacks averaged per video (flow model)")
    p.add_argument("--frameSize", type=int, default=None, help="default: the checkpoint's, else 224")
    p.add_argument("--testUsers", nargs="+", default=None, help="default: the checkpoint's test users, else S2")
    p.add_argument("--dataset", choices=("gtea61", "egtea"), default=None,
                   help="default: the checkpoint's (gtea61 for files without a record)")
    p.add_argument("--split", type=int, choices=(1, 2, 3), default=None,
                   help="--dataset egtea: score test_splitK.txt (default: the checkpoint's split)")
    p.add_argument("--allowTrainUsers", action="store_true",
                   help="score users the checkpoint was trained on (its training data: not a test accuracy)")
    p.add_argument("--outDir", default=None, help="default: <checkpoint folder>/eval_<testUsers>")
    p.add_argument("--batchSize", type=int, default=8, help="test clips per forward pass")
    p.add_argument("--numWorkers", type=int, default=default_workers(),
                   help="DataLoader worker processes (default: one per core, up to 8; this machine: %(default)s)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when a GPU is visible, else cpu")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="default: the precision the checkpoint's run trained and evaluated in, so that the accuracy "
                   "is the one training recorded; fp32 for files without that record (it reproduces the original's "
                   "logits); auto: bf16 where the hardware runs it natively")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --outDir")
    p.add_argument("--quiet", action="store_true", help="no progress bar (drawn on a terminal only anyway)")
    p.add_argument("--topk", type=int, nargs="+", default=[5],
                   help="top-k accuracies to report besides top-1 (k >= the number of classes gives 100%%)")
    args = p.parse_args(argv)
    if args.splitMean:
        return args
    if args.modelStateDict is None:
        p.error("--modelStateDict is required (or --splitMean DIR ...)")
    if any(k <= 0 for k in args.topk):
        raise UserError(f"--topk must be positive (got {' '.join(map(str, args.topk))})")
    if args.datasetDir is None and args.dataset == "egtea":
        raise UserError("--dataset egtea needs --datasetDir: the root prepared by python -m datasets.prepare --egtea")
    if args.datasetDir is None:
        args.datasetDir = default_dataset_dir()
    return args


def read_meta(path):
    """Metadata of this project's checkpoints (empty for original Ego-RNN files)."""
    if not os.path.isfile(path):
        raise UserError(f"--modelStateDict: no file at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"--modelStateDict: {path} is not a readable PyTorch checkpoint ({type(e).__name__})")
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return {k: v for k, v in obj.items() if k != "model"}
    return {}


def model_of(path, meta, asked):
    """The --model of the checkpoint at `path`: the experiment its record names (convlstm: an rgb
    one trained without attention). A file without a record (the original Ego-RNN release's) shows
    only its family in its weights, which --model may narrow. A --model that contradicts the file
    is refused."""
    recorded = meta.get("experiment")
    if recorded:
        name = "convlstm" if recorded == "rgb" and not meta.get("model_config", {}).get("attention", True) \
            else recorded
    else:
        name = checkpoint_info(path)["family"]
        if asked is not None and FAMILY_OF[asked] == name:
            return asked
    if asked is not None and asked != name:
        raise UserError(f"--model {asked}: {path} holds a '{name}' model; pass --model {name} or leave --model out")
    return name


FAMILY_OF = {"rgb": "rgb", "convlstm": "rgb", "ms": "rgb", "ms_op": "rgb", "flow": "flow", "twostream": "twostream"}
MEAN_KEYS = ("accuracy", "mean_class_accuracy", "verb_accuracy", "noun_accuracy", "noun_set_accuracy")


def split_mean(paths):
    """The mean over EGTEA splits of the summaries at `paths` (folders or summary.json files):
    each must be an EGTEA evaluation, one per split, of one model kind."""
    rows = []
    for path in paths:
        f = os.path.join(path, "summary.json") if os.path.isdir(path) else path
        try:
            with open(f) as fh:
                s = json.load(fh)
        except (OSError, ValueError) as e:
            raise UserError(f"--splitMean {path}: cannot read {f} ({type(e).__name__}): pass the folders "
                            "evaluate.py wrote (eval_test_splitK)")
        if s.get("dataset_kind") != "egtea" or not s.get("split"):
            raise UserError(f"--splitMean {path}: not an EGTEA evaluation (--dataset egtea --split K)")
        rows.append((s["split"], f, s))
    splits = [k for k, _, _ in rows]
    if len(set(splits)) != len(splits):
        raise UserError(f"--splitMean: split {max(splits, key=splits.count)} given twice; pass one evaluation per split")
    if len({s.get("model") for _, _, s in rows}) > 1:
        raise UserError("--splitMean: the evaluations are of different models ("
                        + ", ".join(sorted({str(s.get('model')) for _, _, s in rows})) + ")")
    rows.sort()
    mean = {}
    for key in MEAN_KEYS:
        vals = [s.get(key) for _, _, s in rows]
        mean[key] = None if any(v is None for v in vals) else round(float(np.mean(vals)), 4)
    for k, _, s in rows:
        print(f"split {k}: top-1 {s['accuracy']:.2f}%, mean class accuracy {s['mean_class_accuracy']}% "
              f"({s['num_videos']} videos)")
    note = "" if sorted(splits) == [1, 2, 3] else f" (only splits {', '.join(map(str, sorted(splits)))}: not the 3-split mean)"
    print(f"mean over splits {', '.join(map(str, sorted(splits)))}: top-1 {mean['accuracy']:.2f}%, mean class accuracy "
          f"{mean['mean_class_accuracy']}%" + (f", verb {mean['verb_accuracy']}%, noun {mean['noun_accuracy']}%"
                                                 if mean["noun_accuracy"] is not None else "") + note)
    out = os.path.join(os.path.dirname(rows[0][1]), "splits_mean.json")
    atomic_write_json(out, {"mean": mean, "splits": {k: f for k, f, _ in rows}, "model": rows[0][2].get("model")})
    return mean
def topk_accuracy(logits, labels, k):
    """% of videos whose true class is among the k highest logits (ties: torch.topk's pick)."""
    k = min(k, logits.shape[1])
    return 100.0 * (logits.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean().item()


def check_preparation(path, config, root):
    """A warning naming both when the dataset's flow was prepared otherwise than the checkpoint's
    training data (method, warp, flow scale): its accuracy there is not the model's."""
    trained, where = checkpoint_preparation(config)
    here = preparation(root) or dict(EGORNN_PREPARATION)
    for key, had, now in preparation_differences(trained, here, ("flow", "warp", "flowScale")):
        print(f"warning: {root}'s flow has {key} {now}, {path}'s training data had {key} {had} ({where}): "
              "prepare the dataset as the training data were (python -m datasets.prepare --flow / --flowScale "
              "/ --noWarp)", file=sys.stderr, flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.splitMean:
        split_mean(args.splitMean)
        return 0

    meta = read_meta(args.modelStateDict)
    args.model = model_of(args.modelStateDict, meta, args.model)
    family = FAMILY_OF[args.model]
    cfg = meta.get("model_config", {})
    seq_len = args.seqLen or meta.get("seqLen") or 25
    frame_size = args.frameSize or meta.get("frameSize") or 224
    config = saved_config(args.modelStateDict)
    note = synthetic_note(args.modelStateDict, config)
    if note:
        print(note, flush=True)
    precision = args.precision or config.get("precision") or "fp32"
    where = ("--precision" if args.precision else "the precision of the run that trained it" if config.get("precision")
             else "no precision recorded")
    info = checkpoint_info(args.modelStateDict)
    # the ConvLSTM's weights say its size: an original two-stream file records no memSize
    mem_size = info["mem_size"] or cfg.get("memSize") or args.memSize or 512
    if args.memSize and info["mem_size"] and args.memSize != info["mem_size"]:
        raise UserError(f"--memSize {args.memSize}: {args.modelStateDict} has a ConvLSTM of {info['mem_size']} "
                        f"channels; pass --memSize {info['mem_size']} or leave it out")
    stack_size = args.stackSize or config.get("stackSize") or info["stack_size"] or 5
    if family in ("flow", "twostream") and info["stack_size"] and stack_size != info["stack_size"]:
        raise UserError(f"--stackSize {stack_size}: {args.modelStateDict} reads stacks of {info['stack_size']} "
                        f"flow frames; pass --stackSize {info['stack_size']} or leave it out")
    dataset = args.dataset or config.get("dataset") or "gtea61"
    if config.get("dataset") and dataset != config["dataset"]:
        raise UserError(f"--dataset {dataset}: {args.modelStateDict} was trained on --dataset {config['dataset']}; "
                        "evaluate it on that dataset")
    split = None
    if dataset == "egtea":
        if args.testUsers:
            raise UserError("--testUsers selects GTEA-61 users; --dataset egtea selects videos by --split 1|2|3")
        split = args.split or config.get("split") or 1
        if config.get("split") and split != config["split"]:
            raise UserError(f"--split {split}: {args.modelStateDict} was trained on split {config['split']}, whose "
                            f"training clips overlap test_split{split}; evaluate it on --split {config['split']}")
        args.testUsers = [split_names(split)[1]]
    elif args.split is not None:
        raise UserError(f"--split {args.split} applies to --dataset egtea")
    test_users = args.testUsers or config.get("testUsers") or list(TEST_USERS)
    trained_on = [u for u in test_users if u in (config.get("trainUsers") or [])]
    if trained_on and not args.allowTrainUsers:
        raise UserError(f"--testUsers {' '.join(test_users)}: {args.modelStateDict} was trained on "
                        f"{' '.join(trained_on)}, so that is not a test accuracy; pass its test users "
                        f"({' '.join(config.get('testUsers') or ['?'])}) or --allowTrainUsers")
    for name, v in (("seqLen", seq_len), ("frameSize", frame_size), ("batchSize", args.batchSize), ("numSeg", args.numSeg)):
        if v <= 0:
            raise UserError(f"--{name} must be positive (got {v})")

    device = pick_device(args.device)
    precision = pick_precision(precision, device)
    print(f"precision {precision} ({where})", flush=True)
    torch.set_flush_denormal(True)  # subnormals only slow the CPU down; they are below float precision here
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    modality = {"rgb": "rgb", "flow": "flow", "twostream": "twostream"}[family]
    Dataset = dataset_class(argparse.Namespace(dataset=dataset, datasetDir=args.datasetDir))
    test_set = Dataset(args.datasetDir, test_users, modality, train=False, seqLen=seq_len,
                      stackSize=stack_size, numSeg=args.numSeg if family == "flow" else 1,
                      frameSize=frame_size, mapSize=feature_map_size(frame_size))
    C = test_set.num_classes
    file_classes = info["num_classes"]
    if file_classes is not None and file_classes != C:
        raise UserError(f"{args.modelStateDict} has {file_classes} classes but {args.datasetDir} has {C}: "
                        f"evaluate it on the dataset it was trained on")
    if meta.get("classes") and list(meta["classes"]) != list(test_set.classes):
        raise UserError(f"{args.modelStateDict} was trained on other class names than those in {args.datasetDir}")

    if family in ("flow", "twostream"):
        check_preparation(args.modelStateDict, config, args.datasetDir)

    out_dir = args.outDir or os.path.join(os.path.dirname(os.path.abspath(args.modelStateDict)),
                                          "eval_" + "_".join(test_users))
    if os.path.exists(os.path.join(out_dir, "predictions.csv")) and not args.overwrite:
        raise UserError(f"{out_dir} already holds predictions.csv; pass --overwrite or another --outDir")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --outDir {out_dir}: {e.strerror}")

    # the checkpoint's action model (heads left out); rgb / ms / ms_op share it, convlstm has no attention
    attention = args.model != "convlstm" if family == "rgb" else config.get("attention", True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: the checkpoint's come next
        model = build_model(family, C, {"memSize": mem_size, "stackSize": stack_size, "attention": attention},
                            heads=False)
    load_checkpoint(model, args.modelStateDict)
    # frozen and installed as in training's evaluation, so that the same kernels give the same
    # number (the frozen trunk runs fused under CPU bf16 there: models/speed.py)
    model = install(model.requires_grad_(False).to(device), device, precision).eval()
    loader = make_loader(test_set, args.batchSize, shuffle=False, seed=0, num_workers=args.numWorkers,
                         pin_memory=device.type == "cuda")

    logits_all, labels_all, index_all = [], [], []
    with torch.no_grad():
        for batch in tqdm(loader, desc="evaluate", dynamic_ncols=True, disable=not show_progress(args.quiet)):
            batch = to_device(batch, device)
            with autocast(device, precision):
                out = forward(model, batch, family)
            logits_all.append(out["logits"].float().cpu())
            labels_all.append(batch["label"].cpu())
            index_all.append(batch["index"].cpu())
    logits, labels, index = torch.cat(logits_all), torch.cat(labels_all), torch.cat(index_all)
    preds = logits.argmax(1)

    rows = [[test_set.video_ids[i], int(t), int(p)] + [f"{v:.7g}" for v in lg.tolist()]
            for i, t, p, lg in zip(index.tolist(), labels.tolist(), preds.tolist(), logits)]
    atomic_write_csv(os.path.join(out_dir, "predictions.csv"),
                     ["video", "label", "pred"] + [f"logit_{c}" for c in range(C)], rows)
    per_class = {}
    for c, name in enumerate(test_set.classes):
        mask = labels == c
        per_class[name] = None if mask.sum() == 0 else round(100.0 * (preds[mask] == c).float().mean().item(), 4)
    present = [v for v in per_class.values() if v is not None]
    acc = 100.0 * (preds == labels).float().mean().item()
    parts = verb_noun_of(test_set)
    verb_acc, noun_acc, noun_set_acc = ([derived_accuracy(labels.tolist(), preds.tolist(), part) for part in parts[:3]]
                                        if parts else (None, None, None))
    summary = {"accuracy": round(acc, 4), "mean_class_accuracy": round(float(np.mean(present)), 4) if present else None,
               "verb_accuracy": None if verb_acc is None else round(verb_acc, 4),
               "noun_accuracy": None if noun_acc is None else round(noun_acc, 4),
               "noun_set_accuracy": None if noun_set_acc is None else round(noun_set_acc, 4),
               **{f"top{k}_accuracy": round(topk_accuracy(logits, labels, k), 4) for k in sorted(set(args.topk))},
               "per_class_accuracy": per_class, "num_videos": len(labels), "model": args.model,
               "dataset_kind": dataset, "split": split,
               "class_index": getattr(test_set, "class_index", None),  # action_idx.txt's 1-based index of each id
               "checkpoint": args.modelStateDict, "dataset": args.datasetDir, "test_users": test_users,
               "seqLen": seq_len, "frameSize": frame_size, "precision": precision}
    atomic_write_json(os.path.join(out_dir, "summary.json"), summary)
    save_confusion_matrix(labels.tolist(), preds.tolist(), test_set.classes,
                          os.path.join(out_dir, "confusion_matrix.png"),
                          title=f"{args.model} on {' '.join(test_users)}: {acc:.2f}%")
    counts = {name: int((labels == c).sum()) for c, name in enumerate(test_set.classes)}
    save_per_class(per_class, counts, os.path.join(out_dir, "per_class.png"),
                   title=f"{args.model} on {' '.join(test_users)}: accuracy per class")
    topk = ", ".join(f"top-{k} {summary[f'top{k}_accuracy']:.2f}%" for k in sorted(set(args.topk)))
    print(f"accuracy {acc:.2f}% ({int((preds == labels).sum())}/{len(labels)} videos), {topk}, "
          f"mean class accuracy {summary['mean_class_accuracy']}%"
          + (f", verb accuracy {verb_acc:.2f}%, noun accuracy {noun_acc:.2f}% (first noun), noun set accuracy "
             f"{noun_set_acc:.2f}% (all nouns; from the action predictions)" if parts else "") + f"; results in {out_dir}")
    return 0

