"""Untrusted repositories: indexing one executes nothing from it, and no odd name or file stops it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prompts import ScanWarning, build_completion_prompt, index_repository
from prompts.scan import scan_repository
from prompts.tokens import tokenizable

# A name for every way a file name can trouble a tool: not UTF-8, a newline, a leading dash, near NAME_MAX.
ODD_NAMES = [b"helpers_\xff.py", b"new\nline.py", b"-dash.py", b"l" * 240 + b".py", b" space .py"]

HOSTILE_GIT_CONFIG = """\
[core]
    fsmonitor = "touch {marker}/fsmonitor; false"
    hooksPath = {marker}
    pager = touch {marker}/pager
    askPass = touch {marker}/askpass
[filter "evil"]
    clean = touch {marker}/clean
    smudge = touch {marker}/smudge
    process = touch {marker}/process
[diff "evil"]
    textconv = touch {marker}/textconv
[credential]
    helper = !touch {marker}/credential
"""

# Run in a fresh interpreter: an audit hook (which cannot be removed) records every attempt to start a process.
AUDITED_INDEX = """
import json, sys
spawned = []
def hook(event, args):
    if event in ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.fork", "os.forkpty", "pty.spawn"):
        spawned.append(event + " " + repr(args)[:200])
sys.addaudithook(hook)
from prompts import index_repository
index = index_repository(sys.argv[1])
print(json.dumps({"files": index.files, "spawned": spawned}))
"""


def plant_hostile_git(root: Path, marker: Path) -> None:
    """A .git whose config, hooks and attributes would each leave a file in `marker` if git ever ran them."""
    git = root / ".git"
    (git / "hooks").mkdir(parents=True)
    (git / "info").mkdir()
    (git / "config").write_text(HOSTILE_GIT_CONFIG.format(marker=marker))
    for hook in ("pre-commit", "post-checkout", "post-index-change", "fsmonitor-watchman"):
        (git / "hooks" / hook).write_text(f"#!/bin/sh\ntouch {marker}/{hook}\n")
        (git / "hooks" / hook).chmod(0o755)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "info" / "exclude").write_text("excluded.py\n")
    (root / ".gitattributes").write_text("* filter=evil diff=evil\n")


def test_indexing_runs_no_process_and_nothing_from_the_repositorys_git_config(make_repo, tmp_path):
    root = make_repo({"a.py": "def add(a, b):\n    return a + b\n", "excluded.py": "x = 1\n",
                      ".gitignore": "ignored.py\n", "ignored.py": "y = 2\n"})
    marker = tmp_path / "marker"
    marker.mkdir()
    plant_hostile_git(root, marker)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", AUDITED_INDEX, str(root)], capture_output=True, text=True,
                         env=env, timeout=60, check=True).stdout
    result = json.loads(out)
    assert result["spawned"] == []
    assert list(marker.iterdir()) == []
    # The ignore rules still hold, read by prompts.gitignore: .gitignore and .git/info/exclude.
    assert result["files"] == [".gitattributes", ".gitignore", "a.py"]


def test_global_excludes_are_read_from_the_users_git_config_without_git(make_repo, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "my-ignores").write_text("*.secret.py\n")
    (home / ".gitconfig").write_text('[user]\n  name = x\n[core]\n  excludesFile = "~/my-ignores"\n')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    root = make_repo({"a.py": "a = 1\n", "key.secret.py": "k = 1\n", "keep.py": "b = 2\n",
                      ".gitignore": "!keep.py\n"})
    assert [s.path for s in scan_repository(root)] == [".gitignore", "a.py", "keep.py"]
    (home / ".gitconfig").unlink()
    (home / ".config" / "git").mkdir(parents=True)
    (home / ".config" / "git" / "ignore").write_text("a.py\n")  # git's default global excludes file
    assert [s.path for s in scan_repository(root)] == [".gitignore", "keep.py", "key.secret.py"]
    # A setting in an included file counts where the [include] stands (a dotfile setup's ~/.gitconfig.local); an
    # include of itself ends.
    (home / ".gitconfig.local").write_text("[core]\n  excludesfile = ~/my-ignores\n[include]\n  path = .gitconfig\n")
    (home / ".gitconfig").write_text("[include]\n  path = ~/.gitconfig.local\n")
    assert [s.path for s in scan_repository(root)] == [".gitignore", "a.py", "keep.py"]


def test_a_relative_global_excludes_file_is_the_repositorys_not_the_current_folders(make_repo, tmp_path,
                                                                                     monkeypatch):
    # git runs from the repository's top folder: `excludesFile = .myignore` is <repo>/.myignore wherever git is
    # started (a subfolder, `git -C`), never the current folder's nor the home folder's (checked with git 2.39).
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[core]\n  excludesFile = .myignore\n")
    (home / ".myignore").write_text("a.py\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    root = make_repo({"a.py": "a = 1\n", "secret.py": "s = 1\n", "sub/b.py": "b = 1\n", "sub/secret.py": "t = 1\n",
                      ".myignore": "secret.py\n", "sub/.myignore": "b.py\n"})
    for folder in (root / "sub", home, tmp_path):
        monkeypatch.chdir(folder)
        assert [s.path for s in scan_repository(root)] == [".myignore", "a.py", "sub/.myignore", "sub/b.py"]
    # The repository's own setting wins over the user's, as in git.
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n\texcludesFile = sub/.myignore\n")
    assert [s.path for s in scan_repository(root)] == [".myignore", "a.py", "secret.py", "sub/.myignore",
                                                       "sub/secret.py"]


def test_rule_files_that_are_links_fifos_or_devices_are_not_read(make_repo, tmp_path):
    outside = tmp_path / "outside-rules"
    outside.write_text("a.py\n")
    root = make_repo({"a.py": "a = 1\n", "sub/b.py": "b = 1\n", "deep/c.py": "c = 1\n"})
    os.symlink(outside, root / ".gitignore")  # git does not follow a linked .gitignore either
    os.mkfifo(root / "sub" / ".gitignore")  # reading it would wait for a writer forever
    os.symlink("/dev/zero", root / "deep" / ".codecompleteignore")  # reading it would never end
    with pytest.warns(ScanWarning):  # the planted links themselves are reported as files left out
        paths = [s.path for s in scan_repository(root)]
    assert paths == ["a.py", "deep/c.py", "sub/b.py"]


def test_a_linked_info_exclude_or_excludes_file_is_followed_as_git_follows_it(make_repo, tmp_path, monkeypatch):
    """git refuses a .gitignore that is a link in the working tree, but follows .git/info/exclude and the excludes
    file when they are links (a shared exclude list, dotfiles): the walk refused every rule file inside the
    repository that was a link, so what they exclude was indexed (differential against git)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    env = {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}
    (tmp_path / "shared-exclude").write_text("secret.py\n")
    (tmp_path / "shared-ignores").write_text("*.key\n")
    root = make_repo({"a.py": "a = 1\n", "secret.py": "s = 1\n", "id.key": "k\n"}, git=True)
    (root / ".git" / "info" / "exclude").unlink()
    os.symlink(tmp_path / "shared-exclude", root / ".git" / "info" / "exclude")
    os.symlink(tmp_path / "shared-ignores", root / "linked-ignores")
    (root / ".git" / "config").write_text("[core]\n\texcludesFile = linked-ignores\n")
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True, env=env).stdout.split()
    with pytest.warns(ScanWarning):     # linked-ignores itself: a link to outside, left out
        assert [s.path for s in scan_repository(root)] == sorted(set(listed) - {"linked-ignores"}) == ["a.py"]


