"""Loading checkpoints: this project's own, and the original Ego-RNN ones (docs/design.md §7).

This project's files are {"model": state_dict, ...metadata such as "num_classes", "model_name"}
or a bare state dict, with the keys of
    SAMSOPNet   egornn.backbone.* egornn.convlstm.* egornn.classifier.1.* [ms_head.*] [op_head.*]
    EgoRNN      backbone.* convlstm.* classifier.1.*
    FlowResNet34 conv1.* bn1.* layer1..4.* classifier.1.*
    TwoStream   flow_model.* rgb_model.* classifier.1.*
The original Ego-RNN files are bare state dicts:
    RGB         resNet.* (torchvision names), weight_softmax (alias of resNet.fc.weight),
                lstm_cell.conv_{i,f,c,o}_xx.{weight,bias}, lstm_cell.conv_{i,f,c,o}_hh.weight,
                the classifier twice: fc.* and classifier.1.*
    flow        torchvision names with a 10-channel conv1, fc_action.*
    two-stream  flowModel.* frameModel.* fc2.* / classifier.1.*
They may come from old PyTorch (no num_batches_tracked), from GPUs, or from nn.DataParallel
("module." prefix). Everything is read with torch.load(weights_only=True, map_location="cpu").

An RGB file loads into either EgoRNN or SAMSOPNet: a SAMSOPNet whose heads are not in the file
keeps their fresh initialisation (stage 2 starting from stage 1), and heads in the file that the
model lacks are ignored (they do not change the action logits). Every other mismatch raises
CheckpointError with a one-line message naming the file.
"""
import os
import re

import torch

from .egornn import EgoRNN
from .flow import FlowResNet34
from .samsop import SAMSOPNet
from .twostream import TwoStream

HEADS = ("ms_head.", "op_head.")


class CheckpointError(Exception):
    """A checkpoint that does not fit the model (one-line message naming the file)."""


# ----------------------------------------------------------------------------- reading files

def _read(path):
    """-> (state dict, metadata dict) with any DataParallel "module." prefix removed."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a torch file, truncated, or pickled code
        msg = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else ""
        raise CheckpointError(f"{path}: cannot be read with torch.load(weights_only=True) "
                              f"({type(e).__name__}: {msg[:120]}); give a checkpoint written by this "
                              f"project's scripts or an original Ego-RNN state dict") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict or a dict with key 'model', "
                              f"found {type(obj).__name__}")
    if isinstance(obj.get("model"), dict):
        state, meta = obj["model"], {k: v for k, v in obj.items() if k != "model"}
    elif isinstance(obj.get("state_dict"), dict):
        state, meta = obj["state_dict"], {k: v for k, v in obj.items() if k != "state_dict"}
    else:
        state, meta = obj, {}
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state dict of tensors in the file")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state), meta


def _file_family(state):
    """"rgb" | "flow" | "twostream" | None, from the key names of either format."""
    tops = {k.split(".")[0] for k in state}
    if tops & {"flowModel", "frameModel", "flow_model", "rgb_model"}:
        return "twostream"
    if tops & {"resNet", "lstm_cell", "weight_softmax", "backbone", "convlstm", "egornn"}:
        return "rgb"
    if "conv1.weight" in state and "layer4.0.conv1.weight" in state:
        # A 3-channel conv1 with an ImageNet fc is a plain ResNet, not a flow model.
        return "imagenet" if state["conv1.weight"].shape[1] == 3 and "fc.weight" in state else "flow"
    return None


def _model_family(model):
    if isinstance(model, (SAMSOPNet, EgoRNN)):
        return "rgb"
    if isinstance(model, FlowResNet34):
        return "flow"
    if isinstance(model, TwoStream):
        return "twostream"
    raise TypeError(f"load_checkpoint does not know {type(model).__name__}")


# ----------------------------------------------------------------------------- key mapping
# Every file is first rewritten into this project's key names for its family, with RGB states in
# the SAMSOPNet layout (egornn.*, heads), then fitted to the model at hand.

_LSTM = re.compile(r"^lstm_cell\.conv_([ifco])_(xx|hh)\.(weight|bias)$")


def _rgb_to_egornn(state):
    """Original Ego-RNN RGB or this project's EgoRNN keys -> EgoRNN keys (heads kept aside)."""
    out = {}
    has_classifier = "classifier.1.weight" in state
    for k, v in state.items():
        m = _LSTM.match(k)
        if k == "weight_softmax":
            continue  # the same tensor as resNet.fc.weight
        elif k.startswith("resNet."):
            out["backbone." + k[len("resNet."):]] = v
        elif m:
            gate, kind, what = m.groups()
            out[f"convlstm.conv_{kind[0]}{gate}.{what}"] = v
        elif k.startswith("fc."):
            if not has_classifier:  # the original's classifier is both fc.* and classifier.1.*
                out["classifier.1." + k[len("fc."):]] = v
        else:
            out[k] = v
    return out


