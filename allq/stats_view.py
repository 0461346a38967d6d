"""`allq stats`: the cluster as rich tables, once or refreshing (`--watch`).

`render_stats(stats, servers)` takes the answers of `GET /v1/stats` and `GET /v1/servers`
and returns a renderable: a servers table (state, RTT, jobs, last error), a tubes table
(ready, reserved, delayed, buried, waiting, with a total row) and a line naming servers
that did not answer. `watch_stats` redraws it every `interval_s` with `rich.live.Live`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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


def tubes_table(tubes: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(title="tubes", title_justify="left", show_footer=len(tubes) > 1)
    totals = {key: sum(int(t.get(key) or 0) for t in tubes) for key in COUNTS}
    table.add_column("tube", style="bold", footer="total")
    for key in COUNTS:
        table.add_column(key, justify="right", footer=_num(totals[key]))
    for tube in sorted(tubes, key=lambda t: str(t.get("name"))):
        table.add_row(str(tube.get("name")), *(_num(tube.get(key, 0)) for key in COUNTS))
    return table


def render_stats(stats: Mapping[str, Any], servers: Sequence[Mapping[str, Any]]) -> RenderableType:
    """The whole view from `/v1/stats` and `/v1/servers` answers."""
    parts: list[RenderableType] = [servers_table(servers)]
    tubes = stats.get("tubes") or []
    if tubes:
        parts.append(tubes_table(tubes))
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
