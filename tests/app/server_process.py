"""Helpers for the server tests: `codecomplete serve` as a subprocess (the benchmark's launcher, on the console
script), one stopped and checked at a fixture's end, and a POST that sends headers exactly as given."""
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
