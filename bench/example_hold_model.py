"""What the held example lines cost the model: lines typed again in stdlib files (bench/example_hold_prefill.py's
cursors), one request a character, through two sessions: as the code is (example lines held while the file's window
begins where it began) and with every window counted as moved (`_window_start` patched: the lines follow the cursor's
line as before 2026-12-05's change). Where the two prompts differ, the embedded model (SmolLM2-135M, left to right,
greedy, healed) completes each, and its first line is scored against the rest of the line typed (exact match).
CPU, the embedded model, one torch thread.

    python bench/example_hold_model.py [--budget 1024] [--cursors 8] [--per-line 6]

--per-line: at most this many differing keystrokes a line, spread evenly (the model's time). --new-line: each
session first completes at the end of the line above, the cursor's line not there yet (the line above typed, then
Enter): the cursor's line begins with the lines found for the line above held, the case the held lines of another
line decide (within a line, the two sessions' prompts never differ).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from example_hold_prefill import stdlib_cursors  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--cursors", type=int, default=8, help="cursors a package")
    parser.add_argument("--per-line", type=int, default=6)
    parser.add_argument("--new-line", action="store_true", help="the line above completed first, then Enter")
    args = parser.parse_args(argv)
    import torch

    from codecomplete.session import Sampling, Session
    from models import GenerationConfig, load_model
    from prompts import completion
    from prompts.examples import example_key
    from prompts.languages import language_for

    torch.set_num_threads(1)
    engine = load_model(device="cpu")
    builder = SimpleNamespace(tokenizer=engine.tokenizer, check_prompt=lambda ids: None, context_length=16384)
    window_start, moved, numbers = completion._window_start, [False], itertools.count()
    completion._window_start = lambda window, form: (str(next(numbers)),) if moved[0] else window_start(window, form)

    def run(packed) -> str:
        config = GenerationConfig(max_new_tokens=24, stop_token_ids=tuple(packed.stop_token_ids),
                                  stop_strings=tuple(packed.stop_strings), required_prefix=packed.heal_text)
        return engine.generate(packed.ids, config).text.split("\n", 1)[0].rstrip()

    scores = {"held": [], "follow": []}
    with_key, sites = [], 0
    with tempfile.TemporaryDirectory() as scratch:
        for package, index, repo, path, row in stdlib_cursors(Path(scratch), args.cursors):
            rows = (repo / path).read_text(encoding="utf-8").split("\n")
            line = rows[row]
            indent = len(line) - len(line.lstrip())
            sessions = {"held": Session(builder, index), "follow": Session(builder, index)}
            differing = []
            if args.new_line and row > 0:
                above = rows[:row] + rows[row + 1:]     # the line above just typed, the cursor's line not yet begun
                for name, session in sessions.items():
                    moved[0] = name == "follow"
                    session.complete(path, text="\n".join(above), line=row, col=len(rows[row - 1]) + 1,
                                     budget=args.budget, sampling=Sampling(max_tokens=0))
                moved[0] = False
            for typed in range(len(line) - indent + 1):
                rows[row] = line[:indent + typed]
                kwargs = dict(text="\n".join(rows), line=row + 1, col=indent + typed + 1, budget=args.budget,
                              sampling=Sampling(max_tokens=0))
                prompts = {}
                for name, session in sessions.items():
                    moved[0] = name == "follow"
                    prompts[name] = session.complete(path, **kwargs).prompt
                moved[0] = False
                sites += 1
                if prompts["held"].ids != prompts["follow"].ids:
                    differing.append((typed, prompts))
            rows[row] = line
            step = max(1, len(differing) / args.per_line)
            for typed, prompts in (differing[int(k * step)] for k in range(min(args.per_line, len(differing)))):
                truth = line[indent + typed:].rstrip()
                for name, packed in prompts.items():
                    scores[name].append(run(packed) == truth)
                with_key.append(bool(example_key(line[:indent + typed], language_for(path).keywords)))
            print(f"{package}/{path}:{row + 1}: {len(differing)} differing keystrokes; held "
                  f"{sum(scores['held'])}, follow {sum(scores['follow'])} of {len(scores['held'])} so far",
                  flush=True)
    held, follow = scores["held"], scores["follow"]
    gained = sum(1 for h, f in zip(held, follow) if h and not f)
    lost = sum(1 for h, f in zip(held, follow) if f and not h)
    print(f"\nbudget {args.budget}: {sites} keystrokes, {len(held)} scored where the prompts differ; exact match held "
          f"{sum(held)} ({100 * sum(held) / max(1, len(held)):.1f}%), following the line {sum(follow)} "
          f"({100 * sum(follow) / max(1, len(follow)):.1f}%); held right where following was wrong {gained}, the "
          f"reverse {lost}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
