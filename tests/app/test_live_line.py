"""The terminal's live status line and summary show speculative decoding's acceptance."""
import io

import pytest
from rich.console import Console

from codecomplete import render
from models import GenerationResult, Timings


def test_the_live_line_and_the_summary_show_the_acceptance_rate():
    console = Console(file=io.StringIO(), width=120, force_terminal=True)
    view = render.LiveView(console, render.text_body, info="model")
    running = Timings(drafted_tokens=40, accepted_tokens=26, decode_steps=20)
    view.progress = lambda: running
    view.on_text("def f")
    view.on_text("(x):")
    console.print(view._frame())
    line = console.file.getvalue()
    assert "65% of drafts accepted" in line and "2.3 tokens/step" in line
    result = GenerationResult("def f(x):", [1] * 47, 10, 0, "length", running)
    assert "65% of drafts accepted · 2.3 tokens/step" in render.summary_line(result)
    # Plain decoding says nothing about drafts.
    running.drafted_tokens = running.accepted_tokens = 0
    plain = Console(file=io.StringIO(), width=120, force_terminal=True)
    plain.print(view._frame())
    assert "drafts" not in plain.file.getvalue()
    assert "drafts" not in render.summary_line(GenerationResult("x", [1], 1, 0, "length", Timings()))


HOSTILE = "\x1b]52;c;cm0gLXJmIH4K\x1b\\\x1b[2J\x9b31m"      # OSC 52 (write the clipboard), clear screen, 8-bit CSI


def test_escape_sequences_from_files_or_the_model_never_reach_a_terminal(monkeypatch, capsys):
    """A file name, a file's text copied by the model, or an error naming a file: shown, never obeyed."""
    from codecomplete import cli
    from codecomplete.errors import printable
    from prompts.packing import ContextItem

    assert printable(f"a\tb\n{HOSTILE}") == "a\tb\n\\x1b]52;c;cm0gLXJmIH4K\\x1b\\\\x1b[2J\\x9b31m"
    for body in (render.text_body, render.markdown_body, render.code_body("x.py")):
        console = Console(file=io.StringIO(), width=200, force_terminal=True)
        view = render.LiveView(console, body, info="model")
        view.on_text(f'ESC = "{HOSTILE}"')
        console.print(view._frame())
        view.finish(GenerationResult(f'ESC = "{HOSTILE}"\r\n', [1], 1, 0, "length", Timings()), None)
        shown = console.file.getvalue()
        assert "\x1b]52" not in shown and "\x1b[2J" not in shown and "\x9b" not in shown
        assert "cm0gLXJmIH4K" in shown and "\\x0d" not in shown     # shown as text; a CRLF file's line ends plain
    table = Console(file=io.StringIO(), width=200, force_terminal=True)
    table.print(render.context_table([ContextItem(f"{HOSTILE}.py", 1, 2, 3, "whole")]))
    assert "\x1b]52" not in table.file.getvalue()
    cli._say(f"error: {HOSTILE}.py: not a file")
    assert "\x1b" not in capsys.readouterr().err


def test_file_names_are_shown_as_text_never_read_as_rich_markup(monkeypatch):
    """rich reads a str as markup: a repository file named `a[/]b.py` failed /context (MarkupError ended the REPL),
    `[link=URL]x[/link].py` became a hyperlink. Names in the context table, the spinner and the progress bar are
    shown as they are named."""
    from prompts.packing import ContextItem

    names = ["a[/]b.py", "[link=https://evil.example]notes[/link].py", "[blink]x[/blink].py"]
    table = Console(file=io.StringIO(), width=200, force_terminal=True)
    table.print(render.context_table([ContextItem(name, 1, 2, 3, "whole") for name in names]))
    err = Console(file=io.StringIO(), width=200, force_terminal=True)
    monkeypatch.setattr(render, "stderr_console", lambda: err)
    monkeypatch.setattr(render, "_live_on_stderr", lambda console: True)     # (pytest's stderr is no terminal)
    with render.status("Converting a[/]b.gguf") as update:
        update("Loading [link=https://evil.example]m[/link]")
    with render.progress_bar("Indexing [/]repo") as progress:
        progress(1, 2, "Indexing [blink]repo[/blink]")
    for shown, expected in ((table.file.getvalue(), names),
                            (err.file.getvalue(), ["[link=https://evil.example]m[/link]", "[blink]repo[/blink]"])):
        assert all(name in shown for name in expected), shown
        assert "\x1b]8;" not in shown and "\x1b[5m" not in shown        # no hyperlink, no blinking


