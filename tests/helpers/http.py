"""The HTTP client of the tests: the package's raw JSON-over-HTTP connection."""

from __future__ import annotations

from allq.client.raw import JsonHttp as HttpClient

__all__ = ["HttpClient"]
