"""Broken checkpoints and caches: a one-line ModelError naming the file and key, caches that heal, no leftovers."""

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from models import GenerationConfig, ModelError, ModelNotFoundError, load_model
from models.config import ModelConfig
from models.loading import gguf as gguf_loading

from tiny_models import load_error, write_tiny_gguf

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 300, "max_position_embeddings": 128}


@pytest.mark.parametrize("change, key", [
    ({"rope_scaling": {"type": "linear"}}, "factor"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
    ({"rope_scaling": "linear"}, "rope_scaling"),
    ({"hidden_size": "big"}, "hidden_size"),
    ({"hidden_size": 64.5}, "hidden_size"),
    ({"num_attention_heads": 0}, "num_attention_heads"),
    ({"num_hidden_layers": 10 ** 9}, "num_hidden_layers"),
    ({"num_key_value_heads": -2}, "num_key_value_heads"),
    ({"vocab_size": True}, "vocab_size"),
    ({"rms_norm_eps": "tiny"}, "rms_norm_eps"),
    ({"rope_theta": 0}, "rope_theta"),
    ({"max_position_embeddings": None, "rope_scaling": {"rope_type": "dynamic", "factor": -1}}, "factor"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
    ({"eos_token_id": ["2"]}, "eos_token_id"),
    ({"hidden_size": 66}, "hidden size 66"),
    ({"head_dim": 15}, "head dimension 15"),
    ({"architectures": 7, "model_type": "llama", "num_key_value_heads": 3}, "key/value heads"),
])
def test_bad_config_values_are_one_line_errors_naming_the_file_and_key(change, key):
    with pytest.raises(ModelError) as error:
        ModelConfig.from_hf({**LLAMA, **change}, "/ckpt/config.json")
    message = str(error.value)
    assert message.startswith("/ckpt/config.json: ") and key in message and "\n" not in message


@pytest.mark.parametrize("dtype", ["int8", "bool", "float8_e4m3fn"])
def test_weights_that_are_not_floats_are_refused(tmp_path, tiny_checkpoint, dtype):
    """A quantized or mistyped tensor of the right shape would otherwise be copied as numbers: nonsense, no error."""
    import torch
    from safetensors.torch import load_file, save_file
    directory = tmp_path / dtype
    shutil.copytree(tiny_checkpoint[0], directory)
    for file in directory.glob("*.safetensors"):
        tensors = load_file(file)
        save_file({name: t.to(getattr(torch, dtype)) for name, t in tensors.items()}, file)
    assert f"is {dtype}" in load_error(directory, ModelError, "weights load from float16")


def test_a_config_that_is_not_an_object_is_refused():
    with pytest.raises(ModelError, match="not a config object"):
        ModelConfig.from_hf([1, 2], "/ckpt/config.json")


def test_a_checkpoint_with_zero_heads_fails_before_torch_can_warn(tmp_path, tiny_checkpoint):
    directory = tmp_path / "zero-heads"
    shutil.copytree(tiny_checkpoint[0], directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "num_attention_heads": 0}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning on the way would fail the test here
        assert "num_attention_heads" in load_error(directory, ModelError, "config.json")


def test_special_files_in_a_checkpoint_are_refused_not_read(tmp_path, tiny_checkpoint):
    directory = tmp_path / "fifo"
    shutil.copytree(tiny_checkpoint[0], directory)
    os.mkfifo(directory / "special_tokens_map.json")  # transformers would open it and wait forever
    load_error(directory, ModelError, "not a regular file")
    os.mkfifo(tmp_path / "model.gguf")
    load_error(tmp_path / "model.gguf", ModelNotFoundError, "not a regular file or folder")


def test_a_checkpoint_folder_that_cannot_be_searched_is_a_model_error(tmp_path, tiny_checkpoint, monkeypatch):
    """A checkpoint folder of another user (mode 700) or of mode 000: the command line's up-front check of the spec
    said "internal error: PermissionError: ... config.json" (Path.exists raises what is not a missing file)."""
    from models.loading import check_local

    directory = tmp_path / "locked"
    shutil.copytree(tiny_checkpoint[0], directory)
    real_stat = Path.stat

    def stat(self, *args, **kwargs):        # (tests run as root, for whom chmod 000 changes nothing)
        if self.parent == directory:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)
    monkeypatch.setattr(Path, "stat", stat)
    with pytest.raises(ModelError, match=r"locked: cannot read it \(Permission denied\)$"):
        check_local(str(directory))


def test_weights_that_cannot_be_read_are_said_to_be_so(tmp_path, tiny_checkpoint, monkeypatch):
    """A mode-000 model.safetensors was "unreadable safetensors file (No such file or directory: ...)": safetensors
    reports every failure to open as a missing file; the message now says what the system says."""
    directory = tmp_path / "locked_weights"
    shutil.copytree(tiny_checkpoint[0], directory)
    weights = directory / "model.safetensors"
    assert weights.is_file()
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):    # (tests run as root, for whom chmod 000 changes nothing)
        if os.fspath(path) == str(weights):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)
    import safetensors

    def safe_open(path, *args, **kwargs):                # what safetensors raises for it
        raise FileNotFoundError(f"No such file or directory: {path}")
    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(safetensors, "safe_open", safe_open)
    load_error(directory, ModelError, r"model.safetensors: cannot read it \(Permission denied\)$")


