"""An inline suggestion that loops on one line stops where the loop starts (codecomplete/repeats.py): the copies
are never shown, what streams is what the result says, and text that only looks like a loop passes whole."""

import io
import random
from dataclasses import dataclass, field

import pytest

from codecomplete import engines
from codecomplete.render import PlainView
from codecomplete.repeats import REPEATS, RepeatedLines

# What the README's first command (then a suggestion at line 40 of models/llama.py) once wrote:
LOOP = "\n    end: int\n    end: int\n    end: int\n    end: int\n    end: int\n"


def pieces(text: str, seed: int) -> list[str]:
    """text cut at random places, as tokens come (a newline alone, inside a piece, or at its end)."""
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, len(text) // 3)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


@dataclass
class Result:
    text: str
    finish_reason: str
    token_ids: list = field(default_factory=list)
    not_a_number: bool = False


def shown(text: str, seed: int = 0, line_start: str = "", line_end: str = "\n") -> tuple[str, bool]:
    """What streams of text fed in pieces, then finished (what is held passed on), and whether it looped; the
    finished result says the same text. `line_start`: the cursor's line before the cursor; `line_end`: the text's."""
    out: list[str] = []
    lines = RepeatedLines(out.append, line_start, line_end)
    for piece in pieces(text, seed):
        lines.feed(piece)
    result = lines.finish(Result(text, "length"))
    assert result.text == "".join(out)
    return result.text, lines.looped


@pytest.mark.parametrize("seed", range(6))
def test_a_line_written_a_third_time_running_ends_it_and_no_copy_is_shown(seed):
    assert REPEATS == 3
    assert shown(LOOP, seed) == ("\n    end: int\n", True)
    assert shown("def f():\n    x = 1\n    x = 1\n    x = 1\n    return x\n", seed) == ("def f():\n    x = 1\n", True)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("text", [
    "a = 1\na = 1\nb = 2\n",                     # two copies: a line may be written twice
    "a = 1\na = 1\na = 1.5\n",                   # a third that only starts like the line
    "x\n\n\n\n\ny\n",                            # blank lines never loop,
    "x\n    \n    \n    \n    \ny\n",            # nor lines of only spaces
    "    }\n  }\n}\n",                           # the same text at other indentations is another line
    "pass\r\npass\r\npass",                      # a last copy not finished: not yet a loop
    "a\na\nb\na\na\nc",                          # runs broken before their third
])
def test_text_that_does_not_loop_streams_whole(seed, text):
    assert shown(text, seed) == (text, False)


@pytest.mark.parametrize("seed", range(6))
def test_the_cursors_line_is_the_first_of_the_lines_that_loop(seed):
    """The suggestion's first line ends the cursor's line: the line, its text before the cursor with it, is the one
    the next lines may repeat. At the end of `    end: int`, two more were the loop, not one copy and one more."""
    assert shown(LOOP, seed, "    end: int") == ("\n", True)
    assert shown("1\n    x = 1\n    x = 1\n    y\n", seed, "    x = ") == ("1\n", True)
    assert shown("1\r\n    x = 1\r\n    x = 1\r\n", seed, "    x = ") == ("1\r\n", True)      # a CRLF file's
    for text, line_start in [("\n    end: int\n    y\n", "    end: int"),       # one copy of it may follow
                             ("2\n    x = 1\n    x = 1\n    y\n", "    x = "),   # the cursor's line is x = 2
                             ("\n\n\n\n", "    "),                                # blank lines never loop
                             ("int\n    end: int\n", "    end: ")]:
        assert shown(text, seed, line_start) == (text, False)


def test_crlf_lines_loop_as_lines():
    assert shown("x = 1\r\nx = 1\r\nx = 1\r\ny\r\n", line_end="\r\n") == ("x = 1\r\n", True)
    assert shown("x = 1\r\nx = 1\r\nx = 1\r\ny\r\n") == ("x = 1\r\n", True)      # (the default: "\r" is the line's)


@pytest.mark.parametrize("seed", range(6))
def test_lone_cr_lines_loop_as_lines(seed):
    """In a classic Mac OS file (lone CRs) the suggestion's lines end at "\r" (line_ends.py writes them so): they
    loop as lines. Split at "\n" only, a CR suggestion had no finished line and a loop ran to its token limit."""
    assert shown(LOOP.replace("\n", "\r"), seed, line_end="\r") == ("\r    end: int\r", True)
    assert shown(LOOP.replace("\n", "\r"), seed, "    end: int", line_end="\r") == ("\r", True)
    for text in ("a = 1\ra = 1\rb = 2\r", "x\r\r\r\r\ry\r", "pass\rpass\rpass"):
        assert shown(text, seed, line_end="\r") == (text, False)


