"""SAMSOP-Net: Ego-RNN with a motion-segmentation head and an order-prediction head.

    clip -> EgoRNN -> action logits
              |-- attended features (paper) or layer4 f_bn (SparNet) --> MS head, per frame
              '-- layer4 f_bn of 4 sampled frames (flat or pooled), shuffled -> OP head

Both heads read tensors the EgoRNN forward already produced, so they cost no second backbone
pass. They are trained in stage 2 only (models/stages.py); total loss = action CE + MS loss +
OP loss, each with weight 1 (the training script adds them up).

Every RGB script builds a SAMSOPNet (no heads for plain Ego-RNN), so RGB checkpoints share the
keys egornn.*, ms_head.*, op_head.*.
"""
import torch
import torch.nn as nn

from .egornn import EgoRNN
from .ms_head import MotionSegmentationHead
from .op_head import OrderPredictionHead

MS_KINDS = (None, "classification", "regression")
MS_INPUTS = ("attention", "layer4")
OP_INPUTS = ("flat", "pooled")


class SAMSOPNet(nn.Module):
    def __init__(self, num_classes, mem_size=512, attention=True, ms=None, ms_input="attention",
                 op=False, pretrained="imagenet", ms_size=7, op_input="flat"):
        """ms_size: side of the layer4 maps, feature_map_size(frame size): 7 at 224 px, 4 at 112 px.
        op_input: "flat" (fc6 reads the 512 x s x s map, the paper's code) or "pooled" (512)."""
        super().__init__()
        if ms not in MS_KINDS:
            raise ValueError(f"ms must be one of {MS_KINDS}, got {ms!r}")
        if ms_input not in MS_INPUTS:
            raise ValueError(f"ms_input must be one of {MS_INPUTS}, got {ms_input!r}")
        if op_input not in OP_INPUTS:
            raise ValueError(f"op_input must be one of {OP_INPUTS}, got {op_input!r}")
        self.ms, self.ms_input, self.op, self.op_input = ms, ms_input, op, op_input
        self.egornn = EgoRNN(num_classes, mem_size, attention, pretrained)
        self.ms_head = (MotionSegmentationHead(512, ms_size, regression=(ms == "regression"))
                        if ms else None)
        op_dim = 512 * ms_size * ms_size if op_input == "flat" else 512
        self.op_head = OrderPredictionHead(op_dim) if op else None

    @property
    def num_classes(self):
        return self.egornn.num_classes

    def forward(self, x, generator=None, heads=True, frame_numbers=None):
        """x (B, T, 3, H, W) -> EgoRNN dict, plus ms_out (B, T, 2, s, s) or (B, T, s, s) and
        op_logits (B, 12), op_target (B,), op_frames (B, 4) when the heads are on.

        generator: CPU torch.Generator for the OP frame/order draw (seed it for evaluation).
        frame_numbers (B, T): the video frame of each clip position (the dataset's
        "frame_numbers"); the OP head is then shown 4 different frames.
        heads=False skips both heads (stage 1, or plain action evaluation)."""
        out = self.egornn(x)
        B, T = x.shape[:2]
        if heads and self.ms_head is not None:
            f = out["features"] if self.ms_input == "attention" else out["layer4"]
            out["ms_out"] = self.ms_head(f.flatten(0, 1)).unflatten(0, (B, T))
        if heads and self.op_head is not None:
            frame_idx, order, target = self.op_head.sample(B, T, generator, frame_numbers)
            shown = _to(frame_idx.gather(1, order), x.device)  # the 4 frames in shuffled order
            maps = out["layer4"][torch.arange(B, device=x.device).unsqueeze(1), shown]  # (B, 4, 512, s, s)
            if self.op_input == "flat":
                frame_feats = maps.flatten(2)  # (B, 4, 512*s*s)
            else:
                frame_feats = maps.mean(dim=(-2, -1))  # global average pool -> (B, 4, 512)
            out["op_logits"] = self.op_head(frame_feats)
            out["op_target"] = _to(target, x.device)
            out["op_frames"] = shown
        return out


def _to(t, device):
    """A small CPU tensor on the device. To a GPU through pinned memory, without waiting: a plain
    copy from pageable memory would make the host wait for the backbone in mid-forward."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
