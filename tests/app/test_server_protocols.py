"""`codecomplete serve` against what real clients send and read: llama.vim's and llama.vscode's /infill bodies,
the official openai package, a Continue-style FIM prompt, Ollama's /api/generate; and prefix reuse across
keystrokes. The server runs as a subprocess on a loopback port (conftest's `server`); tests of how an answer is
carried (line ends, limits, truncation), true of any answer with a line end, run on `table_server`: the same
server, its model's greedy answer known (next_token_table), hundreds of tokens a second where the embedded one
writes ~12."""
import itertools
import json
import re
import time

import httpx
import pytest
import openai
from openai import OpenAI
from server_process import raw_post

LLAMA_VIM_FIELDS = ["content", "timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_token_ms",
                    "timings/prompt_per_second", "timings/predicted_n", "timings/predicted_ms",
                    "timings/predicted_per_token_ms", "timings/predicted_per_second", "truncated", "tokens_cached"]


def around(text: str, line: int, col: int) -> tuple[str, str, str]:
    """llama.vim's split of a buffer at a 1-based cursor: the lines before, the current line up to the cursor,
    the rest of the line and the lines after."""
    lines = text.split("\n")
    before = "".join(f"{row}\n" for row in lines[:line - 1])
    current = lines[line - 1]
    after = current[col - 1:] + "\n" + "".join(f"{row}\n" for row in lines[line:])
    return before, current[:col - 1], after


def llama_vim_body(prefix: str, prompt: str, suffix: str, extra=(), **changes) -> dict:
    """The body llama.vim's llama#fim sends (autoload/llama.vim), for a first request (t_max_predict_ms 250)."""
    indent = len(prompt) - len(prompt.lstrip())
    body = {"id_slot": 0, "input_prefix": prefix, "input_suffix": suffix,
            "input_extra": [{"text": text, "time": 12.5, "filename": name} for name, text in extra],
            "prompt": prompt, "n_predict": 128, "stop": [], "n_indent": indent, "top_k": 40, "top_p": 0.90,
            "samplers": ["top_k", "top_p", "infill"], "stream": False, "cache_prompt": True, "t_max_prompt_ms": 500,
            "t_max_predict_ms": 250, "response_fields": LLAMA_VIM_FIELDS, "model": ""}
    return {**body, **changes}


@pytest.fixture(scope="module")
def files(served_repo):
    """The served repository's files by name (as the editor has them)."""
    return {str(p.relative_to(served_repo)): p.read_text() for p in served_repo.rglob("*.*")}


class Answer:
    def __init__(self, status: int, text: str) -> None:
        self.status_code, self.text = status, text

    def json(self):
        return json.loads(self.text)


def post(server, path: str, body: dict) -> Answer:
    """As llama.vim's curl sends it: JSON, and always this header, the empty key included."""
    return Answer(*raw_post(server.url, path, json.dumps(body).encode(),
                            {"Content-Type": "application/json", "Authorization": "Bearer "}))


def test_llama_vim_infill_is_answered_the_way_llama_vim_reads_it(server, files):
    prefix, prompt, suffix = around(files["app.py"], 5, 5)
    extra = [("shapes/geometry.py", files["shapes/geometry.py"])]
    response = post(server, "/infill", llama_vim_body(prefix, prompt, suffix, extra))
    assert response.status_code == 200
    raw = response.text
    # llama.vim's own check (s:fim_on_response), byte for byte, and one line for classic Vim's channel.
    assert raw.startswith("{") and re.search(r'"content"\s*:"', raw) and "\n" not in raw, raw
    answer = json.loads(raw)
    assert set(answer) == set(LLAMA_VIM_FIELDS)                  # flattened: "timings/prompt_n" is a top-level key
    assert isinstance(answer["content"], str)
    assert answer["timings/predicted_n"] >= 1 and answer["timings/prompt_n"] >= 1
    assert answer["tokens_cached"] >= answer["timings/prompt_n"] and answer["truncated"] is False


def test_llama_vim_warm_up_fills_the_cache_for_the_request_that_follows(server, files):
    ring = [("shapes/geometry.py", files["shapes/geometry.py"]), ("README.md", files["README.md"])]
    warm = post(server, "/infill", {"id_slot": 0, "input_prefix": "", "input_suffix": "", "prompt": "",
                                     "input_extra": [{"text": t, "time": 1, "filename": f} for f, t in ring],
                                     "n_predict": 0, "temperature": 0.0, "samplers": [], "stream": False,
                                     "cache_prompt": True, "t_max_prompt_ms": 1, "t_max_predict_ms": 1,
                                     "response_fields": [""]})
    assert warm.status_code == 200 and warm.text == "{}"
    prefix, prompt, suffix = around(files["app.py"], 9, 5)
    answer = post(server, "/infill", llama_vim_body(prefix, prompt, suffix, ring, response_fields=[])).json()
    assert answer["timings"]["cache_n"] > 0          # the chunks' keys and values were there already
    assert answer["tokens_evaluated"] == answer["timings"]["cache_n"] + answer["timings"]["prompt_n"]


def test_llama_vscode_infill_request(server, served_repo, files):
    prefix, prompt, suffix = around(files["app.py"], 5, 5)
    body = {"id_slot": 0, "input_prefix": prefix, "input_suffix": suffix,
            "input_extra": [{"text": files["shapes/geometry.py"], "time": 1764460000000,
                             "filename": str(served_repo / "shapes" / "geometry.py")}],
            "prompt": prompt, "n_predict": 128, "n_cmpl": 3, "top_k": 40, "top_p": 0.99, "stream": False,
            "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True, "n_indent": 4, "t_max_prompt_ms": 500,
            "t_max_predict_ms": 500}
    response = httpx.post(server.url + "/infill", json=body, timeout=300)     # no Authorization header
    assert response.status_code == 200
    answer = response.json()
    # llama.vscode's getComplFromContent: one object with "content" (n_cmpl may be ignored).
    assert isinstance(answer["content"], str) and answer["stop"] is True
    assert answer["stop_type"] in ("eos", "word", "limit")
    assert answer["generation_settings"]["n_ctx"] > 0 and "prompt_ms" in answer["timings"]


def test_the_next_keystroke_prefills_only_the_new_tokens(server, files):
    prefix, _, suffix = around(files["app.py"], 9, 5)
    answers = []
    for typed in ("    ret", "    retu", "    retur"):
        body = llama_vim_body(prefix, typed, suffix, response_fields=[], n_predict=4, temperature=0.0)
        answers.append(post(server, "/infill", body).json())
    for answer in answers[1:]:
        timings = answer["timings"]
        assert timings["prompt_n"] <= 4, timings               # a character typed: a token or two, and the rest reused
        assert timings["cache_n"] >= 0.9 * answer["tokens_evaluated"], timings


