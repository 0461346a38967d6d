"""`hypercorn --worker-class trio allq.gateway.asgi:app`: the core in the app's lifespan.

Configuration: the `[gateway]` settings of `allq gateway` (environment > `ALLQ_CONFIG` file
> default), with the same errors, and the entry's former names refused. End to end: real
`allq server` processes, a real `hypercorn` process configured by the environment and a
config file, HTTP through an h11 client; every wait bounded (real time, design.md pitfall
23) and every process stopped or killed at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from allq.cli import EXIT_USAGE, main
from allq.config import ConfigError
from allq.gateway.asgi import (
    OLD_NAMES,
    LifespanCore,
    logging_from_env,
    process_config_from_env,
    unused_settings,
)
from allq.gateway.errors import NoServer
from allq.gateway.process import core_config
from allq.settings import SETTINGS
from tests.helpers.cluster import make_keys
from tests.helpers.http import HttpClient
from tests.helpers.processes import AllqProcess, server_args

HYPERCORN = Path(sys.executable).parent / "hypercorn"
RUNNING = re.compile(r"Running on http://([0-9.]+):(\d+)")


def env_for(keys: Path, servers: str = "127.0.0.1:5555", **extra: str) -> dict[str, str]:
    return {
        "ALLQ_GATEWAY_SERVERS": servers,
        "ALLQ_GATEWAY_KEY": str(keys / "client-1.key"),
        "ALLQ_GATEWAY_SERVER_KEY": str(keys / "server.pub"),
        **extra,
    }


def start(env: dict[str, str]) -> None:
    """What `EnvApp.load` reads and checks before it builds the app."""
    logging_from_env(env)
    core_config(process_config_from_env(env))


def startup_error(env: dict[str, str]) -> str:
    """The one line the entry stops with."""
    with pytest.raises(ConfigError) as caught:
        start(env)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- settings: allq gateway's, by the same code -------------------------------------------


def test_the_gateway_settings_come_from_the_environment(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    env = env_for(
        keys,
        "127.0.0.1:5555, [::1]:5556",
        ALLQ_API_TOKEN="t",  # the table's original name of gateway.api_token
        ALLQ_GATEWAY_MAX_INFLIGHT="5",
        ALLQ_GATEWAY_MAX_WAITING="6",
        ALLQ_GATEWAY_MAX_BODY_BYTES="4096",
        ALLQ_GATEWAY_LONG_POLL_CAP="30",
        ALLQ_GATEWAY_FAIL_AFTER="7",
        ALLQ_GATEWAY_PROBE_INTERVAL="0.5",
        ALLQ_GATEWAY_REQUEST_TIMEOUT="3",
    )
    config = process_config_from_env(env)
    assert (config.api_token, config.max_inflight, config.max_waiting) == ("t", 5, 6)
    assert (config.max_body_bytes, config.long_poll_cap_s) == (4096, 30.0)
    core = core_config(config)
    assert [(s.address.host, s.address.port) for s in core.servers] == [
        ("127.0.0.1", 5555),
        ("::1", 5556),
    ]
    assert core.health.fail_after == 7
    assert (core.links.probe_interval_s, core.links.request_timeout_s) == (0.5, 3.0)
    assert logging_from_env(env) == ("INFO", False)
    env |= {"ALLQ_GATEWAY_LOG_LEVEL": "debug", "ALLQ_GATEWAY_LOG_JSON": "1"}
    assert logging_from_env(env) == ("DEBUG", True)


def test_the_config_file_named_by_allq_config_is_under_the_environment(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    toml = tmp_path / "allq.toml"
    toml.write_text(
        "[gateway]\n"
        'servers = ["127.0.0.1:6000"]\n'
        f'key = "{keys / "client-1.key"}"\n'
        f'server_key = "{keys / "server.pub"}"\n'
        'max_inflight = 7\nmax_waiting = 8\nlog_level = "WARNING"\n'
    )
    env = {"ALLQ_CONFIG": str(toml), "ALLQ_GATEWAY_MAX_WAITING": "9"}
    config = process_config_from_env(env)
    assert config.servers == ["127.0.0.1:6000"]  # file
    assert config.max_inflight == 7  # file
    assert config.max_waiting == 9  # environment over file
    assert config.long_poll_cap_s == 300.0  # default
    assert logging_from_env(env) == ("WARNING", False)
    assert core_config(config).servers[0].address.port == 6000


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"ALLQ_GATEWAY_SERVERS": None}, "setting gateway.servers is not set"),
        ({"ALLQ_GATEWAY_SERVERS": "127.0.0.1"}, "gateway.servers = '127.0.0.1'"),
        ({"ALLQ_GATEWAY_KEY": None}, "setting gateway.key is not set"),
        ({"ALLQ_GATEWAY_KEY": "/nonexistent/client.key"}, "/nonexistent/client.key"),
        ({"ALLQ_GATEWAY_KEY": "SERVER_PUB"}, "server.pub"),
        ({"ALLQ_GATEWAY_SERVER_KEY": None}, "setting gateway.server_key is not set"),
        ({"ALLQ_GATEWAY_SERVER_KEY": "CLIENT_PUB"}, "client-1.pub"),
        ({"ALLQ_GATEWAY_MAX_INFLIGHT": "0"}, "gateway.max_inflight = '0'"),
        ({"ALLQ_GATEWAY_MAX_WAITING": "many"}, "gateway.max_waiting = 'many'"),
        ({"ALLQ_GATEWAY_MAX_BODY_BYTES": "1.5"}, "gateway.max_body_bytes = '1.5'"),
        ({"ALLQ_GATEWAY_LONG_POLL_CAP": "301"}, "gateway.long_poll_cap = '301'"),
        ({"ALLQ_GATEWAY_LOG_LEVEL": "loud"}, "gateway.log_level = 'loud'"),
        ({"ALLQ_GATEWAY_LOG_JSON": "maybe"}, "gateway.log_json = 'maybe'"),
    ],
)
def test_a_bad_setting_stops_it_with_the_same_line_as_allq_gateway(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, str | None],
    named: str,
) -> None:
    keys = make_keys(tmp_path / "keys")
    files = {"SERVER_PUB": str(keys / "server.pub"), "CLIENT_PUB": str(keys / "client-1.pub")}
    env = env_for(keys)
    for name, value in change.items():
        env.pop(name, None)
        if value is not None:
            env[name] = files.get(value, value)
    message = startup_error(env)
    assert named in message
    # `allq gateway` given the same environment stops with the same line
    for name in [k for k in os.environ if k.startswith("ALLQ_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["gateway"]) == EXIT_USAGE
    assert capsys.readouterr().err == f"allq gateway: {message}\n"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("ALLQ_SERVERS", "ALLQ_GATEWAY_SERVERS"),
        ("ALLQ_KEY", "ALLQ_GATEWAY_KEY"),
        ("ALLQ_MAX_BODY_BYTES", "ALLQ_GATEWAY_MAX_BODY_BYTES"),
        ("ALLQ_MAX_INFLIGHT", "ALLQ_GATEWAY_MAX_INFLIGHT"),
        ("ALLQ_MAX_WAITING", "ALLQ_GATEWAY_MAX_WAITING"),
        ("ALLQ_LONG_POLL_CAP_S", "ALLQ_GATEWAY_LONG_POLL_CAP"),
        ("ALLQ_LOG_LEVEL", "ALLQ_GATEWAY_LOG_LEVEL"),
        ("ALLQ_LOG_JSON", "ALLQ_GATEWAY_LOG_JSON"),
    ],
)
def test_a_former_name_is_refused_naming_the_setting_to_use(
    tmp_path: Path, old: str, new: str
) -> None:
    env = env_for(make_keys(tmp_path / "keys")) | {old: "1"}  # even a valid value
    message = startup_error(env)
    assert message.startswith(f"{old} is no longer read: set {new} ")
    with pytest.raises(ConfigError, match=f"^{old} is no longer read"):
        logging_from_env(env)  # before logging is set up, so nothing starts half-configured
    with pytest.raises(ConfigError, match=f"^{old} is no longer read"):
        process_config_from_env(env)


def test_every_former_name_is_listed_and_none_is_a_settings_name() -> None:
    table_names = {name for s in SETTINGS for name in (s.env, *s.legacy)}
    assert not set(OLD_NAMES) & table_names
    # the other two the entry read are the table's own names: ALLQ_API_TOKEN with the same
    # meaning (gateway.api_token), ALLQ_SERVER_KEY with another (server.key, test below)
    assert {"ALLQ_API_TOKEN", "ALLQ_SERVER_KEY"} <= table_names
    message = startup_error(dict.fromkeys(OLD_NAMES, "1"))
    for old in OLD_NAMES:  # all named at once, not one per attempt
        assert f"{old} is no longer read" in message


def test_allq_server_key_is_the_servers_secret_key_not_the_gateways(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    # one environment for a server and a gateway: each reads its own key
    env = env_for(keys, ALLQ_SERVER_KEY=str(keys / "server.key"))
    config = process_config_from_env(env)
    assert config.server_key_file == keys / "server.pub"
    core_config(config)
    # the old meaning (the servers' public key) is refused, naming the setting to use
    env = env_for(keys, ALLQ_SERVER_KEY=str(keys / "server.pub"))
    del env["ALLQ_GATEWAY_SERVER_KEY"]
    message = startup_error(env)
    assert message.startswith("setting gateway.server_key is not set")
    assert "ALLQ_GATEWAY_SERVER_KEY" in message
    assert "ALLQ_SERVER_KEY is allq server's own secret key" in message


def test_settings_hypercorn_replaces_are_reported_unused(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    assert unused_settings(env_for(keys)) == []
    toml = tmp_path / "allq.toml"
    toml.write_text("[gateway]\nline_port = 0\nmax_inflight = 5\n")
    env = env_for(keys, ALLQ_GATEWAY_PORT="9000", HTTP_SERVER_PORT="9001", ALLQ_CONFIG=str(toml))
    assert unused_settings(env) == [
        "ALLQ_GATEWAY_PORT (use hypercorn --bind)",
        "HTTP_SERVER_PORT (use hypercorn --bind)",
        f"line_port in [gateway] of {toml} (use allq gateway: the line protocol is not "
        "served here)",
    ]


async def test_the_core_answers_no_server_until_the_lifespan_started_it(tmp_path: Path) -> None:
    core = LifespanCore(core_config(process_config_from_env(env_for(make_keys(tmp_path / "keys")))))
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
            toml = tmp_path / "allq.toml"  # servers and logging from the file, keys from env
            addresses = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
            toml.write_text(f"[gateway]\nservers = [{addresses}]\nlog_json = true\n")
            env = env_for(keys, ALLQ_CONFIG=str(toml), ALLQ_GATEWAY_PORT="9")
            del env["ALLQ_GATEWAY_SERVERS"]
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
        unused = "not used under Hypercorn: ALLQ_GATEWAY_PORT (use hypercorn --bind)"
        assert ("allq.gateway.asgi", unused) in messages
        assert ("hypercorn.access", f"POST /v1/jobs/{job['id']}/done 200") in messages
        assert messages[-1] == ("allq.gateway.asgi", "gateway core stopped")
        assert not [line for line in lines if line["level"] in ("error", "critical")]
    finally:
        for server in servers:
            assert server.stop() == 0, server.log()


@pytest.mark.parametrize(
    ("workers", "change", "says"),
    [
        ("0", {"ALLQ_GATEWAY_SERVERS": None}, "setting gateway.servers is not set: "),
        ("1", {"ALLQ_GATEWAY_SERVERS": None}, "setting gateway.servers is not set: "),
        ("0", {"ALLQ_KEY": "k"}, "ALLQ_KEY is no longer read: set ALLQ_GATEWAY_KEY "),
    ],
)
async def test_a_bad_setting_stops_hypercorn_with_one_line(
    tmp_path: Path, workers: str, change: dict[str, str | None], says: str
) -> None:
    keys = make_keys(tmp_path / "keys")
    env = env_for(keys)
    for name, value in change.items():
        env.pop(name, None)
        if value is not None:
            env[name] = value
    log_path = tmp_path / "hypercorn.log"
    with hypercorn(log_path, env, "--bind", "127.0.0.1:0", "--workers", workers) as process:
        code = await trio.to_thread.run_sync(process.wait, 30)
    [line] = log_path.read_text().splitlines()
    assert "level=critical logger=allq.gateway.asgi" in line
    assert f'msg="cannot start: {says}' in line
    # In-process (`--workers 0`) our exit code 2 is Hypercorn's; with worker processes
    # Hypercorn 0.18 stops but exits 0 (hypercorn #269, PR #372 open).
    assert code == (2 if workers == "0" else 0)