def test_a_file_swapped_for_a_fifo_after_the_scan_is_skipped_not_waited_on(make_repo, tmp_path):
    root = make_repo({"a.py": "def a():\n    return 1\n", "b.py": "def b():\n    return 2\n"})
    sources = scan_repository(root)
    (root / "b.py").unlink()
    os.mkfifo(root / "b.py")
    from prompts.index import parse_file

    assert parse_file(root, sources[1], 1 << 20) == "not a regular file"


@pytest.mark.parametrize("windows", [False, True])
def test_a_file_or_folder_swapped_for_a_link_after_the_scan_is_not_read_through_it(make_repo, tmp_path, windows,
                                                                                    as_on_windows):
    secret = tmp_path / "secret.py"
    secret.write_text("TOKEN = 'hunter2'\n")
    root = make_repo({"a.py": "a = 1\n", "b.py": "b = 1\n", "pkg/c.py": "c = 1\n", "d.py": "d = 1\n",
                      ".env.py": "KEY = 'k'\n", ".gitignore": ".env.py\n"})
    sources = {s.path: s for s in scan_repository(root)}
    (root / "a.py").unlink()
    os.symlink(secret, root / "a.py")                       # out of the repository
    (root / "b.py").unlink()
    os.symlink(root / ".env.py", root / "b.py")             # to a file the user keeps out of git
    (root / "pkg" / "c.py").rename(tmp_path / "c.py")
    (root / "pkg").rmdir()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "c.py").write_text("TOKEN = 'hunter3'\n")
    os.symlink(tmp_path / "pkg", root / "pkg")              # a folder on the way
    (root / "d.py").unlink()
    os.symlink("pkg/../.gitignore", root / "d.py")          # ... also through a link in the link's own target
    from prompts.index import parse_file

    if windows:     # (there each link is checked by name: read_regular_file crashed on os.O_NONBLOCK)
        as_on_windows()

    for path in ("a.py", "b.py", "pkg/c.py", "d.py"):
        entry = parse_file(root, sources[path], 1 << 20)
        assert isinstance(entry, str), (path, entry)
    # A link the scan keeps (to a kept file of the repository) is still read.
    os.symlink(".gitignore", root / "e.py")
    from prompts.scan import source_file
    entry = parse_file(root, source_file(root, "e.py"), 1 << 20)
    assert entry.chunks[0].text == ".env.py"


