"""The speed path of `ResNet34Backbone.layer4_maps`: the same f_bn and f_nobn, faster kernels.

models/backbone.py holds the definition; this module runs it faster where the hardware allows,
without changing what is computed:
  * channels_last runs (every CUDA run, and bf16 on the CPU: utils/experiment.channels_last):
    the frames are converted once to channels_last and to the autocast dtype, instead of every
    convolution reordering and casting a float32 NCHW input;
  * bf16 on the CPU, frozen stem..layer3 (every RGB stage): BatchNorm folded into the
    convolutions, ReLU and residual fused into oneDNN's kernels (fastconv.frozen_bf16);
  * bf16 training on the CPU: layer4's trainable 3x3 convolutions and the ConvLSTM's take their
    weight gradient from one matrix product (fastconv.conv3x3, installed in ConvLSTMCell below);
  * fp32 training on the CPU (CPUs without bf16 kernels): the frozen stem..layer3 with BatchNorm
    folded and ReLU / residual fused, in float32 (fastconv.frozen_fp32): results within float32
    rounding of the definition, not bit for bit (tests/test_speed.py bounds the logits after a
    step; with fastconv.FUSE_FROZEN_FP32 off they are the definition's bits).
fp32 evaluation never comes here: evaluate.py runs the definition.
"""
import torch
import torch.nn.functional as F

from . import fastconv
from .convlstm import ConvLSTMCell

# The ConvLSTM's convolutions: the same function with the fast weight gradient under CPU bf16
# training, F.conv2d itself everywhere else (so fp32 results are those of the definition).
ConvLSTMCell.conv2d = staticmethod(fastconv.conv3x3)


def applies(backbone, x):
    """True when a speed trick applies to these frames: channels_last weights, CPU bf16, or CPU
    fp32 training with a frozen trunk."""
    cpu_bf16 = (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    return cpu_bf16 or _channels_last(backbone.conv1.weight) or fastconv.frozen_fp32(x, _trunk(backbone))


def _trunk(b):
    return (b.conv1, b.bn1, b.layer1, b.layer2, b.layer3)  # frozen in every stage


def layer4_maps(backbone, x):
    """ResNet34Backbone.layer4_maps(x) with the tricks of the module docstring."""
    b = backbone
    x = like_weights(x, b.conv1.weight)
    trunk = _trunk(b)
    if fastconv.frozen_bf16(x, trunk) or fastconv.frozen_fp32(x, trunk):
        with torch.no_grad():
            if fastconv.frozen_bf16(x, trunk):
                x = x.to(torch.bfloat16)
            x = b.maxpool(fastconv.conv_bn(x, b.conv1, b.bn1, relu=True))
            for layer in (b.layer1, b.layer2, b.layer3):
                for block in layer:
                    x = fastconv.basic_block(block, x)
    else:
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.layer3(b.layer2(b.layer1(x)))
    fast = fastconv.fast_path(x, b.layer4[-1].conv1.weight)
    for block in b.layer4[:-1]:
        x = _basic_block(block, x) if fast else block(x)
    last = b.layer4[-1]
    residual = x if last.downsample is None else last.downsample(x)
    if fast:
        out = _conv(last.conv2, last.relu(last.bn1(_conv(last.conv1, x))))
    else:
        out = last.conv2(last.relu(last.bn1(last.conv1(x))))
    f_nobn = out + residual
    f_bn = F.relu(last.bn2(out) + residual)
    return f_bn, f_nobn


def _conv(conv, x):
    """A 3x3 / padding 1 Conv2d through fastconv.conv3x3 (same forward), others unchanged."""
    if conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1 \
            and conv.stride[0] == conv.stride[1]:
        return fastconv.conv3x3(x, conv.weight, conv.bias, conv.stride[0])
    return conv(x)


def _basic_block(block, x):
    """torchvision's BasicBlock.forward with its convolutions through `_conv`."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(_conv(block.conv1, x)))
    out = block.bn2(_conv(block.conv2, out))
    return block.relu(out + identity)


def _channels_last(weight):
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def like_weights(x, weight):
    """With channels_last weights (bf16 or CUDA runs, utils/experiment.py), convert the frames
    once to channels_last, and to the autocast dtype: one pass over the batch, instead of the
    convolution reordering and casting a plain float32 NCHW input. Otherwise x is unchanged."""
    if x.dim() != 4 or not _channels_last(weight):
        return x
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    return x.to(dtype=dtype, memory_format=torch.channels_last)
