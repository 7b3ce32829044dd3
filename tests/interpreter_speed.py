"""Triton's interpreter without its repeated language patching.

At every launch the interpreter swaps triton.language's builtins for interpreted ones (`_patch_lang`, three
`inspect.getmembers` walks), and undoes that when the launch ends. It does the same again at every call of a
@triton.jit helper inside the launch, where the language is already swapped: that second patch finds no builtin
left to swap and re-sets a few attributes to equivalent closures, so it changes nothing, but it was a third of
the kernel tests' time (2.9 s of 8.4 s in two flash_decode cases). Here a helper's call skips it when the launch
running in this thread has already patched every language module the helper sees; anything else goes to Triton.
"""
from __future__ import annotations

import inspect
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

    def languages(fn) -> set[int]:
        return {id(value) for value in fn.__globals__.values() if inspect.ismodule(value) and value in (tl, tl.core)}

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
