"""`codecomplete serve`'s Ollama routes driven only through Ollama's official Python client (`ollama.Client`,
`ollama.AsyncClient`), as the tools built on it call them: every answer must parse into the client's pydantic models
and carry sensible values, every refusal must reach the caller as `ollama.ResponseError` with Ollama's status, and
the server must serve on after it. The server runs as a subprocess on a loopback port (conftest's `server`; the
tests of what any answer carries, conftest's `table_server`: table_client)."""
import asyncio
import datetime

import ollama
import pytest

MODEL = "codecomplete"          # the name Continue's config gives it: the one model answers to any name
GREEDY = {"temperature": 0, "num_predict": 8}
RAW_REFUSED = "raw mode does not support template, system, or context"      # Ollama's server/routes.go


@pytest.fixture(scope="module")
def client(server):
    with ollama.Client(host=server.url, timeout=300) as client:
        yield client


@pytest.fixture(scope="module")
def table_client(table_server):
    """The client of conftest's table server (`server`'s options, a model whose greedy answer is a known cycle of code
    lines, hundreds of tokens a second): for the tests of what any answer carries, whose answers end where the
    embedded model's do (at num_predict: done_reason "length", or no check of it). The tests whose answers the
    embedded model ends itself ("stop"), or whose draws, log-probabilities or memory are its own, keep `client`."""
    with ollama.Client(host=table_server.url, timeout=300) as client:
        yield client


def when(created_at: str) -> datetime.datetime:
    """The client keeps created_at as text: it must be an ISO 8601 time with its zone, as Go writes one."""
    moment = datetime.datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    assert moment.tzinfo is not None, created_at
    return moment


