"""`codecomplete serve` under bad requests, clients that go away, a full queue, API keys and a stop signal: every
failure is a JSON error with its status, and the server serves on with a consistent cache."""
import json
import random
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import OverloadedError
from server_process import ServerProcess, in_process, raw_post

from codecomplete import engines
from codecomplete.session import Sampling, Session

KEY = "sekret-key"
PREFIX = "from shapes.geometry import Rectangle, area_of_circle\n\n\ndef report(radius: float) -> str:\n"
SUFFIX = "\n    return f\"circle of radius {radius}: {area:.2f}\"\n"


def check_error(server, status: int, kind: str, path: str, body: bytes | dict, words=(), headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    code, text = raw_post(server.url, path, data, {"Content-Type": "application/json", **(headers or {})})
    assert code == status, (code, text)
    error = json.loads(text)["error"]
    assert error["code"] == status and error["type"] == kind and "Traceback" not in text
    for word in words:
        assert word in error["message"], error
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}      # and it serves on


INFILL = {"input_prefix": "def f():\n", "input_suffix": ""}


@pytest.mark.parametrize("path, body, status, kind, words", [
    ("/infill", b'{"input_prefix": "x",', 400, "invalid_request_error", ["not valid JSON"]),
    ("/infill", b"", 400, "invalid_request_error", ["not valid JSON"]),
    ("/infill", b"[1, 2]", 400, "invalid_request_error", ["JSON object"]),
    ("/infill", b'{"input_prefix": "\xff\xfe", "input_suffix": ""}', 400, "invalid_request_error", ["UTF-8"]),
    ("/infill", {"input_prefix": 5, "input_suffix": ""}, 400, "invalid_request_error", ["input_prefix"]),
    ("/infill", {**INFILL, "n_predict": "5"}, 400, "invalid_request_error", ["n_predict", "integer"]),
    ("/infill", {"input_prefix": "x"}, 400, "invalid_request_error", ["input_suffix", "required"]),
    ("/infill", {**INFILL, "input_extra": [{"filename": "a.py"}]}, 400, "invalid_request_error",
     ["input_extra[0].text"]),
    ("/infill", {**INFILL, "n_predict": -5}, 400, "invalid_request_error", ["n_predict"]),
    ("/infill", {**INFILL, "n_probs": "5"}, 400, "invalid_request_error", ["n_probs"]),    # (any number: llama.cpp's)
    ("/infill", {**INFILL, "samplers": ["top_k", 5]}, 400, "invalid_request_error", ["samplers[1]"]),
    ("/v1/completions", {"prompt": "x", "repetition_penalty": 0}, 400, "invalid_request_error",
     ["repetition_penalty"]),
    # constrained decoding: text that ignored it would pass for what was asked; a logit bias it cannot apply
    ("/completion", {"prompt": "x", "grammar": "root ::= \"yes\""}, 501, "not_supported_error", ["grammar"]),
    ("/completion", {"prompt": "x", "json_schema": {}}, 501, "not_supported_error", ["json_schema"]),
    ("/infill", {**INFILL, "logit_bias": [[15, True]]}, 400, "invalid_request_error", ["logit_bias"]),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"15": -101}}, 400, "invalid_request_error", ["logit_bias"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "json_schema": {"type": "object"}},
     400, "invalid_request_error", ["json_schema"]),
    ("/completion", {"prompt": [1, 2, 10 ** 7]}, 400, "invalid_request_error", ["outside the vocabulary"]),
    ("/completion", {"prompt": [1, 2, 49152]}, 400, "invalid_request_error", ["outside the vocabulary"]),  # = its size
    ("/completion", {"prompt": [-1]}, 400, "invalid_request_error", ["outside the vocabulary"]),
    ("/v1/completions", {"prompt": "a", "top_p": 1.5}, 400, "invalid_request_error", ["top_p"]),
    ("/completion", {"prompt": "x " * 2000}, 400, "exceed_context_size_error", ["does not fit"]),
    # streamed: the prompt is checked before the stream starts, so still a plain 400, not 200 and an error frame
    ("/completion", {"prompt": "x " * 2000, "stream": True}, 400, "exceed_context_size_error", ["does not fit"]),
    ("/v1/completions", {"prompt": "x " * 2000, "stream": True}, 400, "exceed_context_size_error", ["does not fit"]),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "invalid_request_error", ["one prompt"]),
    # usage asked for in a last chunk that no stream will send: vLLM's 400 (OpenAI's too)
    ("/v1/completions", {"prompt": "a", "max_tokens": 1, "stream_options": {"include_usage": True}}, 400,
     "invalid_request_error", ["stream_options", "stream: true"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "stream": False,
                              "stream_options": {}}, 400, "invalid_request_error", ["stream_options", "stream: true"]),
    ("/v1/completions", {"prompt": "a", "n": 2}, 400, "invalid_request_error", ["n > 1"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
     400, "invalid_request_error", ["tools"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "response_format": {
        "type": "json_object"}}, 400, "invalid_request_error", ["response_format 'json_object' is not supported"]),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_request_error",
     ["messages[0].role"]),
    # the older API's tools, and a tool call demanded: prose back would pass for a call
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "functions": [{"name": "f"}]}, 400,
     "invalid_request_error", ["tools"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}, 400,
     "invalid_request_error", ["tool_choice 'required'"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "function_call": {"name": "f"}}, 400,
     "invalid_request_error", ["function_call"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "modalities": ["text", "audio"],
                              "audio": {"voice": "alloy", "format": "wav"}}, 400, "invalid_request_error",
     ["modalities", "audio"]),
    # a content part the model cannot read is named as such, not as "content: Input should be a valid string"
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]},
     400, "invalid_request_error", ["messages[0].content[1].type", "'text'"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, 400,
     "invalid_request_error", ["messages[0].content[0].text", "required"]),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "invalid_request_error",
     ["messages[0].content"]),
    ("/codecomplete/v1/complete", {"path": "../outside.py", "text": "x = 1\n", "max_tokens": 1}, 400,
     "invalid_request_error",
     ["outside the repository"]),
    ("/codecomplete/v1/complete", {"path": "/etc/passwd", "max_tokens": 1}, 400, "invalid_request_error",
     ["outside the repository"]),
    ("/codecomplete/v1/complete", {"path": "", "max_tokens": 1}, 400, "invalid_request_error",
     ["path: String should have at least 1 character"]),
    ("/no/such/route", {}, 404, "not_found_error", ["no route"]),
    # numbers JSON allows and a generation cannot use: an infinity (1e999), seeds past a generator's 64 bits
    ("/infill", b'{"input_prefix": "x", "input_suffix": "", "temperature": 1e999}', 400, "invalid_request_error",
     ["temperature", "finite"]),
    ("/v1/completions", {"prompt": "a", "seed": 2 ** 64}, 400, "invalid_request_error", ["seed"]),
    # penalties within their ranges: OpenAI's -2..2; llama.cpp's repeat_last_n from -1 (the context), a repeat
    # penalty above 0 (it divides)
    ("/v1/completions", {"prompt": "a", "presence_penalty": 2.5}, 400, "invalid_request_error", ["presence_penalty"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "frequency_penalty": -3}, 400,
     "invalid_request_error", ["frequency_penalty"]),
    ("/completion", {"prompt": "a", "repeat_last_n": -2}, 400, "invalid_request_error", ["repeat_last_n"]),
    ("/infill", {**INFILL, "repeat_penalty": 0}, 400, "invalid_request_error", ["repeat_penalty"]),
    ("/completion", {"prompt": "a", "seed": -(2 ** 63) - 1}, 400, "invalid_request_error", ["seed"]),
    ("/codecomplete/v1/complete", {"path": "a\u0000b.py", "max_tokens": 1}, 400, "invalid_request_error", ["NUL"]),
    # JSON that parses into something Python cannot hold: arrays 100,000 deep, an integer of 5,000 digits
    ("/completion", b'{"prompt": "x", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "invalid_request_error",
     ["nests too deeply"]),
    # 900 deep: parsed, then too deep to walk (its strings' surrogates) or validate
    ("/completion", b'{"prompt": "x", "a": ' + b"[" * 900 + b"]" * 900 + b"}", 400, "invalid_request_error",
     ["nests too deeply"]),
    ("/completion", b'{"prompt": "x", "top_k": ' + b"9" * 5000 + b"}", 400, "invalid_request_error", ["JSON"]),
    ("/codecomplete/v1/chat", {"max_tokens": 1, "messages": [{"role": "user"}]}, 400, "invalid_request_error",
     ["messages[0].content"]),
    ("/codecomplete/v1/chat", {"max_tokens": 1, "messages": [{"role": "tool", "content": "x"}]}, 400,
     "invalid_request_error", ["messages[0].role"]),
    # min_p is a fraction of the likeliest token's probability: 0..1 on the OpenAI routes, as vLLM checks it (llama.cpp
    # and Ollama take any number, as 0..1), and a top_k below -1 is vLLM's 400 too
    ("/v1/completions", {"prompt": "a", "min_p": 2}, 400, "invalid_request_error", ["min_p"]),
    ("/v1/completions", {"prompt": "a", "top_k": -2}, 400, "invalid_request_error", ["top_k"]),
    # samplers llama.cpp has and this server does not: a value that would change the draw is refused, not ignored
    ("/completion", {"prompt": "a", "typical_p": 0.5}, 400, "invalid_request_error", ["typical_p", "not supported"]),
    ("/infill", {**INFILL, "samplers": ["top_k", "dry"], "dry_multiplier": 0.8}, 400, "invalid_request_error",
     ["dry_multiplier", "not supported"]),
    ("/completion", {"prompt": "a", "xtc_probability": 0.5}, 400, "invalid_request_error", ["xtc_probability"]),
    ("/completion", {"prompt": "a", "samplers": "s", "top_n_sigma": 1.0}, 400, "invalid_request_error",
     ["top_n_sigma"]),
    ("/completion", {"prompt": "a", "samplers": ["adaptive_p"], "adaptive_target": 0.3}, 400,
     "invalid_request_error", ["adaptive_target"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "typical_p": 0.9}, 400,
     "invalid_request_error", ["typical_p"]),
])
def test_bad_requests_get_their_status_and_a_json_error(server, path, body, status, kind, words):
    check_error(server, status, kind, path, body, words)


