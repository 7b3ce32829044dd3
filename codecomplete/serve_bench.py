"""`python -m codecomplete.serve_bench`: an editor typing through a function, replayed against `codecomplete serve`.

The function's body is typed a few characters per request, each request the /infill body llama.vim sends (256
lines before the cursor, 64 after), streamed so that the first token's arrival is seen, generation held to
--max-tokens (greedy, `ignore_eos`: the end-of-generation tokens banned and the format's stops off, so every
request generates as much, but where llama.cpp's infill sampler, which llama.vim's body lists, finds no text
candidate left and ends the middle, as it does in llama.cpp). Per request: time to the first
token and to the end as the editor sees them, prompt tokens prefilled and reused (the server's timings). Then the
first request in another file (a cold prefill on a warm server; --more-cold adds first requests in more files), and
the same cursors through the one-shot command line (`--no-server`) for comparison. The server is a real subprocess on a loopback port.

Writes NAME.json and NAME.md (default bench/scratch/serve-cpu or serve-gpu) and prints the bars' numbers last.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import http.client
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .cli import _Parser, _tokens, _whole_number, check_output_path
from .errors import UsageError
from .render import dtypes_label

N_PREFIX, N_SUFFIX = 256, 64          # llama.vim's lines before and after the cursor
LLAMA_VIM_SAMPLERS = ("top_k", "top_p", "infill", "temperature")   # llama.vim's chain, and the greedy temperature
START_TIMEOUT_S = 900
BARS = {   # (what, unit, target, the summary key), from the issue
    "cpu": [("p50 time to first token", "ms", 250, "ttft_ms_p50"),
            ("p50 total latency", "ms", 1500, "total_ms_p50"),
            ("prompt tokens reused (mean)", "%", 90, "reused_percent_mean")],
    "cuda": [("p50 time to first token", "ms", 60, "ttft_ms_p50"),
             ("p50 total latency", "ms", 300, "total_ms_p50"),
             ("cold prefill in another file: first token", "ms", 400, "cold_ttft_ms")],
}


class ServerProcess:
    """`codecomplete serve` as a subprocess on a free loopback port, with its own runtime dir (so it is the only
    server its clients find), its output in a log file, and a stop that always ends it."""

    def __init__(self, command: list[str], repo: Path, env: dict, folder: Path, *options: str,
                 stderr=subprocess.STDOUT) -> None:
        """`stderr`: where its log goes (Popen's; by default with its output into the log file)."""
        self.runtime = folder / "runtime"
        self.env = {**env, "CODECOMPLETE_RUNTIME_DIR": str(self.runtime)}
        self.log_path = folder / "server.log"
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.process = subprocess.Popen([*command, "serve", str(repo), "--port", "0", *options],
                                        stdout=self._log, stderr=stderr, env=self.env)
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
                raise RuntimeError(f"the server exited with {self.process.returncode}: {self.log()}")
            for path in (self.runtime / "servers").glob("*.json"):
                try:
                    return json.loads(path.read_text(encoding="utf-8"))
                except ValueError:      # being written
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not start within {START_TIMEOUT_S} s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        """Ask it to stop (SIGINT by default); its exit code. A server that hangs is killed, and that is an error."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError(f"the server did not stop within {timeout} s") from None
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@dataclass
class Cursor:
    """A buffer as the editor has it, and the 1-based cursor in it."""

    text: str
    offset: int

    @property
    def line(self) -> int:
        return self.text.count("\n", 0, self.offset) + 1

    @property
    def col(self) -> int:
        return self.offset - (self.text.rfind("\n", 0, self.offset) + 1) + 1

    def llama_vim_body(self, max_tokens: int, samplers: tuple[str, ...] = LLAMA_VIM_SAMPLERS) -> dict:
        """llama.vim's /infill request at this cursor, held to max_tokens greedy tokens (the bench's only change:
        temperature 0, listed in samplers, as llama.cpp runs only the samplers listed)."""
        lines = self.text.split("\n")
        row, col = self.line - 1, self.col - 1
        current = lines[row]
        prompt = current[:col]
        return {"id_slot": 0, "input_prefix": "".join(f"{x}\n" for x in lines[max(0, row - N_PREFIX):row]),
                "input_suffix": current[col:] + "\n" + "".join(f"{x}\n" for x in lines[row + 1:row + 1 + N_SUFFIX]),
                "input_extra": [], "prompt": prompt, "n_predict": max_tokens, "stop": [], "n_indent": 0,
                "top_k": 40, "top_p": 0.90, "samplers": list(samplers),
                "stream": True, "cache_prompt": True, "t_max_prompt_ms": 500, "t_max_predict_ms": 0, "temperature": 0.0,
                "ignore_eos": True, "response_fields": [], "model": ""}


def typing_through(source: str, function: str, chars: int, requests: int) -> list[Cursor]:
    """The function's body typed `chars` characters at a time: the buffer has what is typed so far, then the rest
    of the file after the function."""
    node = next((n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and n.name == function), None)
    if node is None:
        raise ValueError(f"no function {function} in it")
    lines = source.split("\n")
    head = "".join(f"{x}\n" for x in lines[:node.body[0].lineno - 1])
    body = "\n".join(lines[node.body[0].lineno - 1:node.end_lineno])
    tail = "\n" + "\n".join(lines[node.end_lineno:])
    steps = min(requests, len(body) // chars)
    return [Cursor(head + body[:k * chars] + tail, len(head) + k * chars) for k in range(1, steps + 1)]


def infill(url: str, body: dict) -> dict:
    """One streamed /infill on a new connection (as llama.vim's curl makes one): the times the editor sees and the
    server's own timings."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    started = time.perf_counter()
    try:
        connection.request("POST", "/infill", json.dumps(body).encode(),
                           {"Content-Type": "application/json", "Authorization": "Bearer "})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"/infill answered {response.status}: {response.read()[:300]!r}")
        first, content, last = None, [], None
        for line in response:
            if not line.startswith(b"data: "):
                continue
            first = first or time.perf_counter()
            event = json.loads(line[len(b"data: "):])
            if "error" in event:
                raise RuntimeError(f"/infill failed: {event['error']}")
            content.append(event["content"])
            last = event
        ended = time.perf_counter()
    finally:
        connection.close()
    timings = last["timings"]
    return {"ttft_ms": 1000 * (first - started), "total_ms": 1000 * (ended - started),
            "prompt_tokens": last["tokens_evaluated"], "prefilled": timings["prompt_n"], "reused": timings["cache_n"],
            "generated": last["tokens_predicted"], "server_prompt_ms": timings["prompt_ms"],
            "server_predicted_ms": timings["predicted_ms"], "text": "".join(content)}


