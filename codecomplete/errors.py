"""Exit codes, the one-line message every failure becomes (and --json's error object), and text made safe to show.

The contract (../shared/DESIGN.md): 0 success, 1 runtime failure, 2 usage or input error,
130 interrupted, 141 closed pipe. Errors are one line on stderr; tracebacks only with --debug.
"""
from __future__ import annotations

import codecs
import errno
import os
import re
import select
import sys
from enum import IntEnum

# The error handler for text written out: file names that are not UTF-8 reach Python as lone surrogates,
# and each is written as U+FFFD rather than failing the command (or becoming a bare "?").
UNENCODABLE = "codecomplete-replace"


def _replace_unencodable(error: UnicodeEncodeError) -> tuple[bytes, int]:
    count = error.end - error.start
    try:                # bytes: the UTF-8 codec takes only ASCII text from a handler
        return ("\ufffd" * count).encode(error.encoding), error.end
    except UnicodeEncodeError:      # an ASCII terminal
        return b"?" * count, error.end


codecs.register_error(UNENCODABLE, _replace_unencodable)


def write_utf8(stream, text: str) -> None:
    """Write and flush text in UTF-8 whatever the stream's encoding: for JSON, which programs exchange in UTF-8 only
    (RFC 8259). A locale's stdout in Latin-1 wrote "é" as a byte no JSON reader takes, in ASCII as "?"."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None or codecs.lookup(getattr(stream, "encoding", None) or "utf-8").name == "utf-8":
        stream.write(text)
        stream.flush()
        return
    stream.flush()      # (what the stream holds goes first)
    buffer.write(text.encode("utf-8", UNENCODABLE))
    buffer.flush()

# Terminal control characters (C0 but tab and newline, DEL, C1) as visible escapes. A file name, a file's text or the
# model's output that reaches a terminal must not drive it: ESC starts sequences that retitle the window, clear the
# screen, or (OSC 52) write the clipboard. rich drops a few controls (BEL, BS, CR...) but passes ESC through.
_VISIBLE = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0b, 0x20), 0x7f, *range(0x80, 0xa0))}
# Bidirectional embeddings, overrides and isolates too: they reorder what the terminal shows ("Trojan Source"), so a
# line the model copied could read as other code than it is. The marks (LRM, RLM) stay, which RTL text uses.
_VISIBLE |= {c: f"\\u{c:04x}" for c in (*range(0x202a, 0x202f), *range(0x2066, 0x206a))}


def printable(text: str) -> str:
    """`text` as a terminal may show it: control characters but tab and newline written as `\\x1b` and the like,
    bidirectional overrides as `\\u202e`."""
    return text.translate(_VISIBLE)


LONG_WORD = 160            # characters of one word (a path) a message shows whole; longer, its start and end
_LONG = re.compile(rf"\S{{{LONG_WORD + 1},}}")
_LINE_BREAKS = {ord("\n"): "\\n", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def one_line(message: str) -> str:
    """`message` as the one line every error and warning is, in the CLI, the REPL and the server's log: a word past
    LONG_WORD characters (a path 5,000 long, said twice) cut to its start and end around `…`, newlines written `\\n`
    (a file name may hold one) and other control characters as printable() writes them, the Unicode line and paragraph
    separators as `\\u2028` (an editor or a log reader splits lines there)."""
    half = LONG_WORD // 2
    shortened = _LONG.sub(lambda word: f"{word[0][:half]}…{word[0][-half:]}", message)
    return printable(shortened).translate(_LINE_BREAKS)


def say(line: str, patience_s: float = 0.0) -> None:
    """One line on stderr (`one_line`'s), which may be a pipe nobody reads any more, one nobody drains, a terminal
    hung up or a full disk: then the line is dropped, never waited for (past `patience_s`) nor an exception (a
    server's engine thread, which logs each request, ended at the first such line, or waited at it for good, and
    served no more). A reader gone for good (a closed pipe, a hung-up terminal): stderr becomes /dev/null, so that
    the lines after it, and the flush at exit, do not fail again."""
    try:
        write_or_drop(sys.stderr, one_line(line) + "\n", patience_s)
    except OSError as exc:
        if exc.errno in (errno.EPIPE, errno.EIO):
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stderr.fileno())
                os.close(devnull)
            except (OSError, ValueError):
                pass
    except ValueError:                  # stderr closed by the program itself
        pass


# Characters written at a time by `write_or_drop`: room for a pipe's PIPE_BUF bytes (4,096 on Linux, 512 on macOS) is
# what `select` promises, and a character takes up to 10 bytes (`\U0001f600`, backslash-replaced for an ASCII stream).
_PIECE = max(1, select.PIPE_BUF // 16) if hasattr(select, "PIPE_BUF") else 256


def write_or_drop(stream, text: str, patience_s: float = 0.0) -> None:
    """`text` on `stream`, a piece at a time while each is taken at once (`would_wait`; the first within
    `patience_s`); the rest dropped where one is not. A record longer than a pipe's free page (a traceback) waited at
    its second page for good where the pipe's reader never drains it, though `select` said there was room."""
    for start in range(0, len(text), _PIECE):
        if would_wait(stream, patience_s if start == 0 else 0.0):
            return
        stream.write(text[start:start + _PIECE])
        stream.flush()


def would_wait(stream, timeout_s: float = 0.0) -> bool:
    """Whether a line written to `stream` now (or within `timeout_s`) would wait: a pipe full because its reader
    reads none of it (a parent that spawned the program with pipes and reads only stdout). A line of a log is worth
    less than the work that writes it. (Not asked on Windows, whose select takes sockets only; nor of a stream
    without a descriptor.)"""
    if sys.platform == "win32":
        return False
    try:
        descriptor = stream.fileno()
        return not select.select([], [descriptor], [], timeout_s)[1]
    except (AttributeError, OSError, ValueError):    # (io.UnsupportedOperation: a test's capture)
        return False


def not_a_number(result) -> str:
    """What to say of a GenerationResult whose answer the model ended with NaN or inf logits (`not_a_number`)."""
    return (f"the model's output was not a number (NaN or inf) at token {result.token_counts()[1]} of the answer: "
            f"the answer ends there, unfinished")


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1          # the model, memory, anything at run time
    USAGE = 2            # bad arguments or input: missing repo/file, position out of range
    INTERRUPTED = 130    # 128 + SIGINT, what a shell reports for Ctrl-C
    PIPE_CLOSED = 141    # 128 + SIGPIPE: the reader went away, as `cat | head` ends
    HUNG_UP = 129        # 128 + SIGHUP
    TERMINATED = 143     # 128 + SIGTERM: `kill`, an editor's timeout


class Cancelled(KeyboardInterrupt):
    """Ctrl-C ended a generation whose (partial) result is already out: exit 130 with nothing more to write."""


class Stopped(SystemExit):
    """SIGTERM or SIGHUP: the run unwinds as an exit with 128 + the signal's number (`finally` blocks clean up)."""


class AppError(Exception):
    """A failure the app explains itself; the message is shown as it is."""

    code = ExitCode.FAILURE


class UsageError(AppError):
    code = ExitCode.USAGE


BUDGET_OPTIONS = "--context-tokens sets the prompt budget, --max-tokens the tokens generated after it"


ERROR_TYPES = {ExitCode.USAGE: "usage", ExitCode.FAILURE: "failure", ExitCode.INTERRUPTED: "interrupted",
               ExitCode.PIPE_CLOSED: "pipe_closed", ExitCode.HUNG_UP: "interrupted", ExitCode.TERMINATED: "interrupted"}


def error_json(code: ExitCode, message: str, internal: bool = False) -> dict:
    """What --json writes in place of the result when the command fails: the server's error shape, with the exit
    code as its code."""
    return {"error": {"code": int(code), "message": one_line(message),
                      "type": "internal" if internal else ERROR_TYPES.get(code, "failure")}}


# torch's CPU allocator reports running out of memory as a plain RuntimeError (torch.OutOfMemoryError is CUDA's).
CPU_ALLOCATOR_FAILED = "DefaultCPUAllocator: can't allocate memory"


def classify(exc: BaseException, options: bool = True) -> tuple[ExitCode, str] | None:
    """The exit code and message for an expected failure; None for a bug. `options`: the message may name the
    command-line options that would help (not for the server's clients, which have none).

    prompts and models are imported lazily, so an exception can only be theirs
    when they are already in sys.modules: looking there keeps start-up free of torch.
    """
    if isinstance(exc, AppError):
        return exc.code, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted"
    prompts = sys.modules.get("prompts")
    if prompts is not None and isinstance(exc, prompts.BudgetError):
        return ExitCode.USAGE, f"{exc}: {BUDGET_OPTIONS}" if options else str(exc)
    if prompts is not None and isinstance(exc, prompts.PromptError):
        return ExitCode.USAGE, str(exc)
    if prompts is not None and isinstance(exc, prompts.ChatTemplateError):
        return ExitCode.FAILURE, str(exc)      # the model's files, as a model that cannot load
    models = sys.modules.get("models")
    if models is not None:
        if isinstance(exc, (models.ModelNotFoundError, models.SettingError, models.MismatchError)):
            return ExitCode.USAGE, str(exc)      # a path the user typed, a setting they made, an option or files unfit
        if isinstance(exc, models.ContextTooLongError):
            return ExitCode.USAGE, f"{exc}: {BUDGET_OPTIONS}" if options else str(exc)
        if isinstance(exc, models.ModelError):
            return ExitCode.FAILURE, str(exc)
    hidden = hidden_kernels(exc)
    if hidden is not None:
        return ExitCode.FAILURE, hidden
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):     # (CUDA's)
        return ExitCode.FAILURE, "out of memory: try a smaller --context-tokens" if options else "out of memory"
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and CPU_ALLOCATOR_FAILED in str(exc)):
        limit = _memory_limit()
        advice = "try a smaller --context-tokens" if options else ""
        if limit:       # (a limit the user set is the likelier cause: the model's load alone can pass it)
            advice = f"{limit}; raise it, or {advice}" if advice else limit
        return ExitCode.FAILURE, f"out of memory: {advice}" if advice else "out of memory"
    return None


