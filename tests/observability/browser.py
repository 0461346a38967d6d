"""Headless Chromium driven over the DevTools protocol, for the dashboard test.

Why this way: the test must see the page *change* after a put made during the test, so
it needs a live page it can query repeatedly (`--dump-dom` renders once). The DevTools
protocol is JSON over a websocket; the websocket is spoken with `wsproto` (already
installed: Hypercorn depends on it) over a Trio TCP stream, so no dependency is added.

`ensure_chromium()` installs Debian's `chromium` with apt-get when it is missing and fails
the test (never skips) when that does not work. `open_page(chromium, profile, url)`
starts `chromium --headless --no-sandbox --disable-gpu ... --remote-debugging-port=0`,
reads the port from `DevToolsActivePort` in the profile directory, attaches to the page
and yields a `Page`; on exit the whole browser process group is killed and reaped.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from allq.client.raw import JsonHttp

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
    "--remote-debugging-port=0",
)


def ensure_chromium() -> str:
    """The path of Debian's chromium, installed with apt-get if missing (fails if it can't)."""
    path = shutil.which("chromium")
    if path is not None:
        return path
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"cannot install chromium: {' '.join(command)}: {exc}")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout)[-2000:]
            pytest.fail(
                f"cannot install chromium: {' '.join(command)} exited {done.returncode}\n{tail}"
            )
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("apt-get installed chromium but no 'chromium' is on PATH")
    return path


class Page:
    """One page target over a DevTools websocket: `await page.call(method, **params)`."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.next_id = 0
        self.partial = ""
        self.messages: list[dict[str, Any]] = []

    async def _receive(self) -> None:
        data = await self.stream.receive_some(1 << 16)
        if not data:
            raise trio.BrokenResourceError("chromium closed the DevTools connection")
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                self.partial += event.data
                if event.message_finished:
                    self.messages.append(json.loads(self.partial))
                    self.partial = ""
            elif isinstance(event, Ping):
                await self.stream.send_all(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                raise trio.BrokenResourceError(f"DevTools connection closed: {event.reason}")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        wanted = self.next_id
        text = json.dumps({"id": wanted, "method": method, "params": params})
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))
        while True:
            for index, message in enumerate(self.messages):
                if message.get("id") == wanted:
                    del self.messages[index]
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    result: dict[str, Any] = message.get("result", {})
                    return result
            self.messages = [m for m in self.messages if "id" in m]  # drop events
            await self._receive()

    async def eval(self, expression: str) -> Any:
        answer = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, limit_s: float = 20.0) -> Any:
        """Evaluate `expression` every 50 ms until it is truthy; its value (a DOM node comes
        back as `{}`, which is falsy here: ask for `!!node`)."""
        with trio.fail_after(limit_s):
            while not (value := await self.eval(expression)):  # noqa: ASYNC110 (in the browser)
                await trio.sleep(0.05)
        return value

    async def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])
        await trio.Path(path).write_bytes(data)
        return data


async def _devtools_port(profile: Path, process: trio.Process) -> int:
    port_file = trio.Path(profile / "DevToolsActivePort")
    with trio.fail_after(30):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"chromium exited with {process.returncode}")
            if await port_file.exists():
                lines = (await port_file.read_text()).split()
                if lines and lines[0].isdigit():
                    return int(lines[0])
            await trio.sleep(0.05)


async def _connect(port: int, url: str) -> Page:
    http = await JsonHttp.connect(("127.0.0.1", port))
    try:
        with trio.fail_after(20):
            while True:
                status, targets = await http.request("GET", "/json/list")
                pages = [t for t in targets or [] if t.get("type") == "page"]
                page = next((t for t in pages if t.get("url", "").startswith(url)), None)
                if status == 200 and page is not None:
                    break
                await trio.sleep(0.05)
    finally:
        await http.aclose()
    target = page["webSocketDebuggerUrl"].split(f":{port}", 1)[1]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=f"127.0.0.1:{port}", target=target)))
    with trio.fail_after(10):
        while True:
            data = await stream.receive_some(1 << 16)
            if not data:
                raise RuntimeError("chromium closed the websocket handshake")
            ws.receive_data(data)
            events = list(ws.events())
            if any(isinstance(e, RejectConnection) for e in events):
                raise RuntimeError("chromium refused the DevTools websocket")
            if any(isinstance(e, AcceptConnection) for e in events):
                return Page(stream, ws)


@asynccontextmanager
async def open_page(chromium: str, profile: Path, url: str) -> AsyncIterator[Page]:
    await trio.Path(profile).mkdir(parents=True, exist_ok=True)
    log = await trio.to_thread.run_sync(lambda: (profile.parent / "chromium.log").open("wb"))
    command = [chromium, *FLAGS, f"--user-data-dir={profile}", url]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
    )
    try:
        page = await _connect(await _devtools_port(profile, process), url)
        try:
            yield page
        finally:
            with trio.move_on_after(2, shield=True):
                await page.stream.aclose()
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the browser and its helper processes
        except ProcessLookupError:
            pass
        with trio.move_on_after(10, shield=True):
            await process.wait()
        log.close()
