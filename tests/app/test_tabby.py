"""`codecomplete serve` for Tabby's editor plugins: the bodies tabby-agent sends (its 1.5.0 LSP server's, and today's
codeCompletion/buildRequest.ts's) answered in Tabby's shape, with a prompt built as /infill builds it; the health and
events the agent asks for; OpenAI's bodies on the shared path answered as before; and tabby-agent itself, from npm,
completing code over LSP against the server. The server runs as a subprocess with an API key, as the agent's token
(the tests of the prompt and of how any answer is carried: a second one, of conftest's table model)."""
import json
import re
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest
from models.options import cpu_name
from server_process import ServerProcess, raw_post
from tabby_agent import Agent

KEY = "tabby-token"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_TOKENS = 12
PREFIX = "def total_area(rectangles: list[Rectangle]) -> float:\n    \"\"\"The sum of the areas.\"\"\"\n    "
SUFFIX = "\n\n\ndef report(radius: float) -> str:\n    return str(radius)\n"
GEOMETRY = "class Rectangle:\n    def area(self) -> float:\n        return self.width * self.height"
# What today's agent sends on an automatic trigger (no temperature: the server's default), its fields as
# buildRequest.ts fills them: paths relative to the git root, the declarations of the prefix's symbols, snippets of
# recently changed and of recently viewed files (a viewed one's score is always 1, an integer in JSON).
AGENT_BODY = {"language": "python", "segments": {
    "prefix": PREFIX, "suffix": SUFFIX, "filepath": "app.py", "git_url": "https://github.com/example/shapes.git",
    "declarations": [{"filepath": "shapes/geometry.py", "body": GEOMETRY}],
    "relevant_snippets_from_changed_files": [
        {"filepath": "shapes/geometry.py", "body": "def area_of_circle(radius: float) -> float:", "score": 0.62}],
    "relevant_snippets_from_recently_opened_files": [
        {"filepath": "README.md", "body": "# shapes\nA tiny geometry package.", "score": 1}]}}
# tabby-agent 1.5.0's LSP server: no workspace, so no filepath, and no declarations or snippets (its log, verbatim).
LSP_BODY = {"language": "python", "segments": {"prefix": "def fibonacci(n):\n    ", "suffix": "\n"}}
PYTHON_STOPS = ("\n#", "\ndef", "\nfrom", "\nclass", "\nimport", "\n\n")     # Tabby's languages.toml


@pytest.fixture(scope="module")
def server(script, cli_env, served_repo, tmp_path_factory):
    yield from _tabby_server(script, cli_env, served_repo, tmp_path_factory.mktemp("tabby"))


@pytest.fixture(scope="module")
def table_tabby(script, cli_env, served_repo, tmp_path_factory, table_model):
    """`server`'s options and key, conftest's table model's weights (the embedded model's tokenizer and context, a
    known greedy answer, hundreds of tokens a second): for the tests of the prompt a body builds and of how any
    answer is carried (its line ends, a temperature's draw), whatever the model writes."""
    yield from _tabby_server(script, cli_env, served_repo, tmp_path_factory.mktemp("tabby-table"),
                             "--model", str(table_model))


def _tabby_server(script, cli_env, served_repo, folder, *options):
    process = ServerProcess(script, served_repo, cli_env, folder, "--api-key", KEY,
                            "--context-tokens", "512", "--max-tokens", str(MAX_TOKENS), *options)
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()
        assert "Traceback" not in process.log(), process.log()


