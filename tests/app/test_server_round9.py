"""`codecomplete serve` against the adversarial sweep's ninth round (bench/results/NOTES.md), on a real server and
its real socket. What is tested is where the log goes, whatever the weights: each server here serves conftest's table
model (the embedded model's tokenizer and context, its answers hundreds of tokens a second), which starts and answers
in a fraction of the embedded model's time."""
import contextlib
import os
import signal
import socket
import subprocess

import httpx
import pytest

from codecomplete.serve_bench import ServerProcess as CommandServerProcess
from server_process import ServerProcess

try:
    import fcntl
except ImportError:        # (Windows)
    fcntl = None

def _serving_with_its_log_on_a_pipe(script, cli_env, served_repo, tmp_path, model) -> ServerProcess:
    """A server whose stderr (its log) is a pipe for the test to read, or not."""
    return ServerProcess(script, served_repo, cli_env, tmp_path, "--model", str(model), "--context-tokens", "256",
                         "--max-tokens", "8", stderr=subprocess.PIPE)


def test_a_server_whose_log_nobody_reads_any_more_serves_on(script, cli_env, served_repo, tmp_path, table_model):
    """A server whose stderr is a pipe its reader closed (an editor or a supervisor that started it and stopped
    reading its log, `codecomplete serve . 2>&1 | head`; a full disk under a log file fails alike): the engine thread
    wrote each request's summary line with a plain print, whose BrokenPipeError ended the thread after the first
    answer. The server then stopped serving for good while /health said ok: every later request waited forever (the
    sweep's client timed out), and SIGTERM ended it with 141. The log's lines are dropped now, the answers go on, and
    a stop ends it as any stop once serving does."""
    server = _serving_with_its_log_on_a_pipe(script, cli_env, served_repo, tmp_path, table_model)
    try:
        url = server.url
        server.process.stderr.close()   # the log's reader goes away
        for path, body in [("/completion", {"prompt": "def area(", "n_predict": 2}),
                           ("/infill", {"input_prefix": "def area(", "input_suffix": "", "n_predict": 2}),
                           ("/completion", {"prompt": "import ", "n_predict": 2, "stream": True}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
                           ("/completion", {"prompt": "class ", "n_predict": 2})]:
            answer = httpx.post(url + path, json=body, timeout=60)
            assert answer.status_code == 200, (path, answer.status_code, answer.text)
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.kill()


@pytest.mark.skipif(not hasattr(fcntl, "F_SETPIPE_SZ"), reason="Linux's pipe sizes")
def test_a_server_whose_log_nobody_drains_serves_on(script, cli_env, served_repo, tmp_path, table_model):
    """A server whose stderr is a pipe that its parent never reads (an editor plugin that spawned it with pipes and
    reads none of them; `Popen(stderr=PIPE)` left alone): once the pipe was full, the next log line's write waited
    forever, in the engine thread (each request's summary) or on the event loop (uvicorn's "Invalid HTTP request
    received." for each malformed request): every later request hung, 467 requests into a 64 KiB pipe in the sweep,
    and SIGTERM could not stop it. A line that would wait is dropped now: requests go on, and SIGTERM ends it."""
    server = _serving_with_its_log_on_a_pipe(script, cli_env, served_repo, tmp_path, table_model)
    try:
        url = server.url
        fcntl.fcntl(server.process.stderr.fileno(), fcntl.F_SETPIPE_SZ, 4096)     # a page: full after a few dozen lines
        host, port = url.removeprefix("http://").split(":")
        for _ in range(300):        # malformed requests: uvicorn logs a warning for each (a 400 answers them)
            with socket.create_connection((host, int(port)), timeout=30) as connection:
                connection.sendall(b"GARBAGE\r\n\r\n")
                assert connection.recv(12) == b"HTTP/1.1 400"
        for i in range(40):         # each logs its summary line
            answer = httpx.post(url + "/infill", json={"input_prefix": f"def area{i}(", "input_suffix": "",
                                                       "n_predict": 1}, timeout=30)
            assert answer.status_code == 200, answer.text
        assert server.stop(signal.SIGTERM, timeout=30) == 0
    finally:
        server.kill()
        server.process.stderr.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="a device that is always full")
@pytest.mark.parametrize("redirect", ["2>/dev/full", "2>&-", "2<{log}"])
def test_a_server_whose_log_cannot_be_written_from_the_start_serves(script, cli_env, served_repo, tmp_path,
                                                                    table_model, redirect):
    """A server started with a standard error it cannot write (a full disk under its log file, as /dev/full is; a
    descriptor open for reading only, EBADF; closed, `2>&-`): its first start-up line ("warmed up ...") was a plain
    print, whose error ended it with exit 1 before it served, and without a word, as its error line failed too.
    A log is best effort from the start, as llama.cpp's (its writes' errors unchecked) and uvicorn's (logging's
    handleError) are: it serves, and a stop ends it with 0."""
    log = tmp_path / "log.txt"
    log.write_text("")
    command = ["sh", "-c", f'exec "$0" "$@" {redirect.format(log=log)}', str(script)]
    server = CommandServerProcess(command, served_repo, cli_env, tmp_path, "--model", str(table_model),
                                  "--context-tokens", "256", "--max-tokens", "8")
    try:
        for path, body in [("/completion", {"prompt": "def area(", "n_predict": 2}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
                           ("/completion", {"prompt": "{", "n_predict": "many"})]:       # (a 400: its log line too)
            answer = httpx.post(server.url + path, json=body, timeout=60)
            assert answer.status_code in (200, 400), (path, answer.status_code, answer.text)
        assert server.stop(signal.SIGTERM) == 0, server.log()
    finally:
        server.kill()


@pytest.mark.skipif(not hasattr(fcntl, "F_SETPIPE_SZ"), reason="Linux's pipe sizes")
def test_a_server_whose_log_pipe_is_full_from_the_start_serves(script, cli_env, served_repo, tmp_path, table_model):
    """A standard error that is a pipe already full when the server starts (another process's output filled the
    pipe they share, and nobody drains it): the start-up lines were plain prints, which waited for good before the
    server announced itself or served. They are dropped as its later lines are."""
    reader, writer = os.pipe()
    try:
        fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, 4096)
        os.set_blocking(writer, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(writer, b"x" * 512)
        os.set_blocking(writer, True)       # (a blocking pipe, as a parent's is)
        server = CommandServerProcess([str(script)], served_repo, cli_env, tmp_path, "--model", str(table_model),
                                      "--context-tokens", "256", "--max-tokens", "8", stderr=writer)
        try:
            answer = httpx.post(server.url + "/completion", json={"prompt": "def area(", "n_predict": 2}, timeout=60)
            assert answer.status_code == 200, answer.text
            assert server.stop(signal.SIGTERM) == 0, server.log()
        finally:
            server.kill()
    finally:
        os.close(reader)
        os.close(writer)
