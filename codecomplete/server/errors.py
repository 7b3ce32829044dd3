"""Errors as clients read them: `{"error": {"code", "message", "type"}}` with the HTTP status llama.cpp and OpenAI
use for it. Every failure becomes one of these (a bug too, as a 500 with a one-line message): no traceback ever
reaches a client, and the server serves on."""
from __future__ import annotations

import json
import sys
from contextvars import ContextVar

from ..errors import classify

# Set for a request of codecomplete's own command line (native.py's routes): its messages name the command's options,
# as the command prints them when it runs alone. Other clients have no such options.
COMMAND_LINE = ContextVar("command_line_request", default=False)

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    414: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",      # Mistral's status for a body its schema refuses (mistral.py), TGI's (tgi.py)
    429: "rate_limit_error",           # TGI's "Model is overloaded" (tgi.py)
    431: "invalid_request_error",
    500: "server_error",
    501: "not_supported_error",
    503: "unavailable_error",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type or TYPES[status]

    def body(self) -> dict:
        return {"error": {"code": self.status, "message": self.message, "type": self.type}}


# Ollama's routes answer errors as Ollama writes them, `{"error": "message"}`: its clients read that shape.
OLLAMA_PREFIX = "/api/"
# Mistral's fill-in-the-middle routes (mistral.py) answer errors as Mistral's API writes them (mistral_body).
MISTRAL_PATHS = ("/v1/fim/completions", "/fim/completions")
# TGI's generate routes (tgi.py) answer errors as text-generation-inference writes them (tgi_body): its own paths, and a
# POST to `/` (its compat route; GET / is Ollama's liveness line) or to `/models/{id}` (the Inference API's, as llm-ls's
# huggingface backend posts; GET there is OpenAI's model lookup).
TGI_PATHS = ("/generate", "/generate_stream", "/info")
# TGI's error_type, by status, for the errors TGI types (its InferError::error_type); it answers the others (401, 404,
# 413, ...) without one, and clients then go by the status.
TGI_TYPES = {422: "validation", 429: "overloaded", 424: "generation", 500: "generation"}


def compact(obj) -> str:
    """One line of JSON without spaces: llama.vim looks for `"content":"` byte for byte. Text stays text (UTF-8 on
    the wire, not \\u escapes), but for a lone surrogate, which is how Python holds a byte of a file or folder name
    that is not UTF-8: raw it cannot be encoded, and every answer naming such a repository (its /codecomplete/v1/info
    too) failed, a 500 and a traceback; it goes as its JSON escape, `\\udcff`, which a client decodes to the same
    name."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:      # (in a JSON string only: json.dumps writes nothing else that is not ASCII)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def error_body(path: str, error: ApiError, method: str = "") -> bytes:
    """An error as the protocol that `path` (with `method`, where two protocols share a path) speaks writes it, as one
    line of JSON."""
    if path.startswith(OLLAMA_PREFIX):
        shaped = {"error": error.message}
    elif path in MISTRAL_PATHS:
        shaped = mistral_body(error)
    elif path in TGI_PATHS or (method == "POST" and (path == "/" or path.startswith("/models/"))):
        shaped = tgi_body(error)
    else:
        shaped = error.body()
    return compact(shaped).encode()


def mistral_body(error: ApiError) -> dict:
    """An error as Mistral's API writes it (`{"object": "error", "message", "type", "param", "code"}`, its 400s and
    422s as clients quote them); the status is the HTTP response's."""
    return {"object": "error", "message": error.message, "type": error.type, "param": None, "code": None}


def tgi_body(error: ApiError, error_type: str | None = None) -> dict:
    """An error as text-generation-inference writes it, `{"error": message, "error_type": ...}` (its ErrorResponse;
    the clients raise ValidationError, OverloadedError, GenerationError by the type), the type left out where TGI
    gives none."""
    error_type = error_type or TGI_TYPES.get(error.status)
    return {"error": error.message, **({"error_type": error_type} if error_type else {})}


def api_error(exc: BaseException) -> ApiError:
    """The client's view of a failure: bad input is a 400 with the message the command line would print, a
    model that cannot run it a 500; anything unexpected a 500 that names the exception."""
    from .worker import Busy

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, Busy):
        return ApiError(503, str(exc))
    models = sys.modules.get("models")
    if models is not None and isinstance(exc, models.ContextTooLongError):
        return ApiError(400, str(exc), "exceed_context_size_error")
    known = classify(exc, options=COMMAND_LINE.get())
    if known is None:
        return ApiError(500, f"internal error: {type(exc).__name__}: {exc}")
    code, message = known
    return ApiError(400 if code == 2 else 500, message)
