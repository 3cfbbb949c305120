"""Logging: structlog events, JSON when not on a terminal, with a redactor that runs last.

The redactor is the guarantee, not a convention: it drops keys that name personal data or
credentials, and scrubs e-mail addresses, IP addresses and every configured secret value from
whatever is rendered (event text, values, exception tracebacks).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

SENSITIVE_KEYS = frozenset(
    {
        "email", "phone", "ip", "first_name", "last_name", "name", "customer", "address",
        "api_key", "api_secret", "secret", "token", "password", "authorization", "site_key",
        "session_token", "headers",
    }
)  # fmt: skip
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
IPV6 = re.compile(r"\b(?:[0-9a-fA-F]{1,4}:){3,7}[0-9a-fA-F]{1,4}\b")
REDACTED = "[redacted]"


class Redactor:
    """A structlog processor; also used for dead-letter headers and error texts."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is scrubbed whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def scrub(self, text: str, *, values: Iterable[str] = ()) -> str:
        """`values`: literal personal values to scrub too (e.g. of the orders in a request)."""
        for value in sorted({v for v in values if len(v) >= 3}, key=len, reverse=True):
            text = text.replace(value, REDACTED)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        text = EMAIL.sub(REDACTED, text)
        text = IPV4.sub(REDACTED, text)
        return IPV6.sub(REDACTED, text)

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, bool | int | float) or value is None:
            return value
        if isinstance(value, dict):
            return {
                k: REDACTED if k in SENSITIVE_KEYS else self._value(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._value(v) for v in value]
        return self.scrub(str(value))

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            if key in SENSITIVE_KEYS:
                event_dict[key] = REDACTED
            else:
                event_dict[key] = self._value(event_dict[key])
        return event_dict


REDACTOR = Redactor()


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
