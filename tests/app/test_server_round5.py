"""`codecomplete serve` against the adversarial sweep's fifth round: a stop signal while the server warms up (after
the model loaded, before it serves), on a real process and its real socket."""
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

# In the server's process: when the engine thread begins the warm-up, a file says so, and the thread computes in torch
# for a few seconds first (as a GPU's warm-up compiles and captures for tens of seconds), its native code running
# without the interpreter's lock when the stop comes.
HOOK = '''
import os, sys, threading, time

def _mark_the_warm_up(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "_warm_up":
        sys.setprofile(None)
        import torch
        square = torch.ones(256, 256)
        open(os.environ["CODECOMPLETE_TEST_WARM_UP_MARK"], "w").close()
        until = time.monotonic() + 3
        while time.monotonic() < until:
            square @ square

threading.setprofile(_mark_the_warm_up)
'''


def test_sigterm_while_the_server_warms_up_ends_it_with_143_not_an_abort(script, cli_env, served_repo, tmp_path):
    """SIGTERM after the model loaded, while the engine thread ran the warm-up's first generations: the main thread
    left at once and the interpreter's exit caught the engine thread inside torch, whose unwinding aborted the
    process ("terminate called without an active exception", exit 134, seen in 4 of 24 timed stops of the sweep).
    The warm-up is stopped and its thread joined first: 143 and the log's one line."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    mark = tmp_path / "warming"
    env = {**cli_env, "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), cli_env.get("PYTHONPATH")])),
           "CODECOMPLETE_TEST_WARM_UP_MARK": str(mark)}
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen([str(script), "serve", str(served_repo), "--port", "0", "--context-tokens", "256",
                                    "--max-tokens", "8"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while not mark.exists() and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.002)
            assert mark.exists(), (tmp_path / "server.log").read_text()
            time.sleep(0.2)            # (well inside the 3 s)
            process.send_signal(signal.SIGTERM)
            code = process.wait(60)
        finally:
            if process.poll() is None:
                process.kill()
    text = (tmp_path / "server.log").read_text()
    assert code == 128 + signal.SIGTERM, text
    assert "terminate called" not in text and "Traceback" not in text, text
    assert text.strip().splitlines()[-1] == "codecomplete: stopped by SIGTERM", text


@pytest.mark.parametrize("raised", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_that_lands_in_a_finalizer_is_sent_again_not_lost(raised):
    """A SIGTERM that came while Python ran an object's __del__ (the regex package's, as a server started: seen in
    the sweep) raised its exit there, which Python prints as "Exception ignored" and drops: the server went on to
    serve. The signal comes again once the finalizer is over, and the run unwinds as for any stop."""
    from codecomplete import cli
    from codecomplete.errors import Stopped

    number = getattr(signal, raised)
    handlers = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    hook = sys.unraisablehook
    ignored = []

    class Finalized:
        def __del__(self):
            signal.raise_signal(number)             # the signal lands while the finalizer runs

    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = ignored.append         # (what the hook before would have printed)
        cli._stop_signals()
        with pytest.raises((Stopped, KeyboardInterrupt)) as stopped:
            Finalized()                             # (freed at once: its __del__ runs here)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        sys.unraisablehook = hook
        for n, handler in handlers.items():
            signal.signal(n, handler)
    assert not ignored
    if raised == "SIGTERM":
        assert isinstance(stopped.value, Stopped) and stopped.value.code == 128 + signal.SIGTERM
    else:
        assert isinstance(stopped.value, KeyboardInterrupt)


def test_a_file_ignored_while_the_server_runs_is_in_no_later_prompt(script, cli_env, tmp_path):
    """`.gitignore` edited to leave out a file of secrets while a server ran: the next two /infill prompts still
    carried it (the sweep between requests had not found it gone yet; half a second of quiet had). Now the request
    after the edit already leaves it out."""
    from server_process import ServerProcess

    root = tmp_path / "project"
    root.mkdir()
    (root / "shapes.py").write_text("class Rectangle:\n    def __init__(self, width, height):\n"
                                    "        self.width, self.height = width, height\n")
    (root / "secret.py").write_text("from shapes import Rectangle\n\nSECRET_KEY = 'hunter2-zebra'\n\n\n"
                                    "def secret_rectangle():\n    return Rectangle(SECRET_KEY, 2)\n")
    (root / ".gitignore").write_text("*.log\n")
    server = ServerProcess(script, root, cli_env, tmp_path, "--context-tokens", "512", "--max-tokens", "4")
    body = {"input_prefix": "from secret import secret_rectangle\n\n\ndef g():\n    return secret_rectangle",
            "input_suffix": "\n", "n_predict": 2}
    try:
        first = httpx.post(server.url + "/infill", json=body, timeout=120)
        assert first.status_code == 200 and "Rectangle(SECRET_KEY" in first.json()["prompt"], first.text
        (root / ".gitignore").write_text("*.log\nsecret.py\n")
        for _ in range(2):
            answer = httpx.post(server.url + "/infill", json=body, timeout=120)
            assert answer.status_code == 200 and "SECRET_KEY" not in answer.json()["prompt"], answer.text
    finally:
        assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log()


def test_a_server_started_with_ctrl_c_ignored_keeps_ignoring_it_once_it_serves(script, cli_env, served_repo,
                                                                              tmp_path, monkeypatch):
    """`codecomplete serve &` in a shell script starts with SIGINT ignored, so that Ctrl-C ends the script and not
    the job (the one-shot commands and the start-up keep it so; `nohup` keeps SIGHUP so): once serving, uvicorn
    installed its own handler over it, and the script's Ctrl-C stopped the server. SIGTERM still stops it."""
    import subprocess as processes

    from server_process import ServerProcess

    popen = processes.Popen
    monkeypatch.setattr(processes, "Popen", lambda *args, **kwargs: popen(
        *args, **kwargs, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)))
    server = ServerProcess(script, served_repo, cli_env, tmp_path, "--context-tokens", "256", "--max-tokens", "4")
    monkeypatch.undo()
    try:
        os.kill(server.process.pid, signal.SIGINT)
        time.sleep(1)
        assert server.process.poll() is None, server.log()
        assert httpx.get(server.url + "/health", timeout=30).status_code == 200
    finally:
        code = server.stop(signal.SIGTERM, timeout=30)
    assert code == 0, server.log()
