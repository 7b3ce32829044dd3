"""`codecomplete serve` as Hugging Face text-generation-inference's generate API (codecomplete/server/tgi.py:
`POST /generate`, `/generate_stream`, the compat `POST /`, `POST /models/{id}`, `GET /info`): huggingface_hub's
`InferenceClient.text_generation` (sync and async, whole, streamed, with details) pointed at the server's URL, and
the exact bodies llm-ls's `tgi` and `huggingface` backends send (the server behind llm.nvim, llm-vscode and
llm-intellij), each answer read as llm-ls reads it; TGI's 422s and error shape; the API key; stop sequences;
return_full_text; a client leaving mid-stream; and `GET /`, still Ollama's.

The server runs with an API key on conftest's table model (a known greedy answer, hundreds of tokens a second): the
subject is how a request is read and its answer carried. `inputs` is a raw prompt, read as llama.cpp's /completion
reads one, so /completion's answer to the same prompt is the oracle. Only the test of a client leaving mid-stream needs
a generation slow enough to leave: conftest's `server`."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient
from huggingface_hub.errors import HfHubHTTPError, ValidationError
from next_token_table import CYCLE
from server_process import serving

KEY = "tgi-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# The cursor after `self`: the prompt's last token is healed (made again by the generation, not part of the answer),
# then the table's cycle goes on.
PROMPT = "class Point:\n    def move(self, y):\n        self"
AFTER = CYCLE.split("self", 1)[1]                   # ".y = y\n            return\n\n    def reset(self):"
# llm-ls's user agent (backend.rs build_tgi_headers) and llm.nvim's default request_body for the tgi backend
LLM_LS = {"User-Agent": "llm-ls/0.5.3; rust/unknown; ide/Neovim", **AUTH}
LLM_NVIM_PARAMETERS = {"max_new_tokens": 60, "temperature": 0.2, "top_p": 0.95}


@pytest.fixture(scope="module")
def tgi_server(script, cli_env, served_repo, table_model, tmp_path_factory):
    with serving(script, served_repo, cli_env, tmp_path_factory.mktemp("tgi"), "--api-key", KEY, "--context-tokens",
                 "512", "--max-tokens", "16", "--model", str(table_model)) as process:
        yield process


def post(server, path: str, body, headers: dict = AUTH) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=headers, timeout=300)


def oracle(server, n: int, prompt: str = PROMPT) -> str:
    """/completion's greedy answer to the same raw prompt."""
    answer = post(server, "/completion", {"prompt": prompt, "n_predict": n, "temperature": 0}).json()
    return answer["content"]


def events(server, path: str, body: dict, headers: dict = AUTH) -> list[dict]:
    with httpx.stream("POST", server.url + path, json=body, headers=headers, timeout=300) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[len("data:"):]) for line in response.iter_lines() if line.startswith("data:")]


