"""Flash-Decoding attention kernels in Triton, with a plain-PyTorch reference beside them.

    from kernels import flash_decode          # the Triton split-KV kernels
    from kernels import append_kv             # write new K/V into a cache (quantizing an 8-bit one)
    from kernels import reference             # the same functions in plain PyTorch
"""

from kernels import reference
from kernels.interface import append_kv, flash_decode
from kernels.plan import LaunchPlan, plan_launch

__all__ = ["flash_decode", "append_kv", "reference", "plan_launch", "LaunchPlan"]
