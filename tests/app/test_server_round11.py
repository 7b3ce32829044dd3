"""`codecomplete serve` against the adversarial sweep's eleventh round, a server an editor talks to all day
(bench/results/NOTES.md), on a real server and its real socket."""
import platform
import random
import sys
import time

import httpx
import pytest

from server_process import ServerProcess

RELEASED_MB = 16        # of the memory a burst of requests left resident, what a quiet moment must give back


def resident_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc, read through /proc")
def test_a_quiet_server_gives_back_the_memory_its_requests_freed(script, cli_env, served_repo, tmp_path):
    """glibc's malloc keeps what a process frees, and a heap gives pages back only from its top: each request's
    prefill allocated and freed tens of MB, what stayed between requests landed among the free pages, and the
    server's resident memory only grew (735 MB to 1.80 GB in five minutes of four editors' traffic on a CPU, 390 MB
    of it free). Once quiet after requests, the server now hands those pages back (malloc_trim)."""
    server = ServerProcess(script, served_repo, cli_env, tmp_path, "--context-tokens", "512", "--max-tokens", "4",
                           "--cache-ram", "0")
    try:
        pid, rng = server.process.pid, random.Random(0)
        busiest = 0.0
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for _ in range(8):       # prompts of new lengths, each read from its first token: the prefill allocates
                # (the busiest is reached at the first; after 8, ~40 MB comes back, none without malloc_trim)
                ids = [rng.randrange(1000, 40000) for _ in range(rng.randrange(300, 500))]
                answer = client.post("/completion", json={"prompt": ids, "n_predict": 2, "cache_prompt": False})
                assert answer.status_code == 200, answer.text
                busiest = max(busiest, resident_mb(pid))
        deadline = time.monotonic() + 30
        while resident_mb(pid) > busiest - RELEASED_MB and time.monotonic() < deadline:
            time.sleep(0.5)
        assert resident_mb(pid) <= busiest - RELEASED_MB, (busiest, resident_mb(pid))
        assert server.stop() == 0
    finally:
        server.kill()


def test_the_log_tells_an_answer_a_limit_ended_from_one_whose_client_left(server):
    """llama.cpp's t_max_predict_ms (and n_indent) end an answer where the text passes the limit: the engine is
    stopped as for a client that left, and the log line said `cancelled`, so a log of llama.vim's requests (which
    send both) read as if its clients kept leaving. It says `limit` now, as the answer's stop_type does."""
    def completions() -> list[str]:
        return [line for line in server.log().splitlines() if line.startswith("POST /completion ")]
    before = len(completions())
    answer = httpx.post(server.url + "/completion", timeout=120, json={
        "prompt": "import os\nimport sys\n", "n_predict": 40, "t_max_predict_ms": 1, "samplers": ["top_k"],
        "top_k": 1}).json()
    assert answer["stop_type"] == "limit" and answer["tokens_predicted"] < 40, answer     # the time limit ended it
    deadline = time.monotonic() + 30
    while len(completions()) == before and time.monotonic() < deadline:     # (written just after the answer)
        time.sleep(0.1)
    (line,) = completions()[before:]
    assert line.endswith("· limit"), line
