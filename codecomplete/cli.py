"""Command line: parse, check the combination of options, dispatch, turn failures into exit codes.

Nothing heavy is imported here: `--help` and every usage error answer in a few milliseconds,
and torch, transformers and tree-sitter load only once a command really runs.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import traceback

from . import switches
from .errors import (UNENCODABLE, Cancelled, ExitCode, Stopped, UsageError, classify, error_json, one_line, say,
                     write_utf8)

PROG = "codecomplete"
MAX_SEED = 2 ** 64 - 1     # what torch.Generator.manual_seed takes
LAST_LINE_PATIENCE_S = 3.0     # how long the line a command ends with waits for a standard error that is full
MAX_TOKENS = 10_000_000    # beyond any model's positions: a larger count is a typo, said at once

DESCRIPTION = """\
A local coding assistant: repository-scale prompts, decoded with Flash-Decoding.

  codecomplete REPO --file PATH [--line N --col M] [--stdin]   inline suggestion
  codecomplete REPO                                             chat REPL over REPO
  codecomplete REPO --ask QUESTION                              one answer, no REPL
  codecomplete --prompt TEXT                                    raw generation
  codecomplete [REPO] --bench [--json FILE] [--plot FILE]       standard vs Flash-Decoding
  codecomplete serve [REPO] [--host H] [--port 8012] [--api-key K]   warm server for editors

