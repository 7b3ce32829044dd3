"""What a user meets the day they upgrade while things of the version before are still around (round 24): a server
started before the upgrade, caches and records it wrote. Its info is made here, not run from an old checkout."""
from __future__ import annotations

import pytest

from codecomplete import client

ENGINE = {"name": "m", "device": "cpu", "dtype": "float32", "matmul_dtype": "float32", "attention": "sdpa",
          "kv_cache": "float32", "context_length": 8192, "model_max_positions": 8192, "load_s": 0.1}


def info_of(repo, **fields) -> dict:
    """A CPU server's info on its defaults for `repo`, as `codecomplete serve` describes itself (this build's)."""
    return {"url": "http://127.0.0.1:1", "repo": str(repo), "model_spec": None, "version": "0.1.0",
            "build": client.build(), "default_device": "cpu", "options": ["speculate"],
            "defaults": {"dtype": "float32", "matmul_dtype": "float32", "attention": "sdpa"}, "engine": ENGINE,
            **fields}


def args_for(*argv):
    from codecomplete.cli import build_parser
    return build_parser().parse_args([str(arg) for arg in argv])


@pytest.fixture
def servers(monkeypatch):
    """serve(info): the server discovery finds, answering `info`; yields the URLs asked for their info."""
    from codecomplete.server import discovery

    announced, asked = [], []

    def get_info(url, key):
        asked.append(url)
        return announced[0]
    monkeypatch.setattr(discovery, "running_servers", lambda: list(announced))
    monkeypatch.setattr(client, "_get_info", get_info)
    monkeypatch.delenv(client.SERVER_ENV, raising=False)
    yield announced, asked


def without_build(info: dict) -> dict:
    return {key: value for key, value in info.items() if key != "build"}


def test_a_server_of_the_version_before_is_not_used(servers, tmp_path):
    """A server started before the upgrade runs the code it imported then: its prompts (a ranking that let Python
    into a JavaScript cursor's context, before 2ba1e1f) printed other text than `--no-server` of the new version
    under the same version number, 0.1.0, and options, and the command line used it. Its info says no build, or
    another: the command line runs in process, as for a server of other options."""
    announced, asked = servers
    repo, args = tmp_path, args_for(tmp_path, "--file", "app.js", "--line", "1")
    for old in (without_build(info_of(repo)), info_of(repo, build="0123456789abcdef")):
        announced[:] = [old]
        assert client.connect(args, repo, 8) is None and not asked
    announced[:] = [info_of(repo)]
    assert client.mismatch(without_build(info_of(repo)), args, repo, 8) is None     # (the build alone differs)
    assert client.connect(args, repo, 8) is not None


def test_a_named_server_of_another_build_is_a_one_line_usage_error(servers, tmp_path, monkeypatch, capsys):
    """--server (or $CODECOMPLETE_SERVER) names a server that must answer as this process would: one of the version
    before is refused with exit 2 and a line that says to restart it."""
    from codecomplete.cli import main

    announced, _ = servers
    (tmp_path / "app.py").write_text("x = 1\n")
    for old, said in ((without_build(info_of(tmp_path)), "an older version of codecomplete"),
                      (info_of(tmp_path, build="0123456789abcdef"), "other code than this command line")):
        announced[:] = [old]
        code = main([str(tmp_path), "--file", "app.py", "--line", "1", "--server", "http://127.0.0.1:1"])
        error = capsys.readouterr().err
        assert code == 2 and error.count("\n") == 1, error
        assert said in error and "restart it" in error


def test_the_build_is_the_code_on_disk(tmp_path, monkeypatch):
    """The digest follows every source file and launch plan of the four packages, and nothing else (bytecode)."""
    for package in client.PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "kernels" / "plans").mkdir()
    plan = tmp_path / "kernels" / "plans" / "card.json"
    plan.write_text("{}")
    digest = lambda: client.digest_of(tmp_path)     # noqa: E731
    first = digest()
    (tmp_path / "prompts" / "__pycache__").mkdir()
    (tmp_path / "prompts" / "__pycache__" / "ranking.cpython-312.pyc").write_bytes(b"\0")
    assert digest() == first
    (tmp_path / "prompts" / "ranking.py").write_text("FAMILY = True\n")
    second = digest()
    assert second != first
    plan.write_text('{"plans": []}')
    assert digest() not in (first, second)


def test_the_build_follows_the_dependencies_that_shape_answers(monkeypatch):
    """A dependency upgraded beside a running server (another tokenizer, another grammar) is another build; the
    versions are read as importlib.metadata reads them, for every grammar the index parses with."""
    from importlib import metadata

    from prompts.languages import TREE_SITTER_LANGUAGES

    assert {client.dependency_version(name) for name in client.DEPENDENCIES} != {None}
    for name in client.DEPENDENCIES:
        try:
            assert client.dependency_version(name) == metadata.version(name), name
        except metadata.PackageNotFoundError:
            assert client.dependency_version(name) is None, name
    grammars = {spec.grammar.split(":")[0].replace("_", "-") for spec in TREE_SITTER_LANGUAGES.values()}
    assert grammars <= set(client.DEPENDENCIES)
    first = client.build.__wrapped__()
    assert first == client.build()
    for name in ("tokenizers", "tree-sitter-python"):
        versions = dict(client._installed_versions())
        versions[client._normalized(name)] = "99.0"
        monkeypatch.setattr(client, "_installed_versions", lambda versions=versions: versions)
        assert client.build.__wrapped__() != first, name
        monkeypatch.undo()
    assert client.build.__wrapped__() == first
