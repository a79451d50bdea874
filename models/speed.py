"""The model's speed layer: the computations of the definitions in models/, faster kernels.

The model files hold the definitions and nothing else; this one module makes them fast where the
hardware allows, without changing what is computed. One call, where a run prepares its model
(utils/experiment.prepare_model, so training, bench.py and the verifier):

    install(model, device, precision)

It works per instance (no class is changed; the state dict is the same):
  * channels_last runs (every CUDA run, and bf16 on the CPU: `channels_last`): the weights are
    converted to channels_last, and each ResNet's trunk converts the frames once to
    channels_last and to the autocast dtype (`like_weights`), instead of every convolution
    reordering and casting a float32 NCHW input;
  * bf16 on the CPU, frozen stem..layer3 (every RGB stage): BatchNorm folded into the
    convolutions, ReLU and residual fused into oneDNN's kernels (`frozen_bf16`);
  * bf16 training on the CPU: layer4's trainable 3x3 convolutions and the ConvLSTM's take their
    weight gradient from one matrix product (`conv3x3`);
  * fp32 training on the CPU (CPUs without bf16 kernels): the frozen stem..layer3 run on
    CPU_TRUNK_CHUNK frames at a time, as the original Ego-RNN runs its ResNet frame step by frame
    step: a batch of 128 frames' activations (103 MB after the stem) streams through memory once
    per operation, 8 frames' (6 MB) stay in the caches. The same bits (every frozen operation
    works per frame), 6.2 s -> 4.5 s for 128 frames at 224 px on 2 cores with AVX2 kernels
    (docs/speed.md).
Each path checks its conditions on every call (device, autocast, grad mode, frozen layers), so
fp32 evaluation runs exactly the definition.
"""
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import ResNet34Backbone
from .convlstm import ConvLSTMCell
from .flow import FlowResNet34

ENABLED = True  # switches for comparisons (tests): the fast weight gradient,
FUSE_FROZEN = True  # the fused frozen layers under bf16
CPU_TRUNK_CHUNK = 8  # frames per pass through the frozen stem..layer3 in CPU fp32 training (0: all at once)


def channels_last(device, precision):
    """NHWC weights and activations: the fast layout for cuDNN and for oneDNN's bf16 kernels.
    Never for fp32 on the CPU, where it would change the results' last bits."""
    return device.type == "cuda" or precision == "bf16"


def install(model, device, precision):
    """The speed paths of the module docstring, in `model`'s instances, for a run on `device` at
    `precision` ("fp32" or "bf16"). Returns the model."""
    nhwc = channels_last(device, precision)
    if nhwc:
        model.to(memory_format=torch.channels_last)
    cpu_bf16 = device.type == "cpu" and precision == "bf16"
    for m in model.modules():
        if isinstance(m, ResNet34Backbone):
            m.trunk = types.MethodType(backbone_trunk, m)
            if cpu_bf16:
                for conv in m.layer4.modules():
                    if type(conv) is nn.Conv2d and _is_3x3(conv):
                        conv.__class__ = FastGradConv2d
        elif isinstance(m, FlowResNet34) and nhwc:
            m.trunk = types.MethodType(flow_trunk, m)
        elif isinstance(m, ConvLSTMCell) and cpu_bf16:
            m.conv2d = conv3x3
    return model


# ----------------------------------------------------------------------------- the trunk

def backbone_trunk(b, x):
    """ResNet34Backbone.trunk(x) (stem..layer3) through the fastest route that applies."""
    x = like_weights(x, b.conv1.weight)
    if frozen_bf16(x, _trunk_modules(b)):
        with torch.no_grad():
            return _fused_trunk(b, x.to(torch.bfloat16))
    if chunked(b, x):
        with torch.no_grad():
            return torch.cat([_plain_trunk(b, frames) for frames in x.split(CPU_TRUNK_CHUNK)])
    return _plain_trunk(b, x)


