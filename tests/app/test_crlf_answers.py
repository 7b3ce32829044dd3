"""A CRLF (or classic Mac) client's answer as the client sees it, on a real server on a loopback port (conftest's
`table_server`): its stop strings are matched in the text written with its line ends, where a "\\r\\n" in a stop matches
(the text cut exactly before the stop, as llama.cpp and OpenAI cut the text they return), on every route that takes
stop strings, whole and streamed; the token texts of logprobs and completion_probabilities spell the answer as
written; a lone-CR file's answer has lone CRs; Ollama's prompt cut to the context answers with the client's line
ends (codecomplete/line_ends.py).

What is checked is how the answer is carried, whatever text a model writes: the server here is conftest's
`table_server`, whose model (next_token_table) writes known lines with the embedded model's tokenizer, hundreds of
tokens a second, where the embedded model's ~12 made this file one of the suite's slowest."""
import json

import httpx
import pytest
from openai import OpenAI

POINT = "class Point:\n    def __init__(self, x, y, z):\n        self.x = x\n"    # greedy: the lines that follow
STOPS = ["\r\n", "\r\n\r\n", "y\r\n", "\n", "\n\n"]     # a stop's "\n" is the client's line end, as before


@pytest.fixture(scope="module")
def server(table_server):
    """Every test here: the table model's server. Its answer after POINT, greedy, is `self.y = y`, `return` and a
    blank line, over and over: the stops are each in it, a blank line after two lines."""
    return table_server


def crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


