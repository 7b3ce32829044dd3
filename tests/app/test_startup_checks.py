"""`codecomplete serve` refuses at start-up what would make it answer every request with an error: a prompt budget
too small for the completion format's own tokens (each editor request was a 400)."""
import re

import httpx
import pytest
from server_process import ServerProcess


def _refused(script, cli_env, served_repo, folder, *options: str) -> str:
    """The log of a server that must not start: it exits 2 with one error line."""
    folder.mkdir()
    with pytest.raises(RuntimeError, match="exited with 2") as refused:
        ServerProcess(script, served_repo, cli_env, folder, *options).stop()   # (started: not refused, fails)
    log = (folder / "server.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("codecomplete: error:")]
    assert len(errors) == 1 and "Traceback" not in log, log
    return errors[0]


def test_a_budget_too_small_for_the_completion_format_is_refused_at_start_up_naming_the_smallest(
        script, cli_env, served_repo, tmp_path):
    """`serve --context-tokens 1` started, then answered every editor request 400 (the budget cannot hold the
    format's own tokens). Now it exits 2 at start-up, naming the smallest budget that works; that budget serves an
    infill, one fewer is refused."""
    line = _refused(script, cli_env, served_repo, tmp_path / "one", "--context-tokens", "1", "--max-tokens", "8")
    assert "--context-tokens" in line and "format's own tokens" in line, line
    smallest = int(re.search(r"at least ([\d,]+)", line)[1].replace(",", ""))
    assert smallest > 1
    (tmp_path / "smallest").mkdir()
    server = ServerProcess(script, served_repo, cli_env, tmp_path / "smallest", "--context-tokens", str(smallest),
                           "--max-tokens", "8")
    try:
        assert server.info["prompt_budget"] == smallest
        answer = httpx.post(server.url + "/infill", json={"input_prefix": "def f():\n", "input_suffix": "",
                                                          "n_predict": 4}, timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.json()["tokens_evaluated"] <= smallest
    finally:
        assert server.stop() == 0, server.log()
    line = _refused(script, cli_env, served_repo, tmp_path / "fewer", "--context-tokens", str(smallest - 1),
                    "--max-tokens", "8")
    assert f"at least {smallest:,}" in line, line