def _converted(path):
    import torch
    return gguf_loading.converted_dir(path, torch.float32)


@pytest.mark.parametrize("damage", ["no config.json", "truncated weights", "config not JSON", "empty folder",
                                    "truncated tokenizer", "link to a copy", "a file in its place",
                                    "unreadable tokenizer", "a file in the gguf folder's place"])
def test_a_damaged_converted_copy_is_converted_again(tmp_path, damage, monkeypatch):
    """A converted copy that cannot be loaded as it is gets converted again in its place. A file in the folder's place
    (another program's, a `mv` by hand) was converted at every load, then refused: "cannot write the converted model
    into .../gguf: Not a directory", the embedded model's 10 s conversion each time for nothing; a file in place of
    the `gguf` folder itself the same, with "File exists". A mode-000 tokenizer.json was refused at every load
    ("cannot load the tokenizer (PermissionError ...)"): its size was right, so the copy passed as complete."""
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    load_model(path, device="cpu", max_context=32)
    out = _converted(path)
    if damage == "unreadable tokenizer":
        (out / "tokenizer.json").chmod(0)
        real_open = open

        def permission_checked_open(file, *args, **kwargs):     # chmod 000 as it bites a user (tests run as root)
            if isinstance(file, (str, os.PathLike)) and os.path.exists(file) and not os.stat(file).st_mode & 0o400:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)
        monkeypatch.setattr("builtins.open", permission_checked_open)
    elif damage == "a file in the gguf folder's place":
        shutil.rmtree(out.parent)
        out.parent.write_text("not the cache's folder")
    elif damage == "truncated tokenizer":     # was refused at every load: "cannot load the tokenizer"
        tokenizer = out / "tokenizer.json"
        tokenizer.write_bytes(tokenizer.read_bytes()[:100])
    elif damage == "link to a copy":        # not a folder the cache wrote: never read through
        shutil.move(out, tmp_path / "elsewhere")
        out.symlink_to(tmp_path / "elsewhere")
    elif damage == "no config.json":
        (out / "config.json").unlink()
    elif damage == "truncated weights":
        weights = out / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "config not JSON":
        (out / "config.json").write_text("{")
    elif damage == "a file in its place":
        shutil.rmtree(out)
        out.write_text("not a conversion")
    else:
        shutil.rmtree(out)
        out.mkdir()
    engine = load_model(path, device="cpu", max_context=32)
    assert engine.tokenizer is not None and gguf_loading.is_complete(out) and not out.is_symlink()
    assert not [p for p in out.parent.iterdir() if ".tmp" in p.name]  # no temporary folder left behind
    assert os.stat(out / "tokenizer.json").st_mode & 0o400     # (the unreadable one was replaced, not kept)


def test_a_conversion_killed_midway_leaves_nothing_the_next_one_keeps(tmp_path, monkeypatch):
    """SIGKILL skips every `finally`: the next conversion of that file removes the dead one's temporary folder
    (it was left for good, as large as the converted weights)."""
    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    out = _converted(path)
    killed = out.with_name(f"{out.name}.tmp999999")
    killed.mkdir(parents=True)
    (killed / "model.safetensors").write_bytes(b"half")
    load_model(path, device="cpu", max_context=32)
    assert gguf_loading.is_complete(out) and not [p for p in out.parent.iterdir() if ".tmp" in p.name]