def post(server, path: str, body: dict) -> dict:
    response = httpx.post(server.url + path, json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def stream_lines(server, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", server.url + path, json={**body, "stream": True}, timeout=300) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    return [json.loads(line.removeprefix("data: ")) for line in lines if line != "data: [DONE]"]


def expected_cut(whole: str, stop: str) -> str | None:
    """The CRLF answer cut before the stop as the client writes it (a bare "\\n" of a stop is its line end); None
    where the answer does not hold it (an infill's may end before a blank line): the whole answer then."""
    seen = stop if "\r" in stop else crlf(stop)
    at = whole.find(seen)
    assert at != 0, (whole, stop)
    assert at > 0 or stop not in ("\r\n", "y\r\n"), (whole, stop)    # (these are tried on every route)
    return whole[:at] if at > 0 else None


LLAMA_CPP = [("/completion", {"prompt": crlf(POINT)}),
             ("/infill", {"input_prefix": crlf(POINT), "input_suffix": "\r\n"})]


@pytest.mark.parametrize("path, fields", LLAMA_CPP)
def test_llama_cpp_routes_cut_a_crlf_answer_at_a_stop_as_the_client_sees_it(server, path, fields):
    body = {**fields, "n_predict": 40, "temperature": 0}
    whole = post(server, path, body)["content"]
    assert "\r\n" in whole and "\n" not in whole.replace("\r\n", ""), whole
    for stop in STOPS:
        cut = expected_cut(whole, stop)
        answer = post(server, path, {**body, "stop": [stop]})
        if cut is None:     # (the infill's answer ended before it: as it was)
            assert answer["content"] == whole, (stop, answer)
        else:
            assert (answer["content"], answer["stop_type"], answer["stopping_word"]) == (cut, "word", stop), answer
        chunks = stream_lines(server, path, {**body, "stop": [stop]})
        pieces = [chunk["content"] for chunk in chunks]
        assert "".join(pieces) == answer["content"] and not any(piece.endswith("\r") for piece in pieces), pieces
        assert (chunks[-1]["stop_type"], chunks[-1]["stopping_word"]) == (answer["stop_type"], answer["stopping_word"])


@pytest.mark.parametrize("suffix", [None, "\r\n"])      # a raw prompt; with a suffix, the session's infill
def test_openai_completions_cut_a_crlf_answer_at_a_stop_as_the_client_sees_it(server, suffix):
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    asked = dict(model="any", prompt=crlf(POINT), max_tokens=40, temperature=0,
                 **({"suffix": suffix} if suffix is not None else {}))
    whole = client.completions.create(**asked).choices[0].text
    for stop in STOPS:
        cut = expected_cut(whole, stop)
        choice = client.completions.create(stop=[stop], **asked).choices[0]
        assert (choice.text, choice.finish_reason) == ((cut, "stop") if cut is not None else (whole, "stop")), stop
        chunks = list(client.completions.create(stop=[stop], stream=True, **asked))
        pieces = [chunk.choices[0].text for chunk in chunks]
        assert "".join(pieces) == choice.text and not any(piece.endswith("\r") for piece in pieces), (stop, pieces)


@pytest.mark.parametrize("fields", [{"raw": True}, {"suffix": "\r\n"}])
def test_ollama_generate_cuts_a_crlf_answer_at_a_stop_as_the_client_sees_it(server, fields):
    body = {"model": "any", "prompt": crlf(POINT), "stream": False, **fields,
            "options": {"temperature": 0, "num_predict": 40}}
    whole = post(server, "/api/generate", body)["response"]
    for stop in STOPS:
        cut = expected_cut(whole, stop)
        stopped = {**body, "options": {**body["options"], "stop": [stop]}}
        answer = post(server, "/api/generate", stopped)
        assert (answer["response"], answer["done_reason"]) == (whole if cut is None else cut, "stop"), answer
        cut = answer["response"]
        with httpx.stream("POST", server.url + "/api/generate", json={**stopped, "stream": True},
                          timeout=300) as response:
            pieces = [json.loads(line)["response"] for line in response.iter_lines() if line]
        assert "".join(pieces) == cut and not any(piece.endswith("\r") for piece in pieces), (stop, pieces)


def spelled(tokens: list[str], text: str, prompt: str) -> bool:
    """Whether the tokens' texts joined are the text returned (llama.vscode joins them), but for the prompt's end
    that a healed prompt's first token writes again (logprobs.py: that token's text is its own; POINT ends with a
    "\\n"), written as the client's prompt has it."""
    joined = "".join(tokens)
    healed = joined[:len(joined) - len(text)]
    return "\r\n" in text and joined.endswith(text) and crlf(prompt).endswith(healed)


def test_openai_token_texts_spell_the_crlf_answer(server):
    """The tokens' texts joined are the text returned, whole and streamed; the offsets are where each begins in it."""
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    asked = dict(model="any", prompt=crlf(POINT), max_tokens=24, temperature=0, logprobs=2)
    choice = client.completions.create(**asked).choices[0]
    tokens = choice.logprobs.tokens
    assert spelled(tokens, choice.text, POINT), (tokens, choice.text)
    assert choice.logprobs.text_offset[1:] == [len("".join(tokens[:i])) - (len("".join(tokens)) - len(choice.text))
                                               for i in range(1, len(tokens))]
    chunks = list(client.completions.create(stream=True, **asked))
    streamed = [token for chunk in chunks if chunk.choices[0].logprobs for token in chunk.choices[0].logprobs.tokens]
    assert streamed == tokens


@pytest.mark.parametrize("path, fields", LLAMA_CPP)
def test_completion_probabilities_token_texts_spell_the_crlf_answer(server, path, fields):
    body = {**fields, "n_predict": 24, "temperature": 0, "n_probs": 2}
    answer = post(server, path, body)
    tokens = [entry["token"] for entry in answer["completion_probabilities"]]
    assert spelled(tokens, answer["content"], POINT), (tokens, answer["content"])
    assert all(bytes(entry["bytes"]).decode() == entry["token"] for entry in answer["completion_probabilities"])
    chunks = stream_lines(server, path, body)
    streamed = [entry["token"] for chunk in chunks for entry in chunk.get("completion_probabilities", [])]
    assert streamed[:len(tokens)] == tokens     # (a stream keeps the tokens of a stop word that ended it, as llama.cpp)


def test_ollama_logprobs_token_texts_spell_the_crlf_answer(server):
    body = {"model": "any", "prompt": crlf(POINT), "raw": True, "stream": False, "logprobs": True,
            "options": {"temperature": 0, "num_predict": 24}}
    answer = post(server, "/api/generate", body)
    tokens = [entry["token"] for entry in answer["logprobs"]]
    assert spelled(tokens, answer["response"], POINT), (tokens, answer["response"])


def mac(text: str) -> str:
    return text.replace("\n", "\r")


def test_a_classic_mac_files_answer_has_its_lone_crs(server):
    """Lone "\\r" line ends are line breaks to the prompt (the same prompt as the LF text's): the answer's are too."""
    body = {"input_prefix": POINT, "input_suffix": "\n", "n_predict": 24, "temperature": 0}
    unix = post(server, "/infill", body)["content"]
    assert "\n" in unix and "\r" not in unix, unix
    mac_body = {**body, "input_prefix": mac(POINT), "input_suffix": "\r"}
    assert post(server, "/infill", mac_body)["content"] == mac(unix)
    pieces = [chunk["content"] for chunk in stream_lines(server, "/infill", mac_body)]
    assert "".join(pieces) == mac(unix), pieces
    stopped = post(server, "/infill", {**mac_body, "stop": ["\n"]})      # its line end, as the client writes it
    assert stopped["content"] == mac(unix).split("\r")[0] and stopped["stopping_word"] == "\n", stopped


def test_ollama_answers_a_crlf_prompt_cut_to_the_context_with_crlf(server):
    """A prompt longer than the context keeps its last tokens (as Ollama's runner cuts it): its answer's line ends
    are still the client's."""
    n_ctx = httpx.get(server.url + "/props").json()[
        "default_generation_settings"]["n_ctx"]
    lines = "".join(f"value_{i} = {i}\n" for i in range(n_ctx))       # (more tokens than the context holds)
    body = {"model": "any", "prompt": lines, "raw": True, "stream": False,
            "options": {"temperature": 0, "num_predict": 16}}
    unix = post(server, "/api/generate", body)
    assert "\n" in unix["response"] and unix["prompt_eval_count"] < n_ctx, unix
    windows = post(server, "/api/generate", {**body, "prompt": crlf(lines)})
    assert windows["response"] == crlf(unix["response"]), windows["response"]
