"""Round 27 (security of what was added after round 13): what one request may make the server hold; where a server
announces itself."""
import os

import pytest
from server_process import in_process

from codecomplete.server import discovery, llama_cpp


def test_a_whole_answer_lists_a_bounded_number_of_probabilities(table_engine, monkeypatch):
    """llama.cpp's n_probs goes up to the vocabulary, and a whole answer holds every token's until it ends (~1.5 KB
    each): n_probs 1e6 over n_predict's default 256 took ~19 GB of the server's memory, over the context more than
    the machine has. Past MAX_ANSWER_PROBABILITIES (n_probs x n_predict) a whole answer is a 400 before anything
    runs; a stream, which holds one token's at a time, is answered."""
    with in_process(table_engine) as client:
        for path, body in (("/completion", {"prompt": "def f("}),
                           ("/infill", {"input_prefix": "def f(", "input_suffix": ""})):
            refused = client.post(path, json={**body, "n_probs": 10 ** 6, "n_predict": 1000})
            assert refused.status_code == 400, refused.text
            assert "n_probs" in refused.json()["error"]["message"] and "stream" in refused.json()["error"]["message"]
        assert client.server_log == []                                  # (nothing ran)
        monkeypatch.setattr(llama_cpp, "MAX_ANSWER_PROBABILITIES", 100)
        body = {"prompt": "def f(", "n_predict": 8, "temperature": 0, "ignore_eos": True}
        assert client.post("/completion", json={**body, "n_probs": 13}).status_code == 400     # 104 > 100
        assert client.post("/completion", json={**body, "logprobs": 13}).status_code == 400    # (its other name)
        whole = client.post("/completion", json={**body, "n_probs": 12})                        # 96
        assert whole.status_code == 200 and len(whole.json()["completion_probabilities"]) == 8, whole.text
        with client.stream("POST", "/completion", json={**body, "n_probs": 13, "stream": True}) as streamed:
            assert streamed.status_code == 200
            chunks = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        assert sum('"top_logprobs"' in chunk for chunk in chunks) >= 1


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX modes")
def test_a_runtime_directory_named_but_absent_is_made_private_and_the_server_is_found(tmp_path, monkeypatch):
    """$XDG_RUNTIME_DIR names a folder that is not there: the server made it 0755 (the parents of its records'
    folder took the umask's mode), platformdirs refused it from then on ("not 0700") and every command line looked in
    /tmp/runtime-UID, never finding the server."""
    monkeypatch.delenv(discovery.RUNTIME_ENV, raising=False)
    runtime = tmp_path / "absent" / "run"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    url = "http://127.0.0.1:1"
    with discovery.announce({"url": url, "api_key": None}) as path:
        assert path is not None and path.parent.parent.parent == runtime
        assert url in [server["url"] for server in discovery.running_servers()]
        assert all(folder.stat().st_mode & 0o777 == 0o700 for folder in (runtime.parent, runtime, path.parent))


def test_a_job_is_cancelled_by_its_own_random_id_and_no_guess(table_engine):
    """`/codecomplete/v1/cancel` cancels the job named. Its ids were a counter ("1", "2"; OpenAI's `chatcmpl-2` shows
    one): any client could cancel another's generation, an editor's, by the ids around its own. Now an id is random,
    as OpenAI's, vLLM's and llama.cpp's are."""
    import asyncio
    import re
    import threading

    from codecomplete.server.worker import EngineWorker

    gate = threading.Event()
    worker = EngineWorker(first=lambda: gate.wait(30), log=lambda line: None)    # (the jobs wait in the queue)

    async def submit_two():
        return [worker.submit(lambda: None, "test") for _ in range(2)]

    try:
        jobs = asyncio.run(submit_two())
        assert all(re.fullmatch(r"[0-9a-f]{32}", job.id) for job in jobs) and jobs[0].id != jobs[1].id
        guesses = {str(n) for n in range(1000)}         # (the counter's ids, this process's jobs among them)
        assert not any(worker.cancel(guess) for guess in guesses)
        assert not any(job.cancelled.is_set() for job in jobs)
        assert worker.cancel(jobs[0].id) and jobs[0].cancelled.is_set() and not jobs[1].cancelled.is_set()
    finally:
        gate.set()
        worker.shutdown()
    with in_process(table_engine) as client:
        ids = [client.post("/v1/completions", json={"prompt": "def f(", "max_tokens": 2}).json()["id"]
               for _ in range(2)]
    assert all(re.fullmatch(r"cmpl-[0-9a-f]{32}", answer) for answer in ids) and ids[0] != ids[1], ids
