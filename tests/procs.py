"""Test helpers for runs that are killed and resumed."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path


def kill_after_first_line(proc: subprocess.Popen, journal: Path, timeout_s: float, poll_s: float = 0.05) -> int:
    """SIGKILL ``proc`` once ``journal`` holds a complete line (or at the timeout); return its line count."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and not (journal.exists() and journal.read_text().count("\n") >= 1):
        time.sleep(poll_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return journal.read_text().count("\n") if journal.exists() else 0
