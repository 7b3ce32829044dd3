"""`codecomplete REPO --file PATH [--line N --col M] [--stdin]`: an inline suggestion at a cursor."""
from __future__ import annotations

from pathlib import Path

from rich.text import Text

from prompts.scan import MAX_BUFFER_BYTES, SNIFF_BYTES, decode_source, read_regular_file, unix_newlines

from . import client, engines, render, workspace
from .errors import UsageError, one_line
from .session import open_session
from .workspace import read_stdin

DEFAULT_MAX_TOKENS = 64     # a suggestion is a few lines; more is a chat answer


def cursor(text: str, line: int | None, col: int | None) -> tuple[int, int]:
    """The 1-based (line, col) of the cursor, checked against the buffer.

    No line means the end of the file, no column the end of the line. The column counts
    characters and may be one past the last (the cursor at the end of the line). The same
    rules as prompts' own check, run here before the model loads, so a typo fails at once.
    """
    lines = unix_newlines(text).split("\n")
    if line is None:
        return len(lines), len(lines[-1]) + 1
    if line > len(lines):
        raise UsageError(f"line {line} is out of range: the buffer has {len(lines)} line{'s' * (len(lines) != 1)}")
    width = len(lines[line - 1]) + 1
    if col is None:
        return line, width
    if col > width:
        raise UsageError(f"column {col} is out of range: line {line} has {width - 1} "
                         f"character{'s' * (width - 1 != 1)}")
    return line, col


def line_start(text: str, line: int, col: int) -> str:
    """The cursor's line before the cursor (1-based, as `cursor` checked them), as prompts reads the buffer."""
    return unix_newlines(text).split("\n")[line - 1][:col - 1]


def _read(path: Path) -> str:
    try:
        data = read_regular_file(path, MAX_BUFFER_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if data is None:            # swapped for a FIFO or device since it was checked
        raise UsageError(f"{path} is not a regular file")
    if len(data) > MAX_BUFFER_BYTES:
        raise UsageError(f"{path} is over {MAX_BUFFER_BYTES // 2 ** 20} MiB: not a file to complete in")
    return decode_source(data)  # as the index reads a file (UTF-8, or UTF-16 with a byte-order mark)


def run_complete(args) -> None:
    root = workspace.repository(args.repo)
    path = workspace.file_in(root, args.file, must_exist=not args.stdin)
    text = read_stdin() if args.stdin else None
    buffer = _read(root / path) if text is None else text
    if "\0" in buffer[:SNIFF_BYTES]:       # as the index decides: a binary file has nothing to complete
        raise UsageError(f"{path} looks binary (a NUL byte near its start): nothing to complete")
    line, col = cursor(buffer, args.line, args.col)

    max_new = args.max_tokens or DEFAULT_MAX_TOKENS
    # (a new project's first file: the buffer is the text to complete, whatever the repository holds yet)
    session = client.connect(args, root, max_new, file=path) or open_session(args, root, max_new, allow_empty=True)
    generation = session.complete(path, text=text, line=line, col=col, sampling=engines.sampling(args, max_new))
    packed = generation.prompt
    # (the header and the live line count the prompt as the summary line below the answer does: render.LiveView)
    view = render.choose_view(args, render.code_body(path), info=render.model_label(generation.engine),
                              prompt_tokens=len(packed.ids),
                              header=lambda tokens: _summary(f"{path}:{line}:{col}", packed, tokens=tokens))
    result = engines.generate(generation, view, stop_repeats=True, line_start=line_start(buffer, line, col),
                              line_end=packed.line_end)
    if args.json:
        render.emit_json(args.json, render.result_json("completion", result, generation.engine, packed.context))
    engines.exit_if_cancelled(result)


def _summary(where: str, packed, shown: int = 4, tokens: int | None = None) -> Text:
    """`pkg/a.py:40:1 · 1,834 prompt tokens (left-to-right) · context: b.py:1-40, c.py:3-9, +2 more` (`tokens`: the
    prompt's size as the result counts it, the healed token's rewriting included; None: the ids built)"""
    items = [f"{item.path}:{item.start_line}-{item.end_line}" for item in packed.context]
    more = f", +{len(items) - shown} more" if len(items) > shown else ""
    context = f" · context: {', '.join(items[:shown])}{more}" if items else ""
    # one_line: a file name may hold a newline, which broke the one line in two
    tokens = len(packed.ids) if tokens is None else tokens
    return Text(one_line(f"{where} · {tokens:,} prompt tokens ({packed.format}){context}"), style="dim")
