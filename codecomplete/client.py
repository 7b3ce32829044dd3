"""The command line's use of a running `codecomplete serve`: the same session operations, run on the server.

`connect` finds a server for the repository (--server URL, $CODECOMPLETE_SERVER, or one that announced itself in
the user runtime directory) whose model and settings give what this process would give, and returns a
`RemoteSession`; None means "run in process" (no server, --no-server, or an announced server that would answer
differently: a named one that would is a usage error).
A RemoteSession has the Session's interface: `complete`, `chat` and `raw` return a Generation whose prompt the
server built, and whose `run(on_text, should_stop)` streams the server's text and returns its result, so the
commands print the same bytes either way. Ctrl-C (or a closed pipe) asks the server to cancel, and the partial
result still arrives, as in process.

Standard library only (http.client): the command line stays quick to start.
"""
from __future__ import annotations

import functools
import hashlib
import http.client
import json
import os
import re
import sys
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from .errors import UNENCODABLE, AppError, UsageError
from .session import Generation, Sampling

SERVER_ENV = "CODECOMPLETE_SERVER"
API_KEY_ENV = "CODECOMPLETE_API_KEY"
PROTOCOL = "/codecomplete/v1"
CONNECT_TIMEOUT_S = 2.0
KV_CACHE_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}    # --kv-cache as engines name it
# Request options the protocol took on after its first version: a server from before one drops it unread (its bodies
# ignore unknown fields) and answers as if it were left out, so only a server that announces it ("options") is used.
LATER_OPTIONS = ("speculate",)
# The packages whose code decides what a server prints (setuptools installs them side by side), and the files of
# theirs that do: the sources, and the launch plans measured per card.
PACKAGES = ("codecomplete", "prompts", "models", "kernels")
BUILD_FILES = ("*.py", "*.json")
# The installed distributions whose code decides it too: the math and the kernels, the tokenizer, the chat templates'
# engine, and the parsers that chunk the repository (tree-sitter and every grammar prompts/languages.py loads).
DEPENDENCIES = ("torch", "triton", "transformers", "tokenizers", "jinja2", "tree-sitter", "tree-sitter-python",
                "tree-sitter-javascript", "tree-sitter-typescript", "tree-sitter-go", "tree-sitter-rust",
                "tree-sitter-c", "tree-sitter-cpp", "tree-sitter-java")


@dataclass(frozen=True)
class EngineInfo:
    """The server's engine, as far as the command line shows it."""

    name: str
    device: str
    dtype: str
    attention: str
    context_length: int
    model_max_positions: int
    load_s: float
    matmul_dtype: str = ""          # the projections' weights' (a server before it: the dtype's)


def engine_info(engine: dict) -> EngineInfo:
    """The server's announced engine (KeyError where a field without a default is missing)."""
    return EngineInfo(**{f.name: engine[f.name] for f in fields(EngineInfo) if f.default is MISSING or f.name in engine})


def connect(args, root: Path | None = None, max_new_tokens: int = 0, file: str | None = None) -> RemoteSession | None:
    """A server that prints what this process would, or None; `file`: the request's file, relative to `root`."""
    if getattr(args, "no_server", False):
        return None
    url = getattr(args, "server", None) or os.environ.get(SERVER_ENV)
    unsendable = _unsendable(file)
    if url and unsendable:
        raise UsageError(f"the server at {url} {unsendable}")
    if unsendable:      # completed alone, as it prints alone
        return None
    if url:   # named by the user: it must do, or it is an error
        if _address(url) is None:       # said as the user gave it: the option, or the variable
            named = f"--server {url}" if getattr(args, "server", None) else f"${SERVER_ENV}={url}"
            raise UsageError(f"{named}: {URL_RULE}")
        from .server.discovery import listeners_of

        # A server named is used whoever runs it (a service user's, on a shared machine), but not where the name
        # lands on the listeners of several users: which one answers is the resolver's order, not the user's choice.
        if len(listeners_of(*_address(url))) > 1:
            raise UsageError(f"the server at {url}: several users of this machine listen where it points; name the "
                             f"address of the one to use (127.0.0.1 or [::1])")
        key = _announced_key(url) or os.environ.get(API_KEY_ENV)
        if key is not None and not sendable_key(key):      # (httpx's header encoding raised: an internal error)
            raise UsageError(f"${API_KEY_ENV} must be {KEY_RULE}")
        info = _get_info(url, key)
        problem = unusable(info, args, root, max_new_tokens)
        if problem:
            raise UsageError(f"the server at {url} {problem}")
        return RemoteSession(url, info, key, args.context_tokens)
    from .server.discovery import running_servers

    for announced in running_servers():
        if unusable(announced, args, root, max_new_tokens) is None:
            try:
                info = _get_info(announced["url"], announced.get("api_key"))
            except AppError:
                continue         # announced but not answering (starting, or stuck): run in process
            # The file may outlive its server (killed, its process id reused) while another program, or a server
            # for another repository, took the port: what answers must fit too.
            if unusable(info, args, root, max_new_tokens) is None:
                return RemoteSession(announced["url"], info, announced.get("api_key"), args.context_tokens)
    return None


