"""The embedded model's GGUF converted once per test run, and copied into each cache folder the tests make.

Converting SmolLM2's GGUF takes ~18 s on this 2-core CPU (more when it is busy): tests/app's session cache and
tests/models' each converted it again in every pytest-xdist worker, up to four times a run. The first worker that
needs it converts it into a folder every worker of the run shares (the conversion's own file lock makes the others
wait for it, as it does for two programs of a user), and each cache folder gets a copy of its own: what a test does
to its cache reaches no other worker's, and the cache holds what it held after its first load before."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this test run that every pytest-xdist worker sees (their base folders are beside each other)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def copy_into(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Put the embedded model's float32 conversion (the suite's weights on a CPU) into the cache folder `cache`."""
    import torch
    from models.loading import embedded_model_path
    from models.loading.gguf import gguf_checkpoint

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CODECOMPLETE_CACHE_DIR", str(run_folder(tmp_path_factory) / "embedded-conversion"))
        converted = gguf_checkpoint(embedded_model_path(), torch.float32)
    (cache / "gguf").mkdir(mode=0o755, parents=True, exist_ok=True)
    shutil.copytree(converted, cache / "gguf" / converted.name)
