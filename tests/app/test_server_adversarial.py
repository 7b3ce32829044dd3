"""`codecomplete serve` against hostile and broken clients, on a real socket: clients that send their request
slowly or never finish it, a stop signal while bodies are still arriving or while a stream's client reads nothing,
requests whose answers take heavy tokenizer work, and bodies other servers accept. Each answer is the protocol's
own error shape with its status, and the server serves on (or, stopped, ends promptly and cleanly)."""
import json
import os
import select
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest
from server_process import ServerProcess

from codecomplete.server.serve import REQUEST_S


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


def _read_response(connection: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP response off the socket (a body with Content-Length): status, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def dribble(url: str, first: bytes, drip: bytes = b"", every: float = 1.0, before: bytes = b"",
            limit: float = 3 * REQUEST_S, pipelined: bool = False) -> dict:
    """Send `before` (a whole request, whose answer is read: the connection is then a kept-alive one), then `first`,
    then `drip` every `every` seconds (nothing where it is empty) until the server answers or closes; the answer,
    the seconds from `first` to it, and whether the server closed the connection after it. `pipelined`: `first`
    begins with a whole request, whose answer is read first."""
    with socket.create_connection(_address(url), timeout=limit) as connection:
        if before:
            connection.sendall(before)
            assert _read_response(connection)[0] == 200
        started = time.monotonic()
        connection.sendall(first)
        if pipelined:
            assert _read_response(connection)[0] == 200
        while time.monotonic() - started < limit:
            if select.select([connection], [], [], every)[0]:
                break
            try:
                if drip:
                    connection.sendall(drip)
            except OSError:
                break
        status, headers, body = _read_response(connection)
        took = time.monotonic() - started
        connection.settimeout(5)
        try:
            closed = connection.recv(1) == b""
        except (TimeoutError, ConnectionError):
            closed = False
        return {"status": status, "headers": headers, "body": json.loads(body), "took": took, "closed": closed}


HEAD = b"Host: localhost\r\nContent-Type: application/json\r\n"


def test_slow_requests_get_408_in_their_protocol_s_shape_and_free_their_connection(server):
    """Slowloris: a request whose headers or body come a byte at a time (or stop coming) held its connection, and
    a coroutine, for good: each now ends REQUEST_S after its first byte with a 408, in the shape of the protocol
    its path speaks (Ollama's routes `{"error": "..."}`, including on a kept-alive connection whose earlier request
    was another protocol's), and the connection closes."""
    health = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
    version = b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n"
    clients = {
        "headers": dict(first=b"POST /completion HTTP/1.1\r\n" + HEAD, drip=b"X-Slow: 1\r\n"),
        "body": dict(first=b"POST /completion HTTP/1.1\r\n" + HEAD + b"Content-Length: 500\r\n\r\n{\"prompt\"",
                     drip=b" "),
        "ollama body": dict(first=b"POST /api/generate HTTP/1.1\r\n" + HEAD + b"Content-Length: 500\r\n\r\n{"),
        "ollama headers": dict(first=b"POST /api/chat HTTP/1.1\r\n" + HEAD, drip=b"X-Slow: 1\r\n"),
        "ollama after health": dict(before=health, first=b"POST /api/generate HTTP/1.1\r\n" + HEAD),
        "openai after ollama": dict(before=version, first=b"POST /v1/completions HTTP/1.1\r\n" + HEAD),
        "request line": dict(first=b"POST /api/gen", drip=b"e"),
        # pipelined behind a whole request: h11 holds it until the first is answered, when uvicorn starts it
        "pipelined": dict(first=b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\nPOST /completion HTTP/1.1\r\n" + HEAD
                          + b"Content-Length: 500\r\n\r\n{", pipelined=True),
    }
    answers = {}

    def run(name, options):
        try:
            answers[name] = dribble(server.url, **options)
        except Exception as exc:       # (reported below)
            answers[name] = exc
    threads = [threading.Thread(target=run, args=item) for item in clients.items()]
    for thread in threads:
        thread.start()
    time.sleep(1)
    slowest = 0.0
    while any(thread.is_alive() for thread in threads):       # the event loop answers others meanwhile
        started = time.monotonic()
        assert httpx.get(server.url + "/health", timeout=60).status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.2)
    assert slowest < 2, slowest
    for name, answer in answers.items():
        assert isinstance(answer, dict), (name, answer)
        assert answer["status"] == 408 and answer["closed"], (name, answer)
        assert REQUEST_S - 1 < answer["took"] < REQUEST_S + 5, (name, answer)
        assert answer["headers"]["content-type"] == "application/json", (name, answer)
        error = answer["body"]["error"]
        if name in ("ollama body", "ollama headers", "ollama after health", "request line"):
            assert isinstance(error, str) and "in time" in error, (name, answer)
        else:
            assert error["code"] == 408 and "in time" in error["message"], (name, answer)
    assert httpx.post(server.url + "/completion", json={"prompt": "x", "n_predict": 1},
                      timeout=300).status_code == 200
    assert "Traceback" not in server.log()