def test_an_unreadable_folder_is_reported_and_the_rest_indexed(make_repo, monkeypatch):
    root = make_repo({"a.py": "a = 1\n", "locked/b.py": "b = 1\n"})
    real_scandir = os.scandir

    def refusing_scandir(path="."):
        if str(path).endswith("locked"):  # tests run as root, for whom chmod 000 changes nothing
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing_scandir)
    with pytest.warns(ScanWarning, match="skipped locked: Permission denied"):
        assert [s.path for s in scan_repository(root)] == ["a.py"]


def test_odd_file_names_are_indexed_and_their_names_tokenized(make_repo, smollm2_tokenizer):
    root = make_repo({"a.py": "from helpers import add\n\n\ndef total(xs):\n    return add(xs)\n"})
    for name in ODD_NAMES:
        with open(os.path.join(os.fsencode(root), name), "wb") as file:
            file.write(b"def add(a, b):\n    return a + b\n")
    index = index_repository(root)
    assert sorted(map(os.fsencode, index.files)) == sorted([b"a.py", *ODD_NAMES])
    for name in ["a.py", *map(os.fsdecode, ODD_NAMES)]:
        packed = build_completion_prompt(index, smollm2_tokenizer, path=name, budget_tokens=400)
        assert packed.ids and {item.path for item in packed.context} >= {name}


def test_tokenizable_replaces_lone_surrogates_one_for_one():
    assert tokenizable("plain ünïcode") == "plain ünïcode"
    assert tokenizable(os.fsdecode(b"a\xffb\xfe")) == "a\ufffdb\ufffd"


def test_code_nested_thousands_deep_is_indexed_and_folders_so_deep_skipped_not_the_index(make_repo, monkeypatch):
    root = make_repo({"a.py": "def add(a, b):\n    return a + b\n",
                      "deep.py": "x = " + "[\n" * 3000 + "]\n" * 3000})
    folder = str(root)
    for _ in range(1200):  # deeper than Python's recursion limit
        folder += "/d"
        os.mkdir(folder)
    with open(folder + "/bottom.py", "w") as file:
        file.write("b = 1\n")
    try:
        with pytest.warns(ScanWarning) as caught:
            index = index_repository(root)
    finally:  # bottom up, without recursion: pytest's own clean-up of its temporary folders recurses and fails
        os.remove(folder + "/bottom.py")
        while folder != str(root):
            os.rmdir(folder)
            folder = os.path.dirname(folder)
    assert index.files == ["a.py", "deep.py"]       # (its chunks are found without recursion: chunking.py)
    messages = {str(w.message) for w in caught}
    assert not any("deep.py" in message for message in messages)
    assert any("nested deeper than" in message for message in messages)
    # Recursion the chunker still hits somewhere costs that file only.
    import prompts.index

    analyze = prompts.index.analyze_source

    def recursing(path, text):
        if path == "deep.py":
            raise RecursionError
        return analyze(path, text)
    monkeypatch.setattr(prompts.index, "analyze_source", recursing)
    with pytest.warns(ScanWarning, match="skipped deep.py: nested too deeply to chunk"):
        assert index_repository(make_repo({"a.py": "a = 1\n", "deep.py": "x = 1\n"}, name="other")).files == ["a.py"]


