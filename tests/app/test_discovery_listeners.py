"""A runtime record whose port another user listens on is not believed: the server that wrote it was killed (SIGKILL,
the OOM killer) and left it, its process id went to another process of the user's, and another local user took the
port. The command line sent that user the server's API key (GET /codecomplete/v1/info), then its questions and
buffers."""
import http.server
import json
import os
import socket
import sys
import threading

import pytest

from codecomplete import client
from codecomplete.cli import build_parser
from codecomplete.server import discovery

ENGINE = {"name": "stand-in", "device": "cpu", "dtype": "float32", "attention": "sdpa", "kv_cache": "float32",
          "context_length": 8192, "model_max_positions": 8192, "load_s": 0.0}
linux_only = pytest.mark.skipif(not all(os.path.exists(table) for table in ("/proc/net/tcp", "/proc/net/tcp6")),
                                reason="Linux's socket tables only")


@pytest.fixture
def impostor():
    """A server at a loopback port that answers /codecomplete/v1/info as the user's server would; yields (url,
    authorizations): each request's Authorization header."""
    authorizations = []
    info = json.dumps({"build": client.build(), "repo": None, "model_spec": None, "engine": ENGINE}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def do_GET(self):
            authorizations.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", str(len(info)))
            self.end_headers()
            self.wfile.write(info)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", authorizations
    server.shutdown()
    server.server_close()


def announce_file(folder, url, api_key):
    """The user's own record, private as `codecomplete serve` writes it, of a process that is alive (this one)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}.json"
    path.write_text(json.dumps({"url": url, "repo": None, "model_spec": None, "engine": ENGINE, "pid": os.getpid(),
                                "api_key": api_key, "build": client.build()}))
    path.chmod(0o600)


def socket_table(rows: list[tuple[str, int, int]]) -> str:
    """/proc/net/tcp's text for LISTEN sockets at (IPv4 address, port) owned by uid."""
    lines = ["  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"]
    for i, (address, port, uid) in enumerate(rows):
        packed = socket.inet_aton(address)
        word = (packed[::-1] if sys.byteorder == "little" else packed).hex().upper()
        lines.append(f"   {i}: {word}:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000 {uid:>5}"
                     f"        0 {1000 + i} 1 0000000000000000 100 0 0 10 0")
    return "\n".join(lines) + "\n"


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX owners")
def test_a_record_whose_port_another_user_listens_on_gets_no_key(impostor, tmp_path, monkeypatch):
    url, authorizations = impostor
    port = int(url.rpartition(":")[2])
    monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path / "run"))
    for name in ("CODECOMPLETE_SERVER", "CODECOMPLETE_API_KEY", "CODECOMPLETE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    announce_file(tmp_path / "run" / "servers", url, "secret")
    raw = build_parser().parse_args(["--prompt", "x", "--device", "cpu"])
    table = tmp_path / "tcp"
    monkeypatch.setattr(discovery, "SOCKET_TABLES", (str(table),), raising=False)
    for place in ("127.0.0.1", "0.0.0.0"):                    # at its address, or at every address of the port
        table.write_text(socket_table([(place, port, os.geteuid() + 1)]))
        assert client.connect(raw, None, 1) is None
        assert authorizations == []                                   # (before: ["Bearer secret"])
        assert discovery.running_servers() == []
        named = build_parser().parse_args(["--prompt", "x", "--device", "cpu", "--server", url])
        assert client.connect(named, None, 1).api_key is None        # named by the user: no announced key either
        assert authorizations == [None]
        authorizations.clear()
    table.write_text(socket_table([("127.0.0.1", port + 1, os.geteuid() + 1), ("127.0.0.1", port, os.geteuid())]))
    assert client.connect(raw, None, 1).api_key == "secret"        # the user's own listener: believed
    assert authorizations == ["Bearer secret"]


@linux_only
def test_the_socket_tables_name_this_users_listener_where_it_listens():
    """Read from the system's own tables: a listener of this process, IPv4 and IPv6, is found under its owner."""
    listeners = []
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        listener = socket.socket(family)
        try:
            listener.bind((address, 0))
        except OSError:         # (no IPv6 here)
            listener.close()
            continue
        listener.listen()
        listeners.append(listener)
    try:
        owners = discovery._listener_owners()
        for listener in listeners:
            address, port = listener.getsockname()[:2]
            assert owners[(address, port)] == {os.geteuid()}
            shown = f"[{address}]" if ":" in address else address
            assert not discovery._listened_on_by_another_user(f"http://{shown}:{port}", owners)
    finally:
        for listener in listeners:
            listener.close()


def socket_table6(rows: list[tuple[str, int, int]]) -> str:
    """/proc/net/tcp6's text for LISTEN sockets at (IPv6 address, port) owned by uid."""
    lines = ["  sl  local_address                         remote_address                        st tx_queue rx_queue "
             "tr tm->when retrnsmt   uid  timeout inode"]
    for i, (address, port, uid) in enumerate(rows):
        packed = socket.inet_pton(socket.AF_INET6, address)
        words = b"".join(packed[k:k + 4][::-1] if sys.byteorder == "little" else packed[k:k + 4] for k in (0, 4, 8, 12))
        lines.append(f"   {i}: {words.hex().upper()}:{port:04X} 00000000000000000000000000000000:0000 0A "
                     f"00000000:00000000 00:00000000 00000000 {uid:>5}        0 {2000 + i} 1 0000000000000000 100 0 0 "
                     f"10 0")
    return "\n".join(lines) + "\n"


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX owners")
def test_a_named_host_that_lands_on_several_users_listeners_gets_nothing(impostor, tmp_path, monkeypatch):
    """`--server http://localhost:PORT` where the user's server took 127.0.0.1 and another user ::1: the client may try
    ::1 first (the resolver's order), and the exported $CODECOMPLETE_API_KEY and the code went to whoever answered.
    Now that is a one-line usage error; a name that lands on one user's listeners (a service user's shared server
    included) is used as before."""
    url, authorizations = impostor
    port = int(url.rpartition(":")[2])
    monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("CODECOMPLETE_API_KEY", "exported")
    tables = tmp_path / "tcp", tmp_path / "tcp6"
    monkeypatch.setattr(discovery, "SOCKET_TABLES", tuple(map(str, tables)))
    resolve = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *rest, **options: [
        *(resolve("::1", *rest, **options) if host == "localhost" else []), *resolve(
            "127.0.0.1" if host == "localhost" else host, *rest, **options)])
    named = build_parser().parse_args(["--prompt", "x", "--device", "cpu", "--server", f"http://localhost:{port}"])
    tables[0].write_text(socket_table([("127.0.0.1", port, os.geteuid())]))
    tables[1].write_text(socket_table6([("::1", port, os.geteuid() + 1)]))
    with pytest.raises(client.UsageError, match="several users"):
        client.connect(named, None, 1)
    assert authorizations == []
    tables[1].write_text(socket_table6([("::1", port + 1, os.geteuid() + 1)]))     # (another port: not where it lands)
    assert client.connect(named, None, 1).api_key == "exported"
    assert authorizations == ["Bearer exported"]
    authorizations.clear()
    tables[0].write_text(socket_table([("127.0.0.1", port, os.geteuid() + 2)]))    # a service user's shared server
    assert client.connect(named, None, 1).api_key == "exported" and authorizations == ["Bearer exported"]
