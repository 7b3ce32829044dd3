"""A warm server kept busy for minutes, as a day of editing would: does it stay fast, and does its memory stop growing?

`python bench/gpu/soak.py --seconds 240 --out DIR [--model M] [--context-tokens N]`, from the repository root.
Starts `codecomplete serve` on this repository (a real subprocess on a loopback port, codecomplete.serve_bench's
ServerProcess), then runs --clients threads for --seconds, each sending a random mix of what editors and chat
clients send, at random cursors in random files of the repository:
  infill      llama.vim's streamed /infill body (codecomplete.serve_bench.Cursor), greedy or sampled
  gone        the same, the client closing its connection after the first event (the generation must stop)
  openai      /v1/completions with a suffix (fill-in-the-middle), not streamed
  chat        /v1/chat/completions about a function of the file, streamed
Every --sample-s seconds the server's GPU memory (nvidia-smi, per process) and its resident set (/proc) are read.
Writes DIR/soak.{json,md}: per window of the run, requests, errors, /infill first-token p50/p95; the memory
samples; and prints a short table last. A healthy server has no errors but the clients' own disconnects, its
first-token times flat from the first window after warm-up to the last, and its memory flat after warm-up.
"""
from __future__ import annotations

import datetime
import http.client
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from codecomplete.cli import _Parser  # noqa: E402
from codecomplete.serve_bench import Cursor, ServerProcess, server_stages  # noqa: E402

ROUTES = {"infill": 0.65, "gone": 0.1, "openai": 0.15, "chat": 0.1}
SOURCES = ("codecomplete", "models", "kernels", "prompts")


def pick_cursor(rng: random.Random, files: list[Path]) -> tuple[Path, Cursor]:
    """A cursor after some text on a non-blank line of a random file (where an editor asks)."""
    while True:
        path = rng.choice(files)
        text = path.read_text(encoding="utf-8")
        starts = [m.start() for m in re.finditer(r"^[ \t]*\S", text, re.M)]
        if not starts:
            continue
        start = rng.choice(starts)
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        return path, Cursor(text, rng.randint(start + 1, end))