def check_final(answer, limit: int) -> None:
    """The counters of a whole answer (or of a stream's last part), in Ollama's units: durations in nanoseconds."""
    assert answer.done is True and answer.done_reason in ("stop", "length"), answer
    assert 1 <= answer.eval_count <= limit and answer.prompt_eval_count >= 1, answer
    assert answer.done_reason == "stop" or answer.eval_count == limit, answer
    for name in ("total_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(answer[name], int) and answer[name] > 0, (name, answer)
    assert answer.load_duration >= 0
    assert answer.total_duration >= answer.prompt_eval_duration + answer.eval_duration, answer
    assert answer.total_duration < 300 * 10 ** 9            # nanoseconds, not microseconds or seconds as a float
    assert abs(when(answer.created_at) - datetime.datetime.now(datetime.timezone.utc)) < datetime.timedelta(hours=1)
    assert answer.model


def test_generate_whole_and_streamed_parse_into_the_clients_models(table_client):
    client = table_client
    whole = client.generate(MODEL, "def add(a, b):", options=GREEDY)
    assert isinstance(whole, ollama.GenerateResponse) and whole.response
    check_final(whole, GREEDY["num_predict"])
    assert whole.context and all(isinstance(token, int) for token in whole.context)
    parts = list(client.generate(MODEL, "def add(a, b):", options=GREEDY, stream=True))
    assert all(isinstance(part, ollama.GenerateResponse) for part in parts)
    assert [part.done for part in parts] == [False] * (len(parts) - 1) + [True]
    assert all(part.done_reason is None and part.eval_count is None for part in parts[:-1])
    assert "".join(part.response for part in parts) == whole.response        # greedy: the same text, streamed
    check_final(parts[-1], GREEDY["num_predict"])
    assert parts[-1].response == "" and parts[-1].eval_count == whole.eval_count
    assert parts[-1].context == whole.context


def test_raw_and_fill_in_the_middle(client):
    """raw: the prompt as it is, with no context in the answer (Ollama leaves it out); a suffix: the model fills in
    the middle, with the repository's context before it (the embedded model has no FIM tokens: left to right)."""
    raw = client.generate(MODEL, "def add(a, b):", raw=True, options=GREEDY)
    check_final(raw, GREEDY["num_predict"])
    assert raw.context is None and raw.response
    plain = client.generate(MODEL, "def add(a, b):\n    ", options=GREEDY)
    middle = client.generate(MODEL, "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n", options=GREEDY)
    check_final(middle, GREEDY["num_predict"])
    assert middle.response and middle.prompt_eval_count > plain.prompt_eval_count


def test_generate_options_reach_the_sampler(client):
    """A seed makes a sampled answer repeat; the client's typed Options sends the same request as a dict; a stop
    string ends the text before it, with done_reason "stop"."""
    sampled = {"temperature": 0.7, "seed": 3, "top_k": 5, "top_p": 0.8, "num_predict": 12}
    first = client.generate(MODEL, "def area(r):", options=sampled)
    assert client.generate(MODEL, "def area(r):", options=ollama.Options(**sampled)).response == first.response
    check_final(first, sampled["num_predict"])
    greedy = client.generate(MODEL, "def add(a, b):", options={**GREEDY, "num_predict": 12}).response
    stop = greedy.strip()[:3]                                   # the start of its first line
    cut = client.generate(MODEL, "def add(a, b):", options={**GREEDY, "num_predict": 12, "stop": [stop]})
    assert cut.response == greedy[:greedy.index(stop)] and cut.done_reason == "stop", (greedy, stop, cut)
    assert cut.eval_count < 12


def test_context_carries_a_conversation_on(client):
    first = client.generate(MODEL, "The capital of France is", options=GREEDY)
    alone = client.generate(MODEL, " The capital of Italy is", options=GREEDY)
    went_on = client.generate(MODEL, " The capital of Italy is", context=first.context, options=GREEDY)
    check_final(went_on, GREEDY["num_predict"])
    assert went_on.prompt_eval_count > alone.prompt_eval_count      # the earlier prompt and answer were read
    assert len(went_on.context) > len(first.context)


def test_keep_alive_and_requests_with_nothing_to_generate(table_client):
    """keep_alive as a duration or seconds (-1: forever) does not change the answer; a prompt-less generate loads the
    model, and with keep_alive 0 "unloads" it, in Ollama's words (it stays loaded here)."""
    client = table_client
    answer = client.generate(MODEL, "def f():", keep_alive="5m", options=GREEDY)
    assert client.generate(MODEL, "def f():", keep_alive=-1, options=GREEDY).response == answer.response
    loaded = client.generate(MODEL)
    assert loaded.done is True and loaded.done_reason == "load" and loaded.response == ""
    assert client.generate(MODEL, keep_alive=0).done_reason == "unload"
    assert client.chat(MODEL, []).done_reason == "load"


def test_chat_multi_turn_with_a_system_message_whole_and_streamed(client):
    messages = [{"role": "system", "content": "You answer in one short sentence."},
                {"role": "user", "content": "What is a list in Python?"},
                {"role": "assistant", "content": "An ordered, changeable sequence."},
                {"role": "user", "content": "And a tuple?"}]
    whole = client.chat(MODEL, messages, options=GREEDY)
    assert isinstance(whole, ollama.ChatResponse) and whole.message.role == "assistant" and whole.message.content
    check_final(whole, GREEDY["num_predict"])
    longer = [{"role": "system", "content": messages[0]["content"] + " Name no sources."}, *messages[1:]]
    assert client.chat(MODEL, longer, options=GREEDY).prompt_eval_count > whole.prompt_eval_count   # it is read
    parts = list(client.chat(MODEL, messages, options=GREEDY, stream=True))
    assert [part.done for part in parts] == [False] * (len(parts) - 1) + [True]
    assert all(part.message.role == "assistant" for part in parts)
    assert "".join(part.message.content for part in parts) == whole.message.content
    check_final(parts[-1], GREEDY["num_predict"])
    assert parts[-1].eval_count == whole.eval_count


def test_chat_goes_on_with_an_answer_begun(table_client):
    """Ollama continues an assistant's message that ends the conversation (Open WebUI's "continue"): a 400 here
    before. The answer holds only what follows it, and the prompt read ends with it."""
    client = table_client
    question = [{"role": "user", "content": "What is a list in Python?"}]
    begun = [*question, {"role": "assistant", "content": "A list is an ordered,"}]
    asked, going_on = client.chat(MODEL, question, options=GREEDY), client.chat(MODEL, begun, options=GREEDY)
    assert going_on.message.role == "assistant" and going_on.message.content
    assert not going_on.message.content.startswith("A list is an ordered,")
    assert going_on.prompt_eval_count > asked.prompt_eval_count     # (the answer begun is read, its turn left open)


def test_chat_logprobs_parse_into_the_clients_logprob_model(client):
    question = [{"role": "user", "content": "Say hello."}]
    answer = client.chat(MODEL, question, logprobs=True, top_logprobs=3, options=GREEDY)
    assert answer.logprobs and all(isinstance(entry, ollama._types.Logprob) for entry in answer.logprobs)
    assert "".join(entry.token for entry in answer.logprobs) == answer.message.content
    for entry in answer.logprobs:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        alternatives = [top.logprob for top in entry.top_logprobs]
        assert alternatives == sorted(alternatives, reverse=True)
        assert entry.top_logprobs[0].token == entry.token               # greedy: the likeliest was chosen
    parts = list(client.chat(MODEL, question, logprobs=True, top_logprobs=3, options=GREEDY, stream=True))
    streamed = [entry for part in parts for entry in part.logprobs or []]
    assert [entry.token for entry in streamed] == [entry.token for entry in answer.logprobs]
    # (the same distribution, up to float32 rounding: the stream's prompt came partly from the KV cache)
    assert [entry.logprob for entry in streamed] == pytest.approx([entry.logprob for entry in answer.logprobs],
                                                                  abs=1e-4)


def test_async_client_streams_a_chat(table_server, table_client):
    server, client = table_server, table_client
    question = [{"role": "user", "content": "What does area_of_circle return?"}]
    whole = client.chat(MODEL, question, options=GREEDY)

    async def streamed():
        async with ollama.AsyncClient(host=server.url, timeout=300) as async_client:
            return [part async for part in await async_client.chat(MODEL, question, options=GREEDY, stream=True)]
    parts = asyncio.run(streamed())
    assert parts[-1].done is True and "".join(part.message.content for part in parts) == whole.message.content
    check_final(parts[-1], GREEDY["num_predict"])


def test_list_and_show_describe_the_one_model(client):
    """The embedded model is a GGUF file: its format says so (it was "safetensors" whatever the model came in)."""
    listed = client.list()
    assert isinstance(listed, ollama.ListResponse) and len(listed.models) == 1
    (model,) = listed.models
    assert model.model and model.details.family == "llama" and model.modified_at.tzinfo is not None
    assert model.details.format == "gguf"
    shown = client.show(MODEL)
    assert isinstance(shown, ollama.ShowResponse)
    assert {"completion", "insert"} <= set(shown.capabilities) and ".Suffix" in shown.template
    assert shown.modelinfo["llama.context_length"] > 0 and shown.details == model.details


@pytest.mark.parametrize("call, status, words", [
    # An option of the wrong type: bad input, a 400 naming it (Ollama says `option "temperature" must be of type
    # float32` with a 500: api.Options.FromMap's error falls through handleScheduleError to its default)
    (lambda c: c.generate(MODEL, "x", options={"temperature": "hot"}), 400, "temperature"),
    (lambda c: c.generate(MODEL, "x", options={"num_predict": "many"}), 400, "num_predict"),
    (lambda c: c.chat(MODEL, [{"role": "user", "content": "x"}], options={"stop": [1, 2]}), 400, "stop"),
    (lambda c: c.generate(MODEL, "x", logprobs=True, top_logprobs=21), 400, "top_logprobs must be between 0 and 20"),
    (lambda c: c.generate(MODEL, "x", format="json"), 400, "format"),
    (lambda c: c.chat(MODEL, [{"role": "user", "content": "x"}], format={"type": "object"}), 400, "format"),
    (lambda c: c.chat(MODEL, [{"role": "user", "content": "x"}], think=True), 400, "does not support thinking"),
    (lambda c: c.generate(MODEL, "x", images=[b"\x89PNG"]), 400, "images"),
    (lambda c: c.chat(MODEL, [{"role": "user", "content": "x"}],
                      tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools"),
    # a tool's result or an assistant's calls in the history: refused by name, not read as text (the calls dropped)
    (lambda c: c.chat(MODEL, [{"role": "user", "content": "x"}, {"role": "assistant", "content": "",
                                "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
                               {"role": "user", "content": "y"}]),
     400, "messages[1]: an assistant's tool_calls is not supported"),
    (lambda c: c.chat(MODEL, [{"role": "user", "content": "x"}, {"role": "tool", "content": "42"}]), 400,
     "messages[1]: a tool message"),
    (lambda c: c.generate(MODEL, "x", context=[10 ** 9]), 400, "outside the vocabulary"),
    # a keep_alive that is no duration: Ollama's 400 in Go's words (time.ParseDuration)
    (lambda c: c.generate(MODEL, "x", keep_alive="bogus"), 400, 'time: invalid duration "bogus"'),
    (lambda c: c.chat(MODEL, [{"role": "user", "content": "x"}], keep_alive="5 minutes"), 400, "invalid duration"),
    # Ollama's words: a raw prompt is the whole prompt, so what would go into or before it is refused, not dropped
    (lambda c: c.generate(MODEL, "x", raw=True, system="Be brief."), 400, RAW_REFUSED),
    (lambda c: c.generate(MODEL, "x", raw=True, template="{{ .Prompt }}"), 400, RAW_REFUSED),
    (lambda c: c.generate(MODEL, "x", raw=True, context=[1, 2]), 400, RAW_REFUSED),
    (lambda c: list(c.chat(MODEL, [{"role": "user", "content": "x"}], stream=True,
                           options={"temperature": "hot"})), 400, "temperature"),
])
def test_refusals_reach_the_caller_as_response_errors_and_the_server_serves_on(table_client, call, status, words):
    client = table_client
    with pytest.raises(ollama.ResponseError) as refused:
        call(client)
    assert refused.value.status_code == status and words in refused.value.error, refused.value
    assert client.generate(MODEL, "def f():", options={"num_predict": 1}).done is True


@pytest.mark.parametrize("keep_alive", ["5m", "1h30m", "-1s", "0", "1.5h", "300", "-1", 300, -1])
def test_keep_alive_durations_ollama_parses_are_accepted(table_client, keep_alive):
    client = table_client
    assert client.generate(MODEL, "def f():", keep_alive=keep_alive, options={"num_predict": 1}).done is True


def test_ps_lists_the_one_model_loaded_for_good(client, server):
    """`ollama ps` (the client's ps(), GET /api/ps): the loaded model, as Ollama lists one kept alive forever (the
    server never unloads it), with its memory and its context."""
    running = client.ps()
    assert isinstance(running, ollama.ProcessResponse) and len(running.models) == 1
    (model,) = running.models
    assert model.model == model.name == client.list().models[0].model and model.details.family == "llama"
    assert model.expires_at - datetime.datetime.now(datetime.timezone.utc) > datetime.timedelta(days=365 * 100)
    assert model.context_length == server.info["engine"]["context_length"]
    assert model.size > 50 * 10 ** 6 and model.size_vram == 0         # the embedded model's weights, on the CPU


def test_any_model_name_is_served_and_answered_under_that_name(table_client):
    """The one model answers to any name (Continue's config calls it "codecomplete"), and every answer carries the
    name the request gave, as Ollama's do (`model: req.Model`): a client matching answers to requests by it, or
    showing it, sees its own name; a refusal names it too."""
    client = table_client
    name = "no-such-model:7b"
    assert client.generate(name, "def f():", options=GREEDY).model == name
    assert {part.model for part in client.generate(name, "def f():", options=GREEDY, stream=True)} == {name}
    assert {part.model for part in client.chat(name, [{"role": "user", "content": "hi"}], options=GREEDY,
                                               stream=True)} == {name}
    assert client.chat(name, []).model == name and client.generate(name, keep_alive=0).model == name
    with pytest.raises(ollama.ResponseError, match=f'"{name}" does not support thinking'):
        client.generate(name, "x", think="high")


def test_head_requests_answer_where_ollamas_do(server):
    """Ollama's router answers HEAD on /, /api/version and /api/tags (a cheap "is it up, and is it Ollama" check;
    the client library has no call for it, so httpx here)."""
    import httpx

    for path in ("/", "/api/version", "/api/tags"):
        answer = httpx.head(server.url + path)
        assert answer.status_code == 200 and answer.content == b"", (path, answer.status_code)