KEY_RULE = "printable ASCII without spaces (it travels in an HTTP header)"
URL_RULE = "expected http://HOST:PORT or HOST:PORT"


def sendable_key(key: str) -> bool:
    """Whether an API key can travel in a header: HTTP carries a header's bytes as Latin-1, and clients (the openai
    package, httpx) refuse anything else; a space or a control character would end or split it."""
    return key.isascii() and key.isprintable() and " " not in key


def _unsendable(file: str | None) -> str | None:
    """Why a request for `file` cannot go to a server (None: it can): a name that is not UTF-8 (os holds its bytes as
    lone surrogates) reaches it with U+FFFD in their place, the name of another file, or of none. So does one this
    process reads in another encoding (a Latin-1 locale reads the UTF-8 `naïve.py` as `naÃ¯ve.py`): the server takes
    names as UTF-8, so only a name whose bytes here are its UTF-8 is sent."""
    try:
        same = os.fsencode(file or "") == (file or "").encode("utf-8")
    except UnicodeEncodeError:
        same = False
    if not same:
        return f"cannot take the file name {file}, which is not UTF-8 here: run without it (--no-server)"
    return None


def _announced_key(url: str) -> str | None:
    """The API key of the server that announced itself at `url` (the same host and port), in a runtime file that
    discovery believes; None where none did: the key goes to the server it belongs to, never elsewhere."""
    from .server.discovery import running_servers

    address = _address(url)
    for announced in running_servers() if address is not None else ():
        if _address(str(announced.get("url", ""))) == address:
            return announced.get("api_key")
    return None


def unusable(info: dict, args, root: Path | None, max_new_tokens: int) -> str | None:
    """Why this server is not to be used for this command (None: it is): it runs other code, or would print other
    text than this process (`mismatch`); asked of a server's runtime record and again of what answers at its URL."""
    return other_build(info) or mismatch(info, args, root, max_new_tokens)


def other_build(info: dict) -> str | None:
    """Why this server runs other code than this command line (None: the same). A server started before an upgrade
    (`pip install -U`, a `git pull` in a checkout) keeps the code it imported: its prompts (ranking, chunking) and its
    decoding may differ from this version's, under the same version number and options."""
    served = info.get("build")
    if served == build():
        return None
    older = "an older version of codecomplete" if served is None else "other code than this command line"
    return f"runs {older} (started before an upgrade? restart it)"


@functools.cache
def build() -> str:
    """A digest of the code this process would run, as it is on disk: this project's sources and plans, and the
    versions of the dependencies that shape its answers (`pip install -U transformers` beside a running server gives
    this command line another tokenizer). A server takes it as it starts, before the model loads; a command line only
    when a server is there to compare with (~7 ms, on the 2-core CPU)."""
    versions = "\0".join(f"{name}={dependency_version(name)}" for name in DEPENDENCIES)
    return hashlib.sha256(f"{digest_of(Path(__file__).resolve().parents[1])}\0{versions}".encode()).hexdigest()[:16]


