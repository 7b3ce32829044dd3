"""The warm server's per-request prompt stage on this machine: llama.vim's /infill requests replayed against one
Session (the index kept fresh, the prefix's context kept sticky, the server's idle upkeep between requests), the
engine left out. What the server logs as "prompt" (codecomplete/server/worker.py) is `Session.infill` here.

    python bench/prompt_stage.py [--repo .] [--budget 8192] [--requests 40] [--profile] [--digest FILE]

Before/after ratios: run the two versions interleaved several times (PYTHONPATH at each), serving the same frozen
copy, and compare medians; results under bench/scratch/.

Cursors: serve_bench's typing through `--function` of `--file` (a few characters per request), with a jump to a
cursor in another file of the repository every `--jump-every` requests. The tokenizer is the embedded model's
(the one the H200 runs carry as .gpu/tokenizer). Prints the per-request times (ms) and their median; `--digest`
writes one SHA-256 per prompt (its ids, context, heal text, stops), to compare two versions of the code: the
prompts must not change. Serve a frozen copy of the repository for that (`git archive HEAD | tar -x -C DIR`, then
`--repo DIR`): served from the working tree, a change to a file the prompts quote moves their line numbers. `--profile` prints cProfile's top functions over the replayed requests.
It also prints how much of each prompt the last one began with (what the warm server's cache reuses;
the engine's own count, serve_bench's, also keeps what the last request generated), and how much llama.cpp's cache
reuse (`serve --cache-reuse N`: runs of the last prompt moved into place) would keep.
Results are for comparing versions on the same machine minutes apart (a shared 2-core box: medians only).
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pstats
import statistics
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def tokenizer(folder: Path | None):
    """The tokenizer in `folder`, or the embedded model's as a loaded engine carries it (its GGUF converted once
    into the cache)."""
    from models.loading.hf import load_tokenizer

    if folder is None:
        import torch

        from models.loading import embedded_model_path
        from models.loading.gguf import gguf_checkpoint

        folder = Path(gguf_checkpoint(embedded_model_path(), torch.float32))
    return load_tokenizer(folder)


def cursors(repo: Path, file: str, function: str, chars: int, requests: int, jump_every: int, others: list[str]):
    from codecomplete.serve_bench import Cursor, typing_through

    typed = typing_through((repo / file).read_text(encoding="utf-8"), function, chars, requests)
    out = []
    for number, cursor in enumerate(typed):
        out.append(cursor)
        if jump_every and number % jump_every == jump_every - 1 and others:
            other = others[(number // jump_every) % len(others)]
            text = (repo / other).read_text(encoding="utf-8")
            out.append(Cursor(text, len(text) * (1 + number % 3) // 4))
    return out


def digest(packed) -> str:
    record = json.dumps([packed.ids, [list(vars(item).values()) for item in packed.context], packed.heal_text,
                         packed.stop_token_ids, packed.stop_strings, packed.format, packed.chosen, packed.cut])
    return hashlib.sha256(record.encode()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="the repository served (default: .)")
    parser.add_argument("--file", default="models/engine.py", help="the file typed in (default: models/engine.py)")
    parser.add_argument("--function", default="_generate", help="the function typed through (default: _generate)")
    parser.add_argument("--others", nargs="*", default=["prompts/completion.py", "prompts/packing.py",
                                                         "codecomplete/server/llama_cpp.py"],
                        help="files the cursor jumps to now and then")
    parser.add_argument("--chars", type=int, default=3, help="characters typed per request (default: 3)")
    parser.add_argument("--requests", type=int, default=40, help="requests typing through (default: 40)")
    parser.add_argument("--jump-every", type=int, default=10,
                        help="a jump to another file after this many requests (default: 10; 0: none)")
    parser.add_argument("--budget", type=int, default=8192, help="prompt budget in tokens (default: 8192)")
    parser.add_argument("--warm", type=int, default=64, help="files the server's warmer builds prompts in first")
    parser.add_argument("--tokenizer", type=Path,
                        help="a folder with the tokenizer (default: the embedded model's; on the H200: .gpu/tokenizer)")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    parser.add_argument("--digest", type=Path, help="write one SHA-256 per prompt to this file")
    parser.add_argument("--json", type=Path, help="write the per-request times here")
    parser.add_argument("--cache-reuse", type=int, default=256, metavar="N",
                        help="also count what llama.cpp's cache reuse with runs of N tokens would keep (default: 256)")
    args = parser.parse_args()

    from codecomplete.server.llama_cpp import InfillRequest
    from codecomplete.server.warming import PromptWarmer
    from codecomplete.session import Sampling, Session
    from prompts import index_repository

    repo = args.repo.resolve()
    index = index_repository(repo)
    engine = types.SimpleNamespace(tokenizer=tokenizer(args.tokenizer), check_prompt=lambda ids: None)
    session = Session(engine, index, args.budget)
    warmer = PromptWarmer(session, args.budget, max_files=args.warm)
    warmer.run(1e9)                                     # (the server warms before it announces itself)
    while session.tidy():
        pass
    sampling = Sampling(max_tokens=32)
    bodies = [InfillRequest(**c.llama_vim_body(32)) for c in cursors(
        repo, args.file, args.function, args.chars, args.requests, args.jump_every, args.others)]

    profiler = cProfile.Profile() if args.profile else None

    def request(body):
        if profiler:
            profiler.enable()
        start = time.perf_counter_ns()
        generation = session.infill(body.input_prefix + body.prompt, body.input_suffix, sampling=sampling,
                                    budget=args.budget)
        elapsed = (time.perf_counter_ns() - start) / 1e6
        if profiler:
            profiler.disable()
        session.tidy()                                   # the server's upkeep after each request
        return elapsed, generation.prompt

    from models.cache_reuse import reusable_runs, reused_end

    times, digests, lengths, prefilled, prefilled_moving = [], [], [], [], []
    last: list[int] = []
    for body in bodies:
        elapsed, packed = request(body)
        times.append(elapsed)
        digests.append(digest(packed))
        if last:    # what the warm server's cache (the last prompt) lacks: everything after the first change
            same = next((n for n, (a, b) in enumerate(zip(last, packed.ids)) if a != b), min(len(last), len(packed.ids)))
            lengths.append(len(packed.ids))
            prefilled.append(len(packed.ids) - same)
            start = min(same, len(packed.ids) - 1)
            kept = reused_end(start, reusable_runs(last, packed.ids, start, args.cache_reuse))
            prefilled_moving.append(len(packed.ids) - kept)
        last = packed.ids
    reuse = 1 - sum(prefilled) / max(1, sum(lengths))
    print(f"{len(times)} requests over {len(index.files)} files: median {statistics.median(times):.2f} ms, "
          f"mean {statistics.mean(times):.2f} ms, min {min(times):.2f} ms, max {max(times):.2f} ms")
    print(f"after the first: {statistics.mean(lengths or [0]):.1f} prompt tokens and "
          f"{statistics.mean(prefilled or [0]):.1f} prefilled a request on average, {100 * reuse:.1f}% reused; with "
          f"--cache-reuse {args.cache_reuse} (runs moved into place) {statistics.mean(prefilled_moving or [0]):.1f} "
          f"prefilled, {100 * (1 - sum(prefilled_moving) / max(1, sum(lengths))):.1f}% reused")
    if args.digest:
        args.digest.write_text("\n".join(digests) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"times_ms": times, "median_ms": statistics.median(times),
                                         "prompt_tokens": lengths, "prefilled": prefilled, "reused": reuse,
                                         "prefilled_with_cache_reuse": prefilled_moving}) + "\n")
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(70)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