def test_cargo_manifests_nested_thousands_deep_or_malformed_name_no_crate_and_stop_nothing(make_repo):
    """Cargo.toml files are parsed for the workspace's crate names; one nested past the parser's recursion, or not
    TOML, or with a name of the wrong type, names no crate, and the rest are indexed."""
    root = make_repo({"deep/Cargo.toml": "[package]\nname = \"deep\"\nx = " + "[\n" * 3000 + "]\n" * 3000,
                      "typed/Cargo.toml": "[package]\nname = 3\n", "broken/Cargo.toml": "[package\nname = \"broken\"\n",
                      "good/Cargo.toml": "[package]\nname = \"good-crate\"\n", "good/src/lib.rs": "pub fn f() {}\n"})
    index = index_repository(root)
    assert index.paths.crates == {"good_crate": "good/src/lib.rs"}
    assert {"deep/Cargo.toml", "typed/Cargo.toml", "broken/Cargo.toml", "good/src/lib.rs"} <= set(index.files)


def test_invalid_ignore_patterns_are_left_out_as_git_does(make_repo):
    root = make_repo({"a.py": "a = 1\n", "b.log": "b\n", "c.py": "c = 1\n",
                      ".gitignore": "[z-a]\n*.log\n\\\n!\nc.py\n"})
    assert [s.path for s in scan_repository(root)] == [".gitignore", "a.py"]


INCLUDE_IF_CASES = [   # (config file holding it, the section's header, HEAD's branch, whether git includes the file)
    ("global", '[includeIf "gitdir:~/work/"]', "main", True),
    ("global", '[includeIf "gitdir:~/work"]', "main", False),     # a trailing slash is a folder and all inside
    ("global", '[includeIf "gitdir:Proj/.git"]', "main", True),   # no ~/, ./ or /: **/ before it
    ("global", '[includeIf "gitdir:proj/"]', "main", False),
    ("global", '[includeIf "gitdir/i:proj/"]', "main", True),     # /i: ignoring case
    ("global", '[includeIf "gitdir:./work/"]', "main", True),     # ./: the config file's folder
    ("repo", '[includeIf "gitdir:./"]', "main", False),
    ("global", '[includeIf "gitdir:~/w*k/P?oj/.git"]', "main", True),
    ("global", '[includeIf "gitdir:~/*/.git"]', "main", False),   # a star takes no slash
    ("global", '[includeIf "gitdir:~/**/.git"]', "main", True),
    ("global", '[includeIf "gitdir:Pr[o]j/"]', "main", True),     # a "]" inside the header's quotes
    ("global", '[includeIf "gitdir/i:[P]roj/"]', "main", False),  # /i folds the path, not a set's members
    ("global", '[includeIf "gitdir/i:[p]ROJ/"]', "main", True),
    ("global", '[includeIf "gitdir:"]', "main", True),            # nothing: **/ then **, every folder
    ("global", '[includeIf "gitdir:{repo}/.git"]', "main", True),
    ("global", '[includeIf "gitdir:{repo}"]', "main", False),
    ("global", '[includeIf "GITDIR:~/work/"]', "main", False),    # the condition's name keeps its case
    ("global", '[includeIf  "gitdir:~/wo\\rk/"] ; a comment', "main", True),  # an escape in the header
    ("global", '[includeIf "onbranch:main"]', "main", True),
    ("repo", '[includeIf "onbranch:main"]', "main", True),
    ("global", '[includeIf "onbranch:main"]', "dev", False),
    ("global", '[includeIf "onbranch:feat/"]', "feat/x", True),
    ("global", '[includeIf "onbranch:f*"]', "feat/x", False),
    ("global", '[includeIf "onbranch:feat/*"]', "feat/x", True),
    ("global", '[includeIf "hasconfig:remote.*.url:https://example.com/**"]', "main", False),
    ("global", '[includeIf "hasconfig:remote.*.url:https://github.com/work-org/**"]', "main", True),   # a remote's
    ("repo", '[includeIf "hasconfig:remote.*.url:*://github.com/work-org/*"]', "main", True),
    ("global", '[includeIf "hasconfig:remote.*.url:https://github.com/*"]', "main", False),  # a star takes no slash
    ("global", '[includeIf "bogus:x"]', "main", False),
]


