"""The one training loop every experiment script uses.

`train_one_epoch` and `evaluate` are the pytorch/examples pair; `fit` runs one stage: it
prepares the output folder, resumes exactly from `last.pth`, trains and evaluates every epoch,
and writes `log.csv`, `best_model.pth`, `last.pth`, `curves.png` and `summary.json`, each
atomically. What differs between experiments (model, data, losses, optimiser) comes in through
an `Experiment` (utils/experiment.py). Under torchrun every process runs `fit` on its share of
each batch; process 0 alone writes and prints (utils/distributed.py)."""
import math
import os
import random
import shutil
import time
from contextlib import nullcontext

import numpy as np
import torch
from tqdm import tqdm

from datasets.transforms import HOST_KEYS, normalize_inputs
from models.batch_share import batch_share
from utils import distributed
from utils.data import set_epoch
from utils.errors import NonFiniteLossError, UserError
from utils.io import atomic_torch_save, atomic_write_csv, atomic_write_json
from utils.plots import save_curves
from utils.tensorboard import Board, epoch_scalars

LOG_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
               "ms_loss", "op_loss", "op_acc", "seconds", "val_loss", "val_acc"]
RESULT_FILES = ["log.csv", "last.pth", "best_model.pth", "summary.json"]


def autocast(device, precision):
    """bf16 autocast for the forward pass; the losses are computed in fp32 by the caller."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def to_device(batch, device):
    """The batch on the device; uint8 clips and decoded frames (GPU loaders) are transformed
    and normalised there (datasets.transforms.normalize_inputs)."""
    def move(k, v):
        if k in HOST_KEYS:
            return v
        if torch.is_tensor(v):
            return v.to(device, non_blocking=True)
        if isinstance(v, list) and v and torch.is_tensor(v[0]):
            return [t.to(device, non_blocking=True) for t in v]
        return v
    return normalize_inputs({k: move(k, v) for k, v in batch.items()})


class Meter:
    """Sums of per-sample quantities; `mean()` divides each by its own count.

    Values may be 0-dim tensors on the device: they are read only when a mean is asked for,
    all at once, so a GPU training step never waits for the host to read its loss."""

    def __init__(self):
        self.items = {}

    def add(self, name, value, count):
        self.items.setdefault(name, []).append((value, count))

    def _read(self, name):
        items = self.items.get(name, [])
        pending = [v.detach() for v, _ in items if torch.is_tensor(v)]
        if pending:
            values = iter(torch.stack([v.to(pending[0].dtype) for v in pending]).cpu().tolist())
            items[:] = [(next(values) if torch.is_tensor(v) else v, c) for v, c in items]
        return items

    def sums(self, name):
        """(sum of value x count, sum of counts)."""
        total, count = 0.0, 0
        for value, n in self._read(name):
            total += float(value) * n
            count += n
        return total, count

    def mean(self, name, default=float("nan")):
        """This process's mean."""
        total, count = self.sums(name)
        return total / count if count else default

    def global_sums(self, names, device):
        """{name: (sum, count) over every process's items} (one all_reduce under torchrun)."""
        sums = distributed.all_sum([x for k in names for x in self.sums(k)], device)
        return {k: (sums[2 * i], sums[2 * i + 1]) for i, k in enumerate(names)}

    def global_means(self, names, device):
        return {k: t / c if c else float("nan") for k, (t, c) in self.global_sums(names, device).items()}


def non_finite(what, exp, epoch):
    return NonFiniteLossError(f"{what} in stage {exp.stage} epoch {epoch}; the last good checkpoint is kept "
                              f"in {exp.stage_dir} (try a lower --lr)")


def check_finite(meter, name, exp, epoch):
    """Raise, in every process, if any loss recorded under `name` in any process was NaN or
    infinite (the sum over all of them is then not finite). GPU runs check the losses once per
    epoch, not once per step; parameters are checked again before each checkpoint."""
    if not math.isfinite(meter.global_means([name], getattr(exp, "device", torch.device("cpu")))[name]):
        raise non_finite("non-finite loss", exp, epoch)


