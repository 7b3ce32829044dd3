"""The CUDA device a launch runs on: Triton launches on the thread's current device
(triton.runtime.jit: `driver.active.get_current_device()`), not on its tensors' device, so a launcher given
tensors on cuda:1 while cuda:0 is current would launch on cuda:0 with cuda:1's pointers. Every public launcher
in kernels/ makes its tensors' device current first, as torch's own ops do."""

from __future__ import annotations

import functools
import inspect

import torch


def launch_device(tensor) -> torch.cuda.device:
    """A context in which `tensor`'s GPU is the thread's current CUDA device (a no-op off CUDA, or for what is not
    a tensor: the launcher's own checks refuse that)."""
    on_cuda = getattr(tensor, "is_cuda", False)
    return torch.cuda.device(tensor.device if on_cuda else -1)


def on_first_tensors_device(launcher):
    """`launcher`, run with its first parameter's device current (`launch_device`), given by position or name."""
    first = next(iter(inspect.signature(launcher).parameters))

    @functools.wraps(launcher)
    def on_device(*args, **kwargs):
        with launch_device(args[0] if args else kwargs.get(first)):
            return launcher(*args, **kwargs)
    return on_device
