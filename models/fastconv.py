"""3x3 convolutions with a faster weight gradient for bf16 training on the CPU.

oneDNN computes the weight gradient of a 3x3 convolution on small maps (the 7x7 layer4 and
ConvLSTM maps) at a fraction of the CPU's bf16 matrix speed: on the 2-core AMX machine of
reference section 8, 55 ms for one ConvLSTM hidden step (8 x 512 x 7 x 7 -> 2048 channels)
where the same sums as one matrix product take 9 ms. `conv3x3` therefore runs, only under
CPU bf16 autocast and only when the weight needs a gradient:
  forward       F.conv2d (oneDNN), exactly what autocast would run;
  input grad    aten.convolution_backward (oneDNN), as autograd would;
  weight grad   im2col of the input in NHWC order (one copy) and one matrix product
                grad_out^T (Co x N*H*W) @ cols (N*H*W x 9*C), accumulated in float32 by the
                bf16 GEMM like oneDNN's;
  bias grad     float32 sum of grad_out.
Everywhere else (fp32, CUDA, no grad) it is plain F.conv2d, so fp32 results do not change.
"""
import torch
import torch.nn.functional as F


ENABLED = True  # switch for comparisons (bench, tests)


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
