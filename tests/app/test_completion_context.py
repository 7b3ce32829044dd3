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


def test_a_healed_text_written_in_several_tokens_leaves_the_answer_its_max_tokens(engine, repo, tmp_path):
    """The prompt stops one token before the cursor and the model writes that text again, which may take it one
    token a byte ("aaaa" as a, a, a, a). A KV cache that holds the prompt budget and the new tokens (the command
    line's) had no room left for those: a prompt that filled the budget got fewer new tokens than asked, none at
    all with --max-tokens 3. The prompt gives way by what the healing may take beyond its one token."""
    budget, max_tokens = engine.context_length - 3, 3          # a cache of the budget and the new tokens, as `--file`
    session = Session(engine, index_repository(repo, cache_dir=tmp_path / "cache"), budget)
    generation = session.complete("long.py", text="x = '" + "a" * 20_000, sampling=Sampling(max_tokens=max_tokens))
    assert len(generation.prompt.heal_text.encode()) > 1
    result = generation.run()
    assert result.finish_reason == "length" and result.healing_tokens > 1       # the healing took several tokens
    assert len(result.token_ids) - result.healing_tokens == max_tokens and result.text
    assert len(generation.prompt.ids) + len(result.token_ids) <= engine.context_length + 1


def test_a_prompt_gives_way_only_where_the_healing_alone_would_cost_the_answer_tokens():
    """A row takes at most context_length - len(ids) + 1 tokens; the healed text may take one a byte. The prompt
    gives way by what that costs the answer, never more than the healing's extra tokens, and not at all where the
    answer would not fit anyway (it runs until the cache is full, an editor's prompt kept as its budget made it)."""
    session = Session(SimpleNamespace(context_length=100), None)
    packed = SimpleNamespace(ids=[0] * 90, heal_text="abcd")                # up to 4 tokens where 1 was left out
    assert session._healing_overflow(packed, 7) == 0                        # 90 + 3 + 7 = 100: they all fit
    assert session._healing_overflow(packed, 8) == 1
    assert session._healing_overflow(packed, 10) == 3                       # at most the 3 extra tokens
    assert session._healing_overflow(packed, 11) == 0                       # 90 + 11 > 100 without any healing
    assert session._healing_overflow(packed, 8, room=95) == 0               # 90 + 8 > 95: the answer does not fit
    assert session._healing_overflow(packed, 5, room=95) == 3
    assert session._healing_overflow(SimpleNamespace(ids=[0] * 99, heal_text="é"), 1) == 1    # é: 2 bytes
    assert session._healing_overflow(SimpleNamespace(ids=[0] * 99, heal_text="a"), 1) == 0
    assert session._healing_overflow(packed, 0) == 0                        # a prompt only read into the cache


def test_an_unnamed_editor_text_is_completed_as_the_repository_s_file_it_is(engine, tmp_path):
    """llama.vim's /infill names no file: the session recognizes the text as the file on disk (prompts.recognize), so
    the prompt names it and its disk chunks lie on the text's rows (none repeated as repository context, none of its
    lines an example of itself). A text no file holds is still an untitled buffer."""
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    rows = [f"def stage_{k}(items, weight):\n    kept = [item for item in items if item.weight > {k}]\n"
            f"    return sum(item.cost * weight for item in kept) + {k}\n" for k in range(80)]
    (root / "pkg" / "stages.py").write_text("\n\n".join(rows))
    (root / "pkg" / "other.py").write_text("from .stages import stage_1\n\n\ndef run(items):\n    return stage_1(items, 2)\n")
    session = Session(SimpleNamespace(tokenizer=engine.tokenizer, check_prompt=lambda ids: None),
                      index_repository(root, cache_dir=tmp_path / "cache"))
    lines = (root / "pkg" / "stages.py").read_text().split("\n")
    cursor = lines.index("def stage_50(items, weight):") + 1           # (0-based) the body's first row
    prefix = "".join(f"{row}\n" for row in lines[cursor - 120:cursor]) + "    kept = [item for item in items if item.w"
    suffix = "\n" + "".join(f"{row}\n" for row in lines[cursor + 1:cursor + 40])
    prompt = session.infill(prefix, suffix, sampling=Sampling(max_tokens=0), budget=1024).prompt
    text = engine.tokenizer.decode(prompt.ids)
    assert "untitled" not in text and all(item.path != "untitled" for item in prompt.context)
    own = [item for item in prompt.context if item.path == "pkg/stages.py"]
    assert own and all(item.buffer or not cursor - 120 < item.end_line and item.start_line <= cursor + 40
                       for item in own), own                      # the disk's copy of the sent rows: never again
    assert text.count("kept = [item for item in items if item.weight > 49]") == 1
    unknown = session.infill("def fresh(a, b):\n    return a + b\n" * 3 + "x = fre", "\n", sampling=Sampling(max_tokens=0),
                             budget=1024).prompt
    assert any(item.path == "untitled" for item in unknown.context)
