"""What a training stage keeps around its loop: the RNG states, the stage folder, the resume
checks, the epoch selection and the writers of its files.

    <outDir>/stage<N>/
        args.json        the run's arguments (compared on --resume)
        log.csv          one row per epoch (LOG_COLUMNS)
        last.pth         everything needed to resume exactly: weights, optimiser, scheduler, RNGs, rows;
                         removed when the stage finishes, unless --keepLast
        best_model.pth   the selected epoch's weights and run record (--select)
        curves.png       loss and accuracy per epoch
        summary.json     written when the stage ends
        tb/              TensorBoard events (utils/tensorboard.py)

Files are written atomically (utils/io.py). Under torchrun only process 0 writes."""
import contextlib
import json
import math
import os
import random
import shutil

import numpy as np
import torch

from utils import distributed
from utils.arguments import RESUME_KEYS, hparam_names
from utils.errors import UserError
from utils.io import atomic_torch_save, atomic_write_csv, atomic_write_json
from utils.plots import save_curves
from utils.tensorboard import Board, epoch_scalars

LOG_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
               "ms_loss", "op_loss", "op_acc", "seconds", "val_loss", "val_acc"]
RESULT_FILES = ["log.csv", "last.pth", "best_model.pth", "summary.json"]


# ----------------------------------------------------------------------------- random numbers

def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(generator):
    """Every RNG state as tensors and plain numbers, so last.pth loads with weights_only=True
    (a pickled numpy or Python object in a checkpoint could run code when it is loaded)."""
    _, mt, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "generator": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and distributed.world_size() == 1 else None,
            # torchrun: every process draws the same numbers on its own GPU; process 0's state serves all
            "cuda_current": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "numpy": {"mt": torch.from_numpy(mt.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                       "gauss": py_gauss}}


def set_rng_state(state, generator):
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["mt"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))
    if state.get("cuda") is not None and torch.cuda.is_available() and distributed.world_size() == 1:
        torch.cuda.set_rng_state_all(state["cuda"])
    elif state.get("cuda_current") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_current"])
    generator.set_state(state["generator"])


# ----------------------------------------------------------------------------- the stage folder

