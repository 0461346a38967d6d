"""`hypercorn --worker-class trio allq.gateway.asgi:app`: the core in the app's lifespan.

End to end: real `allq server` processes, a real `hypercorn` process configured by the
environment, HTTP through an h11 client; every wait bounded (real time, design.md
pitfall 23) and every process stopped or killed at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from allq.config import ConfigError
from allq.gateway.asgi import (
    LifespanCore,
    core_config_from_env,
    logging_from_env,
    settings_from_env,
)
from allq.gateway.errors import NoServer
from tests.helpers.cluster import make_keys
from tests.helpers.http import HttpClient
from tests.helpers.processes import AllqProcess, server_args

HYPERCORN = Path(sys.executable).parent / "hypercorn"
RUNNING = re.compile(r"Running on http://([0-9.]+):(\d+)")


def env_for(keys: Path, servers: str = "127.0.0.1:5555", **extra: str) -> dict[str, str]:
    return {
        "ALLQ_SERVERS": servers,
        "ALLQ_KEY": str(keys / "client-1.key"),
        "ALLQ_SERVER_KEY": str(keys / "server.pub"),
        **extra,
    }


# -- settings: every bad one names its variable --------------------------------------------


def test_a_good_environment_gives_the_core_and_app_settings(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    env = env_for(keys, "127.0.0.1:5555, [::1]:5556", ALLQ_API_TOKEN="t", ALLQ_MAX_INFLIGHT="5")
    config = core_config_from_env(env)
    assert [(s.address.host, s.address.port) for s in config.servers] == [
        ("127.0.0.1", 5555),
        ("::1", 5556),
    ]
    settings = settings_from_env(env)
    assert (settings["api_token"], settings["max_inflight"]) == ("t", 5)
    assert logging_from_env(env) == ("INFO", False)
    assert logging_from_env({"ALLQ_LOG_LEVEL": "debug", "ALLQ_LOG_JSON": "1"}) == ("DEBUG", True)


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"ALLQ_SERVERS": ""}, "ALLQ_SERVERS"),
        ({"ALLQ_SERVERS": "127.0.0.1"}, "ALLQ_SERVERS"),
        ({"ALLQ_SERVERS": "a:1,,b:2"}, "ALLQ_SERVERS"),
        ({"ALLQ_KEY": ""}, "ALLQ_KEY"),
        ({"ALLQ_KEY": "/nonexistent/client.key"}, "ALLQ_KEY"),
        ({"ALLQ_KEY": "SERVER_PUB"}, "ALLQ_KEY"),
        ({"ALLQ_SERVER_KEY": ""}, "ALLQ_SERVER_KEY"),
        ({"ALLQ_SERVER_KEY": "CLIENT_PUB"}, "ALLQ_SERVER_KEY"),
    ],
)
def test_a_bad_core_setting_names_its_variable(
    tmp_path: Path, change: dict[str, str], variable: str
) -> None:
    keys = make_keys(tmp_path / "keys")
    named = {"SERVER_PUB": str(keys / "server.pub"), "CLIENT_PUB": str(keys / "client-1.pub")}
    env = env_for(keys) | {k: named.get(v, v) for k, v in change.items()}
    with pytest.raises(ConfigError, match=f"^{variable}[ =]") as caught:
        core_config_from_env(env)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("read", "variable", "value"),
    [
        (settings_from_env, "ALLQ_MAX_WAITING", "many"),
        (settings_from_env, "ALLQ_MAX_INFLIGHT", "0"),
        (settings_from_env, "ALLQ_MAX_BODY_BYTES", "1.5"),
        (settings_from_env, "ALLQ_LONG_POLL_CAP_S", "301"),
        (logging_from_env, "ALLQ_LOG_LEVEL", "loud"),
        (logging_from_env, "ALLQ_LOG_JSON", "maybe"),
    ],
)
def test_a_bad_app_or_log_setting_names_its_variable(
    read: Callable[[Mapping[str, str]], object], variable: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}="):
        read({variable: value})


async def test_the_core_answers_no_server_until_the_lifespan_started_it(tmp_path: Path) -> None:
    core = LifespanCore(core_config_from_env(env_for(make_keys(tmp_path / "keys"))))
    assert core.ready() == (False, "the gateway core is not running")
    assert core.servers() == []
    with pytest.raises(NoServer):
        await core.put("t", {"body": b"x"})
    await core.stop()  # never started: returns at once


# -- the real thing -------------------------------------------------------------------------


@contextmanager
def hypercorn(log_path: Path, env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[bytes]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ALLQ_")}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(HYPERCORN), "--worker-class", "trio", *args, "allq.gateway.asgi:app"],
            env=base | env,
            stderr=log,
            stdout=log,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


async def running_address(process: subprocess.Popen[bytes], log_path: Path) -> tuple[str, int]:
    log = trio.Path(log_path)
    while not (match := RUNNING.search(await log.read_text())):
        assert process.poll() is None, f"hypercorn exited early:\n{await log.read_text()}"
        await trio.sleep(0.05)  # polling a log file: no event crosses the process boundary
    return match.group(1), int(match.group(2))


async def test_hypercorn_serves_the_app_over_real_servers_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    keys = make_keys(tmp_path / "keys")
    servers = [AllqProcess(tmp_path / f"s{i}.log", *server_args(keys, f"s{i}")) for i in (1, 2)]
    log_path = tmp_path / "hypercorn.log"
    try:
        with trio.fail_after(60):
            ports = [(await s.address())[1] for s in servers]
            env = env_for(keys, ",".join(f"127.0.0.1:{p}" for p in ports), ALLQ_LOG_JSON="1")
            with hypercorn(
                log_path, env, "--bind", "127.0.0.1:0", "--graceful-timeout", "5",
                "--access-logfile", "-",
            ) as process:  # fmt: skip
                address = await running_address(process, log_path)
                client = await HttpClient.connect(address)
                while (await client.request("GET", "/readyz"))[0] != 200:  # noqa: ASYNC110
                    await trio.sleep(0.05)  # polling the API under test: no event to wait on
                status, put = await client.request("POST", "/v1/tubes/asgi/jobs", {"body": "hi"})
                assert status == 201, put
                assert put["id"].split(",")[0] in {"s1", "s2"}
                status, got = await client.request("POST", "/v1/reserve", {"tubes": ["asgi"]})
                assert status == 200, got
                [job] = got["jobs"]
                assert (job["id"], job["body"]) == (put["id"], "hi")
                status, done = await client.request(
                    "POST", f"/v1/jobs/{job['id']}/done", {"lease": job["lease"]}
                )
                assert status == 200, done
                status, servers_view = await client.request("GET", "/v1/servers")
                assert {s["id"] for s in servers_view["servers"]} == {"s1", "s2"}
                await client.aclose()  # an idle keep-alive would hold the drain (pitfall 13)

                process.send_signal(signal.SIGTERM)
                code = await trio.to_thread.run_sync(process.wait, 20)
        text = log_path.read_text()
        assert code == 0, text
        lines = [json.loads(line) for line in text.splitlines()]  # every line structured
        messages = [(line["logger"], line["message"]) for line in lines]
        assert ("allq.gateway.asgi", "gateway core started with 2 server(s)") in messages
        assert ("hypercorn.access", f"POST /v1/jobs/{job['id']}/done 200") in messages
        assert messages[-1] == ("allq.gateway.asgi", "gateway core stopped")
        assert not [line for line in lines if line["level"] in ("error", "critical")]
    finally:
        for server in servers:
            assert server.stop() == 0, server.log()


@pytest.mark.parametrize("workers", ["0", "1"])
async def test_a_missing_setting_stops_hypercorn_with_one_line(
    tmp_path: Path, workers: str
) -> None:
    keys = make_keys(tmp_path / "keys")
    env = env_for(keys)
    del env["ALLQ_SERVERS"]
    log_path = tmp_path / "hypercorn.log"
    with hypercorn(log_path, env, "--bind", "127.0.0.1:0", "--workers", workers) as process:
        code = await trio.to_thread.run_sync(process.wait, 30)
    [line] = log_path.read_text().splitlines()
    assert "level=critical logger=allq.gateway.asgi" in line
    assert 'msg="cannot start: ALLQ_SERVERS is not set: ' in line
    # In-process (`--workers 0`) our exit code 2 is Hypercorn's; with worker processes
    # Hypercorn 0.18 stops but exits 0 (hypercorn #269, PR #372 open).
    assert code == (2 if workers == "0" else 0)
