"""`codecomplete serve` as a subprocess on a free loopback port, with its own runtime dir (so no other server is
found), its log in a file, and a stop that always ends the process."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

START_TIMEOUT_S = 300


class ServerProcess:
    def __init__(self, script: Path, repo: Path, env: dict, folder: Path, *options: str) -> None:
        self.runtime = folder / "runtime"
        self.env = {**env, "CODECOMPLETE_RUNTIME_DIR": str(self.runtime)}
        self.log_path = folder / "server.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen([str(script), "serve", str(repo), "--port", "0", *options],
                                        stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        try:
            self.info = self._wait_for_announcement()
        except BaseException:
            self.kill()
            raise
        self.url = self.info["url"]

    def _wait_for_announcement(self) -> dict:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}: {self.log()}")
            for path in (self.runtime / "servers").glob("*.json"):
                try:
                    return json.loads(path.read_text())
                except ValueError:      # being written
                    pass
            time.sleep(0.2)
        raise AssertionError(f"the server did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        """Ask it to stop; its exit code (killed, and the test failing, if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"the server did not stop within {timeout} s") from None
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def raw_post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """POST exactly these bytes and headers (httpx refuses llama.vim's `Authorization: Bearer `, with its space);
    the status and the body as text."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    try:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()
