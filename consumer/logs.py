"""Logging: structlog events, JSON when not on a terminal, with a redactor that runs last.

The redactor is the guarantee, not a convention: it drops keys that name personal data or
credentials, and scrubs e-mail addresses, IP addresses, phone numbers and every configured secret
value from whatever is rendered (event text, values, exception tracebacks). Every string is cut
to a bound before it is scanned (`consumer.redaction`), so a huge value costs no more than a
small one.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import structlog

from consumer.redaction import REDACTED, REDACTOR, SENSITIVE_KEYS, Redactor

__all__ = ["REDACTED", "REDACTOR", "SENSITIVE_KEYS", "Redactor", "configure", "get_logger"]


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (test capture, reconfigured streams)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(*, level: str = "info", fmt: str = "auto", secrets: Iterable[str] = ()) -> None:
    """Configure structlog and the stdlib root logger (librdkafka, httpx, uvicorn go through it)."""
    REDACTOR.set_secrets(secrets)
    pretty = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if pretty else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            REDACTOR,
            renderer,
        ],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    # logging's own error report prints the unformatted record, bypassing the redactor.
    logging.raiseExceptions = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> Any:
    return structlog.stdlib.get_logger(name)
