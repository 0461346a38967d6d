"""The real `allq server` process over real loopback TCP with real keys (real time).

Rules: one smoke test per behaviour that needs the real process; each is guarded by a
generous `trio.fail_after`; the process is always stopped and reaped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from allq.errors import TimedOut
from allq.wire.client import open_client
from allq.wire.keyfiles import keygen, load_public_key, load_secret_key
from allq.wire.stream import HandshakeFailed
from tests.helpers.processes import AllqProcess, server_args


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    keygen(tmp_path / "keys", clients=2, force=False)
    return tmp_path / "keys"


@pytest.fixture
def server(keys: Path, tmp_path: Path) -> Iterator[AllqProcess]:
    process = AllqProcess(tmp_path / "server.log", *server_args(keys, "smoke"))
    try:
        yield process
    finally:
        process.stop()


async def test_put_reserve_done_over_real_tcp(keys: Path, server: AllqProcess) -> None:
    with trio.fail_after(30):
        host, port = await server.address()
        client_keys = load_secret_key(keys / "client-1.key")
        server_key = load_public_key(keys / "server.pub")
        async with open_client(host, port, client_keys, server_key) as client:
            put = await client.request("put", tube="smoke", body=b"\x00payload\xff", priority=3)
            jobs = await client.request("reserve", tubes=["smoke"], timeout=5)
            assert jobs[0]["id"] == put["id"]
            assert jobs[0]["body"] == b"\x00payload\xff"
            assert await client.request("done", job_id=jobs[0]["id"], lease=jobs[0]["lease"]) == {}
            with pytest.raises(TimedOut):
                await client.request("reserve", tubes=["smoke"], timeout=0.2)
            stats = await client.request("stats")
            assert stats["server_id"] == "smoke"
            assert stats["connections"] == 1
    assert server.stop() == 0
    assert "graceful shutdown" in server.log()


async def test_unlisted_client_gets_nothing(
    keys: Path, server: AllqProcess, tmp_path: Path
) -> None:
    keygen(tmp_path / "stranger", clients=1, force=False)
    with trio.fail_after(30):
        host, port = await server.address()
        stranger = load_secret_key(tmp_path / "stranger" / "client-1.key")
        with pytest.raises(HandshakeFailed) as failure:
            async with open_client(host, port, stranger, load_public_key(keys / "server.pub")):
                pass
        assert failure.value.reason == "refused"


def test_server_refuses_to_start_without_keys(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "allq", "server", "--port", "0", "--allow", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert result.returncode == 2
    assert "--key" in result.stderr
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "allq",
            "server",
            "--port",
            "0",
            "--key",
            str(tmp_path / "missing.key"),
            "--allow",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "missing.key" in result.stderr
