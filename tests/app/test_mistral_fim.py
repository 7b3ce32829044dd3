"""`codecomplete serve` as Mistral's fill-in-the-middle API (`POST /v1/fim/completions`,
codecomplete/server/mistral.py): the official `mistralai` client (sync and async, whole and streamed), and the exact
bodies that Continue (its `mistral` provider's _streamFim and openai-adapters' fimStream), Zed (its Codestral edit
predictions), minuet-ai.nvim (its `codestral` provider) and Tabby (its `mistral/completion` model kind) send, each
answer read as that plugin reads it; refusals in Mistral's error shape; stop strings, token healing, the suffix's line
ends, and a client leaving mid-stream. The server runs with an API key, as these clients send one, on conftest's
table model (a known greedy answer, hundreds of tokens a second): the subject is how a request is read and its answer
carried, not what a model writes (only the test of a client leaving mid-stream needs a generation slow enough to
leave: conftest's `server`).

The table model's vocabulary has no FIM tokens, so its prompt leaves the suffix out (left to right, as the embedded
model's): the suffix's effect here is the answer's line ends, which the text around the cursor decides, suffix
included; the prompt a FIM model builds from it is /v1/completions' with `suffix` (the same Session.infill), whose
tests are test_server_protocols.py's and test_spm_infill.py's."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from mistralai.client import Mistral, errors
from next_token_table import CYCLE
from server_process import serving

KEY = "codestral-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PATH = "/v1/fim/completions"
# A cursor after `self` at a line's end, as the table model writes it: the healed token (the prompt's last, which the
# generation makes again) is then the model's own choice too, so the answer is known at Mistral's default temperature
# and the plugins' as well as at 0; a line's end being an infill's, it stops before its blank line (prompts/formats.py).
PREFIX = "class Point:\n    def move(self, y):\n        self"
SUFFIX = "\n\n    def reset(self):\n        self.y = 0\n"
ANSWER = CYCLE.split("\n\n")[0].split("self", 1)[1]     # ".y = y\n            return"
ERROR_FIELDS = {"object", "message", "type", "param", "code"}


@pytest.fixture(scope="module")
def fim_server(script, cli_env, served_repo, table_model, tmp_path_factory):
    with serving(script, served_repo, cli_env, tmp_path_factory.mktemp("mistral"), "--api-key", KEY, "--context-tokens",
                 "512", "--max-tokens", "16", "--model", str(table_model)) as process:
        yield process


def fim(server, body: dict, headers: dict = AUTH, path: str = PATH) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=headers, timeout=300)


def sse_data(server, body: dict, headers: dict = AUTH) -> list[str]:
    """A stream's `data:` payloads, in order, [DONE] included."""
    with httpx.stream("POST", server.url + PATH, json=body, headers=headers, timeout=300) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def test_the_official_client_completes_and_streams(fim_server):
    client = Mistral(server_url=fim_server.url, api_key=KEY)
    asked = dict(model="codestral-latest", prompt=PREFIX, suffix=SUFFIX, temperature=0, max_tokens=16)
    answer = client.fim.complete(**asked)
    (choice,) = answer.choices
    assert choice.message.content == ANSWER and choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert answer.object == "chat.completion" and answer.model == fim_server.info["engine"]["name"]
    assert len(answer.id) == 32 and int(answer.id, 16) >= 0 and answer.created > 0
    usage = answer.usage
    assert usage.completion_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The prompt /v1/completions builds with a suffix (the same builder), and so the same greedy text.
    openai = httpx.post(fim_server.url + "/v1/completions", headers=AUTH, timeout=300,
                        json={"prompt": PREFIX, "suffix": SUFFIX, "temperature": 0, "max_tokens": 16}).json()
    assert openai["choices"][0]["text"] == ANSWER
    assert openai["usage"]["prompt_tokens"] == usage.prompt_tokens

    with client.fim.stream(**asked) as events:
        chunks = [event.data for event in events]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert "".join(chunk.choices[0].delta.content for chunk in chunks) == ANSWER
    assert [chunk.choices[0].finish_reason for chunk in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"} and len({chunk.id for chunk in chunks}) == 1
    assert chunks[-1].usage.completion_tokens == usage.completion_tokens
    assert all(chunk.usage is None for chunk in chunks[:-1])

    limited = client.fim.complete(**{**asked, "max_tokens": 2})
    assert limited.choices[0].finish_reason == "length" and limited.usage.completion_tokens == 2
    assert ANSWER.startswith(limited.choices[0].message.content)

    async def both_async() -> tuple[str, str]:
        whole = await client.fim.complete_async(**asked)
        streamed = await client.fim.stream_async(**asked)
        return whole.choices[0].message.content, "".join([event.data.choices[0].delta.content
                                                          async for event in streamed])
    assert asyncio.run(both_async()) == (ANSWER, ANSWER)


def test_continues_fim_stream_is_read_chunk_by_chunk(fim_server):
    """Continue's `mistral` provider (core/llm/llms/OpenAI.ts `_streamFim`, the apiBase joined with
    "fim/completions") and openai-adapters' fimStream send these fields (undefined ones left out by
    JSON.stringify) with these headers, and read `chunk.choices[0].delta.content` of every `data:` chunk but
    [DONE]: a chunk without a choice, or a delta without content, threw or wrote "undefined" into the
    suggestion. The prompt is its codestral template's: other files as `+++++ path` blocks before the file's."""
    headers = {"Content-Type": "application/json", "Accept": "application/json", "x-api-key": KEY, **AUTH}
    prompt = f"+++++ shapes/geometry.py \nimport math\n\n+++++ app.py\n{PREFIX}"
    body = {"model": "codestral-latest", "prompt": prompt, "suffix": SUFFIX, "max_tokens": 16, "temperature": 0.01,
            "top_p": 1, "frequency_penalty": 0, "presence_penalty": 0, "stop": ["[PREFIX]", "[SUFFIX]", "\n+++++ "],
            "stream": True}
    for path in (PATH, "/fim/completions"):        # the apiBase with or without its /v1
        with httpx.stream("POST", fim_server.url + path, json=body, headers=headers, timeout=300) as response:
            data = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
        assert data[-1] == "[DONE]"
        chunks = [json.loads(payload) for payload in data[:-1]]
        assert all(isinstance(chunk["choices"][0]["delta"]["content"], str) for chunk in chunks)
        assert "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks) == ANSWER


def test_zeds_codestral_body_is_answered_with_every_field_its_serde_needs(fim_server):
    """Zed's CodestralRequest (crates/codestral: `{api_url}/v1/fim/completions`, Content-Type and Bearer headers):
    `suffix` left out where it is empty, temperature 0.2, top_p 1.0, its 350 tokens, no stream; it parses
    CodestralResponse with serde: every field present and of its type (u32 counts, a string content)."""
    headers = {"Content-Type": "application/json", **AUTH}
    for suffix in ({"suffix": SUFFIX}, {}):
        body = {"model": "codestral-latest", "prompt": PREFIX, **suffix, "max_tokens": 350, "temperature": 0.2,
                "top_p": 1.0, "stream": False}
        response = fim(fim_server, body, headers)
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        answer = response.json()
        assert all(isinstance(answer[name], str) for name in ("id", "object", "model"))
        assert type(answer["created"]) is int and answer["created"] > 0
        assert all(type(answer["usage"][name]) is int and answer["usage"][name] >= 0
                   for name in ("prompt_tokens", "completion_tokens", "total_tokens"))
        (choice,) = answer["choices"]
        assert type(choice["index"]) is int and choice["finish_reason"] in ("stop", "length")
        assert isinstance(choice["message"]["content"], str) and choice["message"]["role"] == "assistant"


def test_minuets_codestral_bodies_streamed_and_not(fim_server):
    """minuet-ai.nvim's `codestral` provider: curl with Content-Type, Accept and Bearer headers; the model, its
    `stream` (true by default), the `optional` fields its README suggests, the prompt its FIM template makes (a
    language and an indentation comment before the text) and the suffix. It reads `choices[1].delta.content` of
    each `data:` line but [DONE] (concatenated), or `choices[1].message.content`."""
    headers = {"Content-Type": "application/json", "Accept": "application/json", **AUTH}
    prompt = f"# language: python\n# indentation: use 4 spaces for a tab\n{PREFIX}"
    body = {"model": "codestral-latest", "stream": True, "max_tokens": 16, "stop": ["\n\n"], "prompt": prompt,
            "suffix": SUFFIX}
    data = sse_data(fim_server, body, headers)
    assert data[-1] == "[DONE]"
    text = "".join(json.loads(payload)["choices"][0]["delta"]["content"] for payload in data[:-1])
    whole = fim(fim_server, {**body, "stream": False}, headers).json()["choices"][0]["message"]["content"]
    assert text == whole == ANSWER      # (drawn at Mistral's default temperature, 0.7: the table's token is >99.99%)


def test_tabbys_mistral_completion_stream_ends_at_its_first_finish_reason(fim_server):
    """Tabby's MistralFIMEngine (crates/http-api-bindings/src/completion/mistral.rs): a bearer token, `suffix` null
    where there is none, its temperature and max_decoding_tokens, a u64 random_seed, always a stream. Its serde
    needs a string `delta.content` in every chunk, and it stops reading at the first `finish_reason` (it would
    fail to parse [DONE])."""
    for suffix in (SUFFIX, None):
        body = {"prompt": PREFIX, "suffix": suffix, "model": "codestral-latest", "temperature": 0.1,
                "max_tokens": 16, "stream": True, "random_seed": 2**64 - 1}
        data = sse_data(fim_server, body)
        chunks = []
        for payload in data:
            chunk = json.loads(payload)
            chunks.append(chunk["choices"][0])
            if chunk["choices"][0]["finish_reason"] is not None:
                break
        assert data[len(chunks):] == ["[DONE]"] and chunks[-1]["finish_reason"] == "stop"
        assert "".join(choice["delta"]["content"] for choice in chunks) == ANSWER


@pytest.mark.parametrize("body, field", [
    ({"model": "codestral-latest"}, "prompt: Field required"),
    ({"prompt": 5}, "prompt: "),
    ({"prompt": "x", "suffix": ["y"]}, "suffix: "),
    ({"prompt": "x", "max_tokens": -1}, "max_tokens: "),
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens: "),
    ({"prompt": "x", "max_tokens": 1.5}, "max_tokens: "),
    ({"prompt": "x", "stop": 5}, "stop"),
    ({"prompt": "x", "stop": ["\n", 1]}, "stop[1]: "),
    ({"prompt": "x", "temperature": -0.1}, "temperature: "),
    ({"prompt": "x", "temperature": 2.5}, "temperature: "),
    ({"prompt": "x", "temperature": "0.2"}, "temperature: "),
    ({"prompt": "x", "top_p": 1.5}, "top_p: "),
    ({"prompt": "x", "random_seed": -1}, "random_seed: "),
    ({"prompt": "x", "stream": "yes"}, "stream: "),
])
def test_a_body_that_is_no_request_is_mistrals_422(fim_server, body, field):
    response = fim(fim_server, body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert set(error) == ERROR_FIELDS and error["object"] == "error" and error["type"] == "invalid_request_error"
    assert error["message"].startswith(field), error


def test_refusals_keep_mistrals_shape_and_the_server_serves_on(fim_server):
    client = Mistral(server_url=fim_server.url, api_key=KEY)
    for content in (b"{", b"[1]", b"\xff"):                   # not JSON, not an object, not UTF-8
        response = httpx.post(fim_server.url + PATH, content=content, headers=AUTH, timeout=60)
        assert response.status_code == 422 and response.json()["object"] == "error", response.text
    with pytest.raises(errors.HTTPValidationError) as invalid:      # the client's own error for Mistral's 422
        client.fim.complete(model="codestral-latest", prompt="x", max_tokens=-1)
    assert invalid.value.status_code == 422 and "max_tokens" in invalid.value.body
    # min_tokens: a valid request this engine cannot serve (no way to hold the end of text back): 400, not ignored
    with pytest.raises(errors.SDKError) as refused:
        client.fim.complete(model="codestral-latest", prompt="x", min_tokens=4)
    assert refused.value.status_code == 400 and json.loads(refused.value.body)["message"].startswith("min_tokens")
    assert client.fim.complete(model="codestral-latest", prompt="x", min_tokens=0, max_tokens=1).choices
    # the key: missing, wrong, another scheme
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"x-api-key": KEY}):
        response = fim(fim_server, {"prompt": "x", "max_tokens": 1}, headers)
        assert response.status_code == 401 and set(response.json()) == ERROR_FIELDS, response.text
        assert response.json()["type"] == "authentication_error"
    with pytest.raises(errors.SDKError) as unauthorized:
        Mistral(server_url=fim_server.url, api_key="wrong").fim.complete(model="codestral-latest", prompt="x")
    assert unauthorized.value.status_code == 401
    response = httpx.get(fim_server.url + PATH, headers=AUTH, timeout=60)
    assert response.status_code == 405 and response.json()["object"] == "error"
    answer = client.fim.complete(model="codestral-latest", prompt=PREFIX, suffix=SUFFIX, temperature=0)
    assert answer.choices[0].message.content == ANSWER          # still serving, the same answer