def one_shot(command: list[str], repo: Path, path: str, cursor: Cursor, options: list[str], env: dict,
             max_tokens: int) -> dict:
    """The same cursor through `codecomplete REPO --file PATH --stdin` in a new process, as an editor without a
    server runs it."""
    started = time.perf_counter()
    proc = subprocess.run([*command, str(repo), "--file", path, "--stdin", "--line", str(cursor.line), "--col",
                           str(cursor.col), "--max-tokens", str(max_tokens), "--json", "--no-server", *options],
                          input=cursor.text, capture_output=True, encoding="utf-8", env=env, timeout=900)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"the one-shot command failed: {proc.stderr.strip()}")
    result = json.loads(proc.stdout)
    return {"line": cursor.line, "col": cursor.col, "total_s": wall, "ttft_ms": result["timings"]["ttft_ms"],
            "load_s": result["timings"]["load_s"], "prompt_tokens": result["prompt_tokens"],
            "generated": result["completion_tokens"]}


# The server's summary line per request (codecomplete/server/worker.py): where its time to the first token went.
STAGES = ("queued", "prompt", "engine", "text", "sent")
SUMMARY = re.compile(r"^POST /infill · .* · first ([\d.]+) ms \(([^)]*)\)")


def server_stages(log: str) -> list[dict]:
    """Per /infill request, in order: the server's first-token time and its stages (ms), from its log."""
    stages = []
    for line in log.splitlines():
        match = SUMMARY.match(line)
        if match:
            parts = dict(part.split(" ") for part in match.group(2).split(", "))
            stages.append({"first": float(match.group(1)), **{k: float(v) for k, v in parts.items()}})
    return stages


