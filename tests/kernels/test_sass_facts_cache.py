"""`kernels.compile_check.sass_facts` keeps what it read from a cubin's SASS beside Triton's cache, keyed by the cubin's
bytes: a warm compile check (and every test that reads SASS facts) then skips the disassembler, which was ~85% of its
time. The facts read back are the tools' own; other bytes, another option or a damaged file go to the tools again."""

import json
import os
import subprocess
import sys

import pytest

from kernels import compile_check


@pytest.fixture
def disassembled(monkeypatch, tmp_path):
    """The cache in a fresh folder, and the tools replaced by a counter: the (cubin, with_opcodes) pairs they read."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    calls = []

    def tools(cubin, with_opcodes):
        calls.append((cubin, with_opcodes))
        facts = {"registers": len(cubin), "local_bytes": 0, "loop_instructions": [len(calls)]}
        return facts | ({"loop_opcodes": {"HMMA.16816.F32.BF16": 4, "BAR.SYNC": 1}} if with_opcodes else {})
    monkeypatch.setattr(compile_check, "_disassembled_facts", tools)
    return calls


def test_a_cubin_seen_before_is_not_disassembled_again(disassembled):
    first = compile_check.sass_facts(b"\x7fELF one kernel", with_opcodes=True)
    assert compile_check.sass_facts(b"\x7fELF one kernel", with_opcodes=True) == first
    assert disassembled == [(b"\x7fELF one kernel", True)]
    assert list(first["loop_opcodes"]) == ["HMMA.16816.F32.BF16", "BAR.SYNC"]      # the histogram's order kept


def test_other_bytes_or_another_option_go_to_the_tools(disassembled):
    compile_check.sass_facts(b"kernel a")
    compile_check.sass_facts(b"kernel b")
    compile_check.sass_facts(b"kernel a", with_opcodes=True)
    compile_check.sass_facts(b"kernel a")
    assert disassembled == [(b"kernel a", False), (b"kernel b", False), (b"kernel a", True)]


def test_a_damaged_entry_is_read_again_and_replaced(disassembled):
    facts = compile_check.sass_facts(b"kernel")
    path = compile_check._facts_path(b"kernel", False)
    path.write_text('{"registers": 12', encoding="utf-8")    # cut short, as by a process killed mid-write
    assert compile_check.sass_facts(b"kernel") == facts | {"loop_instructions": [2]}
    assert len(disassembled) == 2 and json.loads(path.read_text(encoding="utf-8"))["loop_instructions"] == [2]


def test_a_cache_that_cannot_be_written_still_gives_the_facts(disassembled, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("", encoding="utf-8")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "file" / "below a file"))
    assert compile_check.sass_facts(b"kernel")["registers"] == len(b"kernel")
    assert compile_check.sass_facts(b"kernel")["registers"] == len(b"kernel")
    assert len(disassembled) == 2


def test_the_key_is_the_tools_bytes_not_where_they_are_installed(monkeypatch, tmp_path):
    """CI installs Triton into a fresh virtual environment a run: with the tools' path in the key, no run found the
    facts the last one kept (every kernel disassembled again). The same tools elsewhere give the same key; a tool
    with other bytes (another build) gives another."""
    def key_with_tools(folder, nvdisasm):
        folder.mkdir()
        (folder / "cuobjdump").write_bytes(b"cuobjdump 12.8")
        (folder / "nvdisasm").write_bytes(nvdisasm)
        monkeypatch.setattr(compile_check, "_nvidia_tool", lambda name: folder / name)
        compile_check._facts_version.cache_clear()
        return compile_check._facts_path(b"kernel", True)
    try:
        first = key_with_tools(tmp_path / "venv1", b"nvdisasm 12.8")
        assert key_with_tools(tmp_path / "venv2", b"nvdisasm 12.8") == first
        assert key_with_tools(tmp_path / "venv3", b"nvdisasm 12.9") != first
    finally:
        compile_check._facts_version.cache_clear()     # (the real tools' key for the tests after)


def test_the_facts_kept_are_the_tools_facts_of_a_real_sm90_cubin(tmp_path):
    """A kernel built for sm_90 (in a process without TRITON_INTERPRET): the facts a cold cache reads from the tools,
    those a warm one reads back, and the tools' own output agree, loop histogram included."""
    program = """
import json, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from kernels import compile_check

@triton.jit
def doubled(X, n, BLOCK: tl.constexpr):
    for start in range(0, n, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        tl.store(X + offsets, tl.load(X + offsets) * 2.0)

cubin = compile_check._compile(doubled, {"X": "*fp32"}, {"BLOCK": 256}, GPUTarget("cuda", 90, 32), 4, 2).asm["cubin"]
cold = compile_check.sass_facts(cubin, with_opcodes=True)
warm = compile_check.sass_facts(cubin, with_opcodes=True)
print(json.dumps([cold, warm, compile_check._disassembled_facts(cubin, True),
                  compile_check._facts_path(cubin, True).is_file()]))
"""
    script = tmp_path / "doubled.py"             # (Triton reads a jitted function's source from its file)
    script.write_text(program, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_CACHE_DIR": str(tmp_path / "c")}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    cold, warm, tools, kept = json.loads(run.stdout.splitlines()[-1])
    assert cold == warm == tools and kept
    assert cold["registers"] > 0 and cold["loop_instructions"][0] > 0 and cold["loop_opcodes"]
