"""Flash-Decoding attention kernels in Triton, with a plain-PyTorch reference beside them.

    from kernels import flash_decode          # the Triton split-KV kernels
    from kernels import append_kv             # write new K/V into a cache (quantizing an 8-bit one)
    from kernels import flash_decode_exact_window   # an 8-bit cache with exact sink and window tokens
    from kernels import prefill_attention_exact     # its prefill: one flash forward (kernels/prefill_exact.py)
    from kernels import reference             # the same functions in plain PyTorch

`import kernels` is cheap: the names above load (with torch and Triton) on first use, so that the app's start-up can
read `kernels.settings` (the environment's kernel settings, as data) on any machine without importing either.
"""

import sys

# Read by codecomplete.errors: another distribution's top-level `kernels` (Hugging Face's, which transformers >= 5.25
# installs) can hide this one on sys.path, and then the first import of ours fails; this name says whose it is.
DISTRIBUTION = "codecomplete"

__all__ = ["HAS_TRITON", "flash_decode", "flash_decode_exact_window", "prefill_attention_exact", "append_kv",
           "reference", "plan_launch", "LaunchPlan"]


def _kernels() -> dict:
    """The Triton kernels' names (None where there is no Triton), imported once into the module's globals."""
    try:
        import triton  # noqa: F401
    except ImportError:  # no Triton for this platform (macOS; Windows): the CPU's plain-PyTorch path, no flash_decode
        from kernels.reference import append_kv     # (what kernels.interface runs off CUDA anyway)
        names = dict(HAS_TRITON=False, flash_decode=None, flash_decode_exact_window=None, prefill_attention_exact=None,
                     append_kv=append_kv)
    else:
        from kernels.exact_window import flash_decode_exact_window
        from kernels.interface import append_kv, flash_decode
        from kernels.prefill_exact import prefill_attention_exact
        names = dict(HAS_TRITON=True, flash_decode=flash_decode, flash_decode_exact_window=flash_decode_exact_window,
                     prefill_attention_exact=prefill_attention_exact, append_kv=append_kv)
    globals().update(names)
    return names


def __getattr__(name: str):
    import importlib    # (a submodule by import_module: `from kernels import x` here would ask __getattr__ again)
    if name == "reference":
        return importlib.import_module("kernels.reference")
    if name in ("LaunchPlan", "plan_launch"):
        return getattr(importlib.import_module("kernels.plan"), name)
    if name in __all__:
        return _kernels()[name]
    # (name and obj: Python's "Did you mean" for a mistyped name looks them up, in __dir__'s list)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}", name=name, obj=sys.modules[__name__])


def __dir__() -> list[str]:
    """The public names too, before they load: tab completion and help() list what `from kernels import` takes."""
    return sorted({*globals(), *__all__})