@pytest.mark.parametrize("case", INCLUDE_IF_CASES, ids=[f"case{i}" for i in range(len(INCLUDE_IF_CASES))])
def test_conditional_includes_are_evaluated_as_git_evaluates_them(make_repo, tmp_path, monkeypatch, case):
    """core.excludesFile kept in a file that [includeIf "gitdir:~/work/"] or [includeIf "onbranch:main"] names (a
    work profile) was never read: conditional includes were skipped, and the secret that file ignores was indexed.
    Evaluated as git does (gitdir patterns with ~/, ./, **/ before a bare one, a trailing slash, /i; onbranch from
    HEAD; hasconfig:remote.*.url: against every remote's URL), never running anything; differential against git."""
    where, header, branch, included = case
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    repo = home / "work" / "Proj"
    repo.mkdir()
    (repo / "secret.py").write_text("KEY = 1\n")
    (repo / "a.py").write_text("a = 1\n")
    env = {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "symbolic-ref", "HEAD", f"refs/heads/{branch}"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "remote", "add", "origin", "https://github.com/work-org/proj.git"],
                   check=True, env=env)
    (home / "my-ignores").write_text("secret.py\n")
    config = home / ".gitconfig" if where == "global" else repo / ".git" / "config"
    (config.parent / "work-profile").write_text(f"[core]\n\texcludesFile = {home}/my-ignores\n")
    with open(config, "a") as file:
        file.write(f"{header.format(repo=repo)}\n\tpath = work-profile  # the work profile\n")
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True, env=env).stdout.split()
    assert [s.path for s in scan_repository(repo)] == sorted(listed)
    assert ("secret.py" not in listed) == included


CONFIG_TEXTS = [     # a config's text as git's parser reads it: what core.excludesFile is
    '[core]\n\texcludesFile = ~/a#b\n',                 # a comment needs no space before it
    '[core]\n\texcludesFile = "~/a #b" ; c\n',           # but not in quotes
    '[core] excludesFile = ~/same-line\n',               # a key after the header, on its line
    '[Core]\n\tEXCLUDESFILE = ~/x\\\n y\n',              # names ignore case; a line continued
    '[core]\n\texcludesFile = ~/a\\tb\n',                # an escape
    '[core "sub"]\n\texcludesFile = ~/not-core\n[core]\n\texcludesFile = ~/core\n',
    '[core]\n\texcludesFile = ~/first\n\texcludesFile = ~/last\n',
    '[core]\n\texcludesFile = ~/kept\n[broken\n\texcludesFile = ~/after\n',
    '[core]\r\n\texcludesFile = ~/crlf  \r\n',
]