def test_stop_strings_one_or_a_list_end_the_text_before_them(fim_server):
    client = Mistral(server_url=fim_server.url, api_key=KEY)
    asked = dict(model="codestral-latest", prompt=PREFIX, suffix=SUFFIX, temperature=0)
    for stop, text in (("=", ".y "), ([" y\n", "return"], ".y ="), ("", ANSWER), ([], ANSWER)):
        whole = client.fim.complete(**asked, stop=stop).choices[0]
        assert (whole.message.content, whole.finish_reason) == (text, "stop"), stop
        with client.fim.stream(**asked, stop=stop) as events:
            assert "".join(event.data.choices[0].delta.content for event in events) == text


def test_a_cursor_after_a_space_is_healed(fim_server):
    """The buffer ends in `y = `: the prompt stops before the lone space, the generation must begin with it, and
    the answer leaves it out. The table model writes " y" after " =", so the answer is "y..."; unhealed, it would
    go on from the space token (a line end first) or write the space again."""
    prefix = "def scale(rectangle, factor):\n    y = "
    answer = fim(fim_server, {"prompt": prefix, "suffix": "\n", "temperature": 0}).json()["choices"][0]["message"]
    assert answer["content"] == "y\n            return", answer
    infill = httpx.post(fim_server.url + "/infill", headers=AUTH, timeout=300,
                        json={"input_prefix": prefix, "input_suffix": "\n", "temperature": 0}).json()
    assert infill["content"] == answer["content"]


