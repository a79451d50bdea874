"""3x3 convolutions with a faster weight gradient for bf16 training on the CPU.

oneDNN computes the weight gradient of a 3x3 convolution on small maps (the 7x7 layer4 and
ConvLSTM maps) at a fraction of the CPU's bf16 matrix speed: on the 2-core AMX machine of
docs/design.md §8, 55 ms for one ConvLSTM hidden step (8 x 512 x 7 x 7 -> 2048 channels)
where the same sums as one matrix product take 9 ms. `conv3x3` therefore runs, only under
CPU bf16 autocast and only when the weight needs a gradient:
  forward       F.conv2d (oneDNN), exactly what autocast would run;
  input grad    aten.convolution_backward (oneDNN), as autograd would;
  weight grad   im2col of the input in NHWC order (one copy) and one matrix product
                grad_out^T (Co x N*H*W) @ cols (N*H*W x 9*C), accumulated in float32 by the
                bf16 GEMM like oneDNN's;
  bias grad     float32 sum of grad_out.
Everywhere else (fp32, CUDA, no grad) it is plain F.conv2d, so fp32 results do not change.

`frozen_bf16` / `conv_bn` / `basic_block` run frozen ResNet layers (eval-mode BatchNorm, no
gradient anywhere) under CPU bf16 autocast with each BatchNorm folded into its convolution
(w * gamma / sqrt(var + eps), beta - mean * gamma / sqrt(var + eps)) and the ReLU and the
residual addition fused into oneDNN's convolution (torch.ops.mkldnn._convolution_pointwise, the
kernels torch.compile uses on CPUs): one pass over each activation instead of four. The
backbone's stem..layer3 (frozen in every RGB stage) take 0.85 s instead of 1.3 s for 128 frames
at 224 px on 2 cores, and are closer to the float64 result than plain autocast (relative error
6.5e-3 against 8.4e-3).

fp32 training on the CPU (`frozen_fp32`, docs/speed.md) runs the same fused frozen layers in
float32: the same sums up to rounding (folding the BatchNorm reorders a multiply and an add),
within 1e-5 relative of the plain layers, so the logits after a step stay within 1e-4
(tests/test_speed.py). Evaluation keeps the plain definition (it runs without grad).
"""
import torch
import torch.nn.functional as F


ENABLED = True  # switches for comparisons (tests): the weight-gradient convolution,
FUSE_FROZEN = True  # the fused frozen layers under bf16,
FUSE_FROZEN_FP32 = False  # and in fp32 training: off until its gain is measured (bench.py --fusedFp32 --plainToo)


def fast_path(x, weight):
    """True under CPU bf16 autocast when the weight will get a gradient."""
    return (ENABLED and x.device.type == "cpu" and torch.is_grad_enabled() and weight.requires_grad
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def conv3x3(x, weight, bias=None, stride=1, padding=1):
    """F.conv2d(x, weight, bias, stride, padding) for 3x3 kernels (see the module docstring)."""
    if weight.shape[-2:] == (3, 3) and padding == 1 and fast_path(x, weight):
        dtype = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            return Conv3x3.apply(x.to(dtype), weight.to(dtype),
                                 None if bias is None else bias.to(dtype), stride)
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)


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

def _pointwise_ops(dtype=torch.bfloat16):
    """oneDNN's fused convolutions, where they run in `dtype`. bf16 needs AVX-512 (BW, VL, DQ)
    or AVX-NE-CONVERT; on an AVX2-only CPU bf16 autocast falls back to plain kernels instead.
    float32 runs wherever oneDNN does."""
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        if dtype == torch.bfloat16 and not ops._is_mkldnn_bf16_supported():
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


def fp32_training(x):
    """CPU float32 training (grad enabled, no autocast): where `frozen_fp32` may apply."""
    return (FUSE_FROZEN_FP32 and x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu"))


def frozen_fp32(x, modules):
    """True when `modules` can run fused in float32: CPU fp32 training, frozen as in frozen_bf16.
    Evaluation (no grad) keeps the plain layers."""
    return (fp32_training(x) and not x.requires_grad and _pointwise_ops(torch.float32) is not None
            and _frozen(modules))


def _folded(conv, bn, dtype):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    # bf16: channels_last, oneDNN's fast bf16 layout; fp32 keeps the model's NCHW so that layer4,
    # which trains, reads what it reads on the plain path
    layout = torch.channels_last if dtype == torch.bfloat16 else torch.contiguous_format
    weight = (conv.weight * scale.view(-1, 1, 1, 1)).to(dtype=dtype, memory_format=layout)
    shift = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    return weight, shift.to(dtype), [list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups]


def conv_bn(x, conv, bn, relu):
    """bn(conv(x)), then ReLU if `relu`, as one oneDNN convolution (x: bf16 channels_last, or fp32)."""
    weight, bias, geometry = _folded(conv, bn, x.dtype)
    return _pointwise_ops(x.dtype)(x, weight, bias, *geometry, "relu" if relu else "none", [], "")


def basic_block(block, x):
    """torchvision BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + identity), fused."""
    out = conv_bn(x, block.conv1, block.bn1, relu=True)
    identity = x if block.downsample is None else conv_bn(x, block.downsample[0], block.downsample[1], relu=False)
    weight, bias, geometry = _folded(block.conv2, block.bn2, x.dtype)
    return _pointwise_ops(x.dtype).binary(out, identity, weight, bias, *geometry, "add", None, "relu", [], None)
