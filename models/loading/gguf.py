"""GGUF files (llama.cpp): dequantized with the `gguf` package and converted once into a Hugging Face style
directory in the user cache (config.json, model.safetensors, the tokenizer saved by transformers).

Reading a GGUF and building its tokenizer takes ~10 s; loading the converted directory well under one.
The cache holds the weights in the dtype the engine runs (bf16 on CUDA, float32 on CPU), one folder per file
path and dtype; its source.json records the file it was converted from (size, mtime, inode, ctime), the cache
format, the SHA-256 of its content and the size of every file written. A file with the bytes of one converted
before (a copy, a hard link) gets a folder of hard links to that conversion's files, not a conversion of its
own, and is not parsed: only a file the size of a converted one is hashed, and only the same SHA-256 shares. A
copy that no longer matches is converted again in its place, so a changed file neither loads stale weights nor
leaves its old copy behind. `gguf` is imported here only, lazily: the GPU image does not have it.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch

from models.config import ModelConfig
from models.errors import ModelError, UnsupportedModelError
from models.loading import cache_root
from models.loading.gguf_header import check_header_bounds
from models.loading.lfs import pointer_message

CACHE_FORMAT = 5   # 2: a linear rope factor without a type, or under rope.scale_linear, is read (config.json)
                   # 3: a sentencepiece vocabulary spaces text as SentencePiece does (tokenizer.json)
                   # 4: a byte-level BPE vocabulary splits text as llama.cpp does for its tokenizer.ggml.pre
                   #    (tokenizer.json); source.json keeps the conversion's warnings
                   # 5: a llama3-named vocabulary that does not say puts BOS first, as llama.cpp does
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
TOP_LEVEL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                   "output.weight": "lm_head.weight"}
BLOCK_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
               "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj"}


def converted_dir(path: Path, dtype: torch.dtype) -> Path:
    key = f"{path.resolve()}|{dtype}"
    # The stem cut to 64 bytes: the hash tells files apart, and a long name (or a short one in a script of 3-byte
    # characters) plus the hash and ".tmp<pid>" passed the 255-byte limit of a file name, so it never converted.
    stem = path.stem
    while len(os.fsencode(stem)) > 64:
        stem = stem[:-1]
    return cache_root() / "gguf" / f"{stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def source_stamp(path: Path) -> dict:
    """What a conversion was made from. The inode and ctime too: new content under the same path, size and mtime
    (`cp -p`, `touch -r`, a tar extracted over it) must not match; only a write, rename or chmod moves ctime."""
    st = path.stat()
    return {"format": CACHE_FORMAT, "path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "inode": st.st_ino, "ctime_ns": st.st_ctime_ns}


def gguf_checkpoint(path: Path, dtype: torch.dtype, progress=None) -> Path:
    """The converted checkpoint directory for a GGUF file, converting it on first use.

    A cached copy that is incomplete or unreadable (a disk that filled up, a hand-deleted file) is converted
    again rather than refused forever; a cache folder that cannot be written is a one-line ModelError, and the
    half-written copy is removed whatever stops the conversion."""
    out, stamp = converted_dir(path, dtype), source_stamp(path)
    check_private(out.parent)
    _remove_dead_conversions(out.parent)
    if is_complete(out, stamp):
        return out
    with _conversion_lock(out, path, progress, create=False):
        pass    # another process converting it now: its copy is awaited before this one parses the file (seconds)
    if is_complete(out, stamp):
        return out
    # A copy or a hard link of a converted file is known by its bytes (SHA-256: SmolLM2's in 0.06 s from the page
    # cache) before it is parsed (3 s): its bytes passed the checks below when they were converted.
    content, shared = _converted_content(path, out, stamp, dtype)
    reader = config = None
    if not shared:
        reader, config = _checked_gguf(path)

    from safetensors import SafetensorError
    from safetensors.torch import save_file
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    try:
        with _conversion_lock(out, path, progress) as locked:
            if is_complete(out, stamp):     # another process converted it while this one waited
                return out
            # Under the lock no other process is writing this conversion: a temporary folder left here is one
            # a killed conversion (SIGKILL, a power cut) never removed, and a damaged copy is ours to replace.
            for stale in out.parent.glob(f"{glob.escape(out.name)}.tmp*") if locked else ():
                shutil.rmtree(stale, ignore_errors=True)
            if out.is_symlink() or (out.exists() and not out.is_dir()):    # (a file: no folder replaces it)
                out.unlink()
            elif out.exists():
                if progress:
                    progress(f"The converted copy of {path.name} in {out} is out of date or damaged: "
                             "converting it again")
                shutil.rmtree(out, ignore_errors=True)
            content = content or {"sha256": content_digest(path), "dtype": str(dtype)}
            if shared_record := _link_same_content(tmp, out, content):
                files, warnings = shared_record["files"], shared_record.get("warnings", [])
                if progress:
                    progress(f"{path.name} has the content of a file converted before: sharing its copy")
            else:
                if reader is None:      # the conversion it matched went since (removed, or found damaged)
                    reader, config = _checked_gguf(path)
                if progress:
                    progress(f"Converting {path.name} (first start only; cached in {out.parent})")
                tokenizer, warnings = gguf_tokenizer(path, reader)
                tensors = {hf_name(t.name, path): to_torch(t, config, dtype) for t in reader.tensors}
                tmp.mkdir(mode=0o755)   # not the umask's: a umask of 0 would make it one that anyone may write
                save_file(tensors, tmp / "model.safetensors")
                tokenizer.save_pretrained(str(tmp))
                (tmp / "config.json").write_text(json.dumps(config.to_hf(), indent=2), encoding="utf-8")
                files = {f.name: f.stat().st_size for f in tmp.iterdir()}
            record = {"source": stamp, "content": content, "files": files, "warnings": warnings}
            (tmp / "source.json").write_text(json.dumps(record), encoding="utf-8")
            os.replace(tmp, out)        # atomic: a half-written conversion is never found
            _remove_unstamped_copies(out, path.stem)
    except (OSError, SafetensorError) as e:     # safetensors says a full disk in a SafetensorError of its own
        if is_complete(out, stamp):     # another process converted it first (where there are no file locks)
            return out
        raise ModelError(f"cannot write the converted model into {out.parent}: {getattr(e, 'strerror', None) or e} "
                         "(CODECOMPLETE_CACHE_DIR sets the cache folder)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _checked_gguf(path: Path):
    """The file's reader and config, every check made that a conversion needs."""
    reader = open_gguf(path)
    config = read_gguf_config(reader, path)
    check_tensor_types(reader, path)
    check_tensor_layout(reader, path)
    check_tensor_shapes(reader, config, path)
    return reader, config


