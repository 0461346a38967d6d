"""`allq stats`: the cluster as rich tables, once or refreshing (`--watch`).

`render_stats(stats, servers)` takes the answers of `GET /v1/stats` and `GET /v1/servers`
and returns a renderable: a servers table (state, RTT, jobs, last error), a tubes table
(ready, reserved, delayed, buried, waiting, with a total row) and a line naming servers
that did not answer. `watch_stats` redraws it every `interval_s` with `rich.live.Live`.

`StatsWatch` is what `allq stats --watch` redraws: the same picture as the gateway's
dashboard. Each round it also reads the stats of the fullest tubes (at most `max_tubes`)
and keeps their history, so the tubes table gains puts/s and done/s (from the counters
between two rounds) and a sparkline of the queue depth over the last `window_s` seconds.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

STATE_STYLE = {"up": "green", "suspect": "yellow", "down": "bold red", "draining": "cyan"}
COUNTS = ("ready", "reserved", "delayed", "buried", "waiting")


def _num(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "-" if value is None else str(value)


def servers_table(servers: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(title="servers", title_justify="left", expand=False)
    table.add_column("id", style="bold")
    table.add_column("address")
    table.add_column("state")
    table.add_column("rtt ms", justify="right")
    table.add_column("jobs", justify="right")
    table.add_column("in flight", justify="right")
    table.add_column("last error", overflow="fold", max_width=40)
    for server in sorted(servers, key=lambda s: str(s.get("id"))):
        state = str(server.get("state", "?"))
        rtt = server.get("rtt_ms")
        table.add_row(
            str(server.get("id") or "?"),
            str(server.get("address", "")),
            Text(state, style=STATE_STYLE.get(state, "")),
            f"{rtt:.1f}" if isinstance(rtt, int | float) else "-",
            _num(server.get("jobs")),
            _num(server.get("in_flight")),
            str(server.get("last_error") or ""),
        )
    return table


SPARKS = "▁▂▃▄▅▆▇█"


def _depth(tube: Mapping[str, Any]) -> int:
    return sum(int(tube.get(key) or 0) for key in COUNTS)


@dataclass
class _Sample:
    at: float
    depth: int
    puts: int | None
    done: int | None


@dataclass
class TubeHistory:
    """Samples of each tube over `window_s` seconds: rates between rounds, depth sparkline."""

    window_s: float = 300.0
    samples: dict[str, deque[_Sample]] = field(default_factory=dict)

    def add(self, tubes: Sequence[Mapping[str, Any]], at: float) -> None:
        """One round: `tubes` are tube stats (counts, and `total_puts`/`total_completed`)."""
        for tube in tubes:
            name = str(tube.get("name"))
            puts, done = tube.get("total_puts"), tube.get("total_completed")
            queue = self.samples.setdefault(name, deque())
            queue.append(
                _Sample(
                    at,
                    _depth(tube),
                    int(puts) if isinstance(puts, int) else None,
                    int(done) if isinstance(done, int) else None,
                )
            )
            while queue and queue[0].at < at - self.window_s:
                queue.popleft()
        seen = {str(tube.get("name")) for tube in tubes}
        for name in [name for name in self.samples if name not in seen]:
            del self.samples[name]

    def rates(self, name: str) -> tuple[float | None, float | None]:
        """(puts/s, done/s) between the last two rounds; None before two rounds."""
        queue = self.samples.get(name)
        if queue is None or len(queue) < 2 or queue[-1].at <= queue[-2].at:
            return None, None
        last, before = queue[-1], queue[-2]
        seconds = last.at - before.at

        def rate(now: int | None, then: int | None) -> float | None:
            if now is None or then is None:
                return None
            return max(0, now - then) / seconds  # a server restart counts from 0: no negative

        return rate(last.puts, before.puts), rate(last.done, before.done)

    def sparkline(self, name: str, width: int = 20) -> str:
        depths = [sample.depth for sample in self.samples.get(name, ())][-width:]
        if not depths:
            return ""
        top = max(depths)
        if top == 0:
            return SPARKS[0] * len(depths)
        return "".join(SPARKS[round(d / top * (len(SPARKS) - 1))] for d in depths)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def tubes_table(tubes: Sequence[Mapping[str, Any]], history: TubeHistory | None = None) -> Table:
    table = Table(title="tubes", title_justify="left", show_footer=len(tubes) > 1)
    totals = {key: sum(int(t.get(key) or 0) for t in tubes) for key in COUNTS}
    table.add_column("tube", style="bold", footer="total")
    for key in COUNTS:
        table.add_column(key, justify="right", footer=_num(totals[key]))
    if history is not None:
        table.add_column("puts/s", justify="right")
        table.add_column("done/s", justify="right")
        table.add_column(f"depth, last {history.window_s / 60:g} min", style="blue")
    for tube in sorted(tubes, key=lambda t: str(t.get("name"))):
        name = str(tube.get("name"))
        row = [name, *(_num(tube.get(key, 0)) for key in COUNTS)]
        if history is not None:
            puts, done = history.rates(name)
            row += [_rate(puts), _rate(done), history.sparkline(name)]
        table.add_row(*row)
    return table


def render_stats(
    stats: Mapping[str, Any],
    servers: Sequence[Mapping[str, Any]],
    history: TubeHistory | None = None,
) -> RenderableType:
    """The whole view from `/v1/stats` and `/v1/servers` answers (and the watch history)."""
    parts: list[RenderableType] = [servers_table(servers)]
    tubes = stats.get("tubes") or []
    if tubes:
        parts.append(tubes_table(tubes, history))
    else:
        parts.append(Text("no tubes", style="dim"))
    jobs = stats.get("jobs") or {}
    if jobs:
        summary = "  ".join(f"{key} {_num(jobs.get(key, 0))}" for key in (*COUNTS, "total"))
        parts.append(Text(f"jobs: {summary}"))
    unavailable = stats.get("unavailable") or []
    if unavailable:
        parts.append(Text(f"no answer from: {', '.join(map(str, unavailable))}", style="red"))
    return Group(*parts)


def watch_stats(
    fetch: Callable[[], RenderableType],
    *,
    interval_s: float = 2.0,
    console: Console | None = None,
    rounds: int | None = None,
) -> None:
    """Redraw `fetch()` every `interval_s` until Ctrl-C (or `rounds` redraws)."""
    with Live(fetch(), console=console, auto_refresh=False, screen=False) as live:
        done = 1
        while rounds is None or done < rounds:
            time.sleep(interval_s)
            live.update(fetch(), refresh=True)
            done += 1


class StatsSource(Protocol):
    """What `StatsWatch` reads: `allq.client.AllQ` has these."""

    def stats(self) -> dict[str, Any]: ...

    def servers(self) -> list[dict[str, Any]]: ...

    def tube_stats(self, tube: str) -> dict[str, Any]: ...


class StatsWatch:
    """`allq stats --watch`: each `render()` reads the cluster and adds a round of history.

    Per-tube rates need the tube counters, which `/v1/stats` does not carry: the stats of
    the `max_tubes` fullest tubes are read each round (one request each); the others show
    "-". A tube whose stats fail this round (gone meanwhile) is skipped.
    """

    def __init__(
        self,
        source: StatsSource,
        *,
        max_tubes: int = 50,
        window_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        errors: tuple[type[Exception], ...] = (Exception,),
    ) -> None:
        self.source = source
        self.max_tubes = max_tubes
        self.history = TubeHistory(window_s)
        self.clock = clock
        self.errors = errors

    def render(self) -> RenderableType:
        stats = self.source.stats()
        servers = self.source.servers()
        listed = sorted(stats.get("tubes") or [], key=lambda t: (-_depth(t), str(t.get("name"))))
        full: list[Mapping[str, Any]] = []
        for tube in listed[: self.max_tubes]:
            try:
                full.append(self.source.tube_stats(str(tube["name"])))
            except self.errors:
                continue
        self.history.add(full, self.clock())
        return render_stats(stats, servers, self.history)
