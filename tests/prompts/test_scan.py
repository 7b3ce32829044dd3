"""Scanning: which files are indexed, and that odd files never stop the scan."""

import os
import subprocess
import warnings

import pytest

from prompts.scan import (MAX_FILE_BYTES, ScanWarning, git_folder_around, list_folder, read_source, repository_rules,
                          scan_repository, source_file)
from unreadable import deny_folder

FILES = {
    "app.py": "print('hi')\n",
    "pkg/mod.py": "x = 1\n",
    "pkg/generated.py": "y = 2\n",
    "notes/todo.txt": "todo\n",
    "logs/run.log": "log\n",
    "logs/keep.log": "keep\n",
    "node_modules/lib/index.js": "module.exports = 1\n",
    "build/out.py": "z = 3\n",
    ".venv/lib/site.py": "w = 4\n",
    "web/app.min.js": "var a=1;\n",
    "package-lock.json": "{}\n",
    "web/npm-shrinkwrap.json": "{}\n",              # lockfiles indexed as text before (round 20): npm's, NuGet's,
    "src/App/packages.lock.json": "{}\n",           # Gradle's, SwiftPM's
    "gradle.lockfile": "empty=\n",
    "Package.resolved": "{}\n",
    "image.png": b"\x89PNG\r\n\x1a\n\0\0\0",
    "data.bin.txt": b"abc\0def",
}


def _paths(root):
    return [source.path for source in scan_repository(root)]


@pytest.mark.parametrize("git", [False, True], ids=["walk", "git"])
def test_ignore_files_vendored_folders_and_binaries_are_left_out(make_repo, git):
    root = make_repo(
        FILES | {
            ".gitignore": "*.log\n!keep.log\n", "pkg/.gitignore": "generated.py\n", ".codecompleteignore": "notes/\n",
        },
        git=git,
    )
    assert _paths(root) == [
        ".codecompleteignore", ".gitignore", "app.py", "data.bin.txt", "logs/keep.log", "pkg/.gitignore", "pkg/mod.py",
    ]
    # The NUL byte is only found on reading: the file is then left out of the index (see test_index).
    assert read_source(root, "data.bin.txt") is None


