"""The ranks of a tensor-parallel group: start them, join them, stop them all when one fails.

    result = run_on_ranks(2, "cuda", fn, *args)      # fn(tp, *args) on every rank; returns rank 0's result
    ranks = Ranks.start(2, "cuda", target, args)     # this process is rank 0; rank 1 runs target(tp, *args)
    ranks.tp ... ranks.close()

One process per GPU (NCCL), or per CPU process (gloo: tests), started by torch.multiprocessing ("spawn")
and joined through a TCPStore rendezvous; under `torchrun --nproc-per-node N` the processes exist already
(`Ranks.from_torchrun`). Every process keeps NVLink multicast off (MULTICAST_OFF).

Failures: rank 0 watches the others through torch.multiprocessing. When one raises or dies, rank 0's
collectives in flight are aborted and its next call raises RankFailed, one line naming the rank and its
error; a rank 0 still stuck STUCK_EXIT_S later prints that line and exits. Spawned ranks ignore Ctrl-C
(rank 0 handles it) and exit when rank 0's process does. Under torchrun, torchrun stops them all.

Leaving (`Ranks.close`, and a spawned rank once its target returns): each rank first destroys the CUDA
graphs that captured collectives (the caller's part: `Engine.release_graphs`; NCCL 2.26 on waits in
destroying or aborting a communicator until no graph holds it, which hung the first two-GPU run at exit),
finishes its GPU work, meets the others at a goodbye barrier, frees the symmetric-memory buffer and
destroys the group. Every rank's teardown is bounded: one that cannot finish within LEAVE_TIMEOUT_S
exits with status 1 (a spawned one with its threads' stacks on stderr). A spawned rank then exits at
once (os._exit after the atexit handlers), skipping the interpreter's teardown of CUDA and NCCL objects.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp

from models.errors import ModelError, SettingError
from models.options import parse_device
from models.tp import TensorParallel

# NVLink multicast (NVLS) can take a host's shared GPUs out of service: off in every process we start.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
STUCK_EXIT_S = 10.0              # rank 0 still stuck this long after another rank failed: it exits
CLOSE_TIMEOUT_S = 30.0           # for the others to reach the goodbye, and to exit once told to
LEAVE_TIMEOUT_S = 30.0           # for a rank's whole teardown (goodbye, buffers, destroy) before it exits anyway
IDLE = timedelta(days=365)       # the request channel waits as long as the user does
# How long a rank waits in a collective (inside one call, all ranks in step) for the others: a hung rank held rank 0
# for the backend's default (gloo 30 min). A rank merely slower (a cold compile, a slower disk) is within the time
# lockstep gives a load (REPORT_TIMEOUT_S, 600 s). $CODECOMPLETE_TP_TIMEOUT (seconds) sets it.
TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_S = "CODECOMPLETE_TP_TIMEOUT", 600.0
PROCESS_FAILURES = (torch_mp.ProcessRaisedException, torch_mp.ProcessExitedException)
# torch.multiprocessing reads a failed rank's error from a file the rank writes as it ends: a rank killed (or
# stopped by torch's own cleanup) while writing it leaves the file empty or cut, and the join raises this instead.
REPORT_CUT = (EOFError, pickle.UnpicklingError)
JOIN_FAILURES = PROCESS_FAILURES + REPORT_CUT    # what a join raises for a failed rank (`_describe` says which)
# When one rank fails, torch.multiprocessing stops the others with a warning line each ("Terminating process ...
# via signal SIGTERM"): stopping them is part of the failure, which RankFailed says in its one line.
logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)


class RankFailed(ModelError):
    """Another rank raised or died: its error, in one line. The group is gone; load again to go on."""


def multicast_off() -> None:
    """Before any NCCL or symmetric-memory setup; spawned ranks inherit the environment."""
    os.environ.update(MULTICAST_OFF)


@contextlib.contextmanager
def children_skip_current_folder() -> Iterator[None]:
    """While inside, spawned ranks leave the current folder off their module path (Python 3.11's PYTHONSAFEPATH;
    3.10 has no way). A rank starts as `python -c ...`, which puts that folder first: run from inside a hostile
    repository, its `multiprocessing.py` or any module a rank imports ran in every rank. Put back as it was after:
    left set, every Python this process started later (a library user's `python tools/x.py`) lost its own folder
    from its path too."""
    before = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = before


def under_torchrun() -> bool:
    """This process was started by torchrun together with other ranks."""
    return bool(os.environ.get("TORCHELASTIC_RUN_ID")) and _torchrun_number("WORLD_SIZE", "1") > 1


def _torchrun_number(name: str, default: str | None = None) -> int:
    """RANK, WORLD_SIZE, LOCAL_RANK or MASTER_PORT as torchrun sets them: set by hand to anything else (or missing),
    the user's setting is said as such, not an int() ValueError or a KeyError."""
    value = os.environ.get(name, default)
    if value is None:
        raise SettingError(f"${name} is not set, yet $TORCHELASTIC_RUN_ID says torchrun started this process")
    if not value.isdecimal():     # (isdigit takes "²", which int() refuses)
        raise SettingError(f"{name}={value}: expected a whole number (torchrun sets it)")
    return int(value)


def check_gloo_interfaces() -> None:
    """$GLOO_SOCKET_IFNAME names the network interfaces gloo talks over (comma-separated): one this machine lacks
    failed deep in gloo ("enforce fail ... Unable to find address for"), after the ranks had started."""
    value = os.environ.get("GLOO_SOCKET_IFNAME")
    present = {name for _, name in socket.if_nameindex()} if value else set()
    missing = [name for name in (value or "").split(",") if name not in present]
    if value and missing:
        raise SettingError(f"GLOO_SOCKET_IFNAME={value}: this machine has no network interface {missing[0]!r} "
                           f"(it has {', '.join(sorted(present))})")


def loopback_interface() -> str | None:
    """The loopback interface by the name gloo binds to: "lo" on Linux, "lo0" on macOS ("lo" there failed in gloo,
    after the ranks had started); None where it has neither name (Windows), and gloo finds an address itself."""
    names = {name for _, name in socket.if_nameindex()}
    return next((name for name in ("lo", "lo0") if name in names), None)


def collective_timeout() -> timedelta:
    """The bound on a collective's wait: $CODECOMPLETE_TP_TIMEOUT seconds, or DEFAULT_TIMEOUT_S."""
    setting = os.environ.get(TIMEOUT_VARIABLE)
    if setting is None or not setting.strip():     # (empty: unset)
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(setting)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 1e9:           # (nan and inf fail too)
        raise SettingError(f"{TIMEOUT_VARIABLE}={setting!r}: a number of seconds above 0 (how long a rank waits "
                           f"for the others in a collective)")
    return timedelta(seconds=seconds)


def check_devices(world: int, device_type: str) -> None:
    if world < 1:
        raise ValueError(f"a tensor-parallel group needs at least one rank, not {world}")
    if device_type == "cuda" and world > 1 and not dist.is_nccl_available():
        raise ModelError(f"tensor parallelism over {world} GPUs needs NCCL, which this PyTorch build lacks "
                         f"(PyTorch for Windows has none)")
    if device_type == "cuda":
        available = torch.cuda.device_count()
        if available < world:
            raise ModelError(f"tensor parallelism over {world} GPUs: only {available} CUDA "
                             f"GPU{' is' if available == 1 else 's are'} visible here")
    elif device_type != "cpu":
        raise ValueError(f"tensor parallelism runs on cuda or cpu, not {device_type}")


class Ranks:
    """This process as one rank of a group; on rank 0 of a spawned group, also the watch over the others."""

    def __init__(self, tp: TensorParallel, context=None, threads: int | None = None, excepthook=None):
        self.tp = tp
        # This process's torch threads and sys.excepthook before it joined (init_process_group wraps the
        # hook, once per group), restored at close: a process may load a model on several GPUs many times.
        self._threads, self._excepthook = threads, excepthook
        self.failure: str | None = None      # one line: which rank failed and how
        self._context = context              # torch.multiprocessing's ProcessContext of the spawned ranks
        self._closed = threading.Event()
        self._cancel_stuck_exit = None       # armed by the watchdog when another rank fails
        self._watchdog = None
        if context is not None:
            self._watchdog = threading.Thread(target=self._watch, name="rank-watchdog", daemon=True)
            self._watchdog.start()

    @classmethod
    def start(cls, world: int, device_type: str, target, args: tuple = ()) -> Ranks:
        """Spawn ranks 1..world-1 running target(tp, *args); this process joins as rank 0."""
        multicast_off()
        check_devices(world, device_type)
        check_gloo_interfaces()
        collective_timeout()                # a bad setting, said before any rank starts
        if "GLOO_SOCKET_IFNAME" not in os.environ and (loopback := loopback_interface()):
            os.environ["GLOO_SOCKET_IFNAME"] = loopback     # one host: gloo talks over loopback
        store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False)
        context = None
        if world > 1:
            with children_skip_current_folder():     # (start_processes has started every rank on return)
                context = torch_mp.start_processes(_spawned_rank, args=(world, store.port, device_type, target,
                                                                        args), nprocs=world - 1, join=False,
                                                   start_method="spawn")
        threads, excepthook = torch.get_num_threads(), sys.excepthook
        try:
            _wait_for_start(store, context, world)
            tp = _join(0, world, 0, store, device_type)
        except BaseException:
            _terminate(context)
            torch.set_num_threads(threads)
            sys.excepthook = excepthook
            raise
        return cls(tp, context, threads, excepthook)

    @classmethod
    def from_torchrun(cls) -> Ranks:
        """Join the group torchrun started (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""
        multicast_off()
        check_gloo_interfaces()
        collective_timeout()
        device_type = parse_device(None).type
        rank, world = _torchrun_number("RANK"), _torchrun_number("WORLD_SIZE")
        if rank >= world:
            raise SettingError(f"RANK={rank}: expected 0 to {world - 1} (WORLD_SIZE={world})")
        local_rank, port = _torchrun_number("LOCAL_RANK", str(rank)), _torchrun_number("MASTER_PORT")
        if not 0 < port < 65536 or not os.environ.get("MASTER_ADDR"):
            raise SettingError(f"MASTER_ADDR={os.environ.get('MASTER_ADDR', '')} MASTER_PORT={port}: expected the "
                               f"address and port (1-65535) of torchrun's rendezvous")
        try:
            return cls(_join(rank, world, local_rank, None, device_type))
        except dist.DistNetworkError as e:        # MASTER_PORT taken by another program, say
            raise ModelError(f"cannot join torchrun's group at {os.environ['MASTER_ADDR']}:{port}: "
                             f"{str(e).splitlines()[0]}") from None

    def failure_behind(self, error: BaseException) -> str | None:
        """The other rank's failure that explains `error` on this one, if any: a broken collective
        (RuntimeError) is usually another rank's death, which the watchdog sees a moment later."""
        if _timed_out(error):               # a rank alive but not answering: no watchdog would see it
            others = "rank 1" if self.tp.world == 2 else f"one of ranks 1-{self.tp.world - 1}"
            return (f"{others} did not answer within {collective_timeout().total_seconds():.0f} s (hung?); "
                    f"${TIMEOUT_VARIABLE} sets how long ranks wait for each other")
        deadline = time.monotonic() + (10.0 if isinstance(error, RuntimeError) else 0.0)
        while self.failure is None and self._watchdog is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.failure

    def close(self, clean: bool = True) -> None:
        """Leave the group and wait for the spawned ranks to exit (after they were told to).

        clean=False after an error: the others may be stuck in a collective, so no goodbye, just stop them.
        """
        if self._closed.is_set():
            return
        self._closed.set()
        if self._watchdog is not None:
            self._watchdog.join()            # its abort may wait for the caller's graphs: released first
        if self._cancel_stuck_exit is not None:
            self._cancel_stuck_exit()
        if dist.is_initialized():
            cancel = exit_if_stuck(LEAVE_TIMEOUT_S, f"the ranks did not shut down within {LEAVE_TIMEOUT_S:.0f} s",
                                   stacks=self.tp.rank != 0)
            if not (clean and self.failure is None and _leave(self.tp)):
                _abort()
            cancel()
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            sys.excepthook = self._excepthook
        if self._context is not None:
            try:      # (told nothing after an error, a rank mid-load or mid-computation would keep on: not waited for)
                self._context.join(CLOSE_TIMEOUT_S if clean else 0)
            except JOIN_FAILURES as e:
                self.failure = self.failure or _describe(e, self._context)
            finally:
                _terminate(self._context)

    def stop(self) -> None:
        """Stop the spawned ranks now, without leaving the group (Ctrl-C while closing: not after the bounds)."""
        self._closed.set()
        _terminate(self._context)

    def _watch(self) -> None:
        while not self._closed.is_set():
            try:
                if self._context.join(timeout=0.5):
                    return
            except JOIN_FAILURES as e:
                self.failure = _describe(e, self._context)
                # Armed before the abort, which can block (on graphs still holding the communicator).
                self._cancel_stuck_exit = exit_if_stuck(STUCK_EXIT_S, self.failure)
                _abort()
                return


