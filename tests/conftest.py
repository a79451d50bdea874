"""Shared fixtures: tiny GTEA-61 trees written into tmp_path."""
import contextlib
import os

import numpy as np
import pytest
from PIL import Image


class GteaTree:
    """Writes videos in the course or Ego-RNN layout. By default frame k (1-based number) is
    uniform with value 10*k (RGB and flow_x), 10*k + 5 (flow_y), and its motion map 10*k."""

    def __init__(self, root):
        self.root = str(root)

    def _save(self, arr, path, fmt):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path, format=fmt)

    def video(self, user, cls, inst, n, layout="course", size=(40, 30), numbers=None,
              flow=True, mmaps=True, map_numbers=None, frame=None, mmap=None):
        w, h = size
        numbers = list(range(1, n + 1)) if numbers is None else list(numbers)
        frame = frame or (lambda k: np.full((h, w, 3), 10 * k))
        mmap = mmap or (lambda k: np.full((h, w), 10 * k))
        rel = os.path.join(user, cls, str(inst))
        if layout == "course":
            base = os.path.join(self.root, "processed_frames2", rel)
            for k in numbers:
                self._save(frame(k), os.path.join(base, "rgb", f"rgb{k:04d}.png"), "PNG")
            if mmaps:
                for k in (numbers if map_numbers is None else map_numbers):
                    self._save(mmap(k), os.path.join(base, "mmaps", f"map{k:04d}.png"), "PNG")
            fx, fy, ext, fmt = "flow_x_processed", "flow_y_processed", "png", "PNG"
        else:
            base = os.path.join(self.root, "frames", rel)
            for k in numbers:  # PNG content under a .jpg name keeps values exact
                self._save(frame(k), os.path.join(base, f"image_{k:05d}.jpg"), "PNG")
            fx, fy, ext, fmt = "flow_x", "flow_y", "jpg", "PNG"
        if flow:
            for k in numbers[:-1]:
                self._save(np.full((h, w), 10 * k), os.path.join(self.root, fx, rel, f"flow_x_{k:05d}.{ext}"), fmt)
                self._save(np.full((h, w), 10 * k + 5), os.path.join(self.root, fy, rel, f"flow_y_{k:05d}.{ext}"), fmt)
        return base


@pytest.fixture
def tree(tmp_path):
    return GteaTree(tmp_path / "gtea")


@contextlib.contextmanager
def one_thread_and_flushed_subnormals():
    """One torch thread (tiny tensors: no OpenMP spinning on shared cores) and subnormals flushed,
    as the scripts do (random-weight ResNets fill with subnormals that slow CPU convolutions ~10x,
    docs/design.md §8); both restored afterwards."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread_flush_denormal():
    with one_thread_and_flushed_subnormals():
        yield
