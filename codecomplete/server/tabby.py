"""Tabby's API, as tabby-agent speaks it: the agent (an LSP server, npm's `tabby-agent`) behind Tabby's VS Code,
JetBrains, Vim and Neovim plugins.

    POST /v1/completions   a body whose `segments` (or `debug_options`) is an object: a fill-in-the-middle completion
                           at the cursor of `segments.filepath`, built as /infill's (llama_cpp.py); the answer is
                           {"id": "cmpl-<uuid>", "choices": [{"index": 0, "text": ...}], "mode": "standard"}. OpenAI
                           shares the path: app.py reads the body and hands any other to openai_api.py
    GET|POST /v1/health    Tabby's HealthState, with llama.cpp's {"status": "ok"} (/health's alias there); no API key
    POST /v1/events        the agent's view, select and dismiss events: accepted (200, no body) and dropped

What the agent does with them (clients/tabby-agent in TabbyML/tabby: 1.5.0's TabbyAgent.ts, today's
http/tabbyApiClient.ts and codeCompletion/): at start, and again after a failed request, GET /v1/health (POST
after a 405): a 200 makes it ready, 401 or 403 unauthorized, anything else disconnected. It offers completions only
while the health names a `model` (1.5.0: a `model` and a `device`), and then reads `version.git_describe`, which
throws where there is no `version` object; a version below 0.9, such as this server's, spares it
/v1beta/server_setting (whose 404 it would ignore). Per completion it POSTs a body without streaming and reads `id`
and `choices[0].text`; a request it supersedes it aborts, which cancels the generation, as on every route. With a
`server.token` in its config it sends `Authorization: Bearer TOKEN` (--api-key's key).

The prompt: `prefix` | `suffix` at the cursor of `filepath`, relative to the client's git root or workspace folder
(an absolute path or a file:// URI inside the repository is taken too; a file elsewhere, or none, lends only its
extension, or the `language`'s, so that the prompt reads it as what it is); the client's `declarations` and snippets
as /infill's input_extra, in Tabby's order of importance (declarations, snippets of changed files, of recently opened
ones), the least important giving way first; then the repository's own context (`git_url` and `clipboard` are not
needed: Tabby's prompts leave the clipboard out too). `temperature` (Tabby's default 0.1) and `seed`; at most
Tabby's 64 new tokens (or --max-tokens, where fewer), ended as Tabby's server ends them (`STOP_KEYWORDS`): before a
blank line or a new line that begins a top-level statement or a comment, and at the line's end in a language it
knows no keywords for; the agent then trims further on its own (its scope and repetition filters). Text with CRLF
line ends gets an answer with CRLF line ends, as Tabby's server writes it (as on every route: the session's
codecomplete/line_ends.py). `debug_options`: `raw_prompt` (that
prompt as it is, segments aside) and `return_prompt` (`debug_data.prompt`); `return_snippets`,
`disable_retrieval_augmented_code_completion` and the mode "next_edit_suggestion" are refused (400). Tabby answers a
bad request with a bare 400 (axum's 422 and a line of text for a wrong type); here it is the server's JSON error,
of which the agent reads the status only.
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import uuid
from pathlib import Path, PurePosixPath
from typing import Annotated
from urllib.parse import unquote, urlsplit

from fastapi import APIRouter, Request
from pydantic import Field
from starlette.responses import Response

from prompts.errors import PromptError
from prompts.languages import PLAIN_TEXT, TREE_SITTER_LANGUAGES

from .. import line_ends
from ..session import UNTITLED
from .bodies import Body, check_ids, parse, read_json
from .errors import ApiError
from .streaming import json_response

router = APIRouter()
public = APIRouter()
DEFAULT_TEMPERATURE = 0.1           # tabby-inference's CodeGenerationOptions
MAX_NEW_TOKENS = 64                 # tabby-common's CompletionConfig.max_decoding_tokens (fewer where --max-tokens is)
# Tabby's stop words (tabby-common's languages.toml and languages.rs), by the editor's language id: a completion
# ends before a new line that begins with the language's line comment or one of its top-level keywords, or before a
# blank line. A language without a line comment there (css, html, shell, sql, ...) or unknown ends at its line's
# end, as Tabby's "\n" + "" does. (Tabby checks for them at the end of prompt + text, so a completion that begins a
# new top-level line right after the prompt's newline is empty there; here only the completion's own text counts.)
STOP_KEYWORDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "python": ("#", ("def", "from", "class", "import")),
    "rust": ("//", ("fn", "trait", "impl", "enum", "pub", "extern", "static", "unsafe", "use")),
    "java": ("//", ("abstract", "public", "private", "class", "const", "exports", "extends", "implements", "static",
                    "import", "interface", "module", "package", "var", "enum", "return")),
    "kotlin": ("//", ("abstract", "public", "private", "companion", "class", "data", "const", "actual", "expect",
                      "sealed", "suspend", "fun", "import", "interface", "package", "var", "val", "enum")),
    "go": ("//", ("func", "interface", "struct", "package", "type", "import", "var", "const")),
    "ruby": ("#", ("begin", "class", "def", "end", "ensure", "include", "module", "require", "rescue", "self")),
    "c": ("//", ("const", "enum", "extern", "inline", "register", "static", "struct", "typedef", "union", "volatile")),
    "cpp": ("//", ("auto", "class", "const", "concept", "enum", "extern", "inline", "namespace", "register", "static",
                   "struct", "template", "typedef", "union", "volatile")),
    "csharp": ("//", ("class", "struct", "enum", "interface", "abstract", "static", "extern", "namespace", "using",
                      "var", "dynamic", "async")),
    "php": ("//", ("abstract", "class", "const", "declare", "extends", "final", "finally", "function", "global",
                   "implements", "include_once", "include", "interface", "namespace", "private", "protected",
                   "public", "require_once", "require", "static", "trait", "use")),
    "lua": ("--", ("and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if", "in", "local",
                   "nil", "not", "or", "repeat", "return", "then", "true", "until", "while")),
    "r": ("#", ("function", "library", "install.packages")),
}
STOP_KEYWORDS |= dict.fromkeys(("javascript", "typescript", "javascriptreact", "typescriptreact"), (
    "//", ("abstract", "async", "class", "const", "export", "function", "interface", "module", "package", "type", "var",
           "enum", "let")))
EVENT_TYPES = ("view", "select", "dismiss")
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:/")         # `C:\repo\a.py` once its backslashes are slashes
# An editor's language id (VS Code's, which the agent sends) to a file extension the prompts know it by.
EXTENSIONS = {spec.name: extension for extension, spec in reversed(TREE_SITTER_LANGUAGES.items())} | {
    name: extension for extension, (name, _) in reversed(PLAIN_TEXT.items())} | {
    "cpp": ".cpp", "typescriptreact": ".tsx", "javascriptreact": ".jsx", "shellscript": ".sh", "plaintext": ".txt"}


class Declaration(Body):
    filepath: str           # relative as `Segments.filepath`, or a file:// URI (a dependency's file)
    body: str


class Snippet(Declaration):
    score: float


class Segments(Body):
    prefix: str
    suffix: str | None = None
    filepath: str | None = None
    git_url: str | None = None
    declarations: list[Declaration] | None = None
    relevant_snippets_from_changed_files: list[Snippet] | None = None
    relevant_snippets_from_recently_opened_files: list[Snippet] | None = None
    clipboard: str | None = None


class DebugOptions(Body):
    raw_prompt: str | None = None
    return_snippets: bool = False
    return_prompt: bool = False
    disable_retrieval_augmented_code_completion: bool = False


class CompletionRequest(Body):
    language: str | None = None
    segments: Segments | None = None
    user: str | None = None
    debug_options: DebugOptions | None = None
    temperature: float | None = Field(None, ge=0)
    seed: Annotated[int, Field(ge=0, le=2 ** 64 - 1)] | None = None     # Tabby's u64
    mode: str = "standard"


class LogEventRequest(Body):
    type: str
    completion_id: str
    choice_index: int = Field(ge=0)
    view_id: str | None = None
    elapsed: int | None = Field(None, ge=0)


def speaks(data: dict) -> bool:
    """Whether a body on POST /v1/completions is Tabby's: OpenAI's has a `prompt`, and no such objects."""
    return isinstance(data.get("segments"), dict) or isinstance(data.get("debug_options"), dict)


async def completions(request: Request, data: dict):
    """POST /v1/completions with Tabby's body (app.py's `completions` reads it and decides)."""
    server = request.app.state.server
    body = parse(data, CompletionRequest)
    if body.mode == "next_edit_suggestion":          # (Tabby reads any other mode as "standard")
        raise ApiError(400, f"mode {body.mode!r} is not supported (only 'standard')")
    debug = body.debug_options or DebugOptions()
    for name in ("return_snippets", "disable_retrieval_augmented_code_completion"):
        if getattr(debug, name):
            raise ApiError(400, f"debug_options.{name} is not supported")
    temperature = DEFAULT_TEMPERATURE if body.temperature is None else body.temperature
    sampling = server.sampling(min(MAX_NEW_TOKENS, server.max_tokens), temperature=temperature, seed=body.seed,
                               stop=stop_words(body.language))
    session, segments = server.session, body.segments
    if debug.raw_prompt is not None:        # as Tabby's: the segments are not read then
        check_ids(server.engine, debug.raw_prompt)
        start = lambda: session.raw(debug.raw_prompt, sampling=sampling)  # noqa: E731
    elif segments is not None:
        root = session.index.root
        path = _cursor_file(segments.filepath, body.language, session.index)
        extra = [(_label(snippet.filepath, root), snippet.body) for snippet in reversed(_by_importance(segments))]
        suffix = segments.suffix or ""
        start = lambda: session.infill(segments.prefix, suffix, path=path, extra=extra,  # noqa: E731
                                       sampling=sampling, budget=server.budget(sampling))
    else:
        raise ApiError(400, "empty prompt: a completion needs segments (or debug_options.raw_prompt)")
    running = server.start(request, start)
    prompt = (await running.started()).prompt
    result = await running.result()
    answer = {"id": f"cmpl-{uuid.uuid4()}", "choices": [{"index": 0, "text": result.text}], "mode": "standard"}
    if body.debug_options is not None:
        # (a raw prompt's healed tail, left to the generation, is the prompt's as sent, and so are its line ends (the
        # model read "\n"), as on llama.cpp's routes)
        text = server.tokenizer.decode(prompt.ids)
        if prompt.format == "raw":
            text = line_ends.written(text + prompt.heal_text, prompt.line_end)
        answer["debug_data"] = {"prompt": text} if debug.return_prompt else {}
    return json_response(answer)


@public.api_route("/v1/health", methods=["GET", "HEAD", "POST"])
async def health(request: Request):
    from models.options import cpu_name     # (here: models.options imports torch, which this module's import need not)

    server = request.app.state.server
    engine = server.engine
    return json_response({
        "status": "ok", "model": engine.name, "device": str(engine.device).partition(":")[0],
        "cuda_devices": _cuda_devices(), "arch": platform.machine(), "cpu_info": cpu_name(),
        "cpu_count": os.cpu_count() or 0, "webserver": False,
        "version": {"build_date": "", "build_timestamp": "", "git_sha": "",
                    "git_describe": f"codecomplete {server.info.get('version', '')}".strip()},
    })


@router.post("/v1/events")
async def events(request: Request):
    body = await read_json(request, LogEventRequest)
    if body.type not in EVENT_TYPES:        # Tabby's 400 too
        raise ApiError(400, f"type {body.type!r} is not an event (Tabby's are {', '.join(EVENT_TYPES)})")
    return Response(status_code=200)


def stop_words(language: str | None) -> tuple[str, ...]:
    """The strings that end a completion in `language` (an editor's language id), as Tabby's server stops."""
    comment, keywords = STOP_KEYWORDS.get(language or "", ("", ()))
    return (f"\n{comment}", *(f"\n{word}" for word in keywords), "\n\n")


def _by_importance(segments: Segments) -> list[Declaration]:
    """The client's chunks, most important first, as Tabby's prompt builder takes them."""
    return [*(segments.declarations or ()), *(segments.relevant_snippets_from_changed_files or ()),
            *(segments.relevant_snippets_from_recently_opened_files or ())]


def _cursor_file(filepath: str | None, language: str | None, index) -> str:
    """The cursor's file as the session names it: its path in the repository, as the index finds it (through links,
    as the command line's --file: an editor's folder may be a link to the server's); for a file elsewhere (a folder
    linked out of the repository too, or `~`), none named, or no file (a NUL), `untitled` with the file's extension,
    or its language's."""
    local = _local(filepath) if filepath else None
    if local and "\0" not in local and not _WINDOWS_DRIVE.match(local):
        with contextlib.suppress(PromptError):
            return index.relative_path(local)
    extension = PurePosixPath(local or filepath).suffix if filepath else ""
    return UNTITLED + (extension or EXTENSIONS.get(language or "", ""))