def flow_trunk(f, x):
    """FlowResNet34.trunk(x) on frames converted once to the weights' layout."""
    return type(f).trunk(f, like_weights(x, f.conv1.weight))


def chunked(b, x):
    """CPU fp32 training with a frozen trunk: run it CPU_TRUNK_CHUNK frames at a time."""
    return (CPU_TRUNK_CHUNK > 0 and x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and not x.requires_grad and _frozen(_trunk_modules(b)))


def _trunk_modules(b):
    return (b.conv1, b.bn1, b.layer1, b.layer2, b.layer3)


def _plain_trunk(b, x):
    return type(b).trunk(b, x)  # the definition


def _fused_trunk(b, x):
    x = b.maxpool(conv_bn(x, b.conv1, b.bn1, relu=True))
    for layer in (b.layer1, b.layer2, b.layer3):
        for block in layer:
            x = basic_block(block, x)
    return x


def _is_channels_last(weight):
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def like_weights(x, weight):
    """With channels_last weights (bf16 or CUDA runs), convert the frames once to channels_last,
    and to the autocast dtype: one pass over the batch, instead of the convolution reordering and
    casting a plain float32 NCHW input. Otherwise x is unchanged."""
    if x.dim() != 4 or not _is_channels_last(weight):
        return x
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    return x.to(dtype=dtype, memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- 3x3 weight gradient
#
# oneDNN computes the weight gradient of a 3x3 convolution on small maps (the 7x7 layer4 and
# ConvLSTM maps) at a fraction of the CPU's bf16 matrix speed: on the 2-core AMX machine of
# docs/design.md §8, 55 ms for one ConvLSTM hidden step (8 x 512 x 7 x 7 -> 2048 channels)
# where the same sums as one matrix product take 9 ms. `conv3x3` therefore runs, only under
# CPU bf16 autocast and only when the weight needs a gradient:
#   forward       F.conv2d (oneDNN), exactly what autocast would run;
#   input grad    aten.convolution_backward (oneDNN), as autograd would;
#   weight grad   im2col of the input in NHWC order (one copy) and one matrix product
#                 grad_out^T (Co x N*H*W) @ cols (N*H*W x 9*C), accumulated in float32 by the
#                 bf16 GEMM like oneDNN's;
#   bias grad     float32 sum of grad_out.
# Everywhere else (fp32, CUDA, no grad) it is plain F.conv2d.

def fast_path(x, weight):
    """True under CPU bf16 autocast when the weight will get a gradient."""
    return (ENABLED and x.device.type == "cpu" and torch.is_grad_enabled() and weight.requires_grad
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def conv3x3(x, weight, bias=None, stride=1, padding=1):
    """F.conv2d(x, weight, bias, stride, padding) for 3x3 kernels, with the fast weight gradient."""
    if weight.shape[-2:] == (3, 3) and padding == 1 and fast_path(x, weight):
        dtype = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            return Conv3x3.apply(x.to(dtype), weight.to(dtype),
                                 None if bias is None else bias.to(dtype), stride)
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)


def _is_3x3(conv):
    return (conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.stride[0] == conv.stride[1])


class FastGradConv2d(nn.Conv2d):
    """A 3x3 / padding 1 nn.Conv2d through conv3x3 where the fast weight gradient applies, its
    own forward elsewhere (install swaps an instance's class; parameters and state dict stay)."""

    def forward(self, x):
        if fast_path(x, self.weight):
            return conv3x3(x, self.weight, self.bias, self.stride[0])
        return super().forward(x)


def im2col_nhwc(x, stride, out_hw):
    """(N, C, H, W) -> (N*Ho*Wo, 9*C), columns ordered (kh, kw, c): the layout of a
    channels_last 3x3 weight, so the product needs no transposition of the result."""
    N, C = x.shape[:2]
    Ho, Wo = out_hw
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # N, H+2, W+2, C (a view for NHWC input)
    span_h, span_w = stride * (Ho - 1) + 1, stride * (Wo - 1) + 1
    cols = torch.stack([xp[:, i:i + span_h:stride, j:j + span_w:stride] for i in range(3) for j in range(3)],
                       dim=3)  # N, Ho, Wo, 9, C
    return cols.reshape(N * Ho * Wo, 9 * C)


def weight_grad(grad_out, x, stride=1):
    """Gradient of a 3x3, padding-1 convolution's weight, (Co, C, 3, 3) in channels_last layout."""
    N, Co, Ho, Wo = grad_out.shape
    C = x.shape[1]
    g = grad_out.permute(0, 2, 3, 1).reshape(N * Ho * Wo, Co)
    gw = g.t() @ im2col_nhwc(x, stride, (Ho, Wo))  # Co, 9*C
    return gw.view(Co, 3, 3, C).permute(0, 3, 1, 2)


class Conv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return F.conv2d(x, weight, bias, stride=stride, padding=1)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        s = ctx.stride
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(grad_out, x, weight, None, [s, s], [1, 1], [1, 1], False,
                                                     [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            gw = weight_grad(grad_out, x, s).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad_out.float().sum((0, 2, 3)).to(grad_out.dtype)
        return gx, gw, gb, None


# ----------------------------------------------------------------------------- frozen layers, fused
#
# Frozen ResNet layers (eval-mode BatchNorm, no gradient anywhere) under CPU bf16 autocast run
# with each BatchNorm folded into its convolution (w * gamma / sqrt(var + eps),
# beta - mean * gamma / sqrt(var + eps)) and the ReLU and the residual addition fused into
# oneDNN's convolution (torch.ops.mkldnn._convolution_pointwise, the kernels torch.compile uses on
# CPUs): one pass over each activation instead of four. The backbone's stem..layer3 take 0.85 s
# instead of 1.3 s for 128 frames at 224 px on 2 cores, and are closer to the float64 result than
# plain autocast (relative error 6.5e-3 against 8.4e-3).

def _pointwise_ops():
    """oneDNN's fused convolutions, where they run in bf16: AVX-512 (BW, VL, DQ) or
    AVX-NE-CONVERT; on an AVX2-only CPU bf16 autocast falls back to plain kernels instead."""
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        if not torch.backends.mkldnn.is_available() or not ops._is_mkldnn_bf16_supported():
            return None
        return ops._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


def _frozen(modules):
    """No parameter of `modules` wants a gradient and every BatchNorm is in eval mode."""
    for m in modules:
        if any(p.requires_grad for p in m.parameters()):
            return False
        if any(b.training for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)):
            return False
    return True


def frozen_bf16(x, modules):
    """True when `modules` can run through conv_bn / basic_block: CPU bf16 autocast, no
    parameter that wants a gradient, every BatchNorm in eval mode, an input without gradient."""
    if not (FUSE_FROZEN and x.device.type == "cpu" and not x.requires_grad and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and _pointwise_ops() is not None):
        return False
    return _frozen(modules)


def _folded(conv, bn, dtype):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = (conv.weight * scale.view(-1, 1, 1, 1)).to(dtype=dtype, memory_format=torch.channels_last)
    shift = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    return weight, shift.to(dtype), [list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups]


def conv_bn(x, conv, bn, relu):
    """bn(conv(x)), then ReLU if `relu`, as one oneDNN convolution (x: bf16 channels_last)."""
    weight, bias, geometry = _folded(conv, bn, x.dtype)
    return _pointwise_ops()(x, weight, bias, *geometry, "relu" if relu else "none", [], "")


def basic_block(block, x):
    """torchvision BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + identity), fused."""
    out = conv_bn(x, block.conv1, block.bn1, relu=True)
    identity = x if block.downsample is None else conv_bn(x, block.downsample[0], block.downsample[1], relu=False)
    weight, bias, geometry = _folded(block.conv2, block.bn2, x.dtype)
    return _pointwise_ops().binary(out, identity, weight, bias, *geometry, "add", None, "relu", [], None)
