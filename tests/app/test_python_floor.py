"""The packages run on the oldest Python that pyproject.toml's requires-python (and the README's set-up) promises.

CI runs one newer Python, so what only a newer one has slips in unseen: a module of the standard library added
later (``tomllib`` is 3.11's) or regular-expression syntax added later (possessive quantifiers ``*+`` and atomic
groups ``(?>...)`` are 3.11's; 3.10's ``re`` refuses them with "multiple repeat" at import). These are checked
statically, in the source, against the declared floor.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("codecomplete", "models", "prompts", "kernels")
# Standard-library modules newer than 3.10, with the version that added them.
NEWER_MODULES = {"tomllib": (3, 11), "wsgiref.types": (3, 11)}


def _floor() -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'^requires-python\s*=\s*">=\s*(\d+)\.(\d+)"', text, re.MULTILINE)
    assert found, "pyproject.toml names no requires-python floor"
    return int(found.group(1)), int(found.group(2))


def _sources() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def _guarded(tree: ast.AST) -> set[int]:
    """Lines of imports inside a ``try`` that catches ImportError (a fallback for older Pythons)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(handler.type, ast.Name) and handler.type.id in ("ImportError", "ModuleNotFoundError")
                for handler in node.handlers):
            lines.update(inner.lineno for statement in node.body for inner in ast.walk(statement)
                         if isinstance(inner, (ast.Import, ast.ImportFrom)))
    return lines


def _newer_regex_syntax(pattern: str) -> bool:
    """Whether the pattern uses what 3.10's re lacks: possessive repeats or atomic groups."""
    parser = getattr(re, "_parser", None)
    if parser is None or sys.version_info < (3, 11):
        return False  # (on 3.10 itself such a pattern fails at import, which the suite sees anyway)
    newer = {parser.POSSESSIVE_REPEAT, parser.ATOMIC_GROUP}

    def walk(items) -> bool:
        for op, value in items:
            if op in newer:
                return True
            for part in value if isinstance(value, (tuple, list)) else ():
                if isinstance(part, parser.SubPattern) and walk(part):
                    return True
                if isinstance(part, (tuple, list)) and any(isinstance(p, parser.SubPattern) and walk(p) for p in part):
                    return True
        return False

    try:
        return walk(parser.parse(pattern))
    except re.error:
        return False


def test_the_packages_use_nothing_newer_than_the_declared_python():
    floor = _floor()
    problems = []
    for path in _sources():
        source = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT).as_posix()
        try:
            tree = ast.parse(source, name, feature_version=floor)
        except SyntaxError as error:
            problems.append(f"{name}:{error.lineno}: syntax newer than {floor}: {error.msg}")
            continue
        guarded = _guarded(tree)
        for node in ast.walk(tree):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                       [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for module in modules:
                added = NEWER_MODULES.get(module)
                if added and added > floor and node.lineno not in guarded:
                    problems.append(f"{name}:{node.lineno}: imports {module} (Python {added[0]}.{added[1]}) unguarded")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "re" and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                    and _newer_regex_syntax(node.args[0].value)):
                problems.append(f"{name}:{node.lineno}: regex with possessive or atomic syntax (Python 3.11)")
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10's re cannot parse the syntax being detected")
def test_the_check_sees_newer_regex_syntax():
    assert _newer_regex_syntax(r"a*+b") and _newer_regex_syntax(r"(?>ab|a)c") and _newer_regex_syntax(r"(?:x(?:y)++)")
    assert not _newer_regex_syntax(r"a*b(?:c|d)+") and not _newer_regex_syntax(r"(?=(a*))\1")
