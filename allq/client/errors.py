"""Typed client errors: one class per REST error code (api.md §1), plus transport failures.

Every error the gateway answers becomes an `ApiError` subclass that is *also* the domain
class of the same code (`allq.client.NotFound` is an `allq.errors.NotFound`), so both
`except allq.errors.NotFound` and `except allq.client.ApiError` work. Each carries:

- `code` (the stable code, e.g. ``"LEASE_EXPIRED"``), `message`, `field` (when one input
  is to blame);
- `status` (the HTTP status) and `retry_after` (seconds, from `Retry-After`, on 429/503);
- `done` (a reserve that failed after its `done` part ran: those results, else None).

`TransportError` is a failure to talk to the gateway at all (refused, reset, timed out, a
malformed answer): the request may or may not have been applied.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from allq import errors as domain
from allq.gateway import errors as gateway_errors

if TYPE_CHECKING:
    from allq.client.model import ItemResult


class ApiError(domain.AllQError):
    """The gateway answered an error (`{"error": {"code", "message", "field"?}}`)."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        status: int = 500,
        retry_after: float | None = None,
        done: list[ItemResult] | None = None,
    ) -> None:
        # Not super(): Overloaded/NoServer have their own constructors; this sets it all.
        domain.AllQError.__init__(self, message, field=field)
        self.status = status
        self.retry_after = retry_after
        self.done = done

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class TransportError(ConnectionError):
    """The gateway could not be reached or answered something that is not HTTP/JSON."""


# One class per code: the client's view of each domain error.
class BadFormat(ApiError, domain.BadFormat): ...


class BadTube(ApiError, domain.BadTube): ...


class Unauthorized(ApiError, domain.Unauthorized): ...


class NotFound(ApiError, domain.NotFound): ...


class NotReserved(ApiError, domain.NotReserved): ...


class LeaseExpired(ApiError, domain.LeaseExpired): ...


class Draining(ApiError, domain.Draining): ...


class Paused(ApiError, domain.Paused): ...


class DeadlineSoon(ApiError, domain.DeadlineSoon): ...


class Cancelled(ApiError, domain.Cancelled): ...


class JobTooBig(ApiError, domain.JobTooBig): ...


class Overloaded(ApiError, gateway_errors.Overloaded): ...  # type: ignore[misc]


class Internal(ApiError, domain.Internal): ...


class NoServer(ApiError, gateway_errors.NoServer): ...  # type: ignore[misc]


class ShuttingDown(ApiError, domain.ShuttingDown): ...


class TooManyTubes(ApiError, domain.TooManyTubes): ...


class ServerFull(ApiError, domain.ServerFull): ...


class TimedOut(ApiError, domain.TimedOut): ...


ERRORS: Final[dict[str, type[ApiError]]] = {
    cls.code: cls
    for cls in (
        BadFormat,
        BadTube,
        Unauthorized,
        NotFound,
        NotReserved,
        LeaseExpired,
        Draining,
        Paused,
        DeadlineSoon,
        Cancelled,
        JobTooBig,
        Overloaded,
        Internal,
        NoServer,
        ShuttingDown,
        TooManyTubes,
        ServerFull,
        TimedOut,
    )
}

#: A code for answers that are not in the v1 error shape (a proxy's 502, a legacy 404).
_BY_STATUS: Final[dict[int, type[ApiError]]] = {
    400: BadFormat,
    401: Unauthorized,
    404: NotFound,
    409: NotReserved,
    413: JobTooBig,
    429: Overloaded,
    503: NoServer,
    507: ServerFull,
}


def item_error(record: Mapping[str, Any], status: int = 200) -> ApiError:
    """A typed error from a `{"code", "message", "field"?}` record (batch items too)."""
    code = str(record.get("code", "INTERNAL"))
    message = str(record.get("message", code))
    field = record.get("field")
    cls = ERRORS.get(code)
    if cls is None:
        return Internal(f"unknown error code {code}: {message}", status=status)
    return cls(message, field=field if isinstance(field, str) else None, status=status)


def parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: not something the gateway sends
    return max(0.0, seconds)


def error_from_response(status: int, retry_after: str | None, raw: bytes) -> ApiError:
    """The typed error of a non-2xx answer, whatever its body looks like."""
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = None
    record = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(record, dict):
        error = item_error(record, status)
    else:
        text = record if isinstance(record, str) else raw[:200].decode("utf-8", "replace")
        cls = _BY_STATUS.get(status, Internal)
        error = cls(f"HTTP {status}: {text or 'no body'}", status=status)
    error.retry_after = parse_retry_after(retry_after)
    if isinstance(payload, dict) and isinstance(payload.get("done"), list):
        from allq.client.model import item_results

        error.done = item_results(payload["done"])
    return error