ROOT = Path(__file__).resolve().parents[2]
# Converts argv[1] in another process, which, once the weights are written, is killed outright (argv[2] "killed":
# SIGKILL, the OOM killer) or waits, its conversion under way, for the file argv[3] to appear ("paused").
CONVERTING = """
import os, signal, sys, time
from pathlib import Path
import safetensors.torch, torch
from models.loading import gguf

path, how, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
write = safetensors.torch.save_file

def writing(tensors, file, *args, **kwargs):
    write(tensors, file, *args, **kwargs)
    if how == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    print("written", flush=True)
    while not go.exists():
        time.sleep(0.05)

safetensors.torch.save_file = writing
gguf.gguf_checkpoint(path, torch.float32)
"""


def _converting(path, how, go):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", CONVERTING, str(path), how, str(go)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_conversion_killed_outright_is_removed_by_the_next_load_of_any_model(tmp_path, monkeypatch):
    """A conversion killed by SIGKILL left its temporary folder, as large as the weights, until that very file was
    converted again, which may never come (the next start loads another model, or the file moved): each load now
    removes the temporary folders of conversions whose lock nobody holds, and never one that another process is
    writing, which then lands whole."""
    import torch

    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "cache"))
    killed, paused, loaded = (tmp_path / f"{name}.gguf" for name in ("killed", "paused", "loaded"))
    for seed, path in enumerate((killed, paused, loaded)):
        write_tiny_gguf(path, seed=seed)
    gguf_loading.gguf_checkpoint(loaded, torch.float32)
    go = tmp_path / "go"
    writing = _converting(paused, "paused", go)
    try:
        assert writing.stdout.readline() == "written\n", writing.stderr.read()
        dead = _converting(killed, "killed", go)
        assert dead.wait(120) == -signal.SIGKILL, dead.stderr.read()
        temporary = {p.name.split(".tmp")[0] for p in (tmp_path / "cache" / "gguf").glob("*.tmp*")}
        assert temporary == {_converted(killed).name, _converted(paused).name}
        assert gguf_loading.gguf_checkpoint(loaded, torch.float32) == _converted(loaded)   # (converted: a plain load)
        temporary = {p.name.split(".tmp")[0] for p in (tmp_path / "cache" / "gguf").glob("*.tmp*")}
        assert temporary == {_converted(paused).name}
        go.touch()
        assert writing.wait(120) == 0, writing.stderr.read()
    finally:
        go.touch()
        writing.kill()
        writing.wait()
    assert gguf_loading.is_complete(_converted(paused)) and not list((tmp_path / "cache" / "gguf").glob("*.tmp*"))


def _converted_aside(tmp_path, monkeypatch):
    """A tiny GGUF converted once, its conversion moved aside as a first process's copy in the making:
    (path, out, where the copy waits)."""
    import torch

    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    out = gguf_loading.gguf_checkpoint(path, torch.float32)
    shutil.move(out, tmp_path / "done")
    return path, out, tmp_path / "done"


def _a_load_waiting(path):
    """A load of `path` started in a thread, once it says it waits for another process: (thread, messages, result)."""
    import threading
    import time

    import torch

    messages, result = [], []
    waiter = threading.Thread(target=lambda: result.append(
        gguf_loading.gguf_checkpoint(path, torch.float32, progress=messages.append)))
    waiter.start()
    deadline = time.monotonic() + 60
    while not any("Waiting for another process" in m for m in messages) and time.monotonic() < deadline:
        time.sleep(0.05)
    return waiter, messages, result


def _second_process_waits(path, out, done, monkeypatch, fcntl):
    """While the lock is held (the first process converting), a second load waits, converts nothing, and takes
    the first one's copy when it lands. `fcntl`: the module, imported before a test hides it."""
    monkeypatch.setattr(gguf_loading, "to_torch", lambda *a: pytest.fail("converted again alongside the first"))
    # Nor is the file parsed (seconds for a real model) only to find the first one's copy after the wait.
    monkeypatch.setattr(gguf_loading, "open_gguf", lambda *a: pytest.fail("parsed the GGUF while another converts"))
    with open(out.with_name(f"{out.name}.lock"), "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)    # the first process, converting
        waiter, messages, result = _a_load_waiting(path)
        assert waiter.is_alive() and not result
        shutil.move(done, out)              # the first one's copy lands
    waiter.join(60)
    assert result == [out] and not any(m.startswith("Converting") for m in messages)


def test_a_second_process_waits_for_the_first_conversion_instead_of_converting_too(tmp_path, monkeypatch):
    import fcntl

    path, out, done = _converted_aside(tmp_path, monkeypatch)
    _second_process_waits(path, out, done, monkeypatch, fcntl)
    # Only its owner may open the lock: flock takes a read handle, and another user's could hold it forever.
    assert os.stat(out.with_name(f"{out.name}.lock")).st_mode & 0o077 == 0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="a process's state is read from /proc (Linux)")
