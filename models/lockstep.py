"""Rank 0 runs the app; the other ranks repeat its engine calls in step.

    engine = load_model(spec, gpus=2)          # -> load_on_ranks: rank 1 is spawned and follows
    engine.generate(ids, config, on_text=print, should_stop=cancelled)

`LeaderEngine` is rank 0's Engine (its part of the model) behind a proxy with the Engine's interface:
each method call is first sent to the other ranks (`follow`), which make the same call on their parts,
so every rank runs the same collectives in the same order. Callbacks stay on rank 0: text goes nowhere
else, and `should_stop`'s answer is broadcast each time it is asked (once per token, before and after each
speculative verification step, and once per layer of a prefill that polls: `Engine._prefill_poll`), so all ranks
stop at the same token or layer.
A sampled request without a seed gets one here, so every rank draws the same tokens.

After each call every rank reports how it went. Errors of the request itself (ModelError, ValueError:
a prompt too long, an unknown backend), raised on every rank alike, leave the ranks ready for the next
call. Anything else, or ranks that disagree, stops them all: RankFailed.

Closing: rank 0 says goodbye, and every rank destroys its engine's CUDA graphs before the group goes
(`release`; models/distributed.py says why and how the rest of the teardown is bounded).
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import inspect
import os
import pickle
import secrets
import time

import torch
import torch.distributed as dist

from models.config import preset
from models.distributed import RankFailed, Ranks, collective_timeout, under_torchrun
from models.errors import ModelError
from models.generation import GenerationConfig
from models.load import RANDOM_PREFIX, checkpoint_directory, checkpoint_format, load_model
from models.loading.hf import read_config
from models.options import parse_device, parse_dtype
from models.tp import TensorParallel, shard_config

LOAD, SET, CLOSE = "load", "__setattr__", "close"
REPORT_TIMEOUT_S = {LOAD: 600.0}     # after rank 0 is done, how long the others may take to report
DEFAULT_REPORT_TIMEOUT_S = 60.0
REQUEST_ERRORS = (ModelError, ValueError)
NOT_FOLLOWED = {"make_decode_step": "benchmarks time tensor-parallel steps with `python -m models.bench --gpus N`"}
LOCAL = frozenset({"check_prompt"})     # methods that only read the leader's own state: run there, not on every rank

_active: LeaderEngine | None = None   # one group per process: loading another model closes it


def load_on_ranks(gpus: int | None, spec=None, *, device=None, dtype=None, attention=None, max_context=None,
                  progress=None, cuda_graphs=None, kv_cache=None, past_training=False, weights=None) -> LeaderEngine:
    """`load_model(..., gpus=N)`: start N ranks (or join torchrun's), each loading its part of the model."""
    global _active
    device_type = parse_device(device).type
    if device is not None and torch.device(device).index is not None:
        raise ValueError(f"device {device}: with several GPUs give cuda (rank r uses cuda:r; pick GPUs with "
                         "CUDA_VISIBLE_DEVICES) or cpu")
    # Downloads and GGUF conversion happen once, here; every rank then reads its slices of the directory.
    if isinstance(spec, str) and spec.startswith(RANDOM_PREFIX):
        source, config = None, preset(spec[len(RANDOM_PREFIX):].partition(":")[0])  # random:PRESET[:TOKENIZER_DIR]
    else:
        source, directory = checkpoint_directory(spec, parse_dtype(dtype, torch.device(device_type)), progress)
        spec, config = str(directory), read_config(directory)
    world = int(os.environ["WORLD_SIZE"]) if under_torchrun() else (gpus or 1)
    label = source.name if source else spec
    shard_config(config, world, label)      # a split that cannot work fails before any rank starts
    if _active is not None:
        # Only now that the checkpoint is found and splits: a typo in the REPL's /model stopped the model in use.
        # Unregistered, or the exit hook kept the closed engine (rank 0's part of the old model) alive for good.
        atexit.unregister(_close_at_exit)     # (one group per process: the only one registered)
        _active.close()
        _active = None
    ranks = Ranks.from_torchrun() if under_torchrun() else Ranks.start(world, device_type, follow)
    _active = leader = LeaderEngine(ranks)
    atexit.register(_close_at_exit, leader)
    if progress:
        progress(f"Loading {label} on {ranks.tp.world} {'GPUs' if device_type == 'cuda' else 'processes'}")
    try:
        leader.load(spec=spec, dtype=dtype, attention=attention, max_context=max_context, cuda_graphs=cuda_graphs,
                    kv_cache=kv_cache, past_training=past_training, weights=weights)
    except BaseException:
        leader.close()          # nothing loaded: no reason to keep the ranks
        raise
    if source:      # (the ranks loaded the directory: the user's name and format for it)
        leader.engine.name, leader.engine.checkpoint_format = source.name, checkpoint_format(source, directory)
    return leader


def _close_at_exit(leader: LeaderEngine) -> None:
    try:
        leader.close()
    except KeyboardInterrupt:   # Ctrl-C as the program ends: close stopped the ranks; no traceback at exit
        pass


class LeaderEngine:
    """Rank 0's view of a tensor-parallel Engine: attributes are its own part's, calls run on every rank."""

    def __init__(self, ranks: Ranks):
        self.__dict__.update(ranks=ranks, engine=None, _requests=0, _closed=False)

    @property
    def gpus(self) -> int:
        return self.ranks.tp.world

    def load(self, **kwargs) -> None:
        """load_model(**kwargs) on every rank, each for its own part."""
        self._call(LOAD, kwargs, functools.partial(load_model, tp=self.ranks.tp, **kwargs))

    def close(self, clean: bool = True) -> None:
        """Tell the other ranks to exit and wait for them (clean=False: after an error, just stop them)."""
        if self._closed:
            return
        self.__dict__["_closed"] = True
        try:
            try:
                if clean and self.ranks.failure is None:
                    _broadcast(self.ranks.tp, (self._requests + 1, CLOSE, {}))
            except Exception:   # a broken group: the ranks are stopped regardless
                clean = False
            release(self.engine, wait=clean and self.ranks.failure is None)
            self.ranks.close(clean)
        except KeyboardInterrupt:   # Ctrl-C while the ranks leave (each step is bounded): stop them now instead
            self.ranks.stop()
            raise

    def __getattr__(self, name: str):
        value = getattr(self.__dict__["engine"], name)
        if name.startswith("_") or name in LOCAL or not inspect.ismethod(value):
            return value
        if name in NOT_FOLLOWED:
            raise ModelError(f"{name} is not available with several GPUs: {NOT_FOLLOWED[name]}")

        @functools.wraps(value)
        def followed(*args, **kwargs):
            arguments = inspect.signature(value).bind(*args, **kwargs).arguments
            local, sent = {}, {}
            for key, arg in arguments.items():
                if isinstance(arg, GenerationConfig) and not arg.greedy and arg.seed is None:
                    arg = dataclasses.replace(arg, seed=secrets.randbits(62))   # the same draws on every rank
                if key == "should_stop" and arg is not None:
                    local[key], sent[key] = _leader_poll(self.ranks.tp, arg), True
                elif callable(arg):
                    local[key], sent[key] = arg, None      # output callbacks (on_text) stay here
                else:
                    local[key] = sent[key] = arg
            return self._call(name, sent, functools.partial(value, **local))
        return followed

    def __setattr__(self, name: str, value) -> None:
        self._call(SET, {"name": name, "value": value}, functools.partial(setattr, self.engine, name, value))

    def _call(self, method: str, sent: dict, run):
        """Send the call to the other ranks, run it here, and check that every rank ended alike."""
        if self._closed:
            raise RankFailed(self.ranks.failure or "the tensor-parallel ranks were stopped; load the model again")
        self.__dict__["_requests"] = request = self._requests + 1
        error = None
        try:
            _broadcast(self.ranks.tp, (request, method, sent))
            result = run()
        except REQUEST_ERRORS as e:
            error, result = e, None
        except BaseException as e:
            failure = self.ranks.failure_behind(e)
            self.close(clean=False)
            if failure:
                raise RankFailed(failure) from None
            raise
        if method == LOAD and error is None:
            self.__dict__["engine"] = result
        self._check_reports(request, method, error)
        if error is not None:
            raise error
        return result

    def _check_reports(self, request: int, method: str, error: BaseException | None) -> None:
        tp = self.ranks.tp
        keys = [_report_key(request, rank) for rank in range(1, tp.world)]
        deadline = time.monotonic() + REPORT_TIMEOUT_S.get(method, DEFAULT_REPORT_TIMEOUT_S)
        while keys and not tp.store.check(keys):
            if self.ranks.failure or time.monotonic() > deadline:
                failure = self.ranks.failure or (
                    f"another rank did not finish {method} within {REPORT_TIMEOUT_S.get(method, DEFAULT_REPORT_TIMEOUT_S):.0f} s "
                    f"of rank 0{f' (rank 0: {error})' if error else ''}")
                self.close(clean=False)
                raise RankFailed(failure)
            time.sleep(0.001)
        for rank, key in enumerate(keys, start=1):
            report = tp.store.get(key).decode()
            tp.store.delete_key(key)
            if bool(report) != (error is not None):   # one rank failed where another went on: out of step
                self.close(clean=False)
                raise RankFailed(f"rank {rank} failed: {report}" if report else
                                 f"rank 0 failed ({error}) where rank {rank} did not")


def follow(tp: TensorParallel) -> None:
    """A rank other than 0: make each call rank 0 sends on this rank's engine, until it says close.

    Request errors are reported and the loop goes on; any other exception ends the process, which rank 0
    hears of (torch.multiprocessing, or torchrun).
    """
    engine = None
    try:
        while True:
            request, method, kwargs = _receive(tp)
            if method == CLOSE:
                release(engine, wait=True)
                return
            engine = _follow_one(tp, engine, request, method, kwargs)
    except BaseException:
        release(engine, wait=False)     # this rank's error ends its process: the graphs go first
        raise


def _follow_one(tp: TensorParallel, engine, request: int, method: str, kwargs: dict):
    """One call from rank 0 on this rank's engine, and its report; returns the engine (a load makes it)."""
    report = ""
    try:
        if method == LOAD:
            engine = load_model(**kwargs, tp=tp)
        elif method == SET:
            setattr(engine, kwargs["name"], kwargs["value"])
        else:
            if kwargs.get("should_stop"):
                kwargs["should_stop"] = _follower_poll(tp)
            getattr(engine, method)(**kwargs)
    except REQUEST_ERRORS as e:
        report = f"{type(e).__name__}: {e}".splitlines()[0] or type(e).__name__
    tp.store.set(_report_key(request, tp.rank), report)
    return engine


def release(engine, wait: bool) -> None:
    """Before a rank leaves its group: destroy the engine's CUDA graphs (they hold NCCL's communicator),
    after its kernels finish (wait=True; after a failure they may wait for a rank that is gone)."""
    if engine is None:
        return
    if wait and engine.device == "cuda":
        torch.cuda.synchronize()
    engine.release_graphs()


def follow_under_torchrun() -> int:
    """What ranks other than 0 do under torchrun (the app sends them here before anything else)."""
    ranks = Ranks.from_torchrun()
    follow(ranks.tp)        # an error ends this process, and torchrun stops the others
    ranks.close()
    return 0


# ---- the channel: requests and stop flags over the gloo control group, reports through the store ----

def _broadcast(tp: TensorParallel, request: tuple) -> None:
    """Rank 0's side, bounded: a gloo send waits for each receiver, and a hung rank held rank 0 here for the
    control group's timeout (a year: the others wait for requests as long as the user does)."""
    data = torch.frombuffer(bytearray(pickle.dumps(request)), dtype=torch.uint8)            # (n,)
    _bounded(dist.broadcast(torch.tensor([data.numel()]), src=0, group=tp.control, async_op=True))
    _bounded(dist.broadcast(data, src=0, group=tp.control, async_op=True))


def _receive(tp: TensorParallel) -> tuple:
    size = torch.zeros(1, dtype=torch.long)
    dist.broadcast(size, src=0, group=tp.control)
    data = torch.empty(int(size), dtype=torch.uint8)                                         # (n,)
    dist.broadcast(data, src=0, group=tp.control)
    return pickle.loads(data.numpy().tobytes())


def _bounded(work) -> None:
    """Wait for rank 0's send to the others within `collective_timeout` (RuntimeError "Operation timed out!")."""
    work.wait(timeout=collective_timeout())


def _report_key(request: int, rank: int) -> str:
    return f"codecomplete/report/{request}/{rank}"


def _leader_poll(tp: TensorParallel, should_stop):
    """should_stop for rank 0: ask it, and tell the others the answer (every rank polls at the same points)."""
    def poll() -> bool:
        flag = torch.tensor([1 if should_stop() else 0], dtype=torch.uint8)
        _bounded(dist.broadcast(flag, src=0, group=tp.control, async_op=True))
        return bool(flag.item())
    return poll


def _follower_poll(tp: TensorParallel):
    def poll() -> bool:
        flag = torch.zeros(1, dtype=torch.uint8)
        dist.broadcast(flag, src=0, group=tp.control)
        return bool(flag.item())
    return poll
