"""The server's edge, without a server: llama.cpp's generation limits (n_indent, t_max_predict_ms) as the engine
thread feeds them and as a stream releases text, request bodies read strictly, and Ctrl-C held during imports."""
import asyncio
import json
import os
import signal
import time

import pytest

from codecomplete.cancel import CancelOnSigint, InterruptsDeferred
from codecomplete.server.bodies import read_json, stop_strings
from codecomplete.server.errors import ApiError
from codecomplete.server.llama_cpp import InfillRequest, Limits
from models.tokenizer.stop_strings import StopStringMatcher

COMPLETION = "x2, y2 = poly[i + 1]\n        s += x1 * y2\n    return abs(s) / 2\n"   # after "        x1, y1 = ..."


def streamed(limits: Limits, deltas: list[str]) -> tuple[list[str], str]:
    """What a stream sends (as the llama.cpp route drives it: each delta fed on the engine thread first, then
    released to the stream; at the end what was held back) and the answer's content (the text cut)."""
    pieces = []
    for delta in deltas:
        limits.feed(delta)
        pieces.append(limits.release(delta))
    content = limits.cut(limits.text)
    return [piece for piece in [*pieces, limits.held(content)] if piece], content


@pytest.mark.parametrize("split", [1, 3, 7, 100])
def test_a_dedented_line_is_cut_from_the_answer_and_never_streamed(split):
    deltas = [COMPLETION[i:i + split] for i in range(0, len(COMPLETION), split)]
    limits = Limits(0, 8)
    pieces, content = streamed(limits, deltas)
    assert content == "x2, y2 = poly[i + 1]\n        s += x1 * y2\n    "     # its indentation stays (llama.cpp)
    assert "".join(pieces) == content and limits.reached
    assert not any("return" in piece for piece in pieces)


def test_a_whitespace_line_is_held_until_its_indentation_is_known():
    limits = Limits(0, 4)
    for delta, settled in (("a = 1\n", 6), ("    ", 6), ("b", 11), ("\n", 12), ("  ", 12)):
        limits.feed(delta)
        assert limits.settled(limits.text) == settled, delta
    limits.feed("c")                                    # indented 2 < 4: the completion ends before "c"
    assert limits.reached and limits.cut(limits.text) == "a = 1\n    b\n  "
    assert limits.settled(limits.text) == len("a = 1\n    b\n  ")
    assert Limits(0, 0).settled("a\n   ") == 5          # without n_indent nothing is held


def test_past_the_time_limit_the_answer_ends_with_the_next_newline():
    limits = Limits(5, 0)
    assert not limits.feed("def f():\n")                # the first delta starts the clock
    time.sleep(0.02)
    assert not limits.feed("    s = ")                  # no newline: on it goes
    assert limits.feed("0\n    t = 1\n")                # one step made two lines: the second is not the answer's
    assert limits.cut(limits.text) == "def f():\n    s = 0\n"
    pieces, content = streamed(Limits(10_000, 0), ["a\n", "b\n", "c"])
    assert content == "a\nb\nc" and "".join(pieces) == content    # within the limit newlines do not stop it


def test_the_stop_string_that_ended_the_text_is_known():
    matcher = StopStringMatcher(["ma", "max", "\n\n"])
    out, hit = matcher.feed("return ")
    assert (out, hit, matcher.hit) == ("return ", False, "")
    out, hit = matcher.feed("max(a, b)")               # both start here: the longer one is the one that matched
    assert hit and matcher.text == "return " and matcher.hit == "max"


class FakeRequest:
    def __init__(self, body: bytes) -> None:
        from starlette.datastructures import Headers      # (what a request's are: a header may come several times)
        self.headers, self._body = Headers({"content-length": str(len(body))}), body

    async def stream(self):
        yield self._body


def read(body: bytes, model=InfillRequest):
    return asyncio.run(read_json(FakeRequest(body), model))


def test_bodies_replace_lone_surrogates_and_refuse_infinities_and_wild_seeds():
    body = read(b'{"input_prefix": "def f(\\ud800", "input_suffix": "", "stop": ["\\udfff"], "\\ud801": 1}')
    assert body.input_prefix == "def f(\ufffd" and body.stop == ["\ufffd"]
    json.dumps(body.model_dump(), ensure_ascii=False).encode("utf-8")          # a UTF-8 response can carry it
    for extra, field in ((b'"temperature": 1e999', "temperature"), (b'"top_p": -1e999', "top_p"),
                         (b'"seed": 18446744073709551616', "seed"), (b'"seed": -9223372036854775809', "seed")):
        with pytest.raises(ApiError) as error:
            read(b'{"input_prefix": "", "input_suffix": "", ' + extra + b"}")
        assert error.value.status == 400 and error.value.message.startswith(field), error.value.message
    assert read(b'{"input_prefix": "", "input_suffix": "", "seed": 18446744073709551615}').seed == 2**64 - 1


