"""`--attention flash` on a machine without a GPU runs the Triton kernels in Triton's interpreter: through the real
command line, in a fresh process that has no TRITON_INTERPRET of its own (the test suite's conftest sets one, which
hid the bug: Triton was imported before the command set it)."""
import json
import subprocess


def test_flash_attention_on_the_cpu_through_the_command_line(script, cli_env):
    env = {k: v for k, v in cli_env.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([str(script), "--prompt", "def f():", "--attention", "flash", "--device", "cpu",
                           "--max-tokens", "2", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "InterpreterError" not in proc.stderr
    result = json.loads(proc.stdout)
    assert result["attention"] == "flash" and result["completion_tokens"] >= 2      # at least one decode step