def test_the_official_client_generates_streams_and_gives_details(tgi_server):
    """InferenceClient(base_url=URL) posts `{"inputs", "parameters", "stream"?}` to the URL itself: TGI's compat
    route, whose answer is a list of one and whose return_full_text is true unless the request says otherwise."""
    expected = oracle(tgi_server, 6)
    assert expected == AFTER[:len(expected)] and len(expected) > 4
    client = InferenceClient(base_url=tgi_server.url, token=KEY)
    assert client.text_generation(PROMPT, max_new_tokens=6) == PROMPT + expected
    assert client.text_generation(PROMPT, max_new_tokens=6, return_full_text=False) == expected
    assert InferenceClient(model=tgi_server.url, token=KEY).text_generation(
        PROMPT, max_new_tokens=6, return_full_text=False) == expected

    whole = client.text_generation(PROMPT, max_new_tokens=6, return_full_text=False, details=True, top_n_tokens=2)
    details = whole.details
    assert whole.generated_text == expected and details.finish_reason == "length"
    assert details.generated_tokens == len(details.tokens) == 6 and details.prefill == []
    assert "".join(token.text for token in details.tokens) == expected
    assert all(token.logprob <= 0 and token.special is False for token in details.tokens)
    assert [len(top) for top in details.top_tokens] == [2] * 6
    # (greedy: the likeliest is the chosen; the client leaves these lists of lists as dicts)
    assert all(top[0]["id"] == token.id for top, token in zip(details.top_tokens, details.tokens))
    assert details.seed is None                                                                    # (greedy)

    assert "".join(client.text_generation(PROMPT, max_new_tokens=6, stream=True)) == expected
    streamed = list(client.text_generation(PROMPT, max_new_tokens=6, stream=True, details=True))
    assert [event.generated_text for event in streamed] == [None] * 5 + [PROMPT + expected]
    assert [event.token.id for event in streamed] == [token.id for token in details.tokens]
    assert [event.token.logprob for event in streamed] == pytest.approx([t.logprob for t in details.tokens])
    assert streamed[-1].details.finish_reason == "length" and streamed[-1].details.generated_tokens == 6
    assert all(event.details is None for event in streamed[:-1])

    sampled = client.text_generation(PROMPT, max_new_tokens=2, return_full_text=False, details=True, do_sample=True,
                                     temperature=0.5, seed=7)
    assert sampled.details.seed == 7 and sampled.generated_text == expected[:len(sampled.generated_text)]

    async def both_async() -> tuple[str, str]:
        client = AsyncInferenceClient(base_url=tgi_server.url, token=KEY)
        whole = await client.text_generation(PROMPT, max_new_tokens=6, return_full_text=False)
        streamed = await client.text_generation(PROMPT, max_new_tokens=6, stream=True)
        return whole, "".join([text async for text in streamed])
    assert asyncio.run(both_async()) == (expected, expected)


def test_llm_ls_tgi_backend_body_is_answered_with_generated_text(tgi_server):
    """llm-ls's tgi backend (backend.rs build_body, main.rs build_url): `{url}/generate` with the request_body's
    `parameters` and `return_full_text: false` added, `inputs` the prompt; it reads the body as an object with
    `generated_text` (a list is `InvalidBackend`) or an error `{"error": string}`, then strips tokens_to_clear."""
    expected = oracle(tgi_server, 60)
    body = {"parameters": {**LLM_NVIM_PARAMETERS, "return_full_text": False}, "inputs": PROMPT}
    response = post(tgi_server, "/generate", body, LLM_LS)      # (url "http://127.0.0.1:8012", with or without "/")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    # an object (drawn at 0.2: the table's token is >99.99% likely), no details unless asked
    assert response.json() == {"generated_text": expected}
    refused = post(tgi_server, "/generate", {**body, "parameters": {**body["parameters"], "temperature": 0}}, LLM_LS)
    assert refused.status_code == 422
    assert isinstance(refused.json()["error"], str) and "temperature" in refused.json()["error"]


def test_llm_ls_huggingface_backend_at_a_custom_url_is_answered(tgi_server):
    """llm-ls's huggingface backend (llm.nvim's and llm-vscode's default) with `url` set posts `{url}/models/{model}`
    (the Inference API's path) and reads an object or a list of them; disable_url_path_completion posts to the url
    itself (the compat route)."""
    expected = oracle(tgi_server, 60)
    body = {"parameters": {**LLM_NVIM_PARAMETERS, "return_full_text": False}, "inputs": PROMPT}
    for path in ("/models/bigcode/starcoder2-15b", "/"):
        answer = post(tgi_server, path, body, LLM_LS).json()
        generations = answer if isinstance(answer, list) else [answer]
        assert [g["generated_text"] for g in generations] == [expected], path
    error = post(tgi_server, "/models/bigcode/starcoder2-15b", {"inputs": PROMPT, "parameters": {"top_p": 1.0}})
    assert error.status_code == 422 and error.json() == {
        "error": "Input validation error: `top_p` must be > 0.0 and < 1.0", "error_type": "validation"}
    # GET there is still OpenAI's model lookup, in OpenAI's shape
    missing = httpx.get(tgi_server.url + "/models/bigcode/starcoder2-15b", headers=AUTH, timeout=60)
    assert missing.status_code == 404 and isinstance(missing.json()["error"], dict)