def test_the_suffix_reaches_the_prompt_builder_its_line_ends_decide_the_answers(fim_server):
    """The text around the cursor, suffix included, says how lines end (Session.infill, line_ends.py): a suffix in
    CRLF lines gets the answer back in CRLF lines, though the prompt's own text has none; without it, LF."""
    asked = {"prompt": PREFIX, "temperature": 0}
    crlf = fim(fim_server, {**asked, "suffix": "\r\n    return width\r\n"}).json()["choices"][0]["message"]["content"]
    assert crlf == ANSWER.replace("\n", "\r\n")
    assert fim(fim_server, asked).json()["choices"][0]["message"]["content"] == ANSWER


def test_a_client_leaving_mid_stream_cancels_its_generation_and_the_server_serves_on(server):
    """conftest's `server` (the embedded model, ~12 tokens a second, no key): the client reads the first text
    and closes its connection; the generation stops at its next token (the log's line for it says `cancelled`,
    far short of its 64 tokens), and the next request is answered."""
    slow = server
    mark = len(slow.log())
    body = {"model": "codestral-latest", "prompt": "def fibonacci(n):\n    ", "suffix": "\n", "max_tokens": 64,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", slow.url + PATH, json=body, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break                                 # the first text: leave
    deadline, summary = time.monotonic() + 60, None
    while summary is None and time.monotonic() < deadline:
        summary = next((line for line in slow.log()[mark:].splitlines()
                        if line.startswith(f"POST {PATH} · prompt")), None)
        time.sleep(0.1)
    assert summary is not None and summary.endswith("cancelled"), slow.log()[mark:]
    assert int(summary.split(" tokens · ")[0].rsplit(" ", 1)[1]) < 64
    again = httpx.post(slow.url + PATH, json={**body, "stream": False, "max_tokens": 2}, timeout=300)
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 2