def test_a_servers_log_says_each_step_of_the_load_that_takes_long(capsys, monkeypatch):
    """Off a terminal the load said nothing: a server's log was silent through a first start's conversion (minutes
    for a 7B GGUF) or a wait on another process converting, until "serving". With `log` a step still under way after
    LOG_AFTER_S is a line (a sentence's capital lowered, a file name's kept); a quick one adds nothing to what
    follows (a usage error's one line); without `log`, as for a command, nothing.
    """
    import time

    monkeypatch.setattr(render, "LOG_AFTER_S", 0.1)
    with render.status("Loading the model…", log=True) as update:
        update("Converting m.gguf (first start only; cached in /c)")
        time.sleep(1.0)                                 # slow: said
        update("Converting m.gguf (first start only; cached in /c)")
        update("Loading m on cpu")                      # quick: not
        update("SmolLM2.gguf has the content of a file converted before: sharing its copy")
        time.sleep(1.0)
        update("Loading m on cpu")
    time.sleep(0.5)                                     # (the block ended before this step's time: never said)
    assert capsys.readouterr().err.splitlines() == [
        "codecomplete: converting m.gguf (first start only; cached in /c)",
        "codecomplete: SmolLM2.gguf has the content of a file converted before: sharing its copy"]
    with render.status("Loading the model…") as update:
        update("Converting m.gguf")
        time.sleep(0.5)
    assert capsys.readouterr().err == ""


def test_an_answer_that_looks_like_html_is_shown_in_full():
    """rich drops the HTML it parses in Markdown: `List<String>` showed as `List`, an HTML example outside a code
    block was not shown at all. Answers are code talk: what the model wrote is what the terminal shows."""
    answer = "Return a List<String> or Map<K, V>.\n\n<div class=\"box\">\n  <br>\n</div>\n\nThen `x<y>` ends it."
    console = Console(file=io.StringIO(), width=200, force_terminal=True)
    console.print(render.markdown_body(answer))
    shown = console.file.getvalue()
    for piece in ("List<String>", "Map<K, V>", '<div class="box">', "<br>", "</div>", "x<y>"):
        assert piece in shown, (piece, shown)


def test_a_link_in_an_answer_shows_where_it_goes():
    """A Markdown link was a terminal hyperlink (OSC 8) whose text hid its address: `[https://docs.python.org]
    (https://evil.example)` read as one site and opened another. The address is shown, and no hyperlink is made."""
    console = Console(file=io.StringIO(), width=200, force_terminal=True)
    console.print(render.markdown_body("See [https://docs.python.org](https://evil.example/x) for more."))
    shown = console.file.getvalue()
    assert "\x1b]8;" not in shown
    assert "https://docs.python.org" in shown and "https://evil.example/x" in shown


def test_bidirectional_overrides_in_an_answer_are_shown_not_obeyed():
    """Trojan Source: U+202E and the isolates reorder what the terminal shows, so a copied line could read as other
    code than it is. They are shown as escapes; the marks RTL text uses (U+200F) stay."""
    line = 'if access_level != "user\u202e \u2066# admin\u2069 \u2066":  # \u05e9\u05dc\u05d5\u05dd\u200f'
    for body in (render.text_body, render.markdown_body, render.code_body("x.py")):
        console = Console(file=io.StringIO(), width=200, force_terminal=True)
        render.LiveView(console, body, info="model").finish(
            GenerationResult(line, [1], 1, 0, "length", Timings()), None)
        shown = console.file.getvalue()
        assert not any(chr(c) in shown for c in (*range(0x202a, 0x202f), *range(0x2066, 0x206a))), repr(shown)
        assert "\\u202e" in shown and "\\u2066" in shown and "\u200f" in shown


