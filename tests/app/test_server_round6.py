"""`codecomplete serve` against the adversarial sweep's sixth round (bench/results/NOTES.md), on a real server and
its real socket."""
import httpx


def test_nan_and_infinity_are_named_not_taken_for_a_long_integer(server):
    """NaN, Infinity and -Infinity (Python's json reads them, JSON has not) were refused with the message of an
    integer of more than 4,300 digits: a Tabby snippet's `score` or a `temperature` written by a client's float
    formatter as `Infinity` sent its author looking for a long number. The 400 names the literal."""
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        for path, data in [
                ("/v1/completions", b'{"segments": {"prefix": "x"}, "temperature": %s}' % literal),
                ("/completion", b'{"prompt": "x", "n_predict": 1, "temperature": %s}' % literal),
                ("/api/generate", b'{"model": "m", "prompt": "x", "options": {"temperature": %s}}' % literal)]:
            response = httpx.post(server.url + path, content=data, timeout=300,
                                  headers={"Content-Type": "application/json"})
            assert response.status_code == 400, (path, literal, response.text)
            error = response.json()["error"]
            message = error if path.startswith("/api/") else error["message"]
            assert literal.decode() in message and "digits" not in message, (path, message)
    assert httpx.get(server.url + "/health", timeout=30).json()["status"] == "ok"