def train_step(exp, model, batch, optimizer, generator, epoch=None, share=None):
    """One optimisation step on one batch (the model already in train mode): forward under
    autocast, fp32 losses, backward, step. Returns (batch on the device, outputs, losses).
    bench.py times exactly this function. On the CPU a non-finite loss stops the run before
    the step; on a GPU that check would stall the pipeline every step, so train_one_epoch makes
    it once per epoch, and fit() checks the parameters before anything is written.

    share (torchrun): the rows of the global batch that `batch` is (models/batch_share.py). The
    loss is scaled by (rows / global batch) x processes, so that DistributedDataParallel's mean of
    the processes' gradients is the gradient of the global batch's mean loss."""
    batch = to_device(batch, exp.device)
    with batch_share(share), autocast(exp.device, exp.precision):
        out = exp.forward(model, batch, generator, train=True)
    losses = exp.losses(out, batch)
    loss = losses["loss"]
    if exp.device.type == "cpu" and not torch.isfinite(loss):
        raise non_finite(f"non-finite loss ({loss.item()})", exp, epoch)
    world = distributed.world_size()
    if share is not None and (world > 1 or share.weight != 1):
        loss = loss * (share.weight * (share.stop - share.start) * world / share.total)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return batch, out, losses


def train_one_epoch(exp, model, loader, optimizer, epoch, generator):
    """One epoch; `model` may be the DistributedDataParallel wrapper (utils/distributed.wrap).
    Returns the epoch's means over every clip of every process."""
    exp.set_train_mode(getattr(model, "module", model))
    set_epoch(loader, epoch)
    # the rows of each global batch this process holds (one process: the whole batch)
    batches = getattr(loader, "batch_sampler", None)
    shares = batches.shares() if hasattr(batches, "shares") else None
    meter = Meter()
    bar = tqdm(loader, desc=f"stage {exp.stage} epoch {epoch} train", leave=False, dynamic_ncols=True,
               disable=not distributed.is_main())
    for step, batch in enumerate(bar):
        share = shares[step] if shares else None
        batch, out, losses = train_step(exp, model, batch, optimizer, generator, epoch, share)
        rows = batch["label"].shape[0]
        n = rows * (1 if share is None else share.weight)  # a weight-0 clip counts for nothing
        correct = (out["logits"].argmax(1) == batch["label"]).sum()
        meter.add("loss", losses["ce"], n)  # action CE, comparable with the test loss
        meter.add("total", losses["loss"].detach(), n)
        meter.add("correct", correct.double() * (n / rows), 1)  # a count: accuracies exact whatever the shares
        for k in ("ms_loss", "op_loss"):
            if k in losses:
                meter.add(k, losses[k].detach(), n)
        if "op_logits" in out:
            meter.add("op_correct", (out["op_logits"].argmax(1) == out["op_target"]).sum().double() * (n / rows), 1)
        if not bar.disable and (exp.device.type == "cpu" or step % 20 == 0):  # reading the meter waits for the GPU
            bar.set_postfix(loss=f"{meter.mean('loss'):.3f}", acc=f"{100 * accuracy(meter.sums('correct'), meter.sums('loss')):.1f}")
    check_finite(meter, "total", exp, epoch)
    s = meter.global_sums(["loss", "correct", "ms_loss", "op_loss", "op_correct"], exp.device)
    m = {k: t / c if c else float("nan") for k, (t, c) in s.items()}
    op_acc = accuracy(s["op_correct"], s["op_loss"]) if s["op_correct"][1] else float("nan")
    return {"loss": m["loss"], "acc": 100 * accuracy(s["correct"], s["loss"]), "ms_loss": m["ms_loss"],
            "op_loss": m["op_loss"], "op_acc": 100 * op_acc}


def accuracy(correct, counted):
    """Correct clips / clips, from Meter sums: (correct, _) and (_, clips)."""
    return correct[0] / counted[1] if counted[1] else float("nan")