def _converted_content(path: Path, out: Path, stamp: dict, dtype: torch.dtype) -> tuple[dict | None, bool]:
    """(the content record of `path`, {"sha256", "dtype"}, or None where it was not read; whether another
    conversion in the cache was made from the same bytes in this dtype and cache format). The whole file is hashed
    only where a conversion is of its size: another file (not even a GGUF, maybe) is not read before its error."""
    records = []
    try:
        for _, record in _conversions_beside(out):
            with contextlib.suppress(KeyError, AttributeError, TypeError):     # a damaged record
                if record["source"].get("size") == stamp["size"] and record["content"]["dtype"] == str(dtype):
                    records.append(record["content"])
    except OSError:                     # no cache yet: this is the first conversion
        return None, False
    try:
        content = {"sha256": content_digest(path), "dtype": str(dtype)} if records else None
    except OSError:                     # unreadable: parsing it says so, in the loader's words
        return None, False
    return content, content is not None and content in records


def _conversions_beside(out: Path):
    """(folder, source.json record) of each other conversion in `out`'s cache folder made in this cache format; a
    folder without a readable record is passed over. Listing the cache folder may raise OSError."""
    for other in out.parent.iterdir():
        if other != out and (record := _current_record(other)) is not None:
            yield other, record


def _current_record(folder: Path) -> dict | None:
    """The source.json record of the conversion in `folder` if it was made in this cache format; None where there is
    none, it is damaged, or it is of another format."""
    from models.loading.hf import read_json

    try:
        record = read_json(folder / "source.json")
        if record["source"].get("format") == CACHE_FORMAT:
            return record
    except (OSError, ModelError, KeyError, AttributeError, TypeError):     # none there, or a damaged record
        pass
    return None


