"""The dashboard in real headless Chromium, over real servers, core and Hypercorn.

The page must render the servers and tubes and show a count change after a put made
during the test; its buttons must work (with the API token typed into the page when the
gateway has one). A screenshot and the final DOM go to the test's temp dir.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from allq.client.raw import JsonHttp
from tests.client_support import serving_gateway
from tests.gateway.rest import TOKEN
from tests.observability.browser import ensure_chromium, open_page


@pytest.fixture(scope="session")
def chromium() -> str:
    return ensure_chromium()


def cell(tube: str, column: str) -> str:
    return f'document.querySelector(\'#tubes tr[data-tube="{tube}"] td[data-col="{column}"]\')'


@asynccontextmanager
async def gateway_http(url: str) -> AsyncIterator[JsonHttp]:
    host, port = url.removeprefix("http://").split(":")
    http = await JsonHttp.connect((host, int(port)))
    try:
        yield http
    finally:
        await http.aclose()


def exists(selector: str) -> str:
    return f"!!document.querySelector({json.dumps(selector)})"


def click(selector: str) -> str:
    return f"document.querySelector({json.dumps(selector)}).click()"


SERVER_ROWS = (
    "[...document.querySelectorAll('#servers tbody tr')].map(r => [r.dataset.server,"
    " r.querySelector('[data-col=state]').textContent,"
    " r.querySelector('[data-col=rtt]').textContent])"
)


async def put(http: JsonHttp, tube: str, body: str) -> None:
    status, answer = await http.request("POST", f"/v1/tubes/{tube}/jobs", {"body": body})
    assert status == 201, answer


async def test_dashboard_renders_servers_tubes_and_live_counts(
    tmp_path: Path, chromium: str
) -> None:
    with trio.fail_after(120):
        async with (
            serving_gateway(tmp_path / "cluster", 2) as served,
            gateway_http(served.url) as http,
        ):
            await put(http, "alpha", "a1")
            await put(http, "alpha", "a2")
            await put(http, "beta", "b1")
            _, got = await http.request("POST", "/v1/reserve", {"tubes": ["beta"]})
            (job,) = got["jobs"]
            bury = f"/v1/jobs/{job['id']}/bury"
            assert (await http.request("POST", bury, {"lease": job["lease"]}))[0] == 200

            async with open_page(chromium, tmp_path / "profile", served.url + "/") as page:
                await page.wait_for(exists('#servers tr[data-server="s2"]'))
                servers = await page.eval(SERVER_ROWS)
                assert sorted(s[:2] for s in servers) == [["s1", "up"], ["s2", "up"]]
                assert all(float(s[2]) >= 0 for s in servers)
                assert await page.wait_for(f"{cell('alpha', 'ready')}?.textContent") == "2"
                assert await page.eval(f"{cell('beta', 'buried')}.textContent") == "1"

                # A put made now shows up by itself (the page polls).
                await put(http, "alpha", "a3")
                await page.wait_for(f"{cell('alpha', 'ready')}.textContent === '3'")
                await page.wait_for(exists("[data-chart=alpha] polyline.depth"))

                # Buried jobs: peek shows the job. Pause works.
                await page.eval(click("[data-buried=beta] button.peek"))
                text = await page.wait_for(
                    "document.querySelector('[data-buried=beta] .job')?.textContent"
                )
                assert job["id"] in text
                assert "b1" in text
                await page.eval(click("#tubes tr[data-tube=alpha] button.pause"))
                await page.wait_for(exists("#tubes tr[data-tube=alpha] button.unpause"))
                _, stats = await http.request("GET", "/v1/tubes/alpha")
                assert stats["paused"] is True

                await page.screenshot(tmp_path / "dashboard.png")
                dom = await page.eval("document.documentElement.outerHTML")
                await trio.Path(tmp_path / "dashboard.html").write_text(dom)
    png = await trio.Path(tmp_path / "dashboard.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 10_000
    assert 'data-server="s1"' in dom
    assert 'data-tube="beta"' in dom
    assert "<h1>allq</h1>" in dom


async def test_dashboard_asks_for_the_token_and_its_buttons_use_it(
    tmp_path: Path, chromium: str
) -> None:
    with trio.fail_after(120):
        async with serving_gateway(tmp_path / "cluster", 1, api_token=TOKEN) as served:
            served.cluster.servers[0].put("alpha")
            async with gateway_http(served.url) as http:
                assert (await http.request("GET", "/dashboard/state"))[0] == 401
                assert (await http.request("GET", "/metrics"))[0] == 401
            async with open_page(chromium, tmp_path / "profile", served.url + "/") as page:
                await page.wait_for("document.getElementById('token-form')?.hidden === false")
                assert await page.eval("document.querySelectorAll('#tubes tbody tr').length") == 0
                await page.eval(
                    f"document.getElementById('token').value = {json.dumps(TOKEN)};"
                    "document.getElementById('token-form').requestSubmit()"
                )
                assert await page.wait_for(f"{cell('alpha', 'ready')}?.textContent") == "1"
                assert await page.eval("document.getElementById('token-form').hidden")
                await page.eval(click("#tubes tr[data-tube=alpha] button.pause"))
                await page.wait_for(exists("#tubes tr[data-tube=alpha] button.unpause"))
                assert (await served.cluster.gateway.tube_stats("alpha"))["paused"] is True
                await page.screenshot(tmp_path / "dashboard-token.png")
