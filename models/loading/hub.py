"""Hugging Face hub ids (codellama/CodeLlama-7b-hf): resolved through huggingface_hub's own cache.

Offline (HF_HUB_OFFLINE=1, or no network) a cached snapshot still loads; an uncached one is a clear error.
"""

from __future__ import annotations

from pathlib import Path

from models.errors import ModelNotFoundError

PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model"]
BIN_PATTERNS = ["*.json", "pytorch_model*.bin"]   # only for repos without safetensors


def snapshot(repo_id: str, progress=None) -> Path:
    """The local snapshot directory of a hub model, downloading its weights and tokenizer if needed."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)
    try:
        from httpx import HTTPError as TransportError      # huggingface_hub 1.x: a dead proxy, a timeout
    except ImportError:                 # before 1.0 it used requests, whose errors are OSErrors
        TransportError = OSError

    if progress:
        progress(f"Looking up {repo_id} in the Hugging Face cache")
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=PATTERNS))
        if not any(path.glob("*.safetensors")):
            path = Path(snapshot_download(repo_id, allow_patterns=BIN_PATTERNS))
    except (RepositoryNotFoundError, GatedRepoError):
        raise ModelNotFoundError(
            f"{repo_id}: no such local path, and no such model on the Hugging Face hub "
            "(or it is gated: accept its licence and log in with `hf auth login`)") from None
    except LocalEntryNotFoundError:     # offline by choice (HF_HUB_OFFLINE), or the hub did not answer
        why = "while offline" if constants.HF_HUB_OFFLINE else "and the hub cannot be reached from here"
        raise ModelNotFoundError(
            f"{repo_id}: no such local path, and not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
            f"{why}; download it once online with `hf download {repo_id}`") from None
    except HFValidationError:          # "out/run--3", "org/name.": a mistyped local path as often as a hub id
        raise ModelNotFoundError(f"{repo_id}: no such local path, nor a valid Hugging Face hub id "
                                 "(names of letters, digits, '-', '_' and '.', no '--' or '..', "
                                 "not starting or ending with '-' or '.', at most 96 characters)") from None
    except (HfHubHTTPError, OSError, TransportError) as e:
        raise ModelNotFoundError(f"{repo_id}: download from the Hugging Face hub failed ({e})") from None
    return path
