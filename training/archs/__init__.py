"""Network parts of the defocus deblurring model, one file per part (BasicSR style)."""

from training.archs.condition_arch import ConditionNet
from training.archs.deblur_arch import DeblurNet
from training.archs.defocus_arch import DefocusDeblurNet
from training.archs.dme_arch import DefocusMapEstimator
from training.archs.sft_arch import ConditionedResBlock, SFTLayer

__all__ = [
    "ConditionNet",
    "ConditionedResBlock",
    "DeblurNet",
    "DefocusDeblurNet",
    "DefocusMapEstimator",
    "SFTLayer",
]
