"""llama.vscode's chat side against `codecomplete serve`, on a real server and its real socket: `/apply-template`,
which it counts a chat's tokens with (beside `/tokenize`), and its agent's tool calls (llama.vscode's
src/llama-server.ts and src/llama-agent.ts, as bench/results/NOTES.md's round-6 leftovers read them)."""
import json
import threading
import time

import httpx

# llama.vscode's chat request (createChatRequestPayload), and a conversation of three turns
VSCODE_CHAT = [{"role": "system", "content": "You are an expert coder."},
               {"role": "user", "content": "What does the area function of shapes.py return?"}]
TURNS = [{"role": "user", "content": "Which shapes are there?"}, {"role": "assistant", "content": "A circle."},
         {"role": "user", "content": "And its area?"}]


def test_apply_template_answers_the_prompt_the_chat_route_feeds(server):
    """llama.cpp's /apply-template: `{"prompt": text}`, the chat prompt for `messages` with the generation prompt
    appended, nothing generated; was the server's 404. Tokenized by /tokenize it is as long as what the chat route
    reports as `usage.prompt_tokens` for the same messages (the repository's context included: the model reads it)."""
    for messages in (VSCODE_CHAT, TURNS):
        answer = httpx.post(server.url + "/apply-template", json={"messages": messages}, timeout=300)
        assert answer.status_code == 200, answer.text
        assert list(answer.json()) == ["prompt"]
        prompt = answer.json()["prompt"]
        assert prompt.endswith("<|im_start|>assistant\n") and messages[-1]["content"] in prompt, prompt[-200:]
        tokens = httpx.post(server.url + "/tokenize", json={"content": prompt}, timeout=300).json()["tokens"]
        chat = httpx.post(server.url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 1},
                          timeout=300).json()
        assert len(tokens) == chat["usage"]["prompt_tokens"], (len(tokens), chat["usage"])


def test_apply_template_answers_beside_a_running_generation(server):
    """llama.vscode counts a chat's tokens with /apply-template, as its user types: it waited behind a generation
    under way (the engine thread built it), 2.3 s behind a 300-token one in round 8; llama.cpp answers it at once.
    Now it is answered while the generation goes on, and it is the prompt a quiet server answers."""
    quiet = httpx.post(server.url + "/apply-template", json={"messages": VSCODE_CHAT}, timeout=300).json()["prompt"]
    body = {"prompt": "def main():", "n_predict": 160, "ignore_eos": True, "stream": True, "temperature": 0}
    read: list[tuple[float, dict]] = []          # each event of the generation's stream, and when it was read

    def follow(stream) -> None:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                read.append((time.monotonic(), json.loads(line[6:])))

    with httpx.stream("POST", server.url + "/completion", json=body, timeout=300) as stream:
        reader = threading.Thread(target=follow, args=(stream,))
        reader.start()
        while not read:                          # the generation is under way
            time.sleep(0.01)
        answer = httpx.post(server.url + "/apply-template", json={"messages": VSCODE_CHAT}, timeout=300)
        answered = time.monotonic()
        reader.join(300)
    assert answer.status_code == 200 and answer.json()["prompt"] == quiet
    assert read[-1][1]["stop"] is True and len(read) > 100, read[-1]
    later = [event for when, event in read if when > answered]
    assert len(later) > 20, f"{len(later)} of {len(read)} events came after /apply-template's answer"


def test_apply_template_refuses_bad_messages_as_llama_cpp_does(server):
    """llama.cpp parses the body as its chat route does: a 400 in OpenAI's error shape, and the server serves on."""
    for body, words in [({}, "'messages' is required"), ({"messages": "hi"}, "Expected 'messages' to be an array"),
                        ({"messages": [{"role": "user"}]}, "messages[0].content: a user message needs content"),
                        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
                        ({"messages": [{"role": "assistant", "content": "x"}]}, "the user's message last")]:
        answer = httpx.post(server.url + "/apply-template", json=body, timeout=300)
        assert answer.status_code == 400, (body, answer.text)
        error = answer.json()["error"]
        assert error["code"] == 400 and error["type"] == "invalid_request_error" and words in error["message"], error
    assert httpx.get(server.url + "/health", timeout=30).json()["status"] == "ok"


# llama.vscode's agent (llama-agent.ts askAgent; llama-server.ts createToolsRequestPayload): its system prompt, the
# user's query behind the project's folder, and its tools (one of its tools.ts definitions, in OpenAI's form)
READ_FILE = {"type": "function", "function": {
    "name": "read_file", "description": "Read the content of a file from the project.",
    "parameters": {"type": "object", "properties": {"file_path": {"type": "string", "description": "The file's path"}},
                   "required": ["file_path"]}}}
AGENT_QUERY = [{"role": "system", "content": "You are an agent with tools. Use them to complete the task."},
               {"role": "user", "content": " Project root folder: /home/me/shapes\nObligatory read the file before "
                                           "editing it with a tool.\n\nWhat does area_of_circle return?"}]


def _tools_request(messages: list[dict]) -> dict:
    """createToolsRequestPayload's body, `model` left out as its settings leave it by default."""
    return {"messages": messages, "stream": False, "temperature": 0.8, "top_p": 0.95, "tools": [READ_FILE],
            "tool_choice": "auto"}


