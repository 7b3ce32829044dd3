"""The README's examples as a user copies them. Every `codecomplete` command line of its ```sh blocks, and the
argument lists of its editor recipes (Vim, VS Code's tasks.json, Emacs), is accepted by the real argument parser and
the checks that run before any work; a cursor it places in one of this repository's own files lies inside that file
(`--line 40 --col 9` on models/llama.py had become a blank line 40: exit 2, "column 9 is out of range"); and every
curl example is answered 200 by the server's app, with the field its `jq` filter reads. Parsed, not run: seconds."""

import json
import re
import shlex
from pathlib import Path

import pytest
from server_process import in_process

from codecomplete import cli

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def pipeline_steps(line: str) -> list[list[str]]:
    """A shell line's simple commands (split at |, &&, ;, < and >; comments dropped), each as its words."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;<>")
    lexer.whitespace_split, lexer.commenters = True, "#"
    steps, words = [], []
    for word in lexer:
        if word and set(word) <= set("|&;<>"):
            steps.append(words)
            words = [] if word != "<" else ["<"]       # (the file after < is no argument)
        elif words[:1] != ["<"]:
            words.append(word)
        else:
            words = []
    return [step for step in steps + [words] if step]


def codecomplete_commands() -> list[list[str]]:
    """The arguments of every `codecomplete` (or `$(which codecomplete)`, under torchrun) in the ```sh blocks."""
    commands = []
    for block in blocks("sh"):
        for line in block.splitlines():
            for words in pipeline_steps(line):
                at = next((i for i, word in enumerate(words) if word.rstrip(")").endswith("codecomplete")), None)
                if at is not None:
                    commands.append(words[at + 1:])
    return commands


def editor_commands() -> list[list[str]]:
    """The argument lists the editor recipes build, their editor-side values filled in (a file, a line number)."""
    commands = []
    vim_line = re.search(r"`:40r !codecomplete ([^`]*)`", README)
    commands.append(shlex.split(vim_line.group(1).replace("%", "app.py")))
    (vim,) = blocks("vim")
    call = vim[vim.index("system(") + len("system(") : vim.index(", getline")]
    call = re.sub(r"\w+\((?:[^()]|\([^()]*\))*\)", "'1'", call)   # shellescape(expand('%:p')), line('.'): a value
    commands.append(shlex.split("".join(re.findall(r"'([^']*)'", call)).removeprefix("codecomplete")))
    for tasks in (block for block in blocks("json") if '"tasks"' in block):
        for task in json.loads(tasks)["tasks"]:
            assert task["command"] == "codecomplete", task
            values = {"${workspaceFolder}": ".", "${file}": "app.py", "${lineNumber}": "3"}
            commands.append([values.get(arg, arg) for arg in task["args"]])
    (elisp,) = blocks("elisp")
    start = elisp.index('"codecomplete" nil (list t err) nil') + len('"codecomplete" nil (list t err) nil')
    commands.append(_elisp_arguments(elisp[start:]))
    return commands


def _elisp_arguments(text: str) -> list[str]:
    """The arguments before the call's closing parenthesis: strings as they are, `root` the repository, any other
    form (buffer-file-name, a number-to-string) a value of 1."""
    arguments, depth = [], 0
    for token in re.findall(r'"[^"]*"|[()]|[^\s()"]+', text):
        if token == "(":
            depth += 1
            continue
        if token == ")":
            if depth == 0:
                return arguments
            depth -= 1
            if depth == 0:
                arguments.append("1")
            continue
        if depth == 0:
            arguments.append(token.strip('"') if token.startswith('"') else "." if token == "root" else "1")
    raise AssertionError("the Emacs recipe's call-process-region did not close")


def test_the_readme_has_the_examples_this_file_checks():
    commands = codecomplete_commands()
    assert len(commands) >= 20 and any(c[:1] == ["serve"] for c in commands) and any("--bench" in c for c in commands)
    assert len(editor_commands()) == 5
    assert len(curl_examples()) >= 3


@pytest.mark.parametrize("argv", codecomplete_commands() + editor_commands(), ids=" ".join)
def test_each_command_line_is_accepted_by_the_parser(argv, monkeypatch, tmp_path):
    """Parsed by the real parser and checked by cli.check / check_serve as `main` checks them, with what lies outside
    the command line left out: whether the model path exists (~/models/...), the standard streams of this test, and
    whether an output file can be written here."""
    from codecomplete import engines

    monkeypatch.setattr(engines, "check_model_spec", lambda args: None)
    monkeypatch.setattr(cli, "_check_streams", lambda args, closed: None)
    monkeypatch.setattr(cli, "check_output_path", lambda option, path: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.chdir(tmp_path)         # (nothing is written: the output paths' check is left out above)
    if argv[:1] == ["serve"]:
        cli.check_serve(cli.build_serve_parser().parse_args(argv[1:]))
    else:
        cli.check(cli.build_parser().parse_args(argv))


def test_a_cursor_in_this_repositorys_files_lies_inside_the_file():
    """`--file models/llama.py --line N --col M` on a file of this repository: line N exists and column M is at most
    one past its end, as the command requires (a file the repository lacks, app.py, is the reader's own)."""
    placed = 0
    for argv in codecomplete_commands():
        args = cli.build_parser().parse_args(argv) if argv[:1] != ["serve"] else None
        if args is None or args.file is None or args.line is None or args.stdin or args.repo != ".":
            continue
        path = ROOT / args.file
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").split("\n")
        assert args.line <= len(lines), f"{' '.join(argv)}: {args.file} has {len(lines)} lines"
        if args.col is not None:
            line = lines[args.line - 1]
            assert args.col <= len(line) + 1, f"{' '.join(argv)}: line {args.line} is {line!r}"
        placed += 1
    assert placed >= 2


def curl_examples() -> list[tuple[str, bytes, str]]:
    """Each curl line of the ```sh blocks: (path, body, the jq filter its answer goes through)."""
    examples = []
    for block in blocks("sh"):
        for line in block.splitlines():
            steps = pipeline_steps(line)
            if not steps or steps[0][0] != "curl":
                continue
            words = steps[0]
            url = next(word for word in words if word.startswith("http://"))
            body = words[words.index("-d") + 1].encode()
            jq = next((step[-1] for step in steps[1:] if step[0] == "jq"), ".")
            examples.append((re.sub(r"^http://[^/]+", "", url), body, jq))
    return examples


@pytest.fixture(scope="module")
def client(table_engine, repo, tmp_path_factory):
    from prompts import index_repository

    with in_process(table_engine, index_repository(repo, cache_dir=tmp_path_factory.mktemp("readme-index"))) as client:
        yield client


@pytest.mark.parametrize("path, body, jq", curl_examples(), ids=lambda value: str(value)[:40])
def test_each_curl_example_is_answered(client, path, body, jq):
    """As curl sends it: the body as written, curl's own Content-Type for -d (form-urlencoded, which llama.cpp's
    server takes as JSON too); the answer holds a string where the jq filter looks."""
    response = client.post(path, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    value = response.json()
    for key, index in re.findall(r"\.(\w+)|\[(\d+)\]", jq):
        value = value[key] if key else value[int(index)]
    assert isinstance(value, str), (jq, response.text)


def test_the_json_result_example_names_the_fields_a_result_has():
    """The README's `--json` object: valid JSON, and every field it shows (timings' too) one the command writes."""
    from types import SimpleNamespace

    from codecomplete.render import result_json
    from models.generation import Timings

    (shown,) = [json.loads(block) for block in blocks("json") if block.lstrip().startswith('{"completion"')]
    timings = Timings()
    result = SimpleNamespace(text="", token_ids=[], healing_tokens=0, token_counts=lambda: (0, 0),
                             reused_prefix_tokens=0, finish_reason="stop", not_a_number=False, timings=timings)
    item = SimpleNamespace(path="a.py", start_line=1, end_line=1, tokens=1, form="whole", buffer=False)
    engine = SimpleNamespace(name="m", device="cpu", attention="sdpa")
    written = result_json("completion", result, engine, [item])
    assert set(shown) <= set(written), set(shown) - set(written)
    assert set(shown["timings"]) <= set(written["timings"]), set(shown["timings"]) - set(written["timings"])
    assert set(shown["context"][0]) == set(written["context"][0])


def test_serve_help_names_every_api_the_readme_says_it_speaks():
    """`codecomplete serve --help` said "llama.cpp's /infill and /completion, the OpenAI API, Ollama's and Tabby's"
    after Mistral's FIM and TGI's routes came; the README's usage table lists every family."""
    (row,) = re.findall(r"^\| `codecomplete serve \[REPO\]` \| a warm server for editors \(([^)]*) APIs\)", README,
                        flags=re.MULTILINE)
    apis = re.split(r", | and ", row)
    assert len(apis) >= 6, apis
    description = cli.build_serve_parser().description
    assert [api for api in apis if api not in description] == [], description