def test_more_new_tokens_than_the_context_holds_run_until_it_is_full(server):
    """llama.cpp and Ollama take a limit past the context and stop where it fills (an editor's chat default of
    4,096 on a small CPU context): so do all routes here, the answer saying it ended at the limit."""
    n_ctx = httpx.get(server.url + "/props").json()["default_generation_settings"]["n_ctx"]
    tokens = httpx.post(server.url + "/tokenize", json={"content": "x " * 2000}).json()["tokens"]
    prompt = tokens[:n_ctx - 4]
    room = n_ctx - len(prompt) + 1                        # 4 fed back into the cache, and the last one sampled
    answer = httpx.post(server.url + "/completion", json={"prompt": prompt, "n_predict": 10 ** 9}, timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["truncated"] and body["stop_type"] == "limit" and body["tokens_predicted"] == room, body
    options = {"model": "m", "prompt": prompt, "max_tokens": 10 ** 6}
    choice = httpx.post(server.url + "/v1/completions", json=options, timeout=120).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    text = httpx.post(server.url + "/detokenize", json={"tokens": prompt}).json()["content"]
    generated = httpx.post(server.url + "/api/generate", json={"model": "m", "prompt": text, "raw": True,
                                                                "stream": False, "options": {"num_predict": 4096}},
                           timeout=120).json()
    assert generated["done_reason"] == "length" and 0 < generated["eval_count"] <= room + 1, generated


def test_a_long_limit_leaves_the_prompt_at_least_half_its_budget():
    """The prompt budget shrinks to make room for new tokens down to half the server's size, no further: a limit
    past that is served until the context fills, not by a prompt cut to nothing."""
    from codecomplete.server.app import Server

    class Engine:
        context_length = 1536

    class FakeSession:
        engine = Engine()

        def prompt_budget(self, max_tokens):
            return max(1, min(1024, self.engine.context_length - max_tokens))     # engines.prompt_budget's rule

    served = Server.__new__(Server)
    served.session, served.max_tokens, served.prompt_budget, served.cache_reuse = FakeSession(), 128, 1024, 0
    assert served.sampling(None).max_tokens == 128 and served.sampling(-1).max_tokens == 128
    assert served.sampling(4096).max_tokens == 1535                    # as many as the context holds
    assert served.budget(served.sampling(128)) == 1024                 # the usual size
    assert served.budget(served.sampling(768)) == 768                  # room made for the new tokens
    assert served.budget(served.sampling(1200)) == 512                 # half the usual size, no less
    assert served.budget(served.sampling(4096)) == 512


def test_a_link_out_of_the_repository_is_not_followed(server, served_repo, tmp_path):
    secret = tmp_path / "secret.py"
    secret.write_text("API_TOKEN = 'do-not-leak'\n")
    link = served_repo / "leak.py"
    link.symlink_to(secret)
    try:
        check_error(server, 400, "invalid_request_error", "/codecomplete/v1/complete",
                    {"path": "leak.py", "max_tokens": 1}, ["outside the repository"])
    finally:
        link.unlink()


def test_pinned_files_are_the_indexed_ones_only(server, served_repo, tmp_path):
    """/chat's pinned paths are read from the index: not through a link out of the repository, not a FIFO (which
    would hold the engine until someone writes to it), not an ignored file."""
    import os
    secret = tmp_path / "pinned-secret.py"
    secret.write_text("API_TOKEN = 'do-not-leak'\n")
    (served_repo / "leak.py").symlink_to(secret)
    os.mkfifo(served_repo / "fifo.py")
    try:
        for path in ("leak.py", "fifo.py", "/etc/passwd", "../pinned-secret.py"):
            check_error(server, 400, "invalid_request_error", "/codecomplete/v1/chat",
                        {"max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "pinned": [path]},
                        ["outside the repository" if "/" in path else "not among the indexed files"])
    finally:
        (served_repo / "leak.py").unlink()
        (served_repo / "fifo.py").unlink()


@pytest.mark.parametrize("headers, words", [
    ({"Host": "rebind.attacker.example:8012"}, ["Host 'rebind.attacker.example:8012' does not name this machine"]),
    # a trailing dot makes "localhost" absolute (localhost. is accepted below), and nothing more
    ({"Host": "localhost.evil.com"}, ["does not name this machine"]),
    ({"Host": "localhost..:8012"}, ["does not name this machine"]),
    ({"Host": "localhost.localhost.evil."}, ["does not name this machine"]),
    ({"Host": "evil.com."}, ["does not name this machine"]),
    ({"Host": "127.0.0.1."}, ["does not name this machine"]),       # an address is no name: no dot to take off
    ({"Host": "."}, ["does not name this machine"]),
    ({"Origin": "http://rebind.attacker.example"}, ["from web pages"]),
    ({"Origin": "null"}, ["from web pages"]),
])
def test_requests_that_name_another_host_or_come_from_a_web_page_are_refused(server, headers, words):
    """DNS rebinding: a page whose domain resolves to 127.0.0.1 reaches this port, under its own Host name."""
    check_error(server, 403, "permission_error", "/completion", {"prompt": "x", "n_predict": 1}, words,
                headers=headers)
    code, _ = raw_post(server.url, "/completion", b'{"prompt": "x", "n_predict": 1}',
                       {"Host": "localhost", "Origin": "http://127.0.0.1:5173"})
    assert code == 200


@pytest.mark.parametrize("host", ["localhost.", "localhost.:8012", "LOCALHOST.", "app.localhost.:8012"])
def test_a_host_name_with_its_trailing_dot_is_the_name(server, host):
    """`localhost.` is the absolute form of `localhost` (DNS's root label; a browser sends what the user typed): the
    same machine, so it is answered as `localhost` is, and an Origin of it too."""
    code, text = raw_post(server.url, "/completion", b'{"prompt": "x", "n_predict": 1}',
                          {"Host": host, "Origin": f"http://{host}"})
    assert code == 200, text


@pytest.mark.parametrize("fields, words", [
    # the check read the last (a dict of the headers), the routes would read the first (two Host fields are h11's 400)
    ([("Origin", "https://evil.example"), ("Origin", "http://localhost")], ["(https://evil.example) are refused"]),
    ([("Host", "127.0.0.1:x")], ["Host '127.0.0.1:x' does not name this machine"]),     # no port: no Host
    ([("Origin", "http://localhost:99999")], ["(http://localhost:99999) are refused"]),
    ([("Origin", "http://[::1")], ["(http://[::1) are refused"]),          # was a 500 and a traceback in the log
])
def test_every_host_and_origin_a_request_names_is_checked(server, fields, words):
    """A request is refused where any of its Origin fields names another site, or where its Host or Origin names no
    machine at all (a port that is no number, an address cut short): the check judged the last Origin, and nothing
    of the port."""
    parts = urlsplit(server.url)
    if not any(name == "Host" for name, _ in fields):
        fields = [("Host", f"127.0.0.1:{parts.port}"), *fields]
    body = b'{"prompt": "x", "n_predict": 1}'
    head = "".join(f"{name}: {value}\r\n" for name, value in fields)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as connection:
        connection.sendall(f"POST /completion HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
                           f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status, _, text = answer.decode().partition("\r\n\r\n")
    assert status.split()[1] == "403", answer
    assert json.loads(text)["error"]["type"] == "permission_error"
    assert all(word in json.loads(text)["error"]["message"] for word in words), text


def test_a_compressed_body_is_415(server):
    import gzip
    check_error(server, 415, "invalid_request_error", "/completion", gzip.compress(b'{"prompt": "x"}'),
                ["Content-Encoding 'gzip' is not supported"], headers={"Content-Encoding": "gzip"})


@pytest.mark.parametrize("coding", ["", "identity, identity", " Identity ,", "identity, gzip"])
def test_content_encoding_is_read_as_the_list_it_is(server, coding):
    """Content-Encoding is a list of codings (RFC 9110 8.4; empty elements allowed, 5.6.1), identity meaning none: an
    empty header (a client's wrapper that always sets it) or `identity, identity` was a 415 "Content-Encoding ''
    is not supported"; a gzip anywhere in the list is still refused, by its name."""
    body = b'{"prompt": "x", "n_predict": 1}'
    code, text = raw_post(server.url, "/completion", body,
                          {"Content-Type": "application/json", "Content-Encoding": coding})
    if "gzip" in coding:
        assert code == 415 and "Content-Encoding 'gzip' is not supported" in text, (code, text)
    else:
        assert code == 200 and json.loads(text)["content"] is not None, (code, text)


def test_a_body_over_the_limit_is_413(server):
    check_error(server, 413, "invalid_request_error", "/infill",
                json.dumps({**INFILL, "input_extra": [{"text": "x" * (2 << 20)}]}).encode(), ["larger than"])


def test_unknown_fields_are_ignored_as_llama_cpp_and_openai_ignore_them(server):
    code, text = raw_post(server.url, "/infill", json.dumps({**INFILL, "n_predict": 1, "t_max_prompt_ms": 500,
                                                             "some_new_field": {"x": [1]}}).encode(), {})
    assert code == 200 and "content" in json.loads(text)


def test_ollama_routes_answer_errors_in_ollama_shape(server):
    response = httpx.post(server.url + "/api/generate", json={"model": "m", "prompt": "x", "images": ["AAAA"]})
    assert response.status_code == 400 and isinstance(response.json()["error"], str)
    response = httpx.post(server.url + "/api/chat", json={"messages": [{"role": "user", "content": "x",
                                                                        "images": ["AAAA"]}]})
    assert response.status_code == 400 and "images" in response.json()["error"]
    response = httpx.post(server.url + "/api/generate", json={"prompt": "x", "options": {"seed": 10 ** 30}})
    assert response.status_code == 400 and "seed" in response.json()["error"]
    response = httpx.post(server.url + "/api/generate", json={"prompt": "x", "options": {"repeat_last_n": -2}})
    assert response.status_code == 400 and "repeat_last_n" in response.json()["error"]
    for options, word in [({"typical_p": 0.7}, "typical_p")]:
        response = httpx.post(server.url + "/api/generate", json={"prompt": "x", "options": options})
        assert response.status_code == 400 and word in response.json()["error"], options
    # no constrained decoding: prose where JSON (or a tool call) was asked for would pass for an answer
    chat = {"messages": [{"role": "user", "content": "x"}], "options": {"num_predict": 1}, "stream": False}
    for path, body, word in [("/api/generate", {"prompt": "x", "format": "json"}, "format"),
                             ("/api/chat", {**chat, "format": {"type": "object"}}, "format"),
                             ("/api/generate", {"prompt": "x", "format": {}}, "format"),    # any JSON value
                             ("/api/chat", {**chat, "format": {}}, "format"),
                             ("/api/generate", {"prompt": "x", "template": "{{ if .Suffix }}{{ end }}"}, "template"),
                             ("/api/generate", {"prompt": "x", "template": "<PRE> {{ .Prompt "}, "template"),
                             ("/api/generate", {"prompt": "x", "template": "{{ .System }}"}, "empty prompt"),
                             ("/api/chat", {**chat, "tools": [{"type": "function"}]}, "tools")]:
        response = httpx.post(server.url + path, json=body, timeout=300)
        assert response.status_code == 400 and word in response.json()["error"], (path, response.text)
    assert httpx.post(server.url + "/api/chat", json={**chat, "format": ""}, timeout=300).status_code == 200
    # a model without reasoning refuses `think` in Ollama's words, which clients look for to ask again without it
    for path, body in [("/api/chat", {**chat, "think": True}), ("/api/generate", {"prompt": "x", "think": "high"})]:
        response = httpx.post(server.url + path, json=body, timeout=300)
        assert response.status_code == 400 and "does not support thinking" in response.json()["error"], response.text
    for top in (21, -1):        # Ollama's range and words
        response = httpx.post(server.url + "/api/generate", json={"prompt": "x", "logprobs": True,
                                                                  "top_logprobs": top}, timeout=300)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "top_logprobs must be between 0 and 20"
    assert httpx.post(server.url + "/api/chat", json={**chat, "think": False}, timeout=300).status_code == 200


@pytest.mark.parametrize("path, body", [
    ("/infill", rb'{"input_prefix": "def f(\ud800", "input_suffix": "", "n_predict": 2, "stop": ["\udfff"]}'),
    ("/completion", rb'{"prompt": "x\ud800", "n_predict": 2, "stop": ["\ud800"]}'),
    ("/v1/completions", rb'{"prompt": "x\udc80", "max_tokens": 2, "stop": "\ud800"}'),
    ("/v1/chat/completions", rb'{"messages": [{"role": "user", "content": "hi \ud800"}], "max_tokens": 2}'),
    ("/codecomplete/v1/complete", rb'{"path": "app.py", "text": "x = \ud800", "max_tokens": 2}'),
])
def test_lone_surrogates_are_text_that_cannot_be_encoded_and_are_replaced(server, path, body):
    """`"\ud800"` is valid JSON and no text: it becomes U+FFFD (as the command line makes it), so neither the
    tokenizer nor the UTF-8 answer (which echoes the stop strings) fails."""
    code, text = raw_post(server.url, path, body, {"Content-Type": "application/json"})
    assert code == 200, text
    if path == "/infill":                        # it echoes the stop strings
        assert json.loads(text)["generation_settings"]["stop"] == ["\ufffd"]
    check_error(server, 400, "invalid_request_error", "/codecomplete/v1/complete",
                rb'{"path": "\ud800.py", "max_tokens": 1}', ["not found"])


def test_messages_to_other_clients_name_no_command_line_options(server):
    """A prompt that cannot fit is a 400 whose message an API client can act on: no `--context-tokens` (the command
    line, through its own routes, still gets the message it prints alone: test_server_cli)."""
    code, text = raw_post(server.url, "/v1/chat/completions", json.dumps(
        {"messages": [{"role": "user", "content": "word " * 3000}], "max_tokens": 2}).encode(), {})
    assert code == 400 and "--" not in json.loads(text)["error"]["message"], text


def test_a_wrong_method_is_405_with_allow_and_health_answers_head(server):
    response = httpx.get(server.url + "/infill")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["error"]["type"] == "invalid_request_error" and "POST" in response.json()["error"]["message"]
    response = httpx.options(server.url + "/infill", headers={"Origin": "https://example.com",
                                                             "Access-Control-Request-Method": "POST"})
    assert response.status_code == 403 and "access-control-allow-origin" not in response.headers   # no CORS
    assert httpx.head(server.url + "/health").status_code == 200


def test_a_path_with_a_trailing_slash_is_no_route_and_never_a_redirect(server):
    """`POST /infill/` was Starlette's 307 to /infill with an empty body (a client that follows it posts again,
    one that does not reads no JSON); llama.cpp answers 404. Each protocol's error shape, as for any unknown path."""
    check_error(server, 404, "not_found_error", "/infill/", INFILL, ["no route POST /infill/"])
    check_error(server, 404, "not_found_error", "/v1/chat/completions/",
                {"messages": [{"role": "user", "content": "hi"}]}, ["no route"])
    for method, path in [("GET", "/health/"), ("GET", "/props/"), ("POST", "/api/generate/")]:
        response = httpx.request(method, server.url + path, json={"prompt": "x"}, follow_redirects=False)
        assert response.status_code == 404 and "location" not in response.headers, (path, response.text)
        error = response.json()["error"]
        assert "no route" in (error if path.startswith("/api/") else error["message"]), (path, error)


def test_continue_and_llama_vim_authorization_headers_pass_without_a_key(server):
    for header in ("Bearer undefined", "Bearer "):
        code, _ = raw_post(server.url, "/v1/completions", json.dumps({"prompt": "x", "max_tokens": 1}).encode(),
                           {"Authorization": header})
        assert code == 200


def send_and_vanish(url: str, path: str, body: dict, rng: random.Random) -> None:
    """Send a request, read a random part of the answer (maybe nothing), and drop the connection."""
    parts = urlsplit(url)
    data = json.dumps(body).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as connection:
        connection.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        moment = rng.choice(["at once", "soon", "some bytes"])
        if moment == "soon":
            time.sleep(rng.uniform(0, 0.4))
        elif moment == "some bytes":
            wanted = rng.randint(1, 800)
            received = 0
            while received < wanted and (chunk := connection.recv(wanted - received)):
                received += len(chunk)
        if rng.random() < 0.5:      # half of them reset the connection instead of closing it
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def test_clients_that_vanish_mid_stream_leave_the_server_serving_and_its_cache_consistent(server, engine,
                                                                                         served_repo):
    rng = random.Random(2024)
    requests = [
        ("/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX, "prompt": "    area = ", "n_predict": 32,
                     "stream": True}),
        ("/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX, "prompt": "    are", "n_predict": 8}),
        ("/v1/completions", {"prompt": "def fibonacci(n):", "max_tokens": 32, "stream": True}),
        ("/completion", {"prompt": "class Shape:\n", "n_predict": 32, "stream": True}),
    ]
    for _ in range(50):
        path, body = rng.choice(requests)
        send_and_vanish(server.url, path, body, rng)
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert "Traceback" not in server.log()     # a client gone before its body arrived is no error either

    # The next completion, as the command line asks the server for it (no editor's history shapes its prompt: an
    # /infill's context would stay near what the vanished requests chose), against what a fresh server computes:
    # the same session code on a cleared cache. Its client first leaves once the text has begun (the prompt is in
    # the cache, the generation cancelled midway), so that the completion asked again starts from that cache.
    text = PREFIX + "    area = area_of" + SUFFIX
    line, col = PREFIX.count("\n") + 1, len("    area = area_of") + 1
    body = {"path": "report.py", "text": text, "line": line, "col": col, "max_tokens": 32, "temperature": 0.0,
            "context_tokens": 400}
    with httpx.stream("POST", server.url + "/codecomplete/v1/complete", json=body, timeout=300) as response:
        next(line for line in response.iter_lines() if line.startswith('{"text"'))
    lines = httpx.post(server.url + "/codecomplete/v1/complete", json={**body, "max_tokens": 8},
                       timeout=300).text.splitlines()
    served = json.loads(lines[-1])["result"]
    assert served["reused_prefix_tokens"] == served["prompt_tokens"] - 1     # all of it: the cache was consistent
    from prompts import index_repository

    engine.clear_prefix_cache()
    session = Session(engine, index_repository(served_repo))
    fresh = session.complete("report.py", text=text, line=line, col=col, sampling=Sampling(max_tokens=8),
                             budget=engines.prompt_budget(engine, 400, 8)).run()
    assert served["text"] == fresh.text and served["token_ids"] == fresh.token_ids
    assert served["prompt_tokens"] == fresh.prompt_tokens


def test_a_warm_up_stops_its_prefill_when_its_client_leaves(engine):
    """An `n_predict: 0` warm-up (llama.vim's ring buffer) polls its job's flag in its prefill as any request does:
    one whose client left ran its whole prefill (1.3 s for 460 tokens on two cores) before the next request began."""
    session = Session(engine)
    prompt = "def helper(x):\n    return x * 3 + 1\n\n" * 20
    asked = []
    engine.clear_prefix_cache()
    left = session.raw(prompt, sampling=Sampling(max_tokens=0)).run(should_stop=lambda: asked.append(1) or True)
    assert asked and left.finish_reason == "cancelled" and left.text == ""
    again = session.raw(prompt, sampling=Sampling(max_tokens=0)).run()      # nothing past the cancel was kept
    assert again.reused_prefix_tokens == 0 and again.finish_reason == "length" and again.prompt_tokens > 100


def test_a_connection_that_sends_nothing_is_closed_and_a_slow_one_still_answered(server):
    """uvicorn closed an idle connection only after answering on it: one that never sent a request stayed open, an
    open file each, and at the process's limit (1,024 on Linux by default) the server accepted nobody else."""
    parts = urlsplit(server.url)
    silent = [socket.create_connection((parts.hostname, parts.port), timeout=15) for _ in range(3)]
    late = socket.create_connection((parts.hostname, parts.port), timeout=15)
    started = time.monotonic()
    time.sleep(1)
    late.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert late.recv(4096).startswith(b"HTTP/1.1 200")
    try:
        assert [connection.recv(1) for connection in silent] == [b""] * 3       # closed by the server
        assert time.monotonic() - started < 10
    finally:
        for connection in [*silent, late]:
            connection.close()


def test_a_long_tokenize_leaves_the_server_answering_meanwhile(server):
    """/tokenize runs off the event loop: a body near the size limit took 0.6-2.2 s on two cores, during which no
    stream sent a token and no request was answered."""
    content = "def f(x):\n    return x * 2  # twice\n" * 22_000
    took = {}

    def tokenize():
        started = time.monotonic()
        httpx.post(server.url + "/tokenize", json={"content": content}, timeout=300).raise_for_status()
        took["tokenize"] = time.monotonic() - started
    thread = threading.Thread(target=tokenize)
    thread.start()
    time.sleep(0.1)                                   # its body is in: its tokens are being made
    started = time.monotonic()
    assert httpx.get(server.url + "/health", timeout=300).status_code == 200
    health = time.monotonic() - started
    thread.join()
    assert health < took["tokenize"] / 4, (health, took)


def test_tokenize_leaves_the_tokenizer_of_the_engine_thread_alone(engine):
    """A fast tokenizer keeps `encode_special_tokens` as state that each call sets; the engine thread's prompts
    turn it on to read repository text as text. /tokenize, on the event loop at the same moment, must not turn it off
    under them (seen: /tokenize answering 64,000 ids for 40,000 while /infill requests ran)."""
    backend = engine.tokenizer._tokenizer
    before = backend.encode_special_tokens
    try:
        backend.encode_special_tokens = True          # as the engine thread's prompt code has it, mid-build
        with in_process(engine) as client:
            tokens = client.post("/tokenize", json={"content": "a<|endoftext|>"}).json()["tokens"]
        assert len(tokens) == 2 and backend.encode_special_tokens is True
    finally:
        backend.encode_special_tokens = before


@pytest.fixture(scope="module")
def keyed_server(script, cli_env, served_repo, tmp_path_factory):
    """A second server: with an API key, and room for one waiting request only."""
    process = ServerProcess(script, served_repo, cli_env, tmp_path_factory.mktemp("keyed"),
                            "--api-key", KEY, "--max-waiting", "1", "--context-tokens", "256")
    try:
        yield process
    finally:
        process.stop()


def test_with_a_key_every_route_but_health_needs_it(keyed_server):
    assert httpx.get(keyed_server.url + "/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer "}):
        check_error(keyed_server, 401, "authentication_error", "/v1/completions", {"prompt": "x"},
                    ["API key"], headers)
    response = httpx.get(keyed_server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200


def test_a_full_queue_answers_503_and_the_server_serves_on(keyed_server):
    parts = urlsplit(keyed_server.url)
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    long = json.dumps({"prompt": "def main():", "n_predict": 60, "stream": True, "ignore_eos": True}).encode()

    def open_request():
        connection = socket.create_connection((parts.hostname, parts.port), timeout=120)
        head = "".join(f"{k}: {v}\r\n" for k, v in auth.items())
        connection.sendall(f"POST /completion HTTP/1.1\r\nHost: localhost\r\n{head}Content-Length: {len(long)}\r\n\r\n"
                           .encode() + long)
        return connection
    running = open_request()
    assert running.recv(1)                       # it is generating
    waiting = open_request()
    time.sleep(1.0)                              # ... and this one waits behind it
    try:
        check_error(keyed_server, 503, "unavailable_error", "/completion", {"prompt": "x", "n_predict": 1},
                    ["busy"], {"Authorization": f"Bearer {KEY}"})
        busy = httpx.post(keyed_server.url + "/completion", json={"prompt": "x", "n_predict": 1}, headers=auth)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        # TGI says a full queue with 429 "overloaded" (tgi.py), which huggingface_hub raises as OverloadedError
        tgi = httpx.post(keyed_server.url + "/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 1}},
                         headers=auth)
        assert tgi.status_code == 429 and tgi.json()["error_type"] == "overloaded", tgi.text
        assert tgi.json()["error"].startswith("Model is overloaded: "), tgi.text
        with pytest.raises(OverloadedError, match="Model is overloaded"):
            InferenceClient(base_url=keyed_server.url, token=KEY).text_generation("x", max_new_tokens=1)
    finally:
        waiting.close()
        running.close()
    for _ in range(50):        # the server notices the two clients left, and serves the next one
        code, text = raw_post(keyed_server.url, "/completion", json.dumps({"prompt": "x", "n_predict": 2}).encode(),
                              auth)
        if code != 503:
            break
        time.sleep(0.1)
    assert code == 200 and json.loads(text)["tokens_predicted"] >= 1


def test_sighup_stops_a_server_as_sigterm_does_and_exits_129(script, cli_env, served_repo, tmp_path):
    """The terminal closed (SIGHUP) under a serving server: raised inside its event loop, it cut the stream in flight
    without its 503 and left the model to the interpreter's exit (nanobind's leak reports filled the log)."""
    # started as from a terminal: SIGHUP's default even where this session runs under nohup (children inherit it)
    under_nohup = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        server = ServerProcess(script, served_repo, cli_env, tmp_path, "--context-tokens", "256")
    finally:
        signal.signal(signal.SIGHUP, under_nohup)
    try:
        parts = urlsplit(server.url)
        body = json.dumps({"prompt": "def main():", "n_predict": 200, "stream": True, "ignore_eos": True}).encode()
        with socket.create_connection((parts.hostname, parts.port), timeout=60) as connection:
            connection.sendall(f"POST /completion HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n"
                               .encode() + body)
            assert connection.recv(1)
            assert server.stop(signal.SIGHUP, timeout=30) == 128 + signal.SIGHUP
            received = b""
            while chunk := connection.recv(65536):
                received += chunk
    finally:
        server.kill()
    assert b'"code":503' in received and b'"stop":true' not in received, received
    log = server.log()
    assert log.endswith("codecomplete: stopped\ncodecomplete: stopped by SIGHUP\n"), log
    assert "nanobind" not in log and "Traceback" not in log, log
    assert not list((server.runtime / "servers").glob("*.json"))


def test_sigterm_cancels_the_answer_in_flight_and_exits_0(keyed_server):
    """Last in this module: it stops the keyed server."""
    parts = urlsplit(keyed_server.url)
    body = json.dumps({"prompt": "def main():", "n_predict": 200, "stream": True, "ignore_eos": True}).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as connection:
        connection.sendall(f"POST /completion HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert connection.recv(1)
        started = time.monotonic()
        assert keyed_server.stop(signal.SIGTERM, timeout=30) == 0
        assert time.monotonic() - started < 15            # not 200 tokens later
        received = b""
        while chunk := connection.recv(65536):            # the stream ended: the socket closes
            received += chunk
    # with an error frame: the text so far, ended as usual, would pass for a whole answer
    assert b'"code":503' in received and b"shutting down" in received and b'"stop":true' not in received, received
    assert "stopped" in keyed_server.log() and "Traceback" not in keyed_server.log()
    assert not list((keyed_server.runtime / "servers").glob("*.json"))      # no longer announced
    with pytest.raises(httpx.ConnectError):
        httpx.get(keyed_server.url + "/health")


def test_a_reachable_host_needs_an_api_key(codecomplete, repo):
    run = codecomplete("serve", repo, "--host", "0.0.0.0", "--port", "0")
    assert run.returncode == 2 and "--api-key" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    run = codecomplete("serve", repo, "--port", "0", "--api-key", "sécret")     # a header carries it as Latin-1
    assert run.returncode == 2 and "ASCII" in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_head_is_answered_wherever_get_is_on_the_llama_cpp_and_openai_routes(server):
    """llama.cpp's HTTP library (cpp-httplib) routes HEAD to every GET handler, and HTTP asks a server to answer
    HEAD wherever it answers GET: /props and the model listings were a 405 whose Allow named GET alone. The answer
    is GET's status and headers without a body; a POST's 405 names HEAD among the methods allowed."""
    engine_name = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
    for path in ("/props", "/v1/models", "/models", f"/v1/models/{engine_name}", f"/models/{engine_name}"):
        got = httpx.get(server.url + path)
        response = httpx.head(server.url + path)
        assert response.status_code == got.status_code == 200, (path, response.status_code)
        assert response.content == b"" and response.headers["content-type"] == got.headers["content-type"], path
        refused = httpx.post(server.url + path, json={})
        if path == f"/models/{engine_name}":    # POST there is the Inference API's text generation (tgi.py: llm-ls)
            assert refused.status_code == 422 and refused.json()["error_type"] == "validation", refused.text
            continue
        assert refused.status_code == 405 and set(refused.headers["allow"].split(", ")) == {"GET", "HEAD"}, path
    assert httpx.head(server.url + "/v1/models/another-model").status_code == 404
