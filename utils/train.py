"""The one training loop every experiment script uses (paper §4.2).

`train_step` is one optimisation step; `train_one_epoch` and `evaluate` are the pytorch/examples
pair; `fit` runs one stage: every epoch trains, evaluates on the test videos and hands the figures
to the stage's record (utils/run_state.py: resume, epoch selection, log.csv, best_model.pth,
last.pth, curves.png, summary.json). What differs between experiments (model, data, losses,
optimiser) comes in through an `Experiment` (utils/experiment.py, on models/recipe.py). Under
torchrun every process runs `fit` on its share of each batch; process 0 alone writes and prints
(utils/distributed.py)."""
import math
import time
from contextlib import nullcontext

import torch
from tqdm import tqdm

from models.batch_share import batch_share
from utils import distributed
from utils.cli import show_progress
from utils.data import set_epoch, to_device
from utils.errors import NonFiniteLossError
from utils.run_state import StageRecord


def autocast(device, precision):
    """bf16 autocast for the forward pass; the losses are computed in fp32 by the caller."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


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
    if not math.isfinite(meter.global_means([name], exp.device)[name]):
        raise non_finite("non-finite loss", exp, epoch)


def train_step(exp, model, batch, optimizer, generator, epoch=None, share=None, loss_scale=1.0):
    """One optimisation step on one batch already on the device (utils/data.to_device), the model
    in train mode: forward under autocast, fp32 losses, backward, step. Returns (outputs, losses).
    bench.py times exactly this function. On the CPU a non-finite loss stops the run before the
    step; on a GPU that check would stall the pipeline every step, so train_one_epoch makes it
    once per epoch, and fit() checks the parameters before anything is written.

    share (torchrun): the rows of the global batch that `batch` is (models/batch_share.py), and
    loss_scale = (rows / global batch) x processes, so that DistributedDataParallel's mean of the
    processes' gradients is the gradient of the global batch's mean loss (share_scale)."""
    with batch_share(share), autocast(exp.device, exp.precision):
        out = exp.forward(model, batch, generator, train=True)
    losses = exp.losses(model, out, batch)
    loss = losses["loss"]
    if exp.device.type == "cpu" and not torch.isfinite(loss):
        raise non_finite(f"non-finite loss ({loss.item()})", exp, epoch)
    optimizer.zero_grad(set_to_none=True)
    (loss * loss_scale if loss_scale != 1.0 else loss).backward()
    optimizer.step()
    return out, losses


def share_scale(share):
    """train_step's loss_scale for a share of the global batch (1 for a whole batch in one process)."""
    world = distributed.world_size()
    if share is None or (world == 1 and share.weight == 1):
        return 1.0
    return share.weight * (share.stop - share.start) * world / share.total


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
               disable=not bars(exp))
    for step, batch in enumerate(bar):
        share = shares[step] if shares else None
        batch = to_device(batch, exp.device)
        out, losses = train_step(exp, model, batch, optimizer, generator, epoch=epoch, share=share,
                                 loss_scale=share_scale(share))
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
                      disable=not bars(exp)):
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


def fit(exp, model, train_loader, test_loader, val_loader=None):
    """Train one stage: every epoch trains, steps the schedule, evaluates on the test videos (and
    the validation videos with --select val) and records the epoch (utils/run_state.py). Returns
    the stage's summary; best_model.pth holds the epoch picked by --select."""
    net = distributed.wrap(model, exp.device, find_unused=exp.family != "flow")  # DistributedDataParallel under torchrun
    optimizer = exp.make_optimizer(model)
    scheduler = exp.make_scheduler(optimizer)
    generator = torch.Generator().manual_seed(exp.args.seed * 7919 + exp.stage)
    record = StageRecord(exp, has_val=val_loader is not None)
    start = record.begin(model, optimizer, scheduler, generator)
    num_epochs, main = exp.args.numEpochs, distributed.is_main()
    bar = tqdm(range(start, num_epochs + 1), initial=start - 1, total=num_epochs,
               desc=f"{exp.experiment} stage {exp.stage}", dynamic_ncols=True, disable=not bars(exp))
    epoch, test = start - 1, {}
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
            record.epoch(epoch, lr, train=train, test=test, val=val, seconds=seconds, train_seconds=train_seconds,
                         clips=len(train_loader.dataset), state=dict(model=model, optimizer=optimizer, scheduler=scheduler, generator=generator))
            bar.set_postfix(train_acc=f"{train['acc']:.1f}", test_acc=f"{test['acc']:.1f}",
                            selected=record.selected_epoch)
            if main and not exp.args.quiet:
                tqdm.write(epoch_line(epoch, lr, train=train, test=test, val=val, seconds=seconds))
    except KeyboardInterrupt:
        record.interrupted(epoch)
        raise
    bar.close()
    return record.finish(test, len(train_loader.dataset), len(test_loader.dataset))


def bars(exp):
    """Progress bars: process 0 only, on a terminal, without --quiet."""
    return distributed.is_main() and show_progress(exp.args.quiet)


def _finite(x):
    return x is not None and math.isfinite(x)


def epoch_line(epoch, lr, train, test, val, seconds):
    """One line per epoch: the action loss and accuracy (train, val, test) and, in a stage whose
    heads are on, the MS loss, the OP loss and the OP accuracy of the training clips."""
    val_text = f"val acc {val['acc']:5.1f}  " if val["acc"] is not None else ""
    heads = (f"ms loss {train['ms_loss']:.4f}  " if _finite(train.get("ms_loss")) else "") + \
        (f"op loss {train['op_loss']:.4f} acc {train['op_acc']:5.1f}  " if _finite(train.get("op_loss")) else "")
    return (f"epoch {epoch:3d}  lr {lr:.2g}  train loss {train['loss']:.4f} acc {train['acc']:5.1f}  {heads}"
            f"{val_text}test loss {test['loss']:.4f} acc {test['acc']:5.1f}  ({seconds:.1f}s)")