class FakeGeneration:
    """Writes `text` a character a token, asking should_stop before each, as the engine does; the result says what it
    wrote, "cancelled" where it was asked to stop (the engine's word for it)."""
    engine = None

    def __init__(self, text: str) -> None:
        self.text, self.written = text, ""

    def run(self, on_text, should_stop):
        for ch in self.text:
            if should_stop():
                return Result(self.written, "cancelled")
            self.written += ch
            on_text(ch)
        return Result(self.written, "length")


@pytest.mark.parametrize("text, want, reason", [(LOOP, "\n    end: int\n", "stop"),
                                                ("a\na\nb\n", "a\na\nb\n", "length")])
def test_a_suggestion_stops_generating_at_the_loop_and_prints_what_it_says(text, want, reason):
    stream = io.StringIO()
    generation = FakeGeneration(text)
    result = engines.generate(generation, PlainView(stream), stop_repeats=True)
    assert (stream.getvalue(), result.text, result.finish_reason) == (want, want, reason)
    if reason == "stop":       # generation ended at the third copy's newline: the rest was never generated
        assert generation.written == "\n    end: int\n    end: int\n    end: int\n"


@pytest.mark.parametrize("col, written, want", [(None, LOOP, "\n"),
                                                 (10, "int" + LOOP, "int\n"),
                                                 (1, "    end: int" + LOOP, "    end: int\n")])
def test_an_inline_suggestion_counts_the_cursors_line(tmp_path, monkeypatch, capsys, col, written, want):
    """`codecomplete REPO --file F --line 2` at the end of `    end: int` (or inside it): the command line hands the
    stop its cursor's line, as the buffer has it before the cursor (a model that writes the line twice more stops
    at once; a cursor at the line's start has nothing before it there)."""
    from types import SimpleNamespace

    from codecomplete import cli, complete
    from prompts import PackedPrompt

    (tmp_path / "a.py").write_text("class A:\n    end: int\n")
    engine = SimpleNamespace(name="fake", device="cpu", dtype="float32", attention="sdpa")

    class Session:
        def complete(self, path, **_):
            generation = FakeGeneration(written)
            generation.prompt, generation.engine = PackedPrompt([1], [], [], [], "left-to-right"), engine
            return generation
    monkeypatch.setattr(complete, "open_session", lambda *args, **kwargs: Session())
    argv = [str(tmp_path), "--file", "a.py", "--line", "2", "--no-server"] + (["--col", str(col)] if col else [])
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == want


def test_an_inline_suggestion_in_a_lone_cr_file_stops_at_the_loop(tmp_path, monkeypatch, capsys):
    """`codecomplete REPO --file F` in a file whose lines end in lone CRs: the suggestion (written with "\r", as
    the session's LineEnds writes it) stops at its third copy, generated no further, as in a "\n" file."""
    from types import SimpleNamespace

    from codecomplete import cli, complete
    from prompts import PackedPrompt

    (tmp_path / "a.py").write_bytes(b"class A:\r    end: int\r")
    engine = SimpleNamespace(name="fake", device="cpu", dtype="float32", attention="sdpa")
    made = []

    class Session:
        def complete(self, path, **_):
            generation = FakeGeneration(LOOP.replace("\n", "\r") * 4)     # at the end of `    end: int`
            generation.prompt = PackedPrompt([1], [], [], [], "left-to-right", line_end="\r")
            generation.engine = engine
            made.append(generation)
            return generation
    monkeypatch.setattr(complete, "open_session", lambda *args, **kwargs: Session())
    assert cli.main([str(tmp_path), "--file", "a.py", "--line", "2", "--no-server"]) == 0
    assert capsys.readouterr().out == "\r"
    assert made[0].written == "\r    end: int\r    end: int\r"      # generation stopped at the loop


def test_without_stop_repeats_the_loop_is_the_text():
    stream = io.StringIO()
    result = engines.generate(FakeGeneration(LOOP), PlainView(stream))
    assert stream.getvalue() == result.text == LOOP


def test_a_chat_answer_stops_at_the_loop_and_keeps_what_it_showed():
    """The REPL's and --ask's answers stop where a line is written a third time running, as a suggestion does: the
    embedded model asked what models/config.py's preset does wrote one list item until its 512 tokens ran out (14 s
    on a CPU). The conversation keeps the answer as shown, so the next question's prompt does not carry the loop."""
    from types import SimpleNamespace

    from codecomplete.chat import Conversation

    conversation = Conversation(session=None, args=SimpleNamespace(max_tokens=None))
    generation = FakeGeneration("It takes a name:\n\n" + "- `preset(name)`: a preset\n" * 6)
    generation.prompt = None
    stream = io.StringIO()
    result = conversation.answer("What does preset do?", generation, PlainView(stream))
    want = "It takes a name:\n\n- `preset(name)`: a preset\n"
    assert (stream.getvalue(), result.text, result.finish_reason) == (want, want, "stop")
    assert conversation.messages == [{"role": "user", "content": "What does preset do?"},
                                     {"role": "assistant", "content": want}]
    assert generation.written == "It takes a name:\n\n" + "- `preset(name)`: a preset\n" * 3   # generated no further