@pytest.mark.parametrize("text", CONFIG_TEXTS, ids=[f"config{i}" for i in range(len(CONFIG_TEXTS))])
def test_git_config_text_is_parsed_as_git_parses_it(tmp_path, monkeypatch, text):
    """The config was read a line at a time by partitioning at "=": `excludesFile = ~/a#b` kept `#b` (git: a
    comment), a key on its header's line or a continued line was missed, `[core "sub"]` counted as [core]."""
    from prompts.scan import _git_setting

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    repo = tmp_path / "repo"
    env = {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    (home / ".gitconfig").write_text(text)
    got = subprocess.run(["git", "-C", str(repo), "config", "--get", "core.excludesFile"], capture_output=True,
                         text=True, env=env)
    if "bad config line" in got.stderr:     # git refuses to run at all; the settings before the line are kept
        assert _git_setting(repo, "excludesfile") == "~/kept"
    else:
        assert _git_setting(repo, "excludesfile") == got.stdout[:-1]


CONFIG_ENVIRONMENTS = [     # git's environment for its config files: which one names core.excludesFile
    {"GIT_CONFIG_GLOBAL": "{tmp}/custom-global"},           # instead of ~/.gitconfig and the XDG config
    {"GIT_CONFIG_GLOBAL": ""},                              # no global config at all
    {"GIT_CONFIG_GLOBAL": "/dev/null"},
    {"GIT_CONFIG_SYSTEM": "{tmp}/custom-global"},           # the system's, under the user's (not in ~/.gitconfig)
    {"GIT_CONFIG_SYSTEM": "{tmp}/custom-global", "GIT_CONFIG_NOSYSTEM": "1"},
    {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "Core.ExcludesFile", "GIT_CONFIG_VALUE_0": "{tmp}/from-env"},
    {"GIT_CONFIG_COUNT": "2", "GIT_CONFIG_KEY_0": "core.excludesfile", "GIT_CONFIG_VALUE_0": "{tmp}/from-env",
     "GIT_CONFIG_KEY_1": "user.name", "GIT_CONFIG_VALUE_1": "x"},
]


@pytest.mark.parametrize("settings", CONFIG_ENVIRONMENTS, ids=[f"env{i}" for i in range(len(CONFIG_ENVIRONMENTS))])
def test_the_config_files_git_reads_are_those_its_environment_names(tmp_path, monkeypatch, settings):
    """$GIT_CONFIG_GLOBAL (a dotfiles setup, a CI job) replaces ~/.gitconfig, $GIT_CONFIG_SYSTEM names the system's,
    $GIT_CONFIG_COUNT/KEY/VALUE add settings as `git -c` does: the walk read ~/.gitconfig whatever they said, so an
    excludes file they name was never read and what it ignores was indexed (differential against git)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(f"[core]\n\texcludesFile = {tmp_path}/from-home\n")
    (tmp_path / "custom-global").write_text(f"[core]\n\texcludesFile = {tmp_path}/from-custom\n")
    for name in ("from-home", "from-custom", "from-env"):
        (tmp_path / name).write_text(f"{name}.py\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("a.py", "from-home.py", "from-custom.py", "from-env.py"):
        (repo / name).write_text("x = 1\n")
    env = {name: value for name, value in os.environ.items() if not name.startswith("GIT_CONFIG")}
    env |= {"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"} | {k: v.format(tmp=tmp_path) for k, v in settings.items()}
    if "GIT_CONFIG_SYSTEM" in settings and "GIT_CONFIG_NOSYSTEM" not in settings:
        del env["GIT_CONFIG_NOSYSTEM"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    for name in [n for n in os.environ if n.startswith("GIT_CONFIG")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True, env=env).stdout.split()
    assert [s.path for s in scan_repository(repo)] == sorted(listed)


def test_a_config_that_includes_itself_many_times_over_is_read_a_bounded_number_of_times(make_repo, monkeypatch):
    """`[include] path = config` four times in .git/config: each include is followed to git's depth of 10, four ways
    at each level, a million reads (over two minutes) before the first file was listed; git refuses such a config at
    once ("exceeded maximum include depth"). A config file's includes are read a bounded number of times in all."""
    import prompts.scan

    root = make_repo({"a.py": "a = 1\n", "secret.py": "s = 1\n"}, git=True)
    with open(root / ".git" / "config", "a") as file:
        file.write("[core]\n\texcludesFile = .myignore\n[include]\n" + "\tpath = config\n" * 4)
    (root / ".myignore").write_text("secret.py\n")
    reads = []
    real = prompts.scan._read_rules
    monkeypatch.setattr(prompts.scan, "_read_rules", lambda path, *a, **k: reads.append(path) or real(path, *a, **k))
    assert [s.path for s in scan_repository(root)] == [".myignore", "a.py"]
    assert len(reads) < 1000


def test_a_worktrees_own_config_is_read_where_the_repository_enables_it(make_repo, tmp_path, monkeypatch):
    """With extensions.worktreeConfig, `git config --worktree` keeps settings in the worktree's config.worktree
    (sparse checkouts do), which git reads after the repository's config: it was never read, so an excludes file
    set there was not either (differential against git)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    env = {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}
    root = make_repo({"a.py": "a = 1\n", "secret.py": "s = 1\n", "other.py": "o = 1\n"}, git=True)
    (tmp_path / "worktree-ignores").write_text("secret.py\n")
    (tmp_path / "repo-ignores").write_text("other.py\n")
    for args in (["core.excludesFile", str(tmp_path / "repo-ignores")], ["extensions.worktreeConfig", "true"],
                 ["--worktree", "core.excludesFile", str(tmp_path / "worktree-ignores")]):
        subprocess.run(["git", "-C", str(root), "config", *args], check=True, env=env)
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True, env=env).stdout.split()
    assert [s.path for s in scan_repository(root)] == sorted(listed) == ["a.py", "other.py"]
