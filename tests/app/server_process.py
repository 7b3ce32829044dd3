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
    stopped at the end. `options`: the Server's (cache_reuse=16, ...)."""
    from fastapi.testclient import TestClient

    from codecomplete.server.app import Server, create_app
    from codecomplete.session import Session

    server = Server(Session(engine, index), max_tokens=8, api_key=None, info={}, **options)
    try:
        with TestClient(create_app(server), base_url="http://127.0.0.1") as client:
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