def test_runs_of_stars_in_ignore_files_match_as_git_matches_them_without_backtracking(make_repo):
    """Twenty stars and an x: git reads one star (3 ms); compiled star by star the pattern backtracked
    exponentially on a long name (indexing never ended). A segment of stars only is git's "**"."""
    files = {"some_module_name_helpers.py": "a = 1\n", "abx": "b\n", "ok.py": "c = 1\n", "d/deep/e/f.py": "f = 1\n",
             "d/deep.py": "g = 1\n", "lit*x.py": "h = 1\n", "lit.py": "i = 1\n",
             ".gitignore": "*" * 20 + "x\nd/***/f.py\n!**ok.py\n"}
    walked = _paths(make_repo(files, name="walk"))
    git_root = make_repo(files, git=True, name="git")
    listed = subprocess.run(["git", "-C", str(git_root), "ls-files", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert walked == sorted(listed) == [".gitignore", "d/deep.py", "lit*x.py", "lit.py", "ok.py",
                                        "some_module_name_helpers.py"]


TREE = ["a.py", "a.txt", "m.py", "docs/keep.py", "docs/a.py", "docs/sub/x.py", "docs/sub/keep/k.py", "src/pkg/m.py",
        "src/pkg/n.txt", "src/a.txt", "bld/x.py", "bld/sub/y.py", "foo/bar.py", "x/foo", "lib/foo/z.py",
        "logs/debug.log", "logs/keep/important.log", "abc/def/ghi.py", "deep/a/b/c/d.py", "sp ace.py", "sp ace .py",
        "!bang.py", "#hash.py", "q1.py", "q22.py", "set/a1.py", "set/b2.py", "set/c3.py", "set/-.py", "star*.py",
        "nested/inner/one.py", "nested/inner/two.txt", "nested/other.txt", "[x].py", "set/[ab].py",
        "aYb", "axb", "a/b", "aZb/f", "sub/aYb", "sub/axb", "sub/a/b", "sub/aZb/f"]
IGNORE_CASES = [                      # (root .gitignore, {folder: its .gitignore})
    ("docs/**\n!docs/keep.py", {}),    # the folder itself is not matched by "docs/**"
    ("docs/**\n!docs/sub/\n!docs/sub/keep/**", {}),
    ("*\n!*/\n!*.py", {}),             # the whitelist idiom
    ("**\n!**/\n!*.py", {}),
    ("src/**/\n!src/pkg/", {}),
    ("foo\n!foo/", {}), ("!foo/\nfoo", {}), ("**/foo", {}), ("foo/", {}), ("/foo", {}),
    ("bld/\n!bld/x.py", {}),            # a file cannot come back from an ignored folder
    ("bld/*\n!bld/x.py", {}),
    ("/*\n!/src", {}), ("*/\n!src/\n!src/**", {}),
    ("*.txt\n!src/*.txt", {}), ("logs/*\n!logs/keep/", {}), ("logs/\n!logs/keep/", {}),
    ("abc/**/ghi.py", {}), ("deep/**/d.py\n!deep/a/**", {}), ("deep/*/b", {}),
    ("q?.py", {}), ("set/[ab]*.py", {}), ("set/[!ab]*.py", {}), ("set/[a-b]?.py", {}), ("set/[-]*", {}),
    ("\\!bang.py\n\\#hash.py", {}), ("#hash.py", {}), ("sp\\ ace.py", {}), ("sp ace .py  ", {}),
    ("sp ace\\ .py", {}), ("star\\*.py", {}), ("[", {}), ("a.py/", {}),
    ("*.txt", {"nested": "!*.txt", "nested/inner": "*.py\n!one.py"}),
    ("m.py\n!*.py\n/a.py\n*.txt\n!docs/a.py\ndocs/**\n!a.txt\n*.py\n!q1.py\nsp ace.py\n!*.py", {}),  # filed, in order
    ("*[.]py\n!a.py\nsrc/pkg/*.py\n!src/*.txt\nlogs/**/*.log\n!docs/a*.py\n*.p?\n!set/?1.py\nnested/*/*.txt", {}),
    ("nested/", {"nested": "!inner/"}),
    ("[[:punct:]]*\nset/[![:alpha:]]*\nq[[:digit:]][[:digit:]].py", {}),     # character classes
    ("[[:bogus:]]*\n[[:alpha:]\nset/[a[:digit:]-]*", {}),
    ("star[*].py\nq[*1].py\n[*\nset/[ab*", {}),      # a star in a set is a member; an unclosed set matches nothing
    ("", {"nested/inner": "/one.py", "docs": "sub/keep\nkeep.py"}),
    # a slash in a set is a member of the one set (which never matches a slash), and anchors the pattern as any slash
    ("a[!/x]b\nsub/a[x/]b", {}), ("**/a[!/x]b/\n[!/]", {}), ("[/]\na[/]b\n*[/]*\nsu[/b]/a", {}),
    ("*\n!*/\n!a[!/x]b", {}), ("", {"sub": "a[!/x]b\n/a[/b]/b"}),
    ("a\\/b\n/a[!/]b/f", {}),     # an escaped slash is a slash
]


@pytest.mark.parametrize("rules", IGNORE_CASES, ids=[f"case{i}" for i in range(len(IGNORE_CASES))])
def test_ignore_rules_keep_the_files_git_keeps(make_repo, tmp_path, rules):
    """Differential: the walk's files against `git ls-files --others --exclude-standard` over one tree with many
    patterns (folders asked about as folders, negations, "**" in every position, sets, escapes, spaces)."""
    root_rules, folder_rules = rules
    files = {path: "x = 1\n" for path in TREE} | {".gitignore": root_rules + "\n"}
    files |= {f"{folder}/.gitignore": text + "\n" for folder, text in folder_rules.items()}
    walked = [p for p in _paths(make_repo(files, name="walk")) if not p.endswith(".gitignore")]
    git_root = make_repo(files, git=True, name="git")
    listed = subprocess.run(["git", "-C", str(git_root), "ls-files", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True, env={**os.environ, "HOME": str(tmp_path),
                                                                              "GIT_CONFIG_NOSYSTEM": "1"}).stdout
    assert walked == sorted(p for p in listed.splitlines() if not p.endswith(".gitignore") and not
                            p.startswith('"')) == sorted(set(walked))



def test_every_ignore_case_keeps_the_files_git_keeps_under_ignorecase(make_repo, tmp_path):
    """The differential cases above again, with core.ignorecase on and names in other cases (filed patterns, sets,
    classes, folders' own ignore files), against git with the same setting."""
    upper = ["Docs/Keep.py", "SRC/pkg/M.py", "Logs/Debug.LOG", "A.PY", "Q1.py", "Set/A1.py", "STAR*.py",
             "Nested/Inner/One.py", "ABC/def/GHI.py"]
    cases = [*IGNORE_CASES, ("*.LOG\nsrc/\n!SRC/pkg/\nQ?.PY\n[a-c]*.py\n", {}),
             ("", {"Docs": "KEEP.py", "nested/inner": "ONE.PY"}),
             # wildmatch folds the name, not a set's members: an upper-case letter alone in a set never matches
             # (nor escaped); in a range it does, and a negated set of one takes every letter
             ("[A]*.py\n[\\Q]?.py\nSet/[!B]2.py\n[X-Z]b\n[[:upper:]]Zb/\n", {}),
             ("\\Docs/\n\\A.PY\n\\q1.py\n", {})]     # so is an escaped upper-case letter (a lower-case one folds)
    env = {**os.environ, "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    for n, (root_rules, folder_rules) in enumerate(cases):
        files = {path: "x = 1\n" for path in TREE + upper} | {".gitignore": root_rules + "\n"}
        files |= {f"{folder}/.gitignore": text + "\n" for folder, text in folder_rules.items()}
        walk_root, git_root = make_repo(files, name=f"walk{n}"), make_repo(files, git=True, name=f"git{n}")
        (walk_root / ".git").mkdir()
        (walk_root / ".git" / "config").write_text("[core]\n\tignorecase = true\n")
        subprocess.run(["git", "-C", str(git_root), "config", "core.ignorecase", "true"], check=True, env=env)
        listed = subprocess.run(["git", "-C", str(git_root), "ls-files", "--others", "--exclude-standard"],
                                capture_output=True, text=True, check=True, env=env).stdout
        assert [p for p in _paths(walk_root) if not p.endswith(".gitignore")] == sorted(
            p for p in listed.splitlines() if not p.endswith(".gitignore") and not p.startswith('"')), (n, root_rules)


@pytest.mark.parametrize("ignore_case", ["true", "false"])
def test_random_ignore_files_keep_the_files_git_keeps(make_repo, tmp_path, ignore_case):
    """A seeded random differential: ignore files of one to three lines made of pattern pieces (sets, ranges,
    classes, escapes, stars, slashes, names in both cases) over one tree, against git with the same core.ignorecase
    (it found the escaped upper-case letter under ignorecase)."""
    import random

    names = ["a.py", "A.py", "b.PY", "Ab.txt", "x/a.py", "X/B.py", "x/y/z.md", "Q1.py", "q-2.py", "[a].py", "é.py",
             "sub/Sub/a.py", "a b.py", "Z_.py", "-a", "!n.py"]
    pieces = ["a", "A", "b", "*", "**", "?", "/", "[", "]", "!", "-", "\\", ".py", "x", "X", "[a-c]", "[A-C]", "[!a]",
              "[!A]", "[[:upper:]]", "[[:lower:]]", "[Z-a]", "sub", "Sub", " ", "é", "1", "q"]
    root = make_repo({name: "x\n" for name in names}, git=True)
    env = {**os.environ, "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "-C", str(root), "config", "core.ignorecase", ignore_case], check=True, env=env)
    draw = random.Random(33)
    for _ in range(120):
        lines = ["".join(draw.choice(pieces) for _ in range(draw.randint(1, 5))) for _ in range(draw.randint(1, 3))]
        (root / ".gitignore").write_text("\n".join(lines) + "\n", encoding="utf-8")
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--others", "--exclude-standard"],
                                capture_output=True, check=True, env=env).stdout
        assert [p for p in _paths(root) if p != ".gitignore"] == sorted(
            os.fsdecode(p) for p in listed.split(b"\0") if p and p != b".gitignore"), lines


def test_wildcards_match_the_bytes_of_a_non_ascii_name_as_git_matches_them(make_repo, tmp_path):
    """git's wildmatch reads names as bytes: "?" and a set take one byte, so `??.py` ignores é.py (two bytes of
    UTF-8) and `?.py` does not. Matched by characters, é.py went the other way in both."""
    files = {name: "x = 1\n" for name in ("a.py", "é.py", "éé.py", "ab.txt", "é.txt", "ok/ü.py", "ok/üx.py")}
    files[".gitignore"] = "??.py\n[!a].txt\n[é]x.py\n\n"
    walked = _paths(make_repo(files, name="walk"))
    git_root = make_repo(files, git=True, name="git")
    listed = subprocess.run(["git", "-C", str(git_root), "ls-files", "-z", "--others", "--exclude-standard"],
                            capture_output=True, check=True, env={**os.environ, "HOME": str(tmp_path),
                                                                  "GIT_CONFIG_NOSYSTEM": "1"}).stdout
    assert walked == sorted(os.fsdecode(p) for p in listed.split(b"\0") if p) == [
        ".gitignore", "a.py", "ab.txt", "ok/üx.py", "é.txt", "éé.py"]


def test_ignore_files_are_read_as_bytes_split_at_newlines_as_git_reads_them(make_repo, tmp_path):
    """A Latin-1 name in an ignore file matched nothing (its bytes became U+FFFD, the walk's name holds them as
    surrogates), and a form feed split a pattern in two (str.splitlines)."""
    names = [b"caf\xe9_menu.py", b"na\xefve.txt", b"a\x0cb.py", b"a", b"b.py", b"ok.py"]
    files = {os.fsdecode(name): "x = 1\n" for name in names} | {".gitignore": b"caf\xe9*.py\nna\xefve.txt\na\x0cb.py\n"}
    walked = _paths(make_repo(files, name="walk"))
    git_root = make_repo(files, git=True, name="git")
    listed = subprocess.run(["git", "-C", str(git_root), "ls-files", "-z", "--others", "--exclude-standard"],
                            capture_output=True, check=True, env={**os.environ, "HOME": str(tmp_path),
                                                                  "GIT_CONFIG_NOSYSTEM": "1"}).stdout
    assert walked == sorted(os.fsdecode(p) for p in listed.split(b"\0") if p) == [".gitignore", "a", "b.py", "ok.py"]

def test_stars_in_ignore_patterns_cannot_make_the_walk_slow(make_repo):
    """Each star but a segment's last takes the first place its text fits, and keeps it: a plain regular
    expression would try every way of splitting the name between thirteen stars."""
    import time
    from prompts.gitignore import Rules
    rules = Rules(["*a*a*a*a*a*a*a*a*a*a*a*a*b", "x/**/**/**/**/**/**/**/y"])
    started = time.perf_counter()
    assert rules.decide("a" * 200, is_dir=False) is None
    assert rules.decide("x/" + "q/" * 100 + "z", is_dir=False) is None
    assert rules.decide("a" * 30 + "b", is_dir=False) is True
    assert time.perf_counter() - started < 0.5


def _count_matches(rules) -> list[str]:
    """The paths `rules`' compiled patterns are asked from now on, one entry per question."""
    asked: list[str] = []

    class Counted:
        def __init__(self, regex):
            self.regex = regex

        def fullmatch(self, path):
            asked.append(path)
            return self.regex.fullmatch(path)

    rules.patterns = [pattern._replace(regex=Counted(pattern.regex)) if pattern.regex else pattern
                      for pattern in rules.patterns]
    return asked


def test_a_long_list_of_plain_names_and_paths_is_looked_up_not_matched_one_by_one():
    """A generated ignore file of 40,000 paths and 2,000 files: every file asked every pattern took 17 s. A path
    is asked only the patterns filed under its own path, name or extension, and the globs, the last still winning;
    and a plain path or name is not compiled at all (40,000 took 2.5 s, every walk of a server's rescan)."""
    from prompts.gitignore import Rules

    lines = [f"generated/file_{n}.py" for n in range(5000)] + [f"name_{n}.txt" for n in range(5000)]
    rules = Rules(["*.log", *lines, "!keep.log", "!name_7.txt", "*.o", "d*/", "!generated/file_3.py", "*.tar.gz",
                   *(f"build/lib{n}*.so" for n in range(5000))])
    assert sum(pattern.regex is not None for pattern in rules.patterns) == 5004  # only the globs are compiled
    asked = _count_matches(rules)
    decisions = [rules.decide(path, is_dir) for path, is_dir in [
        ("generated/file_9.py", False), ("generated/file_3.py", False), ("x/name_8.txt", False),
        ("name_7.txt", False), ("a/keep.log", False), ("b.log", False), ("src/name_1.py", False), ("dist", True),
        ("dist", False), ("x.tar.gz", False), ("x.gz", False), ("file_9.py", False), ("build/lib4999x.so", False)]]
    assert decisions == [True, False, True, False, False, True, None, True, None, True, None, None, True]
    assert len(asked) < 40      # (all of them: over 200,000)


def test_globs_that_start_with_plain_text_are_asked_only_of_names_that_start_so():
    """`gen*` has no extension to be filed under: 1,000 such patterns were each asked of every path (33 s for 100k
    paths). A pattern is filed under the plain text its last part starts with, and asked only of names starting so."""
    from prompts.gitignore import Rules

    rules = Rules([*(f"gen{n}_*" for n in range(1000)), "/top*", "src/gen*/out", "npm-debug.log*", "!gen7_keep*",
                   "a*/**", "*~"])
    asked = _count_matches(rules)
    decisions = [rules.decide(path, is_dir) for path, is_dir in [
        ("gen7_x.py", False), ("gen7_keep.py", False), ("pkg/gen999_y", True), ("gen1000_z", False),
        ("top.py", False), ("x/top.py", False), ("src/gen1/out", False), ("src/gen1/output", False),
        ("npm-debug.log.1", False), ("x.py~", False), ("ab/c.py", False), ("b/c.py", False), ("g", False)]]
    assert decisions == [True, False, True, None, True, None, True, None, True, True, True, None, None]
    assert len(asked) < 40      # (each asked of each path: over 6,000)


CHECKOUT = {".gitignore": ".env\n/svc/api/gen/\n", "svc/.gitignore": "cache/\n", "svc/api/.env": "API_KEY=secret\n",
            "svc/api/a.py": "x = 1\n", "svc/api/gen/g.py": "g = 1\n", "svc/api/cache/c.py": "c = 1\n",
            "svc/api/b.log": "b\n", "svc/api/keep.py": "k = 1\n", "svc/api/.gitignore": "!b.log\n"}


def test_a_folder_of_a_checkout_opened_as_the_repository_keeps_the_checkouts_ignore_rules(make_repo, tmp_path):
    """`codecomplete services/api` in a monorepo: the checkout's own ignore files (at its top, in the folders down
    to the one opened, .git/info/exclude) decide there as git decides. They were not read: the folder's .env,
    ignored at the top as a secret, and the folders generated into it went into prompts."""
    top = make_repo(CHECKOUT, git=True)
    (top / ".git" / "info" / "exclude").write_text("*.log\n")
    listed = subprocess.run(["git", "-C", str(top / "svc" / "api"), "ls-files", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True, env={**os.environ, "HOME": str(tmp_path),
                                                                              "GIT_CONFIG_NOSYSTEM": "1"}).stdout
    assert _paths(top / "svc" / "api") == sorted(listed.split()) == [".gitignore", "a.py", "b.log", "keep.py"]


def test_a_checkout_above_that_another_user_owns_does_not_decide(make_repo, monkeypatch):
    """As git's safe.directory: a .git another user made above the folder (a /tmp/.git) is not its checkout."""
    top = make_repo(CHECKOUT, git=True)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(top).st_uid + 1)
    assert ".env" in _paths(top / "svc" / "api")


def _git_listing(folder, env):
    """`git ls-files --others --exclude-standard` in ``folder``, with each nested repository it shows as a folder
    (`inner/`) listed as git lists it there, where it is the repository of those files."""
    listed = subprocess.run(["git", "-C", str(folder), "ls-files", "-z", "--others", "--exclude-standard"],
                            capture_output=True, check=True, env=env).stdout
    paths = []
    for path in (os.fsdecode(p) for p in listed.split(b"\0") if p):
        paths += [path + inner for inner in _git_listing(folder / path, env)] if path.endswith("/") else [path]
    return sorted(paths)


def test_inside_a_nested_repository_its_own_ignore_rules_decide_as_git_decides_there(make_repo, tmp_path):
    """A repository inside the repository (a clone in third_party/, a submodule): git run in it reads its own
    .gitignore files, its .git/info/exclude and its config, and not the outer repository's rules (git in the outer
    one lists the folder alone). The walk applied the outer rules there and never the inner info/exclude: a secret
    the inner repository excludes was indexed. Whether the walk enters the folder is the outer rules' question, and
    a folder holding a `.git` that is no repository (an empty one) is a plain folder to git."""
    env = {**os.environ, "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    files = {".gitignore": "*.log\nskipped/\n", "top.py": "t\n", "top.log": "l\n",
             "inner/.gitignore": "gen.py\n", "inner/a.log": "a\n", "inner/gen.py": "g\n", "inner/secret.py": "s\n",
             "inner/ok.py": "o\n", "inner/sub/gen.py": "g\n", "inner/sub/k.py": "k\n",
             "inner/deeper/x.py": "x\n", "inner/deeper/x.txt": "x\n", "inner/deeper/y.log": "y\n",
             "mod/m.log": "m\n", "mod/private.py": "p\n", "mod/m.py": "m\n",
             "skipped/s.py": "s\n", "notrepo/b.log": "b\n", "notrepo/b.py": "b\n"}
    roots = {}
    for name in ("walk", "git"):
        root = roots[name] = make_repo(files, name=name)
        (root / ".git" / "modules").mkdir(parents=True)
        for command in (["init", "-q", "."], ["init", "-q", "inner"], ["init", "-q", "inner/deeper"],
                        ["init", "-q", "--separate-git-dir", str(root / ".git" / "modules" / "mod"), "mod"],
                        ["init", "-q", "skipped"]):
            subprocess.run(["git", "-C", str(root), *command], check=True, env=env)
        (root / "inner" / ".git" / "info" / "exclude").write_text("secret.py\n")
        (root / "inner" / "deeper" / ".git" / "info" / "exclude").write_text("*.txt\n")
        (root / ".git" / "modules" / "mod" / "info" / "exclude").write_text("private.py\n")
        (root / "notrepo" / ".git").mkdir()
    expected = _git_listing(roots["git"], env)
    assert _paths(roots["walk"]) == expected == [
        ".gitignore", "inner/.gitignore", "inner/a.log", "inner/deeper/x.py", "inner/deeper/y.log", "inner/ok.py",
        "inner/sub/k.py", "mod/m.log", "mod/m.py", "notrepo/b.py", "top.py"]


def test_codecompleteignore_files_above_a_nested_repository_still_decide_inside_it(make_repo):
    """.codecompleteignore is codecomplete's own: unlike the outer repository's git rules, those of the folders above
    a nested repository apply inside it too (`docs/` at the top leaves out every docs folder, a clone's as well)."""
    root = make_repo({".codecompleteignore": "docs/\n/inner/gen.py\n", "inner/a.py": "a\n", "inner/gen.py": "g\n",
                      "inner/docs/d.py": "d\n", "inner/.codecompleteignore": "*.txt\n", "inner/notes.txt": "n\n",
                      ".gitignore": "*.py\n", "docs/x.md": "x\n"}, git=True)
    subprocess.run(["git", "init", "-q", str(root / "inner")], check=True)
    assert _paths(root) == [".codecompleteignore", ".gitignore", "inner/.codecompleteignore", "inner/a.py"]


def test_git_exclude_is_honoured_without_git(make_repo):
    root = make_repo({"a.py": "a = 1\n", "secret.py": "s = 1\n", ".git/info/exclude": "secret.py\n"})
    assert _paths(root) == ["a.py"]



def test_the_exclude_file_of_a_worktree_or_submodule_is_found_where_its_git_file_points(make_repo):
    """A linked worktree's `.git` is a file naming its folder in the main repository, whose `commondir` holds
    info/exclude; a submodule's names its folder under the superproject's .git/modules. Only `.git/info/exclude`
    was read: what the user excluded there was indexed."""
    main = make_repo({".git/info/exclude": "secret*.py\n", ".git/worktrees/tree/commondir": "../..\n"}, name="main")
    tree = make_repo({".git": f"gitdir: {main}/.git/worktrees/tree\n", "a.py": "a = 1\n", "secret.py": "s = 1\n"},
                     name="tree")
    assert _paths(tree) == ["a.py"]
    superproject = make_repo({".git/modules/sub/info/exclude": "/private/\n", "sub/b.py": "b = 1\n",
                              "sub/.git": "gitdir: ../.git/modules/sub\n", "sub/private/key.py": "k = 1\n"},
                             name="super")
    assert _paths(superproject / "sub") == ["b.py"]
    for pointer in (b"gitdir: a\0b\n", b"gitdir: /dev/zero\n", b"gitdir:\n", b"\xff\xfe"):  # nothing to read
        assert _paths(make_repo({".git": pointer, "c.py": "c = 1\n"}, name=f"odd{len(pointer)}")) == ["c.py"]

def test_a_git_folder_is_told_from_a_work_tree_as_git_tells_it(make_repo):
    """git_folder_around: a bare repository, a checkout's .git and a folder in them (a worktree's own folder, whose
    objects are its commondir's, too) are git folders, which the app refuses to index; a checkout, a folder of it and
    a worktree (whose .git is a file) are work trees; a .git folder an archive brought (no HEAD) is no git folder."""
    git = {"HEAD": "ref: refs/heads/main\n", "objects/.keep": "", "refs/heads/.keep": "", "config": "[core]\n"}
    bare = make_repo(git, name="bare.git")
    main = make_repo({**{f".git/{k}": v for k, v in git.items()}, "src/a.py": "a = 1\n",
                      ".git/worktrees/tree/HEAD": "ref: refs/heads/other\n",
                      ".git/worktrees/tree/commondir": "../..\n"}, name="main")
    tree = make_repo({".git": f"gitdir: {main}/.git/worktrees/tree\n", "b.py": "b = 1\n"}, name="tree")
    unpacked = make_repo({".git/objects/.keep": "", "c.py": "c = 1\n"}, name="unpacked")
    assert git_folder_around(bare) == bare and git_folder_around(bare / "objects") == bare
    assert git_folder_around(main / ".git") == main / ".git"
    assert git_folder_around(main / ".git" / "refs" / "heads") == main / ".git"
    assert git_folder_around(main / ".git" / "worktrees" / "tree") == main / ".git" / "worktrees" / "tree"
    for work_tree in (main, main / "src", tree, unpacked, unpacked / ".git"):
        assert git_folder_around(work_tree) is None, work_tree


def test_a_git_folder_inside_the_repository_is_not_indexed(make_repo):
    """A bare repository committed as files (vendor/tool.git) was indexed as any folder, its config (a remote's URL
    with a token) and hook samples included: git's files, like a checkout's .git, which is skipped by name."""
    git = {"HEAD": "ref: refs/heads/main\n", "objects/.keep": "", "refs/heads/.keep": "",
           "config": '[remote "origin"]\n\turl = https://me:ghp_secret@example.com/tool.git\n',
           "hooks/pre-commit.sample": "#!/bin/sh\nexit 0\n"}
    root = make_repo({"src/a.py": "a = 1\n", **{f"vendor/tool.git/{k}": v for k, v in git.items()},
                      "notes/HEAD": "not a git folder's\n"})
    assert _paths(root) == ["notes/HEAD", "src/a.py"]
    assert source_file(root, "vendor/tool.git/config") is None and source_file(root, "src/a.py") is not None
    assert list_folder(root, "vendor/tool.git", repository_rules(root)) == ([], [])    # (a server's sweep)


def test_git_lists_untracked_files_but_not_ignored_ones(make_repo):
    files = {"tracked.py": "t = 1\n", "new.py": "n = 1\n", "skip.py": "s = 1\n", ".gitignore": "skip.py\n"}
    root = make_repo(files, git=True)
    subprocess.run(["git", "-C", str(root), "add", "tracked.py"], check=True)
    assert _paths(root) == [".gitignore", "new.py", "tracked.py"]


def test_huge_and_minified_files_are_skipped(make_repo):
    root = make_repo({
        "small.py": "a = 1\n",
        "huge.py": "# filler\n" * (MAX_FILE_BYTES // 9 + 10),
        "bundle.js": "var x=" + "1+" * 5000 + "1;\n",
    })
    assert _paths(root) == ["bundle.js", "small.py"]
    assert read_source(root, "bundle.js") is None  # minified: one very long line


def test_an_ignore_file_from_a_windows_editor_byte_order_mark_and_crlf_ignores_as_in_git(make_repo, tmp_path):
    """A byte-order mark became part of the first pattern, which then matched nothing: secret.py was indexed."""
    files = {"secret.py": "KEY = 1\n", "other.py": "x = 1\n", "a.py": "a = 1\n",
             ".gitignore": b"\xef\xbb\xbfsecret.py\r\nother.py\r\n"}
    walked = _paths(make_repo(files, name="walk"))
    git_root = make_repo(files, git=True, name="git")
    listed = subprocess.run(["git", "-C", str(git_root), "ls-files", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True, env={**os.environ, "HOME": str(tmp_path),
                                                                              "GIT_CONFIG_NOSYSTEM": "1"}).stdout
    assert walked == sorted(listed.splitlines()) == [".gitignore", "a.py"]


def test_a_repository_that_ignores_case_matches_its_ignore_files_ignoring_case_as_git(make_repo, tmp_path):
    """git sets core.ignorecase in a repository on macOS or Windows, and `secrets.env` then ignores Secrets.env:
    it was indexed. (Folded as git folds: ASCII letters only.)"""
    files = {"Secrets.env": "KEY = 1\n", "a.LOG": "x\n", "Gen/x.py": "x = 1\n", "\u00c9t\u00e9.txt": "e\n",
             "keep.py": "k = 1\n", ".gitignore": "secrets.env\n*.log\ngen/\n\u00e9t\u00e9.txt\n"}
    env = {**os.environ, "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    for ignore_case in ("true", "false"):
        walk_root, git_root = make_repo(files, name=f"walk-{ignore_case}"), make_repo(files, git=True,
                                                                                     name=f"git-{ignore_case}")
        (walk_root / ".git").mkdir()
        (walk_root / ".git" / "config").write_text(f"[core]\n\tignorecase = {ignore_case}\n")
        subprocess.run(["git", "-C", str(git_root), "config", "core.ignorecase", ignore_case], check=True, env=env)
        listed = subprocess.run(["git", "-C", str(git_root), "ls-files", "-z", "--others", "--exclude-standard"],
                                capture_output=True, check=True, env=env).stdout
        assert _paths(walk_root) == sorted(os.fsdecode(p) for p in listed.split(b"\0") if p)
    assert _paths(walk_root) == [".gitignore", "Gen/x.py", "Secrets.env", "a.LOG", "keep.py", "\u00c9t\u00e9.txt"]


@pytest.mark.parametrize("ignore_case", ["true", "false"])
def test_under_ignorecase_a_subfolders_ignore_file_and_character_classes_decide_as_in_git(make_repo, tmp_path,
                                                                                         ignore_case):
    """core.ignorecase folds the names matched, not the folders the ignore files are read from: the walk folded the
    path first and then looked for Sub/.gitignore at sub/.gitignore (nothing, on a disk that keeps case), so what
    Sub/.gitignore ignores (x.py, X.py) was indexed, and a folder opened inside a checkout (Svc/Api) lost the rules
    of the folders above it. Its classes fold as git's wildmatch folds them: [[:upper:]] also takes a lower-case
    letter, [A-C] a lower-case one; a class name is not folded ([[:UPPER:]] is no class)."""
    files = {"Sub/.gitignore": "x.py\n", "Sub/x.py": "x\n", "Sub/X.py": "x\n", "Sub/y.py": "y\n",
             "Svc/.gitignore": "q.py\n", "Svc/Api/Q.py": "q\n", "Svc/Api/r.py": "r\n",
             "cls/Up.txt": "u\n", "cls/lo.txt": "l\n", "cls/1.txt": "1\n", "rng/A.md": "a\n", "rng/b.md": "b\n",
             "rng/D.md": "d\n", "rng/e.md": "e\n", "bogus/U.c": "u\n", "bogus/u.c": "u\n",
             ".gitignore": "cls/[[:upper:]]*.txt\nrng/[A-C].md\nrng/[d-f].md\nbogus/[[:UPPER:]].c\n"}
    env = {**os.environ, "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    walk_root, git_root = make_repo(files, name="walk"), make_repo(files, git=True, name="git")
    (walk_root / ".git").mkdir()
    (walk_root / ".git" / "config").write_text(f"[core]\n\tignorecase = {ignore_case}\n")
    subprocess.run(["git", "-C", str(git_root), "config", "core.ignorecase", ignore_case], check=True, env=env)
    for folder in ("", "Svc/Api"):
        listed = subprocess.run(["git", "-C", str(git_root / folder), "ls-files", "-z", "--others",
                                 "--exclude-standard"], capture_output=True, check=True, env=env).stdout
        assert _paths(walk_root / folder) == sorted(os.fsdecode(p) for p in listed.split(b"\0") if p)
    if ignore_case == "true":
        assert _paths(walk_root) == [".gitignore", "Sub/.gitignore", "Sub/y.py", "Svc/.gitignore", "Svc/Api/r.py",
                                     "bogus/U.c", "bogus/u.c", "cls/1.txt"]


def test_a_generated_ignore_file_over_a_mebibyte_is_applied_as_git_applies_it(make_repo, tmp_path):
    """An ignore file listing tens of thousands of generated paths (1.3 MB here) is read by git, which skips only
    those of 100 MiB or more: the walk dropped any over 1 MiB whole, silently, and the .env it also names was
    indexed (differential against git)."""
    generated = "".join(f"gen/out_{n:06d}/module_{n:06d}.py\n" for n in range(40000))
    files = {".gitignore": ".env\n" + generated + "!keep.env\n", ".env": "KEY=1\n", "keep.env": "K=2\n",
             "a.py": "a = 1\n", "gen/out_000007/module_000007.py": "g = 1\n", "gen/other.py": "o = 1\n"}
    assert len(files[".gitignore"]) > 1 << 20
    walked = _paths(make_repo(files, name="walk"))
    git_root = make_repo(files, git=True, name="git")
    listed = subprocess.run(["git", "-C", str(git_root), "ls-files", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True, env={**os.environ, "HOME": str(tmp_path),
                                                                              "GIT_CONFIG_NOSYSTEM": "1"}).stdout
    # (the ignore file itself is over the size of a source file worth reading)
    assert walked == sorted(set(listed.split()) - {".gitignore"}) == ["a.py", "gen/other.py", "keep.env"]


def test_a_byte_order_mark_is_not_text(make_repo):
    root = make_repo({"bom.py": b"\xef\xbb\xbfimport os\r\n\ndef f():\r\n    return os.sep\r\n"})
    assert read_source(root, "bom.py") == "import os\n\ndef f():\n    return os.sep\n"


def test_non_utf8_bytes_are_replaced_and_windows_line_ends_normalised(make_repo):
    root = make_repo({"latin1.py": b"name = 'caf\xe9'\r\nother = 1\r\n"})
    assert read_source(root, "latin1.py") == "name = 'caf\ufffd'\nother = 1\n"


def test_a_file_with_classic_mac_line_ends_has_the_lines_and_chunks_an_editor_shows(make_repo, tmp_path):
    """Lone "\\r" line ends (classic Mac OS): editors show a line at each, as LSP counts them. The file was one
    line, so the chunker saw one header chunk of the whole file and every context line number was 1."""
    from prompts import index_repository

    unix = "import os\n\ndef one():\n    return 1\n\n\ndef two():\n    return 2\n"
    root = make_repo({"mac.py": unix.replace("\n", "\r"), "unix.py": unix})
    assert read_source(root, "mac.py") == unix
    index = index_repository(root, tmp_path / "cache")
    chunks = {path: [(c.start_line, c.end_line, c.defines) for c in index.chunks if c.path == path]
              for path in ("mac.py", "unix.py")}
    assert chunks["mac.py"] == chunks["unix.py"] and len(chunks["mac.py"]) == 3


def test_links_loops_and_special_files_warn_and_do_not_stop_the_scan(make_repo, tmp_path):
    root = make_repo({"a.py": "a = 1\n", "z.py": "z = 1\n", ".git/config": "url = https://user:token@host/x\n",
                      "node_modules/m/index.js": "x = 1\n", ".gitignore": ".env\nprivate/\n", ".env": "KEY = 'k'\n",
                      "private/keys.py": "KEY = 'k'\n"})
    outside = tmp_path / "outside.py"
    outside.write_text("secret = 1\n")
    os.symlink("loop_a", root / "loop_b")
    os.symlink("loop_b", root / "loop_a")
    os.symlink("missing.py", root / "broken.py")
    os.symlink(outside, root / "escape.py")
    os.symlink("a.py", root / "alias.py")
    os.symlink(".git/config", root / "remote.py")  # what the scan leaves out is not let in by a link to it
    os.symlink("node_modules/m/index.js", root / "vendored.js")
    os.symlink(".env", root / "settings.py")  # nor by a link to what the user keeps out of git
    os.symlink("private/keys.py", root / "keys.py")
    os.symlink("..", root / "up")  # a folder link is not followed
    os.mkfifo(root / "pipe.py")  # reading it would block forever
    with pytest.warns(ScanWarning) as caught:
        paths = _paths(root)
    assert paths == [".gitignore", "a.py", "alias.py", "z.py"]
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        "skipped broken.py: broken symbolic link",
        "skipped escape.py: symbolic link to outside the repository",
        "skipped loop_a: symbolic link loop",
        "skipped loop_b: symbolic link loop",
        "skipped pipe.py: not a regular file",
    ]


def test_an_unreadable_file_raises_oserror_for_the_index_to_report(make_repo, refuse_open):
    root = make_repo({"locked.py": "x = 1\n"})
    refuse_open("locked.py")
    with pytest.raises(PermissionError):
        read_source(root, "locked.py")


def test_files_are_read_on_windows_in_binary_mode(make_repo, monkeypatch, as_on_windows):
    """Windows has no O_NONBLOCK (every read was an AttributeError) and opens no folder (the reads relative to one
    failed); without O_BINARY its descriptors are text mode, where a Ctrl-Z byte ends the file."""
    root = make_repo({"pkg/mod.py": "a = '\x1a'\r\nb = 2\r\n"})
    as_on_windows()
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, flags, *args, **kw: opened.append(flags) or real_open(path, flags,
                                                                                                        *args, **kw))
    assert read_source(root, "pkg/mod.py") == "a = '\x1a'\nb = 2\n"
    assert opened and all(flags & os.O_BINARY for flags in opened)


def test_a_windows_junction_is_not_followed(make_repo, monkeypatch, as_on_windows):
    """A junction (Windows' folder link, which any user may make) is no symbolic link to os.path.islink: the walk
    went through one, out of the repository, and reads through one were allowed. Stat marks it by its reparse tag."""
    from types import SimpleNamespace

    root = make_repo({"a.py": "a = 1\n", "elsewhere/secret.py": "TOKEN = 1\n"})
    junction = str(root / "elsewhere")
    real_lstat = os.lstat

    def lstat(path, *args, **kwargs):
        result = real_lstat(path, *args, **kwargs)
        if os.fspath(path) != junction:
            return result
        return SimpleNamespace(**{name: getattr(result, name) for name in dir(result) if name.startswith("st_")},
                               st_reparse_tag=0xA0000003)      # IO_REPARSE_TAG_MOUNT_POINT
    monkeypatch.setattr(os, "lstat", lstat)
    assert _paths(root) == ["a.py"]
    as_on_windows()
    with pytest.raises(OSError):
        read_source(root, "elsewhere/secret.py")


def test_utf16_files_with_a_byte_order_mark_are_read_as_text(make_repo):
    """Visual Studio saves C and C++ sources as UTF-16 with a byte-order mark, and editors open them as text: such a
    file was left out as binary (its ASCII characters' zero bytes), and `--file` refused it as "binary"."""
    source = "#include <stdio.h>\r\n\r\nint add_caf\u00e9(int a, int b) { return a + b; }\r\n"
    root = make_repo({
        "le.c": b"\xff\xfe" + source.encode("utf-16-le"),
        "be.c": b"\xfe\xff" + source.encode("utf-16-be"),
        "plain.c": source.encode("utf-8"),
        "utf32.c": source.encode("utf-32"),        # a UTF-32 byte-order mark begins as UTF-16's: still binary
        "no_mark.c": source.encode("utf-16-le"),   # no mark: no way to tell it from binary data, as git decides
        "nul.c": b"\xff\xfe" + "int x;\0".encode("utf-16-le"),     # UTF-16 text with a NUL character: binary
    })
    expected = source.replace("\r\n", "\n")
    assert read_source(root, "le.c") == read_source(root, "be.c") == read_source(root, "plain.c") == expected
    for binary in ("utf32.c", "no_mark.c", "nul.c"):
        assert read_source(root, binary) is None, binary


def test_counting_the_ignored_files_warns_of_nothing_the_index_told(make_repo, monkeypatch):
    """`nothing_to_index` counts the ignored files with two more walks; their warnings repeated the index's, and in
    `serve`'s log (no filter catching them) came out raw: `<frozen os>:361: ScanWarning: skipped secret: ...`."""
    from prompts.scan import count_ignored

    root = make_repo({"secret/a.py": "a = 1\n", ".gitignore": "b.py\n", "b.py": "b = 1\n"})
    deny_folder(monkeypatch, "secret")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert count_ignored(root) == 1
    assert [str(w.message) for w in caught] == []
