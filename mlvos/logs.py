"""Logging of the mlvos packages.

Every module logs to `logging.getLogger(__name__)`, so the logger names sit under "mlvos"
(mlvos.export.api, mlvos.calib.record, mlvos.runtime.backends.trt.build, ...): progress is INFO,
problems a run survives are WARNING. Only the command line configures output
(`configure_logging`, called by mlvos.cli.main). A library user who configures nothing sees the
warnings only (Python's last-resort handler writes WARNING and above to stderr); configure the
"mlvos" logger as any other to see the progress too.

Progress lines of a long operation start with the seconds since it began (`[ 12.3s] ...`): the
operation runs inside `clock()` (a context manager or decorator) and logs `stamped(msg)`, also
from the modules it calls, so no clock or callback is passed through their signatures.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar

ROOT_LOGGER = "mlvos"

_clock_start: ContextVar[float | None] = ContextVar("mlvos_clock_start", default=None)


class _ConsoleHandler(logging.Handler):
    """Bare messages, below WARNING to sys.stdout and from WARNING up to sys.stderr.

    The stream is looked up for each record, not bound once: sys.stdout and sys.stderr may be
    replaced after configuration (pytest's capsys per test, contextlib.redirect_stdout).
    """

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()  # progress shows as it happens, also when piped
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def configure_logging() -> None:
    """Print the "mlvos" loggers' records on the console: INFO and DEBUG lines to stdout,
    WARNING and above to stderr, as bare messages ("%(message)s"), from INFO up.

    Idempotent (a second call adds no second handler). The "mlvos" logger stops propagating, so
    a handler on the root logger does not print its records twice.
    """
    logger = logging.getLogger(ROOT_LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleHandler())


@contextlib.contextmanager
def clock() -> Iterator[None]:
    """Time an operation: inside the block (or the decorated function), `stamped` prefixes
    messages with the seconds since it began. An inner clock counts from its own start until it
    ends."""
    token = _clock_start.set(time.perf_counter())
    try:
        yield
    finally:
        _clock_start.reset(token)


def stamped(msg: str) -> str:
    """`[ 12.3s] msg`: the seconds of the innermost running `clock()`, then msg; msg unchanged
    outside any clock."""
    start = _clock_start.get()
    return msg if start is None else f"[{time.perf_counter() - start:6.1f}s] {msg}"