def complete(server, body: dict) -> dict:
    response = httpx.post(server.url + "/v1/completions", json=body, headers=AUTH, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def debug_prompt(server, body: dict, **segments) -> tuple[str, str]:
    """The prompt a Tabby body builds (debug_options.return_prompt) and its greedy text."""
    answer = complete(server, {**body, "segments": {**body["segments"], **segments}, "temperature": 0,
                               "debug_options": {"return_prompt": True}})
    return answer["debug_data"]["prompt"], answer["choices"][0]["text"]


def test_the_agents_bodies_are_answered_in_tabbys_shape(server):
    ids = set()
    for body in (AGENT_BODY, {**AGENT_BODY, "temperature": 0.8}, LSP_BODY, {**LSP_BODY, "seed": 2 ** 64 - 1}):
        answer = complete(server, body)
        assert set(answer) == {"id", "choices", "mode"} and answer["mode"] == "standard", answer
        assert re.fullmatch(r"cmpl-[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}", answer["id"]), answer
        (choice,) = answer["choices"]
        assert set(choice) == {"index", "text"} and choice["index"] == 0 and isinstance(choice["text"], str), answer
        ids.add(answer["id"])
    assert len(ids) == 4 and complete(server, {**LSP_BODY, "temperature": 0})["choices"][0]["text"].strip()
    seeded = {**AGENT_BODY, "temperature": 1.5, "seed": 7}
    assert complete(server, seeded)["choices"] == complete(server, seeded)["choices"]     # the seed reaches the draw


def test_the_prompt_is_the_one_infill_builds_with_the_clients_chunks_most_important_nearest(table_tabby):
    """A Tabby body is /infill's request: the cursor's text, the client's declarations and snippets as input_extra
    (the least important first, where the oldest would be: declarations nearest the code), the same prompt and,
    greedy, the same text."""
    server = table_tabby
    segments = {key: value for key, value in AGENT_BODY["segments"].items() if key != "filepath"}
    prompt, text = debug_prompt(server, {"segments": segments})         # no file named, no language: /infill's
    chunks = [segments["relevant_snippets_from_recently_opened_files"][0],
              segments["relevant_snippets_from_changed_files"][0], segments["declarations"][0]]
    infill = httpx.post(server.url + "/infill", headers=AUTH, timeout=300, json={
        "input_prefix": PREFIX, "input_suffix": SUFFIX, "temperature": 0,
        "input_extra": [{"filename": chunk["filepath"], "text": chunk["body"]} for chunk in chunks]}).json()
    # (no language: Tabby's stop words for one it does not know end the text at its line's end; /infill has none)
    assert prompt == infill["prompt"] and text == infill["content"].split("\n")[0]
    assert prompt.index("A tiny geometry package") < prompt.index("area_of_circle(radius") < prompt.index(GEOMETRY)


def test_a_completion_ends_where_tabbys_server_ends_it(server):
    """Tabby's stop words: in a language it knows, before a blank line or a new line that opens with a top-level
    keyword or a comment; in one it does not, at the line's end. /infill (which has none) shows where that is."""
    infill = httpx.post(server.url + "/infill", headers=AUTH, timeout=300, json={
        "input_prefix": LSP_BODY["segments"]["prefix"], "input_suffix": "\n", "temperature": 0}).json()["content"]
    unknown = complete(server, {"segments": LSP_BODY["segments"], "temperature": 0})["choices"][0]["text"]
    assert "\n" in infill.strip() and unknown == infill.split("\n")[0], (infill, unknown)
    for language in ("plaintext", "css", "a-language-nobody-knows"):      # (Tabby has no keywords for them either)
        body = {"language": language, "segments": {**LSP_BODY["segments"], "filepath": "fib.py"}, "temperature": 0}
        assert "\n" not in complete(server, body)["choices"][0]["text"]
    python = complete(server, {**LSP_BODY, "segments": {**LSP_BODY["segments"], "filepath": "fib.py"},
                               "temperature": 0})["choices"][0]["text"]
    assert "\n" in python, python                      # several lines: a function's body goes on
    # a text that would go on past a blank line into a new definition ends before it
    prefix = "def double(x):\n    return 2 * x\n\n\ndef triple(x):\n    return 3 * x\n\n\ndef quadruple(x):\n    "
    body = {"language": "python", "temperature": 0, "segments": {"prefix": prefix, "suffix": "\n", "filepath": "m.py"}}
    text = complete(server, body)["choices"][0]["text"]
    openai = complete(server, {"prompt": prefix, "max_tokens": MAX_TOKENS, "temperature": 0})["choices"][0]["text"]
    assert "\n\n" in openai and text.strip() and "\n\n" not in text and "def" not in text, (text, openai)


@pytest.mark.parametrize("language, words", [
    ("python", ["\n#", "\ndef", "\nclass", "\nimport", "\nfrom", "\n\n"]),
    ("typescriptreact", ["\n//", "\nexport", "\nfunction", "\nconst", "\n\n"]),
    ("go", ["\n//", "\nfunc", "\ntype", "\n\n"]),
    (None, ["\n", "\n\n"]), ("html", ["\n", "\n\n"]),
])
def test_tabbys_stop_words_by_language(language, words):
    from codecomplete.server.tabby import stop_words

    assert set(words) <= set(stop_words(language)) and (language in ("python", "typescriptreact", "go")) == (
        "\n" not in stop_words(language))


def test_a_raw_prompt_is_continued_as_it_is_as_openais_prompt_is(server):
    """debug_options.raw_prompt: Tabby's way to test its model with a prompt of its own (the segments unread)."""
    body = {"language": "python", "segments": {"prefix": "unused"}, "temperature": 0,
            "debug_options": {"raw_prompt": "def add(a, b):", "return_prompt": True}}
    answer = complete(server, body)
    assert answer["debug_data"] == {"prompt": "def add(a, b):"}
    openai = complete(server, {"prompt": "def add(a, b):", "max_tokens": MAX_TOKENS, "temperature": 0})
    ends = [at for at in (openai["choices"][0]["text"].find(word) for word in PYTHON_STOPS) if at >= 0]
    assert answer["choices"][0]["text"] == openai["choices"][0]["text"][:min(ends, default=None)]
    assert "\n" in answer["choices"][0]["text"]


@pytest.mark.parametrize("raw", ["def add(a, b):\r\n    return a + b\r\n\r\ndef sub(a, b):\r\n    ret",
                                 "def add(a, b):\r    return a + b\r\rdef sub(a, b):\r"])
def test_a_raw_prompts_debug_prompt_is_the_prompt_as_sent_crlf_too(server, raw):
    """debug_data.prompt of a raw_prompt is the prompt as sent, as llama.cpp's /completion echoes it: a CRLF one came
    back with the "\n" the model reads (the healed end "ret" written again after it)."""
    answer = complete(server, {"language": "python", "temperature": 0,
                               "debug_options": {"raw_prompt": raw, "return_prompt": True}})
    assert answer["debug_data"] == {"prompt": raw}


def test_the_cursors_file_is_filepath_in_the_repository_however_the_agent_writes_it(table_tabby, served_repo, tmp_path):
    """Relative to the git root (or workspace), absolute, or the document's file:// URI when the agent found neither,
    through a link to the repository too (the editor's folder a link, the server's its target): the same file of the
    repository. A file outside it lends only its extension, as a body without one lends its language's."""
    server = table_tabby
    alias = tmp_path / "alias"
    alias.symlink_to(served_repo, target_is_directory=True)
    prompts = {filepath: debug_prompt(server, AGENT_BODY, filepath=filepath)[0] for filepath in
               ("app.py", str(served_repo / "app.py"), (served_repo / "app.py").as_uri(), str(alias / "app.py"),
                (alias / "app.py").as_uri())}
    assert len(set(prompts.values())) == 1
    in_repository = prompts["app.py"]
    outside, _ = debug_prompt(server, AGENT_BODY, filepath="file:///elsewhere/project/tools.py")
    unnamed, _ = debug_prompt(server, {**AGENT_BODY, "segments": {
        key: value for key, value in AGENT_BODY["segments"].items() if key != "filepath"}})
    assert outside == unnamed != in_repository
    tail = PREFIX.rstrip()[:30]
    assert f"app.py\n{tail}" in in_repository and f"untitled.py\n{tail}" in outside and "elsewhere" not in outside


def test_a_cursor_file_named_elsewhere_lends_only_its_extension_however_it_is_named(table_tabby, served_repo, tmp_path):
    """A path through a folder linked out of the repository, one under ~, a Windows drive's path, a file:// URI of
    another host or one that is no URI at all, a name with a NUL: a file elsewhere, whose prompt is a file outside's
    (`untitled.py`), neither a 400 (the session's check of the path) nor a 500 (urlsplit's ValueError, resolve's)."""
    server = table_tabby
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "tools.py").write_text("TOKEN = 'not for the prompt'\n")
    link = served_repo / "linked"
    link.symlink_to(elsewhere, target_is_directory=True)
    try:
        outside, _ = debug_prompt(server, AGENT_BODY, filepath="file:///elsewhere/project/tools.py")
        for filepath in ("linked/tools.py", "~/tools.py", "C:\\Users\\me\\shapes\\app.py",
                         f"file://otherhost{served_repo}/app.py", "file://[::1/app.py", "shapes\0/app.py"):
            prompt, _ = debug_prompt(server, AGENT_BODY, filepath=filepath)
            assert prompt == outside, (filepath, prompt)
    finally:
        link.unlink()