def post(url: str, route: str, body: dict, *, stream: bool, leave_after_first: bool = False) -> dict:
    """One request on a new connection; times to the first byte of content and to the end."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    started = time.perf_counter()
    first = None
    try:
        connection.request("POST", route, json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            return {"status": response.status, "error": response.read()[:200].decode("utf-8", "replace")}
        if not stream:
            payload = json.loads(response.read())
            first = time.perf_counter()
        else:
            for line in response:
                if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                    event = json.loads(line[len(b"data: "):])
                    if "error" in event:
                        return {"status": 200, "error": str(event["error"])[:200]}
                    first = first or time.perf_counter()
                    if leave_after_first:
                        break
        ended = time.perf_counter()
    finally:
        connection.close()
    return {"status": 200, "ttft_ms": 1000 * ((first or ended) - started), "total_ms": 1000 * (ended - started)}


def request(url: str, kind: str, rng: random.Random, files: list[Path], repo: Path) -> dict:
    path, cursor = pick_cursor(rng, files)
    max_tokens = rng.choice((8, 16, 32, 64))
    sampled = rng.random() < 0.3
    if kind in ("infill", "gone"):
        body = cursor.llama_vim_body(max_tokens)
        body["ignore_eos"] = False
        if sampled:
            body.update(temperature=0.8, seed=rng.randrange(1 << 30))
        return post(url, "/infill", body, stream=True, leave_after_first=kind == "gone")
    if kind == "openai":
        body = {"model": "codecomplete", "prompt": cursor.text[:cursor.offset], "suffix": cursor.text[cursor.offset:],
                "max_tokens": max_tokens, "temperature": 0.8 if sampled else 0.0}
        return post(url, "/v1/completions", body, stream=False)
    names = re.findall(r"^\s*def (\w+)", cursor.text, re.M) or ["main"]
    question = f"What does {rng.choice(names)} in {path.relative_to(repo)} do, and what calls it?"
    body = {"model": "codecomplete", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "stream": True, "temperature": 0.8 if sampled else 0.0}
    return post(url, "/v1/chat/completions", body, stream=True)


def gpu_mib(pid: int) -> float | None:
    try:
        rows = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    used = [float(m) for p, m in (r.split(",") for r in rows.strip().splitlines() if "," in r) if int(p) == pid]
    return used[0] if used else None


def rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) / 1024 if match else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv=None) -> int:
    parser = _Parser(prog="python bench/gpu/soak.py", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=240, help="how long the clients send (default 240)")
    parser.add_argument("--clients", type=int, default=3, help="threads sending requests at once (default 3)")
    parser.add_argument("--window-s", type=float, default=30, help="the report's time windows (default 30)")
    parser.add_argument("--sample-s", type=float, default=10, help="memory sampled this often (default 10)")
    parser.add_argument("--model", default=None, help="as for codecomplete (default: its default)")
    parser.add_argument("--context-tokens", default=None, help="the prompt budget (default: codecomplete's)")
    parser.add_argument("--seed", type=int, default=0, help="the clients' random choices (default 0)")
    parser.add_argument("--out", type=Path, default=Path("bench/scratch/soak"),
                        help="results folder (default: bench/scratch/soak)")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[2]
    files = sorted(p for folder in SOURCES for p in (repo / folder).rglob("*.py") if p.stat().st_size > 2000)
    options = [f"--{name.replace('_', '-')}={value}" for name in ("model", "context_tokens")
               if (value := getattr(args, name)) is not None]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    records, samples, lock = [], [], threading.Lock()
    with tempfile.TemporaryDirectory() as folder:
        print(f"starting the server ({' '.join(options) or 'default model'}) …", file=sys.stderr, flush=True)
        server = ServerProcess([sys.executable, "-m", "codecomplete"], repo, env, Path(folder), *options)
        pid = server.info.get("pid", server.process.pid)
        try:
            started = time.monotonic()
            deadline = started + args.seconds

            def client(index: int) -> None:
                rng = random.Random(args.seed * 1000 + index)
                kinds, weights = zip(*ROUTES.items())
                while time.monotonic() < deadline:
                    kind = rng.choices(kinds, weights)[0]
                    at = time.monotonic() - started
                    try:
                        result = request(server.url, kind, rng, files, repo)
                    except (OSError, http.client.HTTPException, ValueError) as exc:
                        result = {"status": 0, "error": f"{type(exc).__name__}: {exc}"[:200]}
                    with lock:
                        records.append({"at_s": round(at, 3), "kind": kind, **result})

            threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
            for thread in threads:
                thread.start()
            while time.monotonic() < deadline:
                samples.append({"at_s": round(time.monotonic() - started, 1), "gpu_mib": gpu_mib(pid),
                                "rss_mib": rss_mib(pid)})
                time.sleep(args.sample_s)
            for thread in threads:
                thread.join(timeout=300)
            samples.append({"at_s": round(time.monotonic() - started, 1), "gpu_mib": gpu_mib(pid),
                            "rss_mib": rss_mib(pid)})
            parts = urlsplit(server.url)
            health = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            health.request("GET", "/health")
            healthy = health.getresponse().status == 200
            health.close()
        finally:
            code = server.stop()
        log = server.log()
        log_tail, stages = log.splitlines()[-40:], server_stages(log)
    windows = []
    for w in range(int(args.seconds // args.window_s + (args.seconds % args.window_s > 0))):
        inside = [r for r in records if w * args.window_s <= r["at_s"] < (w + 1) * args.window_s]
        infills = [r["ttft_ms"] for r in inside if r["kind"] == "infill" and "ttft_ms" in r]
        windows.append({"from_s": w * args.window_s, "requests": len(inside),
                        "errors": sum("error" in r for r in inside), "infill": len(infills),
                        "ttft_p50_ms": percentile(infills, 0.5), "ttft_p95_ms": percentile(infills, 0.95),
                        "gpu_mib": [s["gpu_mib"] for s in samples
                                    if w * args.window_s <= s["at_s"] < (w + 1) * args.window_s],
                        "rss_mib": [s["rss_mib"] for s in samples
                                    if w * args.window_s <= s["at_s"] < (w + 1) * args.window_s]})
    errors = [r for r in records if "error" in r]
    # The server's own stages of each /infill's first token, in log order, by thirds of the run: queueing behind
    # the other clients aside, "prompt" (building it) and "engine" (prefill and first step) should not drift.
    thirds = [stages[i * len(stages) // 3:(i + 1) * len(stages) // 3] for i in range(3)]
    stage_p50 = [{key: percentile([s[key] for s in part if key in s], 0.5) for key in ("queued", "prompt", "engine")}
                 for part in thirds]
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "server": {k: v for k, v in server.info.items() if k != "api_key"},
              "seconds": args.seconds, "clients": args.clients, "routes": ROUTES,
              "requests": len(records), "by_kind": {k: sum(r["kind"] == k for r in records) for k in ROUTES},
              "errors": errors[:50], "healthy_after": healthy, "exit_code": code, "windows": windows,
              "server_stage_p50_by_third": stage_p50,
              "samples": samples, "records": records, "server_log_tail": log_tail}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    lines = [f"# Soak: {len(records)} requests in {args.seconds:.0f} s, {args.clients} clients",
             "", f"{report['date']} · {server.info['engine'].get('device')} · {server.info['engine'].get('name')}",
             f"by kind {report['by_kind']}; errors {len(errors)}; /health after: {healthy}; exit {code}", "",
             "| from s | requests | errors | infill | first token p50 / p95 ms | GPU MiB (min-max) "
             "| RSS MiB (min-max) |",
             "|---|---|---|---|---|---|---|"]
    span = lambda xs: (f"{min(x for x in xs if x is not None):.0f}-{max(x for x in xs if x is not None):.0f}"
                       if any(x is not None for x in xs) else "-")
    for w in windows:
        p50, p95 = w["ttft_p50_ms"], w["ttft_p95_ms"]
        lines.append(f"| {w['from_s']:.0f} | {w['requests']} | {w['errors']} | {w['infill']} | "
                     f"{'-' if p50 is None else f'{p50:.1f} / {p95:.1f}'} | {span(w['gpu_mib'])} | "
                     f"{span(w['rss_mib'])} |")
    lines += ["", "The server's /infill first-token stages, p50 ms, by thirds of the run (log order):", "",
              "| third | queued | prompt | engine |", "|---|---|---|---|"]
    lines += [f"| {i + 1} | " + " | ".join("-" if part[k] is None else f"{part[k]:.1f}"
                                          for k in ("queued", "prompt", "engine")) + " |"
              for i, part in enumerate(stage_p50)]
    (args.out / "soak.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0 if not errors and healthy and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
