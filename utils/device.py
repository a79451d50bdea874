"""Where and in which precision a run computes: the device (--device) and bf16 autocast where the
hardware runs it natively (--precision auto)."""
import torch

from utils.errors import UserError

# --precision of every script: bf16 autocast where the hardware runs it natively (auto), or one of them
PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu")
    return torch.device(name)


def cpu_has_native_bf16(cpuinfo=None):
    """True on CPUs with bf16 matrix instructions: AMX (Intel Xeon 4th gen on) or AVX512_BF16
    (AMD Zen 4 on, Intel Cooper Lake). On both, bf16 training runs about 2x (Zen 4) to 4x (AMX)
    faster than fp32 (docs/speed.md); elsewhere bf16 is emulated and slower than fp32. On this
    machine (cpuinfo None) oneDNN must also offer its bf16 kernels: ONEDNN_MAX_CPU_ISA=AVX2, which
    emulates an AVX2-only CPU (docs/speed.md), turns them off while the flags stay."""
    if cpuinfo is None:
        if not _onednn_bf16():
            return False
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _onednn_bf16():
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: the flags decide
        return True


def cuda_has_native_bf16(device=None):
    """True on GPUs of compute capability 8.0 on (Ampere, Hopper, ...), whose tensor cores run bf16.
    torch.cuda.is_bf16_supported() by default also says True where bf16 is emulated (Volta,
    Turing), where it runs slower than fp32."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8 and torch.cuda.is_bf16_supported(including_emulation=False)


def pick_precision(name, device):
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16(device) else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"