def test_at_most_tabbys_64_new_tokens_where_the_server_allows_more(script, cli_env, served_repo, tmp_path):
    """tabby-agent sets no limit: Tabby's server gives 64 tokens (its max_decoding_tokens), and so does this one
    when its own default (--max-tokens) is larger; a smaller one wins (the module's server: 12)."""
    roomy = ServerProcess(script, served_repo, cli_env, tmp_path, "--context-tokens", "256", "--max-tokens", "80")
    try:
        body = {"language": "python", "temperature": 0, "segments": {  # one line that goes on and on: no stop word
            "prefix": "SQUARES = [" + ", ".join(str(i * i) for i in range(1, 9)) + ", ", "suffix": "]\n"}}
        text = httpx.post(roomy.url + "/v1/completions", json=body, timeout=300).json()["choices"][0]["text"]
        for _ in range(100):                 # (a job's line is written just after its answer)
            lines = [line for line in roomy.log().splitlines() if line.startswith("POST /v1/completions")]
            if lines:
                break
            time.sleep(0.1)
        assert lines[-1].endswith("· length") and "· 64 tokens ·" in lines[-1] and "\n" not in text, (lines, text)
    finally:
        assert roomy.stop() == 0, roomy.log()


def test_text_with_crlf_line_ends_is_answered_with_crlf_line_ends(table_tabby):
    """As Tabby's server: the prompt reads the text with LF, the answer's line ends become the editor's again."""
    server = table_tabby
    body = {"language": "python", "segments": {"prefix": "def fibonacci(n):\n    ", "suffix": "\n"}, "temperature": 0}
    unix = complete(server, body)["choices"][0]["text"]
    assert "\n" in unix                                  # (else there would be nothing to convert)
    windows = complete(server, {**body, "segments": {"prefix": "def fibonacci(n):\r\n    ", "suffix": "\r\n"}})
    assert windows["choices"][0]["text"] == unix.replace("\n", "\r\n")


