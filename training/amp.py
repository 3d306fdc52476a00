"""Which precision a training step runs in: bf16 autocast where the hardware has it.

On a CPU, bf16 pays only with native instructions (AVX512_BF16 or AMX): there one
step of the ``small`` preset took 0.45 s against 1.14 s in FP32 (AMD EPYC, batch
4 x 256²). Without them PyTorch emulates bf16 and is slower than FP32, so the trainer
falls back to FP32 (Intel Cascade Lake, AMD Zen 3).
"""

import torch

from common.cpu import BF16_CPU_FLAGS, cpu_flags, cpu_has_bf16

__all__ = ["BF16_CPU_FLAGS", "cpu_flags", "cpu_has_bf16", "describe", "use_bf16"]


def use_bf16(device: torch.device, amp: bool, flags: set) -> bool:
    """bf16 autocast where ``amp`` is asked for and ``device`` runs bf16 natively."""
    return amp and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16(flags)))


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