--file, --ask and --prompt use a running `codecomplete serve` for the repository when there is one.
"""

EPILOG = """\
exit codes: 0 ok, 1 runtime failure (model, memory), 2 usage or input error,
130 interrupted, 141 the reader closed the pipe, 143/129 stopped by SIGTERM/SIGHUP; with --json,
a failure also writes {"error": {"code": EXIT CODE, "message": ..., "type": ...}} where the result would go.
environment: CODECOMPLETE_MODEL (default --model), CODECOMPLETE_CACHE_DIR, NO_COLOR,
CODECOMPLETE_SERVER (default --server), CODECOMPLETE_API_KEY (the server's key),
CODECOMPLETE_RUNTIME_DIR (where servers announce themselves)."""
SERVE_EPILOG = """\
Binds loopback by default; any other --host needs --api-key. Ctrl-C stops it.
exit codes: 0 stopped by Ctrl-C or SIGTERM once serving, 1 runtime failure (model, memory, the port taken),
2 usage or input error, 130/143 Ctrl-C/SIGTERM while starting, 129 SIGHUP."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line, like every other error; the full usage is one --help away.
        self.exit(ExitCode.USAGE, one_line(f"{self.prog}: error: {message} (see {self.prog} --help)") + "\n")

    def _parse_optional(self, arg_string):
        # `--file -dash.py`: no option of ours has a dot or a slash, so such a word is a value, not an option
        # (what an editor passes for a file whose name starts with a dash).
        if arg_string.startswith("-") and not arg_string.startswith("--") and ("." in arg_string or "/" in arg_string):
            return None
        return super()._parse_optional(arg_string)


def _whole_number(low: int, high: int | None = None):
    """An argparse type: a whole number in [low, high] (no upper end without high)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"from {low} to {high:,}" if high is not None else f"from {low} up"
            raise argparse.ArgumentTypeError(f"expected a number {span}, got {value}")
        return value
    return parse


DEFAULT_CACHE_RAM_MIB = 8192      # llama.cpp's --cache-ram

_positive_int = _whole_number(1)
_tokens = _whole_number(1, MAX_TOKENS)
_seed = _whole_number(0, MAX_SEED)


def _float_in(low: float, high: float, *, low_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (low < value if low_open else low <= value) or value > high:
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"expected a number in {bracket}{low}, {high}], got {value}")
        return value
    return parse


def _contexts(text: str) -> list[int]:
    parts = text.split(",")
    if any(not part.strip() for part in parts) and any(part.strip() for part in parts):
        # "1,,2" is a typo more often than a list of two: say so, as for an empty --prompt
        raise argparse.ArgumentTypeError(f"an empty length in {text!r} (e.g. --contexts 256,1024)")
    return [_tokens(part) for part in parts if part.strip()]


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(PROG)
    except PackageNotFoundError:     # running from a checkout that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, usage="%(prog)s [REPO] [options]", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", nargs="?", metavar="REPO", help="the repository (a folder)")
    parser.add_argument("--version", action="version", version=f"{PROG} {package_version()}")

    task = parser.add_argument_group("what to do (default with REPO: the chat REPL)")
    modes = task.add_mutually_exclusive_group()
    modes.add_argument("--file", metavar="PATH", help="suggest a completion at a cursor in PATH (inside REPO)")
    modes.add_argument("--ask", metavar="QUESTION",
                       help="answer one question about REPO, no REPL ('-' reads standard input)")
    modes.add_argument("--prompt", metavar="TEXT", help="raw generation from TEXT ('-' reads standard input)")
    modes.add_argument("--bench", action="store_true", help="standard attention against Flash-Decoding")
    task.add_argument("--line", type=_positive_int, metavar="N", help="cursor line, 1-based (default: end of file)")
    task.add_argument("--col", type=_positive_int, metavar="M", help="cursor column, 1-based (default: end of the line)")
    task.add_argument("--stdin", action="store_true",
                      help="read the buffer from standard input (an editor's unsaved text); --file names it")
    task.add_argument("--spm-infill", action="store_true", help=SPM_INFILL_HELP)
    task.add_argument("--plot", metavar="FILE", help="with --bench: write a PNG plot")
    task.add_argument("--contexts", type=_contexts, metavar="N,N,...",
                      help="with --bench: context lengths in tokens (default: 4096,16384,32768 on CUDA, 256,1024 on CPU)")

    _model_options(parser)

    gen = parser.add_argument_group("generation")
    gen.add_argument("--max-tokens", type=_tokens, metavar="N",
                     help="tokens to generate (default: 64 for a completion, 512 for an answer, 256 for --prompt)")
    gen.add_argument("--temperature", type=_float_in(0.0, 10.0), default=0.0, metavar="T",
                     help="0 is greedy (default: 0)")
    gen.add_argument("--top-p", type=_float_in(0.0, 1.0, low_open=True), default=1.0, metavar="P",
                     help="nucleus sampling (default: 1)")
    gen.add_argument("--seed", type=_seed, metavar="N", help="seed for sampling")
    gen.add_argument("--speculate", type=_whole_number(0, 15), metavar="K",
                     help="speculative decoding: verify up to K draft tokens per step, looked up in the prompt "
                          "and the text so far; same output (0 turns it off; default 8, fewer where 8 would not fit "
                          "one tile: 7 for CodeLlama-34B's 8 query heads per key/value head)")

    out = parser.add_argument_group("output")
    out.add_argument("--json", nargs="?", const="-", metavar="FILE",
                     help="the result as one JSON object, on stdout or into FILE")
    out.add_argument("--debug", action="store_true", help="show tracebacks")

    server = parser.add_argument_group("server (for --file, --ask, --prompt)").add_mutually_exclusive_group()
    server.add_argument("--server", metavar="URL",
                        help="use the `codecomplete serve` at URL (default: $CODECOMPLETE_SERVER, or one running "
                             "for REPO with the same model)")
    server.add_argument("--no-server", action="store_true", help="run in this process even if a server runs")
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--model", metavar="SPEC",
                       help="HF checkpoint folder, .gguf file, hub id, or random:PRESET[:TOKENIZER_DIR] (random weights of CodeLlama-7B/13B/34B/70B or SmolLM2-135M shapes; without a tokenizer --bench only; default: $CODECOMPLETE_MODEL or the embedded SmolLM2)")
    model.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    model.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                       help="default: bfloat16 on CUDA, float32 on CPU")
    model.add_argument("--attention", choices=("flash", "sdpa", "eager"),
                       help="decode attention (default: flash on CUDA, sdpa on CPU)")
    model.add_argument("--context-tokens", type=_tokens, metavar="N",
                       help="prompt budget in tokens (default: the model's context on CUDA, 1024 on CPU)")
    model.add_argument("--threads", type=_positive_int, metavar="N",
                       help="torch CPU threads (default on a CPU: the idle cores, by the load average, at least 1; "
                            "$OMP_NUM_THREADS if set)")
    model.add_argument("--gpus", type=_positive_int, metavar="N",
                       help="split the model over N GPUs (tensor parallelism; with --device cpu, N processes)")
    model.add_argument("--weights", choices=("bf16", "int8", "int4"),
                       help="the projections' weights: int8 holds 8 bits with a scale per output row, half the bytes "
                            "a decode step reads (on a CPU: less memory, not more speed); int4 4 bits with a scale "
                            "and offset per group of 32 columns (the vocabulary head 8 bits, where 4 cost the most "
                            "accuracy), ~0.31 of bf16's (less accurate; not with --gpus); "
                            "bf16 (on a CPU: bfloat16 under float32 activations) (default: the model's dtype, on a "
                            "CPU with bfloat16 dot products bf16)")
    model.add_argument("--kv-cache", choices=("bf16", "fp16", "fp32", "fp8", "int8"),
                       help="KV cache storage (default: the model's dtype): int8 or fp8 hold 8 bits with a scale "
                            "per token, about twice the context in the same memory; int8 is the more accurate and, on "
                            "an H200, as fast or faster")


SPM_INFILL_HELP = ("llama.cpp's: fill-in-the-middle prompts put the code after the cursor first (suffix, prefix, "
                   "middle: the text a keystroke changes ends the prompt, so the cached rest is reused; default: "
                   "prefix first); no effect for a model without FIM tokens")


def build_serve_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=f"{PROG} serve", usage="%(prog)s [REPO] [options]",
                     description="A warm server for editors over REPO (default: the current folder): llama.cpp's\n"
                                 "/infill and /completion, the OpenAI API, Ollama's, Tabby's, Mistral's FIM\n"
                                 "(Codestral) and TGI's (text-generation-inference).",
                     epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", nargs="?", metavar="REPO", help="the repository (a folder)")
    parser.set_defaults(log_progress=True)     # the model's load (a first conversion, a wait) is in the log
    listen = parser.add_argument_group("listening")
    listen.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    listen.add_argument("--port", type=_whole_number(0, 65535), default=8012,
                        help="port (default: 8012, where llama.vim looks; 0: any)")
    listen.add_argument("--api-key", metavar="KEY",
                        help="require Authorization: Bearer KEY on every route but the liveness checks (/health, "
                             "/v1/health, GET /; default: $CODECOMPLETE_API_KEY)")
    _model_options(parser)
    requests = parser.add_argument_group("requests")
    requests.add_argument("--max-tokens", type=_tokens, metavar="N",
                          help="tokens a request may generate when it sets no limit (default: 256)")
    requests.add_argument("--max-waiting", type=_positive_int, metavar="N",
                          help="requests that may wait behind the running one; more get 503 (default: 8)")
    requests.add_argument("--cache-reuse", type=_whole_number(0, 2 ** 31 - 1), default=0, metavar="N",
                          help="llama.cpp's: past the start a prompt shares with the last one, reuse runs of at least N "
                               "of its cached tokens by moving them into place (keys re-rotated) instead of "
                               "prefilling them; approximate (they were computed after tokens since dropped); "
                               "llama.vim's setup uses 256 (default: 0, off; a request's n_cache_reuse overrides)")
    requests.add_argument("--spm-infill", action="store_true", help=SPM_INFILL_HELP)
    requests.add_argument("--cache-ram", type=_whole_number(-1, 2 ** 31 - 1), default=DEFAULT_CACHE_RAM_MIB,
                          metavar="MIB",
                          help="llama.cpp's prompt cache: a request that shares little with the last prompt saves that "
                               "prompt's KV cache (in host memory; on a GPU in its own memory, at most what it has "
                               "free beside 4 GiB), and takes back the saved prompt that serves it best "
                               "(chat between inline completions, another file); at most MIB MiB, the oldest going "
                               f"first (default: {DEFAULT_CACHE_RAM_MIB}, llama.cpp's; -1: no limit; 0: off)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(bench=False)       # what the model loader asks of every command line
    return parser


def check(args: argparse.Namespace, closed: frozenset[str] = frozenset()) -> None:
    """What argparse cannot check: combinations, empty values, the standard streams, output paths, the model
    spec, --threads and the environment torch reads ($OMP_NUM_THREADS, $TORCH_DISTRIBUTED_DEBUG); raises
    UsageError. Everything here runs before any work, so a mistake costs milliseconds.
    `closed` names the standard streams that were closed when the program started."""
    if args.json not in (None, "-") and args.repo is None and not args.bench and os.path.isdir(args.json):
        # `codecomplete --json . --file x.py`: the word after --json was the repository. (Not with --bench, whose
        # repository is optional: there a folder after --json is a mistake, said as such below.)
        args.repo, args.json = args.json, "-"
    if args.json not in (None, "-"):        # first: every later failure writes its error object there
        try:
            _check_json_path(args)
        except UsageError:
            args.json = None        # a destination refused gets no error object either: it may be the source file
            raise
    _check_repo_given(args)
    for option in ("file", "ask", "prompt", "model", "plot", "device", "server"):
        value = getattr(args, option)
        if value is not None and not value.strip():
            raise UsageError(f"--{option} is empty")
    for option in ("line", "col", "stdin", "spm_infill"):
        if getattr(args, option) and args.file is None:
            raise UsageError(f"--{option.replace('_', '-')} goes with --file")
    for option in ("plot", "contexts"):
        if getattr(args, option) and not args.bench:
            raise UsageError(f"--{option} goes with --bench")
    sampling = {"--temperature": args.temperature != 0, "--top-p": args.top_p != 1, "--seed": args.seed is not None}
    if args.bench and any(sampling.values()):
        # The benchmark times greedy decoding, the same tokens for every backend: sampling would not be measured.
        given = ", ".join(name for name, set_ in sampling.items() if set_)
        raise UsageError(f"{given}: --bench times greedy decoding, which takes no sampling options")
    if args.col is not None and args.line is None:
        raise UsageError("--col goes with --line")
    if args.prompt is not None and args.repo is not None:
        raise UsageError("--prompt takes no repository")
    if args.repo is None and not (args.prompt is not None or args.bench):
        raise UsageError("give a repository: codecomplete REPO (see --help for the commands)")
    if (args.server or args.no_server) and args.file is None and args.ask is None and args.prompt is None:
        raise UsageError(f"--{'server' if args.server else 'no-server'} goes with --file, --ask or --prompt")
    if args.contexts == []:
        raise UsageError("--contexts lists no context length (e.g. --contexts 256,1024)")
    from .engines import check_model_spec, check_threads
    check_model_spec(args)
    check_threads(args.threads)
    check_omp_threads()
    check_distributed_debug()
    _check_streams(args, closed)
    if args.plot is not None and args.plot != "-":
        check_output_path("--plot", args.plot)
    if args.plot and not args.plot.lower().endswith(PLOT_SUFFIXES):
        raise UsageError(f"--plot {args.plot}: name a {', '.join(PLOT_SUFFIXES)} file")
    # Text typed on the command line that is not UTF-8 (lone surrogates) cannot be tokenized: replace it.
    for option in ("prompt", "ask"):
        if getattr(args, option) is not None:
            from prompts.tokens import tokenizable
            setattr(args, option, tokenizable(getattr(args, option)))


def check_serve(args: argparse.Namespace) -> None:
    """What `serve` takes that argparse cannot check. An empty --api-key ("$KEY" unset) served with no key at all,
    and an empty --host on every interface."""
    _check_repo_given(args)
    for option in ("host", "api_key", "model", "device"):
        value = getattr(args, option)
        if value is not None and not value.strip():
            raise UsageError(f"--{option.replace('_', '-')} is empty")
    if args.host.startswith("[") and args.host.endswith("]"):
        args.host = args.host[1:-1]     # IPv6 as a URL writes it ([::1]): was "reachable from other machines"
    check_omp_threads()
    check_distributed_debug()
    from .engines import check_model_spec
    check_model_spec(args)


def _check_repo_given(args: argparse.Namespace) -> None:
    """An empty REPO (`codecomplete "$REPO"` with REPO unset) is a mistake, not the current folder: Path("") is "."."""
    if args.repo is not None and not args.repo.strip():
        raise UsageError("REPO is empty (give the repository's folder; . for the current one)")


def check_omp_threads() -> None:
    """$OMP_NUM_THREADS as libgomp reads it when torch loads: a count, or one per nesting level ("4,2"). An empty
    value counts as unset; any other value libgomp would only warn about in four lines of stderr (then run on its own
    default, which the user did not ask for) is a usage error."""
    value = os.environ.get("OMP_NUM_THREADS")
    if value is not None and not value.strip():
        del os.environ["OMP_NUM_THREADS"]
    elif value is not None and not re.fullmatch(r"\s*0*[1-9][0-9]*\s*(,\s*0*[1-9][0-9]*\s*)*", value):
        raise UsageError(f"OMP_NUM_THREADS={value}: expected a number of threads from 1 up")


def check_distributed_debug() -> None:
    """$TORCH_DISTRIBUTED_DEBUG as torch reads it on importing torch.distributed, which loading any model does: any
    value but OFF, INFO or DETAIL (in any case), an empty one included, made every command an internal error (the
    import's ValueError). An empty value counts as unset, as OMP_NUM_THREADS's does; any other is a usage error."""
    value = os.environ.get("TORCH_DISTRIBUTED_DEBUG")
    if value is not None and not value.strip():
        del os.environ["TORCH_DISTRIBUTED_DEBUG"]
    elif value is not None and value.upper() not in ("OFF", "INFO", "DETAIL"):
        raise UsageError(f"TORCH_DISTRIBUTED_DEBUG={value}: expected OFF, INFO or DETAIL")


PLOT_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp")


def _check_streams(args: argparse.Namespace, closed: frozenset[str]) -> None:
    if "stdin" in closed and (args.stdin or args.prompt == "-" or args.ask == "-"):
        reader = "--stdin" if args.stdin else "--prompt -" if args.prompt == "-" else "--ask -"
        raise UsageError(f"standard input is closed: nothing to read for {reader}")
    # (--bench's table goes there too, or its JSON with --json -: where only a --plot file is written, it is not needed)
    result = args.file or args.ask or args.prompt is not None
    if "stdout" in closed and (args.json == "-" and (result or args.bench)
                               or args.json is None and (result or args.bench and not args.plot)):
        raise UsageError("standard output is closed: the result would go nowhere (--json FILE writes it to a file)")


def _check_json_path(args: argparse.Namespace) -> None:
    if not args.json.strip():
        raise UsageError("--json is empty")
    check_output_path("--json", args.json)
    if args.plot and _same_file(args.json, args.plot):
        raise UsageError(f"--json and --plot name the same file, {args.plot}: one would overwrite the other")
    files = [args.file, *([os.path.join(args.repo, args.file)] if args.repo else [])] if args.file else []
    if any(_same_file(args.json, file) for file in files):
        raise UsageError(f"--json {args.json} is the file to complete: the JSON would overwrite it")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:         # not there yet: the same name is the same file
        return os.path.abspath(a) == os.path.abspath(b)


def check_output_path(option: str, path: str) -> None:
    """That `path` can be written, tried for real (root ignores permission bits, a read-only disk does not),
    without truncating an existing file and without leaving a new one behind."""
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a folder")
    existed = os.path.lexists(path)
    try:
        if existed and not os.path.isfile(path):
            return      # /dev/stdout, a FIFO: the user's own plumbing
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | (0 if existed else os.O_CREAT | os.O_EXCL), 0o644)
        os.close(fd)
        if not existed:
            os.unlink(path)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write it ({exc.strerror})") from None


def _command(args: argparse.Namespace):
    """The function that runs this command line; each module is imported only when chosen."""
    if args.bench:
        from .bench import run_bench
        return run_bench
    if args.prompt is not None:
        from .raw import run_prompt
        return run_prompt
    if args.file is not None:
        from .complete import run_complete
        return run_complete
    if args.ask is not None:
        from .chat import run_ask
        return run_ask
    from .repl import run_repl
    return run_repl


def main(argv: list[str] | None = None) -> int:
    if _torchrun_follower():
        # Under `torchrun --nproc-per-node N codecomplete ...` rank 0 runs the app; the others only
        # repeat its model calls (models/lockstep.py), whatever the command line asks.
        from models.lockstep import follow_under_torchrun
        try:
            return follow_under_torchrun()
        except Exception as exc:       # (torchrun's variables set by hand to odd values, say): one line
            return _report(exc, debug="--debug" in sys.argv)
    closed = _standard_streams()
    _stop_signals()
    argv = sys.argv[1:] if argv is None else argv
    serving = argv[:1] == ["serve"]
    args = build_serve_parser().parse_args(argv[1:]) if serving else build_parser().parse_args(argv)
    try:
        switches.check_environment()    # (before anything imports models or kernels, which read them too)
        if serving:
            check_serve(args)
            _leave_a_deleted_folder(args.repo or ".")
            from .server.serve import run_serve
            run_serve(args)
            return ExitCode.OK
        check(args, closed)
        _leave_a_deleted_folder(args.repo)
        _command(args)(args)
        return ExitCode.OK
    except BrokenPipeError:
        _quiet_stdout()
        # --json FILE still says why it holds no result (serve has no --json)
        if getattr(args, "json", None) not in (None, "-"):
            _emit_error(args.json, error_json(ExitCode.PIPE_CLOSED, "the reader closed the pipe"))
        return ExitCode.PIPE_CLOSED
    except Stopped as exc:
        # --json still says why it holds no result: a FILE left as it was would hold an earlier run's result.
        if getattr(args, "json", None) is not None:
            _emit_error(args.json, error_json(exc.code, f"stopped by {signal.Signals(exc.code - 128).name}"))
        if serving:     # a server's log says why it ended, as Ctrl-C's "interrupted" does (a command stays quiet)
            _say(f"{PROG}: stopped by {signal.Signals(exc.code - 128).name}")
        raise
    except (Exception, KeyboardInterrupt) as exc:
        return _report(exc, args.debug, None if isinstance(exc, Cancelled) else getattr(args, "json", None))


def _leave_a_deleted_folder(repo: str | None) -> None:
    """A current folder deleted under the shell (`cd build`, then a checkout or a clean removes it) ended every
    command that loads a model: torch's MKL asks for that folder as torch loads, and without it stops the process
    ("Intel oneMKL FATAL ERROR: Cannot load .../libtorch_cpu.so", exit 2). Nothing relative names anything there
    any more, so the run moves to /; a relative repository (`.`) could only have named the folder that is gone."""
    try:
        os.getcwd()
        return
    except FileNotFoundError:
        pass
    if repo is not None and not os.path.isabs(os.path.expanduser(repo)):
        raise UsageError(f"repository {repo}: the current folder was deleted; cd to one that exists, or give the "
                         f"repository's absolute path")
    os.chdir("/")


def _torchrun_follower() -> bool:
    return bool(os.environ.get("TORCHELASTIC_RUN_ID")) and os.environ.get("RANK", "0") != "0"


def _stop_signals() -> None:
    """`kill` (SIGTERM, SIGHUP) unwinds like an exit, so temporary files and folders are removed on the way out.
    A signal ignored when we start stays ignored: `nohup codecomplete serve &` must outlive its terminal.
    Windows has no SIGHUP: there a closed console window (or Ctrl-Break) comes as SIGBREAK."""
    for name in ("SIGTERM", "SIGHUP", "SIGBREAK"):
        number = getattr(signal, name, None)
        if number is None:
            continue
        try:
            if signal.getsignal(number) is not signal.SIG_IGN:
                signal.signal(number, _exit_on_signal)
        except ValueError:      # not the main thread (an embedding program): its own handlers stand
            return
    if not isinstance(sys.unraisablehook, _StopsSentAgain):
        sys.unraisablehook = _StopsSentAgain(sys.unraisablehook)


def _exit_on_signal(number: int, _frame) -> None:
    raise Stopped(128 + number)


class _StopsSentAgain:
    """A stop (SIGTERM, SIGHUP, or Ctrl-C's KeyboardInterrupt) that came while Python ran a finalizer (an object's
    __del__, a weakref callback: the regex package's, while a server started) was raised there, where Python prints
    it as "Exception ignored" with a traceback and goes on: the stop was lost, and the server went on to serve. The
    signal is sent again a moment later, once the finalizer is over; other such exceptions go to the hook before."""

    def __init__(self, previous) -> None:
        self.previous = previous

    def __call__(self, unraisable) -> None:
        error = unraisable.exc_value
        if isinstance(error, Stopped) and isinstance(error.code, int) and error.code > 128:
            number = error.code - 128
        elif isinstance(error, KeyboardInterrupt) and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            number = signal.SIGINT
        else:
            return self.previous(unraisable)
        import threading

        try:
            threading.Timer(0.01, os.kill, (os.getpid(), number)).start()
        except RuntimeError:        # the interpreter is exiting (no new threads): it stops anyway
            pass


def _report(exc: BaseException, debug: bool, json_to: str | None = None) -> int:
    """Say the failure on stderr, and with --json (`json_to`) as an error object where the result would have gone:
    an editor that reads the JSON gets the exit code and the message there too."""
    known = classify(exc)
    if debug:
        traceback.print_exc()
    if known is None:
        message = f"internal error: {type(exc).__name__}: {exc}"
        _say(f"{PROG}: {message}" + ("" if debug else " (--debug shows the traceback)"))
        if json_to:
            _emit_error(json_to, error_json(ExitCode.FAILURE, message, internal=True))
        return ExitCode.FAILURE
    code, message = known
    _say(f"{PROG}: {'error: ' if code != ExitCode.INTERRUPTED else ''}{message}")
    if json_to:
        _emit_error(json_to, error_json(code, message))
    return code


def _emit_error(destination: str, obj: dict) -> None:
    """Write --json's error object as the result would have been written; a destination that cannot take it (the
    --json FILE refused as unwritable, a closed pipe) leaves the exit code and stderr to say it."""
    import json

    try:        # as render.emit_json writes a result: one line on stdout, indented in a file
        if destination == "-":
            write_utf8(sys.stdout, json.dumps(obj, ensure_ascii=False) + "\n")
        else:
            with open(destination, "w", encoding="utf-8", errors=UNENCODABLE) as f:
                f.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    except (OSError, ValueError):      # a full disk under stdout: its buffer must not fail again at exit
        if destination == "-":
            _quiet_stdout()


def _say(line: str) -> None:
    """The line a command ends with, on stderr, which may be a pipe nobody reads any more: then the exit code says it
    all. Full for the moment (a reader that pages, `2>&1 | less`; a terminal behind a slow link, after a long answer),
    it is waited for a few seconds (LAST_LINE_PATIENCE_S), not dropped at once as a server's log lines are."""
    say(line, patience_s=LAST_LINE_PATIENCE_S)


STREAMS = ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w"))


def _standard_streams() -> frozenset[str]:
    """Make the standard streams safe to use, and say which were closed at start (`cmd >&-`).

    A closed descriptor gets /dev/null, so no file the program opens later takes its number (the completion
    would land in it) and nothing is ever None (an error for a closed stderr would otherwise go to stdout).
    Text that cannot be encoded (a file name that is not UTF-8) is replaced, never fatal."""
    closed = set()
    for fd, name, mode in STREAMS:
        try:
            os.fstat(fd)
        except OSError:
            closed.add(name)
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, name, open(fd, mode, encoding="utf-8", errors=UNENCODABLE, closefd=False))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors=UNENCODABLE)
            if sys.platform == "win32" and not stream.isatty():
                # A pipe there (an editor reading the completion) gets the ANSI code page, cp1252: "→" came out as
                # "?", "é" as a byte no UTF-8 reader takes; and every "\n" as "\r\n", which the model never wrote.
                stream.reconfigure(encoding="utf-8", newline="\n")
        except (AttributeError, ValueError):    # not a TextIOWrapper (a test's capture)
            pass
    return frozenset(closed)


def _quiet_stdout() -> None:
    """The reader is gone: point stdout at /dev/null so the flush at exit cannot complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