def test_a_waiting_load_names_the_process_it_waits_for_and_says_when_that_one_is_stopped(tmp_path, monkeypatch):
    """A first conversion suspended with Ctrl-Z holds its lock: every later load (a server an editor starts)
    waited at "Waiting for another process converting ..." with nothing to say which process, or that it was
    stopped."""
    import time

    path, out, done = _converted_aside(tmp_path, monkeypatch)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from models.loading import gguf\n"
         f"with gguf._conversion_lock(Path({str(out)!r}), Path({str(path)!r})):\n"
         "    print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        os.kill(holder.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 30                # (a signal is delivered, and the process stopped, later)
        while Path(f"/proc/{holder.pid}/stat").read_text().rpartition(")")[2].split()[0] != "T":
            assert time.monotonic() < deadline, "the holder never stopped"
            time.sleep(0.01)
        waiter, messages, result = _a_load_waiting(path)
        waiting = [m for m in messages if "Waiting for another process" in m]
        assert waiting == [f"Waiting for another process converting {path.name} (process {holder.pid}, which is "
                           f"stopped: `kill -CONT {holder.pid}` lets it go on)"]
        shutil.move(done, out)              # the first one's copy lands
        os.kill(holder.pid, signal.SIGCONT)
        holder.stdin.close()
        waiter.join(60)
        assert result == [out]
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.wait()


def test_on_windows_a_second_process_waits_for_the_first_conversion_too(tmp_path, monkeypatch):
    """Windows has no fcntl: both processes converted the same file side by side (and one could remove the other's
    fresh copy as damaged). msvcrt's byte lock is its flock; a stand-in plays msvcrt here, on flock."""
    import fcntl
    import sys
    import types

    def locking(descriptor, mode, _count):
        if mode == msvcrt.LK_UNLCK:
            return fcntl.flock(descriptor, fcntl.LOCK_UN)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (fcntl.LOCK_NB if mode == msvcrt.LK_NBLCK else 0))
        except BlockingIOError:
            raise PermissionError(13, "Permission denied") from None
    msvcrt = types.SimpleNamespace(LK_UNLCK=0, LK_LOCK=1, LK_NBLCK=2, locking=locking)
    path, out, done = _converted_aside(tmp_path, monkeypatch)
    monkeypatch.setitem(sys.modules, "fcntl", None)         # import fcntl: ImportError, as on Windows
    monkeypatch.setitem(sys.modules, "msvcrt", msvcrt)
    _second_process_waits(path, out, done, monkeypatch, fcntl)


def test_a_cache_on_a_file_system_without_locks_still_converts(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fcntl, "flock", no_locks)
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    out = _converted(path)
    other = out.with_name(f"{out.name}.tmp999999")     # unlocked, it may be another process's conversion
    other.mkdir(parents=True)
    load_model(path, device="cpu", max_context=32)
    assert gguf_loading.is_complete(out) and other.is_dir()


def test_new_content_under_the_same_path_size_and_mtime_is_converted_anew(tmp_path):
    """`cp -p`, `touch -r` or a tar extracted over the file keep its size and mtime: the old conversion must not
    be found for the new weights."""
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, seed=0)
    before = os.stat(path)
    load_model(path, device="cpu", max_context=32)
    reference = write_tiny_gguf(path, seed=1)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    engine = load_model(path, device="cpu", max_context=32)
    import torch
    ids = torch.tensor([[5, 70, 80, 90]])
    with torch.no_grad():
        torch.testing.assert_close(engine.model.prefill(ids, all_logits=True), reference(ids).logits,
                                   atol=1e-4, rtol=1e-4)


