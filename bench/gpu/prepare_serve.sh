#!/usr/bin/env bash
# Run here (a CPU machine with the project's venv and network), from the repository root, before
# bench/gpu/serve_h200.sh. It prepares the two ignored folders that must be carried to the GPU machine:
#   .gpu/tokenizer/  the embedded SmolLM2 model's tokenizer files (3.5 MB), from its GGUF conversion cache
#                    (converting the GGUF first if this machine has not yet)
#   .whl/            wheels for the GPU image's Python 3.12 (manylinux x86_64) of what `codecomplete serve` and
#                    the app path import and that image lacks: FastAPI and uvicorn with their dependencies,
#                    tree-sitter with its grammars, pathspec, platformdirs; at the versions this venv runs
set -euo pipefail
python - <<'PY'
import shutil
from pathlib import Path

from models.loading import cache_root, embedded_model_path

converted = sorted((cache_root() / "gguf").glob(f"{embedded_model_path().stem}-*/tokenizer.json"))
if not converted:                      # first run on this machine: convert the GGUF (a few seconds)
    from models import load_model
    load_model(device="cpu", max_context=64)
    converted = sorted((cache_root() / "gguf").glob(f"{embedded_model_path().stem}-*/tokenizer.json"))
target = Path(".gpu/tokenizer")
target.mkdir(parents=True, exist_ok=True)
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    if (converted[-1].parent / name).is_file():
        shutil.copy2(converted[-1].parent / name, target / name)
print(f"{target}: {', '.join(sorted(p.name for p in target.iterdir()))}")
PY
packages=(fastapi opentelemetry-api starlette pydantic pydantic-core annotated-types annotated-doc typing-inspection typing-extensions
          uvicorn click prompt-toolkit wcwidth rich markdown-it-py mdurl pygments tree-sitter tree-sitter-python tree-sitter-javascript tree-sitter-typescript tree-sitter-go
          tree-sitter-rust tree-sitter-c tree-sitter-cpp tree-sitter-java pathspec platformdirs)
pinned=$(python - "${packages[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:      # not in this venv (annotated-doc with an older FastAPI): the newest will do
        print(name)
PY
)
platforms=()
for p in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 \
         manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
mkdir -p .whl
# shellcheck disable=SC2086
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl $pinned
du -sh .gpu .whl