def _rgb_to_samsop(state):
    if any(k.startswith("egornn.") for k in state):
        return dict(state)
    heads = {k: v for k, v in state.items() if k.startswith(HEADS)}
    body = _rgb_to_egornn({k: v for k, v in state.items() if not k.startswith(HEADS)})
    return {**{"egornn." + k: v for k, v in body.items()}, **heads}


def _flow_to_project(state):
    return {("classifier.1." + k[len("fc_action."):] if k.startswith("fc_action.") else k): v
            for k, v in state.items()}


def _twostream_to_project(state):
    def part(*tops):  # the sub-dict under one of these top-level names, prefix removed
        return {k.partition(".")[2]: v for k, v in state.items() if k.partition(".")[0] in tops}
    out = {k: v for k, v in state.items()
           if k.partition(".")[0] not in ("flowModel", "flow_model", "frameModel", "rgb_model", "fc2", "classifier")}
    out.update({"flow_model." + k: v for k, v in _flow_to_project(part("flowModel", "flow_model")).items()})
    out.update({"rgb_model." + k: v for k, v in _rgb_to_egornn(part("frameModel", "rgb_model")).items()})
    # The original's classifier is both fc2.* and classifier.1.*.
    head = {"classifier." + k: v for k, v in part("classifier").items()}
    out.update(head or {"classifier.1." + k: v for k, v in part("fc2").items()})
    return out


def _to_project(state, family):
    original = any(k.split(".")[0] in ("resNet", "lstm_cell", "weight_softmax", "flowModel",
                                       "frameModel", "fc_action", "fc2") for k in state)
    if family == "rgb":
        return _rgb_to_samsop(state), original
    if family == "flow":
        return _flow_to_project(state), original
    return _twostream_to_project(state), original


def _fit_to_model(state, model):
    """SAMSOP-layout RGB keys -> the keys of an EgoRNN / SAMSOPNet; other families unchanged."""
    if isinstance(model, EgoRNN):
        return {k[len("egornn."):]: v for k, v in state.items() if k.startswith("egornn.")}, \
            sorted(k for k in state if not k.startswith("egornn."))
    if isinstance(model, SAMSOPNet):
        own = dict(model.named_children())
        ignored = sorted(k for k in state if k.startswith(HEADS) and own.get(k.split(".")[0]) is None)
        return {k: v for k, v in state.items() if k not in ignored}, ignored
    return state, []


# ----------------------------------------------------------------------------- public API