def test_a_changed_file_is_converted_again_in_place_of_its_old_copy(tmp_path, monkeypatch):
    """A new mtime (or cache format) reconverts into the same folder: the old copy, as large as the weights, was
    left behind under a key no lookup made again. Copies older versions keyed that way go too."""
    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    load_model(path, device="cpu", max_context=32)
    out = _converted(path)
    legacy = out.with_name("tiny-0123456789abcdef")
    shutil.copytree(out, legacy)
    (legacy / "source.json").unlink()
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10 ** 9))
    stale = json.loads((out / "source.json").read_text())["source"]
    load_model(path, device="cpu", max_context=32)
    assert json.loads((out / "source.json").read_text())["source"] != stale
    assert [p.name for p in out.parent.iterdir() if p.is_dir()] == [out.name]


def test_the_same_gguf_under_another_name_shares_one_conversion(tmp_path, monkeypatch):
    """A copy or a hard link of a converted GGUF (the embedded model in a second environment) was dequantized and
    stored again in full; now its folder links to the first one's files. Other bytes of the same size convert."""
    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "cache"))
    first = tmp_path / "a" / "tiny.gguf"
    first.parent.mkdir()
    write_tiny_gguf(first)
    expected = load_model(first, device="cpu", max_context=32).generate([5, 70, 80], GenerationConfig(max_new_tokens=4))
    converted = []
    real_to_torch = gguf_loading.to_torch
    monkeypatch.setattr(gguf_loading, "to_torch", lambda *a: converted.append(a) or real_to_torch(*a))
    copy, link = tmp_path / "b" / "tiny.gguf", tmp_path / "c" / "tiny.gguf"
    copy.parent.mkdir()
    link.parent.mkdir()
    shutil.copy(first, copy)
    os.link(first, link)
    # Found by its bytes before it is parsed: a copy of the 98 MB embedded model was parsed again (2.5 s) first.
    real_open = gguf_loading.open_gguf
    monkeypatch.setattr(gguf_loading, "open_gguf", lambda path: pytest.fail(f"{path} was parsed"))
    for path in (copy, link):
        engine = load_model(path, device="cpu", max_context=32)
        assert engine.generate([5, 70, 80], GenerationConfig(max_new_tokens=4)).token_ids == expected.token_ids
        assert os.stat(_converted(path) / "model.safetensors").st_ino == \
            os.stat(_converted(first) / "model.safetensors").st_ino
    assert not converted
    monkeypatch.setattr(gguf_loading, "open_gguf", real_open)
    other = tmp_path / "d" / "tiny.gguf"
    other.parent.mkdir()
    write_tiny_gguf(other, seed=1)
    assert other.stat().st_size == first.stat().st_size
    load_model(other, device="cpu", max_context=32)
    assert converted and os.stat(_converted(other) / "model.safetensors").st_ino != \
        os.stat(_converted(first) / "model.safetensors").st_ino
    done = len(converted)
    load_model(first, device="cpu", max_context=32)     # the link moved its ctime: its copy is found again, shared
    assert len(converted) == done


def test_a_copy_whose_shared_conversion_went_meanwhile_is_parsed_and_converted(tmp_path, monkeypatch):
    """A copy matched a conversion by its bytes before the lock (so it was not parsed), and that conversion was gone
    by the time the links were made (removed, found damaged): the copy is parsed then, and converted."""
    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "cache"))
    first, copy = tmp_path / "a.gguf", tmp_path / "b.gguf"
    write_tiny_gguf(first)
    load_model(first, device="cpu", max_context=32)
    shutil.copy(first, copy)
    monkeypatch.setattr(gguf_loading, "_link_same_content", lambda tmp, out, content: None)
    load_model(copy, device="cpu", max_context=32)
    assert gguf_loading.is_complete(_converted(copy)) and os.stat(_converted(copy) / "model.safetensors").st_ino != \
        os.stat(_converted(first) / "model.safetensors").st_ino


@pytest.mark.parametrize("stem", ["m" * 245, "模型" * 40])
def test_a_gguf_with_a_long_file_name_converts(tmp_path, stem):
    """The name, the hash and ".tmp<pid>" passed the 255-byte limit of a file name: 'File name too long'."""
    path = tmp_path / f"{stem}.gguf"
    write_tiny_gguf(path)
    load_model(path, device="cpu", max_context=32)
    assert gguf_loading.is_complete(_converted(path))


