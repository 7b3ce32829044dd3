"""The kernels compile for the H100 (sm_90) on this GPU-less machine, as `flash_decode` launches them.

Runs `python -m kernels.compile_check` in a subprocess: the test session has TRITON_INTERPRET=1,
under which Triton hands out interpreted functions that cannot be compiled.
"""

import json
import os
import subprocess
import sys

import pytest

from kernels.compile_check import MAIN_CONFIGS


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "kernels.compile_check", "--arch", "90"],
                         capture_output=True, text=True, env=env, timeout=600)
    facts = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert facts, f"compile_check printed nothing; stderr:\n{run.stderr[-3000:]}"
    return {tuple(f["config"][:5]): f for f in facts}


@pytest.mark.parametrize("config", MAIN_CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_kernels_compile_for_sm90(compiled, config):
    facts = compiled[tuple(config)]
    assert "error" not in facts, facts.get("error")
    assert facts["split_cubin_bytes"] > 0
    if facts["num_splits"] > 1:
        assert facts["combine_cubin_bytes"] > 0
    if config[0] != "fp32":  # 16-bit dots must run on the tensor cores
        assert facts["tensor_cores"]
    assert facts["split_shared_bytes"] <= 227 * 1024  # the H100's shared memory per block