def test_a_json_body_may_begin_with_a_utf8_bom(server):
    """A body that starts with a UTF-8 byte order mark (Windows tools write one) is read as llama.cpp's server reads
    it (nlohmann::json skips one BOM at the start of its input, and refuses it anywhere else)."""
    bom = b"\xef\xbb\xbf"
    for path, body in [("/completion", {"prompt": "x", "n_predict": 1}),
                       ("/api/generate", {"prompt": "x", "stream": False, "options": {"num_predict": 1}}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})]:
        response = httpx.post(server.url + path, content=bom + json.dumps(body).encode(),
                              headers={"Content-Type": "application/json"}, timeout=300)
        assert response.status_code == 200, (path, response.text)
    for data in (bom + bom + b'{"prompt": "x"}', b'{"prompt": "x"}' + bom, b"\xff\xfe{}"):
        response = httpx.post(server.url + "/completion", content=data, timeout=300)
        assert response.status_code == 400 and response.json()["error"]["code"] == 400, (data, response.text)


def _loop_free_while(server, post) -> tuple[float, float]:
    """The longest /health while `post()` runs, and how long `post()` took."""
    took = {}

    def request():
        started = time.monotonic()
        post()
        took["post"] = time.monotonic() - started
    thread = threading.Thread(target=request)
    thread.start()
    slowest = 0.0
    while thread.is_alive():
        started = time.monotonic()
        httpx.get(server.url + "/health", timeout=300).raise_for_status()
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.02)
    thread.join()
    return slowest, took["post"]


def test_n_probs_of_a_whole_answer_are_built_off_the_event_loop(server):
    """llama.cpp's n_probs up to the vocabulary: the answer's completion_probabilities (a token's text for each of
    49,152 alternatives per token) were built on the event loop, 4-6 s on two cores during which nothing else was
    answered."""
    vocabulary = 49152

    def post():
        response = httpx.post(server.url + "/completion", json={
            "prompt": "def main():", "n_predict": 4, "n_probs": vocabulary, "ignore_eos": True}, timeout=300)
        assert response.status_code == 200
        probabilities = response.json()["completion_probabilities"]
        assert len(probabilities) == 4 and all(len(p["top_logprobs"]) == vocabulary for p in probabilities)
    slowest, took = _loop_free_while(server, post)
    # Built on the loop, one /health waited out the whole build (slowest ~ took). Off it, the loop still shares the
    # GIL with the engine thread's Python work and answers in turns: 0.30 of took seen under the CI's load.
    assert slowest < took / 2, (slowest, took)


def test_a_logit_bias_of_text_is_tokenized_off_the_event_loop(server):
    """llama.cpp's logit_bias may name tokens by text, tokenized: a body near the size limit took 1-2 s of the event
    loop's time before the request was even queued."""
    text = "def f(x):\n    return x * 2  # twice\n" * 24_000

    def post():
        response = httpx.post(server.url + "/completion", json={
            "prompt": "x", "n_predict": 1, "logit_bias": [[text, -0.5]]}, timeout=300)
        assert response.status_code == 200, response.text
    slowest, took = _loop_free_while(server, post)
    assert slowest < took / 2, (slowest, took)     # (as for n_probs above: the GIL is shared)
    # still checked: a bad entry next to text is a 400 naming it, and the server serves on
    response = httpx.post(server.url + "/completion", json={
        "prompt": "x", "n_predict": 1, "logit_bias": [["def", -1], [10 ** 9, 1]]}, timeout=300)
    assert response.status_code == 400 and "logit_bias" in response.json()["error"]["message"]


