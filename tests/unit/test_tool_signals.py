"""A tool run by ``tools.requirements.run`` meets SIGTERM as Ctrl-C (its own processes stopped
on the way out), while a process it forks (a pool's) ends on SIGTERM as by default, whichever
of its threads the signal reaches. The tool's handler in a forked process only flagged the
signal for the main thread; a pool process whose main thread waited for its next task, with
the signal taken by another thread, never ended, and the benchmark waited for it for ever."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FORKING_TOOL = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from tools.requirements import run

    def main():
        child = os.fork()
        if child == 0:
            # another thread takes the signal: the main thread blocks it, as a pool process's
            # main thread waiting for its next task may well not be the one the kernel picks
            threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            threading.Event().wait(60)
            os._exit(0)
        time.sleep(0.5)
        os.kill(child, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done, status = os.waitpid(child, os.WNOHANG)
            if done:
                print("child", "signal" if os.WIFSIGNALED(status) else "exit",
                      os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
                return 0
            time.sleep(0.05)
        os.kill(child, signal.SIGKILL)
        print("child still running")
        return 1

    run(main)
    """
)


def test_a_forked_process_of_a_tool_ends_on_sigterm_whichever_thread_takes_it():
    done = subprocess.run(
        [sys.executable, "-c", FORKING_TOOL, str(ROOT)], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == f"child signal {int(signal.SIGTERM)}", done.stdout + done.stderr
    assert done.returncode == 0, done.stderr


def test_sigterm_to_the_tool_itself_is_met_as_an_interrupt():
    script = (
        "import os, signal, sys, time\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from tools.requirements import run\n"
        "def main():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(10)\n"
        "    finally:\n"
        "        print('cleaned up')\n"
        "run(main)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(ROOT)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 143 and done.stdout.strip() == "cleaned up", done
    assert done.stderr.strip() == "terminated", done.stderr
