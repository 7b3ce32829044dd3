"""Flash-Decoding attention kernels in Triton, with a plain-PyTorch reference beside them.

    from kernels import flash_decode          # the Triton split-KV kernels
    from kernels import reference             # reference.flash_decode: same contract, plain PyTorch
"""

from kernels import reference
from kernels.interface import LaunchPlan, flash_decode, plan_launch

__all__ = ["flash_decode", "reference", "plan_launch", "LaunchPlan"]
