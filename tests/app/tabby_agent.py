"""tabby-agent, the agent Tabby's editor plugins run (an LSP server over stdio, on npm), pinned, for the tests that
drive it against `codecomplete serve`. It is installed once into the user's cache with npm (node 18 or later);
`python tests/app/tabby_agent.py` installs it ahead of the suite (.ci/run does), so that the tests need no network.

1.5.0 is the version the npm registry here holds. Its LSP server answers `textDocument/completion` (inline completion
came later) with the text of `choices[0]` of POST /v1/completions, after `GET /v1/health`; it reads its settings
from ~/.tabby-client/agent/config.toml, and the server's address and token nowhere else.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import platformdirs

VERSION = "1.5.0"


def installed() -> Path:
    """The agent's entry script, installed first where it is not yet (npm; no install scripts run)."""
    folder = platformdirs.user_cache_path("codecomplete-tests") / f"tabby-agent-{VERSION}"
    script = folder / "node_modules" / "tabby-agent" / "dist" / "cli.js"
    if script.is_file():
        return script
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("the tabby-agent tests need node (18 or later) and npm on the PATH")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + "-", dir=folder.parent))   # whole, or not there at all
    try:
        done = subprocess.run([npm, "install", "--prefix", str(staging), "--ignore-scripts", "--no-audit", "--no-fund",
                               "--no-save", f"tabby-agent@{VERSION}"], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"npm could not install tabby-agent@{VERSION}: {done.stderr.strip()}")
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return script


class Agent:
    """tabby-agent running as an editor runs it (`--lsp --stdio`), with its own home: a config.toml that names the
    server and its token, no usage reports, and a debug log (`log()`: one JSON object a line)."""

    def __init__(self, home: Path, endpoint: str, token: str) -> None:
        self.home = home
        config = home / ".tabby-client" / "agent" / "config.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(f'[server]\nendpoint = "{endpoint}"\ntoken = "{token}"\n\n[logs]\nlevel = "debug"\n\n'
                          '[anonymousUsageTracking]\ndisable = true\n')
        self.notifications: list[dict] = []
        self._replies: queue.Queue[dict | None] = queue.Queue()
        self._ids = iter(range(1, 1 << 30))
        self.process = subprocess.Popen(["node", str(installed()), "--lsp", "--stdio"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=home,
                                        env={**os.environ, "HOME": str(home)})    # (its log rotation writes
                                                                                  # an audit.json where it runs)
        threading.Thread(target=self._read, daemon=True).start()

    def request(self, method: str, params, timeout: float = 120) -> dict:
        """Send a request; its response (with "result" or "error")."""
        number = next(self._ids)
        self._send({"jsonrpc": "2.0", "id": number, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self._replies.get(timeout=left)
            except queue.Empty:
                break
            if message is None:
                raise RuntimeError(f"tabby-agent exited: {self.process.stderr.read().decode(errors='replace')}")
            if message.get("id") == number:
                return message
        raise TimeoutError(f"tabby-agent did not answer {method} within {timeout} s")

    def notify(self, method: str, params) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def log(self) -> list[dict]:
        folder = self.home / ".tabby-client" / "agent" / "logs"
        return [json.loads(line) for path in sorted(folder.glob("*.log")) if path.name != "current.log"
                for line in path.read_text().splitlines() if line.strip()]

    def close(self) -> int:
        """LSP's shutdown and exit; the agent's exit code."""
        try:
            if self.process.poll() is None:
                self.request("shutdown", None, timeout=30)
                self.notify("exit", None)
            return self.process.wait(30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def _send(self, message: dict) -> None:
        data = json.dumps(message).encode()
        self.process.stdin.write(f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        self.process.stdin.flush()

    def _read(self) -> None:
        """Messages from the agent: responses for `request`, notifications kept (window/showMessage says its
        status when it is not ready)."""
        stream = self.process.stdout
        while True:
            headers = {}
            while (line := stream.readline().decode()).strip():
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if not line:
                self._replies.put(None)
                return
            message = json.loads(stream.read(int(headers["content-length"])))
            if "method" not in message:
                self._replies.put(message)
            elif "id" in message:           # a request of the agent's own: nothing an editor must do here
                self._send({"jsonrpc": "2.0", "id": message["id"], "result": None})
            else:
                self.notifications.append(message)


if __name__ == "__main__":
    print(installed())
    sys.exit(0)