def run_on_ranks(world: int, device_type: str, fn, *args):
    """fn(tp, *args) on every rank of a new group of `world` (SPMD); rank 0's result.

    fn must be importable by name (spawned ranks unpickle it). A rank's failure raises RankFailed.
    """
    ranks = Ranks.start(world, device_type, fn, args)
    try:
        result = fn(ranks.tp, *args)
    except BaseException as e:
        failure = ranks.failure_behind(e)
        ranks.close(clean=False)
        if failure:
            raise RankFailed(failure) from None
        raise
    ranks.close()
    if ranks.failure:
        raise RankFailed(ranks.failure)
    return result


def _spawned_rank(index: int, world: int, port: int, device_type: str, target, args: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is rank 0's to handle: it stops the others
    parent = multiprocessing.parent_process()
    if parent is not None:                          # no orphans: rank 0's process gone, this one goes too
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True).start()
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False)
    store.set(_started_key(index + 1), "")
    tp = _join(index + 1, world, index + 1, store, device_type)
    try:
        target(tp, *args)
    finally:   # what follows (leaving, or torch.multiprocessing reporting an error) ends within a bound
        exit_if_stuck(LEAVE_TIMEOUT_S, stacks=True)
    left = _leave(tp)
    if not left:
        _abort()
    # Nothing left to do here: run the atexit handlers (compile workers, multiprocessing's), then exit
    # without the interpreter's teardown of CUDA and NCCL objects, which can block. Status 1: no goodbye.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if left else 1)