@pytest.mark.parametrize("columns", ["0", "00"])
def test_a_columns_of_zero_still_shows_the_answer(monkeypatch, capsys, columns):
    """rich takes COLUMNS=0 as a width of 0 and printed nothing: no welcome, no answer, no warning. A zero size is
    no size, and the terminal's own (or rich's default) stands."""
    monkeypatch.setenv("COLUMNS", columns)
    monkeypatch.setenv("LINES", "0")
    for console in (render.stdout_console(), render.stderr_console()):
        assert console.width > 1 and console.height > 1
        console.print(render.markdown_body("The answer is `42`."))
    captured = capsys.readouterr()
    assert "The answer is 42." in captured.out and "The answer is 42." in captured.err


@pytest.mark.parametrize("tokens", [0, 1])
def test_no_rate_is_claimed_for_an_answer_of_one_token_or_none(tokens):
    """Decode tokens/s needs two tokens: an answer of one token (or a stop at once) said `0.0 tok/s`, as if the
    model had stalled, in the summary and on the live line. Two tokens or more show their rate, cancelled or not."""
    console = Console(file=io.StringIO(), width=200, force_terminal=True)
    view = render.LiveView(console, render.text_body, info="model")
    for _ in range(tokens):
        view.on_text("def")
    console.print(view._frame())
    view.finish(GenerationResult("def" * tokens, [1] * tokens, 5, 0, "stop", Timings(ttft_ms=120.0)), None)
    shown = console.file.getvalue()
    assert "tok/s" not in shown and "first token 120 ms" in shown
    assert f"{tokens} token" in shown
    cancelled = GenerationResult("def f", [1, 2, 3], 5, 0, "cancelled",
                                 Timings(ttft_ms=120.0, decode_s=0.5, decode_tokens_per_s=4.0))
    assert render.summary_line(cancelled) == "3 tokens · 4.0 tok/s · first token 120 ms · prompt 5 · cancelled"


def test_a_model_named_with_escape_sequences_cannot_retitle_the_terminal():
    """The model's name is its checkpoint folder's or file's: the live line and the summary show it, never obey it."""
    from types import SimpleNamespace
    engine = SimpleNamespace(name="m\x1b]0;pwned\x07\x1b]52;c;cm0K\x07", device="cpu", dtype="float32",
                             attention="sdpa")
    console = Console(file=io.StringIO(), width=200, force_terminal=True)
    view = render.LiveView(console, render.text_body, info=render.model_label(engine))
    view.on_text("x")
    console.print(view._frame())
    view.finish(GenerationResult("x", [1], 1, 0, "length", Timings()), engine)
    shown = console.file.getvalue()
    assert "\x1b]" not in shown and "\x07" not in shown and shown.count("\\x1b]0;pwned") == 2


def test_a_character_reference_cannot_smuggle_a_bidi_override_into_an_answer():
    """Markdown decodes `&#x202e;` while parsing, after the text was made printable: the override reached the
    terminal. Decoded text is made printable too; other references still read as what they stand for."""
    console = Console(file=io.StringIO(), width=200, force_terminal=True)
    console.print(render.markdown_body(render._shown("user &#x202e; &#x2066;admin&#x2069; &amp; &lt;T&gt;")))
    shown = console.file.getvalue()
    assert "\u202e" not in shown and "\u2066" not in shown and "\\u202e" in shown and "& <T>" in shown


def test_a_live_frame_renders_only_what_fits_the_screen(monkeypatch):
    """Every frame rendered the whole answer: 0.11 s a frame at 18 KB, 12 frames a second, on the CPU that decodes.
    A frame renders the end that fits the screen, whatever the answer's length; the end shows as the whole answer
    would, a code block the cut falls in included; the finished answer is printed in full."""
    block = "Some prose about `load`, which reads the checkpoint.\n\n```python\n" + "x = 1\n" * 60 + "```\n\n"
    seen = []
    shown = render._shown
    monkeypatch.setattr(render, "_shown", lambda text: seen.append(text) or shown(text))   # what a frame renders
    for body in (render.markdown_body, render.code_body("x.py"), render.text_body):
        rendered = []
        for blocks in (2, 200):     # 1.5 KB and 150 KB
            answer = block * blocks + "```python\n" + "".join(f"y{i} = {i}\n" for i in range(50))
            console = Console(file=io.StringIO(), width=80, height=24, force_terminal=True, color_system=None)
            view = render.LiveView(console, body, info="model")
            view.on_text(answer)
            console.print(view._frame())
            rendered.append(len(seen[-1]))
            frame = console.file.getvalue()
            assert "y49 = 49" in frame and "y30 = 30" in frame
            if body is render.markdown_body:      # still a code block, a line each, as in the full answer
                assert "y30 = 30" in [line.strip() for line in frame.splitlines()], frame
            view.finish(GenerationResult(answer, [1], 1, 0, "length", Timings()), None)
            assert console.file.getvalue().count("x = 1") == 60 * blocks
        assert rendered[0] == rendered[1] <= 2 * 80 * 24, rendered


