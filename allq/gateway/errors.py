"""Gateway-only error codes (api.md §1): OVERLOADED (429) and NO_SERVER (503).

Both carry `retry_after` seconds for the `Retry-After` header.
"""

from __future__ import annotations

from allq.errors import AllQError


class Overloaded(AllQError):
    """The gateway sheds load: too many requests or waiting reserves in flight."""

    code = "OVERLOADED"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoServer(AllQError):
    """No routable server, or the server of the job is down or unreachable."""

    code = "NO_SERVER"

    def __init__(self, message: str, *, retry_after: float = 1.0, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after = retry_after


#: HTTP statuses of every code the REST v1 front can answer (api.md §1).
V1_HTTP_STATUS: dict[str, int] = {
    "BAD_FORMAT": 400,
    "BAD_TUBE": 400,
    "UNAUTHORIZED": 401,
    "NOT_FOUND": 404,
    "NOT_RESERVED": 409,
    "LEASE_EXPIRED": 409,
    "DRAINING": 409,
    "PAUSED": 409,
    "DEADLINE_SOON": 409,
    "CANCELLED": 409,
    "JOB_TOO_BIG": 413,
    "OVERLOADED": 429,
    "INTERNAL": 500,
    "NO_SERVER": 503,
    "SHUTTING_DOWN": 503,
    "TOO_MANY_TUBES": 507,
    "SERVER_FULL": 507,
}