def _started_key(rank: int) -> str:
    return f"codecomplete/started/{rank}"


def _wait_for_start(store, context, world: int) -> None:
    """Until every spawned rank reached the store; one that dies on the way (an import error, a script
    without the `if __name__ == "__main__":` guard that "spawn" needs) fails the start, not hangs it."""
    keys = [_started_key(rank) for rank in range(1, world)]
    while keys and not store.check(keys):
        try:
            context.join(timeout=0.05)
        except JOIN_FAILURES as e:
            raise RankFailed(f"{_describe(e, context)} while starting") from None


def _join(rank: int, world: int, local_rank: int, store, device_type: str) -> TensorParallel:
    """init_process_group for this rank: NCCL bound to GPU local_rank, or gloo; plus the gloo control group."""
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", store=store, rank=rank, world_size=world, device_id=device,
                                timeout=collective_timeout())
    else:
        device = torch.device("cpu")
        # Ranks sharing the host's cores: more threads than cores makes every collective wait on spinning ones.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=collective_timeout())
    control = dist.new_group(backend="gloo", timeout=IDLE)
    return TensorParallel(rank, world, device, dist.group.WORLD, control,
                          store or dist.distributed_c10d._get_default_store())


def _timed_out(error: BaseException) -> bool:
    """A collective that waited out `collective_timeout` (gloo: "Timed out waiting 3000ms for recv operation")."""
    return isinstance(error, RuntimeError) and "timed out" in str(error).lower()


