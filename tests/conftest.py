"""Test-wide setup. TRITON_INTERPRET must be set before any @triton.jit decorator runs."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