def test_a_huge_columns_or_lines_is_capped(monkeypatch):
    """COLUMNS=10000000 made every live frame 60 MB of padding (12 a second). A size past any terminal's is capped."""
    monkeypatch.setenv("COLUMNS", "10000000")
    monkeypatch.setenv("LINES", "10000000")
    for console in (render.stdout_console(), render.stderr_console()):
        assert console.size == (render.MAX_COLUMNS, render.MAX_LINES)
        console.file = io.StringIO()
        view = render.LiveView(console, render.markdown_body, info="model")
        view.on_text("The answer is `42`.")
        console.print(view._frame())
        assert "The answer is 42." in console.file.getvalue() and len(console.file.getvalue()) < 10 ** 5


@pytest.mark.parametrize("speculate", [0, 4])
def test_the_live_count_is_of_tokens_not_text_pieces(engine, speculate):
    """A token that ends inside a character (an emoji's or a CJK character's first bytes) sends no text: counting
    pieces, the live line read about half the tokens, and half the rate, for an answer in emoji or Chinese."""
    from types import SimpleNamespace

    from codecomplete import engines
    from models import GenerationConfig

    tokenizer = engine.tokenizer
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Reply only with emoji: 🎉🚀🔥😀🐍 and Chinese "
                                           "你好世界函数"}], add_generation_prompt=True, tokenize=False)
    ids = tokenizer.encode(chat, add_special_tokens=False)
    config = GenerationConfig(max_new_tokens=30, speculate=speculate)
    pieces = []
    generation = SimpleNamespace(engine=engine, run=lambda on_text, should_stop: engine.generate(
        ids, config, on_text=lambda text: pieces.append(text) or on_text(text), should_stop=should_stop))
    console = Console(file=io.StringIO(), width=200, force_terminal=True)
    view = render.LiveView(console, render.text_body, info="model")
    result = engines.generate(generation, view)
    tokens = len(result.token_ids)
    assert len(pieces) < tokens * 0.7, (pieces, tokens)        # the case: many tokens sent no text
    assert tokens - 1 <= view._meter.count <= tokens, (view._meter.count, tokens)
    console.print(view._frame())
    assert f"{view._meter.count} tokens" in console.file.getvalue()


def test_a_file_name_with_a_newline_is_shown_on_its_own_row_and_line():
    """A file named `new\\nline.py` (any file name works) took two rows of the context table, `new` and `line.py`,
    as if two files, and broke the command line's one-line summary in two: names are shown with the newline as
    `\\n`, as error messages show them."""
    from prompts.packing import ContextItem, PackedPrompt

    from codecomplete import complete

    items = [ContextItem("new\nline.py", 1, 2, 3, "whole"), ContextItem("b\u2028c.py", 4, 5, 6, "whole")]
    table = Console(file=io.StringIO(), width=200)
    table.print(render.context_table(items))
    rows = [row for row in table.file.getvalue().splitlines() if ".py" in row]
    assert len(rows) == 2 and "new\\nline.py" in rows[0] and "b\\u2028c.py" in rows[1], rows
    summary = complete._summary("new\nline.py:1:1", PackedPrompt([1, 2], items, [], [], "left-to-right"))
    assert "\n" not in summary.plain and "\u2028" not in summary.plain
    assert summary.plain.startswith("new\\nline.py:1:1 · 2 prompt tokens"), summary.plain


