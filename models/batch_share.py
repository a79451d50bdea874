"""The rows of the global batch this process holds, so that N processes draw the random numbers
one process would.

With torchrun (utils/distributed.py) each process trains on a share of the global batch
(--trainBatchSize). A random draw made per clip inside the model (dropout masks, the
order-prediction head's frames and orders) would then depend on the number of processes. So every
process draws for the whole global batch, from the same RNG state, and keeps its own rows: the
union of the shares is exactly what a single process draws. With one process the share is the
whole batch and the draws are those of an unshared draw (and, on the CPU, nn.Dropout's masks bit for
bit).

    with batch_share(Share(start, stop, total, weight)):
        out = model(clips)          # clips = rows start..stop-1 of a global batch of `total`

weight is 0 for a process whose share of a short last batch is empty: it runs one duplicate clip
so that every process takes part in the step, and that clip counts for nothing (loss, BatchNorm
statistics, accuracies).
"""
from collections import namedtuple
from contextlib import contextmanager

import torch.nn as nn

Share = namedtuple("Share", "start stop total weight")
_current = None


@contextmanager
def batch_share(share):
    global _current
    previous, _current = _current, share
    try:
        yield share
    finally:
        _current = previous


def current_share():
    return _current


def draw_rows(batch):
    """(number of rows to draw, slice of them that belongs to this process's `batch` clips)."""
    s = _current
    if s is None:
        return batch, slice(None)
    if s.stop - s.start != batch:
        raise ValueError(f"batch share {s} does not match a batch of {batch} clips")
    return s.total, slice(s.start, s.stop)


class ShareDropout(nn.Dropout):
    """nn.Dropout whose mask is drawn for the whole global batch and cut to this share. On the CPU
    the draw is nn.Dropout's own (bernoulli_ on a tensor of the input's shape), so one process gets
    exactly nn.Dropout's mask; a GPU's fused dropout kernel draws differently."""

    def forward(self, x):
        if not self.training or self.p == 0 or _current is None:
            return super().forward(x)
        total, rows = draw_rows(x.shape[0])
        mask = x.new_empty((total,) + tuple(x.shape[1:])).bernoulli_(1 - self.p)[rows]
        return x.mul(mask) * (1.0 / (1 - self.p))


def share_dropouts(model):
    """Make every nn.Dropout of `model` a ShareDropout (no parameters: checkpoints unchanged)."""
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = ShareDropout
    return model
