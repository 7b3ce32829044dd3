"""Flash-Decoding attention kernels in Triton, with a plain-PyTorch reference beside them.

    from kernels import flash_decode          # the Triton split-KV kernels
    from kernels import append_kv             # write new K/V into a cache (quantizing an 8-bit one)
    from kernels import flash_decode_exact_window   # an 8-bit cache with exact sink and window tokens
    from kernels import prefill_attention_exact     # its prefill: one flash forward (kernels/prefill_exact.py)
    from kernels import reference             # the same functions in plain PyTorch
"""

# Read by codecomplete.errors: another distribution's top-level `kernels` (Hugging Face's, which transformers >= 5.25
# installs) can hide this one on sys.path, and then the first import of ours fails; this name says whose it is.
DISTRIBUTION = "codecomplete"

from kernels import reference  # noqa: E402
from kernels.plan import LaunchPlan, plan_launch  # noqa: E402

try:
    import triton  # noqa: F401
except ImportError:     # no Triton for this platform (macOS; Windows): the CPU's plain-PyTorch path, no flash_decode
    HAS_TRITON = False
    flash_decode = flash_decode_exact_window = prefill_attention_exact = None
    append_kv = reference.append_kv     # (what kernels.interface runs off CUDA anyway)
else:
    HAS_TRITON = True
    from kernels.exact_window import flash_decode_exact_window
    from kernels.interface import append_kv, flash_decode
    from kernels.prefill_exact import prefill_attention_exact

__all__ = ["HAS_TRITON", "flash_decode", "flash_decode_exact_window", "prefill_attention_exact", "append_kv",
           "reference", "plan_launch", "LaunchPlan"]
