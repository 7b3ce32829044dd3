"""Triton's interpreter without its repeated language patching.

At every launch the interpreter swaps triton.language's builtins for interpreted ones (`_patch_lang`, three
`inspect.getmembers` walks), and undoes that when the launch ends. It does the same again at every call of a
@triton.jit helper inside the launch, where the language is already swapped: that second patch finds no builtin
left to swap and re-sets a few attributes to equivalent closures, so it changes nothing, but it was a third of
the kernel tests' time (2.9 s of 8.4 s in two flash_decode cases). Here a helper's call skips it when the launch
running in this thread has already patched every language module the helper sees; anything else goes to Triton.
Which language modules a helper sees is found once per helper, and the numpy dtype the interpreter stores each
Triton dtype in once per dtype (both were found again at every call: 12% and 8% of a test's 400 launches).
"""
from __future__ import annotations

import threading


def patch_language_once_per_launch() -> None:
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:          # no Triton: nothing to speed up
        return
    real_patch, real_launch = getattr(interpreter, "_patch_lang", None), getattr(interpreter.GridExecutor,
                                                                                 "__call__", None)
    if real_patch is None or real_launch is None or getattr(real_patch, "once_per_launch", False):
        return                   # another Triton than the one this was written against (3.9), or done already
    state = threading.local()    # .patched: ids of the modules the running launch patched; None outside one

    seen_by: dict = {}           # helper function -> ids of the language modules among its module's globals

    def languages(fn) -> frozenset[int]:
        # (a module's imports are made as it loads, before any of its kernels runs)
        if fn not in seen_by:
            seen_by[fn] = frozenset(id(value) for value in fn.__globals__.values() if value is tl or value is tl.core)
        return seen_by[fn]

    def patch_lang(fn):
        patched, seen = getattr(state, "patched", None), languages(fn)
        if patched is not None and seen and seen <= patched:
            return interpreter._LangPatchScope()       # a helper inside the launch: already patched
        scope = real_patch(fn)
        if patched is not None:
            patched |= seen
        return scope

    def launch(self, *args, **kwargs):
        outer = getattr(state, "patched", None)
        state.patched = set()
        try:
            return real_launch(self, *args, **kwargs)
        finally:
            state.patched = outer

    patch_lang.once_per_launch = True
    interpreter._patch_lang = patch_lang
    interpreter.GridExecutor.__call__ = launch
    _np_dtype_once_per_dtype(interpreter, tl)


def _np_dtype_once_per_dtype(interpreter, tl) -> None:
    """The interpreter's `_get_np_dtype` builds its table of 17 numpy dtypes at every call (each cast, constant and
    load): the answer kept per Triton dtype. A block's is its element's (a pointer's: uint64, as Triton's)."""
    real = getattr(interpreter, "_get_np_dtype", None)
    if real is None:
        return
    found: dict = {}

    def np_dtype(tt_dtype):
        scalar = tt_dtype.element_ty if isinstance(tt_dtype, tl.block_type) else tt_dtype
        try:
            return found[scalar]
        except KeyError:
            found[scalar] = real(scalar)
            return found[scalar]
        except TypeError:       # a dtype that cannot be a key: Triton's answer, unkept
            return real(tt_dtype)
    np_dtype.real = real
    interpreter._get_np_dtype = np_dtype
