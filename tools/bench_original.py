"""The original Ego-RNN stage 2, timed step by step, for bench.py --compareOriginal DIR.

The original code runs from a checkout of https://github.com/swathikirans/ego-rnn under the
run-time patches of tools/verify_original.py (CPU, no download, no TensorBoard) and through its
own `main_run` of main-run-rgb.py: its parameter sets, train / eval modes and Adam step, one
given batch per epoch (so one epoch is one optimiser step, no validation). A step's time is the
interval between the starts of two successive forwards of its model (the last one: until
main_run returns), so building the model, loading its weights and main_run's setup are not
counted.
"""
import contextlib
import os
import tempfile
import time

import torch

from models.recipe import DEFAULTS
from tools.verify_original import Original, calibrate_batchnorm, check_source, run_original_main


def original_stage2_seconds(src, rgb, labels, num_classes, mem_size, steps, warmup, around=None):
    """Seconds of each of the `steps` timed training steps of the original stage 2 on the batch
    (rgb (B, T, 3, H, W) normalised frames, labels (B,)), after `warmup` untimed ones. `around`:
    a context manager entered around main_run only (bench.py's FLOP counter), not the setup."""
    check_source(src)
    orig = Original(src)
    d = DEFAULTS["rgb"][2]
    starts = []
    with tempfile.TemporaryDirectory(prefix="bench-original-") as work:
        seed_path = os.path.join(work, "stage1.pth")
        with orig.runtime():
            model = orig.rgb_model(num_classes, mem_size)
            if orig.imagenet == "none":  # random backbone: BatchNorm statistics from the batch, as ours
                calibrate_batchnorm(model.resNet, [clip for clip in rgb])
            torch.save(model.state_dict(), seed_path)

        def build():
            m = orig.rgb_model(num_classes, mem_size)
            m.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
            return m

        kwargs = dict(dataset="gtea61", stage=2, train_data_dir="train", val_data_dir=None, stage1_dict=seed_path,
                      seqLen=rgb.shape[1], trainBatchSize=rgb.shape[0], valBatchSize=rgb.shape[0],
                      numEpochs=warmup + steps, lr1=d["lr"], decay_factor=d["decayRate"], decay_step=d["stepSize"],
                      memSize=mem_size, out_dir=os.path.join(work, "original"))
        with around or contextlib.nullcontext():
            run_original_main(orig, "main-run-rgb.py", "attentionModel", build, seed_path, (rgb, labels), kwargs)
        end = time.perf_counter()
    starts.append(end)
    return [b - a for a, b in zip(starts[warmup:-1], starts[warmup + 1:])]