def prepare_stage_dir(stage_dir, resume, overwrite):
    """Refuse to touch earlier results unless asked; returns True when there is a run to resume."""
    try:
        os.makedirs(stage_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {stage_dir}: {e.strerror}; pass a writable --outDir")
    if not os.access(stage_dir, os.W_OK | os.X_OK):
        raise UserError(f"output folder {stage_dir} is not writable; pass a writable --outDir")
    existing = [f for f in RESULT_FILES if os.path.exists(os.path.join(stage_dir, f))]
    if not existing:
        return False
    if overwrite:
        for name in os.listdir(stage_dir):
            path = os.path.join(stage_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        return False
    if resume:
        return os.path.exists(os.path.join(stage_dir, "last.pth"))
    raise UserError(f"{stage_dir} already holds results ({', '.join(existing)}); "
                    f"pass --resume to continue that run or --overwrite to replace it")


def check_same_run(path, new):
    """--resume: the arguments marked `resume` in utils/arguments.py must not have changed."""
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return
    for k in RESUME_KEYS:
        if k in old and k in new and old[k] != new[k]:
            raise UserError(f"--resume: --{k} was {old[k]} in {path}, now {new[k]}; resume with the same "
                            f"arguments, or pass --overwrite to start again")


def load_last(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file cannot happen (atomic writes) but a foreign one can
        raise UserError(f"cannot read {path} to resume ({type(e).__name__}); pass --overwrite to start again")


def selection_score(select, epoch, test, val):
    """The number whose maximum picks best_model.pth (--select): the test accuracy (the paper's
    protocol), the validation accuracy, or the epoch itself (the last epoch wins)."""
    return {"test": lambda: test["acc"], "val": lambda: val["acc"], "last": lambda: float(epoch)}[select]()


def _fmt(x, digits=6):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


# ----------------------------------------------------------------------------- one stage's record

class StageRecord:
    """The epochs of one stage so far, and the files that hold them.

    begin() prepares the folder (or loads last.pth to resume); epoch() records one epoch, picks
    best_model.pth and writes every file; finish() writes summary.json."""

    def __init__(self, exp, has_val):
        self.exp, self.stage_dir, self.main = exp, exp.stage_dir, distributed.is_main()
        self.select = exp.args.select
        if self.select == "val" and not has_val:
            raise ValueError("--select val needs a validation loader")
        self.rows, self.board_rows = [], []  # board_rows: each epoch's TensorBoard values, kept for --resume
        self.best_score, self.selected_epoch, self.elapsed = -math.inf, 0, 0.0

    def begin(self, model, optimizer, scheduler, generator):
        """The first epoch to run: 1, or the one after last.pth's when resuming."""
        exp, args = self.exp, self.exp.args

        def prepare():
            resuming = prepare_stage_dir(self.stage_dir, args.resume, args.overwrite)
            if resuming:
                check_same_run(os.path.join(self.stage_dir, "args.json"), exp.resolved_args())
            atomic_write_json(os.path.join(self.stage_dir, "args.json"), exp.resolved_args())
            return resuming
        start = 1
        if distributed.on_main(prepare):  # the other processes wait, and stop on a refusal
            start = self._resume(model, optimizer, scheduler, generator)
        self.board = Board(self.stage_dir, self.board_rows, enabled=self.main)
        return start

    def _resume(self, model, optimizer, scheduler, generator):
        path = os.path.join(self.stage_dir, "last.pth")
        state = load_last(path)
        if state.get("experiment") != self.exp.experiment:
            raise UserError(f"{path} belongs to '{state.get('experiment')}', not '{self.exp.experiment}'; "
                            f"pass --overwrite or another --outDir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], generator)
        self.rows, self.best_score, self.selected_epoch = state["rows"], state["best_score"], state["selected_epoch"]
        self.elapsed, self.board_rows = state["seconds"], state.get("tensorboard", [])
        print(f"resuming stage {self.exp.stage} from {path} after epoch {state['epoch']}")
        return state["epoch"] + 1

    def epoch(self, epoch, lr, train, test, val, seconds, train_seconds, clips, state):
        """Record one epoch; `state` holds what last.pth needs (model, optimizer, scheduler,
        generator). Returns True when this epoch became best_model.pth."""
        self.elapsed += seconds
        self.rows.append([epoch, f"{lr:.3g}", f"{train['loss']:.6f}", f"{train['acc']:.4f}",
                          f"{test['loss']:.6f}", f"{test['acc']:.4f}", _fmt(train["ms_loss"]),
                          _fmt(train["op_loss"]), _fmt(train["op_acc"]), f"{seconds:.1f}",
                          _fmt(val["loss"]), _fmt(val["acc"], 4)])
        self.board_rows.append(epoch_scalars(epoch, lr, train=train, test=test, val=val, seconds=seconds,
                                             train_seconds=train_seconds, clips=clips))
        score = selection_score(self.select, epoch, test, val)  # the same in every process
        better = score > self.best_score  # strictly better: the first best epoch is kept, as the original
        if better:
            self.best_score, self.selected_epoch = score, epoch
        if self.main:
            self._write(epoch, test, better, **state)
        return better

    def _write(self, epoch, test, better, model, optimizer, scheduler, generator):
        d, exp = self.stage_dir, self.exp
        if better:
            atomic_torch_save(exp.checkpoint(model, epoch, test["acc"]), os.path.join(d, "best_model.pth"))
        atomic_torch_save({"experiment": exp.experiment, "model": model.state_dict(),
                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "epoch": epoch, "best_score": self.best_score, "selected_epoch": self.selected_epoch,
                           "rows": self.rows, "seconds": self.elapsed, "rng": rng_state(generator),
                           "tensorboard": self.board_rows}, os.path.join(d, "last.pth"))
        atomic_write_csv(os.path.join(d, "log.csv"), LOG_COLUMNS, self.rows)
        save_curves(self.rows, os.path.join(d, "curves.png"), title=f"{exp.experiment} stage {exp.stage}",
                    selected=self.selected_epoch)
        self.board.epoch(self.board_rows[-1])

    def interrupted(self, epoch):
        done = self.rows[-1][0] if self.rows else 0
        print(f"\ninterrupted in epoch {epoch}; {self.stage_dir}/last.pth holds epoch {done}: "
              f"rerun the same command with --resume to continue")

    def finish(self, last_test, num_train, num_test):
        """summary.json (process 0), the TensorBoard hparams; returns the summary."""
        exp, rows = self.exp, self.rows
        test_accs = {int(r[0]): float(r[5]) for r in rows}
        best_epoch = max(test_accs, key=lambda e: (test_accs[e], -e)) if rows else 0  # first best
        summary = {"experiment": exp.experiment, "stage": exp.stage, "select": self.select,
                   "selected_epoch": self.selected_epoch,
                   "selected_test_accuracy": test_accs.get(self.selected_epoch, float("nan")),
                   "best_test_accuracy": test_accs.get(best_epoch, -1.0), "best_epoch": best_epoch,
                   "final_test_accuracy": test_accs[int(rows[-1][0])] if rows else float("nan"),
                   "epochs": int(rows[-1][0]) if rows else 0, "seconds": round(self.elapsed, 1),
                   "num_test_videos": num_test, "test_videos_per_process": last_test.get("videos_per_process"),
                   "num_train_videos": num_train, "precision": exp.precision, "dataset": exp.args.datasetDir}
        resolved = exp.resolved_args()
        self.board.close({k: resolved[k] for k in hparam_names(exp.experiment) if k in resolved},
                         {k: summary[k] for k in ("selected_test_accuracy", "best_test_accuracy",
                                                  "final_test_accuracy")})
        summary["tensorboard_seconds"] = round(self.board.seconds, 3)
        if self.main:
            atomic_write_json(os.path.join(self.stage_dir, "summary.json"), summary)
            # A finished stage is skipped by --resume (summary.json), so last.pth, two to three
            # times best_model.pth's size with the optimiser's state, has no further use.
            if not exp.args.keepLast:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.stage_dir, "last.pth"))
        distributed.barrier()  # the stage's files are complete before any process goes on
        return summary
