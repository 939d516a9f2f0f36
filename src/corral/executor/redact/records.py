"""The executor's own log lines pass the redactor of the job they are logged for.

The executor logs job text in many places: error messages of git and docker (a clone URL with a
token, a registry answer echoing a user name), image names, step keys, output paths, tracebacks of a
job's exceptions. Rather than trusting every call site, the job's task carries its redactor in a
context variable (`use`, set by `JobHandler.handle` once the redactor is built; asyncio tasks and
`asyncio.to_thread` calls started from the job's task inherit it), and a log record factory
(`install`, process-wide, idempotent) redacts the formatted message, the formatted exception and the
stack of every record made while one is set. Records made outside a job (the worker's poll loop, the
heartbeat) are untouched and carry no job text beyond job ids and queue names.
"""

from __future__ import annotations

import contextvars
import logging
import traceback
from typing import Any

from corral.executor.redact.stream import Redactor

__all__ = ["Token", "current", "install", "reset", "use"]

Token = contextvars.Token[Redactor | None]

_current: contextvars.ContextVar[Redactor | None] = contextvars.ContextVar(
    "corral_job_redactor", default=None
)
_installed: list[bool] = []


def current() -> Redactor | None:
    """The redactor of the job this code runs for, if any."""
    return _current.get()


def use(redactor: Redactor | None) -> Token:
    """Make `redactor` the one of the current task (and of what it starts from now on)."""
    return _current.set(redactor)


def reset(token: Token) -> None:
    """Undo `use` (the job is over: the task may go on to other work)."""
    _current.reset(token)


def install() -> None:
    """Wrap the process's log record factory so records made for a job are redacted (once)."""
    if _installed:
        return
    _installed.append(True)
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redactor = _current.get()
        if redactor:
            _redact(record, redactor)
        return record

    logging.setLogRecordFactory(factory)


def _redact(record: logging.LogRecord, redactor: Redactor) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a bad format: keep logging's own handling of it, but never the raw args
        message = str(record.msg)
    record.msg, record.args = redactor.redact_text(message), ()
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = redactor.redact_text(text)
        record.exc_info = None  # formatters print exc_text; nothing formats the raw exception again
    if record.stack_info:
        record.stack_info = redactor.redact_text(record.stack_info)
