"""Logging set-up for every allq process: one line per event, text or JSON (operations.md §5).

Every record becomes one line on stderr with the same fields in both forms:

* text: `time=2026-01-02T03:04:05.678Z level=info logger=allq.server msg="…" key=value …`
  (a value is quoted when it holds a space, `"`, `=` or nothing; newlines are escaped, so
  a traceback stays on its line as `exc="…"`);
* JSON (`--log-json`): `{"time": …, "level": …, "logger": …, "message": …, "key": value}`.

Fields beyond the four come from `extra={...}` on the logging call, and from Hypercorn's
access records (`remote`, `method`, `path`, `status`, `bytes`, `duration_ms`, `protocol`;
its message becomes `METHOD path status`). Only those atoms are taken: the rest of an access
record (every request header, every environment variable) never reaches the log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_ACCESS_KEYS = frozenset({"h", "m", "U", "s", "D"})


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _access_fields(args: Mapping[str, Any]) -> tuple[str, dict[str, object]]:
    """The message and fields of a Hypercorn access record (its `AccessLogAtoms`)."""

    def number(text: object) -> object:
        return int(text) if isinstance(text, str) and text.isdigit() else text

    path = str(args["U"]) + (f"?{args['q']}" if args.get("q") and args["q"] != "-" else "")
    fields: dict[str, object] = {
        "remote": args["h"],
        "method": args["m"],
        "path": path,
        "status": number(args["s"]),
        "bytes": number(args.get("b", "-")),
        "duration_ms": round(int(args["D"]) / 1000, 3),
        "protocol": args.get("H", "-"),
    }
    return f"{args['m']} {path} {args['s']}", fields


def record_fields(record: logging.LogRecord) -> dict[str, object]:
    """time, level, logger, message, then the record's extra fields (and `exc`)."""
    args = record.args
    if isinstance(args, Mapping) and args.keys() >= _ACCESS_KEYS:
        message, extra = _access_fields(args)
    else:
        message, extra = record.getMessage(), {}
    fields: dict[str, object] = {
        "time": _timestamp(record),
        "level": record.levelname.lower(),
        "logger": record.name,
        "message": message,
    }
    for key, value in (*extra.items(), *vars(record).items()):
        if key not in _STANDARD and key not in fields:
            fields[key] = value
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    elif record.stack_info:
        fields["stack"] = record.stack_info
    return fields


def _plain(value: object) -> object:
    """A JSON-ready value: scalars as they are, anything else as its repr."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {key: _plain(value) for key, value in record_fields(record).items()}
        return json.dumps(fields, ensure_ascii=False)


def text_value(value: object) -> str:
    """`value` for a `key=value` line: bare when it is one plain token, else quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else str(_plain(value))
    if text and not any(c in text for c in ' "=\\') and text.isprintable():
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


class TextFormatter(logging.Formatter):
    """`time=… level=… logger=… msg="…" key=value …` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        fields["msg"] = fields.pop("message")
        first = ("time", "level", "logger", "msg")
        ordered = [*first, *(key for key in fields if key not in first)]
        return " ".join(f"{key}={text_value(fields[key])}" for key in ordered)


class _Adopt(logging.Filter):
    """A logger filter that hands the record to the root handlers and stops it there."""

    def filter(self, record: logging.LogRecord) -> bool:
        for handler in logging.getLogger().handlers:
            if record.levelno >= handler.level:
                handler.handle(record)
        return False


def adopt_logger(name: str) -> None:
    """Send logger `name`'s records through our handlers only, whatever handlers it gets.

    For a library that (re)configures its own loggers after we configured ours (Hypercorn
    gives `hypercorn.error` a handler of its own when it first logs): it replaces handlers,
    propagation and level, but not filters.
    """
    logger = logging.getLogger(name)
    if not any(isinstance(f, _Adopt) for f in logger.filters):
        logger.addFilter(_Adopt())


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
