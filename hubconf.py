"""torch.hub entry points: this repository's models, with the weights of a checkpoint.

    import torch
    model = torch.hub.load("path/to/this/repository", "samsop_net", source="local",
                           checkpoint="experiments/main_ms_op_seq16/stage2/best_model.pth")
    model.eval()
    logits = model(clips, heads=False)["logits"]   # clips: (batch, frames, 3, 224, 224), ImageNet-normalised

    samsop_net          SAMSOP-Net: Ego-RNN + motion segmentation + order prediction (main_ms_op.py)
    ego_rnn             Ego-RNN RGB stream, CAM attention + ConvLSTM (main_rgb.py; no attention: --noAttention)
    ego_rnn_ms          Ego-RNN + motion segmentation head (main_ms.py)
    ego_rnn_flow        warp-flow ResNet-34 (main_flow.py); input (batch, 2 x stackSize, 224, 224)
    ego_rnn_twostream   joint two-stream (main_twostream.py); model(flow, clips)

`checkpoint` is a file of this project (best_model.pth, last.pth) or of the original Ego-RNN
release (its RGB, flow and two-stream files). The model is built as the file says (classes,
ConvLSTM size, attention, heads, stack size) and its weights loaded (models/recipe.py,
models/checkpoints.py); a checkpoint of another experiment is refused. Without a checkpoint the
model is built untrained: `num_classes` (default 61, GTEA-61's) and `frameSize` (default 224) set
its shape. The class names of a checkpoint of this project are in `model.classes`.

RGB models are SAMSOPNets: `model(clips)` returns a dict with "logits" and "attention" (the CAM
maps), and runs the MS and OP heads where the model has them (`heads=False`: the action only, as
evaluate.py). `heads=False` at loading leaves the heads out of the model. Nothing is downloaded.
"""
from models.backbone import feature_map_size
from models.checkpoints import checkpoint_info, load_checkpoint
from models.recipe import FAMILY, build_from_checkpoint, build_model

dependencies = ["torch", "torchvision"]

# entry point -> (experiment, the configuration of an untrained model)
ENTRIES = {
    "samsop_net": ("ms_op", {"ms": "classification", "op": True}),
    "ego_rnn": ("rgb", {}),
    "ego_rnn_ms": ("ms", {"ms": "classification"}),
    "ego_rnn_flow": ("flow", {"stackSize": 5}),
    "ego_rnn_twostream": ("twostream", {"stackSize": 5}),
}


def _model(entry, checkpoint=None, num_classes=61, frameSize=224, heads=True):
    experiment, config = ENTRIES[entry]
    family = FAMILY[experiment]
    if checkpoint is None:
        config = dict(config, mapSize=feature_map_size(frameSize))
        return build_model(family, num_classes, config, pretrained="none", heads=heads)
    info = checkpoint_info(checkpoint)
    recorded = info["meta"].get("experiment")
    if info["family"] != family or (recorded and FAMILY[recorded] == "rgb" and recorded != experiment):
        right = next(e for e, (x, _) in ENTRIES.items() if x == (recorded or info["family"]))
        raise ValueError(f"{checkpoint} holds a '{recorded or info['family']}' model: load it with "
                         f"torch.hub.load(..., '{right}', ...), not '{entry}'")
    model = build_from_checkpoint(checkpoint, heads=heads)
    load_checkpoint(model, checkpoint)
    model.classes = list(info["meta"].get("classes") or [])
    return model.eval()


def samsop_net(checkpoint=None, num_classes=61, frameSize=224, heads=True):
    """SAMSOP-Net (main_ms_op.py): Ego-RNN with the MS and OP heads; an Ego-RNN checkpoint without
    a record (the original release) gives the model without heads."""
    return _model("samsop_net", checkpoint, num_classes, frameSize, heads)


def ego_rnn(checkpoint=None, num_classes=61, frameSize=224):
    """Ego-RNN's RGB stream (main_rgb.py), or the original release's RGB file."""
    return _model("ego_rnn", checkpoint, num_classes, frameSize)


def ego_rnn_ms(checkpoint=None, num_classes=61, frameSize=224, heads=True):
    """Ego-RNN with the motion-segmentation head (main_ms.py)."""
    return _model("ego_rnn_ms", checkpoint, num_classes, frameSize, heads)


def ego_rnn_flow(checkpoint=None, num_classes=61):
    """The warp-flow ResNet-34 (main_flow.py), or the original release's flow file."""
    return _model("ego_rnn_flow", checkpoint, num_classes)


def ego_rnn_twostream(checkpoint=None, num_classes=61):
    """The joint two-stream model (main_twostream.py), or the original release's two-stream file."""
    return _model("ego_rnn_twostream", checkpoint, num_classes)
