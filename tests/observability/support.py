"""Shared by the observability tests: scrape `/metrics` and index the samples."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families
from quart_trio import QuartTrio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(app: QuartTrio, token: str | None = None) -> tuple[int, str, str]:
    """(status, content type, body) of `GET /metrics` through the app's test client."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    response = await app.test_client().get("/metrics", headers=headers)
    body = await response.get_data(as_text=True)
    assert isinstance(body, str)
    return response.status_code, response.headers["Content-Type"], body


def parse(text: str) -> Samples:
    """Every sample of the exposition, parsed by prometheus_client's own parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def values(samples: Samples, name: str) -> list[Mapping[str, str]]:
    """The label sets `name` has samples for."""
    return [dict(labels) for (sample, labels) in samples if sample == name]