@pytest.mark.parametrize("error", ["OSError", "SafetensorError"])
def test_a_failed_conversion_leaves_no_temporary_files_and_names_the_folder(tmp_path, monkeypatch, error):
    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "cache"))     # no conversion of these bytes to share
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)

    def disk_full(*args, **kwargs):
        if error == "OSError":
            raise OSError(28, "No space left on device")
        from safetensors import SafetensorError    # what safetensors really raises on a full disk
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    message = load_error(path, ModelError, "cannot write the converted model")
    assert "No space left on device" in message and "CODECOMPLETE_CACHE_DIR" in message
    assert not [p for p in _converted(path).parent.iterdir() if ".tmp" in p.name]


def test_a_cache_dir_that_is_a_file_is_a_model_error(tmp_path, monkeypatch):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    (tmp_path / "cache-file").write_text("not a folder")
    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "cache-file"))
    assert "cache-file" in load_error(path, ModelError, "cannot write the converted model")


@pytest.mark.parametrize("name, content, message", [
    ("model.safetensors.index.json", '["not", "an", "object"]', "not a JSON object"),
    ("model.safetensors.index.json", '{"weight_map": {"a": 7}}', "weight_map must map"),
    ("tokenizer_config.json", '"a string"', "not a JSON object"),
])
def test_side_files_of_the_wrong_shape_are_named(tmp_path, tiny_checkpoint, name, content, message):
    directory = tmp_path / "side"
    shutil.copytree(tiny_checkpoint[0], directory)
    if name.endswith(".index.json"):        # (read only without model.safetensors, as transformers reads it)
        (directory / "model.safetensors").unlink()
    (directory / name).write_text(content)
    assert name in load_error(directory, ModelError, message)


def test_generation_config_ids_that_are_not_ids_are_ignored(tmp_path, tiny_checkpoint):
    directory = tmp_path / "gen"
    shutil.copytree(tiny_checkpoint[0], directory)
    (directory / "generation_config.json").write_text('{"eos_token_id": ["2", null, true, 10000000000000000000000, 2]}')
    assert load_model(directory, device="cpu", max_context=32).eos_token_ids == [2]   # true is not token 1