def test_llama_vscodes_agent_gets_a_clear_400_not_a_text_answer(server):
    """This server makes no tool calls (no grammar to hold a model to a call's JSON, as llama.cpp's generic format
    does). llama.vscode's agent takes an answer without `tool_calls` as its last, so a text answer would end its task
    as done; an error ends it as failed. Its first request (with `tools`) was already refused; a conversation that
    carries a tool's result (`tool`) or an assistant's `tool_calls` was refused by pydantic's words (the role's
    choices), and one with `tool_calls` but no tool message was answered in text, the calls silently dropped. Each
    is now a 400 in OpenAI's shape that says tools are not supported, on the chat route and /apply-template, and the
    server serves on."""
    call = {"id": "call_1", "type": "function", "function": {"name": "read_file",
                                                             "arguments": '{"file_path": "shapes/geometry.py"}'}}
    called = [*AGENT_QUERY, {"role": "assistant", "content": None, "tool_calls": [call]}]
    result = {"role": "tool", "tool_call_id": "call_1", "content": "def area_of_circle(radius): ..."}
    for path in ("/v1/chat/completions", "/apply-template"):
        for body, words in [
                (_tools_request(AGENT_QUERY), "tools are not supported"),
                ({**_tools_request([*AGENT_QUERY, result]), "tools": []}, "messages[2]: a tool message (a tool's "
                                                                          "result) is not supported"),
                ({**_tools_request([*called, result]), "tools": []}, "messages[2].tool_calls: an assistant's tool "
                                                                     "calls are not supported"),
                ({"messages": [*called, {"role": "user", "content": "Go on."}], "max_tokens": 2},
                 "messages[2].tool_calls: an assistant's tool calls are not supported"),
                ({"messages": [*AGENT_QUERY[:1], {"role": "function", "name": "f", "content": "x"},
                               AGENT_QUERY[1]]}, "messages[1]: a function message")]:
            answer = httpx.post(server.url + path, json=body, timeout=300)
            assert answer.status_code == 400, (path, words, answer.text)
            error = answer.json()["error"]
            assert error["type"] == "invalid_request_error" and words in error["message"], error
            assert "makes no tool calls" in error["message"], error
    # A history without calls still chats, `tool_choice: "auto"` (no tools) and an empty `tool_calls` included.
    plain = {"messages": [*AGENT_QUERY, {"role": "assistant", "content": "It returns pi r squared.", "tool_calls": []},
                          {"role": "user", "content": "Thanks."}], "tool_choice": "auto", "max_tokens": 2}
    answer = httpx.post(server.url + "/v1/chat/completions", json=plain, timeout=300)
    assert answer.status_code == 200 and answer.json()["choices"][0]["finish_reason"] in ("stop", "length"), answer.text


def test_tools_a_client_forbids_calling_get_a_text_answer(server):
    """`tool_choice: "none"` asks for text with the tools beside it (llama.cpp answers it as a plain chat); it was the
    same 400 as a request that wants calls. Tools that may be called (`auto`, or no choice) are still refused."""
    for forbidding in ({"tools": [READ_FILE], "tool_choice": "none"},
                       {"functions": [READ_FILE["function"]], "function_call": "none"}):
        answer = httpx.post(server.url + "/v1/chat/completions",
                            json={"messages": AGENT_QUERY, "max_tokens": 2, **forbidding}, timeout=300)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["role"] == "assistant"
    answer = httpx.post(server.url + "/v1/chat/completions",
                        json={"messages": AGENT_QUERY, "max_tokens": 2, "tools": [READ_FILE]}, timeout=300)
    assert answer.status_code == 400 and "makes no tool calls" in answer.json()["error"]["message"]


def test_an_answer_begun_by_the_client_goes_on(server):
    """llama.cpp's assistant prefill (Open WebUI's "continue"): a conversation that ends with the assistant's message
    was a 400 ("needs the user's message last"). The prompt now ends with that answer's text, its turn left open,
    and the reply holds only what follows it, through the openai client as through /apply-template."""
    from openai import OpenAI

    begun = "It returns the circle's area, math.pi *"
    messages = [*VSCODE_CHAT, {"role": "assistant", "content": begun}]
    prompt = httpx.post(server.url + "/apply-template", json={"messages": messages}, timeout=300).json()["prompt"]
    assert prompt.endswith("<|im_start|>assistant\n" + begun), prompt[-200:]
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    answer = client.chat.completions.create(model="any", messages=messages, max_tokens=6, temperature=0)
    tokens = httpx.post(server.url + "/tokenize", json={"content": prompt}, timeout=300).json()["tokens"]
    assert answer.usage.prompt_tokens == len(tokens)
    assert answer.choices[0].message.content and not answer.choices[0].message.content.startswith(begun)


def test_a_blank_answer_begun_after_an_answer_is_answered_anew(server):
    """[..., assistant A, assistant " "]: the blank answer begun was dropped and the model went on with A, as if A
    were the answer begun. A stays closed now and a fresh answer begins (vLLM's rendering; llama.cpp refuses two
    assistant messages last), on /apply-template as on the chat route, which answers it."""
    answered = "It returns the circle's area."
    messages = [*VSCODE_CHAT, {"role": "assistant", "content": answered}, {"role": "assistant", "content": " "}]
    prompt = httpx.post(server.url + "/apply-template", json={"messages": messages}, timeout=300).json()["prompt"]
    assert prompt.endswith(f"{answered}<|im_end|>\n<|im_start|>assistant\n"), prompt[-200:]
    answer = httpx.post(server.url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 2},
                        timeout=300)
    assert answer.status_code == 200, answer.text