@torch.no_grad()
def evaluate(exp, model, loader, keep_logits=False):
    """Action cross-entropy and accuracy on `loader` (heads off: they do not affect logits).
    Under torchrun each process evaluates its videos (utils/data.make_loader) and the sums are
    added up, so every video counts once; logits are gathered from all processes."""
    model.eval()
    meter = Meter()
    all_logits, all_labels, all_index = [], [], []
    for batch in tqdm(loader, desc=f"stage {exp.stage} evaluate", leave=False, dynamic_ncols=True,
                      disable=not distributed.is_main()):
        batch = to_device(batch, exp.device)
        with autocast(exp.device, exp.precision):
            out = exp.forward(model, batch, None, train=False)
        logits = out["logits"].float()
        n = batch["label"].shape[0]
        meter.add("loss", torch.nn.functional.cross_entropy(logits, batch["label"]), n)
        meter.add("correct", (logits.argmax(1) == batch["label"]).sum().double(), 1)
        if keep_logits:
            all_logits.append(logits.cpu())
            all_labels.append(batch["label"].cpu())
            all_index.append(batch["index"].cpu())
    s = meter.global_sums(["loss", "correct"], exp.device)
    result = {"loss": s["loss"][0] / s["loss"][1] if s["loss"][1] else float("nan"),
              "acc": 100 * accuracy(s["correct"], s["loss"]),
              # videos each process scored: their sum is the set's size, or some were scored twice
              "videos_per_process": distributed.gather_objects(meter.sums("loss")[1])}
    if keep_logits:
        parts = distributed.gather_objects([torch.cat(x) if x else None for x in (all_logits, all_labels, all_index)])
        logits, labels, index = (torch.cat([p[k] for p in parts if p[k] is not None]) for k in range(3))
        order = index.argsort()
        result.update(logits=logits[order], labels=labels[order], index=index[order])
    return result


# ----------------------------------------------------------------------------- run state

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


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


# Arguments that must not change when a run is resumed (numEpochs may grow).
SAME_ON_RESUME = ("lr", "stepSize", "decayRate", "seqLen", "frameSize", "memSize", "trainBatchSize",
                  "seed", "precision", "trainUsers", "testUsers", "datasetDir", "msWeight", "opWeight",
                  "regression", "msInput", "noMS", "noAttention", "pretrained", "stage1Dict", "flowLr",
                  "opInput", "stackSize", "select", "valFraction", "dataset", "split", "dataOnDevice")


def check_same_run(path, new):
    import json
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return
    for k in SAME_ON_RESUME:
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


