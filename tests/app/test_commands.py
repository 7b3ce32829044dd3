"""The one-shot commands end to end through the console script, with the embedded model on the CPU."""
import json
import subprocess

import pytest
from test_errors import check_error

CURSOR = ["--file", "app.py", "--line", "5", "--col", "5"]      # in report(), before `area = ...`
TIMING_KEYS = {"load_s", "prefill_s", "ttft_ms", "decode_tokens_per_s"}


@pytest.fixture(scope="module")
def completion_json(codecomplete, repo):
    run = codecomplete(repo, *CURSOR, "--max-tokens", "12", "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def check_result_object(obj, text_key):
    assert isinstance(obj[text_key], str) and obj[text_key].strip()
    assert obj["tokens"] and all(isinstance(t, int) for t in obj["tokens"])
    assert obj["completion_tokens"] == len(obj["tokens"])
    assert obj["prompt_tokens"] > 0
    assert obj["device"] == "cpu" and obj["attention"] == "sdpa"
    assert "SmolLM2" in obj["model"]
    assert TIMING_KEYS <= obj["timings"].keys()
    assert obj["timings"]["decode_tokens_per_s"] > 0


def test_piped_completion_is_the_bare_text(codecomplete, repo, completion_json):
    run = codecomplete(repo, *CURSOR, "--max-tokens", "12")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""                       # no progress, no status: an editor shows stderr
    assert "\x1b[" not in run.stdout              # no colour codes in a pipe
    assert run.stdout == completion_json["completion"]   # greedy: the same text as --json


def test_forced_colour_never_reaches_a_piped_stdout(script, cli_env, repo, completion_json):
    """FORCE_COLOR and TTY_COMPATIBLE make rich treat any stream as a terminal; stdout stays the completion. A
    stderr that is no terminal gets no live spinner or progress bar either (kilobytes of frames in a log)."""
    env = {**cli_env, "FORCE_COLOR": "1", "TTY_COMPATIBLE": "1"}
    env.pop("NO_COLOR")
    proc = subprocess.run([str(script), repo, *CURSOR, "--max-tokens", "12"], capture_output=True, text=True,
                          env=env, cwd=repo.parent, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == completion_json["completion"]
    assert proc.stderr == ""


def test_json_completion_has_the_contract_fields_and_its_context(completion_json):
    check_result_object(completion_json, "completion")
    context = completion_json["context"]
    assert context and all(set(item) == {"path", "start_line", "end_line", "tokens", "form", "lines"}
                           for item in context)
    assert {item["form"] for item in context} <= {"whole", "outline", "brief"}
    assert {item["lines"] for item in context} <= {"buffer", "disk"}  # (how the lines count: README)
    # The cursor sits after a call of area_of_circle: its definition is in the prompt.
    assert "shapes/geometry.py" in {item["path"] for item in context}
    for item in context:
        assert 1 <= item["start_line"] <= item["end_line"] and item["tokens"] > 0


def test_stdin_buffer_of_an_unsaved_file(codecomplete, repo):
    buffer = "from shapes.geometry import Rectangle\n\n\ndef square(side):\n    return Rectangle("
    run = codecomplete(repo, "--file", "new_module.py", "--stdin", "--max-tokens", "8", "--json", input=buffer)
    assert run.returncode == 0, run.stderr
    obj = json.loads(run.stdout)
    check_result_object(obj, "completion")
    assert not (repo / "new_module.py").exists()


def test_ask_answers_once(codecomplete, repo):
    run = codecomplete(repo, "--ask", "What does area_of_circle return?", "--max-tokens", "16", "--json")
    assert run.returncode == 0, run.stderr
    obj = json.loads(run.stdout)
    check_result_object(obj, "answer")
    assert obj["context"]


def test_raw_prompt_from_stdin(codecomplete):
    run = codecomplete("--prompt", "-", "--max-tokens", "8", "--json", input="def fibonacci(n):\n")
    assert run.returncode == 0, run.stderr
    obj = json.loads(run.stdout)
    check_result_object(obj, "text")
    assert obj["context"] == []


def test_a_question_from_stdin(codecomplete, repo):
    """`--ask -` reads the question from standard input, as `--prompt -` reads its text: it asked the model "-",
    the piped question unread, and printed an answer about nothing (no repository context) with exit 0. An empty
    input is refused as `--prompt -`'s is."""
    run = codecomplete(repo, "--ask", "-", "--max-tokens", "2", "--json", "--no-server",
                       input="What does area_of_circle compute?\n")
    assert run.returncode == 0, run.stderr
    obj = json.loads(run.stdout)
    check_result_object(obj, "answer")
    assert "shapes/geometry.py" in [item["path"] for item in obj["context"]], obj["context"]
    check_error(codecomplete(repo, "--ask", "-", "--no-server", input=" \n"), 2, "--ask -", "standard input is empty")


@pytest.mark.parametrize("args, what", [(["--ask", "-"], "not a question (--ask -)"),
                                        (["--prompt", "-"], "not a prompt (--prompt -)"),
                                        (["--file", "app.py", "--stdin"], "not a buffer to complete (--stdin)")])
def test_standard_input_over_the_limit_is_said_of_what_it_was_for(codecomplete, repo, args, what):
    """Standard input past MAX_STDIN_BYTES was "not a buffer to complete" whatever read it: a question piped to
    `--ask -` or a prompt to `--prompt -` was said to be an editor's buffer. The message names what it was read for."""
    from codecomplete.workspace import MAX_STDIN_BYTES

    repository = [] if args[0] == "--prompt" else [repo]
    run = codecomplete(*repository, *args, "--no-server", input="a" * (MAX_STDIN_BYTES + 1))
    check_error(run, 2, "standard input is over 64 MiB", what)


def test_a_healed_prompt_counts_only_the_new_tokens_max_tokens_asked_for(codecomplete):
    """`--max-tokens` bounds the tokens after token healing (the model first writes the prompt's healed tail
    again), as llama.cpp counts n_predict: those are the completion's tokens, the healing ones the prompt's, as
    every server route counts them. Reported before: 4 completion tokens for `--max-tokens 3` (the model writes
    the healed space as a token of its own, then 100)."""
    run = codecomplete("--prompt", "x = ", "--max-tokens", "3", "--json")
    assert run.returncode == 0, run.stderr
    obj = json.loads(run.stdout)
    check_result_object(obj, "text")
    assert obj["completion_tokens"] == 3 and obj["finish_reason"] == "length"


def test_a_file_with_crlf_line_ends_gets_a_suggestion_with_crlf_line_ends(codecomplete, tmp_path):
    """The prompt reads a Windows file with LF line ends, as it reads any file, and the suggestion (what an editor
    inserts) is written with the file's line ends again: from the file on disk and from a buffer on standard input,
    in process (through a server, the same: test_server_cli)."""
    text = "def fibonacci(n):\n    if n < 2:\n        return n\n"
    answers = {}
    for name, ends in (("crlf", "\r\n"), ("lf", "\n")):
        root = tmp_path / name / "repo"       # (the same name: the prompt names the repository)
        root.mkdir(parents=True)
        (root / "fib.py").write_bytes(text.replace("\n", ends).encode())
        run = codecomplete(root, "--file", "fib.py", "--max-tokens", "16", "--json", "--no-server")
        assert run.returncode == 0, run.stderr
        answers[ends] = json.loads(run.stdout)["completion"]        # (JSON: the text-mode pipe reads "\r\n" as "\n")
    assert "\n" in answers["\n"] and "\r" not in answers["\n"], answers
    assert answers["\r\n"] == answers["\n"].replace("\n", "\r\n")
    # the LF file's repository, and a CRLF buffer: the buffer decides
    run = codecomplete(root, "--file", "fib.py", "--stdin", "--max-tokens", "16", "--json", "--no-server",
                       input=text.replace("\n", "\r\n"))
    assert run.returncode == 0 and json.loads(run.stdout)["completion"] == answers["\r\n"], run.stderr
