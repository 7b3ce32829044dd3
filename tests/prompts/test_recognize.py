"""An editor's unnamed text (llama.vim's and llama.vscode's /infill name no file) recognized as the repository's
file it is a version of (prompts/recognize.py), edits unsaved and only the lines around the cursor sent; a text no
file holds enough of stays untitled."""
import random

import pytest

from prompts import index_repository
import prompts.recognize as recognize_module
from prompts.recognize import MIN_LINES, recognize


def module(name: str, count: int) -> str:
    return "\n\n".join(f"def {name}_{k}(value, scale):\n    {name}_total = value * {k} + scale\n"
                       f"    return {name}_total - {k} * scale\n" for k in range(count)) + "\n"


ENGINE = module("engine", 60)
HELPERS = module("helper", 30)


@pytest.fixture
def index(make_repo):
    return index_repository(make_repo({"pkg/engine.py": ENGINE, "pkg/helpers.py": HELPERS,
                                       "pkg/partial.py": ENGINE[:len(ENGINE) // 3],   # a copy of engine's start
                                       "README.md": "# pkg\n\nSome words about the package.\n"}))


def test_the_lines_around_a_cursor_name_their_file(index):
    rows = ENGINE.split("\n")
    assert recognize(index, "\n".join(rows[100:180])) == "pkg/engine.py"
    assert recognize(index, "\n".join(HELPERS.split("\n")[10:60])) == "pkg/helpers.py"


def test_unsaved_edits_still_name_the_file(index):
    """Every third line rewritten, a function typed in, the cursor's line half typed: most lines are the disk's."""
    rng = random.Random(0)
    rows = ENGINE.split("\n")[60:200]
    edited = [row + "  # changed" if i % 3 == 0 and row.strip() else row for i, row in enumerate(rows)]
    typed = [f"def typed_{i}(x):\n    return x * {rng.random()}" for i in range(6)]
    assert recognize(index, "\n".join(edited[:70] + typed + ["    engine_total = va"] + edited[70:])) == "pkg/engine.py"


def test_the_file_holding_more_of_the_text_wins_over_a_partial_copy(index):
    """pkg/partial.py holds engine.py's first third: the text from its end lies in engine.py alone, and the text
    from its start in both, where engine.py is named no less (the copy holds no more of it)."""
    rows = ENGINE.split("\n")
    assert recognize(index, "\n".join(rows[-90:])) == "pkg/engine.py"
    assert recognize(index, "\n".join(rows[:60])) in ("pkg/engine.py", "pkg/partial.py")


def test_a_text_no_file_holds_stays_untitled_and_new_code_below_a_file_s_lines_is_that_file(index):
    new = "\n".join(f"    result_{k} = transform(result_{k - 1}, weight={k})" for k in range(1, 80))
    assert recognize(index, new) is None
    # new code typed below the file's saved lines: its new names are in no chunk, so the saved lines tell the file
    rows = ENGINE.split("\n")[-40:]
    assert recognize(index, "\n".join(rows + new.split("\n"))) == "pkg/engine.py"


def test_too_little_text_names_no_file(index):
    """A few telling lines (a short buffer, or one of blank lines and braces) could be anyone's. Here a function's
    `def` line is its only telling one: its other lines name what every function of the file names."""
    rows = ENGINE.split("\n")
    telling = [n for n, row in enumerate(rows) if row.startswith("def ")]
    assert recognize(index, "\n".join(rows[telling[-MIN_LINES + 1]:])) is None
    assert recognize(index, "\n".join(rows[telling[-MIN_LINES]:])) == "pkg/engine.py"
    assert recognize(index, "}\n\n  }\nelse:\n" * 40) is None


def test_a_new_file_that_begins_as_its_neighbours_do_is_none_of_them(make_repo):
    """A licence header and common imports are in many files: a new test file with them and three lines of its own
    is not the module it imports (which the header and imports alone would have made it)."""
    header = "".join(f"# Copyright 2026 The Example Authors, line {i} of the licence text\n" for i in range(14))
    imports = "import os\nimport sys\nfrom collections import defaultdict, OrderedDict\nfrom typing import Optional\n"
    files = {"foo.py": header + imports + "\n\ndef frobnicate_widgets(items):\n    return [item for item in items]\n"}
    files.update({f"other{k}.py": header + imports + f"\n\ndef other_{k}(x):\n    return x + {k}\n" for k in range(5)})
    index = index_repository(make_repo(files))
    new = (header + imports + "from foo import frobnicate_widgets\n\n\ndef test_frobnicate_widgets():\n"
           "    assert frobnicate_widgets([0, 1]) == [0, 1]\n")
    assert recognize(index, new) is None
    assert recognize(index, files["foo.py"]) is None          # (foo.py itself: too few telling lines to say so)


def _unremembered(index, text):
    """recognize with nothing remembered from earlier calls."""
    recognize_module._memo = None
    recognize_module._lines.clear()
    return recognize(index, text)


def test_an_editor_s_next_texts_are_named_as_with_nothing_remembered(index, make_repo):
    """recognize remembers lines, rare names, candidates and files' lines between calls (an editor asks at every few
    keystrokes): texts typed through, lines deleted, another file's text, then the same repository indexed again
    with engine.py renamed (a new index object) are each named as a first call would name them."""
    rng = random.Random(1)
    rows = ENGINE.split("\n")
    texts = ["\n".join(rows[100:180])]
    for _ in range(30):
        lines = texts[-1].split("\n")
        at = rng.randrange(len(lines))
        if rng.random() < 0.5:
            lines[at] += rng.choice(["x", " = engine_7(value, scale)", "_total", "\n    return helper_3(1, 2)"])
        else:
            del lines[at:at + rng.randrange(1, 30)]
        texts.append("\n".join(lines))
    texts += ["\n".join(HELPERS.split("\n")[10:60]), "\n".join(rows[-90:])]
    renamed = index_repository(make_repo({"pkg/motor.py": ENGINE, "pkg/helpers.py": HELPERS}, name="renamed"))
    expected = [(_unremembered(index, text), _unremembered(renamed, text)) for text in texts]
    assert {named for pair in expected for named in pair} >= {"pkg/engine.py", "pkg/motor.py", "pkg/helpers.py",
                                                              None}
    recognize_module._memo = None
    assert [(recognize(index, text), recognize(renamed, text)) for text in texts] == expected


def test_what_recognize_remembers_stays_bounded_whatever_the_texts(index):
    """A client may send any text: lines and names past _LONGEST_KEPT characters are not remembered, and no more
    than _LINES_KEPT lines and _NAMES_KEPT names are (a few MB at most, where 65,536 distinct 60 KB lines, the
    longest a request names its file by, would have kept 4 GB)."""
    recognize_module._memo = None
    recognize_module._lines.clear()
    long_line = "engine_total = " + "x" * 100_000
    for k in range(20):
        assert recognize(index, f"{long_line}{k}\n" * 3) is None
    assert not recognize_module._lines and all(len(name) <= recognize_module._LONGEST_KEPT
                                               for name in recognize_module._memo._rare)
    for k in range(max(recognize_module._LINES_KEPT // 100, recognize_module._NAMES_KEPT // 200) + 5):
        recognize(index, "\n".join(f"value_{k}_{j} = scale_{k}_{j}" for j in range(100)))
    assert 0 < len(recognize_module._lines) <= recognize_module._LINES_KEPT
    assert len(recognize_module._memo._rare) <= recognize_module._NAMES_KEPT
    assert recognize(index, "\n".join(ENGINE.split("\n")[100:180])) == "pkg/engine.py"


def test_the_files_lines_recognize_remembers_stay_bounded_however_many_and_large(make_repo):
    """Texts of many files, two of them as large as a file is indexed (scan.MAX_FILE_BYTES) and one under a path
    past _LONGEST_KEPT characters, each named in turn: recognize keeps the lines of at most _FILES_KEPT files, by
    the rule every memo of it keeps (`_remember`): no key past _LONGEST_KEPT characters, forgotten all at once when
    full. What it holds stays under _FILES_KEPT indexed files' text, however many files a client's texts name."""
    from prompts.scan import MAX_FILE_BYTES

    deep = "/".join(["folder" * 30] * 3) + "/deep.py"
    files = {f"pkg/m{k}.py": module(f"m{k}", 40) for k in range(3 * recognize_module._FILES_KEPT)}
    files |= {f"pkg/big{k}.py": module(f"big{k}", 60) * (MAX_FILE_BYTES // len(module(f"big{k}", 60))) for k in
              range(2)}
    files[deep] = module("deep", 40)
    index = index_repository(make_repo(files))
    assert {f"pkg/big{k}.py" for k in range(2)} <= set(index.entries) and len(deep) > recognize_module._LONGEST_KEPT
    recognize_module._memo = None
    for path, text in files.items():
        rows = text.split("\n")
        assert recognize(index, "\n".join(rows[-60:])) == path
        held = recognize_module._memo._file_lines
        assert len(held) <= recognize_module._FILES_KEPT and deep not in held
        assert sum(map(len, (line for lines in held.values() for line in lines))) <= len(held) * MAX_FILE_BYTES


def test_a_file_and_its_copy_are_told_apart_alike_in_every_process(make_repo):
    """A text both a file and its vendored copy hold names the same one of them in every process: the candidates
    tied in votes were in the order of a set of names, so which copy a text was named by followed the process's
    string hashes (PYTHONHASHSEED; seen failing: pkg/engine.py in some, vendor/pkg/engine.py in others), and a
    server restarted, or the command line beside it, named the other file and prompted with its name."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = make_repo({"pkg/engine.py": ENGINE, "vendor/pkg/engine.py": ENGINE, "pkg/helpers.py": HELPERS})
    index_repository(root)          # (the cache each process loads)
    text = "\n".join(ENGINE.split("\n")[100:180])
    script = ("import sys; from prompts import index_repository; from prompts.recognize import recognize; "
              "print(recognize(index_repository(sys.argv[1]), sys.stdin.read()))")
    named = set()
    for seed in range(6):
        env = {**os.environ, "PYTHONHASHSEED": str(seed),
               "PYTHONPATH": str(Path(recognize_module.__file__).parents[1])}
        named.add(subprocess.run([sys.executable, "-c", script, str(root)], input=text, env=env, text=True,
                                 capture_output=True, check=True).stdout.strip())
    assert named == {"pkg/engine.py"}