def test_a_temperature_past_float32s_range_draws_as_float32s_largest(table_tabby):
    """Tabby (and llama.cpp's routes) take any temperature. Past float32's largest, 1e300 divided the logits into NaN:
    one token drawn from nothing, an empty answer. It draws as the largest float32 does: every token alike."""
    server = table_tabby
    body = {**LSP_BODY, "seed": 3}
    huge, largest = (complete(server, {**body, "temperature": t})["choices"][0]["text"] for t in (1e300, 3e38))
    assert huge == largest and huge, (huge, largest)
    reply = httpx.post(server.url + "/completion", headers=AUTH, timeout=300, json={
        "prompt": "def add(a, b):", "n_predict": 6, "temperature": 1e300, "seed": 3}).json()
    assert reply["tokens_predicted"] == 6, reply


def test_health_is_tabbys_and_llama_cpps_without_a_key(server):
    """The agent is ready on a 200 and offers completions while `model` is set (1.5.0: and `device`); it reads
    `version.git_describe`, and a version below 0.9 spares it /v1beta/server_setting."""
    for method in ("GET", "POST"):                 # POST: Tabby's too, which the agent tries after a 405
        health = httpx.request(method, server.url + "/v1/health").json()
        assert health["status"] == "ok" and health["model"] == server.info["engine"]["name"], health
        assert health["device"] == "cpu" and health["cuda_devices"] == [] and health["webserver"] is False
        assert health["version"]["git_describe"] == f"codecomplete {server.info['version']}"
        assert health["cpu_info"] == cpu_name() and health["cpu_info"] not in ("", "unknown"), health   # sysinfo's
    assert httpx.head(server.url + "/v1/health").status_code == 200
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}         # llama.cpp's, as it was