def dependency_version(name: str) -> str | None:
    """The installed version of distribution `name` (None: not installed), as the first `NAME-VERSION.dist-info`
    folder on the import path names it: what `importlib.metadata.version` reads, without its ~30 ms import."""
    return _installed_versions().get(_normalized(name))


@functools.cache
def _installed_versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for folder in sys.path:
        try:
            entries = os.listdir(folder or ".")
        except OSError:     # (a zip on the path, a folder gone)
            continue
        for entry in entries:
            if entry.endswith(".dist-info"):
                name, _, version = entry.removesuffix(".dist-info").partition("-")
                found.setdefault(_normalized(name), version)    # (the first on the path is the one imported)
    return found


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def digest_of(top: Path) -> str:
    """A digest of the files (`BUILD_FILES`) of the packages that lie in `top`."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted(path for pattern in BUILD_FILES for path in (top / package).rglob(pattern)):
            try:
                data = path.read_bytes()
            except OSError:     # (removed this moment by an upgrade under way, or unreadable: it counts as such)
                data = b"\0unread"
            digest.update(f"{path.relative_to(top).as_posix()}\0{len(data)}\0".encode())
            digest.update(data)
    return digest.hexdigest()[:16]


def mismatch(info: dict, args, root: Path | None, max_new_tokens: int) -> str | None:
    """Why this server would not print what this process would (None: it would)."""
    if root is not None and not _same_folder(info.get("repo"), root):
        return f"serves {info.get('repo')}, not {root}"
    wanted = model_spec(args.model or os.environ.get("CODECOMPLETE_MODEL"))
    if wanted != model_spec(info.get("model_spec")):
        return f"runs {info.get('model_spec') or 'the embedded model'}, not {wanted or 'the embedded model'}"
    spm = bool(getattr(args, "spm_infill", False))
    if getattr(args, "file", None) is not None and bool(info.get("spm_infill")) != spm:   # (other prompts: the same)
        return (f"lays infill prompts out {'suffix' if info.get('spm_infill') else 'prefix'} first, not "
                f"{'suffix first (--spm-infill)' if spm else 'prefix first (no --spm-infill)'}")
    engine = dict(info.get("engine", {}))
    engine.setdefault("matmul_dtype", engine.get("dtype"))       # (a server before bfloat16 weights on a CPU)
    # An option this command line leaves out is its default here, which the server's must be too: a server started
    # with --dtype bfloat16 or --kv-cache int8 prints other text than this process would.
    for option, wanted in _engine_options(args, info).items():
        if option == "matmul_dtype" and wanted is not None and _plain(wanted) != _plain(engine["matmul_dtype"] or ""):
            asked = getattr(args, "weights", None)
            return (f"runs {engine.get('dtype')} with {engine['matmul_dtype']} weights, not " +
                    (f"--weights {asked}" if asked else f"--dtype {args.dtype}" if args.dtype else
                     f"{wanted} weights (the default here)"))
        if wanted is None or _plain(wanted) != _plain(engine.get(option, "")):
            shown = getattr(args, option) or (f"{wanted} (the default)" if wanted else
                                              "this machine's default (name the option to use this server)")
            return f"runs --{option.replace('_', '-')} {info.get(option) or engine.get(option)}, not {shown}"
    announced = info.get("options")
    for option in LATER_OPTIONS:
        if getattr(args, option, None) is not None and option not in (announced if isinstance(announced, list) else ()):
            return f"does not take --{option} (an older version)"
    # (left out, --gpus is 1 here as on the server: a model split over ranks sums in another order)
    if (args.gpus or 1) != (info.get("gpus") or 1):
        return f"runs --gpus {info.get('gpus') or 1}, not {args.gpus or '1 (the default)'}"
    capacity = engine.get("context_length", 0)
    if root is None:        # raw generation: no prompt budget, only room for the new tokens
        fits = max_new_tokens < capacity
    elif args.context_tokens:
        fits = args.context_tokens + max_new_tokens <= capacity
    elif engine.get("device") == "cpu":
        from .engines import CPU_PROMPT_BUDGET
        fits = CPU_PROMPT_BUDGET + max_new_tokens <= capacity
    else:     # on a GPU the prompt takes what the default KV cache holds: the server's must be the default one
        fits = info.get("context_tokens") is None and max_new_tokens < capacity
    return None if fits else f"holds {capacity:,} tokens of context, too few for this request"


def _engine_options(args, info: dict) -> dict[str, str | None]:
    """What this process would load, as the server's engine names it (None: cannot tell). An option given here is
    as given; one left out is what the server announced it resolves to when left out ("defaults"), which the
    models package decides on the server's device for its model (flash fits some head dims only): no table of
    them here, where torch is not imported, to drift from it."""
    engine = info.get("engine", {})
    # (a server without default_device that was started without --device runs on it)
    device = args.device or info.get("default_device") or (None if info.get("device") else engine.get("device"))
    if device is None:
        return {"device": None}
    defaults = info.get("defaults")
    if not isinstance(defaults, dict):     # a server before "defaults": what it was started without is its default
        defaults = {option: engine.get(option) for option in ("dtype", "attention") if info.get(option) is None}
    dtype = args.dtype or defaults.get("dtype")
    # (an unquantized cache holds the model's dtype, --kv-cache named or not; --dtype names the weights' too, unless
    # --weights does: bf16 is bfloat16, or the model's dtype where that is bfloat16 already; int8; int4)
    weights = getattr(args, "weights", None)
    matmul_dtype = ({"bf16": "bfloat16", "int8": "int8", "int4": "int4"}.get(weights) or args.dtype
                    or defaults.get("matmul_dtype"))
    return {"device": device, "dtype": dtype, "attention": args.attention or defaults.get("attention"),
            "kv_cache": KV_CACHE_DTYPES.get(args.kv_cache or "", args.kv_cache) or dtype,
            "matmul_dtype": matmul_dtype or dtype}


def _same_folder(served, root: Path) -> bool:
    """Whether a server's repository is `root`: by name, or by the disk (macOS's ignores case, and resolve() keeps
    the case given, so a server of ~/Proj was passed over by a command line in ~/proj)."""
    if served == str(root):
        return True
    try:
        return isinstance(served, str) and os.path.samefile(served, root)
    except (OSError, ValueError):
        return False


def model_spec(spec: str | None) -> str | None:
    """A --model value as it compares: a path resolved (where it exists), anything else as given."""
    if not spec:
        return None
    path = Path(spec).expanduser()
    try:
        return str(path.resolve()) if path.exists() else spec
    except OSError:         # a name too long to be a path: the loader says so, here it compares as given
        return spec


def _plain(device: str) -> str:
    return str(device).removesuffix(":0")


class RemoteSession:
    index = None        # the server holds it

    def __init__(self, url: str, info: dict, api_key: str | None, context_tokens: int | None) -> None:
        self.url, self.api_key, self.context_tokens = url, api_key, context_tokens
        self.repo = info.get("repo")
        self.engine = engine_info(info["engine"])

    def complete(self, path: str, *, text: str | None = None, line: int | None = None, col: int | None = None,
                 sampling: Sampling, **_) -> Generation:
        return self._start("complete", {"path": path, "text": text, "line": line, "col": col}, sampling)

    def chat(self, messages, *, pinned=(), sampling: Sampling, **_) -> Generation:
        return self._start("chat", {"messages": list(messages), "pinned": list(pinned)}, sampling)

    def raw(self, prompt, *, sampling: Sampling, **_) -> Generation:
        return self._start("raw", {"prompt": prompt}, sampling)

    def _start(self, operation: str, request: dict, sampling: Sampling) -> Generation:
        from prompts import ContextItem, PackedPrompt

        body = {**request, "context_tokens": self.context_tokens, "max_tokens": sampling.max_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "seed": sampling.seed,
                "speculate": sampling.speculate}
        connection = _connection(self.url, timeout=None)
        response = _post(connection, f"{PROTOCOL}/{operation}", body, self.api_key)
        lines = _lines(response, self.url)
        first = _event(next(lines, b""), needs="prompt")
        try:
            prompt = first["prompt"]
            # (line_end: what the server writes the answer with; a server before it said none wrote "\n")
            line_end = prompt.get("line_end", "\n")
            if line_end not in ("\n", "\r\n", "\r"):
                raise TypeError(line_end)
            packed = PackedPrompt(prompt["ids"], [_context_item(item) for item in prompt["context"]],
                                  prompt["stop_token_ids"], prompt["stop_strings"], prompt["format"],
                                  line_end=line_end)
            job = first["id"]
        except (KeyError, TypeError, AttributeError):
            raise _malformed() from None

        live = []           # the counters of the last text (a models.Timings), once the server sends them

        def run(on_text=None, should_stop=None):
            cancelled = False
            try:
                for line in lines:
                    event = _event(line)
                    if isinstance(event.get("progress"), dict):
                        live[:] = [_progress(event["progress"])]
                    if "text" in event and on_text is not None:
                        on_text(event["text"])
                    if "result" in event:
                        try:
                            return _result(event["result"])
                        except (KeyError, TypeError, AttributeError):
                            raise _malformed() from None
                    if not cancelled and should_stop is not None and should_stop():
                        cancelled = True
                        self._cancel(job)
                raise AppError(f"the server at {self.url} closed the connection mid-answer")
            finally:
                connection.close()
        return Generation(packed, self.engine, run, progress=lambda: live[0] if live else None)

    def _cancel(self, job: str) -> None:
        connection = _connection(self.url, timeout=CONNECT_TIMEOUT_S)
        try:
            _post(connection, f"{PROTOCOL}/cancel", {"id": job}, self.api_key).read()
        except (AppError, OSError, http.client.HTTPException):
            pass         # it finished meanwhile, or is gone: the stream tells
        finally:
            connection.close()


def _connection(url: str, timeout: float | None) -> http.client.HTTPConnection:
    address = _address(url)
    if address is not None and "@" in (url.partition("://")[2] if "://" in url else url).partition("/")[0]:
        # (http.client sends no user or password from a URL: the server would answer 401, said with the password)
        shown = f"http://{address[0]}:{address[1]}" if ":" not in address[0] else f"http://[{address[0]}]:{address[1]}"
        raise UsageError(f"--server: a user or password in the URL is not sent (give {shown}; the server's key goes "
                         f"in $CODECOMPLETE_API_KEY)")
    if address is None:
        raise UsageError(f"--server {url}: {URL_RULE}")
    return http.client.HTTPConnection(*address, timeout=timeout)


def _address(url: str) -> tuple[str, int] | None:
    """The (host, port) an http:// URL (or a bare HOST:PORT) names; None if it is not one (a bare word such as
    `notaurl` too: without the scheme, only the port says it is an address)."""
    try:       # urlsplit refuses a bad port or an unclosed [ with ValueError (http.client a space, later)
        bare = "://" not in url
        parts = urlsplit(f"http://{url}" if bare else url)
        if (parts.scheme == "http" and parts.hostname and parts.hostname.isprintable() and " " not in parts.hostname
                and not (bare and parts.port is None)):
            parts.hostname.encode("idna")   # what the resolver will do: a label over 63 characters fails there
            return parts.hostname, parts.port or 80
    except ValueError:                      # (UnicodeError too)
        pass
    return None


def _headers(api_key: str | None) -> dict:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _get_info(url: str, api_key: str | None) -> dict:
    connection = _connection(url, timeout=CONNECT_TIMEOUT_S)
    try:
        connection.request("GET", f"{PROTOCOL}/info", headers=_headers(api_key))
        response = connection.getresponse()
        body = response.read()
    except OSError as exc:
        raise AppError(f"cannot reach the server at {url}: {exc.strerror or exc}") from None
    except http.client.HTTPException:       # no HTTP there (another program took the port), or a cut answer
        raise UsageError(f"{url} does not answer as `codecomplete serve` does") from None
    finally:
        connection.close()
    if response.status != 200:
        raise _error(url, response.status, body)
    try:
        info = json.loads(body)
        engine_info(info["engine"])
        # (what mismatch computes with, beside what it only compares or shows)
        if not isinstance(info["engine"]["context_length"], int) or not all(
                isinstance(info.get(key) or "", str) for key in ("repo", "model_spec")):
            raise TypeError(body)
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{url} does not answer as `codecomplete serve` does") from None
    return info


def _post(connection: http.client.HTTPConnection, path: str, body: dict, api_key: str | None):
    try:
        # Text as UTF-8, not \u escapes: a buffer's size, for the server's limit (MAX_COMMAND_BODY_BYTES)
        data = json.dumps(body, ensure_ascii=False).encode("utf-8", UNENCODABLE)
        connection.request("POST", path, data, headers=_headers(api_key))
        response = connection.getresponse()
        if response.status != 200:
            raise _error("", response.status, response.read())
    except OSError as exc:
        raise AppError(f"cannot reach the server: {exc.strerror or exc}") from None
    except http.client.HTTPException:       # (as _get_info)
        raise _malformed() from None
    return response


LOADING = "Loading model"        # what a server answers (503) while its model loads


def _error(url: str, status: int, body: bytes) -> AppError:
    """The server's error as the command line reports it: the same message and exit code as in process."""
    try:
        error = json.loads(body)["error"]
        message, kind = error["message"], error["type"]
        if not isinstance(message, str):
            raise TypeError(message)
    except (ValueError, KeyError, TypeError):
        message, kind = f"the server{' at ' + url if url else ''} answered HTTP {status}", ""
    if status == 503 and message == LOADING:        # (serve._LoadingAnswers: llama.cpp's words)
        message = f"the server{' at ' + url if url else ''} is still loading its model: ask again once it serves"
    usage = status in (400, 404, 413) and kind != "exceed_context_size_error"
    return UsageError(message) if usage else AppError(message)


