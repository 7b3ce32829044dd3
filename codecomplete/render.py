"""How results look: live in a terminal, bare text in a pipe, or one JSON object.

Three views share one small interface (`on_text`, `closed`, `finish`), so a command streams
generation the same way whatever stdout is:
- LiveView: stdout is a terminal. The text streams in (highlighted code or Markdown) above a
  status line with the live tokens/s; when it ends, the whole text is printed once so the
  scrollback holds it in full.
- PlainView: stdout is a pipe or a file (an editor). Only the generated text, flushed per
  token; a reader that goes away (`| head -c 10`) stops generation instead of crashing it.
- QuietView: the JSON object takes stdout, so nothing streams.
Status, progress and warnings go to stderr, and only when it is a terminal: editors capture
stderr (Vim's system() mixes it into the text it inserts), so there it carries errors only. rich itself honours
NO_COLOR and TERM=dumb; FORCE_COLOR and TTY_COMPATIBLE may colour stderr, never stdout when it is not a terminal.
"""
from __future__ import annotations

import errno
import json
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from typing import Callable, Iterator

from markdown_it import MarkdownIt
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.segment import Segment
from rich.spinner import Spinner
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from .errors import UNENCODABLE, AppError, one_line, printable, say, write_utf8

CODE_THEME = "monokai"
LOG_AFTER_S = 5.0     # a load's step that has taken this long is said in a server's log (`status`)
# The most columns and lines a terminal is taken to have: COLUMNS=10000000 padded every live frame to 60 MB.
MAX_COLUMNS, MAX_LINES = 1000, 1000


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich's own exits with status 1, silently (`--bench | head` ended 1 with no word on stderr): the reader went
        # away, which the command line reports as 141, like any filter.
        self.quiet = True
        raise BrokenPipeError


def stdout_console() -> Console:
    # Whether stdout is a terminal is asked of stdout itself: FORCE_COLOR and TTY_COMPATIBLE would make rich
    # draw the live view and colour into a pipe, where an editor expects the completion alone.
    return _Console(highlight=False, force_terminal=stdout_is_terminal(), _environ=_environment())


def stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):    # closed, or replaced by something without a descriptor
        return False


def stderr_console() -> Console:
    return _Console(stderr=True, highlight=False, _environ=_environment())


def _live_on_stderr(console: Console) -> bool:
    """Whether a live display (spinner, progress bar) may redraw itself on stderr: only on a terminal. FORCE_COLOR
    and TTY_COMPATIBLE make rich take a log file for one, where its frames are kilobytes of noise; colour stays."""
    try:
        return console.is_terminal and sys.stderr.isatty()
    except (AttributeError, ValueError):    # closed, or replaced by something without a descriptor
        return False


def _environment() -> dict[str, str]:
    """The environment rich reads, less a COLUMNS or LINES of 0 (some shells and CI runners export them so): rich
    takes a width of 0 as it is and prints nothing at all, no answer, no error. Without them it asks the terminal.
    A size past MAX_COLUMNS or MAX_LINES is taken as that: rich pads every line it draws to the width."""
    environ = dict(os.environ)
    for name, most in (("COLUMNS", MAX_COLUMNS), ("LINES", MAX_LINES)):
        if environ.get(name, "").isdigit():
            size = int(environ.pop(name))
            if size:
                environ[name] = str(min(size, most))
    return environ


def warn(message: str) -> None:
    console = stderr_console()
    if console.is_terminal:
        console.print(Text(f"warning: {one_line(message)}", style="yellow"))


