"""ARCHITECTURE.md against the code: its module map names every module there is (and none that is gone), and the
imports keep the layering it states (and DESIGN.md fixes): nothing imports upwards, and the packages the GPU image
runs (kernels, models) never need what that image lacks."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("codecomplete", "prompts", "models", "kernels")
# What each package may import of ours (ARCHITECTURE.md's first block; an arrow points to what a package may import).
MAY_IMPORT = {"codecomplete": {"prompts", "models"}, "prompts": set(), "models": {"kernels"}, "kernels": set()}
# Not on the GPU image, where `python -m kernels.bench` and `python -m models.bench` run: never imported below the app
# and prompts; gguf only inside the functions that read a GGUF.
NOT_ON_GPU_IMAGE = {"prompt_toolkit", "tree_sitter", "fastapi", "uvicorn", "starlette"}
LAZY_ONLY = {"gguf"}


def modules(package: str) -> list[Path]:
    return sorted(path.relative_to(ROOT) for path in (ROOT / package).rglob("*.py"))


def module_map() -> set[str]:
    """The paths listed in ARCHITECTURE.md's "Modules" section (a line per module: `path`: what it does)."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("\n## Modules", 1)[1].split("\n## ", 1)[0] if "\n## Modules" in text else ""
    return set(re.findall(r"^- `([\w/]+\.py)`", section, flags=re.MULTILINE))


def imports(path: Path):
    """(top-level name, line, at module level) of every absolute import, importlib.import_module("x") too."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"), str(path))
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        for name in names:
            yield name.split(".")[0], node.lineno, id(node) in top_level


def test_the_module_map_names_every_module_and_only_those():
    listed = module_map()
    present = {str(path) for package in PACKAGES for path in modules(package)}
    assert listed, "ARCHITECTURE.md has no '## Modules' section of `path` lines"
    assert not present - listed, f"modules ARCHITECTURE.md does not name: {sorted(present - listed)}"
    assert not listed - present, f"ARCHITECTURE.md names modules that do not exist: {sorted(listed - present)}"


@pytest.mark.parametrize("package", PACKAGES)
def test_nothing_imports_upwards(package):
    ours = set(PACKAGES) | {"bench", "tests"}
    wrong = [f"{path}:{line} imports {name}" for path in modules(package) for name, line, _ in imports(path)
             if name in ours and name != package and name not in MAY_IMPORT[package]]
    assert not wrong, wrong


@pytest.mark.parametrize("package", ("models", "kernels"))
def test_the_gpu_images_packages_need_nothing_it_lacks(package):
    wrong = [f"{path}:{line} imports {name}" for path in modules(package) for name, line, top in imports(path)
             if name in NOT_ON_GPU_IMAGE or (name in LAZY_ONLY and top)]
    assert not wrong, wrong


def test_the_kernel_contract_states_the_bounds_the_kernels_check():
    """ARCHITECTURE.md said a decode call takes 1 <= T <= 16 query tokens; the kernels take up to 128 (a prompt's
    tail fed through a graph-replayed step)."""
    from kernels.validation import MAX_HEAD_DIM, MAX_QUERY_TOKENS, MIN_HEAD_DIM
    text = " ".join((ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8").split())
    assert f"1 <= T <= {MAX_QUERY_TOKENS}" in text
    assert f"D {MIN_HEAD_DIM}..{MAX_HEAD_DIM}" in text
