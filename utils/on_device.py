"""The training set held on the device (--dataOnDevice): no DataLoader, no worker processes.

A GTEA-61-sized training set is small once decoded: an RGB clip is always the same seqLen frames
of its video (datasets/gtea61.py: only the crop and flip are random), so 358 clips x 16 frames at
341x256 (datasets/prepare/prepare.py's short side 256) are 1.5 GB as uint8. `DeviceLoader` decodes those
frames once, keeps them on the device, and builds every batch there from the sampler's (index,
seed) pairs: each clip's crop and flip are drawn from its seed exactly as a DataLoader worker
draws them (utils/data.seeded), and `datasets.transforms.clips_on_device` resizes, crops and
flips, as it does for the GPU DataLoader path. So the batches equal those of
`make_loader(..., source=True)` once `utils/train.to_device` has transformed them
(tests/test_on_device.py). Motion maps (7x7 targets) are made on the host with PIL, as in the
DataLoader, from maps decoded once.

Only the RGB modalities (rgb, rgb_mmaps): flow clips start at a random frame and would need the
flow frames of every start held. Under torchrun every process holds the whole set and takes its
share of each global batch (utils/distributed.ShareBatchSampler), as its DataLoader would."""
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler
from tqdm import tqdm

from datasets import DatasetError
from datasets.transforms import clips_on_device
from utils.data import EpochSampler, seeded
from utils.distributed import ShareBatchSampler
from utils.errors import UserError

MODALITIES = ("rgb", "rgb_mmaps")
AUTO_SHARE = 0.25  # auto: the frames may take at most this share of the device's free memory


def estimate_bytes(dataset):
    """Bytes of the decoded uint8 frames of every clip (image headers only, nothing decoded)."""
    total = 0
    for v in dataset._videos:
        with Image.open(os.path.join(v["rgb_dir"], v["rgb"][0][1])) as im:
            w, h = im.size
        total += dataset.seqLen * w * h * 3
    return total


def free_bytes(device):
    """Free memory of the device: the GPU's, or the host's available RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def use_on_device(mode, dataset, device, free=None):
    """Whether to hold `dataset` on `device` for --dataOnDevice `mode`; a UserError when `on`
    cannot be honoured. free: the free bytes (default: measured, free_bytes)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return False
    if dataset.modality not in MODALITIES:
        if mode == "auto":
            return False
        raise UserError(f"--dataOnDevice on: the {dataset.modality} modality is not supported (only "
                        f"{', '.join(MODALITIES)}); pass --dataOnDevice off")
    need = estimate_bytes(dataset)
    free = free_bytes(device) if free is None else free
    if mode == "auto":
        return need <= AUTO_SHARE * free
    if need > free:
        raise UserError(f"--dataOnDevice on: the decoded training frames need {_size(need)} but {device} has "
                        f"{_size(free)} free; pass --dataOnDevice off (frames are held as decoded: --frameSize "
                        f"does not change this)")
    return True


def _size(n):
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


class DeviceLoader:
    """Iterates like `make_loader(dataset, batch_size, True, seed, ..., source=True)`, on `device`.
    process=(rank, world size) under torchrun; progress: draw a bar while the frames are decoded."""

    def __init__(self, dataset, batch_size, seed, device, process=None, progress=False):
        self.dataset, self.device = dataset, device
        self.sampler = EpochSampler(len(dataset), True, seed)
        if process is not None and process[1] > 1:
            self.batch_sampler = ShareBatchSampler(self.sampler, batch_size, *process)
        else:
            self.batch_sampler = BatchSampler(self.sampler, batch_size, drop_last=False)
        frames, self.sizes = [], []
        for i, v in enumerate(tqdm(dataset._videos, desc=f"training frames to {device}", leave=False,
                                   dynamic_ncols=True, disable=not progress)):
            arrays = [np.asarray(dataset._image(os.path.join(v["rgb_dir"], name), "RGB"))
                      for _, name in dataset.rgb_chosen(i)]
            if any(a.shape != arrays[0].shape for a in arrays):
                raise DatasetError(f"{v['rgb_dir']}: frames of different sizes; resize them to one size")
            frames.append(torch.from_numpy(np.stack(arrays)).to(device))
            self.sizes.append(arrays[0].shape[:2])  # (H, W)
        self.frames = frames
        self.same_size = all(s == self.sizes[0] for s in self.sizes)  # then one resize per batch
        self.nbytes = sum(f.numel() for f in frames)
        self.maps = {}  # decoded motion maps (host), read once: no image decoding in the training loop

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        ds = self.dataset
        for items in self.batch_sampler:
            idx = [i for i, _ in items]
            specs, maps, numbers = [], [], []
            for i, seed in items:
                v = ds._videos[i]
                with seeded(seed):  # the draws of dataset.get(i) in a DataLoader worker
                    params = ds.transform.draw()
                h, w = self.sizes[i]
                specs.append(ds.transform.spec(w, h, params))
                chosen = [num for num, _ in ds.rgb_chosen(i)]
                numbers.append(chosen)
                if ds._needs_mmaps:
                    maps.append(ds._mmaps(v, chosen, params, self._map))
            # gathered with a stack on the device: an index tensor would be a copy that waits for it
            src = [self.frames[i] for i in idx]
            batch = {"rgb": clips_on_device(torch.stack(src) if self.same_size else src, specs),
                     "frame_numbers": torch.tensor(numbers)}
            # small host tensors, moved by utils/train.to_device as the DataLoader's (pinned: no wait)
            host = {"label": torch.tensor([ds.labels[i] for i in idx]), "index": torch.tensor(idx)}
            if maps:
                host["mmaps"] = torch.stack(maps)
            if self.device.type == "cuda":
                host = {k: t.pin_memory() for k, t in host.items()}
            yield {**batch, **host}

    def _map(self, path, mode):
        if path not in self.maps:
            self.maps[path] = self.dataset._image(path, mode)
        return self.maps[path]
