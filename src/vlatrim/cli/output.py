"""What the CLI writes to the terminal besides results: warnings and errors that must not be glued onto
a progress bar's line."""

from __future__ import annotations

import logging
import sys


class TqdmLogHandler(logging.Handler):
    """Writes each record through ``tqdm.write``, which clears the bars on stderr first, so the message
    starts on its own line and the bars redraw below it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001  (logging must never raise; Handler.handleError reports it)
            self.handleError(record)


def setup_logging(level: int = logging.WARNING) -> None:
    """Warnings as ``vlatrim: <message>`` lines on stderr, each on its own line even during a progress bar
    (no-op when the root logger already has handlers, like ``logging.basicConfig``)."""
    handler = TqdmLogHandler()
    handler.setFormatter(logging.Formatter("vlatrim: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def close_progress_bars() -> None:
    """Close the tqdm bars still open (an error left them mid-line), so a message starts on its own line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
