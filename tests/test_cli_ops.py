"""The operator subcommands (`allq put`, `reserve`, `done`, `peek`, `kick`, `pause`,
`throttle`, `clear`, `stats`, `work`): parsing, `--help`, exit codes, and real runs against
a real embedded cluster.

Rules: `main(argv)` runs in-process; commands that talk to the gateway run in a worker
thread (`trio.to_thread`) while Trio serves it; stdout/stderr come from `capsys`.
Exit codes: 0 success, 1 runtime failure, 2 usage error, 130 Ctrl-C.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import trio
from rich.console import Console, RenderableType

from allq.cli import build_parser, glue_opaque_values, main
from allq.client import AllQ
from allq.stats_view import render_stats, watch_stats
from tests.client_support import serving_gateway

COMMANDS = ("put", "reserve", "done", "peek", "kick", "pause", "throttle", "clear", "stats", "work")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"allq {command}" in out
    assert "--url" in out
    assert "--token" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["put"],
        ["reserve"],
        ["done", "s1,x"],  # --lease is required
        ["reserve", "t", "--count", "0"],
        ["peek", "t", "--state", "gone"],
        ["work", "t"],  # --handler is required
        ["put", "t", "x", "--priority", "high"],
    ],
)
def test_argument_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


@pytest.mark.parametrize("value", ["-Ab3_x9", "--looks-like-a-flag", "-"])
def test_lease_and_token_values_may_begin_with_a_dash(value: str) -> None:
    # A lease is 22 URL-safe base64 characters, so 1 in 64 begins with "-"; CI once drew one.
    argv = ["done", "s1,x", "--lease", value, "--token", value]
    args = build_parser().parse_args(glue_opaque_values(argv))
    assert (args.id, args.lease, args.token) == ("s1,x", value, value)


def test_glue_leaves_a_missing_value_and_arguments_after_double_dash_alone() -> None:
    assert glue_opaque_values(["done", "x", "--lease"]) == ["done", "x", "--lease"]
    assert glue_opaque_values(["put", "--", "--lease", "v"]) == ["put", "--", "--lease", "v"]
    with pytest.raises(SystemExit) as info:
        main(["done", "s1,x", "--lease"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["clear", "t"], "--yes"),
        (["peek"], "TUBE or --job"),
        (["kick", "t", "--job", "s1,x"], "TUBE or --job"),
        (["throttle", "t"], "--off"),
        (["pause", "t", "--off", "--seconds", "3"], "--off"),
        (["work", "t", "--handler", "nothing"], "module:function"),
        (["work", "t", "--handler", "no_such_module_here:f"], "cannot import"),
        (["work", "t", "--handler", "os:no_such_function"], "no_such_function"),
        (["stats", "--url", "ftp://x"], "http"),
    ],
)
def test_usage_errors_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: AllQ) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(AllQ, "stats", interrupted)
    assert main(["stats"]) == 130


async def test_unreachable_gateway_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    code = await trio.to_thread.run_sync(main, ["stats", "--url", f"http://127.0.0.1:{port}"])
    assert code == 1
    assert "allq stats:" in capsys.readouterr().err


async def test_operator_commands_against_a_real_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(60):
        # one server: a reserve of 2 then gets both jobs in priority order
        async with serving_gateway(tmp_path, 1) as served:
            monkeypatch.setenv("ALLQ_URL", served.url)

            async def run(*argv: str) -> tuple[int, str, str]:
                code = await trio.to_thread.run_sync(main, list(argv))
                out, err = capsys.readouterr()
                return code, out, err

            code, out, _ = await run("put", "mail", "hello", "--priority", "3", "--ttr", "60")
            assert code == 0
            job_id = out.strip()
            monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\xff\x00 raw")))
            code, out, _ = await run("put", "mail", "-")
            assert code == 0
            raw_id = out.strip()

            code, out, _ = await run("peek", "mail")
            assert (code, json.loads(out)["id"]) == (0, job_id)

            code, out, _ = await run("reserve", "mail", "--count", "2", "--timeout", "1")
            assert code == 0
            jobs = [json.loads(line) for line in out.splitlines()]
            assert [(j["id"], j.get("body"), j.get("body_b64")) for j in jobs] == [
                (job_id, "hello", None),
                (raw_id, None, "/wAgcmF3"),
            ]
            code, out, _ = await run("done", job_id, "--lease", jobs[0]["lease"])
            assert (code, json.loads(out)) == (0, {"id": job_id, "state": "gone"})
            code, _, err = await run("done", job_id, "--lease", jobs[0]["lease"])
            assert code == 1
            assert "NOT_FOUND" in err

            code, _, err = await run("peek", "mail")
            assert code == 1
            assert "no ready job" in err
            code, out, _ = await run("peek", "--job", raw_id)
            assert json.loads(out)["state"] == "reserved"
            code, _, err = await run("put", "bad tube", "x")
            assert code == 2
            assert "BAD_TUBE" in err

            def bury() -> None:
                with AllQ(served.url) as q:
                    q.bury(raw_id, jobs[1]["lease"])

            await trio.to_thread.run_sync(bury)
            code, out, _ = await run("kick", "mail", "--bound", "5")
            assert (code, json.loads(out)) == (0, {"kicked": 1})

            code, out, _ = await run("pause", "mail", "--seconds", "30")
            assert json.loads(out)["paused"] is True
            code, out, _ = await run("pause", "mail", "--off")
            assert json.loads(out)["paused"] is False
            code, out, _ = await run("throttle", "mail", "4")
            assert json.loads(out)["tps"] == 4
            code, out, _ = await run("throttle", "mail", "--off")
            assert code == 0

            code, out, _ = await run("stats", "--json")
            assert code == 0
            answer = json.loads(out)
            assert answer["stats"]["jobs"]["ready"] == 1
            code, out, _ = await run("stats")
            assert code == 0
            assert "s1" in out
            assert "mail" in out

            code, out, _ = await run("clear", "mail", "--yes")
            assert (code, json.loads(out)) == (0, {"deleted": 1})


async def test_the_token_comes_from_the_flag_or_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(60):
        async with serving_gateway(tmp_path, api_token="sekrit") as served:
            argv = ["stats", "--json", "--url", served.url]
            assert await trio.to_thread.run_sync(main, argv) == 1
            assert "UNAUTHORIZED" in capsys.readouterr().err
            assert await trio.to_thread.run_sync(main, [*argv, "--token", "sekrit"]) == 0
            monkeypatch.setenv("ALLQ_API_TOKEN", "sekrit")
            assert await trio.to_thread.run_sync(main, argv) == 0


STATS: dict[str, Any] = {
    "jobs": {"ready": 3, "delayed": 0, "reserved": 1, "buried": 2, "waiting": 0, "total": 6},
    "tubes": [
        {"name": "mail", "ready": 3, "reserved": 1, "delayed": 0, "buried": 0, "waiting": 0},
        {"name": "zip", "ready": 0, "reserved": 0, "delayed": 0, "buried": 2, "waiting": 1},
    ],
    "unavailable": ["s3"],
}
SERVERS: list[dict[str, Any]] = [
    {"id": "s1", "address": "127.0.0.1:5555", "state": "up", "rtt_ms": 0.8, "jobs": 6},
    {"id": "s3", "address": "127.0.0.1:5557", "state": "down", "last_error": "refused"},
]


def test_render_stats_shows_servers_tubes_totals_and_missing_servers() -> None:
    console = Console(record=True, width=120)
    console.print(render_stats(STATS, SERVERS))
    text = console.export_text()
    for expected in ("s1", "127.0.0.1:5555", "down", "refused", "mail", "zip", "total"):
        assert expected in text
    assert "no answer from: s3" in text
    empty = Console(record=True, width=120)
    empty.print(render_stats({"tubes": [], "jobs": {}}, []))
    assert "no tubes" in empty.export_text()


def test_watch_redraws_until_stopped() -> None:
    calls: list[int] = []

    def fetch() -> RenderableType:
        calls.append(1)
        return render_stats(STATS, SERVERS)

    console = Console(file=io.StringIO(), width=120)
    watch_stats(fetch, interval_s=0.01, console=console, rounds=3)
    assert len(calls) == 3
