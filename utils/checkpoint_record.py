"""The configuration a checkpoint was trained with, and the checks made when it is loaded again.

Every checkpoint of this project records what shapes its model and its data (utils/experiment.py
`Experiment.run_config`): class names, attention, memSize, seqLen, frameSize, stackSize, opInput,
msInput, the MS kind, trainUsers and testUsers, and how its epoch was selected. A later stage,
the two-stream script and evaluate.py compare what they are about to do with it, so that, for
example, a ConvLSTM trained on attended features is never fed plain layer4 features, and a
checkpoint is never scored on the users it was trained on. Files without a record (the original
Ego-RNN release's) cannot be checked and are taken as they are.
"""
import os

from models.checkpoints import CheckpointError, read_metadata
from utils.errors import UserError


def saved_config(path):
    """The configuration recorded in a checkpoint, {} when there is none (original files)."""
    try:
        meta = read_metadata(path)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    config = dict(meta.get("config") or {})
    if not config:  # files of this project written before the full record
        config.update(meta.get("model_config") or {})
        for key in ("seqLen", "frameSize", "classes"):
            if key in meta:
                config[key] = meta[key]
    return config


def check_stage1(path, family, what):
    """A one-line UserError unless `path` is a stage-1 checkpoint of `family` (stage 1 of rgb, ms
    and ms_op is one model, Ego-RNN's); files without a record (the original's) are taken as they are."""
    try:
        meta = read_metadata(path)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    kind, stage, experiment = meta.get("family"), meta.get("stage"), meta.get("experiment")
    if kind is not None and kind != family:
        raise UserError(f"{what} {path} holds a {experiment} model ({kind}), not an Ego-RNN stage 1: pass the "
                        f"stage1/best_model.pth of a main_rgb.py, main_ms.py or main_ms_op.py run")
    if stage is not None and stage != 1:
        stage1 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "stage1", "best_model.pth")
        raise UserError(f"{what} {path} is a stage-{stage} checkpoint of {experiment}: stage 2 starts from a stage-1 "
                        f"one (such as {stage1})")


def synthetic_note(path, config):
    """The line evaluate.py and predict.py print first for a model trained on synthetic data, or None."""
    if not config.get("synthetic"):
        return None
    return (f"note: {path} was trained on SYNTHETIC data (datasets.prepare.synthetic): its predictions say "
            "nothing about real videos")


def _show(key, value):
    if key == "attention":
        return "attention" if value else "no attention (--noAttention)"
    if key == "classes":
        return f"{len(value)} classes ({', '.join(value[:3])}{', ...' if len(value) > 3 else ''})"
    if isinstance(value, (list, tuple)):
        return f"--{key} {' '.join(map(str, value))}"
    return f"--{key} {value}"


def check_config(path, saved, expected, what):
    """Raise a one-line UserError when a value of `expected` differs from the one recorded in
    the checkpoint (`saved`, from saved_config); keys either side lacks are not compared."""
    for key, want in expected.items():
        have = saved.get(key)
        if have is None or want is None:
            continue
        if isinstance(have, tuple):
            have = list(have)
        if have != (list(want) if isinstance(want, tuple) else want):
            if key == "classes":
                diff = next((f"'{a}' against '{b}'" for a, b in zip(have, want) if a != b),
                            f"{len(have)} against {len(want)} classes")
                raise UserError(f"{what} {path} was trained on other classes than this dataset's ({diff}): "
                                f"use the dataset it was trained on")
            raise UserError(f"{what} {path} was trained with {_show(key, have)}, this run has "
                            f"{_show(key, want)}: use the same setting, or a checkpoint trained with it")


# What the data of a checkpoint were prepared with (the "preparation" record, datasets.prepare):
# files without a record are the original Ego-RNN release's, whose flow dense_flow made (TV-L1 +
# warp, values in pixels of the decoded source frames); this project's files from before the
# record had datasets.prepare's settings of then (TV-L1 + warp on the frames as written).
EGORNN_PREPARATION = {"flow": "tvl1", "warp": True, "flowScale": "source"}
EARLIER_PREPARATION = {"flow": "tvl1", "warp": True, "flowScale": "output", "maps": "flow"}


def checkpoint_preparation(config):
    """(preparation, where it comes from) of a checkpoint's data, from saved_config's dict."""
    if not config:
        return dict(EGORNN_PREPARATION), "an original Ego-RNN file: taken as dense_flow's TV-L1 + warp, source scale"
    if "preparation" not in config:
        return dict(EARLIER_PREPARATION), "no preparation recorded: taken as datasets.prepare's earlier defaults"
    if config["preparation"] is None:
        return dict(EGORNN_PREPARATION), ("trained on data datasets.prepare did not make: taken as dense_flow's "
                                          "TV-L1 + warp, source scale")
    return dict(config["preparation"]), "recorded"


def preparation_differences(recorded, used, keys):
    """[(key, recorded value, used value)] where the two preparations disagree on `keys`
    (keys either side lacks are not compared)."""
    return [(k, recorded[k], used[k]) for k in keys
            if recorded.get(k) is not None and used.get(k) is not None and recorded[k] != used[k]]