def content_digest(path: Path) -> str:
    """The SHA-256 of the whole file: read only when a conversion is due, which reads the file anyway."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _link_same_content(tmp: Path, out: Path, content: dict) -> dict | None:
    """Fill `tmp` with hard links to the files of a complete conversion of the same bytes in the same dtype (a
    copy of the file, a hard link to it, the package installed in another environment), so one file's weights are
    neither dequantized nor stored twice; returns that conversion's source.json record, or None where there is no
    such conversion or the links cannot be made. Conversions are replaced, never written in place, so shared files
    stay as they are."""
    for other, record in _conversions_beside(out):
        try:
            if (record.get("content") != content or any(Path(name).name != name for name in record["files"])
                    or not is_complete(other)):
                continue
            tmp.mkdir(mode=0o755)
            for name in record["files"]:
                os.link(other / name, tmp / name)
            return record
        except (OSError, ModelError, KeyError, AttributeError, TypeError):     # links unsupported, a record damaged
            shutil.rmtree(tmp, ignore_errors=True)
    return None


def check_private(folder: Path) -> None:
    """Refuse a cache folder that another user owns or that every user may write (the app's rule for the cache
    root, codecomplete/caches.py, which library callers such as models.cpu_bench skip): what is cached there is
    loaded as weights and a tokenizer, so anyone who could write it would choose what the model says."""
    if problem := _not_private(folder):
        raise ModelError(f"{folder} {problem}: converted weights there are not loaded "
                         "(set CODECOMPLETE_CACHE_DIR to a folder of your own)")


def _not_private(folder: Path) -> str | None:
    if not hasattr(os, "geteuid"):      # Windows: no owners in stat, and every writable folder reads as mode 0777
        return None
    try:
        st = folder.stat()
    except OSError:                     # not there yet (we create it), or not a folder: the write says so
        return None
    if st.st_uid != os.geteuid():
        return "belongs to another user"
    if st.st_mode & 0o002:
        return "can be written by every user"
    return None


_TEMPORARY = re.compile(r"(.+)\.tmp[0-9]+")     # a conversion's temporary folder: the converted folder's name.tmp<pid>


def _remove_dead_conversions(folder: Path) -> None:
    """Remove the temporary folders of conversions that a process killed outright left (SIGKILL, the OOM killer, a
    power cut: no `finally` runs), each as large as its weights, whatever file they were of: a conversion holds its
    lock while it writes, so a temporary folder whose lock this process can take is no conversion under way. Where
    locks do not work, or the lock file is gone, nothing is removed."""
    dead: dict[str, list[str]] = {}
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                if (match := _TEMPORARY.fullmatch(entry.name)) and entry.is_dir(follow_symlinks=False):
                    dead.setdefault(match[1], []).append(entry.path)
    except OSError:                     # no cache folder yet
        return
    for name, temporaries in dead.items():
        with _conversion_lock(folder / name, folder / name, create=False, wait=False) as locked:
            for temporary in temporaries if locked else ():
                shutil.rmtree(temporary, ignore_errors=True)


def _remove_unstamped_copies(out: Path, stem: str) -> None:
    """Remove the copies of files named like this one that older versions keyed by size and mtime (no source.json):
    no lookup finds them any more, and each is as large as its weights."""
    legacy = re.compile(re.escape(stem) + r"-[0-9a-f]{16}")
    for old in out.parent.iterdir():
        if (old != out and legacy.fullmatch(old.name) and old.is_dir() and not old.is_symlink()
                and not (old / "source.json").exists()):
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _conversion_lock(out: Path, path: Path, progress=None, create: bool = True, wait: bool = True):
    """Held while `out` is converted: a second process (a server and a command started together) waits for the
    first one's copy instead of dequantizing the same file alongside it, and may clean up after a killed one.
    Yields whether it holds the lock. The lock file stays (holding the last holder's pid, which a waiting process
    names): removing it would let a waiting process lock a file no newcomer sees. create=False: only where a lock
    file exists (nothing is written to the cache for a file not yet known to be a GGUF); else yields False at once.
    wait=False: yields False at once where another process holds it."""
    if create:
        if out.parent.is_file() and not out.parent.is_symlink():
            out.parent.unlink()         # a file where the cache's folder belongs (not ours): refused every run
        out.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        check_private(out.parent)
    # 0600: flock needs only a read handle, so a lock file others may open is one they could hold forever
    try:
        lock_fd = os.open(out.with_name(f"{out.name}.lock"),
                          os.O_WRONLY | os.O_APPEND | (os.O_CREAT if create else 0), 0o600)
    except OSError:                     # (not there: no process converted it here yet)
        if create:
            raise
        yield False
        return
    lock_path = out.with_name(f"{out.name}.lock")
    with os.fdopen(lock_fd, "a", encoding="utf-8") as lock:
        held = _flock(lock, path, progress, wait, lock_path)
        if held is True:
            with contextlib.suppress(OSError):      # the pid is only for a waiting process's message
                os.ftruncate(lock_fd, 0)
                os.write(lock_fd, f"{os.getpid()}\n".encode())
        try:
            yield held
        finally:
            if held == "msvcrt":        # Windows asks for its byte locks to be released before the file closes
                import msvcrt
                with contextlib.suppress(OSError):      # (closing releases it in the end anyway)
                    os.lseek(lock.fileno(), 0, os.SEEK_SET)
                    msvcrt.locking(lock.fileno(), msvcrt.LK_UNLCK, 1)
        # (closing the file releases a flock)


def _flock(lock, path: Path, progress=None, wait: bool = True, lock_path: Path | None = None) -> bool | str:
    """Take an exclusive lock on the open file `lock`, waiting for its holder (wait=False: False where there is
    one); False where locks do not exist."""
    try:
        import fcntl
    except ImportError:                 # Windows
        return _lock_first_byte(lock, path, progress, wait)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if not wait:
            return False
        if progress:
            progress(f"Waiting for another process converting {path.name}{_holder(lock_path)}")
        fcntl.flock(lock, fcntl.LOCK_EX)
    except OSError:                     # a file system without locks (some NFS and FUSE mounts): convert unlocked
        return False
    return True


def _holder(lock_path: Path | None) -> str:
    """Who holds a conversion lock, from the pid its holder wrote: " (process N)", and whether it is stopped (a
    Ctrl-Z'd first run holds every later one, a server an editor starts included, until it goes on); "" where
    unknown."""
    try:
        pid = int(lock_path.read_text(encoding="ascii").strip())
    except (AttributeError, OSError, ValueError):   # no path (Windows' locks), not written yet
        return ""
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace").rpartition(")")[2].split()[0]
    except (OSError, ValueError, IndexError):       # no /proc (macOS), or the holder just ended
        state = ""
    if state in ("T", "t"):
        return f" (process {pid}, which is stopped: `kill -CONT {pid}` lets it go on)"
    return f" (process {pid})"


def _lock_first_byte(lock, path: Path, progress=None, wait: bool = True) -> bool | str:
    """Windows' flock: msvcrt's lock on the file's first byte (the lock file stays empty; a byte past the end may
    be locked). "msvcrt" when held, False where there is no msvcrt either (conversions may run side by side)."""
    try:
        import msvcrt
    except ImportError:
        return False
    descriptor = lock.fileno()
    os.lseek(descriptor, 0, os.SEEK_SET)   # msvcrt locks from the file position
    try:
        msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        return "msvcrt"
    except PermissionError:             # EACCES: another process holds it
        if not wait:
            return False
    except OSError:                     # a file system without locks: convert unlocked
        return False
    if progress:
        progress(f"Waiting for another process converting {path.name}")
    while True:
        try:
            msvcrt.locking(descriptor, msvcrt.LK_LOCK, 1)   # tries once a second for 10 s, then EDEADLOCK
            return "msvcrt"
        except OSError as exc:
            if exc.errno != errno.EDEADLOCK:
                return False


def is_complete(directory: Path, stamp: dict | None = None) -> bool:
    """Whether a converted copy has everything a load reads: a valid config, a readable safetensors header
    (which also checks the file is as long as the header says) and every file at the size it was written (a
    truncated tokenizer.json failed every load; parsing its megabytes here would cost each start ~0.3 s); with a
    `source_stamp`, also whether it was converted from that very file in this cache format."""
    from models.loading.hf import read_config, read_json
    from safetensors import safe_open

    try:
        if directory.is_symlink() or _not_private(directory):   # not one we wrote, or one others could have
            return False
        read_config(directory)
        record = read_json(directory / "source.json")
        if stamp is not None and record["source"] != stamp:
            return False
        if not record["files"] or not all(_readable_at_size(directory / name, size)
                                          for name, size in record["files"].items()):
            return False
        with safe_open(directory / "model.safetensors", framework="pt", device="cpu") as weights:
            return bool(list(weights.keys()))
    except Exception:  # ModelError, SafetensorError, OSError, KeyError, AttributeError: not a usable copy
        return False


def _readable_at_size(path: Path, size: int) -> bool:
    # Opened, not only stat'ed: a file a load cannot read (chmod 000 by a hand or a backup tool) was refused at
    # every load ("cannot load the tokenizer (PermissionError ...)") where it could have been converted again.
    with open(path, "rb") as file:
        return os.fstat(file.fileno()).st_size == size


def open_gguf(path: Path):
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:                # a file the user may not read (mode 000, another user's), an I/O error
        raise ModelError(f"{path}: cannot read the GGUF file ({e.strerror or e})") from None
    if magic != b"GGUF":
        raise ModelError(pointer_message(path) or f"{path}: not a GGUF file (no GGUF magic at the start)")
    check_header_bounds(path)
    from gguf import GGUFReader
    try:
        return GGUFReader(path)
    except Exception as e:  # a truncated file fails deep inside numpy with ValueError, IndexError, ...
        if "GGMLQuantizationType" in str(e):    # a type id the gguf package does not know: a newer llama.cpp's
            raise UnsupportedModelError(
                f"{path}: a tensor has a quantization type unknown to this gguf package ({e}; a newer llama.cpp "
                f"format?); supported: {', '.join(SUPPORTED_TYPES)}") from None
        raise ModelError(
            f"{path}: truncated or corrupt GGUF file ({path.stat().st_size} bytes; {type(e).__name__}: {e})") from None


PER_LAYER_KEYS = ("llama.attention.head_count", "llama.attention.head_count_kv", "llama.feed_forward_length")


def read_gguf_config(reader, path: Path) -> ModelConfig:
    from gguf import GGUFValueType
    meta = {key: field.contents() for key, field in reader.fields.items() if field.types[0] != GGUFValueType.ARRAY}
    for key in PER_LAYER_KEYS:      # llama.cpp takes one number, or one per layer (not read as missing here)
        field = reader.fields.get(key)
        if field is not None and field.types[0] == GGUFValueType.ARRAY:
            values = field.contents()
            shown = f"{values[:8]}"[:-1] + (", ...]" if len(values) > 8 else "]")
            raise UnsupportedModelError(f"{path}: {key} is given per layer ({shown}), which is not supported "
                                        "(one number for every layer is)")
    experts = meta.get("llama.expert_count")
    if isinstance(experts, int) and experts > 0:   # Mixtral's GGUFs say "llama"; 0 is llama.cpp's own "dense"
        raise UnsupportedModelError(f"{path}: a mixture of experts ({experts} experts, llama.expert_count), which is "
                                    "not supported (dense Llama models are)")
    if "llama.vocab_size" not in meta and "tokenizer.ggml.tokens" in reader.fields:
        meta["llama.vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    parts, number = meta.get("split.count"), meta.get("split.no")
    if isinstance(parts, int) and parts > 1:   # llama.cpp's gguf-split: this file holds some of the tensors only
        part = f"part {number + 1}" if isinstance(number, int) else "a part"
        raise UnsupportedModelError(
            f"{path}: {part} of a GGUF split into {parts} files, which is not read across files; merge the "
            f"parts first: llama-gguf-split --merge {path.name} merged.gguf")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise UnsupportedModelError(
            f"{path}: per-frequency rope factors (rope_freqs, Llama 3.1 style) are not supported in GGUF; "
            "use the Hugging Face checkpoint")
    return ModelConfig.from_gguf(meta, str(path), tied="output.weight" not in names)


def check_tensor_types(reader, path: Path) -> None:
    for t in reader.tensors:
        if t.tensor_type.name not in SUPPORTED_TYPES:
            raise UnsupportedModelError(
                f"{path}: tensor {t.name} has quantization {t.tensor_type.name}, which is not supported "
                f"(supported: {', '.join(SUPPORTED_TYPES)})")


def check_tensor_layout(reader, path: Path) -> None:
    """Every tensor's bytes inside the file's data section, at the header's alignment, none overlapping another.
    The gguf reader takes offsets as they are written: one of 2**64 - 32 read the header's padding as a norm,
    tensors all at offset 0 alias each other (a 2 MB file then converts into a cache entry of any size)."""
    start, size = reader.data_offset, path.stat().st_size
    spans = sorted((int(t.data_offset), int(t.data_offset) + int(t.n_bytes), t.name) for t in reader.tensors)
    for begin, end, name in spans:
        if begin < start or end > size or (begin - start) % reader.alignment:
            raise ModelError(f"{path}: tensor {name} lies outside the file's data section or off its "
                             f"{reader.alignment}-byte alignment (corrupt file)")
    for (_, end, name), (begin, _, other) in zip(spans, spans[1:]):
        if begin < end:
            raise ModelError(f"{path}: tensors {name} and {other} overlap (corrupt file)")


def check_tensor_shapes(reader, config: ModelConfig, path: Path) -> None:
    """The file's tensors against those its metadata implies, before any is dequantized: a GGUF whose metadata
    contradicts its tensors (a block count of 1,000 over 30 blocks) is refused at once, not converted and cached in
    full first. The loader's own checks (`hf.load_weights`: unexpected, misshapen and missing tensors) over a model
    and tensors on the meta device: shapes only, no memory."""
    from models.llama import Transformer
    from models.loading.hf import load_weights

    with torch.device("meta"):
        load_weights(Transformer(config), ((hf_name(t.name, path), torch.empty(tuple(reversed(t.shape.tolist()))))
                                           for t in reader.tensors), str(path))


def hf_name(name: str, path: Path) -> str:
    """llama.cpp's tensor name -> Hugging Face Llama's ("blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight")."""
    if name in TOP_LEVEL_NAMES:
        return TOP_LEVEL_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in BLOCK_NAMES and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}.weight"
    raise UnsupportedModelError(f"{path}: unexpected tensor {name} (not a plain Llama GGUF)")


def to_torch(tensor, config: ModelConfig, dtype: torch.dtype) -> torch.Tensor:
    """One GGUF tensor dequantized to `dtype`, in HF's layout (q/k rows un-permuted)."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    shape = tuple(reversed([int(n) for n in tensor.shape]))      # GGUF lists dims innermost first
    if tensor.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        array = tensor.data
    else:
        array = dequantize(tensor.data, tensor.tensor_type)        # float32
    weight = torch.from_numpy(np.array(array).reshape(shape)).to(dtype)   # np.array: a writable copy of the mmap
    if tensor.name.endswith("attn_q.weight"):
        weight = unpermute_rope_rows(weight, config.n_heads)
    elif tensor.name.endswith("attn_k.weight"):
        weight = unpermute_rope_rows(weight, config.n_kv_heads)
    return weight


def unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's converter, which interleaves each head's rotary halves for its rope kernel.

    Within a head, HF's rows are [x0 .. x(D/2-1), y0 .. y(D/2-1)]; GGUF stores them as [x0, y0, x1, y1, ...].
    """
    out_features, in_features = weight.shape
    return (weight.reshape(n_heads, out_features // n_heads // 2, 2, in_features)
            .transpose(1, 2).reshape(out_features, in_features))


def conversion_warnings(directory: Path) -> list[str]:
    """What the conversion in `directory` warned of (a tokenizer that may split text unlike the model's training),
    for each start to repeat; [] for a directory that is no conversion of ours."""
    record = _current_record(directory)
    try:
        return [str(warning) for warning in record.get("warnings", [])] if record is not None else []
    except TypeError:                   # a damaged record: warnings that are no list
        return []


def gguf_tokenizer(path: Path, reader):
    """(the fast tokenizer transformers builds from the file's tokenizer.ggml.* metadata (slow: seconds), the
    warnings of its making): a byte-level BPE vocabulary then gets the split llama.cpp applies for the file's
    pre-tokenizer name (models/loading/gguf_pretokenizers.py)."""
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, trust_remote_code=False)
    except Exception as e:  # transformers raises anything from KeyError to ValueError here
        raise ModelError(f"{path}: cannot build the tokenizer from the GGUF metadata ({type(e).__name__}: {e})") from None
    vocabulary, warnings = _text_field(reader, "tokenizer.ggml.model"), []
    if vocabulary == "llama":
        from models.loading.hf import sentencepiece_spaces
        sentencepiece_spaces(tokenizer, _bool_field(reader, "tokenizer.ggml.add_space_prefix", True))
    elif vocabulary == "gpt2":
        from models.loading.gguf_pretokenizers import LLAMA3_NAMES, split_as_llama_cpp
        pre = _text_field(reader, "tokenizer.ggml.pre")
        if warning := split_as_llama_cpp(tokenizer, pre):
            warnings.append(warning)
        if pre in LLAMA3_NAMES and "tokenizer.ggml.add_bos_token" not in reader.fields:
            tokenizer.add_bos_token = True  # llama.cpp's default for these names (Llama 3's files often omit it)
    return tokenizer, warnings


def _text_field(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    return field.contents() if field is not None and isinstance(field.contents(), str) else None


def _bool_field(reader, key: str, default: bool) -> bool:
    field = reader.fields.get(key)
    return field.contents() if field is not None and isinstance(field.contents(), bool) else default