def test_openai_client_completions(server):
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    completion = client.completions.create(model="any", prompt="def fibonacci(n):", max_tokens=8, temperature=0)
    text = completion.choices[0].text
    assert text and completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens >= 1 and completion.usage.prompt_tokens > 0
    chunks = list(client.completions.create(model="any", prompt="def fibonacci(n):", max_tokens=8, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == text      # greedy: the same text, streamed
    assert chunks[-1].choices[0].finish_reason == completion.choices[0].finish_reason
    # The openai package ends a stream quietly at a closed connection; clients that read the events themselves
    # (Continue, llama.vim's instruct mode) wait for the [DONE] event.
    body = {"model": "any", "prompt": "def fibonacci(n):", "max_tokens": 2, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=300) as response:
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: {") for e in events[:-1]), events


def test_openai_client_chat(server):
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    question = [{"role": "user", "content": "What does area_of_circle return?"}]
    answer = client.chat.completions.create(model="any", messages=question, max_tokens=8, temperature=0)
    assert answer.choices[0].message.role == "assistant" and answer.choices[0].message.content
    assert answer.usage.prompt_tokens > 50          # the retrieved repository context came along
    chunks = list(client.chat.completions.create(model="any", messages=question, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == answer.usage.completion_tokens


def test_an_openai_clients_follow_up_reads_only_itself(server):
    """A chat client sends the whole conversation each turn: a follow-up holds the excerpts the turn before carried
    (prompts/chat.py), so the server's cache holds that prompt and its answer (usage's cached tokens)."""
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    messages = [{"role": "user", "content": "What does area_of_circle return?"}]
    for question in ("Which module is it in?", "Why?"):
        answer = client.chat.completions.create(model="any", messages=messages, max_tokens=24, temperature=0)
        messages += [{"role": "assistant", "content": answer.choices[0].message.content},
                     {"role": "user", "content": question}]
    # llama.vscode counts another chat's tokens meanwhile: a prompt only looked at takes no conversation's place
    counted = post(server, "/apply-template", {"messages": [{"role": "user", "content": "What is a Rectangle?"}]})
    assert counted.status_code == 200, counted.text
    follow_up = client.chat.completions.create(model="any", messages=messages, max_tokens=4, temperature=0)
    assert follow_up.usage.prompt_tokens_details.cached_tokens >= answer.usage.prompt_tokens
    assert follow_up.usage.prompt_tokens - follow_up.usage.prompt_tokens_details.cached_tokens < 20


def test_two_chat_clients_taking_turns_each_read_only_their_follow_ups(server):
    """Two conversations on one server, a turn each in turn: each follow-up holds its own conversation's excerpts,
    and the prompt cache (--cache-ram) gives back that conversation's K/V, though the other's came between."""
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    conversations = [[{"role": "user", "content": "What does area_of_circle return?"}],
                     [{"role": "user", "content": "What is a Rectangle?"}]]
    asked = [None, None]
    for question in ("Which module is it in?", "Why?"):
        for k, messages in enumerate(conversations):
            asked[k] = client.chat.completions.create(model="any", messages=messages, max_tokens=16, temperature=0)
            messages += [{"role": "assistant", "content": asked[k].choices[0].message.content},
                         {"role": "user", "content": question}]
    for k, messages in enumerate(conversations):
        follow_up = client.chat.completions.create(model="any", messages=messages, max_tokens=4, temperature=0)
        assert follow_up.usage.prompt_tokens_details.cached_tokens >= asked[k].usage.prompt_tokens, k
        assert follow_up.usage.prompt_tokens - follow_up.usage.prompt_tokens_details.cached_tokens < 20, k


def test_two_chat_clients_that_open_alike_each_read_only_their_follow_ups(server):
    """Two conversations that begin alike (the same system message and question), then part: the second to go on
    holds the excerpts they opened with too. The first to go on took the opening's hold, and the other's follow-up
    had its excerpts chosen again: its whole prompt read again."""
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    opening = [{"role": "system", "content": "You are a terse reviewer of this repository."},
               {"role": "user", "content": "What does area_of_circle return?"}]
    conversations = [list(opening), list(opening)]
    asked = [client.chat.completions.create(model="any", messages=messages, max_tokens=16, temperature=0)
             for messages in conversations]
    for messages, answer, question in zip(conversations, asked, ("Which module is it in?", "Why math.pi?")):
        messages += [{"role": "assistant", "content": answer.choices[0].message.content},
                     {"role": "user", "content": question}]
    for k, messages in enumerate(conversations):
        follow_up = client.chat.completions.create(model="any", messages=messages, max_tokens=4, temperature=0)
        assert follow_up.usage.prompt_tokens_details.cached_tokens >= asked[k].usage.prompt_tokens, k
        assert follow_up.usage.prompt_tokens - follow_up.usage.prompt_tokens_details.cached_tokens < 20, k


def test_a_warm_up_answers_in_the_shape_asked_for_streamed_or_not(server):
    """A warm-up of a system message alone (no question, `n_predict: 0`), through the openai package: a stream
    when it asked for one (a JSON body gave the client no events at all), one empty choice ended by its limit."""
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    system = [{"role": "system", "content": "You are a coding assistant."}]
    nothing = {"n_predict": 0}
    answer = client.chat.completions.create(model="any", messages=system, extra_body=nothing)
    assert answer.choices[0].message.content == "" and answer.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(model="any", messages=system, extra_body=nothing, stream=True,
                                                 stream_options={"include_usage": True}))
    assert [c.object for c in chunks] == ["chat.completion.chunk"] * 3
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[1].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 0
    chunks = list(client.completions.create(model="any", prompt="def f(", max_tokens=0, stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason == "length"


def test_llama_vim_instruct_warm_up_fills_the_cache_for_the_instruction(server):
    """llama.vim's instruct warm-up as it sends it (autoload/llama.vim `llama#inst`): the system message and a user
    message with no instruction yet, `n_predict: 0` (llama.cpp's field), while the user types; the request with the
    instruction that follows finds the conversation's start in the cache."""
    system = {"role": "system", "content": "You are a text-editing assistant, session 7f3c9e. Respond ONLY with the "
                                           "result of applying INSTRUCTION to SELECTION.\n--- SELECTION ---\nx = 1\n"}
    warm = post(server, "/v1/chat/completions", {"id_slot": 0, "messages": [system, {"role": "user", "content": ""}],
                                                  "samplers": [], "n_predict": 0, "stream": False,
                                                  "cache_prompt": True, "response_fields": [""]})
    assert warm.status_code == 200, warm.text
    assert warm.json()["usage"]["completion_tokens"] == 0
    asked = {"messages": [system, {"role": "user", "content": "INSTRUCTION: rename x to y"}], "n_predict": 2,
             "temperature": 0.1, "cache_prompt": True}
    answer = post(server, "/v1/chat/completions", asked).json()
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] >= 20       # the system message's tokens


def test_an_openai_limit_of_0_is_refused_as_openai_refuses_it(server):
    """`max_tokens` and `max_completion_tokens` are OpenAI's: below 1 is its 400 ("Invalid 'max_tokens': integer
    below minimum value", vLLM's too), not an empty answer a client takes for the model's (a budget computed down to
    0). llama.cpp's `n_predict: 0`, llama.vim's warm-up, still prefills the prompt and answers no text."""
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    question = [{"role": "user", "content": "hi"}]
    for field in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="any", messages=question, **{field: 0})
        assert refused.value.status_code == 400
        assert f"'{field}'" in refused.value.message and ">= 1" in refused.value.message, refused.value.message
        with pytest.raises(openai.BadRequestError):       # streamed too: the 400 before any event
            list(client.chat.completions.create(model="any", messages=question, stream=True, **{field: 0}))
    warm = client.chat.completions.create(model="any", messages=question, extra_body={"n_predict": 0})
    assert warm.choices[0].message.content == "" and warm.usage.completion_tokens == 0 and warm.usage.prompt_tokens


def test_a_null_is_the_fields_default_as_clients_send_it(server):
    """The openai package sends `"temperature": null` for temperature=None; llama.cpp (json_value) and Ollama (Go's
    decoder) read a null as a field left out too. Seeded sampling: the same text as with the fields left out."""
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    asked = dict(model="any", messages=[{"role": "user", "content": "hi"}], max_tokens=4, seed=7)
    nulls = client.chat.completions.create(**asked, temperature=None, top_p=None, n=None, stop=None,
                                           presence_penalty=None, stream_options=None)
    assert nulls.choices[0].message.content == client.chat.completions.create(**asked).choices[0].message.content
    infill = {"input_prefix": "def f():\n", "input_suffix": "", "n_predict": 3, "seed": 7}
    answer = httpx.post(server.url + "/infill", timeout=300, json={
        **infill, "temperature": None, "top_k": None, "stop": None, "input_extra": None, "n_indent": None})
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"] == httpx.post(server.url + "/infill", json=infill, timeout=300).json()["content"]
    generate = {"model": "any", "prompt": "def f():", "options": {"num_predict": 2, "seed": 7, "temperature": None},
                "stream": None}
    with httpx.stream("POST", server.url + "/api/generate", json=generate, timeout=300) as response:   # streamed
        assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
        assert json.loads(list(response.iter_lines())[-1])["done"] is True


def test_special_token_text_in_a_completion_prompt_becomes_special_tokens(server):
    """Continue renders FIM templates itself and sends their special tokens as text."""
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)

    def prompt_tokens(prompt: str) -> int:
        return client.completions.create(model="any", prompt=prompt, max_tokens=1, temperature=0).usage.prompt_tokens
    assert prompt_tokens("<file_sep>") == 1 and prompt_tokens("<repo_name><file_sep><filename>") == 3
    assert prompt_tokens("<file_sep >") > 1                    # not the token's text: plain text
    # Continue's StarCoder and CodeLlama templates (their markers are plain text to this model's vocabulary).
    for template in ("<fim_prefix>def add(a, b):\n    <fim_suffix>\n<fim_middle>",
                     "<PRE> def add(a, b):\n     <SUF>\n <MID>"):
        completion = client.completions.create(model="codellama-7b", prompt=template, max_tokens=4, temperature=0,
                                               stop=["<fim_prefix>", "<|endoftext|>", "<EOT>"])
        assert isinstance(completion.choices[0].text, str)


def test_ollama_generate_with_suffix_streams_json_lines(server):
    show = httpx.post(server.url + "/api/show", json={"name": "codecomplete"}).json()
    assert ".Suffix" in show["template"]                 # how Continue decides that the model can fill in
    for line in show["parameters"].split("\n"):          # Continue parses every line of it with this pattern
        assert re.match(r'^(\S+)\s+((?:".*")|\S+)$', line)
    assert httpx.get(server.url + "/api/tags").json()["models"][0]["name"]
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", httpx.get(server.url + "/api/version").json()["version"])
    body = {"model": "codecomplete", "prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))\n",
            "options": {"num_predict": 6, "temperature": 0}, "keep_alive": 1800}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=300) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    assert all(not line["done"] for line in lines[:-1]) and lines[-1]["done"] is True
    assert lines[-1]["eval_count"] >= 1 and lines[-1]["done_reason"] in ("stop", "length")
    whole = httpx.post(server.url + "/api/generate", json={**body, "stream": False}, timeout=300).json()
    assert whole["response"] == "".join(line["response"] for line in lines)


def test_discovery_routes(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    props = httpx.get(server.url + "/props").json()
    assert props["default_generation_settings"]["n_ctx"] == server.info["engine"]["context_length"]
    client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    models = client.models.list().data
    assert len(models) == 1 and "SmolLM2" in models[0].id
    assert client.models.retrieve(models[0].id).id == models[0].id        # the openai package's models.retrieve
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.models.retrieve("gpt-4o")
    assert httpx.get(server.url + "/v1/health").json()["status"] == "ok"     # llama.cpp's alias (Tabby's fields too)
    ollama = httpx.get(server.url + "/")                                       # Ollama's liveness check
    assert ollama.status_code == 200 and ollama.text == "Ollama is running"
    assert httpx.head(server.url + "/").status_code == 200


def test_stream_of_infill_ends_without_done_marker(server, files):
    prefix, prompt, suffix = around(files["app.py"], 9, 5)
    body = llama_vim_body(prefix, prompt, suffix, stream=True, n_predict=4, t_max_predict_ms=0, response_fields=[])
    started = time.monotonic()
    with httpx.stream("POST", server.url + "/infill", json=body, timeout=300) as response:
        events = [line for line in response.iter_lines() if line]
    assert time.monotonic() - started < 300
    assert all(event.startswith("data: {") for event in events)          # no [DONE], no keep-alive comments
    last = json.loads(events[-1][len("data: "):])
    assert last["stop"] is True and last["content"] == "" and "timings" in last
    assert all(json.loads(e[len("data: "):])["stop"] is False for e in events[:-1])


def streamed_content(server, path: str, body: dict) -> str:
    with httpx.stream("POST", server.url + path, json={**body, "stream": True}, timeout=300) as response:
        return "".join(json.loads(line[len("data: "):])["content"] for line in response.iter_lines() if line)


def test_a_stream_sends_what_the_answer_holds_and_nothing_a_limit_cuts(server, files):
    """n_indent ends a completion at a line indented less (cut from the answer): the stream, whose text goes out as
    it is made, sends exactly the answer, never the dedented line (llama.vscode would insert it)."""
    body = {"input_prefix": "def count(words):\n    counts = {}\n    for word in words:\n",   # (greedy: 42 tokens)
            "prompt": "        ", "input_suffix": "", "n_predict": 64, "temperature": 0, "n_indent": 8,
            "response_fields": ["content", "stop_type"]}
    answer = post(server, "/infill", body).json()
    lines = answer["content"].split("\n")
    assert answer["stop_type"] == "limit" and len(lines) > 1 and not lines[-1].strip(), answer   # a line was cut
    assert all(len(line) - len(line.lstrip()) >= 8 for line in lines[1:] if line.strip()), answer
    assert streamed_content(server, "/infill", body) == answer["content"]


def test_stopping_word_names_the_stop_string_that_ended_the_text(server):
    body = {"prompt": "values = [1, 2, 3]\ntotal = 0\nfor value in values:\n", "n_predict": 24, "temperature": 0,
            "stop": ["\n"], "response_fields": ["content", "stop_type", "stopping_word"]}
    answer = post(server, "/completion", body).json()
    assert answer["stop_type"] == "word" and answer["stopping_word"] == "\n", answer


def test_the_log_line_of_a_streamed_request_says_where_its_first_token_went(server, files):
    from codecomplete.serve_bench import STAGES, server_stages

    before = len(server_stages(server.log()))
    prefix, prompt, suffix = around(files["app.py"], 7, 5)
    body = llama_vim_body(prefix, prompt, suffix, stream=True, n_predict=3, t_max_predict_ms=0, response_fields=[])
    with httpx.stream("POST", server.url + "/infill", json=body, timeout=300) as response:
        assert [line for line in response.iter_lines() if line]
    deadline = time.monotonic() + 30          # the line comes when the engine thread has finished the job
    while len(server_stages(server.log())) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    stages = server_stages(server.log())[-1]
    # ("sent" only when the event loop had handed the first text to the stream by the time the job ended)
    assert {"first", "queued", "prompt", "engine", "text"} <= set(stages) <= {"first", *STAGES}
    assert all(value >= 0 for value in stages.values()) and stages["engine"] > 0 and stages["prompt"] > 0
    # The parts add up to the whole (each rounded to 0.1 ms).
    assert abs(sum(value for key, value in stages.items() if key != "first") - stages["first"]) <= 0.5, stages


def test_a_cursor_after_a_space_is_healed_in_infill_completion_and_openai(server, files):
    """Token healing on every completion route: /infill's input_prefix + prompt ending after `area = ` (app.py
    line 5), streamed or not, and the same text as a raw prompt to /completion and OpenAI completions. The prompt
    ends before the space, the generation must begin with it, and the answer does not repeat it."""
    prefix, prompt, suffix = around(files["app.py"], 5, 12)
    assert prompt == "    area = "
    body = llama_vim_body(prefix, prompt, suffix, response_fields=[], n_predict=12, temperature=0.0, top_k=1)
    answer = post(server, "/infill", body).json()
    assert answer["content"].startswith("area_of_circle("), answer["content"]   # not a digit after a lone space
    with httpx.stream("POST", server.url + "/infill", json={**body, "stream": True}, timeout=300) as response:
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line]
    assert "".join(event["content"] for event in events) == answer["content"]
    # A raw prompt ending after a space: healed the same way (the space is not written again).
    raw = prefix + prompt
    completion = post(server, "/completion", {"prompt": raw, "n_predict": 12, "temperature": 0.0}).json()
    assert completion["content"] and not completion["content"].startswith(" "), completion["content"]
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    text = client.completions.create(model="any", prompt=raw, max_tokens=12, temperature=0).choices[0].text
    assert text == completion["content"]
    streamed = client.completions.create(model="any", prompt=raw, max_tokens=12, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == text


def test_completion_echoes_the_prompt_as_sent_healed_tail_included(server):
    """Token healing leaves a prompt's partial last token out and makes the generation begin with it; `content`
    does not repeat it, so the echoed `prompt` must hold it: prompt + content is the whole text."""
    for text in ("def f():", "Hello wor", "x = 1\n    "):
        answer = httpx.post(server.url + "/completion", json={"prompt": text, "n_predict": 2, "temperature": 0},
                            timeout=300).json()
        assert answer["prompt"].endswith(text), (text, answer["prompt"])


def test_the_developer_role_is_the_system_message(server):
    """Newer OpenAI clients send the system prompt as role "developer"."""
    answer = httpx.post(server.url + "/v1/chat/completions", timeout=300, json={
        "messages": [{"role": "developer", "content": "Answer briefly."}, {"role": "user", "content": "hi"}],
        "max_tokens": 2, "temperature": 0}).json()
    assert answer["choices"][0]["message"]["role"] == "assistant" and answer["usage"]["completion_tokens"] >= 1


def test_text_parts_of_a_message_are_its_lines(server):
    """Content as a list of text parts is the parts one per line (llama.cpp's reading): the same prompt as
    the string with newlines, not the parts run together."""
    def prompt_tokens(content) -> int:
        answer = httpx.post(server.url + "/v1/chat/completions", timeout=300, json={
            "messages": [{"role": "user", "content": content}], "n_predict": 0}).json()
        return answer["usage"]["prompt_tokens"]
    parts = [{"type": "text", "text": "def f():\n    return 1"}, {"type": "text", "text": "What does f return?"}]
    assert prompt_tokens(parts) == prompt_tokens("def f():\n    return 1\nWhat does f return?")
    assert prompt_tokens(parts) != prompt_tokens("def f():\n    return 1What does f return?")


def test_every_system_message_reaches_the_prompt(server):
    """OpenAI and Ollama take each system message: a second one (a client's beside a tool's), or one in the middle of
    the conversation, is in the prompt too, not dropped."""
    def prompt_tokens(*messages) -> int:
        answer = httpx.post(server.url + "/v1/chat/completions", timeout=300, json={
            "messages": [*messages, {"role": "user", "content": "hi"}], "n_predict": 0}).json()
        return answer["usage"]["prompt_tokens"]
    first = {"role": "system", "content": "Answer briefly."}
    second = "Always answer in French, and name the files you refer to."
    alone = prompt_tokens(first)
    assert prompt_tokens(first, {"role": "developer", "content": second}) >= alone + 10
    assert prompt_tokens(first, {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
                         {"role": "system", "content": second}) >= prompt_tokens(
        first, {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}) + 10


def test_ollama_generate_context_carries_the_conversation_on(server):
    """An answer's `context` is the tokens of its prompt and its text; sent back, its text comes before the next
    prompt (Ollama's older way to hold a conversation on /api/generate). A raw prompt has no context, and may not
    be sent one (Ollama's 400)."""
    body = {"prompt": "The capital of France is", "stream": False, "options": {"num_predict": 4, "temperature": 0}}
    first = httpx.post(server.url + "/api/generate", json=body, timeout=300).json()
    text = httpx.post(server.url + "/detokenize", json={"tokens": first["context"]}).json()["content"]
    assert text == body["prompt"] + first["response"]
    follow = {**body, "prompt": " The capital of Italy is"}
    went_on = httpx.post(server.url + "/api/generate", json={**follow, "context": first["context"]}, timeout=300)
    fresh = httpx.post(server.url + "/api/generate", json={**follow, "prompt": text + follow["prompt"]}, timeout=300)
    assert went_on.json()["response"] == fresh.json()["response"]         # greedy: the same prompt, the same text
    assert went_on.json()["context"] == fresh.json()["context"]
    # an answer that the end of text stopped: its context is the text, without that token (as Ollama's)
    chat = {**body, "prompt": "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n",
            "options": {"num_predict": 60, "temperature": 0}}
    ended = httpx.post(server.url + "/api/generate", json=chat, timeout=300).json()
    assert ended["done_reason"] == "stop"
    # the end of text is counted (Ollama's runner counts every sampled token, numPredicted, before its EOS check),
    # and is not in the context
    assert ended["prompt_eval_count"] + ended["eval_count"] == len(ended["context"]) + 1
    text = httpx.post(server.url + "/detokenize", json={"tokens": ended["context"]}).json()["content"]
    assert text == chat["prompt"] + ended["response"]
    raw = httpx.post(server.url + "/api/generate", json={**body, "raw": True}, timeout=300).json()
    assert "context" not in raw
    refused = httpx.post(server.url + "/api/generate", json={**body, "raw": True, "context": [1, 2]}, timeout=300)
    assert refused.status_code == 400 and "raw mode does not support" in refused.json()["error"]
    chat = httpx.post(server.url + "/api/chat", timeout=300, json={
        "messages": [{"role": "user", "content": "hi"}], "stream": False, "options": {"num_predict": 1}}).json()
    assert chat["done"] is True and "context" not in chat      # Ollama's chat answers have none


def test_ollama_context_leaves_out_every_end_of_text_the_engine_stops_at():
    """The engine stops at more than the tokenizer's EOS (SmolLM2's <|endoftext|>, CodeLlama's <EOT>, as llama.cpp):
    whichever ended the answer stays out of its context."""
    from types import SimpleNamespace

    from codecomplete.server.ollama import _context

    tokenizer = SimpleNamespace(eos_token_id=2, encode=lambda text: [])
    generation = SimpleNamespace(prompt=SimpleNamespace(ids=[5, 6], stop_token_ids=[]))
    ended = SimpleNamespace(token_ids=[7, 0])
    assert _context(tokenizer, generation, ended, eos_ids=[0, 2]) == [5, 6, 7]
    assert _context(tokenizer, generation, SimpleNamespace(token_ids=[7, 2]), eos_ids=[0, 2]) == [5, 6, 7]


def test_ollama_generate_honours_a_template_and_a_context_before_a_suffix(server):
    """As Ollama: a request's template is the prompt (here: one of {{ .Prompt }}, {{ .Suffix }}, {{ .System }}), and
    an earlier answer's context goes before a fill-in-the-middle prompt too; raw refuses both (Ollama's 400)."""
    options = {"num_predict": 6, "temperature": 0}
    generate = lambda **body: httpx.post(server.url + "/api/generate", timeout=300, json={  # noqa: E731
        "stream": False, "options": options, **body}).json()
    template = "{{ .System }}\n<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n {{- .Suffix }}"
    templated = generate(prompt="Say hi.", system="Be brief.", suffix=" Hello", template=template)
    rendered = "Be brief.\n<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant Hello"    # ("{{-" trims)
    plain = generate(prompt=rendered, raw=True)
    assert templated["response"] == plain["response"]
    assert templated["prompt_eval_count"] == plain["prompt_eval_count"]
    assert "raw mode does not support" in generate(prompt=rendered, raw=True, template=template)["error"]
    first = generate(prompt="# shapes\n")
    suffix = "\n\nprint(area_of_circle(2))\n"
    went_on = generate(prompt="import math\n", suffix=suffix, context=first["context"])
    text = httpx.post(server.url + "/detokenize", json={"tokens": first["context"]}).json()["content"]
    fresh = generate(prompt=text + "import math\n", suffix=suffix)
    alone = generate(prompt="import math\n", suffix=suffix)
    assert went_on["response"] == fresh["response"]
    assert went_on["prompt_eval_count"] == fresh["prompt_eval_count"] != alone["prompt_eval_count"]


def test_ollama_num_predict_0_is_no_limit_as_ollamas_runner_reads_it(table_server):
    body = {"prompt": "def add(a, b):\n", "stream": False, "options": {"num_predict": 0, "temperature": 0}}
    unlimited = httpx.post(table_server.url + "/api/generate", json=body, timeout=300).json()
    default = httpx.post(table_server.url + "/api/generate", timeout=300,
                         json={**body, "options": {"num_predict": -1, "temperature": 0}}).json()
    assert unlimited["response"] and unlimited["eval_count"] >= 1
    assert (unlimited["response"], unlimited["eval_count"]) == (default["response"], default["eval_count"])
    limited = httpx.post(table_server.url + "/api/generate", timeout=300,
                         json={**body, "options": {"num_predict": 2, "temperature": 0}}).json()
    assert (limited["eval_count"], limited["done_reason"]) == (2, "length")      # Ollama's word for a limit


def test_ollama_cuts_a_prompt_longer_than_the_context_to_its_end_unless_truncate_is_false(server):
    """Ollama's runner keeps the end of an input longer than its context (the default "truncate": true); false is
    its 400. The cut prompt leaves room for the answer."""
    long = "".join(f"value_{i} = {i}\n" for i in range(400)) + "total = value_398 +"
    body = {"prompt": long, "raw": True, "stream": False, "options": {"num_predict": 4, "temperature": 0}}
    answer = httpx.post(server.url + "/api/generate", json=body, timeout=300)
    context = httpx.get(server.url + "/v1/models").json()["data"][0]["meta"]["n_ctx"]
    assert answer.status_code == 200 and answer.json()["eval_count"] == 4, answer.text
    assert context // 2 <= answer.json()["prompt_eval_count"] <= context - 4
    refused = httpx.post(server.url + "/api/generate", json={**body, "truncate": False}, timeout=300)
    assert refused.status_code == 400 and "does not fit the context" in refused.json()["error"]


def test_ollama_prompt_eval_count_is_the_whole_prompt_cached_or_not(server):
    """As Ollama counts it: every prompt token, those the cache held too (prompt_eval_cached_count says how many)."""
    body = {"prompt": "def area_of_square(side):", "stream": False, "options": {"num_predict": 1, "temperature": 0}}
    first, again = (httpx.post(server.url + "/api/generate", json=body, timeout=300).json() for _ in range(2))
    assert again["prompt_eval_cached_count"] > 0
    assert again["prompt_eval_count"] == first["prompt_eval_count"] == len(first["context"]) - first["eval_count"]


def test_ollama_requests_with_nothing_to_generate_load_or_unload_the_model(server):
    """Ollama's documented preload is a chat without messages (or a prompt-less generate); keep_alive 0 unloads."""
    for path, body in [("/api/chat", {"model": "m", "messages": []}), ("/api/chat", {"model": "m"}),
                       ("/api/generate", {"model": "m"})]:
        for keep_alive, reason in [(None, "load"), ("5m", "load"), (0, "unload"), ("0s", "unload")]:
            answer = httpx.post(server.url + path, json={**body, "keep_alive": keep_alive}, timeout=300)
            assert answer.status_code == 200, answer.text
            assert answer.json()["done"] is True and answer.json()["done_reason"] == reason, (path, keep_alive)
    assert httpx.post(server.url + "/api/chat", json={"messages": [], "keep_alive": True}).status_code == 400


def test_ollama_total_duration_counts_the_wait_for_the_engine(server):
    """Ollama's total_duration runs from the request's arrival: a request queued behind another counts its wait."""
    import threading

    first = threading.Thread(target=httpx.post, args=(server.url + "/api/generate",), kwargs=dict(timeout=300, json={
        "prompt": "Once upon a time", "stream": False, "options": {"num_predict": 48, "temperature": 0}}))
    first.start()
    time.sleep(0.3)
    began = time.perf_counter()
    answer = httpx.post(server.url + "/api/generate", timeout=300, json={
        "prompt": "def f():", "stream": False, "options": {"num_predict": 1}}).json()
    waited = time.perf_counter() - began
    first.join()
    assert answer["total_duration"] >= 0.8 * waited * 1e9, (waited, answer)     # (about 3 s of it queued)
    assert answer["total_duration"] >= answer["prompt_eval_duration"] + answer["eval_duration"]


def test_ollama_seed_minus_one_is_a_random_seed(server):
    """Ollama's default seed, -1, asks for a random one: answers differ, where a seed of their own repeats them."""
    def answers(seed: int) -> set[str]:
        body = {"prompt": "My favourite animal is", "stream": False,
                "options": {"num_predict": 8, "temperature": 1.0, "seed": seed}}
        return {httpx.post(server.url + "/api/generate", json=body, timeout=300).json()["response"] for _ in range(4)}
    assert len(answers(-1)) > 1
    assert len(answers(7)) == 1


def test_tokenize_and_detokenize_round_trip_as_llama_cpp_answers_them(server):
    text = "def area(r):\n    return 3.14 * r * r<|endoftext|>"
    tokens = httpx.post(server.url + "/tokenize", json={"content": text}).json()["tokens"]
    assert all(isinstance(t, int) for t in tokens) and len(tokens) < len(text)
    special = httpx.post(server.url + "/tokenize", json={"content": "<|endoftext|>"}).json()["tokens"]
    assert len(special) == 1 and tokens[-1] == special[0]          # special-token text is that token
    literal = httpx.post(server.url + "/tokenize", json={"content": "<|endoftext|>", "parse_special": False}).json()
    assert len(literal["tokens"]) > 1 and special[0] not in literal["tokens"]     # unless parse_special is false
    assert httpx.post(server.url + "/detokenize", json=literal).json() == {"content": "<|endoftext|>"}
    pieces = httpx.post(server.url + "/tokenize", json={"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == tokens and "".join(p["piece"] for p in pieces) == text
    assert httpx.post(server.url + "/detokenize", json={"tokens": tokens}).json() == {"content": text}
    bad = httpx.post(server.url + "/detokenize", json={"tokens": [10 ** 7]})
    assert bad.status_code == 400 and "outside the vocabulary" in bad.json()["error"]["message"]


def test_tokenize_pieces_are_each_tokens_bytes_as_llama_cpp_gives_them(server):
    """llama.cpp's /tokenize with_pieces: a piece that is whole UTF-8 is its text, else the list of its bytes (a
    character written in several byte tokens): joined, the pieces' bytes spell the content. Each token decoded alone
    made every such piece U+FFFD, and the pieces no longer spelled it."""
    text = "s = '😀 日本語 ✓'"
    pieces = httpx.post(server.url + "/tokenize", json={"content": text, "with_pieces": True}).json()["tokens"]
    assert any(isinstance(p["piece"], list) for p in pieces)        # the embedded model spells 😀 in byte tokens
    assert b"".join(bytes(p["piece"]) if isinstance(p["piece"], list) else p["piece"].encode()
                    for p in pieces) == text.encode()
    assert not any(isinstance(p["piece"], str) and "\ufffd" in p["piece"] for p in pieces)


def test_a_sentencepiece_tokens_piece_keeps_its_leading_space():
    """CodeLlama's kind of vocabulary: "▁add" is " add", as llama.cpp's common_token_to_piece writes it, where the
    token decoded alone lost the space a text begins with; a byte token is its byte; a special token its text."""
    from codecomplete.server.llama_cpp import token_pieces
    from test_logprobs import byte_fallback_tokenizer

    tokenizer = byte_fallback_tokenizer()
    ids = tokenizer.encode("x = add é", add_special_tokens=False)        # ▁x ▁ = ▁add ▁ <0xC3> <0xA9>
    assert [p["piece"] for p in token_pieces(tokenizer, ids)] == [" x", " ", "=", " add", " ", [0xC3], [0xA9]]
    assert [p["id"] for p in token_pieces(tokenizer, ids)] == ids
    assert token_pieces(tokenizer, [1])[0]["piece"] == "<s>"


def test_ollama_raw_takes_the_prompt_as_it_is_and_leaves_the_suffix_out(server):
    """Ollama applies no template with "raw": true, so no fill-in-the-middle: the prompt continued, as without a
    suffix."""
    body = {"model": "any", "prompt": "def add(a, b):\n    ", "options": {"num_predict": 6, "temperature": 0},
            "stream": False}
    plain = httpx.post(server.url + "/api/generate", json=body, timeout=300).json()["response"]
    raw = httpx.post(server.url + "/api/generate", timeout=300,
                     json={**body, "raw": True, "suffix": "\n\nprint(add(1, 2))\n"}).json()["response"]
    fim = httpx.post(server.url + "/api/generate", timeout=300,
                     json={**body, "suffix": "\n\nprint(add(1, 2))\n"}).json()
    assert raw == plain and fim["prompt_eval_count"] > 0


def test_completion_says_truncated_when_the_generation_filled_the_context(table_server):
    """llama.cpp's truncated is also true when prompt + generated tokens reached the context's end."""
    n_ctx = table_server.info["engine"]["context_length"]
    fields = ["truncated", "stop_type", "tokens_evaluated", "tokens_predicted"]
    line = "x = 1\n"
    per_line = len(httpx.post(table_server.url + "/tokenize", json={"content": line * 10}).json()["tokens"]) / 10
    body = {"prompt": line * int((n_ctx - 24) / per_line), "n_predict": 64, "temperature": 0, "stop": [],
            "ignore_eos": True, "response_fields": fields}
    full = httpx.post(table_server.url + "/completion", json=body, timeout=300).json()
    assert full["tokens_evaluated"] + full["tokens_predicted"] >= n_ctx and full["tokens_predicted"] < 64, full
    assert full["truncated"] is True and full["stop_type"] == "limit"
    short = httpx.post(table_server.url + "/completion", json={**body, "prompt": "x = 1\n", "n_predict": 4},
                       timeout=300).json()
    assert short["truncated"] is False and short["tokens_predicted"] >= 4, short    # (+ what re-makes a healed tail)


def test_infill_says_truncated_when_the_cursors_own_line_was_cut(table_server):
    body = {"input_prefix": "word " * 5000, "input_suffix": "", "n_predict": 1,
            "response_fields": ["truncated", "tokens_evaluated"]}
    assert httpx.post(table_server.url + "/infill", json=body, timeout=300).json()["truncated"] is True
    body["input_prefix"] = "def f(x):\n    return "
    assert httpx.post(table_server.url + "/infill", json=body, timeout=300).json()["truncated"] is False


POINT = "class Point:\n    def __init__(self, x, y, z):\n        self.x = x\n"    # greedy: the lines that follow


def crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


def test_text_with_crlf_line_ends_gets_crlf_line_ends_back_on_infill_and_completion(table_server):
    """As on Tabby's route (test_tabby): the prompt reads the client's text with LF, as it reads a file, and the
    answer's line ends are the client's again, whole and streamed (no event ends between a "\r" and its "\n");
    /completion's echoed prompt too, so that prompt + content is still the whole text."""
    for path, body, text_fields in [
            ("/infill", {"input_prefix": POINT, "input_suffix": "\n"}, ("input_prefix", "input_suffix")),
            ("/completion", {"prompt": POINT}, ("prompt",))]:
        body = {**body, "n_predict": 24, "temperature": 0}
        unix = post(table_server, path, body).json()
        assert "\n" in unix["content"] and "\r" not in unix["content"], unix      # (else nothing to convert)
        windows_body = {**body, **{name: crlf(body[name]) for name in text_fields}}
        windows = post(table_server, path, windows_body).json()
        assert windows["content"] == crlf(unix["content"]), (path, windows["content"])
        with httpx.stream("POST", table_server.url + path, json={**windows_body, "stream": True},
                          timeout=300) as response:
            pieces = [json.loads(line[len("data: "):])["content"] for line in response.iter_lines() if line]
        assert "".join(pieces) == windows["content"] and not any(piece.endswith("\r") for piece in pieces), pieces
        if path == "/completion":
            assert windows["prompt"] == crlf(unix["prompt"]) and windows["prompt"].endswith(crlf(POINT))


@pytest.mark.parametrize("suffix", [None, "\n"])      # a raw prompt; with a suffix, the session's infill
def test_openai_completions_of_crlf_text_have_crlf_line_ends_and_offsets_into_them(table_server, suffix):
    """/v1/completions as the openai package asks: the text with the prompt's CRLF line ends, and each token's text
    and text_offset as that text has them (the model wrote "\n": its offsets count one character less a line),
    whole and streamed."""
    client = OpenAI(base_url=table_server.url + "/v1", api_key="sk-local", max_retries=0)
    asked = dict(model="any", max_tokens=24, temperature=0, logprobs=0)
    if suffix is not None:
        asked["suffix"] = suffix
    unix = client.completions.create(prompt=POINT, **asked).choices[0]
    assert "\n" in unix.text and "\r" not in unix.text, unix.text
    windows = client.completions.create(prompt=crlf(POINT), **{
        **asked, **({"suffix": crlf(suffix)} if suffix is not None else {})}).choices[0]
    assert windows.text == crlf(unix.text)
    offsets = [offset + unix.text[:offset].count("\n") for offset in unix.logprobs.text_offset]
    # (the tokens' texts as the text has them: joined, they spell it, test_crlf_answers)
    assert windows.logprobs.text_offset == offsets and windows.logprobs.tokens == list(map(crlf, unix.logprobs.tokens))
    chunks = list(client.completions.create(prompt=crlf(POINT), stream=True, **{
        **asked, **({"suffix": crlf(suffix)} if suffix is not None else {})}))
    assert "".join(chunk.choices[0].text for chunk in chunks) == windows.text
    assert [offset for chunk in chunks if chunk.choices[0].logprobs
            for offset in chunk.choices[0].logprobs.text_offset] == offsets


def test_a_cursor_between_cr_and_lf_ends_its_line(engine, served_repo, tmp_path):
    """An infill whose prefix ends inside a CRLF ("...\\r" | "\\n...") is the completion at the end of that line: the
    prompt reads CRLF as one line break, and the column counted with the "\\r" lay past the line (a 400)."""
    from prompts import index_repository

    from codecomplete.session import Sampling, Session

    session = Session(engine, index_repository(served_repo, cache_dir=tmp_path))
    sampling = Sampling(max_tokens=4)
    split = session.infill("def double(x):\r", "\n    return 2 * x\r\n", path="double.py", sampling=sampling)
    whole = session.infill("def double(x):", "\r\n    return 2 * x\r\n", path="double.py", sampling=sampling)
    assert split.prompt.ids == whole.prompt.ids and split.prompt.heal_text == whole.prompt.heal_text == "):"


def test_an_infill_in_a_classic_mac_file_is_the_same_prompt_as_in_a_unix_one(engine, served_repo, tmp_path):
    """Lone "\\r" line ends (classic Mac OS) are line breaks to editors: the cursor's line was counted at "\\n" only
    (line 1, a column past the prefix's one "line"), and the prompt held the raw "\\r"s."""
    from prompts import index_repository

    from codecomplete.session import Sampling, Session

    session = Session(engine, index_repository(served_repo, cache_dir=tmp_path))
    sampling = Sampling(max_tokens=4)
    prefix, suffix = "import os\n\ndef double(x):\n    return 2 * ", "\n\nprint(double(2))\n"
    unix = session.infill(prefix, suffix, path="double.py", sampling=sampling)
    mac = session.infill(prefix.replace("\n", "\r"), suffix.replace("\n", "\r"), path="double.py", sampling=sampling)
    assert mac.prompt.ids == unix.prompt.ids and mac.prompt.heal_text == unix.prompt.heal_text


@pytest.mark.parametrize("path", ["/completion", "/infill"])
def test_a_healed_streams_events_count_the_prompt_as_its_final_event_does(server, path):
    """llama.cpp sends one prompt count in every event; a healed prompt's chunks said 7 (the prompt without its
    healed token) and its final event 8 (that token, made again, counted as the prompt's: /tokenize's count)."""
    text = "def add(a, b):"
    body = {"prompt": text, "n_predict": 4, "temperature": 0, "stream": True}
    if path == "/infill":
        body = {**body, "input_prefix": "", "input_suffix": "\n", "response_fields": []}
    with httpx.stream("POST", server.url + path, json=body, timeout=300) as response:
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line]
    *chunks, last = events
    assert chunks and last["stop"] and all(not chunk["stop"] for chunk in chunks), events
    assert {chunk["tokens_evaluated"] for chunk in chunks} == {last["tokens_evaluated"]}, events
    if path == "/completion":
        prompt = len(httpx.post(server.url + "/tokenize", json={"content": text}).json()["tokens"])
        assert last["tokens_evaluated"] == prompt, events


def test_one_token_after_a_healed_tail_is_one_token_of_new_text(server):
    """Healing takes the prompt's last token off and the model makes it again: that token is not one of
    max_tokens, or `max_tokens: 1` after `def add(a, b):` answered nothing."""
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    completion = client.completions.create(model="any", prompt="def add(a, b):", max_tokens=1, temperature=0)
    assert completion.choices[0].text and completion.choices[0].finish_reason == "length"
    # Counted as llama.cpp and Ollama count it: the token made again is the prompt's (theirs keeps it), so one token
    # of new text is one completion token. (Greedy here makes "):" again, then a newline.)
    prompt = len(httpx.post(server.url + "/tokenize", json={"content": "def add(a, b):"}).json()["tokens"])
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (prompt, 1, prompt + 1)
    native = httpx.post(server.url + "/completion", timeout=300, json={
        "prompt": "def add(a, b):", "n_predict": 1, "temperature": 0}).json()
    assert (native["tokens_evaluated"], native["tokens_predicted"], native["timings"]["predicted_n"]) == (prompt, 1, 1)
    # (tokens_cached: llama.cpp's n_past, the prompt and the healed token fed back; the one new token never fed)
    assert native["tokens_cached"] == prompt and native["tokens"] == []
    ids = httpx.post(server.url + "/completion", timeout=300, json={
        "prompt": "def add(a, b):", "n_predict": 3, "temperature": 0, "return_tokens": True}).json()
    assert len(ids["tokens"]) == ids["tokens_predicted"] == 3       # its ids, as asked (the one made again apart)
    assert httpx.post(server.url + "/detokenize", json={"tokens": ids["tokens"]}).json()["content"] == ids["content"]
    ollama = httpx.post(server.url + "/api/generate", timeout=300, json={
        "prompt": "def add(a, b):", "stream": False, "options": {"num_predict": 1, "temperature": 0}}).json()
    assert (ollama["prompt_eval_count"], ollama["eval_count"]) == (prompt, 1)


REPEATING = "x = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1"      # the model's greedy answer: more of it


def test_penalties_change_a_greedy_answer_that_repeats_on_every_route(server):
    """llama.cpp's /completion and Ollama's /api/generate: repeat_penalty over the last repeat_last_n tokens, the
    prompt's included (0: none); OpenAI's completions: presence and frequency penalties over the answer's tokens.
    Each changes the answer the model otherwise fills with ` 1`, streamed as whole (the server speculates: the
    verification is penalized too)."""
    completion = {"prompt": REPEATING, "n_predict": 12, "temperature": 0}
    plain = post(server, "/completion", completion).json()["content"]
    assert plain.count(" 1") >= 3, plain
    penalized = post(server, "/completion", {**completion, "repeat_penalty": 1.3}).json()
    assert penalized["content"].count(" 1") < 3, penalized["content"]
    assert penalized["generation_settings"]["repeat_penalty"] == 1.3
    assert streamed_content(server, "/completion", {**completion, "repeat_penalty": 1.3}) == penalized["content"]
    assert post(server, "/completion", {**completion, "repeat_penalty": 1.3, "repeat_last_n": 0}).json()[
        "content"] == plain

    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    asked = dict(model="any", prompt=REPEATING, max_tokens=12, temperature=0)
    assert client.completions.create(**asked).choices[0].text == plain
    text = client.completions.create(**asked, frequency_penalty=2, presence_penalty=2).choices[0].text
    assert text.count(" 1") < plain.count(" 1"), text
    chunks = client.completions.create(**asked, frequency_penalty=2, presence_penalty=2, stream=True)
    assert "".join(c.choices[0].text for c in chunks) == text

    generate = {"model": "any", "prompt": REPEATING, "raw": True, "stream": False,
                "options": {"num_predict": 12, "temperature": 0}}
    assert httpx.post(server.url + "/api/generate", json=generate, timeout=300).json()["response"] == plain
    generate["options"]["repeat_penalty"] = 1.3
    assert httpx.post(server.url + "/api/generate", json=generate, timeout=300).json()["response"] == \
        penalized["content"]


def test_openai_routes_take_vllms_repetition_penalty_and_llama_cpps_repeat_penalty(server):
    """The openai client sends other servers' fields through extra_body: vLLM's repetition_penalty (over prompt and
    answer) and llama.cpp's repeat_penalty (its OpenAI routes read every /completion field) were ignored, and the
    answer repeated as if no penalty had been asked for."""
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    asked = dict(model="any", prompt=REPEATING, max_tokens=12, temperature=0)
    native = post(server, "/completion", {"prompt": REPEATING, "n_predict": 12, "temperature": 0,
                                          "repeat_penalty": 1.3}).json()["content"]
    assert native.count(" 1") < 3, native
    for extra in ({"repetition_penalty": 1.3}, {"repeat_penalty": 1.3, "repeat_last_n": 64}):
        assert client.completions.create(**asked, extra_body=extra).choices[0].text == native, extra
    chat = client.chat.completions.create(model="any", messages=[{"role": "user", "content": REPEATING}],
                                          max_tokens=1, extra_body={"repetition_penalty": 1.3, "top_k": 1})
    assert chat.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError, match="one penalty"):
        client.completions.create(**asked, extra_body={"repetition_penalty": 1.3, "repeat_penalty": 1.3})


def test_stream_chunks_carry_their_token_ids_and_count_every_token(server):
    """llama.cpp sends each token's id in its chunk (`tokens`, return_tokens or not) and n_decoded as
    `tokens_predicted`. Ours sent `"tokens": []` and counted text events: the tokens a stop string held back (a
    partial match, then the match, which no text follows) went uncounted, the last chunk saying 1 for 15 tokens."""
    body = {"prompt": REPEATING, "n_predict": 24, "temperature": 0, "stop": [" 1, 1, 1, 1, 1"]}
    whole = post(server, "/completion", {**body, "return_tokens": True}).json()
    assert whole["stop_type"] == "word" and len(whole["tokens"]) == whole["tokens_predicted"], whole
    with httpx.stream("POST", server.url + "/completion", json={**body, "stream": True, "return_tokens": True},
                      timeout=300) as response:
        *chunks, last = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line]
    assert [i for chunk in chunks for i in chunk["tokens"]] == whole["tokens"], chunks
    counts = [chunk["tokens_predicted"] for chunk in chunks]
    assert counts == list(itertools.accumulate(len(chunk["tokens"]) for chunk in chunks)), chunks
    assert counts[-1] == last["tokens_predicted"] == whole["tokens_predicted"] and last["tokens"] == []
    assert "".join(chunk["content"] for chunk in chunks) == whole["content"]


def test_a_request_without_penalties_samples_as_before():
    """No route turns a penalty on by default (Ollama's own default repeat_penalty is 1.1): a request that names
    none decodes exactly as before penalties existed (models/penalties.py builds nothing for 1 / 0 / 0)."""
    from types import SimpleNamespace

    from codecomplete.server import llama_cpp, ollama, openai_api
    from codecomplete.session import Sampling

    fake = SimpleNamespace(sampling=lambda max_tokens, **options: Sampling(max_tokens=4, **options))
    for sampling in (llama_cpp._sampling(fake, llama_cpp.CompletionRequest(prompt="x")),
                     llama_cpp._sampling(fake, llama_cpp.InfillRequest(input_prefix="x", input_suffix="")),
                     ollama._sampling(fake, ollama.Options()),
                     openai_api._sampling(fake, openai_api.CompletionRequest(prompt="x")),
                     openai_api._sampling(fake, openai_api.ChatRequest(messages=[{"role": "user", "content": "x"}]))):
        assert (sampling.repeat_penalty, sampling.presence_penalty, sampling.frequency_penalty) == (1.0, 0.0, 0.0)


def test_each_route_cuts_ties_and_boundaries_as_its_server_does():
    """top_k: exactly k where llama.cpp (partial sort) and Ollama (heap) keep k, the ties at the k-th where vLLM keeps
    them (the OpenAI routes without llama.cpp's `samplers`); top_p: Ollama keeps tokens until the mass exceeds top_p,
    llama.cpp and vLLM until it reaches it; llama.cpp's min_keep (its routes, and its extra on the OpenAI ones)."""
    from types import SimpleNamespace

    from codecomplete.server import llama_cpp, ollama, openai_api
    from codecomplete.session import Sampling

    fake = SimpleNamespace(sampling=lambda max_tokens, **options: Sampling(max_tokens=4, **options))

    def rules(sampling):
        return sampling.top_k_ties, sampling.top_p_strict, sampling.min_keep

    chat = [{"role": "user", "content": "x"}]
    assert rules(llama_cpp._sampling(fake, llama_cpp.CompletionRequest(prompt="x", min_keep=3))) == (False, False, 3)
    assert rules(llama_cpp._sampling(fake, llama_cpp.InfillRequest(**llama_vim_body("a", "b", "c")))) == \
        (False, False, 0)
    assert rules(openai_api._sampling(fake, openai_api.CompletionRequest(prompt="x"))) == (True, False, 0)
    assert rules(openai_api._sampling(fake, openai_api.ChatRequest(messages=chat, min_keep=2))) == (True, False, 2)
    assert rules(openai_api._sampling(fake, openai_api.CompletionRequest(prompt="x", samplers="kp"))) == \
        (False, False, 0)
    assert rules(ollama._sampling(fake, ollama.Options())) == (False, True, 0)
    assert Sampling(max_tokens=1).top_k_ties and not Sampling(max_tokens=1).top_p_strict     # the command line: vLLM's


def test_out_of_range_sampling_values_are_taken_where_llama_cpp_and_ollama_take_them():
    """llama.cpp reads any temperature (<= 0: greedy; kept as given, where a dynamic temperature's range starts),
    top_p (>= 1: off; <= 0: the likeliest) and min_p; Ollama's sampler clamps the same three (sample/samplers.go):
    both answer where this server gave a 400. The OpenAI routes
    keep vLLM's bounds: a top_k below -1 is a 400, and so is a top_p of 0 (vLLM's SamplingParams: "top_p must be in
    (0, 1]", checked before a temperature of 0 resets it), which this route took as greedy."""
    from types import SimpleNamespace

    import pydantic

    from codecomplete.server import llama_cpp, ollama, openai_api
    from codecomplete.session import Sampling

    fake = SimpleNamespace(sampling=lambda max_tokens, **options: Sampling(max_tokens=4, **options))

    def values(sampling):
        return sampling.temperature, sampling.top_p, sampling.min_p

    assert values(llama_cpp._sampling(fake, llama_cpp.CompletionRequest(
        prompt="x", temperature=-1, top_p=1.5, min_p=2))) == (-1.0, 1.0, 1.0)
    assert values(llama_cpp._sampling(fake, llama_cpp.InfillRequest(
        input_prefix="x", input_suffix="", temperature=0.5, top_p=-0.5, min_p=-1))) == (0.5, 0.0, 0.0)
    assert values(ollama._sampling(fake, ollama.Options(temperature=-1, top_p=1.5, min_p=-0.5))) == (0.0, 1.0, 0.0)
    assert values(ollama._sampling(fake, ollama.Options(top_p=-1, min_p=3))) == (0.8, 0.0, 1.0)
    assert openai_api._sampling(fake, openai_api.CompletionRequest(prompt="x", top_k=-1)).top_k == 0
    with pytest.raises(pydantic.ValidationError, match="top_k"):
        openai_api.CompletionRequest(prompt="x", top_k=-2)
    builders = (lambda **body: openai_api.CompletionRequest(prompt="x", **body),
                lambda **body: openai_api.ChatRequest(messages=[{"role": "user", "content": "x"}], **body))
    for build in builders:
        for top_p in (0, -0.5, 1.5):
            with pytest.raises(pydantic.ValidationError, match="top_p"):
                build(top_p=top_p, temperature=0)
        assert openai_api._sampling(fake, build(top_p=1e-9)).top_p == 1e-9


def test_a_sampler_left_out_of_samplers_does_not_run(server, files):
    """llama.cpp builds its chain from `samplers` alone (common_sampler_init): llama.vim's body lists top_k, top_p
    and infill, so its temperature (none sent: 0.8) does not apply, and a top_p, a top_k or a temperature of 0 left
    out leaves the draw free (here only the neutral penalties run: infill alone sharpens the draw too much to tell).
    Each of them listed (by name, or by llama.cpp's letter) makes the answer greedy."""
    prefix, prompt, suffix = around(files["app.py"], 5, 5)

    def answer(samplers, seed: int) -> str:
        body = llama_vim_body(prefix, prompt, suffix, n_predict=6, n_indent=0, t_max_predict_ms=0, top_k=1,
                              top_p=0.0, temperature=0.0, samplers=samplers, response_fields=["content"], seed=seed)
        return post(server, "/infill", body).json()["content"]

    plain = llama_vim_body(prefix, prompt, suffix, n_predict=6, n_indent=0, t_max_predict_ms=0, temperature=0.0)
    del plain["samplers"]           # llama.cpp's default chain: temperature 0 is greedy
    greedy = post(server, "/infill", plain).json()["content"]
    free = [seed for seed in (1, 2, 3) if answer(["penalties"], seed) != greedy]
    assert free, "top_k 1, top_p 0 and temperature 0 ran though samplers left them out"
    for samplers in (["top_k", "infill"], ["top_p"], ["temperature", "no_such_sampler"], "t"):
        assert answer(samplers, free[0]) == greedy, samplers


def test_each_route_gives_the_sampler_mirostat_and_the_dynamic_temperature():
    """llama.cpp's routes (and its extras on the OpenAI ones) and Ollama's options pass mirostat, mirostat_tau and
    mirostat_eta on; with mirostat on, llama.cpp's chain is the temperature then mirostat, so the request's own
    temperature runs whatever `samplers` lists and an unimplemented sampler's field is not refused (it would not
    run). dynatemp_range and dynatemp_exponent go where the chain runs the temperature."""
    from types import SimpleNamespace

    import pydantic

    from codecomplete.server import llama_cpp, ollama, openai_api
    from codecomplete.session import Sampling

    fake = SimpleNamespace(sampling=lambda max_tokens, **options: Sampling(max_tokens=4, **options))

    def mirostat(sampling):
        return sampling.mirostat, sampling.mirostat_tau, sampling.mirostat_eta, sampling.temperature

    assert mirostat(llama_cpp._sampling(fake, llama_cpp.CompletionRequest(prompt="x"))) == (0, 5.0, 0.1, 0.8)
    assert mirostat(llama_cpp._sampling(fake, llama_cpp.CompletionRequest(
        prompt="x", mirostat=2, mirostat_tau=3.0, mirostat_eta=0.2, temperature=0.7, samplers=["top_k"],
        typical_p=0.5))) == (2, 3.0, 0.2, 0.7)
    assert mirostat(llama_cpp._sampling(fake, llama_cpp.InfillRequest(
        **llama_vim_body("a", "b", "c", mirostat=1)))) == (1, 5.0, 0.1, 0.8)
    chat = [{"role": "user", "content": "x"}]
    assert mirostat(openai_api._sampling(fake, openai_api.ChatRequest(messages=chat, mirostat=1, mirostat_tau=2.5,
                                                                      temperature=0.5))) == (1, 2.5, 0.1, 0.5)
    assert mirostat(ollama._sampling(fake, ollama.Options(mirostat=2, mirostat_eta=0.3, typical_p=0.5))) == \
        (2, 5.0, 0.3, 0.8)
    for bad in (3, -1):
        for model in (llama_cpp.CompletionRequest, openai_api.CompletionRequest):
            with pytest.raises(pydantic.ValidationError, match="mirostat"):
                model(prompt="x", mirostat=bad)
        with pytest.raises(pydantic.ValidationError, match="mirostat"):
            ollama.Options(mirostat=bad)

    def dynatemp(sampling):
        return sampling.dynatemp_range, sampling.dynatemp_exponent

    assert dynatemp(llama_cpp._sampling(fake, llama_cpp.CompletionRequest(prompt="x"))) == (0.0, 1.0)
    assert dynatemp(llama_cpp._sampling(fake, llama_cpp.CompletionRequest(
        prompt="x", dynatemp_range=0.4, dynatemp_exponent=2.0))) == (0.4, 2.0)
    assert dynatemp(llama_cpp._sampling(fake, llama_cpp.CompletionRequest(
        prompt="x", dynatemp_range=0.4, samplers=["top_k"]))) == (0.0, 1.0)          # no temperature in the chain
    assert dynatemp(openai_api._sampling(fake, openai_api.CompletionRequest(prompt="x", dynatemp_range=0.3))) == \
        (0.3, 1.0)
    below = llama_cpp._sampling(fake, llama_cpp.CompletionRequest(prompt="x", temperature=-0.2, dynatemp_range=0.5))
    assert (below.temperature, below.dynatemp_range) == (-0.2, 0.5)      # llama.cpp's range: 0..0.3, not 0..0.5


def test_a_dynamic_temperature_draws_at_temperature_0_on_each_route_that_takes_it(server):
    """llama.cpp's temp-ext (src/llama-sampling.cpp) takes its temperature in [max(0, t - range), t + range] by the
    candidates' entropy even at t = 0, and its chain runs it at any temperature (common/sampling.cpp): with
    temperature 0 and dynatemp_range 2, /completion, /infill and the OpenAI routes' llama.cpp extras draw (some
    seed's answer is not the greedy one; a seed gives its answer again), where temperature 0 alone is greedy
    whatever the seed."""
    prompt = "def fibonacci(n):\n"          # (6 tokens are enough for a draw to leave the greedy answer)
    completion = {"prompt": prompt, "n_predict": 6, "temperature": 0.0}
    infill = llama_vim_body("", prompt, "\n", n_predict=6, n_indent=0, t_max_predict_ms=0, temperature=0.0)
    del infill["samplers"]          # llama.cpp's default chain: the temperature runs
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)

    def answers(route: str, seeds, **fields) -> list[str]:
        if route == "/v1/completions":
            return [client.completions.create(model="any", prompt=prompt, max_tokens=6, temperature=0.0, seed=seed,
                                              extra_body=fields).choices[0].text for seed in seeds]
        body = completion if route == "/completion" else infill
        return [post(server, route, {**body, "seed": seed, **fields}).json()["content"] for seed in seeds]

    for route in ("/completion", "/infill", "/v1/completions"):
        greedy = answers(route, [0, 1, 2])
        assert len(set(greedy)) == 1, (route, greedy)
        drawn = answers(route, [1, 2, 3], dynatemp_range=2.0)
        free = [seed for seed, text in zip([1, 2, 3], drawn) if text != greedy[0]]
        assert free, f"{route}: temperature 0 with dynatemp_range 2 gave the greedy answer for every seed"
        assert answers(route, free[:1], dynatemp_range=2.0) == [drawn[free[0] - 1]], route


def test_mirostat_2_with_a_target_near_0_answers_greedily_at_any_temperature(server):
    """Mirostat's first bound is 2 tau bits of surprise: with tau 1e-4 no token is within it, so llama.cpp's v2 keeps
    the likeliest alone, every step: the answer at temperature 1.5 is the greedy one whatever the seed, where the
    same request without mirostat is not. On llama.cpp's route and on Ollama's; a version llama.cpp lacks is a 400."""
    prompt = "def fibonacci(n):\n"

    def completion(seed: int, **fields) -> str:
        body = {"prompt": prompt, "n_predict": 12, "temperature": 1.5, "seed": seed, **fields}
        return post(server, "/completion", body).json()["content"]

    greedy = completion(0, temperature=0.0)
    free = [seed for seed in (1, 2, 3) if completion(seed) != greedy]
    assert free, "temperature 1.5 gave the greedy answer for every seed"
    for seed in free:
        assert completion(seed, mirostat=2, mirostat_tau=1e-4) == greedy, seed
    ollama = {"model": "m", "prompt": prompt, "raw": True, "stream": False}
    assert httpx.post(server.url + "/api/generate", timeout=300, json={**ollama, "options": {
        "num_predict": 12, "temperature": 1.5, "seed": free[0], "mirostat": 2, "mirostat_tau": 1e-4}}).json()[
        "response"] == greedy
    refused = post(server, "/completion", {"prompt": prompt, "mirostat": 3})
    assert refused.status_code == 400 and "mirostat" in refused.json()["error"]["message"], refused.text
    refused = httpx.post(server.url + "/api/generate", timeout=300, json={**ollama, "options": {"mirostat": 3}})
    assert refused.status_code == 400 and "mirostat" in refused.json()["error"], refused.text


def test_each_route_runs_min_p_and_the_chain_where_its_server_does():
    """min_p: llama.cpp's 0.05 where its chain lists min_p (its default chain), not for llama.vim's list (no min_p
    there); vLLM's 0 on the OpenAI routes (llama.cpp's 0.05 when the request gives its `samplers`), after the
    temperature; Ollama's 0, after top_p. Each chain in its server's order, penalties where it puts them."""
    from types import SimpleNamespace

    from codecomplete.server import llama_cpp, ollama, openai_api
    from codecomplete.session import Sampling

    fake = SimpleNamespace(sampling=lambda max_tokens, **options: Sampling(max_tokens=4, **options))
    vim = llama_cpp._sampling(fake, llama_cpp.InfillRequest(**llama_vim_body("a", "b", "c")))
    assert vim.min_p == 0.0 and vim.sampler_order[:3] == ("top_k", "top_p", "infill") and vim.temperature == 1.0
    default = llama_cpp._sampling(fake, llama_cpp.CompletionRequest(prompt="x"))
    assert default.min_p == 0.05
    assert default.sampler_order == ("penalties", "top_k", "top_p", "min_p", "temperature")
    listed = llama_cpp._sampling(fake, llama_cpp.CompletionRequest(prompt="x", samplers=["min_p", "penalties"],
                                                                   min_p=0.2, repeat_penalty=1.3))
    assert (listed.min_p, listed.repeat_penalty, listed.sampler_order[:2]) == (0.2, 1.3, ("min_p", "penalties"))
    assert openai_api._sampling(fake, openai_api.CompletionRequest(prompt="x")).min_p == 0.0
    assert openai_api._sampling(fake, openai_api.CompletionRequest(prompt="x", min_p=0.1)).min_p == 0.1
    assert openai_api._sampling(fake, openai_api.CompletionRequest(prompt="x", samplers="m")).min_p == 0.05
    chat = openai_api._sampling(fake, openai_api.ChatRequest(messages=[{"role": "user", "content": "x"}], min_p=0.3))
    assert chat.min_p == 0.3 and chat.sampler_order is None           # models' default: vLLM's order
    local = ollama._sampling(fake, ollama.Options(min_p=0.25))
    assert local.min_p == 0.25 and local.sampler_order == ("penalties", "top_k", "temperature", "top_p", "min_p")
    # samplers this server lacks: neutral values pass, and a value is fine where the chain does not run the sampler
    llama_cpp._sampling(fake, llama_cpp.CompletionRequest(prompt="x", typical_p=1.0, dry_multiplier=0.0))
    llama_cpp._sampling(fake, llama_cpp.CompletionRequest(prompt="x", typical_p=0.5, samplers=["top_k"]))


def test_llama_cpp_seeds_are_32_bit_as_llama_cpp_reads_them():
    """llama.cpp's seed is a uint32_t (common_params_sampling.seed, read by json_value): a JSON integer wraps to its
    low 32 bits, and 4294967295 (LLAMA_DEFAULT_SEED, what -1 wraps to) draws a random seed (llama-sampling.cpp's
    get_rng_seed). Here every negative seed was random, 4294967295 a fixed one, and 2**32 + 5 another seed than 5;
    generation_settings echoes the seed llama.cpp's does (-1 reads 4294967295)."""
    from types import SimpleNamespace

    from codecomplete.server import llama_cpp
    from codecomplete.session import Sampling

    fake = SimpleNamespace(sampling=lambda max_tokens, **options: Sampling(max_tokens=4, **options),
                           engine=SimpleNamespace(context_length=64))

    def seed(value):
        return llama_cpp._sampling(fake, llama_cpp.CompletionRequest(prompt="x", seed=value)).seed

    assert [seed(v) for v in (-1, 2 ** 32 - 1, 2 ** 33 - 1, 2 ** 64 - 1)] == [None] * 4         # random
    assert [seed(v) for v in (0, 7, -2, 2 ** 32 + 5, -(2 ** 63))] == [0, 7, 2 ** 32 - 2, 5, 0]
    echoed = llama_cpp._settings(fake, llama_cpp.CompletionRequest(prompt="x", seed=-1))["seed"]
    assert echoed == 2 ** 32 - 1 and llama_cpp._settings(fake, None)["seed"] == 2 ** 32 - 1


def test_llama_cpp_n_probs_go_up_to_the_vocabulary_as_llama_cpp_takes_them():
    """llama.cpp lists min(n_probs, vocabulary) alternatives (populate_token_probs), and none for n_probs <= 0 (its
    `n_probs > 0` gates): here past 100 was a 400, and a negative one too. OpenAI's `logprobs` number likewise."""
    from types import SimpleNamespace

    from codecomplete.server import llama_cpp

    fake = SimpleNamespace(engine=SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(vocab_size=300))))

    def n_probs(**body):
        return llama_cpp._n_probs(fake, llama_cpp.CompletionRequest(prompt="x", **body))

    assert [n_probs(n_probs=n) for n in (0, 5, 101, 300, 10 ** 6, -1)] == [0, 5, 101, 300, 300, 0]
    assert [n_probs(logprobs=n) for n in (101, 10 ** 6, -3)] == [101, 300, 0]
