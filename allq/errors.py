"""Domain errors with stable codes (semantics.md §16, wire.md §5.4).

Every error that crosses a boundary (engine -> wire -> gateway -> REST) is an `AllQError`
carrying a stable `code`, a human `message` and, when one input is to blame, the `field`
path that names it (``priority``, ``jobs[3].ttr``). Codes never change meaning.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

#: Every stable code, with the HTTP status the gateway maps it to.
HTTP_STATUS: Final[dict[str, int]] = {
    "BAD_FORMAT": 400,
    "BAD_TUBE": 400,
    "NOT_FOUND": 404,
    "NOT_RESERVED": 409,
    "LEASE_EXPIRED": 409,
    "JOB_TOO_BIG": 413,
    "DRAINING": 409,
    "PAUSED": 409,
    "TIMED_OUT": 204,
    "DEADLINE_SOON": 409,
    "TOO_MANY_TUBES": 507,
    "SERVER_FULL": 507,
    "UNAUTHORIZED": 401,
    "INTERNAL": 500,
    "CANCELLED": 409,
    "SHUTTING_DOWN": 503,
}


class AllQError(Exception):
    """A failure with a stable code; "nothing changed" unless the code is INTERNAL."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_record(self) -> dict[str, str]:
        """The `{code, message, field?}` record used by put_batch items and REST bodies."""
        record = {"code": self.code, "message": self.message}
        if self.field is not None:
            record["field"] = self.field
        return record

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"


class BadFormat(AllQError):
    code = "BAD_FORMAT"


class BadTube(AllQError):
    code = "BAD_TUBE"


class NotFound(AllQError):
    code = "NOT_FOUND"


class NotReserved(AllQError):
    code = "NOT_RESERVED"


class LeaseExpired(AllQError):
    code = "LEASE_EXPIRED"


class JobTooBig(AllQError):
    code = "JOB_TOO_BIG"


class Draining(AllQError):
    code = "DRAINING"


class Paused(AllQError):
    """Reserved code: no operation of this version returns it (semantics.md §16)."""

    code = "PAUSED"


class TimedOut(AllQError):
    code = "TIMED_OUT"


class DeadlineSoon(AllQError):
    code = "DEADLINE_SOON"


class TooManyTubes(AllQError):
    code = "TOO_MANY_TUBES"


class ServerFull(AllQError):
    code = "SERVER_FULL"


class Unauthorized(AllQError):
    code = "UNAUTHORIZED"


class Internal(AllQError):
    code = "INTERNAL"


class Cancelled(AllQError):
    """Wire only: a reserve ended by `cancel` before any job was handed over."""

    code = "CANCELLED"


class ShuttingDown(AllQError):
    """Wire only: the server is stopping."""

    code = "SHUTTING_DOWN"


_BY_CODE: Final[dict[str, type[AllQError]]] = {
    cls.code: cls
    for cls in (
        BadFormat,
        BadTube,
        NotFound,
        NotReserved,
        LeaseExpired,
        JobTooBig,
        Draining,
        Paused,
        TimedOut,
        DeadlineSoon,
        TooManyTubes,
        ServerFull,
        Unauthorized,
        Internal,
        Cancelled,
        ShuttingDown,
    )
}


def renumber_item_error(error: dict[str, Any], position: int, index: int) -> dict[str, Any]:
    """A batch item's error record (`{code, message, field?}`) as item `index` of another
    batch: a field path `jobs[position]…` becomes `jobs[index]…` and a bare field `f`
    becomes `jobs[index].f`. Used wherever a batch is split and its answers put back."""
    field = error.get("field")
    if not isinstance(field, str):
        return error
    own = f"jobs[{position}]"
    if field.startswith(own):
        field = f"jobs[{index}]" + field[len(own) :]
    elif not field.startswith("jobs["):
        field = f"jobs[{index}].{field}"
    return {**error, "field": field}


def error_from_code(code: str, message: str, field: str | None = None) -> AllQError:
    """Rebuild a typed error from its wire form; unknown codes become INTERNAL."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return Internal(f"unknown error code {code!r}: {message}", field=field)
    return cls(message, field=field)
