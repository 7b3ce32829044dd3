"""--gpus N: tensor parallelism from the command line (the ranks themselves: tests/models/test_tp.py)."""
import torch

from codecomplete import cli
from codecomplete import engines
from codecomplete.errors import UsageError


def test_gpus_without_a_gpu_say_how_to_run_on_cpus():
    args = cli.build_parser().parse_args(["--prompt", "x", "--gpus", "2"])
    if torch.cuda.is_available():
        assert engines.device_for(args) == "cuda"
        return
    try:
        engines.device_for(args)
    except UsageError as error:
        assert str(error) == "--gpus 2: no CUDA GPU is available here (--device cpu runs 2 CPU processes instead)"
    else:
        raise AssertionError("--gpus 2 on a machine without CUDA must be a usage error")


def test_a_model_that_does_not_split_is_one_line_before_any_rank_starts(codecomplete):
    # SmolLM2-135M has 3 key/value heads: 2 ranks cannot each take whole ones.
    run = codecomplete("--bench", "--model", "random:SmolLM2-135M", "--gpus", "2", "--device", "cpu")
    assert run.returncode == 2         # --gpus is the user's choice: a usage error
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("codecomplete: error: random:SmolLM2-135M")
    assert "3 key/value heads do not split over 2 ranks" in run.stderr and run.stderr.endswith("use --gpus 1 or 3\n")


def test_a_follower_under_odd_torchrun_variables_says_so_in_one_line(monkeypatch, capsys):
    """RANK other than 0 under $TORCHELASTIC_RUN_ID makes this process a follower, before the command line's own
    error handling: a WORLD_SIZE set by hand to something odd was a traceback."""
    from models.distributed import MULTICAST_OFF

    for key, value in MULTICAST_OFF.items():       # (set by every rank: restored after the test)
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "a few")
    assert cli.main(["--prompt", "x"]) == 2
    assert capsys.readouterr().err == "codecomplete: error: WORLD_SIZE=a few: expected a whole number (torchrun sets it)\n"
