"""Logging: structlog to stderr, human-readable or JSON, with secrets redacted.

Code never passes a secret to a logger (secrets travel as ``crmsync.secrets.Secret``, whose repr is
``***``); the redaction processor is a second line of defence for keys that look secret.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

from crmsync.config import Settings

SECRET_KEY_PATTERN = re.compile(r"pass|secret|token|credential|authorization|api_key", re.I)
# user:password@ inside URLs that someone logs by mistake
URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.I)


def redact(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in list(event.items()):
        if key != "event" and SECRET_KEY_PATTERN.search(key):
            event[key] = "***"
        elif isinstance(value, str):
            event[key] = URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", value)
    return event


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # Look sys.stderr up at each write: a stream bound at configure time may be closed later
        # (a test harness swapping stderr, a daemon redirecting it).
        logger_factory=lambda *_args: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(level, logging.WARNING), handlers=[_CurrentStderr()], force=True)


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that always writes to the current ``sys.stderr``."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass
