"""The CUDA device a launch runs on: Triton launches on the thread's current device
(triton.runtime.jit: `driver.active.get_current_device()`), not on its tensors' device, so a launcher given
tensors on cuda:1 while cuda:0 is current would launch on cuda:0 with cuda:1's pointers. Every public launcher
in kernels/ makes its tensors' device current first, as torch's own ops do."""

from __future__ import annotations

import functools

import torch


def launch_device(tensor: torch.Tensor) -> torch.cuda.device:
    """A context in which `tensor`'s GPU is the thread's current CUDA device (a no-op off CUDA)."""
    return torch.cuda.device(tensor.device if tensor.is_cuda else -1)


def on_first_tensors_device(launcher):
    """`launcher`, run with its first argument's device current (`launch_device`)."""
    @functools.wraps(launcher)
    def on_device(tensor, *args, **kwargs):
        with launch_device(tensor):
            return launcher(tensor, *args, **kwargs)
    return on_device