def breakdown(requests: list[dict]) -> dict:
    """p50 of each stage over the requests that have the server's stages, and of what lay outside the server
    (the client's time to the first token less the server's: connecting, HTTP, reading the stream)."""
    rows = [r for r in requests if r.get("server")]
    if not rows:
        return {}
    p50 = {}
    for key in ("first", *STAGES):    # ("sent" is missing where a job ended before the stream took its first text)
        values = [r["server"][key] for r in rows if key in r["server"]]
        if values:
            p50[key] = statistics.median(values)
    p50["outside"] = statistics.median(r["ttft_ms"] - r["server"]["first"] for r in rows)
    return p50


def summarize(requests: list[dict], cold: dict, oneshots: list[dict]) -> dict:
    def p(values, q):
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]
    ttft = [r["ttft_ms"] for r in requests]
    total = [r["total_ms"] for r in requests]
    reused = [100 * r["reused"] / r["prompt_tokens"] for r in requests]
    return {
        "requests": len(requests), "ttft_ms_p50": p(ttft, 50), "ttft_ms_p90": p(ttft, 90),
        "total_ms_p50": p(total, 50), "total_ms_p90": p(total, 90),
        "server_prompt_ms_p50": p([r["server_prompt_ms"] for r in requests], 50),
        "prompt_tokens_mean": statistics.mean(r["prompt_tokens"] for r in requests),
        "prefilled_mean": statistics.mean(r["prefilled"] for r in requests),
        "reused_percent_mean": statistics.mean(reused),
        "generated_mean": statistics.mean(r["generated"] for r in requests),
        "cold_ttft_ms": cold["ttft_ms"], "cold_prompt_tokens": cold["prompt_tokens"], "cold_prefilled": cold["prefilled"],
        "oneshot_total_s_median": statistics.median(o["total_s"] for o in oneshots) if oneshots else None,
        "oneshot_ttft_ms_median": statistics.median(o["ttft_ms"] for o in oneshots) if oneshots else None,
        "first_token_p50_ms": breakdown(requests),
    }


def bars(device: str, summary: dict) -> list[dict]:
    rows = []
    for what, unit, target, key in BARS["cuda" if device.startswith("cuda") else "cpu"]:
        value = summary[key]
        met = value >= target if unit == "%" else value <= target
        rows.append({"bar": what, "target": f"{'>=' if unit == '%' else '<='} {target} {unit}",
                     "value": round(value, 1), "unit": unit, "met": met})
    if not device.startswith("cuda"):
        rows.append({"bar": "requests at the default context", "target": ">= 30", "value": summary["requests"],
                     "unit": "", "met": summary["requests"] >= 30})
    return rows


def machine(info: dict) -> dict:
    from models.options import cpu_name

    described = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch
        described["torch"] = torch.__version__
        if info["engine"]["device"].startswith("cuda"):
            described["gpu"] = torch.cuda.get_device_name(0)
    except Exception as exc:      # what the machine is matters less than the numbers: say why it is unknown
        described["torch"] = f"unknown ({exc})"
    return described


def _server_options(server: dict) -> str:
    """The server's cache options the report names: --cache-reuse where on, --cache-ram where the run gave it."""
    reuse, ram = server.get("cache_reuse"), server.get("cache_ram")
    return (f", --cache-reuse {reuse}" if reuse else "") + (f", --cache-ram {ram}" if ram is not None else "")


