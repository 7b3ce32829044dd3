"""Every public launcher in kernels/ launches on its tensors' device. Triton launches on the thread's CURRENT CUDA
device (triton.runtime.jit: `driver.active.get_current_device()`), not on the tensors' one: q on cuda:1 with cuda:0
current launched on cuda:0 with cuda:1's pointers. No GPU here: the device context each launcher enters, and
whether its kernels launch inside it, are recorded instead (as tests/models/test_engine.py checks the engine's)."""
from types import SimpleNamespace

import pytest
import torch
from triton.runtime.interpreter import InterpretedFunction

from kernels import flash_decode
from kernels.append import append_kv_triton
from kernels.devices import launch_device
from kernels.fused_gemv import gemv as fused_gemv
from kernels.fused_gemv import norm_swiglu, qkv_rope
from kernels.gemv import gemv
from kernels.infill_keep import infill_keep


@pytest.fixture
def events(monkeypatch):
    """("enter", device) / ("exit",) of every torch.cuda.device context, ("launch",) of every kernel launch."""
    seen = []

    class Recorded:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            seen.append(("enter", self.device))

        def __exit__(self, *exc):
            seen.append(("exit",))
            return False

    real_run = InterpretedFunction.run

    def run(self, *args, **kwargs):
        seen.append(("launch",))
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "device", Recorded)
    monkeypatch.setattr(InterpretedFunction, "run", run)
    return seen


def test_the_context_makes_the_tensors_gpu_current(events):
    on_gpu = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 1))
    assert launch_device(on_gpu).device == torch.device("cuda", 1)
    assert launch_device(torch.zeros(1)).device == -1                    # off CUDA: a no-op context


def _calls():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 1, 16, generator=g) for _ in range(3))
    x8 = torch.randn(8, generator=g)
    values = torch.randn(1, 4, generator=g)
    table, lengths = torch.zeros(8, 2, dtype=torch.uint8), torch.ones(8, dtype=torch.int32)
    cache = torch.zeros(1, 2, 4, 16)
    return {
        "flash_decode": lambda: flash_decode(q[:, :, 0], k.expand(1, 2, 4, 16), v.expand(1, 2, 4, 16), num_splits=2),
        # kernels.append_kv's CUDA path (off CUDA it runs plain PyTorch)
        "append_kv": lambda: append_kv_triton(k, v, cache, cache.clone(), torch.tensor([1])),
        "gemv": lambda: gemv(x8, torch.randn(16, 8, generator=g), split_k=2),
        "fused gemv": lambda: fused_gemv(x8, torch.randn(16, 8, generator=g)),
        "norm_swiglu": lambda: norm_swiglu(x8, torch.ones(8), 1e-5, torch.randn(12, 8, generator=g)),
        "qkv_rope": lambda: qkv_rope(x8, torch.ones(8), 1e-5, torch.randn(32, 8, generator=g), torch.ones(4, 8),
                                     torch.ones(4, 8), torch.tensor([1]), 2, 1),
        "infill_keep": lambda: infill_keep(values, torch.arange(4)[None], table, lengths,
                                           torch.zeros(8, dtype=torch.int8)),
    }


@pytest.mark.parametrize("name", list(_calls()))
def test_each_launcher_launches_inside_its_tensors_device_context(name, events):
    _calls()[name]()
    launches = [i for i, e in enumerate(events) if e == ("launch",)]
    assert launches, name
    assert events[0] == ("enter", -1) and events[-1] == ("exit",), (name, events)
    depth = 0
    for event in events:             # no launch outside a context
        depth += {"enter": 1, "exit": -1}.get(event[0], 0)
        assert depth > 0 or event[0] != "launch", (name, events)


def test_a_launcher_given_its_tensors_by_name_enters_their_device(events):
    """(tests/kernels/test_validation.py calls the launchers with keywords: the guard took the first by position.)"""
    g = torch.Generator().manual_seed(1)
    k_new, v_new = (torch.randn(1, 2, 1, 16, generator=g) for _ in range(2))
    k_cache, v_cache = (torch.randn(1, 2, 4, 16, generator=g) for _ in range(2))
    append_kv_triton(k_new=k_new, v_new=v_new, k_cache=k_cache, v_cache=v_cache, input_pos=torch.tensor([1]))
    assert events[0] == ("enter", -1) and ("launch",) in events
    torch.testing.assert_close(k_cache[:, :, 1:2], k_new)