def _event(line: bytes, needs: str | None = None) -> dict:
    """One line of the stream, which holds `needs` (or text, a result, an error)."""
    if not line:
        raise AppError("the server closed the connection mid-answer")
    try:
        event = json.loads(line)
        if not isinstance(event, dict) or not isinstance(event.get("text", ""), str):    # (what run() reads)
            raise ValueError(line)
        if "error" in event:
            code = event["error"].get("code", 500)
            raise _error("", code if isinstance(code, int) and 400 <= code < 500 else 500, json.dumps(event).encode())
        if needs is not None and not isinstance(event.get(needs), dict):
            raise ValueError(needs)
    except (ValueError, TypeError, AttributeError):     # (not _error's AppError: it goes on as it is)
        raise _malformed() from None
    return event


def _lines(response: http.client.HTTPResponse, url: str):
    """The stream's lines; one cut off mid-chunk (the server killed) is the error it is, not http.client's."""
    try:
        yield from response
    except (http.client.HTTPException, OSError):
        raise AppError(f"the server at {url} closed the connection mid-answer") from None


def _context_item(item: dict):
    """A context item as the server described it; fields a newer server adds are left out (an older client reads
    what it knows), a field this one needs and the server lacks is a malformed answer (TypeError)."""
    from prompts import ContextItem
    known = {field.name for field in fields(ContextItem)}
    return ContextItem(**{name: value for name, value in item.items() if name in known})


def _malformed() -> AppError:
    return AppError("the server sent something that is not part of an answer")


def _progress(data: dict):
    """A text event's counters as the engine's running Timings (render.LiveView counts the tokens with them): those
    this client knows, numbers only (a server before them sent none, and the live line counted pieces of text)."""
    from models import Timings

    known = {f.name for f in fields(Timings)}
    return Timings(**{key: value for key, value in data.items()
                      if key in known and type(value) is int and value >= 0})


def _result(data: dict):
    from models import GenerationResult, Timings

    known = {f.name for f in fields(Timings)}
    timings = Timings(**{key: value for key, value in data["timings"].items() if key in known})
    return GenerationResult(data["text"], data["token_ids"], data["prompt_tokens"], data["reused_prefix_tokens"],
                            data["finish_reason"], timings, data.get("stop_string", ""), data.get("healing_tokens", 0),
                            not_a_number=data.get("not_a_number", False))