def load_checkpoint(model, path):
    """Load a checkpoint of this project or of the original Ego-RNN into `model` (in place).

    Returns dict(meta=<the file's metadata>, format="project"|"ego-rnn",
    missing_heads=[keys left at their initialisation], ignored=[keys not used]).
    Raises CheckpointError (one line) on another model's checkpoint, a class-count or size
    mismatch, or missing keys."""
    state, meta = _read(path)
    family, want = _file_family(state), _model_family(model)
    names = {"rgb": "an RGB (Ego-RNN / SAMSOP-Net)", "flow": "a flow", "twostream": "a two-stream"}
    if family is None:
        raise CheckpointError(f"{path}: not an Ego-RNN / SAMSOP-Net checkpoint (unknown keys such "
                              f"as {sorted(state)[0]!r})")
    if family == "imagenet":
        raise CheckpointError(f"{path}: this is a plain ResNet state dict (ImageNet weights?); "
                              f"pass it as --pretrained PATH, not as a checkpoint")
    if family != want:
        raise CheckpointError(f"{path}: this is {names[family]} checkpoint, expected {names[want]} one")
    state, original = _to_project(state, family)
    state, ignored = _fit_to_model(state, model)

    expected = model.state_dict()
    n_file = meta.get("num_classes")
    if isinstance(n_file, int) and n_file != model.num_classes:
        raise CheckpointError(f"{path}: checkpoint has {n_file} classes, the dataset has {model.num_classes}")
    for k, v in state.items():
        if k in expected and v.shape != expected[k].shape:
            if k.endswith("classifier.1.weight") or k.endswith("classifier.1.bias"):
                raise CheckpointError(f"{path}: checkpoint has {v.shape[0]} classes, the dataset "
                                      f"has {expected[k].shape[0]}")
            hint = " (different --memSize?)" if "convlstm" in k else \
                " (different MS head kind or map size?)" if k.startswith("ms_head") else ""
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)} in the file, "
                                  f"{tuple(expected[k].shape)} in the model{hint}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path}: {len(unexpected)} keys the model does not have, "
                              f"e.g. {unexpected[0]!r}")
    # Old PyTorch saved no num_batches_tracked; the counter is unused with a fixed momentum.
    for k, v in expected.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    missing = sorted(set(expected) - set(state))
    missing_heads = [k for k in missing if k.startswith(HEADS)]
    missing = [k for k in missing if not k.startswith(HEADS)]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} keys of the model are missing from the file, "
                              f"e.g. {missing[0]!r}")
    model.load_state_dict(state, strict=False)
    return dict(meta=meta, format="ego-rnn" if original else "project",
                missing_heads=missing_heads, ignored=ignored)


def read_metadata(path):
    """The metadata of a checkpoint file ({} for a bare state dict such as the original's)."""
    return _read(path)[1]


def checkpoint_info(path):
    """What the file holds, without building a model: dict(family "rgb"|"flow"|"twostream",
    num_classes, mem_size (RGB / two-stream), ms (None|"classification"|"regression"),
    ms_size, op (bool), stack_size (flow / two-stream), meta). Attention has no weights: read it from meta if saved there."""
    state, meta = _read(path)
    family = _file_family(state)
    if family in (None, "imagenet"):
        raise CheckpointError(f"{path}: not an Ego-RNN / SAMSOP-Net checkpoint")
    state, _ = _to_project(state, family)
    info = dict(family=family, num_classes=None, mem_size=None, ms=None, ms_size=None, op=False, meta=meta,
                stack_size=None)
    conv1 = state.get("conv1.weight", state.get("flow_model.conv1.weight"))
    if conv1 is not None:  # flow input: 2 channels (x, y) per frame of the stack
        info["stack_size"] = int(conv1.shape[1]) // 2
    w = state.get("egornn.classifier.1.weight", state.get("classifier.1.weight"))
    if w is not None:
        info["num_classes"] = int(w.shape[0])
    elif isinstance(meta.get("num_classes"), int):
        info["num_classes"] = meta["num_classes"]
    lstm = state.get("egornn.convlstm.conv_xi.weight", state.get("rgb_model.convlstm.conv_xi.weight"))
    if lstm is not None:
        info["mem_size"] = int(lstm.shape[0])
    if "ms_head.fc.weight" in state:
        out_dim, in_dim = state["ms_head.fc.weight"].shape
        s = round((in_dim / 100) ** 0.5)
        info["ms_size"] = s
        info["ms"] = "regression" if out_dim == s * s else "classification"
    info["op"] = "op_head.fc8.weight" in state
    if info["num_classes"] is None:
        raise CheckpointError(f"{path}: no classifier weights, cannot tell the number of classes")
    return info


def checkpoint_num_classes(path):
    """Number of action classes of a checkpoint (to compare with the dataset before building)."""
    return checkpoint_info(path)["num_classes"]
