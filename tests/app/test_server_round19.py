"""`codecomplete serve` against the adversarial sweep's nineteenth round (bench/results/NOTES.md: editor plugins not
driven before, read from their own code: llm-ls, minuet-ai.nvim, twinny, cmp-ai, Zed, codecompanion.nvim, avante.nvim,
gptel), on a real server and its real socket."""
import http.client
import json
from urllib.parse import urlsplit

import httpx
import pytest

from server_process import raw_post

# twinny 3.23.31's fill-in-the-middle request to its default FIM provider (provider-manager.ts getDefaultFimProvider:
# Ollama, http://0.0.0.0:11434/api/generate, codellama:7b-code; provider-options.ts createStreamRequestBodyFim, its
# codellama template from fim-templates.ts, twinny.numPredictFim 512, twinny.keepAlive "5m")
TWINNY_FIM = {"model": "codellama:7b-code",
              "prompt": "<PRE> \n# Language: Python\ndef area(r):\n    return 3.14 * r * r\n\ndef main():\n     <SUF> "
                        "\n\nif __name__ == '__main__':\n    main()\n <MID>",
              "stream": True, "keep_alive": "5m", "options": {"temperature": 0.2, "num_predict": 8}}


def _twinny_reads(status: int, text: str) -> str:
    """What twinny's llm() and getFimDataFromProvider take from the answer: each line's `response`, after its
    `response.ok` check (a 403 is "Server responded with status code: 403" and no suggestion)."""
    assert status == 200, (status, text)
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines[-1]["done"] is True, lines[-1]
    return "".join(line["response"] for line in lines)


@pytest.mark.parametrize("host", ["0.0.0.0", "0.0.0.0:{port}", "[::]:{port}"])
def test_the_unspecified_address_twinny_names_for_localhost_is_this_machine(table_server, host):
    """twinny's settings default its Ollama host to 0.0.0.0 (`twinny.ollamaHostname`: "Use `0.0.0.0` for
    localhost"), for its model list (/api/tags) and its default FIM provider (http://0.0.0.0:11434/api/generate). A
    connection to 0.0.0.0 reaches this machine's loopback, and Ollama answers such a Host (its allowedHostsMiddleware
    lets an unspecified address through, as a loopback or private one). This server refused it: 403 "Host
    '0.0.0.0:8012' does not name this machine", so twinny pointed at it with its defaults showed no suggestion. A web
    page can name 0.0.0.0 only as it can name 127.0.0.1 (DNS rebinding gives its own name), its Origin then refused."""
    port = urlsplit(table_server.url).port
    body = json.dumps(TWINNY_FIM).encode()
    status, text = raw_post(table_server.url, "/api/generate", body,
                            {"Host": host.format(port=port), "Content-Type": "application/json", "Authorization": ""})
    assert _twinny_reads(status, text)
    # and its model list (OllamaService.fetchModels: a GET of /api/tags)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", "/api/tags", headers={"Host": host.format(port=port)})
        response = connection.getresponse()
        status, text = response.status, response.read().decode()
    finally:
        connection.close()
    assert status == 200 and json.loads(text)["models"], (status, text)


def test_twinnys_own_url_reaches_the_server_where_the_system_routes_0000_to_it(table_server):
    """The same request on twinny's own URL, http://0.0.0.0:PORT/api/generate (where the system connects 0.0.0.0 to
    this machine, as Linux and macOS do); a socket refused there (Windows) says nothing about the server."""
    port = urlsplit(table_server.url).port
    try:
        answer = httpx.post(f"http://0.0.0.0:{port}/api/generate", json=TWINNY_FIM, timeout=60)
    except httpx.ConnectError:
        pytest.skip("this system does not connect 0.0.0.0 to itself")
    assert _twinny_reads(answer.status_code, answer.text)


def test_ollamas_chat_reads_a_developer_message_as_the_system_message(table_server):
    """avante.nvim's Ollama provider (providers/ollama.lua parse_messages) sends its system prompt with the role
    "developer" where the model's name looks like a reasoning one (providers/openai.lua is_reasoning_model: `^o%d+`,
    `gpt-5`), OpenAI's newer name for system; /v1/chat/completions reads it so. /api/chat refused it: 400
    "messages[0].role: Input should be 'system', 'user', 'assistant' or 'tool'", and avante showed that error where
    Ollama answers (it passes any role to the template). It is now the system message there too: the same prompt."""
    url = table_server.url

    def asked(role: str) -> dict:
        body = {"model": "gpt-5-mini", "stream": False, "keep_alive": "5m",
                "messages": [{"role": role, "content": "You are a coding assistant. Answer in one line."},
                             {"role": "user", "content": "What does area_of_circle return?"}],
                "options": {"num_ctx": 20480, "temperature": 0, "num_predict": 4}}
        answer = httpx.post(url + "/api/chat", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        return answer.json()
    developer, system = asked("developer"), asked("system")
    assert developer["message"]["content"] == system["message"]["content"]
    assert developer["prompt_eval_count"] == system["prompt_eval_count"], (developer, system)
    # on the OpenAI route, as it was
    openai = httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "model": "m", "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "developer", "content": "You are a coding assistant. Answer in one line."},
                     {"role": "user", "content": "What does area_of_circle return?"}]}).json()
    assert openai["usage"]["prompt_tokens"] == system["prompt_eval_count"], (openai, system)


def test_a_web_page_naming_0000_is_still_refused(table_server):
    """0.0.0.0 names this machine as 127.0.0.1 does, and no more: a page of another site that fetches
    http://0.0.0.0:PORT (browsers reached local servers so, "0.0.0.0 day") says its Origin, refused as for
    127.0.0.1."""
    port = urlsplit(table_server.url).port
    status, text = raw_post(table_server.url, "/api/generate", json.dumps(TWINNY_FIM).encode(),
                            {"Host": f"0.0.0.0:{port}", "Origin": "https://rebind.attacker.example",
                             "Content-Type": "text/plain"})
    assert status == 403, (status, text)