def test_a_shard_index_cannot_send_the_loader_out_of_the_folder(tmp_path, tiny_checkpoint):
    """The index is data: `../x.safetensors` or an absolute path (/proc/self/environ) must not be opened."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], folder)
    (tmp_path / "outside.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (folder / "model.safetensors").unlink()     # (an index is read only without it, as transformers reads it)
    for shard in ("../outside.safetensors", "/proc/self/environ", "sub/../../outside.safetensors"):
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.norm.weight": shard}}))
        load_error(str(folder), ModelError, "is not a file of the checkpoint's folder")


@pytest.mark.parametrize("content", [[1, 2], {"model.norm.weight": 3}])
def test_a_bin_file_that_is_not_a_state_dict_is_named(tmp_path, tiny_checkpoint, content):
    import torch
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], folder)
    (folder / "model.safetensors").unlink()
    torch.save(content, folder / "pytorch_model.bin")
    load_error(str(folder), ModelError, "not a state dict of tensors")


def test_config_numbers_python_cannot_hold_or_that_overflow_are_one_line_errors(tmp_path, tiny_checkpoint):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], folder)
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(config.rstrip().rstrip("}") + ', "big": ' + "9" * 5000 + "}")
    load_error(str(folder), ModelError, "unreadable JSON")
    huge = ModelConfig.from_hf({**LLAMA, "rope_scaling": {"rope_type": "dynamic", "factor": 1e308}}, "c.json")
    assert 1 <= huge.context_limit <= 1 << 40          # it overflowed int() ("internal error")


def test_nan_weights_are_a_model_error_not_garbage(tmp_path, tiny_checkpoint):
    from safetensors.torch import load_file, save_file

    from models import GenerationConfig
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], folder)
    weights = load_file(folder / "model.safetensors")
    weights["model.norm.weight"][:] = float("nan")
    save_file(weights, folder / "model.safetensors")
    engine = load_model(str(folder), device="cpu")
    with pytest.raises(ModelError, match="not a number"):
        engine.generate([1, 5, 9], GenerationConfig(max_new_tokens=3))


@pytest.mark.parametrize("damage, message", [
    ("offset past the end", "lies outside the file's data section"),
    ("unaligned", "off its 32-byte alignment"),
    ("overlap", "overlap"),
])
def test_gguf_tensor_offsets_are_checked_before_conversion(tmp_path, damage, message):
    """The gguf reader takes each tensor's offset as written: checked here against the data section, the
    alignment and the other tensors before anything is read or converted."""
    import gguf
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    reader = gguf.GGUFReader(path)
    fields = sorted(reader.tensors, key=lambda t: t.data_offset)
    offset = {"offset past the end": (1 << 64) - 32, "unaligned": 3, "overlap": 0}[damage]   # (2**64 - 32 wrapped)
    raw = bytearray(path.read_bytes())
    target = fields[-1].field.parts[-1]                        # the last tensor's offset field (uint64)
    position = target.ctypes.data - reader.data.ctypes.data
    raw[position:position + 8] = offset.to_bytes(8, "little")
    path.write_bytes(bytes(raw))
    load_error(str(path), ModelError, message)


def test_a_gguf_whose_rotary_dimension_is_not_the_head_dim_is_refused():
    from models import UnsupportedModelError
    meta = {"general.architecture": "llama", "llama.embedding_length": 64, "llama.block_count": 2,
            "llama.attention.head_count": 4, "llama.feed_forward_length": 96, "llama.vocab_size": 300,
            "llama.rope.dimension_count": 8}
    with pytest.raises(UnsupportedModelError, match="rope.dimension_count 8 is not the head dim 16"):
        ModelConfig.from_gguf(meta, "m.gguf", tied=True)
    assert ModelConfig.from_gguf({**meta, "llama.rope.dimension_count": 16}, "m.gguf", tied=True).head_dim == 16


@pytest.mark.parametrize("keys, factor", [
    ({"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}, 4.0),
    ({"llama.rope.scaling.factor": 4.0}, 4.0),                  # no type: llama.cpp's default, linear
    ({"llama.rope.scale_linear": 2.0}, 2.0),                    # the older key (convert.py of 2023)
    ({"llama.rope.scaling.factor": 4.0, "llama.rope.scale_linear": 2.0}, 4.0),
    ({"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 4.0}, None),
    ({"llama.rope.scaling.type": "linear"}, None),              # no factor (or 0): llama.cpp's scale 1
    ({"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 0.0}, None),
    ({}, None),
])
def test_a_gguf_rope_scaling_is_read_as_llama_cpp_reads_it(keys, factor):
    """A linear factor without a type, or under the old key, was ignored: every position rotated `factor` times too
    fast for the weights (llama.cpp scales them), with no word of it."""
    from models.config import RopeScaling
    meta = {"general.architecture": "llama", "llama.embedding_length": 64, "llama.block_count": 2,
            "llama.attention.head_count": 4, "llama.feed_forward_length": 96, "llama.vocab_size": 300}
    config = ModelConfig.from_gguf({**meta, **keys}, "m.gguf", tied=True)
    assert config.rope_scaling == (factor and RopeScaling("linear", factor))


@pytest.mark.parametrize("how", ["every user may write it", "another user owns it"])
def test_a_conversion_folder_others_could_write_is_never_loaded(tmp_path, monkeypatch, how):
    """CODECOMPLETE_CACHE_DIR=/tmp/shared (1777) through the library, which skips the app's check of the cache
    root: whoever made /tmp/shared/gguf could plant the weights and tokenizer a lookup then loads."""
    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "shared"))
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    load_model(path, device="cpu", max_context=32)
    folder = _converted(path).parent
    if how == "every user may write it":
        folder.chmod(0o777)
        message = "can be written by every user"
    else:
        monkeypatch.setattr(os, "geteuid", lambda: os.stat(folder).st_uid + 1)
        message = "belongs to another user"
    assert str(folder) in load_error(path, ModelError, message)


def test_a_converted_copy_every_user_may_write_is_converted_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    old = os.umask(0)                   # what a container's shell often has: folders made 0777
    try:
        load_model(path, device="cpu", max_context=32)
    finally:
        os.umask(old)
    out = _converted(path)
    assert not out.stat().st_mode & 0o002 and not out.parent.stat().st_mode & 0o002
    out.chmod(0o777)
    (out / "planted").write_text("anyone could have replaced the weights")
    load_model(path, device="cpu", max_context=32)
    assert not (out / "planted").exists() and not out.stat().st_mode & 0o002


LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\noid sha256:" + "4d7a" * 16 + "\nsize 269060552\n")


@pytest.mark.parametrize("name, remove", [
    ("config.json", None), ("generation_config.json", None), ("tokenizer_config.json", None),
    ("tokenizer.json", None), ("tokenizer.model", "tokenizer.json"), ("model.safetensors", None),
    ("model.safetensors.index.json", "model.safetensors"), ("pytorch_model.bin", "model.safetensors"),
])
def test_a_git_lfs_pointer_in_place_of_a_checkpoint_file_is_said_to_be_one(tmp_path, tiny_checkpoint, name, remove):
    """A clone without git-lfs holds ~130-byte pointer files where the data should be: the error said only "unreadable
    JSON" or "header too large", which sends the user looking for a corrupt download rather than `git lfs pull`."""
    folder = tmp_path / "clone"
    shutil.copytree(tiny_checkpoint[0], folder)
    if remove:
        (folder / remove).unlink()
    (folder / name).write_text(LFS_POINTER)
    message = load_error(folder, ModelError, "Git LFS pointer")
    assert message.startswith(f"{folder / name}: ") and f"git lfs pull` in {folder}" in message
    assert "\n" not in message


