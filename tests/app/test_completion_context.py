"""Completions through the console script in a fresh process: token healing at a cursor after a space, and a
file of one 5 MB line (issue 15, item 4), which must cost what the prompt budget holds, not what the file holds."""
import json
import resource
import subprocess

from conftest import snapshot


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