def in_a_terminal(command: list[str], env: dict, cwd) -> str:
    """What a command prints in a pseudo-terminal (stdout and stderr both), escape sequences removed."""
    import os
    import pty
    import re
    import subprocess

    leader, follower = pty.openpty()
    os.set_blocking(leader, True)
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, cwd=cwd,
                                   env={**env, "COLUMNS": "200", "LINES": "50", "TERM": "xterm"})
    finally:
        os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:         # (Linux: EIO once the last writer closed)
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))


def test_the_header_and_the_closing_line_count_the_prompt_alike(script, cli_env, repo):
    """`--file` in a terminal: the header above the suggestion and the line below it say the same prompt size. With
    the cursor inside a name the prompt is healed (its last token left to the model): the header counted the prompt
    without that token and the closing line with it (GenerationResult.token_counts: the token the model wrote again
    is the prompt's, as the servers count it), one apart."""
    import re

    shown = in_a_terminal([str(script), str(repo), "--file", "app.py", "--line", "5", "--col", "20",
                           "--max-tokens", "4", "--temperature", "0", "--no-server"], cli_env, repo.parent)
    headers = re.findall(r"app\.py:5:20 · ([\d,]+) prompt tokens", shown)
    closing = re.findall(r"first token [^·]+ · prompt ([\d,]+)", shown)
    assert headers and len(closing) == 1, shown
    assert headers[-1] == closing[0], shown         # the header left on the screen


def test_the_live_line_counts_the_prompt_and_the_answer_as_the_summary_does():
    """The token the model wrote again for a healed prompt is the prompt's on the live line too, once the first text
    says how many there were: the live line read "6 tokens · 6 prompt tokens" where the summary read "5 tokens ·
    prompt 7"."""
    from rich.text import Text

    def shown(renderable) -> str:
        console = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None)
        console.print(renderable)
        return console.file.getvalue()

    console = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None)
    view = render.LiveView(console, render.text_body, info="model", prompt_tokens=6,
                           header=lambda tokens: Text(f"app.py:1:4 · {tokens} prompt tokens"))
    prefill = shown(view._frame())                          # no healing known yet
    assert "app.py:1:4 · 6 prompt tokens" in prefill and "· 6 prompt tokens · model" in prefill, prefill
    running = Timings(decode_steps=5, healing_tokens=1)     # 6 tokens sampled, the first one the healed text again
    view.progress = lambda: running
    view.on_text("x = 1")
    live = shown(view._frame())
    assert "5 tokens · 7 prompt tokens · model" in live and "app.py:1:4 · 7 prompt tokens" in live, live
    result = GenerationResult("x = 1", [1] * 6, 6, 0, "length", running, healing_tokens=1)
    assert render.summary_line(result).startswith("5 tokens · first token") and "prompt 7" in render.summary_line(
        result)
    view.finish(result, None)
    printed = console.file.getvalue()
    assert "app.py:1:4 · 7 prompt tokens" in printed and printed.index("7 prompt tokens") < printed.index("x = 1")


def test_a_dumb_terminal_is_told_what_is_indexed_and_a_pipe_nothing(tmp_path, monkeypatch):
    """TERM=dumb draws no progress bar: indexing a repository said nothing there, however long it took. It says what
    it indexes on one plain line, as `status` does; a pipe is still told nothing."""
    import os

    from codecomplete import workspace

    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "app.py").write_text("def area(w, h):\n    return w * h\n")
    monkeypatch.setenv("TERM", "dumb")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    said = {}
    for kind, (reader, writer) in (("terminal", os.openpty()), ("pipe", os.pipe())):
        with open(writer, "w", encoding="utf-8") as stderr:
            monkeypatch.setattr("sys.stderr", stderr)
            workspace.index(tmp_path / "repo")
        said[kind] = os.read(reader, 65536) if kind == "pipe" or _readable(reader) else b""
        os.close(reader)
    assert said["terminal"].decode().splitlines() == ["Indexing repo"], said
    assert said["pipe"] == b""


def _readable(descriptor: int) -> bool:
    import select
    return bool(select.select([descriptor], [], [], 1)[0])
