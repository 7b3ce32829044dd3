"""Test-wide setup. TRITON_INTERPRET must be set before any @triton.jit decorator runs."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from interpreter_speed import patch_language_once_per_launch  # noqa: E402  (after TRITON_INTERPRET)

patch_language_once_per_launch()
