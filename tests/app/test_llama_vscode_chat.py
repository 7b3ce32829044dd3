"""llama.vscode's chat side against `codecomplete serve`, on a real server and its real socket: `/apply-template`,
which it counts a chat's tokens with (beside `/tokenize`), and its agent's tool calls (llama.vscode's
src/llama-server.ts and src/llama-agent.ts, as bench/results/NOTES.md's round-6 leftovers read them)."""
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