def _leave(tp: TensorParallel) -> bool:
    """Every rank at once (a goodbye barrier, then destroy): no rank tears its connections down while
    another still uses them, which made gloo abort a process at exit now and then. False: no goodbye.
    The caller has destroyed its CUDA graphs that hold collectives (NCCL waits for them otherwise)."""
    if tp.device.type == "cuda":
        torch.cuda.synchronize(tp.device)   # this rank's last kernels, collectives included, are done
    try:
        dist.monitored_barrier(group=tp.control, timeout=timedelta(seconds=CLOSE_TIMEOUT_S))
    except RuntimeError:
        return False
    tp.collectives.close()                  # every rank is past its last one-shot all-reduce
    dist.destroy_process_group()
    return True


def exit_if_stuck(seconds: float, message: str = "", stacks: bool = False):
    """Arm an exit (status 1) of this process in `seconds`; returns the function that disarms it.

    Rank 0 prints `message` in one line, from a Python thread (it needs the GIL: a C++ call that blocks
    while holding it would hold this exit back too). stacks=True (a rank other than 0) uses faulthandler
    instead: its own thread without the GIL, every thread's stack on stderr, then the exit.
    """
    if stacks:
        faulthandler.dump_traceback_later(seconds, exit=True)
        return faulthandler.cancel_dump_traceback_later

    def stuck():
        print(f"{Path(sys.argv[0]).name or 'python'}: error: {message}", file=sys.stderr, flush=True)
        os._exit(1)
    timer = threading.Timer(seconds, stuck)
    timer.daemon = True
    timer.start()
    return timer.cancel