def _label(filepath: str, root: Path) -> str:
    """A chunk's file as the prompt names it: relative to the repository where it lies inside. Only a label: the
    file is never read."""
    return _in_repository(filepath, root) or _local(filepath) or filepath


def _in_repository(filepath: str, root: Path) -> str | None:
    """A client's path (relative to the repository, absolute, or a file:// URI) as a posix path relative to the
    repository; None where it lies outside. By the text only: the session checks links when it looks at the file."""
    local = _local(filepath)
    if local is None or _WINDOWS_DRIVE.match(local):       # (another machine's file, or a Windows drive's)
        return None
    full = Path(os.path.normpath(root / local))     # (an absolute path stays itself)
    return full.relative_to(root).as_posix() if full.is_relative_to(root) and full != root else None


def _local(filepath: str) -> str | None:
    """A file:// URI's path (`file:///home/me/a.py`), None for another host's file or a URI that is none
    (`file://[::1/a.py`); a Windows client's relative `src\\a.py` with slashes."""
    if filepath.startswith("file:"):
        try:
            parts = urlsplit(filepath)
            host = parts.hostname
        except ValueError:
            return None
        return unquote(parts.path) if host in (None, "localhost") else None
    return filepath.replace("\\", "/") if "/" not in filepath else filepath


@functools.cache
def _cuda_devices() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
