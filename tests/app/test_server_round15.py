"""`codecomplete serve` against the adversarial sweep's fifteenth round (bench/results/NOTES.md: the environment the
operating system hands the program), on a real server and its real socket."""
import signal
import socket
import sys
import time

import httpx
import pytest

from codecomplete.serve_bench import ServerProcess as CommandServerProcess


@pytest.mark.skipif(sys.platform == "win32", reason="ulimit -n")
def test_a_server_out_of_open_files_says_so_once_and_serves_on(script, cli_env, served_repo, tmp_path):
    """At the process's limit of open files (`ulimit -n`: a client holding hundreds of connections, an editor that
    leaks them), asyncio's accept loop went on after its first EMFILE through the rest of uvicorn's backlog, logging a
    traceback and scheduling a retry at each (python/cpython#151615, 3.11-3.14): in the sweep, 161,668 tracebacks
    (65 MB of log) in 13 s and a core kept busy while 200 connections were held. Now one line says it, and the server
    serves once they close."""
    command = ["sh", "-c", 'ulimit -n 64 && exec "$0" "$@"', str(script)]
    server = CommandServerProcess(command, served_repo, cli_env, tmp_path, "--context-tokens", "256",
                                  "--max-tokens", "8")
    try:
        host, port = server.url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port)), timeout=30) for _ in range(150)]
        try:
            time.sleep(3)
            log = server.log()
        finally:
            for connection in held:
                connection.close()
        said = [line for line in log.splitlines() if "open files" in line]
        assert 1 <= len(said) <= 2 and "Traceback" not in log, log[-3000:]
        answer = httpx.post(server.url + "/infill", json={"input_prefix": "def area(", "input_suffix": "",
                                                          "n_predict": 2}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.kill()