def _abort() -> None:
    """Make collectives in flight on this rank fail instead of waiting for a rank that is gone."""
    try:
        dist.distributed_c10d._abort_process_group()
    except Exception:   # gloo fails by itself on a closed connection; best effort for NCCL
        pass


def _terminate(context) -> None:
    """Stop the spawned ranks still running, and remove the report files of those that failed: torch.multiprocessing
    has a failing rank write its error to a file in the temporary folder and only ever reads it (a
    pytorch-errorfile-*.pickle was left in /tmp by every failure). Called once the reports were read, or when they no
    longer matter."""
    for process in getattr(context, "processes", ()):
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)     # (a rank killed while writing its report must not write on after the removal)
    for report in getattr(context, "error_files", ()):
        with contextlib.suppress(OSError):
            os.unlink(report)


def _exited(context) -> str:
    """One line for a failed rank whose report is lost: how its process ended."""
    for index, process in enumerate(context.processes):
        if process.exitcode:
            if process.exitcode < 0:
                return f"rank {index + 1} was killed by {signal.Signals(-process.exitcode).name}"
            return f"rank {index + 1} exited with code {process.exitcode}"
    return "a rank failed"


def _describe(error, context) -> str:
    """One line from torch.multiprocessing's report (spawned rank i is rank i + 1); where the report was cut, from
    how the rank's process ended."""
    if isinstance(error, REPORT_CUT):
        return _exited(context)
    rank = error.error_index + 1
    if isinstance(error, torch_mp.ProcessRaisedException):
        lines = [line for line in str(error).splitlines() if line.strip()]
        return f"rank {rank} failed: {lines[-1].strip() if lines else 'unknown error'}"
    signal_name = getattr(error, "signal_name", None)
    if signal_name:
        return f"rank {rank} was killed by {signal_name}"
    return f"rank {rank} exited with code {getattr(error, 'exit_code', '?')}"
