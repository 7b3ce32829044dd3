"""`codecomplete serve` against the adversarial sweep's eighteenth round (bench/results/NOTES.md: the editors' own code,
llama.vim in a real vim, llama.vscode's request code, the openai and ollama npm clients), on a real server and its real
socket."""
import httpx
import pytest


def _sized_system_message(url: str, low: int, high: int) -> tuple[str, int]:
    """A system message (a pasted file, an editor's context) of between `low` and `high` tokens, counted by the
    server's own /tokenize."""
    text = "def area_of_square(side: float) -> float:\n    return side * side\n\n"
    while True:
        count = len(httpx.post(url + "/tokenize", json={"content": text}, timeout=60).json()["tokens"])
        if count >= low:
            assert count <= high, (count, low, high)
            return text, count
        text += "x = 1\n" * max(1, (low - count) // 8)     # (a few tokens a line)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/api/chat", "/apply-template"])
def test_a_clients_conversation_past_the_prompt_budget_but_within_its_context_is_answered(table_server, route):
    """The server tells clients its context (`n_ctx` in /props and in /v1/models' `meta`: the KV cache, prompt and
    answer together, as llama.cpp's n_ctx is), and /completion takes a prompt up to it less the answer's tokens. Its
    chat refused at the prompt budget instead (1,024 tokens on a CPU, --context-tokens, the size of the repository
    context it adds): a system message of 1,084 tokens with max_tokens 64 on a 1,536-token context was a 400 ("the
    system message (1084 tokens) leaves no room for the question in a prompt budget of 1024 tokens"), where
    llama.cpp with that context answers. llama.vscode 0.0.63 sizes its chat and agent prompts by that n_ctx (its
    `extractRuntimeContextSize`: maxInputTokens = n_ctx less the answer's share), and llama.vim's instruct sends a
    system message of the 256 lines above the selection. A conversation the budget cannot hold now gets the
    context's room (the answer's tokens kept), as /completion's prompt does; past that it is still a 400."""
    url = table_server.url
    info = httpx.get(url + "/codecomplete/v1/info", timeout=60).json()
    budget = info["prompt_budget"]
    n_ctx = httpx.get(url + "/props", timeout=60).json()["default_generation_settings"]["n_ctx"]
    max_tokens = 8
    room = n_ctx - max_tokens
    assert room - budget >= 48, (budget, n_ctx)     # (the test needs a gap between the two: 512 and 568 here)
    system, count = _sized_system_message(url, budget + 8, room - 30)   # (the template and question: ~20 more)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "What does it do?"}]
    if route == "/api/chat":
        body = {"model": "m", "messages": messages, "stream": False, "options": {"num_predict": max_tokens}}
    else:
        body = {"messages": messages, "max_tokens": max_tokens}
    answer = httpx.post(url + route, json=body, timeout=300)
    assert answer.status_code == 200, (count, budget, n_ctx, answer.text)
    reply = answer.json()
    if route == "/apply-template":
        assert system in reply["prompt"]
        prompt_tokens = len(httpx.post(url + "/tokenize", json={"content": reply["prompt"]}, timeout=60).json()["tokens"])
    elif route == "/api/chat":
        prompt_tokens = reply["prompt_eval_count"]
    else:
        prompt_tokens = reply["usage"]["prompt_tokens"]
    assert count < prompt_tokens <= room, (count, prompt_tokens, room)
    # Past the context's room it is still refused, with the JSON error each API's clients read.
    too_long, _ = _sized_system_message(url, room + 10, room + 400)
    body["messages"] = [{"role": "system", "content": too_long}, messages[1]]
    refused = httpx.post(url + route, json=body, timeout=300)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert "leaves no room for the question" in (error if isinstance(error, str) else error["message"])


def test_an_ordinary_chat_keeps_the_prompt_budget(table_server):
    """The context's room is for a client's own conversation only: a short question's prompt (the repository's
    excerpts beside it) stays within the prompt budget, so that editors' prompts keep one size."""
    url = table_server.url
    budget = httpx.get(url + "/codecomplete/v1/info", timeout=60).json()["prompt_budget"]
    answer = httpx.post(url + "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "What does area_of_circle return?"}], "max_tokens": 4}, timeout=300)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["prompt_tokens"] <= budget


def test_llama_vims_ring_warm_up_is_reused_by_the_keystroke_after_it(table_server):
    """llama.vim (a1c8e6e, driven in vim) sends its ring of chunks alone first (`input_prefix` and `input_suffix`
    empty, `n_predict` 0) so that the keystroke after it reads only its own text. At the CPU's 1,024-token budget
    the chunks' room had been what the file left: the empty buffer's was larger, its oldest chunk was cut at another
    line than under the keystroke's long file, and the keystroke reused 8 of its 944 tokens (prompts.completion's
    `_extra_room` now gives them one room whatever the file). What follows the chunks (the repository's context for
    each cursor) may differ; the chunks, and the opening before them, are reused."""
    url = table_server.url
    ring = [{"filename": f"ring/chunk_{i}.py", "text": "".join(f"value_{i}_{j} = {i} * {j}\n" for j in range(16))}
            for i in range(16)]
    body = {"input_extra": ring, "temperature": 0.0, "samplers": [], "cache_prompt": True, "t_max_prompt_ms": 500,
            "t_max_predict_ms": 250}
    warm = httpx.post(url + "/infill", json={**body, "input_prefix": "", "input_suffix": "", "n_predict": 0,
                                             "response_fields": [""]}, timeout=120)
    assert warm.status_code == 200, warm.text
    prefix = "".join(f"def step_{i}(state):\n    return state * {i} + {i % 7}\n\n\n" for i in range(60))
    real = httpx.post(url + "/infill", json={**body, "input_prefix": prefix, "prompt": "def step_60(state):\n    ",
                                              "input_suffix": "\n", "n_predict": 4,
                                              "response_fields": ["prompt", "timings/cache_n"]}, timeout=120)
    assert real.status_code == 200, real.text
    answer = real.json()
    last = "value_15_15 = 15 * 15"              # the newest chunk's last line: the chunks end there
    through_chunks = answer["prompt"][:answer["prompt"].index(last) + len(last)]
    assert "ring/chunk_14.py" in through_chunks and "def step_" not in through_chunks   # (some chunks: then the file)
    chunk_tokens = len(httpx.post(url + "/tokenize", json={"content": through_chunks}, timeout=60).json()["tokens"])
    reused = answer["timings/cache_n"]
    assert chunk_tokens > 150 and reused >= chunk_tokens - 2, (reused, chunk_tokens)  # (a boundary token may merge)