def test_a_whole_number_written_as_a_float_is_an_integer_and_one_stop_string_a_stop():
    """As llama.cpp reads `"n_predict": 2.0` (json_value's number conversion) and Ollama its options: 2; a fraction is
    still refused. A lone `stop` string is that one stop (llama.cpp's native routes skipped it without a word)."""
    from codecomplete.server.llama_cpp import CompletionRequest, _settings
    from codecomplete.server.ollama import GenerateRequest
    from codecomplete.server.openai_api import ChatRequest

    body = read(b'{"input_prefix": "", "input_suffix": "", "n_predict": 2.0, "top_k": 5.0, "seed": 7.0, '
                b'"n_indent": 4.0, "t_max_predict_ms": 250.0, "stop": "\\n"}')
    assert (body.n_predict, body.top_k, body.seed, body.n_indent, body.t_max_predict_ms) == (2, 5, 7, 4, 250)
    assert all(type(v) is int for v in (body.n_predict, body.top_k, body.seed))
    assert stop_strings(body.stop) == ("\n",)

    class Engine:
        context_length = 512
    assert _settings(type("Server", (), {"engine": Engine})(), body)["stop"] == ["\n"]
    assert read(b'{"prompt": "x", "max_tokens": 3.0}', CompletionRequest).n_predict == 3
    assert read(b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 3.0}', ChatRequest).max_tokens == 3
    ollama = read(b'{"prompt": "x", "options": {"num_predict": 3.0, "seed": 1.0}}', GenerateRequest)
    assert ollama.options.num_predict == 3
    for bad, field in ((b'"n_predict": 2.5', "n_predict"), (b'"n_predict": "2"', "n_predict"),
                       (b'"stream": 1.0', "stream"), (b'"stop": 1.0', "stop")):
        with pytest.raises(ApiError) as error:
            read(b'{"input_prefix": "", "input_suffix": "", ' + bad + b"}")
        assert error.value.status == 400 and error.value.message.startswith(field), error.value.message


def test_a_null_alias_gives_way_to_one_with_a_value():
    """Clients that send every field send the limit's other names as null: the one with a value counts."""
    from codecomplete.server.llama_cpp import CompletionRequest
    from codecomplete.server.openai_api import ChatRequest

    chat = b'{"messages": [{"role": "user", "content": "x"}], '
    assert read(chat + b'"max_completion_tokens": null, "max_tokens": 5}', ChatRequest).max_tokens == 5
    assert read(chat + b'"max_tokens": 5, "max_completion_tokens": null}', ChatRequest).max_tokens == 5
    assert read(chat + b'"max_completion_tokens": 3, "max_tokens": 5}', ChatRequest).max_tokens == 3
    assert read(chat + b'"max_completion_tokens": null, "max_tokens": null}', ChatRequest).max_tokens is None
    assert read(b'{"prompt": "x", "n_predict": null, "max_tokens": 5}', CompletionRequest).n_predict == 5


