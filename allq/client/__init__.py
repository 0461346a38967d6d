"""Python clients for the allq gateway's REST v1 API (operations.md §4).

- `AllQ(url)`: synchronous (standard library `http.client`, keep-alive, thread-safe).
- `AsyncAllQ(url)`: Trio (h11 over Trio sockets, a pool of keep-alive connections).

Both have the same methods: put, put_many, parent, reserve (with `done=` folded in), done,
done_many, touch, release, bury, kick, kick_job, peek, get, delete, children_started,
pause, unpause, throttle, unthrottle, drain, undrain, clear, stats, tube_stats, tubes,
servers. Bodies are bytes in and bytes out. Errors are typed: one `ApiError` subclass per
error code (also the `allq.errors` class of that code) with `.code`, `.status` and
`.retry_after`; `TransportError` when the gateway cannot be reached.

    with AllQ("http://127.0.0.1:8090") as q:
        q.put("emails", b'{"to": "a@example.com"}')
        for job in q.reserve("emails", timeout=20):
            q.done(job)
"""

from __future__ import annotations

from allq.client.aio import AsyncAllQ
from allq.client.errors import (
    ApiError,
    BadFormat,
    BadTube,
    Cancelled,
    DeadlineSoon,
    Draining,
    Internal,
    JobTooBig,
    LeaseExpired,
    NoServer,
    NotFound,
    NotReserved,
    Overloaded,
    Paused,
    ServerFull,
    ShuttingDown,
    TimedOut,
    TooManyTubes,
    TransportError,
    Unauthorized,
)
from allq.client.http import DEFAULT_URL
from allq.client.model import ItemResult, Job, NewJob, Put, Reserved
from allq.client.sync import AllQ

__all__ = [
    "DEFAULT_URL",
    "AllQ",
    "ApiError",
    "AsyncAllQ",
    "BadFormat",
    "BadTube",
    "Cancelled",
    "DeadlineSoon",
    "Draining",
    "Internal",
    "ItemResult",
    "Job",
    "JobTooBig",
    "LeaseExpired",
    "NewJob",
    "NoServer",
    "NotFound",
    "NotReserved",
    "Overloaded",
    "Paused",
    "Put",
    "Reserved",
    "ServerFull",
    "ShuttingDown",
    "TimedOut",
    "TooManyTubes",
    "TransportError",
    "Unauthorized",
]
