"""`allq up` as a real process: serves REST, reuses its keys, stops cleanly on Ctrl-C.

Rules: real process, real sockets, real time with generous guards; the process is always
reaped; SIGINT must give exit code 130, no traceback and no child process left.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

from tests.helpers.http import HttpClient

URL = re.compile(r"REST API\s+http://([0-9.]+):(\d+)/v1/")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(child) for child in text.split()]


def start_up(tmp_path: Path, out: Path, err: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "allq", "up", "--port", "0"]
    command += ["--line-port", "0", "--socket", "off"]  # no fixed line port / socket in tests
    with out.open("w") as stdout, err.open("w") as stderr:
        return subprocess.Popen(
            [*command, "--data-dir", str(tmp_path / "data")], stdout=stdout, stderr=stderr
        )


async def run_up_once(tmp_path: Path, tag: str) -> None:
    out, err = tmp_path / f"{tag}.out", tmp_path / f"{tag}.err"
    process = start_up(tmp_path, out, err)
    try:
        with trio.fail_after(60):
            while not (match := URL.search(out.read_text())):
                assert process.poll() is None, err.read_text()
                await trio.sleep(0.05)  # polling the banner file: no event to wait on
            client = await HttpClient.connect((match.group(1), int(match.group(2))))
            status, put = await client.request("POST", "/v1/tubes/up/jobs", {"body": tag})
            assert status == 201
            status, got = await client.request(
                "POST", "/v1/reserve", {"tubes": ["up"], "timeout": 5}
            )
            assert status == 200
            assert [job["id"] for job in got["jobs"]] == [put["id"]]
            job = got["jobs"][0]
            status, _ = await client.request(
                "POST", f"/v1/jobs/{job['id']}/done", {"lease": job["lease"]}
            )
            assert status == 200
            status, servers = await client.request("GET", "/v1/servers")
            assert sorted(s["id"] for s in servers["servers"]) == ["s1", "s2"]
            await client.aclose()
            assert children(process.pid) == []  # one process tree: servers and gateway inside
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = err.read_text()
    assert "Traceback" not in log, log
    assert "allq up stopped" in log


async def test_up_serves_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    await run_up_once(tmp_path, "first")
    keys = tmp_path / "data" / "keys"
    made = {path.name: path.read_bytes() for path in keys.iterdir()}
    assert {"server-1.key", "server-2.key", "gateway-client.key", "clients.allow"} <= set(made)
    for name in ("server-1.key", "server-2.key", "gateway-client.key"):
        assert (keys / name).stat().st_mode & 0o777 == 0o600
    await run_up_once(tmp_path, "second")  # the keys of the first start are reused
    assert {path.name: path.read_bytes() for path in keys.iterdir()} == made


async def test_up_keeps_jobs_across_restarts(tmp_path: Path) -> None:
    """Persistence is on by default in allq up: a job put before Ctrl-C is there after."""
    ids = []
    for tag in ("before", "after"):
        out, err = tmp_path / f"{tag}.out", tmp_path / f"{tag}.err"
        process = start_up(tmp_path, out, err)
        try:
            with trio.fail_after(60):
                while not (match := URL.search(out.read_text())):
                    assert process.poll() is None, err.read_text()
                    await trio.sleep(0.05)  # polling the banner file: no event to wait on
                client = await HttpClient.connect((match.group(1), int(match.group(2))))
                if tag == "before":
                    status, put = await client.request("POST", "/v1/tubes/kept/jobs", {"body": "x"})
                    assert status == 201
                    ids.append(put["id"])
                else:
                    status, job = await client.request("GET", f"/v1/jobs/{ids[0]}")
                    assert status == 200, job
                    assert job["state"] == "ready"
                await client.aclose()
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 130
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert (tmp_path / "data" / "server-1" / "LOCK").exists()