def markdown(report: dict) -> str:
    s, engine = report["summary"], report["server"]["engine"]
    where = report["machine"].get("gpu") or f"{report['machine']['cpu']}, {report['machine']['cores']} cores"
    lines = [f"# Keystroke replay against codecomplete serve: {where}, {report['date']}", "",
             f"{engine['name']} ({engine['device']}, {dtypes_label(engine['dtype'], engine.get('matmul_dtype'))}, "
             f"{engine['attention']}), prompts of "
             f"{report['server']['prompt_budget']:,} tokens; typing `{report['function']}` in `{report['file']}` "
             f"({report['repo']}), {report['chars_per_request']} characters per request, {report['max_tokens']} new "
             f"tokens each (greedy; samplers {', '.join(report.get('samplers', LLAMA_VIM_SAMPLERS))})"
             f"{_server_options(report['server'])}. "
             f"Python {report['machine']['python']}, torch {report['machine'].get('torch')}. "
             f"Load average at start {report['machine']['load_average_start']}, at end "
             f"{report['machine']['load_average_end']}: other work on the machine slows every number here." +
             ("".join(f" {k}={v}." for k, v in sorted(report.get("environment", {}).items()))), "",
             "| bar | target | measured | met |", "|---|---|---|---|"]
    lines += [f"| {b['bar']} | {b['target']} | {b['value']} {b['unit']} | {'yes' if b['met'] else 'NO'} |"
              for b in report["bars"]]
    lines += ["", "| | p50 | p90 |", "|---|---|---|",
              f"| time to first token (ms) | {s['ttft_ms_p50']:.0f} | {s['ttft_ms_p90']:.0f} |",
              f"| total (ms) | {s['total_ms_p50']:.0f} | {s['total_ms_p90']:.0f} |", ""]
    if s.get("first_token_p50_ms"):
        b = s["first_token_p50_ms"]
        lines += ["Where a keystroke's first token went (p50 of each part, ms; the server's log): queued for the "
                  "engine thread, building the prompt, the engine's call to its first token, then to the first text, "
                  "handing it to the stream; outside: the client's time less the server's (HTTP).", "",
                  "| server's first token | queued | prompt | engine | text | sent | outside |",
                  "|---|---|---|---|---|---|---|",
                  "| " + " | ".join(f"{b[k]:.1f}" if k in b else "-" for k in ("first", *STAGES, "outside")) + " |", ""]
    lines += [f"{s['requests']} requests; per request on average {s['prompt_tokens_mean']:.0f} prompt tokens, "
               f"{s['prefilled_mean']:.1f} prefilled, {s['reused_percent_mean']:.1f}% reused, "
               f"{s['generated_mean']:.1f} generated. First request in the file (cold): "
               f"{report['first_request']['ttft_ms']:.0f} ms to the first token, {report['first_request']['prefilled']:,} "
               f"tokens prefilled. First request in another file: {s['cold_ttft_ms']:.0f} ms, "
               f"{s['cold_prefilled']:,} of {s['cold_prompt_tokens']:,} tokens prefilled "
               f"(`{report.get('other_file', '')}`, the middle; the server's own prompt window "
               f"{report['cold_other_file']['server_prompt_ms']:.0f} ms{_cold_clause(report['cold_other_file'])})."]
    if report.get("more_cold"):
        lines += ["", "First requests in more files (a third of the way in), after it:", "",
                  "| file | first token (ms) | prompt | prefilled | server's prompt window (ms) |",
                  "|---|---|---|---|---|"]
        lines += [f"| `{c['file']}` | {c['ttft_ms']:.0f} | {c['prompt_tokens']:,} | {c['prefilled']:,} | "
                  f"{c['server_prompt_ms']:.0f} |" for c in report["more_cold"]]
    if report["one_shot"]:
        lines += ["", "The same cursors through the one-shot command line (`--no-server`, a new process each):", "",
                  "| line:col | total (s) | load (s) | time to first token (ms) | prompt tokens |", "|---|---|---|---|---|"]
        lines += [f"| {o['line']}:{o['col']} | {o['total_s']:.1f} | {o['load_s']:.1f} | {o['ttft_ms']:.0f} | "
                  f"{o['prompt_tokens']:,} |" for o in report["one_shot"]]
    lines += ["", "| # | line:col | first token (ms) | total (ms) | prompt | prefilled | reused | generated | "
              "server: prompt / engine (ms) |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {i} | {r['line']}:{r['col']} | {r['ttft_ms']:.0f} | {r['total_ms']:.0f} | {r['prompt_tokens']} | "
              f"{r['prefilled']} | {r['reused']} | {r['generated']} | "
              f"{_prompt_and_engine(r)} |"
              for i, r in enumerate(report["requests"], 1)]
    return "\n".join(lines) + "\n"


def _sampler_list(text: str) -> tuple[str, ...]:
    """--samplers: llama.cpp's sampler names, comma-separated (the server skips names it does not know: here an
    error, since a misspelt one would quietly time another chain)."""
    from .server.samplers import NAMES

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown)}: not a llama.cpp sampler ({', '.join(sorted(NAMES))})")
    return names


def _cold_clause(record: dict) -> str:
    """The server's prompt building and engine time of a request, as a clause for a sentence ("" if unknown)."""
    stages = record.get("server")
    return (f"; building its prompt {stages['prompt']:.0f} ms, the engine's first token {stages['engine']:.0f} ms"
            if stages else "")