def fit(exp, model, train_loader, test_loader, val_loader=None):
    """Train one stage. Returns the summary dict. best_model.pth holds the epoch picked by
    exp.args.select ("test", "val": needs val_loader, or "last")."""
    stage_dir = exp.stage_dir
    main = distributed.is_main()

    def prepare():
        resuming = prepare_stage_dir(stage_dir, exp.args.resume, exp.args.overwrite)
        if resuming:
            check_same_run(os.path.join(stage_dir, "args.json"), exp.resolved_args())
        atomic_write_json(os.path.join(stage_dir, "args.json"), exp.resolved_args())
        return resuming
    resuming = distributed.on_main(prepare)  # the other processes wait, and stop on a refusal

    net = distributed.wrap(model, exp.device, find_unused=exp.family != "flow")  # DistributedDataParallel under torchrun
    optimizer = exp.make_optimizer(model)
    scheduler = exp.make_scheduler(optimizer)
    generator = torch.Generator().manual_seed(exp.args.seed * 7919 + exp.stage)
    select = getattr(exp.args, "select", "test")
    if select == "val" and val_loader is None:
        raise ValueError("--select val needs a validation loader")
    rows, best_score, selected_epoch, start_epoch, elapsed = [], -math.inf, 0, 1, 0.0
    test = {}
    board_rows = []  # each epoch's TensorBoard values (utils/tensorboard.py), kept in last.pth for --resume
    if resuming:
        state = load_last(os.path.join(stage_dir, "last.pth"))
        if state.get("experiment") != exp.name:
            raise UserError(f"{stage_dir}/last.pth belongs to '{state.get('experiment')}', not '{exp.name}'; "
                            f"pass --overwrite or another --outDir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], generator)
        rows, best_score, selected_epoch = state["rows"], state["best_score"], state["selected_epoch"]
        start_epoch, elapsed = state["epoch"] + 1, state["seconds"]
        board_rows = state.get("tensorboard", [])
        print(f"resuming stage {exp.stage} from {stage_dir}/last.pth after epoch {state['epoch']}")

    board = Board(stage_dir, board_rows, enabled=main)
    num_epochs = exp.args.numEpochs
    bar = tqdm(range(start_epoch, num_epochs + 1), initial=start_epoch - 1, total=num_epochs,
               desc=f"{exp.name} stage {exp.stage}", dynamic_ncols=True, disable=not main)
    epoch = start_epoch - 1
    try:
        for epoch in bar:
            t0 = time.time()
            lr = optimizer.param_groups[0]["lr"]
            train = train_one_epoch(exp, net, train_loader, optimizer, epoch, generator)
            train_seconds = time.time() - t0
            scheduler.step()
            if not all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad):
                raise non_finite("parameters became non-finite", exp, epoch)
            test = evaluate(exp, model, test_loader)
            val = evaluate(exp, model, val_loader) if val_loader is not None else {"loss": None, "acc": None}
            seconds = time.time() - t0
            elapsed += seconds
            rows.append([epoch, f"{lr:.3g}", f"{train['loss']:.6f}", f"{train['acc']:.4f}",
                         f"{test['loss']:.6f}", f"{test['acc']:.4f}", _fmt(train["ms_loss"]),
                         _fmt(train["op_loss"]), _fmt(train["op_acc"]), f"{seconds:.1f}",
                         _fmt(val["loss"]), _fmt(val["acc"], 4)])
            board_rows.append(epoch_scalars(epoch, lr, train, test, val, seconds, train_seconds,
                                            len(train_loader.dataset)))
            score = selection_score(select, epoch, test, val)  # the same in every process
            better = score > best_score  # strictly better: the first best epoch is kept, as the original
            if better:
                best_score, selected_epoch = score, epoch
            if main:
                if better:
                    atomic_torch_save(exp.checkpoint(model, epoch, test["acc"]), os.path.join(stage_dir, "best_model.pth"))
                atomic_torch_save({"experiment": exp.name, "model": model.state_dict(),
                                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                   "epoch": epoch, "best_score": best_score, "selected_epoch": selected_epoch,
                                   "rows": rows, "seconds": elapsed, "rng": rng_state(generator),
                                   "tensorboard": board_rows},
                                  os.path.join(stage_dir, "last.pth"))
                atomic_write_csv(os.path.join(stage_dir, "log.csv"), LOG_COLUMNS, rows)
                save_curves(rows, os.path.join(stage_dir, "curves.png"), title=f"{exp.name} stage {exp.stage}")
                board.epoch(board_rows[-1])
            bar.set_postfix(train_acc=f"{train['acc']:.1f}", test_acc=f"{test['acc']:.1f}", selected=selected_epoch)
            val_text = f"val acc {val['acc']:5.1f}  " if val["acc"] is not None else ""
            tqdm.write(f"epoch {epoch:3d}  lr {lr:.2g}  train loss {train['loss']:.4f} acc {train['acc']:5.1f}  "
                       f"{val_text}test loss {test['loss']:.4f} acc {test['acc']:5.1f}  ({seconds:.1f}s)")
    except KeyboardInterrupt:
        done = rows[-1][0] if rows else 0
        print(f"\ninterrupted in epoch {epoch}; {stage_dir}/last.pth holds epoch {done}: "
              f"rerun the same command with --resume to continue")
        raise
    bar.close()

    test_accs = {int(r[0]): float(r[5]) for r in rows}
    final_acc = test_accs[int(rows[-1][0])] if rows else float("nan")
    num_epochs = int(rows[-1][0]) if rows else 0
    best_epoch = max(test_accs, key=lambda e: (test_accs[e], -e)) if rows else 0  # first best
    summary = {"experiment": exp.name, "stage": exp.stage, "select": select, "selected_epoch": selected_epoch,
               "selected_test_accuracy": test_accs.get(selected_epoch, float("nan")),
               "best_test_accuracy": test_accs.get(best_epoch, -1.0),
               "best_epoch": best_epoch, "final_test_accuracy": final_acc, "epochs": num_epochs,
               "seconds": round(elapsed, 1), "num_test_videos": len(test_loader.dataset),
               "test_videos_per_process": test.get("videos_per_process"),
               "num_train_videos": len(train_loader.dataset), "precision": exp.precision,
               "dataset": exp.args.datasetDir}
    board.close(exp.resolved_args(), {k: summary[k] for k in
                                      ("selected_test_accuracy", "best_test_accuracy", "final_test_accuracy")})
    summary["tensorboard_seconds"] = round(board.seconds, 3)
    if main:
        atomic_write_json(os.path.join(stage_dir, "summary.json"), summary)
    distributed.barrier()  # the stage's files are complete before any process goes on
    return summary


def _fmt(x, digits=6):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"