def test_events_are_accepted_and_other_types_refused(server):
    for kind in ("view", "select", "dismiss"):
        event = {"type": kind, "completion_id": "cmpl-1", "choice_index": 0, "view_id": "view-1", "elapsed": 120}
        response = httpx.post(server.url + "/v1/events", params={"select_kind": "line"}, json=event, headers=AUTH)
        assert response.status_code == 200 and response.content == b""


@pytest.mark.parametrize("path, body, status, words", [
    ("/v1/completions", {"language": "python", "segments": {"suffix": "x"}}, 400, ["segments.prefix", "required"]),
    ("/v1/completions", {"segments": {"prefix": 5}}, 400, ["segments.prefix", "string"]),
    ("/v1/completions", {"segments": {"prefix": "x", "declarations": [{"filepath": "a.py"}]}}, 400,
     ["segments.declarations[0].body"]),
    ("/v1/completions", {"segments": {"prefix": "x", "relevant_snippets_from_changed_files": [
        {"filepath": "a.py", "body": "b", "score": "high"}]}}, 400, ["relevant_snippets_from_changed_files[0].score"]),
    ("/v1/completions", {"segments": {"prefix": "x"}, "temperature": "0.2"}, 400, ["temperature"]),
    ("/v1/completions", {"segments": {"prefix": "x"}, "temperature": -1}, 400, ["temperature"]),
    ("/v1/completions", {"segments": {"prefix": "x"}, "seed": -1}, 400, ["seed"]),
    ("/v1/completions", {"segments": {"prefix": "x"}, "mode": "next_edit_suggestion"}, 400,
     ["next_edit_suggestion", "not supported"]),
    ("/v1/completions", {"segments": {"prefix": "x"}, "debug_options": {"return_snippets": True}}, 400,
     ["return_snippets", "not supported"]),
    ("/v1/completions", {"language": "python", "debug_options": {"return_prompt": True}}, 400, ["empty prompt"]),
    ("/v1/completions", {"debug_options": {"raw_prompt": ""}}, 400, ["empty"]),
    ("/v1/completions", {"segments": {"prefix": "x", "filepath": "../outside.py"}}, 200, []),   # only a name
    ("/v1/completions", {**LSP_BODY, "segments": {"prefix": "def f(:\n    "}}, 200, []),
    ("/v1/completions", {"segments": {"prefix": "x", "declarations": [{"filepath": "file://[::1/a.py", "body": "b"}]}},
     200, []),                                                                           # only a label, not a URI
    ("/v1/events", {"type": "click", "completion_id": "cmpl-1", "choice_index": 0}, 400, ["'click'", "view"]),
    ("/v1/events", {"type": "view", "choice_index": 0}, 400, ["completion_id", "required"]),
    ("/v1/events", {"type": "view", "completion_id": "cmpl-1", "choice_index": -1}, 400, ["choice_index"]),
])
def test_bad_bodies_get_a_400_that_names_the_field_and_the_server_serves_on(server, path, body, status, words):
    code, text = raw_post(server.url, path, json.dumps(body).encode(), {"Content-Type": "application/json", **AUTH})
    assert code == status and "Traceback" not in text, (code, text)
    if status != 200:
        error = json.loads(text)["error"]
        assert error["code"] == status and error["type"] == "invalid_request_error", error
        assert all(word in error["message"] for word in words), error
    assert httpx.get(server.url + "/v1/health").status_code == 200


def test_tabbys_routes_need_the_key_but_health(server):
    for path, body in (("/v1/completions", LSP_BODY),
                       ("/v1/events", {"type": "view", "completion_id": "c", "choice_index": 0})):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = httpx.post(server.url + path, json=body, headers=headers)
            assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server.url + "/v1/health").status_code == 200