def test_a_git_lfs_pointer_in_place_of_a_gguf_is_said_to_be_one(tmp_path):
    (tmp_path / "model.gguf").write_text(LFS_POINTER)
    message = load_error(tmp_path / "model.gguf", ModelError, "Git LFS pointer")
    assert message.startswith(f"{tmp_path / 'model.gguf'}: ") and f"git lfs pull` in {tmp_path}" in message


OLDER_POINTERS = [   # (the pointer's text, what it is said to be, what to run)
    ("version https://hawser.github.com/spec/v1\noid sha256:" + "4d7a" * 16 + "\nsize 12345\n",
     "a Git LFS pointer", "git lfs pull"),                      # Git LFS before its launch (git-lfs reads it)
    ("version http://git-media.io/v/2\noid sha256:" + "4d7a" * 16 + "\nsize 12345\n",
     "a Git LFS pointer", "git lfs pull"),                      # its alpha (git-lfs reads it too)
    ("[git-media]\nversion=http://git-media.io/v/2\noid=sha256:" + "4d7a" * 16 + "\nsize=12345\n",
     "a git-media pointer", "git media sync"),                  # the git-media spec's INI form
    ("# git-media\n" + "4d7a" * 10 + "\n", "a git-media pointer", "git media sync"),    # a comment and the id
    ("# external\n" + "4d7a" * 10 + "\n", "a git-media pointer", "git media sync"),
]


@pytest.mark.parametrize("text, kind, run", OLDER_POINTERS, ids=["hawser", "git-media-v2", "git-media-ini",
                                                                  "git-media-comment", "external-comment"])
def test_an_older_large_file_pointer_in_place_of_a_model_is_said_to_be_one(tmp_path, tiny_checkpoint, text, kind,
                                                                           run):
    """Pointers older than Git LFS's public launch (its pre-release Hawser's, its alpha's, git-media's) are still in
    old repositories and mirrors: only the launch's first line was known, and they failed as 'not a GGUF file' or
    'unreadable JSON'."""
    (tmp_path / "model.gguf").write_text(text)
    message = load_error(tmp_path / "model.gguf", ModelError, kind)
    assert message == f"{tmp_path / 'model.gguf'}: {kind}, not the file's data: run `{run}` in {tmp_path}"
    folder = tmp_path / "clone"
    shutil.copytree(tiny_checkpoint[0], folder)
    (folder / "config.json").write_text(text)
    assert load_error(folder, ModelError, kind).startswith(f"{folder / 'config.json'}: {kind}")


def test_a_small_file_that_starts_with_a_comment_is_no_pointer(tmp_path):
    (tmp_path / "model.gguf").write_text("# my notes\n" + "x" * 20 + "\n")
    assert "pointer" not in load_error(tmp_path / "model.gguf", ModelError, "not a GGUF file")


def test_a_file_that_only_mentions_git_lfs_is_not_taken_for_a_pointer(tmp_path, tiny_checkpoint):
    """Only the pointer's first line marks one: a broken config that quotes it later is still unreadable JSON."""
    folder = tmp_path / "mention"
    shutil.copytree(tiny_checkpoint[0], folder)
    (folder / "config.json").write_text("{\n" + LFS_POINTER)
    assert "Git LFS" not in load_error(folder, ModelError, "unreadable JSON")