def test_ctrl_c_while_extensions_import_is_held_until_they_are_in():
    with pytest.raises(KeyboardInterrupt):
        with InterruptsDeferred() as held:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)                              # a handler runs between bytecodes: it ran by now
            assert held.pending                           # ... and did not raise here
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_ctrl_c_stays_ignored():
    """A job that a shell script starts in the background has SIGINT ignored, so that Ctrl-C ends the script and not
    the job: neither the imports nor a generation take it back."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for window in (InterruptsDeferred(), CancelOnSigint()):
            with window:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert not window.cancelled
    finally:
        signal.signal(signal.SIGINT, previous)


def test_n_indent_looks_at_each_line_of_a_long_generation_once(monkeypatch):
    """Every token looked again at every line generated, each look copying the rest of the text: 8,000 tokens of
    indented lines took 6.7 s on the engine thread (16,000: about 40 s). Only the lines not yet decided are read."""
    import codecomplete.server.llama_cpp as llama_cpp

    read = []
    real = llama_cpp._dedent_at
    def dedent_at(text, n_indent, offset=0):
        read.append(len(text) - offset)
        return real(text, n_indent, *[offset][:offset > 0])

    monkeypatch.setattr(llama_cpp, "_dedent_at", dedent_at)
    limits = Limits(0, 4)
    deltas = ["def f(x):\n"] + ["    y = x", " + 1\n", "  ", "  ", "z = 2\n"] * 300 + ["    ", "\n", "  ", "  w"]
    pieces, content = streamed(limits, deltas)
    assert not limits.reached and content == "".join(deltas)
    limits = Limits(0, 4)
    pieces, content = streamed(limits, deltas + ["\n  ", "return x\n"])
    assert limits.reached and content == "".join(deltas) + "\n  "
    assert sum(read) < 4 * len(content)      # (every line again every token: about 30 times the text)


def test_truncated_compares_no_more_labels_than_the_prompt_has_items():
    """Whether the oldest of 20,000 extra chunks stayed out was found by comparing the last k labels for every k
    from 20,000 down, each a copy (0.2 s; quadratic). Same answers, the copies bounded by the prompt's items."""
    from types import SimpleNamespace

    from codecomplete.server.llama_cpp import _truncated

    class Labels(list):
        def __getitem__(self, key):
            part = super().__getitem__(key)
            copied.append(len(part) if isinstance(key, slice) else 1)
            return part

    def prompt(*paths, cut=False, first_line=1):
        return SimpleNamespace(context=[SimpleNamespace(path=path, start_line=first_line if i == 0 else 1)
                                        for i, path in enumerate(paths)], cut=cut)

    copied = []
    labels = Labels(f"extra/{i}.py" for i in range(20_000))
    assert _truncated(prompt("extra/19998.py", "extra/19999.py", "repo.py"), labels) is True
    assert _truncated(prompt("a.py", "b.py", "repo.py"), Labels(["a.py", "b.py"])) is False
    assert _truncated(prompt("a.py", "b.py", cut=True), Labels(["a.py", "b.py"])) is True
    assert _truncated(prompt("b.py", "repo.py"), Labels(["a.py", "b.py"])) is True
    assert _truncated(prompt("a.py", "b.py", first_line=40), Labels(["a.py", "b.py"])) is True   # a.py's tail only
    assert sum(copied) < 100          # (every count: 200 million labels copied)


@pytest.mark.parametrize("split", [1, 3, 7, 100])
@pytest.mark.parametrize("line_end", ["\r\n", "\r"])
def test_the_limits_see_the_line_breaks_of_a_crlf_or_classic_mac_answer(split, line_end):
    """An answer written with the client's line ends (codecomplete/line_ends.py; a stream never ends a piece inside
    a CRLF): n_indent cuts and t_max_predict_ms ends lines at its "\\r\\n" or its lone "\\r" as at a "\\n"."""
    text = COMPLETION.replace("\n", line_end)
    deltas, held = [], ""
    for i in range(0, len(text), split):
        delta, held = held + text[i:i + split], ""
        if line_end == "\r\n" and delta.endswith("\r"):     # (as LineEnds streams it: held until its "\n" comes)
            delta, held = delta[:-1], "\r"
        deltas.append(delta)
    limits = Limits(0, 8)
    pieces, content = streamed(limits, deltas)
    assert content == "x2, y2 = poly[i + 1]\n        s += x1 * y2\n    ".replace("\n", line_end)
    assert "".join(pieces) == content and limits.reached
    late = Limits(5, 0)
    assert not late.feed("def f():" + line_end)
    time.sleep(0.02)
    assert late.feed("    s = 0" + line_end + "    t = 1" + line_end)
    assert late.cut(late.text) == "def f():" + line_end + "    s = 0" + line_end


def test_a_huge_raw_prompt_is_refused_from_its_start_not_encoded_whole(engine):
    """A raw prompt of megabytes (`--prompt -` reads 64 MiB, and sends it to a server's 129 MiB route) was encoded
    whole, three times over with its healing, only to be refused: 16 MB took 108 s and 3.6 GB of the server's
    memory. A start of it tells already that it cannot fit the context."""
    from encoded_texts import encoded_lengths

    from codecomplete.session import Sampling, Session
    from models import ContextTooLongError

    prompt = "def helper(x):\n    return x * 2\n" * 100_000             # 3.2 MB
    with encoded_lengths(engine.tokenizer) as lengths, pytest.raises(ContextTooLongError, match=(
            f"a prompt of {len(prompt):,} characters does not fit the context of {engine.context_length} tokens")):
        Session(engine).raw(prompt, sampling=Sampling(max_tokens=1))
    assert lengths and max(lengths) < len(prompt) // 4, max(lengths)

