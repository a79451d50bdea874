"""Data-parallel training with torchrun: every script runs unchanged on N processes.

    torchrun --nproc_per_node 4 main_ms_op.py ...                  # 4 GPUs (nccl) or 4 CPU processes (gloo)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 main_rgb.py ...

Results do not depend on the number of processes, up to float rounding:
- --trainBatchSize is the global batch. The clip order and each clip's augmentation are drawn as
  one process draws them (utils/data.py); each global batch is cut into N contiguous shares
  (ShareBatchSampler), and the random draws inside the model are made for the whole global batch
  and cut to the share (models/batch_share.py).
- Each process's loss is scaled by (its clips / global batch) x N, so DistributedDataParallel's
  mean over processes is the gradient of the global batch's mean loss, shares of any size.
- BatchNorms that train (flow, the two-stream's flow layer4) compute their statistics over the
  global batch (SyncBatchNorm2d below: torch.nn.SyncBatchNorm refuses CPU tensors).
- Evaluation: process r evaluates test videos r, r+N, ...; sums are added up over processes, so
  every video counts exactly once.
Only process 0 writes files and prints. A process that fails ends its process group: the others
stop at their next collective (or after --ddpTimeout) and torchrun reports the failed process.
"""
import datetime
import math
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

from models.batch_share import Share, current_share
from utils.device import pick_device
from utils.errors import UserError

TIMEOUT_ENV = "SAMSOP_DDP_TIMEOUT"  # seconds a collective waits for the other processes


def launched():
    """True when torchrun (or any launcher setting RANK / WORLD_SIZE) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def initialized():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if initialized() else 0


def world_size():
    return dist.get_world_size() if initialized() else 1


def is_main():
    return rank() == 0


def setup(device_name):
    """Join torchrun's process group when launched by it; returns this process's device.
    nccl and one GPU per process (LOCAL_RANK) on GPUs, gloo on CPUs. Processes other than 0
    print nothing (their stdout goes to /dev/null; errors still reach stderr)."""
    device = pick_device(device_name)
    if not launched() or initialized():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"torchrun started process {local_rank} on this node but only "
                            f"{torch.cuda.device_count()} GPU(s) are visible: use --nproc_per_node "
                            f"{torch.cuda.device_count()} or fewer")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 1800)))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout,
                            device_id=device if device.type == "cuda" else None)
    if rank() != 0:
        sys.stdout = open(os.devnull, "w")
    return device


def teardown():
    if initialized():
        dist.destroy_process_group()


def barrier():
    if world_size() > 1:
        dist.barrier()


def on_main(fn):
    """Run fn() on process 0 only (writing files, deleting a folder); every process returns its
    result, or raises its UserError as a UserError, so all stop together on a refusal."""
    if world_size() == 1:
        return fn()
    box = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except UserError as e:
            box[0] = ("error", str(e))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise UserError(value)
    return value


def all_sum(values, device):
    """Element-wise sum over processes of a list of floats (float64)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj):
    """[obj of process 0, obj of process 1, ...] on every process."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- the data shares

def share_of(size, rank, world):
    """This process's rows of a global batch of `size` clips: N contiguous shares whose sizes
    differ by at most one. An empty share gets the batch's last clip with weight 0."""
    q, r = divmod(size, world)
    start = rank * q + min(rank, r)
    stop = start + q + (1 if rank < r else 0)
    if start == stop:
        return Share(size - 1, size, size, 0.0)
    return Share(start, stop, size, 1.0)


class ShareBatchSampler:
    """Batches of the sampler's (index, seed) pairs, as one process would form them with batch
    size `batch_size`; yields this process's share of each. shares() lists the Share of every step."""

    def __init__(self, sampler, batch_size, rank=0, world=1):
        self.sampler, self.batch_size, self.rank, self.world = sampler, batch_size, rank, world

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def __len__(self):
        return math.ceil(len(self.sampler) / self.batch_size)

    def shares(self):
        n, b = len(self.sampler), self.batch_size
        return [share_of(min(b, n - s), self.rank, self.world) for s in range(0, n, b)]

    def __iter__(self):
        items = list(self.sampler)
        for s, share in zip(range(0, len(items), self.batch_size), self.shares()):
            yield items[s:s + self.batch_size][share.start:share.stop]


class ShardSampler:
    """Items r, r+N, r+2N, ... of the sampler (evaluation: every video once over all processes)."""

    def __init__(self, sampler, rank=0, world=1):
        self.sampler, self.rank, self.world = sampler, rank, world

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def __len__(self):
        return len(range(self.rank, len(self.sampler), self.world))

    def __iter__(self):
        for k, item in enumerate(self.sampler):
            if k % self.world == self.rank:
                yield item


# ----------------------------------------------------------------------------- the model

class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) with its gradient (also a sum: every process's output depends on it)."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all processes
    (two passes: mean, then the mean squared deviation). A process holding a weight-0 duplicate
    clip (models/batch_share.py) adds nothing to the statistics. Eval mode and a single process:
    plain BatchNorm2d.

    The statistics and the normalisation are computed in float64, as the CPU BatchNorm kernel
    accumulates them: a channel whose variance is tiny next to its mean (random-init flow
    networks on smooth flow fields) otherwise differs from one process's by 1% in its gradient."""

    def forward(self, x):
        if not self.training or world_size() == 1:
            return super().forward(x)
        share = current_share()
        w = 1.0 if share is None else share.weight
        xd = x.double()
        dims = (0, 2, 3)
        count = torch.tensor([w * xd.numel() / xd.shape[1]], dtype=torch.float64, device=x.device)
        sums = _SumOverProcesses.apply(torch.cat([xd.sum(dims) * w, count]))
        n = sums[-1].detach()
        mean = sums[:-1] / n
        d = xd - mean.view(1, -1, 1, 1)
        var = _SumOverProcesses.apply((d * d).sum(dims) * w) / n
        y = (d * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)).to(torch.float32)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_((mean * m).to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_((var * (n / (n - 1)) * m).to(self.running_var.dtype))
        return y.to(x.dtype)


def sync_batchnorms(model):
    """Every BatchNorm2d of the model becomes a SyncBatchNorm2d (same parameters and buffers,
    same state-dict keys); only those in train mode ever synchronise."""
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = SyncBatchNorm2d
    return model


def wrap(model, device, find_unused=True):
    """The model DistributedDataParallel trains (the model itself with one process). The
    parameters and buffers are copied from process 0 once; after that the buffers need no
    broadcast (running statistics are the same everywhere: computed over the global batch).
    find_unused: some stages train a parameter that the forward may not use (the CAM fc of a
    --noAttention stage 2); the flow model uses all of them."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False, find_unused_parameters=find_unused)


def run_process(fn, *args, **kwargs):
    """fn(*args, **kwargs) in one torchrun process: the process group is left at the end, and a
    failure of another process (a lost connection, a timeout) becomes a one-line UserError, so
    torchrun's report names the process that failed first."""
    try:
        return fn(*args, **kwargs)
    except dist.DistError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"process {rank()} of {world_size()} stopped: another process of this torchrun run "
                        f"failed or stopped answering ({type(e).__name__}: {first}); see its error above") from None
    finally:
        teardown()
