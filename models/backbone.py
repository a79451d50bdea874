"""ResNet-34 backbone of Ego-RNN (Sudhakaran & Lanz, BMVC 2018), on torchvision's resnet34.

For every frame it returns three things (docs/design.md §1):
  logits  (N, 1000)     ImageNet scores; their top-1 class selects the CAM weights
  f_bn    (N, 512, h, w) the normal layer4 output, relu(bn2(conv2) + residual) of its last block
  f_nobn  (N, 512, h, w) the same last block without its final BN and ReLU: conv2 + residual.
                         Ego-RNN multiplies the attention map with this one.
h = w = 7 for 224 px frames, 4 for 112 px frames (see feature_map_size).

The module keeps torchvision's attribute names (conv1, bn1, layer1..layer4, fc), so its state
dict is exactly a torchvision resnet34 state dict: ImageNet files, user files and the original
Ego-RNN checkpoints (`resNet.*`) all load by name.
"""
import math
import os
import socket
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


class PretrainedWeightsError(Exception):
    """The ImageNet weights the user asked for cannot be found or read (one-line message)."""


IMAGENET_WEIGHTS = torchvision.models.ResNet34_Weights.IMAGENET1K_V1
DOWNLOAD_TIMEOUT_S = 20  # torch.hub has no timeout of its own; a firewalled network would hang


def feature_map_size(frame_size):
    """Side of the layer4 maps for square frames of `frame_size` px (224 -> 7, 112 -> 4).

    The stem conv, the max-pool and the three stride-2 stages each halve the side, rounding up."""
    s = frame_size
    for _ in range(5):
        s = math.ceil(s / 2)
    return s


def imagenet_cache_path():
    """Where torchvision keeps the ImageNet ResNet-34 file: $TORCH_HOME/hub/checkpoints/<name>."""
    filename = os.path.basename(IMAGENET_WEIGHTS.url)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def _normalise_pretrained(pretrained):
    if pretrained is None or pretrained is False:
        return "none"
    if pretrained is True:
        return "imagenet"
    return os.fspath(pretrained)


def load_resnet34_state(pretrained):
    """The torchvision resnet34 state dict for `pretrained`, or None for "none".

    pretrained: "imagenet" (the torch cache, else one download attempt), "none", or a PATH to a
    torchvision resnet34 state dict. Raises PretrainedWeightsError with a one-line message."""
    pretrained = _normalise_pretrained(pretrained)
    if pretrained == "none":
        return None
    if pretrained == "imagenet":
        path = imagenet_cache_path()
        if not os.path.isfile(path):
            _try_download(path)
        return _read_state(path, "the cached ImageNet ResNet-34 file")
    if not os.path.isfile(pretrained):
        raise PretrainedWeightsError(
            f"--pretrained {pretrained}: no such file; give a torchvision resnet34 state dict "
            f"(.pth), 'imagenet' or 'none'")
    return _read_state(pretrained, "--pretrained file")


def _try_download(path):
    """One download attempt with a socket timeout; any failure becomes a one-line error."""
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.load_state_dict_from_url(IMAGENET_WEIGHTS.url, progress=False, check_hash=True,
                                           map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - URLError, timeouts, HTTP and hash errors alike
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PretrainedWeightsError(
            f"ImageNet ResNet-34 weights are not in the torch cache and could not be downloaded "
            f"({reason}); put {os.path.basename(path)} (from {IMAGENET_WEIGHTS.url}) at {path}, "
            f"or pass --pretrained PATH, or --pretrained none") from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def _read_state(path, what):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated file, pickle with code, not a torch file
        raise PretrainedWeightsError(
            f"{what} {path} cannot be read as a weights-only PyTorch file "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "conv1.weight" not in state or "layer4.2.conv2.weight" not in state:
        raise PretrainedWeightsError(
            f"{what} {path} is not a torchvision resnet34 state dict (no conv1/layer4 weights)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def warn_untrained(what, cam=True):
    why = ("; unless a checkpoint is loaded, the CAM attention (driven by the ImageNet classifier) is untrained"
           if cam else ", not the paper's ImageNet initialisation (unless a checkpoint is loaded next)")
    warnings.warn(f"pretrained='none': {what} starts from random weights{why}", stacklevel=3)


def load_trunk(net, state, pretrained):
    """net.load_state_dict(state) with a one-line error for a file that is no ResNet-34."""
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise PretrainedWeightsError(f"--pretrained {pretrained}: does not fit torchvision resnet34 "
                                     f"({str(e).splitlines()[0]})") from None


def adopt_trunk(module, net):
    """Take torchvision's stem and layers under their own names (a torchvision state dict)."""
    module.conv1, module.bn1, module.relu, module.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
    module.layer1, module.layer2, module.layer3, module.layer4 = net.layer1, net.layer2, net.layer3, net.layer4


class ResNet34Backbone(nn.Module):
    """torchvision ResNet-34 returning (logits, f_bn, f_nobn) per frame."""

    def __init__(self, pretrained="imagenet"):
        super().__init__()
        net = torchvision.models.resnet34(weights=None)
        state = load_resnet34_state(pretrained)
        if state is None:
            warn_untrained("the RGB ResNet-34")
        else:
            load_trunk(net, state, pretrained)
        adopt_trunk(self, net)
        self.fc = net.fc  # 512 -> 1000 ImageNet classifier; its rows are the CAM weights

    def forward(self, x):
        """frames (N, 3, H, W) -> logits (N, 1000) in float32, f_bn, f_nobn (N, 512, h, w)."""
        f_bn, f_nobn = self.layer4_maps(x)
        return self.imagenet_logits(f_bn), f_bn, f_nobn

    def layer4_maps(self, x):
        """f_bn and f_nobn of the frames x."""
        x = self.trunk(x)
        for block in self.layer4[:-1]:
            x = block(x)
        return self.last_block(x)

    def trunk(self, x):
        """stem..layer3: the layers every stage keeps frozen."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))

    def last_block(self, x):
        """layer4's last block, unrolled to read conv2 + residual before bn2 and the final ReLU:
        f_bn = relu(bn2(conv2) + residual), f_nobn = conv2 + residual."""
        last = self.layer4[-1]
        residual = x if last.downsample is None else last.downsample(x)
        out = last.conv2(last.relu(last.bn1(last.conv1(x))))
        f_nobn = out + residual
        f_bn = F.relu(last.bn2(out) + residual)
        return f_bn, f_nobn

    def imagenet_logits(self, f_bn):
        """fc(avgpool(f_bn)), always in float32: the top-1 class picks the CAM weights, and
        under bf16 logits of 10-20 are 0.06 apart, so near-tied classes would flip.
        Adaptive pooling (the original used AvgPool2d(7)), so 112 px frames work as well."""
        pooled = torch.flatten(F.adaptive_avg_pool2d(f_bn, 1), 1).float()
        with torch.autocast(f_bn.device.type, enabled=False):
            return F.linear(pooled, self.fc.weight.float(), self.fc.bias.float())
