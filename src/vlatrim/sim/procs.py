"""Worker-process hygiene shared by demo generation and evaluation."""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """Start a daemon thread that ends this process once ``parent_pid`` is gone.

    A parent killed with SIGKILL cannot stop its workers; without this they would wait on their
    queues forever (holding GL contexts, memory, and any pipes they inherited).
    """

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:  # re-parented: the parent died
                os._exit(1)
            time.sleep(interval)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
