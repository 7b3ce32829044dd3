"""Ctrl-C during generation: a flag the engine polls, not an exception.

The engine polls `should_stop` between the prefill's layers (on a GPU, those of 1,024 new tokens or more) and
between tokens, so a cancelled answer ends cleanly with the text so far (none during the prefill) and a consistent
KV cache (the REPL keeps the conversation going). A second Ctrl-C raises KeyboardInterrupt as usual, for when the first
seems ignored.
"""
from __future__ import annotations

import signal
import threading


class _SigintHandled:
    """Ctrl-C handled by `_on_sigint` inside the `with` block, the handler before restored after. Signal handlers can
    only be set from the main thread; elsewhere Ctrl-C keeps its default meaning and `_on_sigint` never runs, as
    where SIGINT is ignored."""

    def __init__(self) -> None:
        self._previous = None

    def __enter__(self):
        # An ignored SIGINT stays ignored: a shell starts a background job so, for Ctrl-C to end the script, not it.
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN):
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum, frame) -> None:
        raise NotImplementedError


class InterruptsDeferred(_SigintHandled):
    """`with InterruptsDeferred(): import torch ...`: a Ctrl-C while native extensions load is held until they are
    in, then raised as KeyboardInterrupt. Raised inside an extension's initialisation it can abort the whole process
    (SIGABRT from a C++ exception that nothing catches) instead of ending it with the usual exit code."""

    def __init__(self) -> None:
        super().__init__()
        self.pending = False

    def __exit__(self, exc_type, *rest) -> None:
        super().__exit__(exc_type, *rest)
        if self.pending and exc_type is None:
            raise KeyboardInterrupt

    def _on_sigint(self, signum, frame) -> None:
        self.pending = True


class InterruptsDropped(_SigintHandled):
    """`with InterruptsDropped(): session.prompt(...)`: a Ctrl-C inside the block that nothing else handles is
    dropped. prompt-toolkit handles SIGINT itself (a key: the line cleared) only once its event loop runs, and puts
    the handler before back as it ends; raised while it made that loop, the KeyboardInterrupt left a half-made loop
    whose finalizer printed a traceback."""

    def _on_sigint(self, signum, frame) -> None:
        pass


class CancelOnSigint(_SigintHandled):
    """`with CancelOnSigint() as cancel: engine.generate(..., should_stop=cancel)`."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = False

    def __call__(self) -> bool:
        return self.cancelled

    def _on_sigint(self, signum, frame) -> None:
        if self.cancelled:
            raise KeyboardInterrupt
        self.cancelled = True
