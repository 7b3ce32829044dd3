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
