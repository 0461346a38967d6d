"""The `allq` command line: parsing, exit codes, keygen round trip (in-process, no network)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from allq.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from allq.wire.keyfiles import load_allowlist, load_public_key, load_secret_key


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_USAGE
    assert "usage" in capsys.readouterr().err


def test_unknown_option_exits_2() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["server", "--no-such-option"])
    assert exit_info.value.code == EXIT_USAGE


def test_keygen_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "keys"
    assert main(["keygen", str(target), "--clients", "2"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "server.key" in out
    assert "clients.allow" in out
    for name in ("server.key", "client-1.key", "client-2.key"):
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o600
    server = load_secret_key(target / "server.key", role="server")
    assert load_public_key(target / "server.pub").public == server.public
    allow = load_allowlist(target / "clients.allow")
    for n in (1, 2):
        assert load_secret_key(target / f"client-{n}.key").public in allow
    # never overwrites without --force
    before = (target / "server.key").read_text()
    assert main(["keygen", str(target)]) == EXIT_FAILURE
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (target / "server.key").read_text() == before
    assert main(["keygen", str(target), "--force"]) == EXIT_OK
    assert (target / "server.key").read_text() != before


def test_keygen_rejects_zero_clients(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", str(tmp_path / "k"), "--clients", "0"]) == EXIT_USAGE
    assert "--clients" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "bad name!"], "setting server.name = 'bad name!' (from --name)"),
        (["--max-job-bytes", "0"], "server.max_job_bytes"),
        (["--port", "70000"], "must be an integer 0 … 65535"),
    ],
)
def test_server_bad_setting_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["server", *args]) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_server_without_allow_list_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["keygen", str(tmp_path / "k")])
    capsys.readouterr()
    code = main(["server", "--key", str(tmp_path / "k" / "server.key")])
    assert code == EXIT_USAGE
    assert "--allow" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "gateway.workers"),
        (["--servers", "nope"], "host:port"),
        (["--long-poll-cap", "301"], "gateway.long_poll_cap"),
        (["--probe-interval", "0"], "gateway.probe_interval"),
        (["--max-body-bytes", "1.5"], "gateway.max_body_bytes"),
        ([], "--key"),
    ],
)
def test_gateway_bad_setting_names_it(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["gateway", *args]) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_gateway_without_servers_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["keygen", str(tmp_path / "k")])
    capsys.readouterr()
    keys = tmp_path / "k"
    code = main(
        ["gateway", "--key", str(keys / "client-1.key"), "--server-key", str(keys / "server.pub")]
    )
    assert code == EXIT_USAGE
    assert "--servers" in capsys.readouterr().err
