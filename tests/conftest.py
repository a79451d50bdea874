"""Shared fixtures: tiny GTEA-61 trees written into tmp_path. Under pytest-xdist (`make test`: two
workers): each worker's share of the cores for torch, and the longest modules handed out first."""
import contextlib
import io
import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# `pytest -n N`: N workers share the cores. torch's default (one thread per core) in every worker and
# in every script a test starts would put N threads on each core, and OpenMP threads that wait for a
# busy core spin: on 2 cores, a 2-thread tiny training run costs twice the CPU time of a 1-thread one.
# Set before torch is imported, so the scripts the tests start inherit it; a value given by hand stays.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))
if _WORKERS > 1:
    import torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# `make test` hands whole modules to its workers (--dist loadfile: a module's fixtures, such as a
# dataset or a trained run shared by its tests, are built once) in collection order; these modules
# run the most scripts, so they start first and the workers end together.
LONGEST_FIRST = ("test_training", "test_replicate", "test_checkpoint_record", "test_ddp", "test_verify_original",
                 "test_paths", "test_predict", "test_egtea", "test_tensorboard", "test_models", "test_speed")


def pytest_collection_modifyitems(config, items):
    if _WORKERS > 1:
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: file order otherwise


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


def run_here(script, *args):
    """`python SCRIPT ARGS` from the repository root, run in this process: the script's own
    `__main__` (run_cli: exit status, `error: ...` on stderr), without the seconds a new process
    spends importing torch. For runs that must stop with a one-line error before any work; an
    exception run_cli does not turn into one escapes (where a process would print a traceback).
    Returns what subprocess.run would, warnings left out of stderr."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv, cwd = sys.argv, os.getcwd()
    try:
        sys.argv = [script, *map(str, args)]
        os.chdir(ROOT)
        with one_thread_and_flushed_subnormals(), warnings.catch_warnings(), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("ignore")
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as e:
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = argv
        os.chdir(cwd)
    return subprocess.CompletedProcess([script, *map(str, args)], code, out.getvalue(), err.getvalue())
