"""What both HTTP shells share: the base URL, request headers, the stale-socket check.

Keep-alive and Hypercorn (design.md pitfalls 13-15): answers are read by Content-Length
(h11 and http.client both do), never until EOF, and every read has a deadline. An idle
pooled connection the gateway has closed (its keep-alive timeout) is detected before reuse
by a zero-timeout readability check (an idle HTTP/1.1 connection has nothing to read unless
the peer closed it), and a request that fails on a *reused* connection before any byte of
an answer arrived is sent once more on a new connection (the gateway closed it before
reading the request).
"""

from __future__ import annotations

import select
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from allq import __version__


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


DEFAULT_URL = "http://127.0.0.1:8090"
#: Seconds for a request on top of the time the gateway may hold it (long polls).
DEFAULT_TIMEOUT_S = 30.0
#: Idle connections kept per client.
DEFAULT_MAX_IDLE = 16
#: An idle connection older than this is closed instead of reused (Hypercorn: 30 s here).
IDLE_LIMIT_S = 20.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"the gateway URL must be http:// or https://, not {url!r}")
        if not parts.hostname:
            raise ValueError(f"no host in the gateway URL {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"bad port in the gateway URL {url!r}") from None
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def request_headers(
    endpoint: Endpoint, token: str | None, body: bytes, *, has_body: bool
) -> list[tuple[str, str]]:
    headers = [
        ("Host", endpoint.host_header),
        ("User-Agent", f"allq-client/{__version__}"),
        ("Accept", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    if has_body:
        headers.append(("Content-Type", "application/json"))
    if token:
        headers.append(("Authorization", f"Bearer {token}"))
    return headers


def dropped(sock: _HasFileno | None) -> bool:
    """True when an idle connection's socket is readable (EOF or junk) or gone."""
    if sock is None:
        return True
    try:
        fd = sock.fileno()
        if fd < 0:
            return True
        if hasattr(select, "poll"):  # no FD_SETSIZE limit
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
