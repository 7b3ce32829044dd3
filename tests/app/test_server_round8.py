"""`codecomplete serve` against the adversarial sweep's eighth round (bench/results/NOTES.md), on a real server and
its real socket."""
import json
import os

import httpx
import pytest

# CodeLlama-Instruct's (and Llama 2's) rule, over the embedded model's ChatML: roles must alternate
ALTERNATING_CHATML = (
    "{% for message in messages %}{% if message['role'] != 'system' and (message['role'] == 'user') != "
    "(loop.index0 % 2 == (1 if messages[0]['role'] == 'system' else 0)) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def alternating_server(script, cli_env, served_repo, converted_model, tmp_path_factory):
    """A server whose model's chat template refuses two questions in a row (the embedded model's files, its
    tokenizer_config.json given that template)."""
    from server_process import ServerProcess

    folder = tmp_path_factory.mktemp("alternating")
    for file in converted_model.iterdir():
        if file.name not in ("tokenizer_config.json", "chat_template.jinja"):
            os.symlink(file, folder / file.name)
    config = json.loads((converted_model / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": ALTERNATING_CHATML}))
    process = ServerProcess(script, served_repo, cli_env, tmp_path_factory.mktemp("server"), "--model", str(folder),
                            "--context-tokens", "512", "--max-tokens", "8")
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()
        assert "Traceback" not in process.log(), process.log()


def test_a_conversation_the_template_refuses_is_a_400_not_a_broken_model(alternating_server):
    """Two questions in a row to a model whose template (CodeLlama-Instruct's rule) raises unless roles alternate
    were a 500 "the model's chat template cannot be used", which the openai client retries twice, as for a broken
    checkpoint. The conversation is refused: a 400 in the route's shape with the template's words; the alternating
    one is answered, and so is every later request."""
    url = alternating_server.url
    twice = [{"role": "user", "content": "Hi"}, {"role": "user", "content": "What does area_of_circle return?"}]
    for path, body in [("/v1/chat/completions", {"messages": twice, "max_tokens": 2}),
                       ("/apply-template", {"messages": twice}),
                       ("/api/chat", {"model": "m", "messages": twice, "stream": False})]:
        answer = httpx.post(url + path, json=body, timeout=300)
        assert answer.status_code == 400, (path, answer.status_code, answer.text)
        error = answer.json()["error"]
        message = error if path.startswith("/api/") else error["message"]
        assert "refuses this conversation" in message and "must alternate" in message, (path, message)
    answered = [twice[0], {"role": "assistant", "content": "Hello."}, twice[1]]
    chat = httpx.post(url + "/v1/chat/completions", json={"messages": answered, "max_tokens": 2}, timeout=300)
    assert chat.status_code == 200, chat.text
    assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"