def test_openai_bodies_on_the_shared_path_are_answered_as_before(server):
    """Only a `segments` (or `debug_options`) object makes a body Tabby's: OpenAI's, `segments: null` included,
    get OpenAI's answers, streams and errors."""
    for body in ({"prompt": "def f(x):", "max_tokens": 3, "temperature": 0},
                 {"prompt": "def f(x):", "suffix": "\n", "max_tokens": 3, "temperature": 0, "segments": None}):
        answer = complete(server, body)
        assert answer["object"] == "text_completion" and answer["id"].startswith("cmpl-"), answer
        assert set(answer) == {"id", "object", "created", "model", "choices", "usage"}
        assert answer["choices"][0]["finish_reason"] in ("stop", "length") and answer["usage"]["completion_tokens"]
    with httpx.stream("POST", server.url + "/v1/completions", headers=AUTH, timeout=300,
                      json={"prompt": "def f(x):", "max_tokens": 2, "stream": True}) as response:
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(event.startswith("data: {") for event in events[:-1]), events
    for body, words in (({}, "prompt: Field required"), ({"prompt": "x", "n": 2}, "n > 1"),
                        ({"segments": "def f():"}, "prompt: Field required")):
        response = httpx.post(server.url + "/v1/completions", json=body, headers=AUTH)
        assert response.status_code == 400 and words in response.json()["error"]["message"], response.text


def test_a_client_that_goes_away_cancels_its_completion(server):
    """tabby-agent aborts the request a keystroke supersedes: its generation stops where it is (its job's log line
    says `cancelled`), though asked whole the same request runs to the limit."""
    def completions() -> list[str]:
        return [line for line in server.log().splitlines() if line.startswith("POST /v1/completions")]
    before = len(completions())
    # a prompt the cache does not hold (its prefill takes a while), whose greedy answer runs to the limit
    prefix = "".join(f"def step_{i}(value: int) -> int:\n    return value * {i} + {i * 7}\n\n\n" for i in range(12))
    data = json.dumps({"language": "python", "temperature": 0, "segments": {"prefix": prefix + "def step_12(value",
                                                                              "filepath": "steps.py"}}).encode()
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as connection:
        head = f"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n"
        connection.sendall(f"{head}Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                           + data)
        time.sleep(0.2)                      # the request is in: the engine took it up
    complete(server, json.loads(data))       # the same request, whole
    for _ in range(300):                     # (a job's line is written just after its answer)
        lines = completions()[before:]       # (earlier requests' lines, if any came late, and then these two)
        gone = [number for number, line in enumerate(lines) if line.endswith("· cancelled")]
        if gone and len(lines) > gone[0] + 1:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"no completion was cancelled, or none followed it: {lines}")
    (whole,) = lines[gone[0] + 1:]
    assert whole.endswith("· length") and f"· {MAX_TOKENS} tokens ·" in whole, whole


def test_tabby_agent_from_npm_completes_code_against_the_server(server, tmp_path):
    """The real client: tabby-agent (npm, pinned) as an editor starts it, with the server's address and key in its
    config. It checks the health, is ready, and answers an LSP completion at a cursor with the server's text."""
    agent = Agent(tmp_path / "home", server.url, KEY)
    try:
        started = agent.request("initialize", {"processId": None, "rootUri": None, "capabilities": {},
                                               "clientInfo": {"name": "pytest", "version": "1"}})
        assert started["result"]["serverInfo"] == {"name": "tabby-agent", "version": "1.5.0"}, started
        agent.notify("initialized", {})
        uri = "file:///tmp/project/fib.py"
        agent.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                               "text": "def fibonacci(n):\n    \n"}})
        listed = agent.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                           "position": {"line": 1, "character": 4}})["result"]
    finally:
        assert agent.close() == 0
    log = agent.log()
    statuses = [entry["event"]["status"] for entry in log if entry.get("msg") == "Status changed"]
    assert statuses and statuses[0] == "ready" and "disconnected" not in statuses, statuses
    assert not [n for n in agent.notifications if n["method"] == "window/showMessage"], agent.notifications
    (answer,) = [entry["response"]["data"] for entry in log if entry.get("msg") == "Completion response"]
    (item,) = listed["items"]
    assert item["data"]["completionId"] == answer["id"] and answer["id"].startswith("cmpl-")
    # the agent's own post-processing may trim the text it got (a last line cut short): what it inserts comes from it
    assert item["textEdit"]["newText"].strip() and answer["choices"][0]["text"].startswith(item["textEdit"]["newText"])
    assert item["textEdit"]["range"]["start"] == {"line": 1, "character": 4}
