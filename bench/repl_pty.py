"""The chat REPL as a user meets it, driven through a pseudo-terminal: the time from the command to its first prompt
(the model's load and the index; on a GPU the warm-up that builds the decode steps runs on from there while the
user types, and the first question waits for what is left of it), then each
question's answer as the REPL reports it (its closing line: tokens, tok/s, first token, prompt and reused tokens)
with the wall time from pressing Enter to the next prompt. The REPL is run as a user runs it (`python -m
codecomplete REPO ...`) in a terminal of 200 columns that answers prompt-toolkit's cursor-position requests.

    python bench/repl_pty.py [--repo DIR] [--out FILE.md] [--timeout S] [--typing S] [--reading S] -- [options...]

The repository defaults to the standard library's json package (read, never written: the cache lives under
CODECOMPLETE_CACHE_DIR), the questions to a conversation over it whose follow-ups continue the first answer.
Example on a GPU: `python bench/repl_pty.py -- --model random:CodeLlama-7B:.gpu/tokenizer --max-tokens 32`.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import platform
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

QUESTIONS = [
    "How does JSONEncoder.iterencode choose between the C encoder and the Python one?",
    "What does _make_iterencode do with floats?",
    "Why is that check needed?",
]
# Escape sequences (CSI with its private and intermediate bytes, OSC, charset and keypad switches) and carriage returns.
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]|\r")
_CURSOR_QUERY = b"\x1b[6n"
_PROMPT = "›"
# The answer's closing line (codecomplete/render.py): `37 tokens · 14.2 tok/s · first token 180 ms · prompt 1,834 (1,700 reused)`
_CLOSING = re.compile(r"(\d[\d,]*) tokens? · (?:([\d.]+) tok/s · )?first token ([\d.,]+ ?m?s)"
                      r"(?: · prompt ([\d,]+)(?: \(([\d,]+) reused\))?)?")
_WARMED = re.compile(r"warmed up ([^\n]*?) in ([\d.]+) s")


class Terminal:
    """A child process on a pseudo-terminal; `text` holds everything it printed, escapes removed."""

    def __init__(self, argv: list[str], raw_log: Path):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS="200", LINES="50")
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                        start_new_session=True, close_fds=True)
        os.close(slave)
        self.master = master
        self.text = ""
        self.raw = raw_log.open("wb")

    def pump(self, seconds: float) -> bool:
        """Read what comes within `seconds`; False once the child has closed the terminal."""
        ready, _, _ = select.select([self.master], [], [], seconds)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:                   # EIO: the child is gone
            return False
        if not chunk:
            return False
        self.raw.write(chunk)
        for _ in range(chunk.count(_CURSOR_QUERY)):    # answer as a terminal would, at the top left
            os.write(self.master, b"\x1b[1;1R")
        self.text += _CONTROL.sub("", chunk.decode("utf-8", "replace"))
        return True

    def wait_for(self, pattern: re.Pattern | str, start: int, deadline: float):
        """The first match of `pattern` in the text printed from offset `start`, or None at the deadline."""
        pattern = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        while True:
            found = pattern.search(self.text, start)
            if found:
                return found
            if time.monotonic() > deadline or not self.pump(0.05):
                return pattern.search(self.text, start)

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")        # Enter sends (Esc Enter is a new line)

    def close(self) -> int:
        """Wait for the child to leave, reading what it prints meanwhile (a full terminal would hold it), then
        release the terminal; a child still there after 20 s is killed."""
        deadline = time.monotonic() + 20
        while self.process.poll() is None and time.monotonic() < deadline:
            if not self.pump(0.1):
                break
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.master)
        self.raw.close()
        return self.process.returncode


def _ms(text: str) -> float:
    value = float(text.rstrip("ms ").replace(",", ""))
    return value if text.strip().endswith("ms") else value * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=str(Path(json.__file__).parent))
    parser.add_argument("--out", default="bench/scratch/repl-pty.md")
    parser.add_argument("--timeout", type=float, default=240, help="seconds for the start, and for each answer")
    parser.add_argument("--typing", type=float, default=0.0,
                        help="seconds the first question takes to type, after the prompt shows (0: at once)")
    parser.add_argument("--reading", type=float, default=0.0,
                        help="seconds each follow-up is sent after the answer before it ends (a user reading the answer "
                             "and typing the next question; 0: at once)")
    parser.add_argument("options", nargs="*", help="codecomplete's options, after --")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "codecomplete", args.repo, *args.options]
    started = time.monotonic()
    terminal = Terminal(argv, out.with_suffix(".raw.txt"))
    rows, warmed, failure = [], None, None
    prompt = terminal.wait_for(_PROMPT, 0, started + args.timeout)
    ready_s = time.monotonic() - started
    if prompt is None:
        failure = "no prompt within the time limit"
    else:
        offset = prompt.end()
        typing_until = time.monotonic() + args.typing
        while time.monotonic() < typing_until and terminal.pump(0.05):
            pass
        for number, question in enumerate(QUESTIONS):
            reading_until = time.monotonic() + (args.reading if number else 0)
            while time.monotonic() < reading_until and terminal.pump(0.05):
                pass
            terminal.type(question)
            sent = time.monotonic()
            closing = terminal.wait_for(_CLOSING, offset, sent + args.timeout)
            if closing is None:
                failure = f"no answer to {question!r} within the time limit"
                break
            answered_s = time.monotonic() - sent
            again = terminal.wait_for(_PROMPT, closing.end(), sent + args.timeout)
            offset = again.end() if again else closing.end()
            tokens, rate, first, prompt_tokens, reused = closing.groups()
            rows.append({"question": question, "tokens": int(tokens.replace(",", "")),
                         "tok_s": float(rate) if rate else None, "first_token_ms": _ms(first),
                         "prompt": int(prompt_tokens.replace(",", "")) if prompt_tokens else None,
                         "reused": int(reused.replace(",", "")) if reused else 0, "enter_to_answer_s": answered_s})
        terminal.type("/exit")
    code = terminal.close()
    warmed = _WARMED.search(terminal.text)
    lines = [f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC · {platform.machine()}, "
             f"{os.cpu_count()} cores · {_card()} · `{' '.join(['codecomplete', args.repo, *args.options])}`", "",
             f"start to the first prompt: {ready_s:.1f} s; "
             + (f"the warm-up (from just before it) built {warmed.group(1)} in {warmed.group(2)} s"
                if warmed else "no warm-up (the engine builds no steps ahead here)")
             + f"; the first question sent {args.typing:g} s after the prompt showed, each follow-up "
             + (f"{args.reading:g} s after the answer before it" if args.reading else "as the answer before it ended"),
             "",
             "| question | tokens | tok/s | first token (ms) | prompt | reused | Enter to answer (s) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['question']} | {row['tokens']} | {row['tok_s'] or ''} | {row['first_token_ms']:.0f} | "
                     f"{row['prompt'] or ''} | {row['reused']} | {row['enter_to_answer_s']:.2f} |")
    if failure:
        lines += ["", f"FAILED: {failure}; the REPL's last output:", "", "```", terminal.text[-2000:], "```"]
    lines += ["", f"exit code {code}"]
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"ready_s": ready_s, "warm_up": warmed and warmed.group(0),
                                                    "rows": rows, "failure": failure, "exit": code}, indent=1))
    print("\n".join(lines))
    return 1 if failure or code else 0


def _card() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "no GPU"


if __name__ == "__main__":
    sys.exit(main())
