"""Argument checks that need no model, in process."""
import pytest

from codecomplete import cli
from codecomplete.errors import UsageError


def parse(*argv):
    args = cli.build_parser().parse_args(list(argv))
    cli.check(args)
    return args


def test_json_takes_a_file_or_nothing(tmp_path):
    assert parse(str(tmp_path), "--file", "a.py", "--json").json == "-"
    assert parse("--bench", "--json", "out.json").json == "out.json"
    # `--json REPO ...`: the folder after --json is the repository, not the output file.
    args = parse("--json", str(tmp_path), "--file", "a.py")
    assert (args.repo, args.json) == (str(tmp_path), "-")


@pytest.mark.parametrize("argv, message", [
    (["r", "--col", "3", "--file", "a.py"], "--col goes with --line"),
    (["r", "--stdin"], "--stdin goes with --file"),
    (["r", "--plot", "x.png"], "--plot goes with --bench"),
])
def test_combinations(argv, message):
    with pytest.raises(UsageError, match=message):
        parse(*argv)


def test_help_mentions_every_command(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    for command in ("--file", "--ask", "--prompt", "--bench", "--stdin", "--attention", "exit codes"):
        assert command in text
