"""Completions through the console script in a fresh process: token healing at a cursor after a space, and a
file of one 5 MB line (issue 15, item 4), which must cost what the prompt budget holds, not what the file holds;
and the warm session's prompts for an editor typing line after line."""
import json
import resource
import subprocess
from types import SimpleNamespace

from conftest import snapshot

from codecomplete.session import Sampling, Session
from prompts import index_repository


def test_a_cursor_after_a_space_completes_the_call_without_repeating_the_space(codecomplete, repo):
    # app.py line 5 is `    area = area_of_circle(radius)`; the cursor sits after `area = `.
    run = codecomplete(repo, "--file", "app.py", "--line", "5", "--col", "12", "--max-tokens", "12", "--json")
    assert run.returncode == 0, run.stderr
    obj = json.loads(run.stdout)
    assert obj["completion"].startswith("area_of_circle(")  # not a digit after a lone space token
    assert not obj["completion"].startswith(" ")  # the healed space is in the buffer already


def test_a_single_line_of_megabytes_is_a_bounded_cost(script, cli_env, tmp_path):
    root = tmp_path / "minified"
    root.mkdir()
    line = "data = [" + ", ".join(str(i * 7919 % 10**6) for i in range(700_000)) + "]"  # 5.5 MB
    (root / "big.py").write_text(line + "\n")
    (root / "small.py").write_text("def f(x):\n    return x\n")
    before = snapshot(root)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([str(script), str(root), "--file", "big.py", "--line", "1", "--col", str(len(line) // 2),
                           "--max-tokens", "4", "--json"], capture_output=True, text=True, env=cli_env, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stderr
    # The 1,024-token budget, and the one token that makes the healed text (the cursor's partial number) again,
    # which counts as the prompt's (GenerationResult.token_counts).
    assert json.loads(proc.stdout)["prompt_tokens"] <= 1024 + 1
    # CPU seconds, not wall time: the machine may be busy. Before the fix this took ~90 s (the line was tokenized
    # whole five times); the bound is 30 s.
    assert (after.ru_utime + after.ru_stime) - (used.ru_utime + used.ru_stime) < 30
    assert snapshot(root) == before


def test_llama_vim_typing_line_after_line_keeps_the_prompt_s_start_in_the_warm_session(engine, repo, tmp_path):
    """llama.vim's /infill carries the 256 lines above the cursor: each new line moves the text's top. The session
    hands each prompt the last one's block anchor, so the current file's window keeps its tokens, and the model's
    cache all but the cursor's end (it prefilled the whole window, ~500 tokens at 1,024, on every new line)."""
    session = Session(SimpleNamespace(tokenizer=engine.tokenizer, check_prompt=lambda ids: None),
                      index_repository(repo, cache_dir=tmp_path / "cache"))
    rows = [f"    value_{n} = compute(value_{n - 1}, factor={n} * scale, name='v{n}', offset=base + {n})"
            for n in range(320)]
    prompts = [session.infill("".join(f"{row}\n" for row in rows[typed - 256:typed]) + "    ", "\n",
                              sampling=Sampling(max_tokens=0), budget=1024).prompt for typed in range(300, 305)]
    moved = 0
    for before, after in zip(prompts, prompts[1:]):
        shared = next((n for n, (a, b) in enumerate(zip(before.ids, after.ids)) if a != b), len(before.ids))
        moved += shared < len(before.ids) - 60                  # more than the last line and the cursor's end changed
    assert moved <= 1, [p.context[-1] for p in prompts]         # (the far end's step of 8 lines, at most once)