def _memory_limit() -> str:
    """The limit on this process's memory where one is set (`ulimit -v` or `-d`, a container's RLIMIT_AS), said for
    an out-of-memory error; "" where none is (or on Windows)."""
    try:
        import resource
    except ImportError:
        return ""
    for name, option in (("RLIMIT_AS", "ulimit -v"), ("RLIMIT_DATA", "ulimit -d")):
        soft = resource.getrlimit(getattr(resource, name))[0]
        if soft != resource.RLIM_INFINITY:
            return f"this process may map at most {soft / 2**30:.1f} GiB ({option} {soft // 1024})"
    return ""


def hidden_kernels(exc: BaseException) -> str | None:
    """What to say when `exc` is an import of our `kernels` package that found another distribution's package of that
    name first (Hugging Face's `kernels`, which transformers 5.25 and later install: its top-level `kernels` and ours
    cannot share one environment); None for any other failure, an import error inside our own kernels included."""
    if not isinstance(exc, ImportError) or (exc.name or "").partition(".")[0] != "kernels":
        return None
    found = sys.modules.get("kernels")
    if found is None or getattr(found, "DISTRIBUTION", None) == "codecomplete":
        return None
    where = getattr(found, "__file__", None) or ", ".join(getattr(found, "__path__", [])) or "?"
    return (f"another package named 'kernels' ({where}) hides codecomplete's own (Hugging Face's `kernels`, which "
            "transformers 5.25 and later install, is one): install codecomplete in a virtual environment of its own, "
            "or `pip uninstall kernels` in this one")
