"""`allq stats --watch`'s picture (`StatsWatch`) rendered once to a string and checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from rich.console import Console, RenderableType

from allq.client import AllQ
from allq.client.errors import ApiError, NotFound
from allq.stats_view import StatsWatch, TubeHistory
from tests.client_support import serving_gateway


def text_of(renderable: RenderableType) -> str:
    console = Console(record=True, width=160)
    console.print(renderable)
    return console.export_text()


class Source:
    """A gateway that answers from dicts the test changes between rounds."""

    def __init__(self) -> None:
        self.tubes: dict[str, dict[str, Any]] = {}

    def stats(self) -> dict[str, Any]:
        return {"jobs": {}, "tubes": list(self.tubes.values()), "unavailable": []}

    def servers(self) -> list[dict[str, Any]]:
        return [
            {"id": "s1", "address": "10.0.0.1:7000", "state": "up", "rtt_ms": 0.84, "jobs": 4},
            {"id": "s2", "address": "10.0.0.2:7000", "state": "suspect", "rtt_ms": 12.5},
        ]

    def tube_stats(self, tube: str) -> dict[str, Any]:
        if tube == "gone":
            raise NotFound("no such tube")
        return self.tubes[tube]


def test_watch_shows_servers_counts_rates_and_depth() -> None:
    source = Source()
    now = [100.0]
    watch = StatsWatch(source, clock=lambda: now[0], errors=(ApiError,))
    source.tubes = {
        "mail": {"name": "mail", "ready": 2, "reserved": 1, "total_puts": 10, "total_completed": 7},
        "gone": {"name": "gone", "ready": 0},
    }
    first = text_of(watch.render())
    assert "puts/s" in first
    now[0] += 2.0
    source.tubes["mail"] = {
        "name": "mail",
        "ready": 8,
        "reserved": 2,
        "total_puts": 30,
        "total_completed": 17,
    }
    text = text_of(watch.render())
    assert "s1" in text
    assert "10.0.0.1:7000" in text
    assert "suspect" in text
    assert "0.8" in text  # RTT in ms
    assert "12.5" in text
    mail = next(line for line in text.splitlines() if "mail" in line)
    cells = mail.replace("│", " ").split()
    # tube, ready, reserved, delayed, buried, waiting, puts/s, done/s, sparkline
    assert cells[:8] == ["mail", "8", "2", "0", "0", "0", "10.0", "5.0"]
    assert cells[8] == "▃█"  # depth 3 then 10
    assert "gone" in text  # listed by /v1/stats, no rates: its stats failed


def test_history_rates_never_go_negative_and_forget_old_samples() -> None:
    history = TubeHistory(window_s=10)
    history.add([{"name": "t", "ready": 1, "total_puts": 50, "total_completed": 5}], 0.0)
    history.add([{"name": "t", "ready": 1, "total_puts": 3, "total_completed": 1}], 1.0)
    assert history.rates("t") == (0.0, 0.0)  # a server restart: counters went down
    history.add([{"name": "t", "ready": 0, "total_puts": 5, "total_completed": 3}], 20.0)
    assert len(history.samples["t"]) == 1
    assert history.rates("t") == (None, None)
    assert history.sparkline("t") == "▁"
    history.add([], 21.0)
    assert "t" not in history.samples


async def test_watch_against_a_real_gateway(tmp_path: Path) -> None:
    async with serving_gateway(tmp_path, 2) as served:
        with AllQ(served.url) as client:
            clock = [0.0]
            watch = StatsWatch(client, clock=lambda: clock[0], errors=(ApiError,))
            for i in range(3):
                await trio.to_thread.run_sync(client.put, "alpha", f"a{i}")
            await trio.to_thread.run_sync(watch.render)
            clock[0] = 1.0
            for i in range(4):
                await trio.to_thread.run_sync(client.put, "alpha", f"b{i}")
            text = text_of(await trio.to_thread.run_sync(watch.render))
    alpha = next(line for line in text.splitlines() if "alpha" in line)
    cells = alpha.replace("│", " ").split()
    assert cells[:3] == ["alpha", "7", "0"]
    assert cells[6] == "4.0"  # 4 puts in the 1 s between the two rounds
    for server in ("s1", "s2"):
        row = next(line for line in text.splitlines() if f" {server} " in line)
        assert " up " in row
