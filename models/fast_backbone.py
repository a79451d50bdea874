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
  * fp32 training on the CPU (CPUs without bf16 kernels): the frozen stem..layer3 run on
    CPU_TRUNK_CHUNK frames at a time, as the original Ego-RNN runs its ResNet frame step by frame
    step: a batch of 128 frames' activations (103 MB after the stem) streams through memory once
    per operation, 8 frames' (6 MB) stay in the caches. The same bits (every frozen operation
    works per frame), 6.2 s -> 4.5 s for 128 frames at 224 px on 2 cores with AVX2 kernels
    (docs/speed.md);
  * and, with fastconv.FUSE_FROZEN_FP32 on, those layers with BatchNorm folded and ReLU /
    residual fused, in float32 (fastconv.frozen_fp32): results within float32 rounding of the
    definition, not bit for bit (tests/test_speed.py bounds the logits after a step).
fp32 evaluation never comes here: evaluate.py runs the definition.
"""
import torch
import torch.nn.functional as F

from . import fastconv
from .convlstm import ConvLSTMCell

# The ConvLSTM's convolutions: the same function with the fast weight gradient under CPU bf16
# training, F.conv2d itself everywhere else (so fp32 results are those of the definition).
ConvLSTMCell.conv2d = staticmethod(fastconv.conv3x3)

CPU_TRUNK_CHUNK = 8  # frames per pass through the frozen stem..layer3 in CPU fp32 training (0: all at once)


def applies(backbone, x):
    """True when a speed trick applies to these frames: channels_last weights, CPU bf16, or CPU
    fp32 training with a frozen trunk."""
    cpu_bf16 = (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    trunk = _trunk(backbone)
    return (cpu_bf16 or _channels_last(backbone.conv1.weight) or fastconv.frozen_fp32(x, trunk)
            or _chunked(x, trunk))


def _chunked(x, trunk):
    """CPU fp32 training with a frozen trunk: run it CPU_TRUNK_CHUNK frames at a time."""
    return (CPU_TRUNK_CHUNK > 0 and x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and not x.requires_grad and fastconv._frozen(trunk))


def _trunk(b):
    return (b.conv1, b.bn1, b.layer1, b.layer2, b.layer3)  # frozen in every stage


def layer4_maps(backbone, x):
    """ResNet34Backbone.layer4_maps(x) with the tricks of the module docstring."""
    b = backbone
    x = like_weights(x, b.conv1.weight)
    trunk = _trunk(b)
    bf16 = fastconv.frozen_bf16(x, trunk)
    fused = bf16 or fastconv.frozen_fp32(x, trunk)
    if fused or _chunked(x, trunk):
        run = _fused_trunk if fused else _plain_trunk
        with torch.no_grad():
            if bf16:
                x = run(b, x.to(torch.bfloat16))
            else:
                x = torch.cat([run(b, frames) for frames in x.split(CPU_TRUNK_CHUNK or len(x))])
    else:
        x = _plain_trunk(b, x)
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


def _plain_trunk(b, x):
    x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
    return b.layer3(b.layer2(b.layer1(x)))


def _fused_trunk(b, x):
    x = b.maxpool(fastconv.conv_bn(x, b.conv1, b.bn1, relu=True))
    for layer in (b.layer1, b.layer2, b.layer3):
        for block in layer:
            x = fastconv.basic_block(block, x)
    return x


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
