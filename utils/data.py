"""Reproducible data loading.

Every clip's augmentation (crop, flip, flow start) is drawn from a seed that depends only on
(run seed, epoch, clip index), and the clip order only on (run seed, epoch). So a run resumed
after a crash sees exactly the clips an uninterrupted run would have seen, with any number of
DataLoader workers, and the main process's RNG (dropout) is never touched by data loading."""
import os
import random
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from datasets.transforms import HOST_KEYS, normalize_inputs
from utils.distributed import ShardSampler, ShareBatchSampler


class EpochSampler(Sampler):
    """Yields (index, seed) pairs; call `set_epoch` before each epoch."""

    def __init__(self, n, shuffle, seed):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g)
        for i in order.tolist():
            yield i, int(seeds[i])


class SeededDataset(Dataset):
    """Calls `dataset[i]` with python, numpy and torch RNGs seeded from the sampler's seed,
    restoring the caller's RNG states afterwards."""

    def __init__(self, dataset, normalize=True, source=False):
        self.dataset, self.normalize, self.source = dataset, normalize, source

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        i, seed = key
        with seeded(seed):
            if self.normalize and not self.source:
                return self.dataset[i]
            return self.dataset.get(i, normalize=self.normalize, source=self.source)


@contextmanager
def seeded(seed):
    """python, numpy and torch RNGs seeded from a clip's seed; the caller's states restored after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def collate(items):
    """default_collate, except that decoded source frames of different sizes stay a list."""
    src = [item.pop("rgb_src") for item in items] if "rgb_src" in items[0] else None
    batch = default_collate(items)
    if src is not None:
        batch["rgb_src"] = default_collate(src) if all(s.shape == src[0].shape for s in src) else src
    return batch


# Niceness added to DataLoader workers that share the CPU with a CPU training step. The step's
# threads synchronise at every operation, so a worker that takes a core from one of them stalls
# all of them; at a lower priority the workers run in the gaps and still keep ahead (the
# pipeline is many times faster than a CPU step, docs/speed.md).
CPU_WORKER_NICE = 10


def lower_priority(nice):
    """worker_init_fn: this worker process `nice` steps below its parent (errors ignored: a
    priority is a hint)."""
    def init(_worker_id):
        try:
            os.nice(nice)
        except OSError:
            pass
    return init


def make_loader(dataset, batch_size, shuffle, seed, num_workers, pin_memory=False, normalize=True, source=False,
                process=None, nice=0):
    """normalize=False: clips come as uint8, to be normalised on the device (utils/train.to_device);
    source=True: RGB frames come decoded but untransformed, for datasets.transforms.clips_on_device.
    process=(rank, world size): this process's part under torchrun (utils/distributed.py): its
    share of every global batch of `batch_size` (training, shuffle=True; one process draws the
    order and seeds), or every world-size-th video (evaluation). nice: workers' priority below this
    process's (CPU runs: CPU_WORKER_NICE)."""
    sampler = EpochSampler(len(dataset), shuffle, seed)
    batching = dict(batch_size=batch_size, sampler=sampler)
    if process is not None:
        batching = dict(batch_sampler=ShareBatchSampler(sampler, batch_size, *process)) if shuffle else \
            dict(batch_size=batch_size, sampler=ShardSampler(sampler, *process))
    return DataLoader(
        SeededDataset(dataset, normalize, source),
        collate_fn=collate,
        **batching,
        num_workers=num_workers,
        pin_memory=pin_memory,
        # Re-forking workers every epoch costs seconds (copy-on-write page faults).
        persistent_workers=num_workers > 0,
        worker_init_fn=lower_priority(nice) if nice and num_workers > 0 else None,
        # Workers are seeded per clip; this generator only keeps DataLoader from drawing its
        # base seed from the global RNG (which would shift dropout masks on resume).
        generator=torch.Generator().manual_seed(seed),
    )


def set_epoch(loader, epoch):
    """Set the epoch of a make_loader loader (its sampler, or its ShareBatchSampler)."""
    batches = getattr(loader, "batch_sampler", None)
    sampler = batches if hasattr(batches, "set_epoch") else loader.sampler
    sampler.set_epoch(epoch)


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
