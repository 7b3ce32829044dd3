"""Test-wide setup. TRITON_INTERPRET must be set before any @triton.jit decorator runs."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The command line and the server keep float32 weights on every CPU here, as on CPUs without bfloat16 dot products:
# the suite's references are float32 (tests of bfloat16 weights turn it on: tests/app/test_cpu_bf16.py).
os.environ.setdefault("CODECOMPLETE_CPU_BF16", "0")

import signal  # noqa: E402

# A shell starts a background job (`pytest ... &` in a script, CI's or a helper's) with SIGINT ignored, and every
# process the tests start inherits that: their Ctrl-C never arrives (the tests of it fail) and each server's stop
# waits out its 60 s. The tests send SIGINT on purpose, so the session takes it as Python does in a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from interpreter_speed import patch_language_once_per_launch  # noqa: E402  (after TRITON_INTERPRET)

patch_language_once_per_launch()


def pytest_configure(config):
    # Under pytest-xdist each worker is one of the machine's cores: torch's default of one thread per core
    # would run twice as many threads as cores (on a busy 2-core machine 2 threads are many times slower than 1).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch
        torch.set_num_threads(1)


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (the README's command): one worker more than the cores this process may run on. Many tests wait on
    a process they started (a server's start, a command's model load, a socket), and a worker waiting leaves its
    core to the others. On this 2-core machine, in one environment (warm caches, OMP_NUM_THREADS=1), the whole
    suite took 22.3 min with 3 workers against 24.9 with 2; `.ci/run` on a clean clone took 24.4 min with 3, inside
    its 2-worker runs' spread (23.5-24.8) (bench/results/NOTES.md, "The test suite's workers"). A 4th worker: 21.8
    min, 18 GB at its peak, one timing test failed. PYTEST_XDIST_AUTO_NUM_WORKERS still decides where it is set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None                     # xdist's own hook reads it
    from codecomplete.engines import usable_cores

    return usable_cores() + 1


import random as _random  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded_per_test(request):
    """Each test draws from torch's and Python's global generators seeded by its own name: random inputs, but the
    same ones whichever tests a worker ran before it (a draw that fails in CI fails again on a laptop)."""
    import torch
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    _random.seed(seed)
    yield


@pytest.fixture(autouse=True)
def _python_safe_path_put_back():
    """The index's worker processes and --gpus ranks set PYTHONSAFEPATH in this process while they start
    (prompts/index.py, models/distributed.py), and put it back; tests set and unset it too: put back after each
    test all the same, so that no later test's children inherit it and no test of it starts with it already set."""
    before = os.environ.get("PYTHONSAFEPATH")
    yield
    if before is None:
        os.environ.pop("PYTHONSAFEPATH", None)
    else:
        os.environ["PYTHONSAFEPATH"] = before


class _Parsed(Exception):
    """Raised where argparse would parse: the parser is caught, and the program stops there."""


@pytest.fixture
def catch_parser():
    """``catch_parser(run)``: the ArgumentParser that ``run()`` builds and parses with, caught as it parses (for
    programs that build theirs inside main); parse_args is argparse's own again afterwards."""
    import argparse

    def catch(run) -> argparse.ArgumentParser:
        caught = []

        def parse_args(parser, *args, **kwargs):
            caught.append(parser)
            raise _Parsed

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
            with pytest.raises(_Parsed):
                run()
        return caught[0]
    return catch