@contextmanager
def status(message: str, log: bool = False) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr while something slow runs; yields the callback that updates it. A terminal that draws no
    live display (TERM=dumb) is told the message once, on a line: there a wait of seconds said nothing. Off a
    terminal nothing is drawn, unless `log` (a server's log): then a message still showing after LOG_AFTER_S is a
    log line, so a first start's conversion, or a wait on another process's, is in the log, not minutes of silence
    before "serving"; a quick load (or a usage error found at once) adds nothing to the error's one line."""
    console = stderr_console()
    if not _live_on_stderr(console):
        if not log:
            yield lambda _message: None
        else:
            with _SlowStepLog(message) as update:
                yield update
        return
    if console.is_dumb_terminal:
        _say_once(console, message)
        yield lambda _message: None
        return
    # Text, not markup: messages name files and folders, and a `[` in a name would be read as a style (or fail).
    with console.status(Text(printable(message))) as spinner:
        yield lambda text: spinner.update(Text(printable(text)))


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr; yields the `progress(done, total, description=None)` callback. A terminal that draws
    no live display (TERM=dumb) is told the description once, as by `status`."""
    console = stderr_console()
    if not _live_on_stderr(console):
        yield lambda done, total, description=None: None
        return
    if console.is_dumb_terminal:
        _say_once(console, description)
        yield lambda done, total, description=None: None
        return
    # Descriptions name the repository: shown as text, never read as markup.
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(printable(description), total=None)
        yield lambda done, total, description=None: bar.update(
            task, completed=done, total=total, description=printable(description or bar.tasks[0].description))


def _say_once(console: Console, message: str) -> None:
    """What a live display would show, on one dim line: a dumb terminal shows no redraws (nor escape codes)."""
    console.print(Text(printable(message), style="dim"))


# Bodies: how the text of each kind of result is drawn in a terminal.

class _SlowStepLog:
    """`status`'s log off a terminal: each message that is still the current one LOG_AFTER_S after it was set is
    said once, as a log line (a sentence's capital lowered, a file name's kept)."""

    def __init__(self, message: str) -> None:
        self.lock, self.timer, self.current = threading.Lock(), None, None
        self(message)

    def __call__(self, text: str) -> None:
        with self.lock:
            if text == self.current:
                return
            if self.timer is not None:
                self.timer.cancel()
            self.current, self.timer = text, threading.Timer(LOG_AFTER_S, self._say, (text,))
            self.timer.daemon = True
            self.timer.start()

    def _say(self, text: str) -> None:
        with self.lock:
            if text != self.current or self.timer is None:
                return
            first = text.split(" ", 1)[0]
            say(f"codecomplete: {text[:1].lower() + text[1:] if first.isalpha() and first.istitle() else text}")

    def __enter__(self) -> _SlowStepLog:
        return self

    def __exit__(self, *_exc) -> None:
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = None


def code_body(path: str) -> Callable[[str], RenderableType]:
    lexer = Syntax.guess_lexer(path)
    return lambda text: Syntax(text, lexer, theme=CODE_THEME, word_wrap=True, background_color="default")


# HTML read as text: rich drops the HTML it parses, so an answer's `List<String>` showed as `List` and an HTML
# example outside a code block vanished. (What follows `<` in code is code, not markup to render.)
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable(["strikethrough", "table"])


def markdown_body(text: str) -> RenderableType:
    # Links show their address beside their text: as terminal hyperlinks (OSC 8) a link the model copied from a
    # file could read https://docs.python.org and open another address.
    markdown = Markdown("", code_theme=CODE_THEME, hyperlinks=False)    # parsed once, below, by _MARKDOWN
    markdown.markup, markdown.parsed = text, _MARKDOWN.parse(text)
    _printable_tokens(markdown.parsed)
    return markdown


def _printable_tokens(tokens) -> None:
    """Character references are decoded in parsing, after printable() saw the text: `&#x202e;` became a bidi override
    (markdown-it itself turns control characters' references into U+FFFD)."""
    for token in tokens:
        token.content = printable(token.content)
        _printable_tokens(token.children or ())


def text_body(text: str) -> RenderableType:
    return Text(text)


class _Tail:
    """The last lines of a renderable that fit the screen: Live cannot scroll, so a long
    answer would otherwise be cut off at the top of the terminal while it streams."""

    def __init__(self, renderable: RenderableType, reserved_lines: int) -> None:
        self.renderable = renderable
        self.reserved_lines = reserved_lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = console.render_lines(self.renderable, options, pad=False)
        keep = max(1, options.size.height - self.reserved_lines)
        for line in lines[-keep:]:
            yield from line
            yield Segment.line()


def _live_text(text: str, width: int, height: int, markdown: bool) -> str:
    """The end of `text` that fills a screen of `height` lines of `width`, for the live view: rendering the whole
    answer at every frame cost 0.11 s a frame at 18 KB, growing with the answer, on the CPU that decodes it. Whole
    source lines from the end, each taking at least one screen line (and one per `width` characters), at most
    2 * width * height characters (a long line is cut). For Markdown, a code block the cut falls in is opened again,
    or its code would show as text and its closing fence open a block."""
    end, most = len(text), 2 * width * height
    start, lines = end, 0
    while lines < height and start > 0 and end - start < most:
        line_start = text.rfind("\n", max(0, end - most), start - 1) + 1
        if line_start == 0 and end - most > 0:
            line_start = end - most
        lines += max(1, -(-(start - line_start) // width))
        start = line_start
    if not markdown or start == 0:
        return text[start:]
    fence = _open_fence(text[:start])
    return text[start:] if fence is None else f"{fence}\n{text[start:]}"


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})([^\n]*)$", re.MULTILINE)


def _open_fence(text: str) -> str | None:
    """The opening line of the fenced code block `text` ends inside, if it does (CommonMark's fences)."""
    opening = None
    for match in _FENCE.finditer(text):
        mark, rest = match.groups()
        if opening is None:
            if not (mark[0] == "`" and "`" in rest):      # a backtick fence's info string has no backticks
                opening = mark, match.group(0).strip()
        elif mark[0] == opening[0][0] and len(mark) >= len(opening[0]) and not rest.strip():
            opening = None
    return opening[1] if opening else None


class _Meter:
    """Counts the tokens generated as their text streams in, and measures their rate from the first text, the way
    decode tokens/s leaves out prefill. The count is the engine's where it keeps one: a token that ends inside a
    character (the first of a CJK character's or an emoji's) sends no text, so pieces read low. Else a piece a token."""

    def __init__(self) -> None:
        self.count = 0
        self.first: float | None = None
        self.first_count = 0            # the count at the first text
        self.last: float | None = None

    def tick(self, tokens: int | None = None) -> None:
        now = time.perf_counter()
        self.count = tokens if tokens is not None else self.count + 1
        if self.first is None:
            self.first, self.first_count = now, self.count
        self.last = now

    def rate(self) -> float:
        if self.count <= self.first_count or self.last == self.first:
            return 0.0
        return (self.count - self.first_count) / (self.last - self.first)


QUEUED_SHOWN_S = 0.05      # a server's queue wait the closing line says (handing a request over takes a fraction of a ms)


def summary_line(result, engine=None) -> str:
    """`37 tokens · 14.2 tok/s · first token 180 ms · prompt 1,834 (1,700 reused)`; through a server that was busy,
    `first token 91 ms · queued 5.5 s at the server · ...`"""
    timings = result.timings
    prompt_tokens, completion_tokens = result.token_counts()
    # A rate needs two tokens: with none or one, "0.0 tok/s" would say the model stalled when it did not decode.
    parts = [plural(completion_tokens, "token"),
             *([f"{timings.decode_tokens_per_s:.1f} tok/s"] if timings.decode_tokens_per_s else []),
             # Cancelled during the prefill: no first token came, and its time is not 0 ms.
             *([f"first token {_duration(timings.ttft_ms / 1000)}"]
               if result.token_ids or result.finish_reason != "cancelled" else []),
             # The first token's time is the engine's, from taking the request: a server busy with others (an
             # editor's) made it wait before that, seconds that "first token 91 ms" alone would hide.
             *([f"queued {_duration(timings.queued_s)} at the server"] if timings.queued_s >= QUEUED_SHOWN_S else []),
             f"prompt {prompt_tokens:,}"
             + (f" ({result.reused_prefix_tokens:,} reused)" if result.reused_prefix_tokens else "")]
    if timings.drafted_tokens:
        parts.append(speculation(timings))
    if engine is not None:
        parts.append(model_label(engine))
    if result.finish_reason == "cancelled":
        parts.append("cancelled")
    return " · ".join(parts)


def speculation(timings) -> str:
    """`64% of drafts accepted · 2.8 tokens/step`"""
    return f"{100 * timings.acceptance_rate:.0f}% of drafts accepted · {timings.tokens_per_step:.1f} tokens/step"


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def model_label(engine) -> str:
    # The name is a checkpoint's folder or file name: the welcome, the live line and the summary show it as text.
    matmul = getattr(engine, "matmul_dtype", "")      # (a server's engine from before it: the dtype's)
    return printable(f"{engine.name} ({engine.device}, {dtypes_label(engine.dtype, matmul)}, {engine.attention})")


def dtypes_label(dtype: str, matmul_dtype: str | None) -> str:
    """"float32", or "float32, bfloat16 weights" where the projections' weights are in another dtype."""
    return dtype if matmul_dtype in (None, "", dtype) else f"{dtype}, {matmul_dtype} weights"


class LiveView:
    """The answer as it streams, above a status line, then the answer and its summary line. `prompt_tokens`: the
    prompt's size as built, shown as `N {noun} tokens`; `header(N)`: a line shown above the answer (--file's). Both
    count the prompt as the summary line does (GenerationResult.token_counts): the tokens that only wrote a healed
    prompt's last token again are the prompt's, once known (in process, by the first text); the header stays on the
    screen as the result counts it."""

    def __init__(self, console: Console, body: Callable[[str], RenderableType], info: str, *,
                 prompt_tokens: int | None = None, noun: str = "prompt",
                 header: Callable[[int], RenderableType] | None = None) -> None:
        self.console = console
        self.body = body
        self.info = info
        self.prompt_tokens, self.noun, self.header = prompt_tokens, noun, header
        self.closed = False
        self._parts: list[str] = []
        self._meter = _Meter()
        self.progress: Callable[[], object] | None = None    # the engine's running Timings (steps, drafts)
        self._started = time.perf_counter()
        self._live = Live(console=console, get_renderable=self._frame, refresh_per_second=12,
                          transient=True, redirect_stdout=False)

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def __enter__(self) -> "LiveView":
        self._live.start()
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        self._live.stop()
        if exc_type is not None and self.header is not None:
            self.console.print(self.header(self._prompt_count()))
        if exc_type is not None and self.text.strip():
            # Left without a result (a second Ctrl-C mid-answer, a model error): the live view is transient, so what
            # streamed would vanish from the screen; it stays, and the error follows it.
            self.console.print(self.body(_shown(self.text)))

    def on_text(self, delta: str) -> None:
        self._parts.append(delta)
        running = self.progress() if self.progress else None
        self._meter.tick(None if running is None else 1 + running.decode_steps + running.accepted_tokens)

    def _healing_tokens(self) -> int:
        """The tokens generated so far that only wrote the healed text again (0 before the first text, or unknown)."""
        running = self.progress() if self.progress and self._meter.count else None
        return getattr(running, "healing_tokens", 0) if running is not None else 0

    def _prompt_count(self) -> int:
        return (self.prompt_tokens or 0) + self._healing_tokens()

    def _frame(self) -> RenderableType:
        meter = self._meter
        if meter.count:
            rate = meter.rate()
            progress = (f"{rate:.1f} tok/s · " if rate else "") + plural(meter.count - self._healing_tokens(), "token")
            running = self.progress() if self.progress else None
            if running is not None and running.drafted_tokens:
                progress += f" · {speculation(running)}"
        else:               # prefill: the prompt is read before the first token comes
            progress = f"reading the prompt {_duration(time.perf_counter() - self._started)}"
        size = f"{self._prompt_count():,} {self.noun} tokens · " if self.prompt_tokens is not None else ""
        line = Table.grid(padding=(0, 1))
        line.add_row(Spinner("dots", style="cyan"), Text(f"{progress} · {size}{self.info}", style="dim"))
        width, height = self.console.size
        shown = _live_text(self.text, width, height, markdown=self.body is markdown_body)
        if self.header is None:
            return Group(_Tail(self.body(_shown(shown)), reserved_lines=2), line)
        header = self.header(self._prompt_count())
        lines = len(self.console.render_lines(header, self.console.options, pad=False))
        return Group(header, _Tail(self.body(_shown(shown)), reserved_lines=2 + lines), line)

    def finish(self, result, engine) -> None:
        self._live.stop()
        if self.header is not None:
            self.console.print(self.header(result.token_counts()[0]))
        if result.text.strip():
            self.console.print(self.body(_shown(result.text)))
        else:
            self.console.print(Text("(nothing generated)", style="dim italic"))
        self.console.print(Text(summary_line(result, engine), style="dim"))


def _shown(text: str) -> str:
    """Generated text as a terminal shows it: it may copy a file's escape sequences, which must not reach the
    terminal as such (a pipe gets the text as it is: an editor inserts exactly what the model wrote)."""
    return printable(text.replace("\r\n", "\n"))


class PlainView:
    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.closed = False

    def __enter__(self) -> "PlainView":
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def on_text(self, delta: str) -> None:
        if self.closed:
            return
        try:
            write_out(self.stream, delta)
        except BrokenPipeError:
            self.closed = True     # the engine's should_stop sees it and ends generation

    def finish(self, result, engine) -> None:
        # Editors insert stdout as it is: no newline is added that the model did not write.
        pass


def write_out(stream, text: str, utf8: bool = False) -> None:
    """Write and flush (`utf8`: in UTF-8 whatever the stream's encoding). A full disk (`> /dev/full`) or a terminal
    gone is said as such, not as an internal error; a closed pipe stays BrokenPipeError (the reader went away: 141,
    quietly)."""
    try:
        if utf8:
            write_utf8(stream, text)
        else:
            stream.write(text)
            stream.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        if sys.platform == "win32" and exc.errno == errno.EINVAL:
            raise BrokenPipeError from None     # how Windows says a pipe's reader went away (`| more` quit early)
        raise AppError(f"cannot write the output: {exc.strerror or exc}") from None


class QuietView(PlainView):
    def on_text(self, delta: str) -> None:
        pass


def choose_view(args, body: Callable[[str], RenderableType], info: str, **live):
    """The view for this command line: JSON on stdout silences streaming; a terminal gets it live (`live`: the
    LiveView's prompt_tokens, noun and header)."""
    if args.json == "-":
        return QuietView()
    console = stdout_console()
    if console.is_terminal:
        return LiveView(console, body, info, **live)
    return PlainView()


def context_table(items) -> Table:
    """What the prompt carried: one row per chunk, its lines, tokens and form (whole, outline, brief)."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("file")
    table.add_column("lines", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("form")
    for item in items:
        # A cell given as a str is rich markup: a file named `a[/]b.py` failed /context, `[link=URL]x[/link].py`
        # became a hyperlink. The path is Text, shown as it is named, on one line (a newline in it as `\n`: as two rows
        # it read as two files).
        table.add_row(Text(one_line(item.path)), f"{item.start_line}-{item.end_line}", f"{item.tokens:,}", item.form)
    return table


def result_json(text_key: str, result, engine, context=()) -> dict:
    """The object DESIGN.md fixes, plus finish_reason, not_a_number, prefix reuse and each context item's form. The tokens that
    only made the healed text again are the prompt's, as the server counts them (GenerationResult.token_counts):
    `--max-tokens 3` after a healed prompt reported 5 completion tokens."""
    prompt_tokens, completion_tokens = result.token_counts()
    return {
        text_key: result.text,
        "tokens": list(result.token_ids[result.healing_tokens:]),
        "model": engine.name,
        "device": engine.device,
        "attention": engine.attention,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "reused_prefix_tokens": result.reused_prefix_tokens,
        "finish_reason": result.finish_reason,
        "not_a_number": result.not_a_number,   # the model's logits were NaN or inf where it ended (stderr warns too)
        "context": [{"path": item.path, "start_line": item.start_line, "end_line": item.end_line,
                     "tokens": item.tokens, "form": item.form,
                     "lines": "buffer" if item.buffer else "disk"} for item in context],
        "timings": asdict(result.timings),
    }


def emit_json(destination: str, obj: dict) -> None:
    """`--json` alone prints one line to stdout (JSON Lines, for jq and scripts);
    `--json FILE` writes FILE, indented for people."""
    if destination == "-":
        write_out(sys.stdout, json.dumps(obj, ensure_ascii=False) + "\n", utf8=True)
        return
    try:
        with open(destination, "w", encoding="utf-8", errors=UNENCODABLE) as f:
            f.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise AppError(f"cannot write {destination}: {exc.strerror}") from None
