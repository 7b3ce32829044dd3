"""What a chat's follow-up questions prefill: scripted conversations over standard-library packages, through the
REPL's conversation (codecomplete.chat.Conversation over an in-process session: retrieval, the history share, the
model's KV cache of the last prompt and answer). Each turn prints the prompt's tokens, those the cache already held
(the last prompt's and answer's common start), those prefilled, the time to the first token, and the files its
repository context came from. Greedy; on the CPU one torch thread.

    python bench/chat_followups.py [--max-tokens 96] [--budget 1024] [--rounds 1] [--model SPEC] [--device cuda]

--rounds N: each conversation asks its questions N times over, a conversation that outgrows the budget.

--model: what codecomplete's --model takes (default: the embedded model), e.g. random:CodeLlama-7B:TOKENIZER_DIR on
a GPU, where only the times mean anything (random weights answer noise, as long as --max-tokens).

Follow-ups that name no code ("Why?") rank the repository on next to nothing: what they are about is the code the
question before them was given.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONVERSATIONS = {
    "json": [
        "How does JSONEncoder.iterencode choose between the C encoder and the Python one?",
        "What does _make_iterencode do with floats?",
        "Why is that check needed?",
        "Where is allow_nan used?",
        "How does JSONDecoder parse an object?",
        "What does object_pairs_hook change there?",
    ],
    "asyncio": [
        "How does run_until_complete stop the event loop once the future is done?",
        "Where is that done callback removed again?",
        "What happens when the loop is already running?",
        "Explain it with an example.",
        "How do StreamReader.readuntil and its limit interact?",
        "Why does it raise LimitOverrunError there?",
    ],
}


class _Quiet:
    """A view (codecomplete.render's protocol) that keeps the answer's text and shows nothing."""

    closed = False

    def __init__(self) -> None:
        self.text = ""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def on_text(self, delta: str) -> None:
        self.text += delta

    def finish(self, result, engine) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--budget", type=int, default=1024, help="the prompt's tokens (--context-tokens)")
    parser.add_argument("--model", default=None, help="a checkpoint, .gguf, hub id or random:PRESET:TOKENIZER_DIR")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=1, help="each conversation's questions asked this many times over")
    args = parser.parse_args(argv)
    import torch

    from codecomplete import chat
    from codecomplete.session import Session
    from models import load_model
    from prompts import index_repository

    if args.device == "cpu":
        torch.set_num_threads(1)
    # (on a GPU a cache just past the budget and an answer; the CPU's default, the model's training length, as before)
    room = args.budget + args.max_tokens + 256 if args.device == "cuda" else None
    engine = load_model(args.model, device=args.device, max_context=room)
    options = SimpleNamespace(max_tokens=args.max_tokens, temperature=0.0, top_p=1.0, seed=None, speculate=None)
    rows, totals = [], {"prompt": 0, "reused": 0, "ttft": 0.0, "turns": 0}
    with tempfile.TemporaryDirectory() as scratch:
        for package, questions in CONVERSATIONS.items():
            repo = Path(scratch) / package
            shutil.copytree(Path(sysconfig.get_paths()["stdlib"]) / package, repo,
                            ignore=shutil.ignore_patterns("__pycache__", "test*"))
            index = index_repository(repo, cache_dir=Path(scratch) / "cache")
            conversation = chat.Conversation(Session(engine, index, args.budget), options)
            for turn, question in enumerate(questions * args.rounds, 1):
                generation = conversation.prompt_for(question)
                result = conversation.answer(question, generation, _Quiet())
                files = sorted({item.path for item in generation.prompt.context})
                rows.append((package, turn, question, result.prompt_tokens, result.reused_prefix_tokens,
                             result.timings.ttft_ms, ", ".join(files)))
                print(f"{package} {turn}: {result.prompt_tokens} tokens, {result.reused_prefix_tokens} cached, "
                      f"first token {result.timings.ttft_ms:.0f} ms; context {', '.join(files) or '-'}", flush=True)
                if turn > 1:
                    totals["prompt"] += result.prompt_tokens
                    totals["reused"] += result.reused_prefix_tokens
                    totals["ttft"] += result.timings.ttft_ms
                    totals["turns"] += 1
    now = datetime.datetime.now(datetime.timezone.utc)
    rounds = f" · the questions {args.rounds} times over" if args.rounds > 1 else ""
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU, 1 thread"
    print(f"\n{now:%Y-%m-%d %H:%M} UTC · {platform.processor() or platform.machine()}, {os.cpu_count()} cores · "
          f"torch {torch.__version__} · {where} · {args.model or 'the embedded model'}, greedy · budget "
          f"{args.budget}, answers of up to {args.max_tokens} tokens{rounds} · load average {os.getloadavg()[0]:.1f}\n")
    print("| package | turn | question | prompt | cached | prefilled | first token (ms) | context from |")
    print("|---|---|---|---|---|---|---|---|")
    for package, turn, question, prompt, reused, ttft, files in rows:
        print(f"| {package} | {turn} | {question} | {prompt} | {reused} | {prompt - reused} | {ttft:.0f} | {files} "
              "|")
    n = max(1, totals["turns"])
    print(f"\nfollow-ups (turns after the first): {totals['turns']}, prompt {totals['prompt'] / n:.0f} tokens, cached "
          f"{totals['reused'] / n:.0f}, prefilled {(totals['prompt'] - totals['reused']) / n:.0f}, first token "
          f"{totals['ttft'] / n:.0f} ms on average")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