@pytest.mark.parametrize("body, message", [
    ({"parameters": {}}, "inputs: Field required"),
    ({"inputs": 5}, "inputs: "),
    ({"inputs": ""}, "`inputs` cannot be empty"),
    ({"inputs": "x", "parameters": "fast"}, "parameters: "),
    ({"inputs": "x", "parameters": {"temperature": 0}}, "`temperature` must be strictly positive"),
    ({"inputs": "x", "parameters": {"temperature": -0.5}}, "`temperature` must be strictly positive"),
    ({"inputs": "x", "parameters": {"temperature": "0.2"}}, "parameters.temperature: "),
    ({"inputs": "x", "parameters": {"top_p": 1.0}}, "`top_p` must be > 0.0 and < 1.0"),
    ({"inputs": "x", "parameters": {"top_p": 0}}, "`top_p` must be > 0.0 and < 1.0"),
    ({"inputs": "x", "parameters": {"top_k": 0}}, "`top_k` must be strictly positive"),
    ({"inputs": "x", "parameters": {"max_new_tokens": 0}}, "`max_new_tokens` must be strictly positive"),
    ({"inputs": "x", "parameters": {"max_new_tokens": -1}}, "parameters.max_new_tokens: "),
    ({"inputs": "x", "parameters": {"max_new_tokens": 1.5}}, "parameters.max_new_tokens: "),
    ({"inputs": "x", "parameters": {"repetition_penalty": 0}}, "`repetition_penalty` must be strictly positive"),
    ({"inputs": "x", "parameters": {"frequency_penalty": 2.5}}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ({"inputs": "x", "parameters": {"stop": "\n"}}, "parameters.stop: "),
    ({"inputs": "x", "parameters": {"stop": ["\n", 1]}}, "parameters.stop[1]: "),
    ({"inputs": "x", "parameters": {"seed": -1}}, "parameters.seed: "),
    ({"inputs": "x", "parameters": {"do_sample": "yes"}}, "parameters.do_sample: "),
    ({"inputs": "x", "parameters": {"typical_p": 1.0}}, "`typical_p` must be > 0.0 and < 1.0"),
    ({"inputs": "x", "parameters": {"typical_p": 0.5}}, "`typical_p` is not supported"),
    ({"inputs": "x", "parameters": {"watermark": True}}, "`watermark` is not supported"),
    ({"inputs": "x", "parameters": {"grammar": {"type": "regex", "value": "a+"}}}, "grammar is not supported"),
    ({"inputs": "x", "parameters": {"best_of": 2, "do_sample": True}}, "`best_of` != 1 is not allowed"),
    ({"inputs": "x", "parameters": {"adapter_id": "my-lora"}}, "adapter_id 'my-lora': no LoRA adapters"),
    ({"inputs": "x", "parameters": {"top_n_tokens": 6}}, "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
    ({"inputs": "x", "parameters": {"truncate": 0}}, "`truncate` must be strictly positive"),
    ({"inputs": "def f():\n    return 1\n" * 20000}, "a prompt of 440,000 characters does not fit the context"),
])
def test_a_bad_request_is_tgis_422_and_the_server_serves_on(tgi_server, body, message):
    response = post(tgi_server, "/generate", body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert set(error) == {"error", "error_type"} and error["error_type"] == "validation"
    assert error["error"].startswith("Input validation error: ") and message in error["error"], error


def test_refusals_in_tgis_shape_through_the_client_and_the_server_serves_on(tgi_server):
    for content in (b"{", b"[1]", b"\xff"):                   # not JSON, not an object, not UTF-8
        response = httpx.post(tgi_server.url + "/generate", content=content, headers=AUTH, timeout=60)
        assert response.status_code == 422 and response.json()["error_type"] == "validation", response.text
    stream_only = [({"decoder_input_details": True},
                    "`decoder_input_details` == true is not supported when streaming tokens"),
                   ({"best_of": 2}, "`best_of` != 1 is not supported when streaming tokens")]
    for parameters, message in stream_only:
        response = post(tgi_server, "/generate_stream", {"inputs": PROMPT, "parameters": parameters})
        assert response.status_code == 422 and response.json()["error"] == f"Input validation error: {message}"
    client = InferenceClient(base_url=tgi_server.url, token=KEY)
    with pytest.raises(ValidationError, match="`temperature` must be strictly positive"):
        client.text_generation(PROMPT, temperature=0)
    with pytest.raises(ValidationError, match="`top_p` must be > 0.0 and < 1.0"):
        list(client.text_generation(PROMPT, top_p=1.0, stream=True))
    # the key: missing, wrong, another scheme (TGI's 401 has no error_type); the client with a wrong token
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for path in ("/generate", "/generate_stream", "/", "/info"):
            method = "GET" if path == "/info" else "POST"
            response = httpx.request(method, tgi_server.url + path, json={"inputs": "x"}, headers=headers, timeout=60)
            assert response.status_code == 401 and set(response.json()) == {"error"}, (path, response.text)
    with pytest.raises(HfHubHTTPError) as unauthorized:
        InferenceClient(base_url=tgi_server.url, token="wrong").text_generation(PROMPT, max_new_tokens=2)
    assert unauthorized.value.response.status_code == 401
    response = httpx.get(tgi_server.url + "/generate", headers=AUTH, timeout=60)
    assert response.status_code == 405 and set(response.json()) == {"error"}
    assert client.text_generation(PROMPT, max_new_tokens=6, return_full_text=False) == oracle(tgi_server, 6)


def test_stop_sequences_end_the_text_with_them_as_tgis_do(tgi_server):
    """TGI's generated_text keeps the stop sequence that ended it (finish_reason stop_sequence); in a stream the
    tokens' texts join to it; a stop's "\\n" in CRLF text is the "\\r\\n" the answer writes."""
    client = InferenceClient(base_url=tgi_server.url, token=KEY)
    asked = dict(max_new_tokens=16, return_full_text=False, details=True)
    for stop, text in ((["="], ".y ="), ([" y\n", "return"], ".y = y\n")):
        whole = client.text_generation(PROMPT, stop=stop, **asked)
        assert (whole.generated_text, whole.details.finish_reason) == (text, "stop_sequence"), stop
        streamed = list(client.text_generation(PROMPT, stop=stop, stream=True, **asked))
        assert "".join(event.token.text for event in streamed) == streamed[-1].generated_text == text
        assert streamed[-1].details.finish_reason == "stop_sequence"
    crlf = PROMPT.replace("\n", "\r\n")
    answer = post(tgi_server, "/generate", {"inputs": crlf, "parameters": {"stop": ["\n"]}}).json()
    assert answer == {"generated_text": ".y = y\r\n"}
    assert post(tgi_server, "/generate", {"inputs": PROMPT, "parameters": {"stop": ["", "#"]}}).json() == {
        "generated_text": oracle(tgi_server, 16)}       # (an empty stop means nothing; the server's 16 tokens)


def test_return_full_text_and_truncate(tgi_server):
    expected = oracle(tgi_server, 4)
    greedy = {"max_new_tokens": 4}
    for path, default in (("/generate", {"generated_text": expected}), ("/", [{"generated_text": PROMPT + expected}])):
        assert post(tgi_server, path, {"inputs": PROMPT, "parameters": greedy}).json() == default
        for full, text in ((True, PROMPT + expected), (False, expected)):
            answer = post(tgi_server, path, {"inputs": PROMPT, "parameters": {**greedy, "return_full_text": full}})
            assert answer.json() == ({"generated_text": text} if path != "/" else [{"generated_text": text}])
    # compat's `stream`: the same text, streamed; its last event's generated_text is the full one
    streamed = events(tgi_server, "/", {"inputs": PROMPT, "parameters": greedy, "stream": True})
    assert "".join(event["token"]["text"] for event in streamed) == expected
    assert [event["index"] for event in streamed] == [1, 2, 3, 4]
    assert streamed[-1]["generated_text"] == PROMPT + expected and streamed[-1]["details"] is None
    # truncate keeps the prompt's last tokens (not healed): TGI's input_length says how many
    last = events(tgi_server, "/generate_stream", {"inputs": PROMPT, "parameters": {**greedy, "truncate": 3,
                                                                                      "details": True}})[-1]
    assert last["details"]["input_length"] == 3


def test_get_root_is_still_ollamas_and_info_tells_the_context(tgi_server):
    response = httpx.get(tgi_server.url + "/", timeout=60)      # no key: a liveness check
    assert response.status_code == 200 and response.text == "Ollama is running"
    assert httpx.head(tgi_server.url + "/", timeout=60).status_code == 200
    assert httpx.get(tgi_server.url + "/health", timeout=60).status_code == 200
    info = httpx.get(tgi_server.url + "/info", headers=AUTH, timeout=60).json()
    props = httpx.get(tgi_server.url + "/props", headers=AUTH, timeout=60).json()
    assert info["model_id"] == tgi_server.info["engine"]["name"] and info["max_best_of"] == 1
    assert info["max_total_tokens"] == props["default_generation_settings"]["n_ctx"] == info["max_input_tokens"] + 1
    assert info["version"] == tgi_server.info["version"]


@pytest.mark.parametrize("path", ["/", "/models/any-model"])
def test_a_method_no_route_serves_is_a_405_naming_both_protocols_methods(tgi_server, path):
    """`/` is Ollama's GET and TGI's POST, `/models/{id}` OpenAI's GET and the Inference API's POST: a PUT there is a
    405 whose Allow names every method served at the path (Starlette's named only the first route's, GET and HEAD,
    and a client that retried with what Allow said could not find POST)."""
    response = httpx.put(tgi_server.url + path, json={}, headers=AUTH, timeout=60)
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == "GET, HEAD, POST" and "(allowed: GET, HEAD, POST)" in response.text
    only_get = httpx.post(tgi_server.url + "/v1/models", json={}, headers=AUTH, timeout=60)
    assert only_get.status_code == 405 and only_get.headers["allow"] == "GET, HEAD", only_get.headers


def test_a_client_leaving_mid_stream_cancels_its_generation_and_the_server_serves_on(server):
    """conftest's `server` (the embedded model, ~12 tokens a second, no key): the client reads the first token and
    closes its connection; the generation stops at its next token (the log's line for it says `cancelled`, far short of
    its 64 tokens), and the next request is answered."""
    mark = len(server.log())
    body = {"inputs": "def fibonacci(n):\n    ", "parameters": {"max_new_tokens": 64}}
    with httpx.stream("POST", server.url + "/generate_stream", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and json.loads(line[5:])["token"]["text"]:
                break                                 # the first text: leave
    deadline, summary = time.monotonic() + 60, None
    while summary is None and time.monotonic() < deadline:
        summary = next((line for line in server.log()[mark:].splitlines()
                        if line.startswith("POST /generate_stream · prompt")), None)
        time.sleep(0.1)
    assert summary is not None and summary.endswith("cancelled"), server.log()[mark:]
    assert int(summary.split(" tokens · ")[0].rsplit(" ", 1)[1]) < 64
    again = post(server, "/generate", {"inputs": body["inputs"], "parameters": {"max_new_tokens": 2,
                                                                                 "details": True}}, {})
    assert again.status_code == 200 and again.json()["details"]["generated_tokens"] == 2


def test_the_end_of_text_comes_last_as_a_special_token_and_stays_out_of_the_text(server):
    """conftest's `server` (the embedded SmolLM2-Instruct, greedy): an assistant's answer left one `?` short of its
    end, which the model writes (p 0.98) and then closes its turn with `<|im_end|>` (p ~0.6), the model's end of text.
    TGI sends that token as the stream's last event with its text and `special: true` (`generated_text` without it,
    `finish_reason` "eos_token"), and /generate's details list it among the tokens, `generated_tokens` counting it."""
    inputs = ("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
              "Hello! How can I help you today")
    body = {"inputs": inputs, "parameters": {"max_new_tokens": 12, "details": True}}
    streamed = events(server, "/generate_stream", body, {})
    *tokens, last = streamed
    assert [event["token"]["special"] for event in streamed] == [False] * len(tokens) + [True], streamed
    assert last["token"]["text"] == "<|im_end|>" and last["details"]["finish_reason"] == "eos_token", last
    assert last["generated_text"] == "".join(event["token"]["text"] for event in tokens) == "?", streamed
    assert all(event["generated_text"] is None and event["details"] is None for event in tokens), streamed
    assert [event["index"] for event in streamed] == list(range(1, len(streamed) + 1))
    whole = post(server, "/generate", body, {}).json()
    assert whole["generated_text"] == "?" and whole["details"]["finish_reason"] == "eos_token", whole
    assert [t["id"] for t in whole["details"]["tokens"]] == [e["token"]["id"] for e in streamed], whole
    assert whole["details"]["tokens"][-1]["special"] and whole["details"]["generated_tokens"] == len(streamed)
