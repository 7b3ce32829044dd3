"""llama.cpp's cache reuse through the server: `serve --cache-reuse N` for every request, llama.cpp's `n_cache_reuse`
and `cache_prompt` per request on its routes and its OpenAI ones, a prompt that lost a chunk in its middle (llama.vim's
ring of extra chunks dropping its oldest) reusing what follows the chunk. In process, over the embedded model."""
from contextlib import contextmanager

import pytest
from server_process import in_process


KEPT = "import math\n\n\ndef area(radius):\n    return math.pi * radius ** 2\n\n\n"
DROPPED = ("class Rectangle:\n    def __init__(self, width, height):\n"
           "        self.width, self.height = width, height\n\n\n")
RUN = ("def circumference(radius):\n    \"\"\"The length around a circle of this radius.\"\"\"\n"
       "    return 2 * math.pi * radius\n\n\ndef diameter(radius):\n    return 2 * radius\n\n\n")
END = "def volume(radius):\n    return"


@pytest.fixture(scope="module")
def reuse_server(engine):
    """A server whose --cache-reuse is 16, as an editor's client talks to it."""
    with in_process(engine, cache_reuse=16) as client:
        yield client


def count(client, text: str) -> int:
    return len(client.post("/tokenize", json={"content": text}).json()["tokens"])


def after_a_dropped_chunk(client, path: str, **fields) -> dict:
    """The answer to KEPT + RUN + END right after KEPT + DROPPED + RUN + END filled the cache."""
    body = lambda prompt: {"prompt": prompt, "n_predict": 2, "temperature": 0, **fields}   # noqa: E731
    first = client.post(path, json=body(KEPT + DROPPED + RUN + END + " 4"))
    assert first.status_code == 200, first.text
    answer = client.post(path, json=body(KEPT + RUN + END))
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_servers_cache_reuse_moves_what_followed_a_dropped_chunk(reuse_server):
    run_tokens = count(reuse_server, RUN)
    timings = after_a_dropped_chunk(reuse_server, "/completion")["timings"]
    # KEPT's tokens as the exact prefix, RUN's and END's first ones moved: only a few of END's are prefilled
    assert timings["cache_n"] >= count(reuse_server, KEPT) + run_tokens - 2, timings
    assert timings["prompt_n"] <= count(reuse_server, END) + 2, timings


@pytest.mark.parametrize("fields", [{"n_cache_reuse": 0}, {"cache_prompt": False},
                                    {"n_cache_reuse": 1000}], ids=["off", "no-cache-prompt", "runs-too-short"])
def test_a_request_turns_it_off_as_llama_cpp_reads_its_fields(reuse_server, fields):
    timings = after_a_dropped_chunk(reuse_server, "/completion", **fields)["timings"]
    assert timings["cache_n"] <= count(reuse_server, KEPT) + 1, timings      # the shared prefix alone


def test_a_request_can_ask_for_it_on_a_server_started_without(engine, capfd):
    with in_process(engine) as client:
        plain = after_a_dropped_chunk(client, "/completion")["timings"]
        asked = after_a_dropped_chunk(client, "/completion", n_cache_reuse=16)["timings"]
    assert plain["cache_n"] <= count_tokens(engine, KEPT) + 1 < asked["cache_n"] - 20, (plain, asked)
    # The server's log (its engine thread stopped: every line written) says the same, in its lines, not on stderr
    assert len(client.server_log) == 4 and "of them moved" not in client.server_log[1], client.server_log
    assert f"({asked['cache_n']:,} reused, " in client.server_log[3] and "of them moved" in client.server_log[3]
    assert "POST /completion" not in capfd.readouterr().err


def count_tokens(engine, text: str) -> int:
    return len(engine.tokenizer.encode(text, add_special_tokens=False))


def test_the_openai_routes_get_the_servers_setting(reuse_server):
    usage = after_a_dropped_chunk(reuse_server, "/v1/completions", max_tokens=2)["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= count(reuse_server, KEPT + RUN) - 2, usage


def openai_cached_tokens(client, path: str, **fields) -> int:
    """The cached prompt tokens of the OpenAI answer to KEPT + RUN + END after KEPT + DROPPED + RUN + END."""
    def body(text: str) -> dict:
        content = ({"messages": [{"role": "user", "content": text}]} if path.endswith("chat/completions")
                   else {"prompt": text})
        return {**content, "max_tokens": 1, "temperature": 0, **fields}
    assert client.post(path, json=body(KEPT + DROPPED + RUN + END + " 4")).status_code == 200
    answer = client.post(path, json=body(KEPT + RUN + END))
    assert answer.status_code == 200, answer.text
    return answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


@contextmanager
def openai_client(engine, repo, cache_reuse: int):
    """A server over `repo` (chat retrieves from it) whose --cache-reuse is `cache_reuse`."""
    from prompts import index_repository

    with in_process(engine, index_repository(repo), cache_reuse=cache_reuse) as client:
        yield client


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_the_openai_routes_read_llama_cpps_fields_as_llama_cpp_does(engine, served_repo, path):
    """llama.cpp reads `n_cache_reuse` and `cache_prompt` on its OpenAI routes too (clients and proxies send them
    through `extra_body`)."""
    moved = count_tokens(engine, RUN) - 4
    with openai_client(engine, served_repo, cache_reuse=16) as client:
        assert openai_cached_tokens(client, path, cache_prompt=False) + moved < openai_cached_tokens(client, path)
    with openai_client(engine, served_repo, cache_reuse=0) as client:
        assert openai_cached_tokens(client, path) + moved < openai_cached_tokens(client, path, n_cache_reuse=16)
        bad = client.post(path, json={"prompt": "x", "messages": [{"role": "user", "content": "x"}],
                                      "n_cache_reuse": -1})
        assert bad.status_code == 400 and "n_cache_reuse" in bad.json()["error"]["message"], bad.text


def test_the_command_lines_requests_reuse_no_moved_run(reuse_server):
    """The command line has no --cache-reuse and prints what it would print alone (codecomplete/client.py's
    `mismatch` does not look at the server's): its requests reuse only the exact prefix."""
    import json

    def raw(prompt: str) -> dict:
        response = reuse_server.post("/codecomplete/v1/raw", json={"prompt": prompt, "max_tokens": 2})
        assert response.status_code == 200, response.text
        return json.loads(response.text.splitlines()[-1])["result"]
    raw(KEPT + DROPPED + RUN + END + " 4")
    result = raw(KEPT + RUN + END)
    assert result["timings"]["moved_tokens"] == 0, result
    assert result["reused_prefix_tokens"] <= count(reuse_server, KEPT) + 1, result


@pytest.mark.parametrize("value", [-1, "16", 1.5])
def test_a_bad_n_cache_reuse_is_a_400_naming_it(reuse_server, value):
    response = reuse_server.post("/completion", json={"prompt": "x", "n_predict": 1, "n_cache_reuse": value})
    assert response.status_code == 400 and "n_cache_reuse" in response.json()["error"]["message"]
    assert reuse_server.post("/completion", json={"prompt": "x", "n_predict": 1}).status_code == 200


def test_serve_hands_its_cache_reuse_to_the_server(serve_options):
    assert serve_options("--cache-reuse", "256")["cache_reuse"] == 256


@pytest.mark.parametrize("value", ["-1", "x"])
def test_a_bad_cache_reuse_option_is_a_usage_error(value, capsys):
    from codecomplete.cli import build_serve_parser

    with pytest.raises(SystemExit) as stopped:
        build_serve_parser().parse_args(["--cache-reuse", value])
    assert stopped.value.code == 2 and "--cache-reuse" in capsys.readouterr().err