def _prompt_and_engine(record: dict) -> str:
    """The same as a table cell ("-" if unknown)."""
    stages = record.get("server")
    return f"{stages['prompt']:.1f} / {stages['engine']:.1f}" if stages else "-"


def parse_args(argv):
    # Errors in one line and exit status 2, like codecomplete's own, before the server starts.
    parser = _Parser(prog="python -m codecomplete.serve_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="the repository (default: the current folder)")
    parser.add_argument("--file", default="models/engine.py", help="the file typed in (relative to --repo; default: models/engine.py)")
    parser.add_argument("--function", default="_generate", help="the function whose body is typed (default: _generate)")
    parser.add_argument("--other-file", default="prompts/completion.py", help="the cold request's file (default: prompts/completion.py)")
    parser.add_argument("--more-cold", nargs="*", default=[], metavar="FILE",
                        help="first requests in these files too (a third of the way in), after the cold one: "
                             "reported beside it, not a bar")
    parser.add_argument("--chars", type=_whole_number(1), default=3, help="characters typed per request (default: 3)")
    parser.add_argument("--requests", type=_whole_number(1), default=40, help="at most this many keystrokes (default: 40)")
    parser.add_argument("--max-tokens", type=_tokens, default=16, help="new tokens per request (default: 16)")
    parser.add_argument("--one-shot", type=_whole_number(0), default=2,
                        help="cursors also run through the one-shot CLI (default: 2)")
    parser.add_argument("--model", help="as for codecomplete (e.g. random:CodeLlama-7B:.gpu/tokenizer)")
    parser.add_argument("--device", help="as for codecomplete (default: its default)")
    parser.add_argument("--attention", choices=("flash", "sdpa", "eager"),
                        help="as for codecomplete (default: its default)")
    parser.add_argument("--context-tokens", type=_tokens, help="the prompt budget (default: codecomplete's)")
    parser.add_argument("--samplers", type=_sampler_list, default=LLAMA_VIM_SAMPLERS,
                        help="the bodies' sampler chain, comma-separated (default: llama.vim's, with temperature for "
                             "greedy: top_k,top_p,infill,temperature; random weights: leave out infill, whose 0.2 "
                             "threshold drops their near-uniform candidates and ends each answer at once)")
    parser.add_argument("--cache-reuse", type=_whole_number(0), default=0, metavar="N",
                        help="the server's --cache-reuse (llama.cpp's; default: 0, off)")
    parser.add_argument("--cache-ram", type=_whole_number(-1), default=None, metavar="MIB",
                        help="the server's --cache-ram (its prompt cache; default: the server's default)")
    parser.add_argument("--out", type=Path, help="NAME for NAME.json and NAME.md (default: bench/scratch/serve-DEVICE)")
    args = parser.parse_args(argv)
    for option, path in (("--file", args.file), ("--other-file", args.other_file),
                         *(("--more-cold", path) for path in args.more_cold)):
        if not (args.repo / path).is_file():
            parser.error(f"{option} {path}: no such file in {args.repo}")
    try:
        source = (args.repo / args.file).read_text(encoding="utf-8")
        args.cursors = typing_through(source, args.function, args.chars, args.requests + 1)
    except (OSError, ValueError, SyntaxError) as exc:    # unreadable, not UTF-8, not Python, no such function
        parser.error(f"--file {args.file}: {exc.strerror if isinstance(exc, OSError) else exc}")
    if len(args.cursors) < 2:       # the first request, then at least one keystroke
        parser.error(f"--chars {args.chars}: the body of {args.function} is too short to type in steps of that many")
    if args.out is not None:        # a folder that is not there, or a file's: a traceback after the whole run
        for path in (args.out.with_suffix(".json"), args.out.with_suffix(".md")):
            try:
                check_output_path("--out", str(path))
            except UsageError as exc:
                parser.error(str(exc))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    load_at_start = list(os.getloadavg())
    repo = args.repo.resolve()
    cursors = args.cursors
    options = [f"--{name.replace('_', '-')}={value}" for name in ("model", "device", "attention", "context_tokens")
               if (value := getattr(args, name)) is not None]
    command = [sys.executable, "-m", "codecomplete"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as folder:
        print(f"starting the server ({' '.join(options) or 'default model'}) …", file=sys.stderr, flush=True)
        try:
            server = ServerProcess(command, repo, env, Path(folder), *options, "--max-tokens", str(args.max_tokens),
                                   "--cache-reuse", str(args.cache_reuse),
                                   *(["--cache-ram", str(args.cache_ram)] if args.cache_ram is not None else []))
        except RuntimeError as exc:     # a bad --model or --device: the server's own one-line error ends its log
            reason = re.sub(r"^the server exited with \d+: ", "", str(exc).strip().splitlines()[-1])
            print(f"python -m codecomplete.serve_bench: the server did not start: {reason}", file=sys.stderr)
            exited = re.match(r"the server exited with (\d+)", str(exc))
            return int(exited.group(1)) if exited else 1
        try:
            first = infill(server.url, cursors[0].llama_vim_body(args.max_tokens, args.samplers))
            requests = []
            for cursor in cursors[1:]:
                requests.append({"line": cursor.line, "col": cursor.col,
                                 **infill(server.url, cursor.llama_vim_body(args.max_tokens, args.samplers))})
                print(f"  {len(requests)}/{len(cursors) - 1}: first token {requests[-1]['ttft_ms']:.0f} ms, "
                      f"total {requests[-1]['total_ms']:.0f} ms, {requests[-1]['prefilled']} prefilled",
                      file=sys.stderr, flush=True)
            other = (repo / args.other_file).read_text(encoding="utf-8")
            cold = infill(server.url, Cursor(other, len(other) // 2).llama_vim_body(args.max_tokens, args.samplers))
            more_cold = []
            for path in args.more_cold:
                text = (repo / path).read_text(encoding="utf-8")
                more_cold.append({"file": path, **infill(server.url, Cursor(text, len(text) // 3).llama_vim_body(
                    args.max_tokens, args.samplers))})
        finally:
            code = server.stop()
        server_log = server.log()
        if code != 0:
            raise RuntimeError(f"the server ended with {code}: {server_log[-2000:]}")
        stages = server_stages(server_log)
        if len(stages) == 2 + len(requests) + len(more_cold):     # one line per /infill, in order
            for record, stage in zip([first, *requests, cold, *more_cold], stages):
                record["server"] = stage
        picks = [cursors[1 + i * (len(cursors) - 2) // max(1, args.one_shot - 1)] for i in range(args.one_shot)]
        oneshots = [one_shot(command, repo, args.file, c, options, {**env, "CODECOMPLETE_RUNTIME_DIR": folder},
                             args.max_tokens) for c in picks]
    summary = summarize(requests, cold, oneshots)
    info = server.info
    device = info["engine"]["device"]
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {**machine(info), "load_average_start": load_at_start,
                          "load_average_end": list(os.getloadavg())},
              "server": {**{key: info[key] for key in ("engine", "prompt_budget", "version")},
                         "cache_reuse": args.cache_reuse, "cache_ram": args.cache_ram,
                         "warm_up": next((line.strip() for line in server_log.splitlines() if "warmed up" in line), None)},
              "repo": repo.name, "file": args.file, "other_file": args.other_file, "function": args.function,
              "chars_per_request": args.chars,
              "environment": {k: v for k, v in os.environ.items()     # the switches the server ran with
                              if k.startswith("CODECOMPLETE_") and k != "CODECOMPLETE_API_KEY"},
              "max_tokens": args.max_tokens, "samplers": list(args.samplers), "summary": summary,
              "bars": bars(device, summary),
              "first_request": first, "cold_other_file": cold, "more_cold": more_cold, "one_shot": oneshots,
              "requests": requests, "server_log": server_log.splitlines()[-80:]}
    out = args.out or Path("bench/scratch") / f"serve-{'gpu' if device.startswith('cuda') else 'cpu'}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    print(f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.md')}\n")
    print(f"{'bar':<44} {'target':>12} {'measured':>12}  met")
    for bar in report["bars"]:
        print(f"{bar['bar']:<44} {bar['target']:>12} {str(bar['value']) + ' ' + bar['unit']:>12}  "
              f"{'yes' if bar['met'] else 'NO'}")
    if oneshots:
        print(f"{'one-shot CLI, same cursors (median)':<44} {'':>12} {summary['oneshot_total_s_median']:>10.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
