"""A process's output as a test waits on it: read on a thread, line by line."""

from __future__ import annotations

import subprocess
import threading
import time


class Lines:
    """A process's output, read on a thread, waited on line by line."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines, self.cond = proc, [], threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                hit = next((ln for ln in self.lines if text in ln), None)
                if hit is not None:
                    return hit
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None or hit, (
                    f"{text!r} not printed in {timeout_s} s; output so far:\n" + "\n".join(self.lines[-40:]))
                self.cond.wait(min(left, 1.0))
