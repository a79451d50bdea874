"""TensorBoard event files of a training stage, in <stage folder>/tb/.

`tensorboard --logdir experiments` then lists one run per stage, named by its folder
(<script's outDir: experiment and settings>/stage<N>/tb). Per epoch (step = epoch number):

  loss/train, loss/test, loss/val     action cross-entropy (val: --select val only)
  accuracy/train, accuracy/test, accuracy/val    action accuracy (%)
  lr                                  learning rate of the epoch (first parameter group)
  ms/loss                             motion-segmentation loss (stage 2 of main_ms / main_ms_op)
  op/loss, op/accuracy                order-prediction loss and accuracy (%) (stage 2 of main_ms_op)
  time/epoch_seconds                  train + evaluation seconds of the epoch
  time/clips_per_second               training clips per second of training time

At the end of the stage: the arguments that define the run as hparams, the most compared first
(utils/arguments.py hparam_names; booleans as booleans), with hparams/selected_test_accuracy,
hparams/best_test_accuracy and hparams/final_test_accuracy as its metrics; the CAM figures as
images cam/<video> (step: the selected epoch).

Resuming: the values of every finished epoch are kept in last.pth, and a resumed stage writes
tb/ again from them into a fresh file. The events of an interrupted run may stop anywhere (a
SIGKILL after last.pth was saved but before the events were flushed); appending to them would
leave a gap or write a step twice, which TensorBoard's readers resolve differently (the Python
reader drops the older points on an out-of-order step; others keep both).

Only process 0 writes (torchrun); in the others the Board does nothing."""
import glob
import math
import os
import time

TB_DIR = "tb"


def epoch_scalars(epoch, lr, train, test, val, seconds, train_seconds, clips):
    """{"epoch": epoch, tag: value} of one epoch; a figure the stage does not have (no heads,
    no validation set) is left out."""
    values = {"loss/train": train["loss"], "accuracy/train": train["acc"],
              "loss/test": test["loss"], "accuracy/test": test["acc"],
              "loss/val": val.get("loss"), "accuracy/val": val.get("acc"), "lr": lr,
              "ms/loss": train.get("ms_loss"), "op/loss": train.get("op_loss"), "op/accuracy": train.get("op_acc"),
              "time/epoch_seconds": seconds,
              "time/clips_per_second": clips / train_seconds if train_seconds > 0 else None}
    out = {"epoch": int(epoch)}
    out.update({k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))})
    return out


def _hparam(v):
    """hparams take numbers, strings and booleans: lists become their text, None 'none'."""
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return " ".join(map(str, v))
    return "none" if v is None else str(v)


class Board:
    """The event files of one stage. `history`: the epochs written before a resume (their
    epoch_scalars dicts); they are written again into a fresh file, the old files removed."""

    def __init__(self, stage_dir, history=(), enabled=True):
        self.writer, self.seconds, self.last_epoch = None, 0.0, 0
        if not enabled:
            return
        t0 = time.time()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("tensorboard is not installed (pip install tensorboard): no TensorBoard logs for this run")
            return
        log_dir = os.path.join(stage_dir, TB_DIR)
        for old in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
            os.unlink(old)
        # flush_secs: events reach the file when the epoch ends (flush below), not minutes later
        self.writer = SummaryWriter(log_dir, flush_secs=10_000)
        self.seconds += time.time() - t0
        for values in history:
            self._write(values)
        self._flush()

    def _write(self, values):
        epoch = values["epoch"]
        for tag, v in values.items():
            if tag != "epoch":
                self.writer.add_scalar(tag, v, epoch)
        self.last_epoch = epoch

    def _flush(self):
        if self.writer is not None:
            t0 = time.time()
            self.writer.flush()
            self.seconds += time.time() - t0

    def epoch(self, values):
        """One epoch's epoch_scalars, flushed at once (a killed run loses nothing it logged)."""
        if self.writer is None:
            return
        t0 = time.time()
        self._write(values)
        self.writer.flush()
        self.seconds += time.time() - t0

    def close(self, hparams, metrics):
        """The run's settings, in the order given, and its result accuracies (hparams plugin), then close."""
        if self.writer is None:
            return
        t0 = time.time()
        from torch.utils.tensorboard.summary import hparams as hparams_summary
        metrics = {f"hparams/{k}": float(v) for k, v in metrics.items()
                   if v is not None and math.isfinite(float(v))}
        # written into this run's file: SummaryWriter.add_hparams would start a run of its own
        values = {k: _hparam(v) for k, v in hparams.items()}
        for summary in _booleans_as_booleans(hparams_summary(values, metrics), values):
            self.writer.file_writer.add_summary(summary)
        for tag, v in metrics.items():
            self.writer.add_scalar(tag, v, self.last_epoch)
        self.writer.close()
        self.writer = None
        self.seconds += time.time() - t0


def _booleans_as_booleans(summaries, values):
    """torch's hparams() writes a bool as the number 0 or 1 (bool is an int to Python), which
    TensorBoard shows as 0.0000: mark those hparams boolean and give them their bool value."""
    from tensorboard.plugins.hparams.api_pb2 import DataType
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    flags = {k: v for k, v in values.items() if isinstance(v, bool)}
    for summary in summaries:
        for value in summary.value:
            data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
            if data.HasField("experiment"):
                for info in data.experiment.hparam_infos:
                    if info.name in flags:
                        info.type = DataType.DATA_TYPE_BOOL
            elif data.HasField("session_start_info"):
                for k, v in flags.items():
                    data.session_start_info.hparams[k].bool_value = v
            value.metadata.plugin_data.content = data.SerializeToString()
        yield summary


def add_images(stage_dir, tag, paths, step):
    """PNG figures (e.g. the CAM strips) as images <tag>/<file name> of the stage's run."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    import numpy as np
    from PIL import Image
    with SummaryWriter(os.path.join(stage_dir, TB_DIR)) as writer:
        for path in paths:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
            writer.add_image(f"{tag}/{os.path.splitext(os.path.basename(path))[0]}", image, step, dataformats="HWC")
