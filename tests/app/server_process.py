"""Helpers for the server tests: `codecomplete serve` as a subprocess (the benchmark's launcher, on the console
script), one stopped and checked at a fixture's end, the app in process over an engine a test holds, and a POST that
sends headers exactly as given."""
from __future__ import annotations

import http.client
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from codecomplete.serve_bench import ServerProcess as _ServerProcess


class ServerProcess(_ServerProcess):
    def __init__(self, script: Path, repo: Path, env: dict, folder: Path, *options: str, **popen) -> None:
        super().__init__([str(script)], repo, env, folder, *options, **popen)


@contextmanager
def serving(script: Path, repo: Path, env: dict, folder: Path, *options: str) -> Iterator[ServerProcess]:
    """A module's own server: stopped cleanly at the end, without a traceback in its log."""
    process = ServerProcess(script, repo, env, folder, *options)
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()
        assert "Traceback" not in process.log(), process.log()


@contextmanager
def in_process(engine, index=None, **options):
    """The server's app over `engine` (and `index`), in this process, as a Starlette TestClient: its engine thread
    stopped at the end. `options`: the Server's (cache_reuse=16, ...). The server's log lines go to the client's
    `server_log` (the engine thread writes a request's line after its answer: on stderr that came after the test's
    output capture had ended, a stray line in the suite's output)."""
    from fastapi.testclient import TestClient

    from codecomplete.server.app import Server, create_app
    from codecomplete.session import Session

    log: list[str] = []
    server = Server(Session(engine, index), max_tokens=8, api_key=None, info={}, log=log.append, **options)
    try:
        with TestClient(create_app(server), base_url="http://127.0.0.1") as client:
            client.server_log = log
            yield client
    finally:
        server.worker.shutdown()


def raw_post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """POST exactly these bytes and headers (httpx refuses llama.vim's `Authorization: Bearer `, with its space);
    the status and the body as text."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    try:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()