def test_a_stop_answers_bodies_still_arriving_503_and_drops_streams_nobody_reads(script, cli_env, served_repo,
                                                                                 tmp_path):
    """SIGTERM while requests' bodies were still arriving: uvicorn waited out its grace period, cancelled them and
    answered a text/plain 500 with a traceback in the log; now each gets a 503 at once in its protocol's shape. A
    stream whose client reads nothing (its writes paused) held the shutdown as long: it is dropped."""
    process = ServerProcess(script, served_repo, cli_env, tmp_path, "--context-tokens", "256")
    answers = {}
    try:
        address = _address(process.url)
        quiet = socket.socket()
        quiet.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        quiet.connect(address)
        body = json.dumps({"prompt": "def main():", "n_predict": 200, "ignore_eos": True, "stream": True,
                           "n_probs": 20_000}).encode()
        quiet.sendall(b"POST /completion HTTP/1.1\r\n" + HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(4)                   # megabytes of chunks: its writes are paused
        halves = {"llama.cpp": b"POST /completion HTTP/1.1\r\n" + HEAD + b"Content-Length: 500\r\n\r\n{\"prompt\"",
                  "ollama": b"POST /api/generate HTTP/1.1\r\n" + HEAD + b"Content-Length: 500\r\n\r\n{"}
        connections = {name: socket.create_connection(address, timeout=60) for name in halves}
        for name, data in halves.items():
            connections[name].sendall(data)
        time.sleep(0.5)
        started = time.monotonic()
        code = process.stop(signal.SIGTERM, timeout=60)
        took = time.monotonic() - started
        for name, connection in connections.items():
            answers[name] = _read_response(connection)
            connection.close()
        quiet.close()
    finally:
        process.kill()
    log = process.log()
    assert code == 0 and "Traceback" not in log and "timeout graceful shutdown exceeded" not in log, log
    assert took < 15, took      # (the log says it: no task was left to uvicorn's grace period to cancel)
    status, headers, data = answers["llama.cpp"]
    error = json.loads(data)["error"]
    assert status == 503 and error["code"] == 503 and "shutting down" in error["message"], answers
    status, headers, data = answers["ollama"]
    assert status == 503 and "shutting down" in json.loads(data)["error"], answers


def test_a_request_that_is_not_http_gets_a_json_400_in_its_route_s_shape(server):
    """uvicorn answers what h11 cannot parse with a text/plain 400; clients (and the standards here) read JSON."""
    for data, ollama in [(b"GARBAGE\r\n\r\n", False),
                         (b"POST /completion HTTP/1.1\r\nHost: localhost\r\nContent-Length: x\r\n\r\n", False),
                         (b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n", True)]:
        with socket.create_connection(_address(server.url), timeout=30) as connection:
            connection.sendall(data)
            status, headers, body = _read_response(connection)
        error = json.loads(body)["error"]
        assert status == 400 and headers["content-type"] == "application/json", (data[:40], body)
        assert isinstance(error, str) if ollama else error["code"] == 400, (data[:40], body)
        assert "not valid HTTP" in (error if ollama else error["message"]), body
    assert httpx.get(server.url + "/health").status_code == 200


def test_a_request_answered_before_its_body_came_cannot_hold_its_connection(server):
    """A request answered at once (a wrong method: 405) whose body then comes a byte a second: each byte put off the
    kept-alive connection's 5 s clock, so the connection stayed open for good; the request's clock closes it."""
    with socket.create_connection(_address(server.url), timeout=60) as connection:
        connection.sendall(b"POST /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n{")
        assert _read_response(connection)[0] == 405
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 3 * REQUEST_S:
            if select.select([connection], [], [], 1)[0]:
                closed = connection.recv(1) == b""
                break
            connection.sendall(b" ")
        assert closed and time.monotonic() - started < REQUEST_S + 5


def test_concurrent_tokenize_requests_each_get_their_own_reading_of_special_tokens(server):
    """/tokenize runs in a thread pool, and its threads shared one fast tokenizer, whose `encode_special_tokens` is
    state each call sets: with parse_special true and false at once, a request got the other's reading (5 of 45
    false ones answered as true, seen)."""
    content = "x<|endoftext|>y " * 2000
    expected = {special: len(httpx.post(server.url + "/tokenize", json={"content": content, "parse_special": special},
                                        timeout=120).json()["tokens"]) for special in (True, False)}
    assert expected[True] < expected[False]
    wrong = []

    def tokenize(special: bool) -> None:
        for _ in range(10):
            tokens = httpx.post(server.url + "/tokenize", json={"content": content, "parse_special": special},
                                timeout=120).json()["tokens"]
            if len(tokens) != expected[special]:
                wrong.append((special, len(tokens)))
    threads = [threading.Thread(target=tokenize, args=(i % 2 == 0,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong, wrong


def test_nan_and_infinity_literals_are_not_json(server):
    """Python's json reads NaN, Infinity and -Infinity, which JSON has not (llama.cpp's nlohmann::json refuses them):
    in a field no model checks (an Ollama `format` schema, a chat's `response_format`) they passed as numbers."""
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        for path, data in [("/completion", b'{"prompt": "x", "n_predict": 1, "extra": %s}' % literal),
                           ("/api/generate", b'{"prompt": "x", "stream": false, "format": {"max": %s}}' % literal)]:
            response = httpx.post(server.url + path, content=data, timeout=300)
            error = response.json()["error"]
            assert response.status_code == 400, (path, literal, response.text)
            assert "JSON" in (error if path.startswith("/api/") else error["message"]), response.text


def _send_head(url: str, data: bytes, piece: int | None = None) -> tuple[int, dict, bytes, bool]:
    """Send `data` at once, or `piece` bytes at a time until the server answers (h11 then holds the head unparsed
    until it is too long, where at once it parses whatever one read of the socket brings); the answer, and whether
    the server closed the connection after it."""
    with socket.create_connection(_address(url), timeout=30) as connection:
        try:
            if piece is None:
                connection.sendall(data)
            else:
                for start in range(0, len(data), piece):
                    if select.select([connection], [], [], 0.002)[0]:      # answered already
                        break
                    connection.sendall(data[start:start + piece])
        except OSError:       # (the server closed as the rest came: its answer is still there to read)
            pass
        status, headers, body = _read_response(connection)
        try:
            closed = connection.recv(1) == b""
        except ConnectionError:
            closed = True
        return status, headers, body, closed


def test_a_head_over_the_limits_is_431_or_a_url_414_in_the_route_s_shape(server):
    """A header of 100 KB, or 300 headers of 30 KB together, got a 200 when they came in one read of the socket and
    a 400 "not valid HTTP" when they came in pieces (h11 holds 16 KiB unparsed); a 100 KB URL the same. Now the head
    (request line and headers) may take MAX_HEAD_BYTES and the URL MAX_TARGET_BYTES (cpp-httplib's, llama.cpp's
    server's), however it arrives: past them a 431 or a 414 in the route's shape, the connection closed, and the
    server serves on."""
    from codecomplete.server.app import MAX_HEAD_BYTES, MAX_TARGET_BYTES

    host = b"Host: localhost\r\n"
    one_header = b"X-Big: " + b"a" * 100_000 + b"\r\n"
    many_headers = b"".join(b"X-Header-%d: %s\r\n" % (i, b"b" * 100) for i in range(300))
    cases = {
        "one header": (b"GET /health HTTP/1.1\r\n" + host + one_header + b"\r\n", 431),
        "many headers": (b"GET /health HTTP/1.1\r\n" + host + many_headers + b"\r\n", 431),
        "just over": (b"GET /health HTTP/1.1\r\n" + host + b"X-Big: " + b"c" * MAX_HEAD_BYTES + b"\r\n\r\n", 431),
        "a body's": (b"POST /completion HTTP/1.1\r\n" + host + many_headers + b"Content-Length: 2\r\n\r\n{}", 431),
        "ollama": (b"POST /api/generate HTTP/1.1\r\n" + host + one_header + b"Content-Length: 2\r\n\r\n{}", 431),
        "long url": (b"GET /health?q=" + b"q" * 100_000 + b" HTTP/1.1\r\n" + host + b"\r\n", 414),
        "url over": (b"GET /v1/models?q=" + b"q" * MAX_TARGET_BYTES + b" HTTP/1.1\r\n" + host + b"\r\n", 414),
        "ollama url": (b"GET /api/tags?q=" + b"q" * 100_000 + b" HTTP/1.1\r\n" + host + b"\r\n", 414),
    }
    for name, (data, expected) in cases.items():
        for piece in (None, 1000):
            status, headers, body, closed = _send_head(server.url, data, piece)
            assert (status, closed) == (expected, True), (name, piece, status, body[:200])
            assert headers["content-type"] == "application/json", (name, piece, headers)
            error = json.loads(body)["error"]
            if name.startswith("ollama"):
                assert isinstance(error, str) and ("header" in error if expected == 431 else "URL" in error), error
            else:
                assert error["code"] == expected and error["type"] == "invalid_request_error", (name, error)
                assert ("header" if expected == 431 else "URL") in error["message"], (name, error)
    # within the limits: served, whether they come at once or in pieces
    within = b"X-Fine: " + b"d" * (MAX_HEAD_BYTES - 1024) + b"\r\n"
    for data in (b"GET /health HTTP/1.1\r\n" + host + within + b"Connection: close\r\n\r\n",
                 b"GET /health?q=" + b"e" * (MAX_TARGET_BYTES - len(b"/health?q=")) + b" HTTP/1.1\r\n" + host
                 + b"Connection: close\r\n\r\n"):
        for piece in (None, 1000):
            assert _send_head(server.url, data, piece)[0] == 200
    assert httpx.post(server.url + "/completion", json={"prompt": "x", "n_predict": 1}, timeout=300).status_code == 200
    assert "Traceback" not in server.log()


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the server's memory from /proc")
def test_a_stream_whose_client_reads_nothing_is_stopped_with_bounded_memory(server):
    """A client that opens a stream and reads nothing, its connection open: the engine ran the generation to its
    last token, the events it made piling up behind uvicorn's paused send (150 tokens with n_probs 20,000: 1.5 GB,
    25 s of the engine). Now the engine thread waits for room among MAX_UNREAD unread events, then stops the
    generation after STALL_S; the server serves others meanwhile, and a client that reads at last finds the stream
    ended by a 408 error event, never passing for a whole answer."""
    from codecomplete.server.worker import MAX_UNREAD, STALL_S

    n_predict = 200
    mark = len(server.log())
    before = _rss_bytes(server.process.pid)
    quiet = socket.socket()
    quiet.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    quiet.connect(_address(server.url))
    try:
        body = json.dumps({"prompt": "def main():", "n_predict": n_predict, "ignore_eos": True, "stream": True,
                           "n_probs": 20_000}).encode()
        quiet.sendall(b"POST /completion HTTP/1.1\r\n" + HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        started = time.monotonic()
        summary = None
        while summary is None and time.monotonic() - started < 120:        # the request's line in the log
            time.sleep(0.2)
            lines = server.log()[mark:].splitlines()
            # the line before the engine's "stopped" line (the engine thread writes both), or one of all its tokens
            summary = next((before for before, line in zip(lines, lines[1:]) if "read none of the stream" in line),
                           next((line for line in lines if f" · {n_predict} tokens · " in line), None))
        grown = _rss_bytes(server.process.pid) - before
        generated = int(summary.split(" tokens · ")[0].rsplit(" ", 1)[1])
        assert generated < MAX_UNREAD + 20 and summary.endswith("cancelled"), summary
        assert f"read none of the stream for {STALL_S:g} s" in server.log()[mark:]
        assert grown < 512 * 2**20, grown
        assert time.monotonic() - started < STALL_S + 30
        response = httpx.post(server.url + "/completion", json={"prompt": "x", "n_predict": 1}, timeout=60)
        assert response.status_code == 200
        quiet.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)     # (a window under a segment crawls)
        quiet.settimeout(30)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):             # the client reads at last: the stream's end
            chunk = quiet.recv(1 << 20)
            assert chunk, data[-300:]
            data += chunk
        last = data.rstrip(b"\r\n0").rsplit(b"data: ", 1)[1]
        assert b'"code":408' in last and b"read none of the stream" in last, last[-300:]
    finally:
        quiet.close()
    assert httpx.get(server.url + "/health").status_code == 200
    assert "Traceback" not in server.log()


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="reads the connection's state from TCP_INFO (Linux)")
def test_a_stream_s_client_that_goes_on_reading_nothing_is_dropped(server):
    """The generation stopped, a client that still reads nothing held its connection, its coroutine and the events
    it left unread for as long as it kept the socket open: STALL_S after the stop it is dropped."""
    from codecomplete.server.worker import STALL_S

    mark = len(server.log())
    quiet = socket.socket()
    quiet.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    quiet.connect(_address(server.url))
    try:
        body = json.dumps({"prompt": "def main():", "n_predict": 200, "ignore_eos": True, "stream": True,
                           "n_probs": 20_000}).encode()
        quiet.sendall(b"POST /completion HTTP/1.1\r\n" + HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        started = time.monotonic()
        while "read none of the stream" not in server.log()[mark:] and time.monotonic() - started < 120:
            time.sleep(0.1)
        stopped = time.monotonic()
        established = lambda: quiet.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 1  # noqa: E731
        assert established()                    # (read nothing, and the server has not closed it)
        while established() and time.monotonic() - stopped < STALL_S + 10:
            time.sleep(0.1)
        took = time.monotonic() - stopped
        assert not established() and STALL_S - 0.5 < took < STALL_S + 5, took
    finally:
        quiet.close()
    assert httpx.post(server.url + "/completion", json={"prompt": "x", "n_predict": 1}, timeout=60).status_code == 200
    assert "Traceback" not in server.log()


def test_a_mirostat_target_past_float32_s_range_is_an_answer_not_a_500(server):
    """llama.cpp reads mirostat_tau into a C float, where 1e300 is infinite; the engine built its mu with torch.full,
    which refused the value ("cannot be converted to type float without overflow"): a 500 on every route with
    mirostat, for a request within each API's bounds. The server answers, and serves on."""
    from openai import OpenAI

    for tau in (1e300, -1e300, 3.5e38):
        response = httpx.post(server.url + "/completion", json={"prompt": "def f(x):", "n_predict": 3, "mirostat": 2,
                                                                "mirostat_tau": tau, "temperature": 0.7}, timeout=300)
        assert response.status_code == 200, (tau, response.text)
        assert response.json()["tokens_predicted"] >= 1
        response = httpx.post(server.url + "/api/generate", timeout=300, json={
            "model": "m", "prompt": "def f(x):", "stream": False,
            "options": {"num_predict": 3, "mirostat": 1, "mirostat_tau": tau, "temperature": 0.7}})
        assert response.status_code == 200, (tau, response.text)
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    completion = client.completions.create(model="m", prompt="def f(x):", max_tokens=3, temperature=0.5,
                                           extra_body={"mirostat": 1, "mirostat_tau": 1e300, "mirostat_eta": 1e300})
    assert completion.choices[0].finish_reason in ("length", "stop")
    assert httpx.get(server.url + "/health", timeout=30).json()["status"] == "ok"


def test_an_integer_too_long_to_read_is_a_400_that_names_no_python_call(server):
    """Python refuses to convert an integer of more than 4,300 digits; its message (which the 400 quoted) tells
    the reader to call sys.set_int_max_str_digits(), advice for the server's code, not for the client."""
    response = httpx.post(server.url + "/completion", content=b'{"prompt": "x", "n_predict": ' + b"1" * 5000 + b"}",
                          headers={"Content-Type": "application/json"}, timeout=300)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "digits" in message and "sys." not in message and "set_int_max_str_digits" not in message, message


def test_completion_takes_llama_cpp_s_array_of_one_prompt_and_says_what_it_refuses(server):
    """llama.cpp's /completion takes `prompt` as an array of prompts (`["text"]`, `[[ids]]`) or as one prompt mixing
    text and ids. `["text"]` was a 400 `prompt[0]: Input should be a valid integer`, blaming the text for not being a
    number; now an array of one prompt is that prompt (the same answer as the prompt alone), and several prompts or a
    mix are refused by name."""
    def post(prompt):
        return httpx.post(server.url + "/completion", json={"prompt": prompt, "n_predict": 4, "temperature": 0},
                          timeout=300)

    ids = httpx.post(server.url + "/tokenize", json={"content": "def area(r):"}, timeout=60).json()["tokens"]
    for alone, wrapped in [("def area(r):", ["def area(r):"]), (ids, [ids])]:
        expected, got = post(alone), post(wrapped)
        assert expected.status_code == got.status_code == 200, got.text
        assert got.json()["content"] == expected.json()["content"], got.text
        assert got.json()["tokens_evaluated"] == expected.json()["tokens_evaluated"]
    for prompt, words in [(["a", "b"], "one prompt per request, got 2"), ([ids, ids], "one prompt per request"),
                          (["def f(", ids[0]], "text and token ids"), ([[10 ** 9]], "outside the vocabulary")]:
        response = post(prompt)
        assert response.status_code == 400 and words in response.json()["error"]["message"], (prompt, response.text)


def test_the_command_line_s_raw_route_answers_an_empty_prompt_400(server):
    """The command line refuses `--prompt ""` itself, but its route is a route like any other: an empty prompt
    reached the engine, whose ModelError made it a 500 (a server error for the client's mistake), where
    /completion and /v1/completions answer 400 "the prompt is empty"."""
    response = httpx.post(server.url + "/codecomplete/v1/raw", json={"prompt": "", "max_tokens": 2}, timeout=300)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == "the prompt is empty"
    assert httpx.get(server.url + "/health", timeout=30).json()["status"] == "ok"
