"""Which precision a training step runs in: bf16 autocast where the hardware has it.

On a CPU, bf16 pays only with native instructions (AVX512_BF16 or AMX): there one
step of the ``small`` preset's joint stage took 0.826 s against 1.403 s in FP32 (AMD
EPYC, batch 4 x 256², both channels_last; ``python -m benchmarks.train_speed``).
Without them PyTorch emulates bf16 and is slower than FP32, so the trainer falls
back to FP32 (Intel Cascade Lake, AMD Zen 3).
"""

import torch
from torch import nn

from common.cpu import BF16_CPU_FLAGS, cpu_flags, cpu_has_bf16

__all__ = ["BF16_CPU_FLAGS", "cpu_flags", "cpu_has_bf16", "describe", "dilated_convs_to_nchw", "use_bf16"]


def use_bf16(device: torch.device, amp: bool, flags: set) -> bool:
    """bf16 autocast where ``amp`` is asked for and ``device`` runs bf16 natively."""
    return amp and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16(flags)))


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(),) + args[1:]


def dilated_convs_to_nchw(model: nn.Module) -> int:
    """Make the dilated convolutions of a channels_last ``model`` compute in NCHW; returns
    how many. For bf16 training on a CPU, where the rest stays channels_last.

    oneDNN (PyTorch 2.13) computes wrong weight gradients for dilated convolutions
    in bf16 channels_last: 75% relative error at dilation 2, NaN or Inf at 4 and 8 (24
    channels, 128², AMD EPYC with AVX512_BF16; NCHW, FP32 and dilation 1 are right),
    and the estimator's dilated blocks turn the first step's weights into NaN. A
    convolution runs channels_last when its input or its weight is, so both are made
    contiguous: the weight once here, the input by a forward pre-hook.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and max(m.dilation) > 1]
    for conv in convs:
        conv.to(memory_format=torch.contiguous_format)
        conv.register_forward_pre_hook(_contiguous_input)
    return len(convs)


def describe(device: torch.device, amp: bool, bf16: bool) -> str:
    """One log line: the precision that runs and why."""
    if bf16:
        return f"precision: bf16 autocast on {device.type}"
    if not amp:
        return "precision: fp32 ([train] amp = false)"
    return (
        f"precision: fp32 (this CPU has none of {', '.join(BF16_CPU_FLAGS)}; "
        "bf16 would be emulated and slower)"
    )
