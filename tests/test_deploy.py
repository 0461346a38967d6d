"""The deployment files of `deploy/`, checked without systemd or a Docker engine.

* systemd units: parsed with configparser (strict: a repeated key fails); required
  hardening and stop settings; every ExecStart parses with the real `allq` argparse parser.
* compose.yaml: parsed with PyYAML (present in the test environment through
  flake8-async -> libcst; the test skips where it is missing rather than adding a
  dependency); services, commands (same parser), published ports, volumes, order.
* Dockerfile: its instructions (FROM, non-root USER, ENTRYPOINT, what is copied).
* No file under deploy/ holds key material.
"""

from __future__ import annotations

import argparse
import configparser
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from allq.cli import build_parser
from allq.gateway.links import ServerAddress
from allq.settings import from_args
from allq.wire.keyfiles import keygen

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = DEPLOY / "systemd"
KEY_FILES = {"server.key", "server.pub", "client-1.key", "client-1.pub", "clients.allow"}
#: A key as keygen writes it (32 bytes, padded base64), or a key file's header.
KEY_MATERIAL = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=|allq-secret-key|allq-public-key")


def parse_allq(argv: list[str]) -> Any:
    """argv (without the program) through the real parser; a usage error fails the test.

    For `server` and `gateway` the flags are then resolved as the command does (no
    environment, no config file), so values are typed and checked.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's way of saying "usage error"
        raise AssertionError(f"allq rejects {argv}") from exc
    if args.command in ("server", "gateway"):
        return argparse.Namespace(command=args.command, **from_args(args.command, args, {}))
    return args


def assert_keys_under_etc(args: Any, *names: str) -> None:
    for name in names:
        path = getattr(args, name)
        assert path is not None, f"--{name} is missing"
        assert path.parent == Path("/etc/allq"), path
        assert path.name in KEY_FILES, path


# -- systemd ---------------------------------------------------------------------------------


def read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(
        strict=True, interpolation=None, delimiters=("=",), comment_prefixes=("#", ";")
    )
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string(path.read_text(), source=str(path))
    return unit


def exec_start(unit: configparser.ConfigParser) -> list[str]:
    line = unit["Service"]["ExecStart"]
    assert not re.search(r"[%$]", line), "no specifiers or variables reach argparse"
    argv = shlex.split(line)
    assert re.fullmatch(r"/.*/allq", argv[0]), argv[0]
    return argv


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", text)
    assert match, f"{text!r}: give seconds or minutes"
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


@pytest.mark.parametrize("name", ["allq-server.service", "allq-gateway.service"])
def test_a_unit_is_hardened_and_stops_gracefully(name: str) -> None:
    unit = read_unit(UNITS / name)
    service = unit["Service"]
    assert service.get("DynamicUser") == "yes" or service.get("User") == "allq"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["PrivateTmp"] == "yes"
    assert service["ProtectHome"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert int(service["LimitNOFILE"]) >= 65536
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    args = parse_allq(exec_start(unit)[1:])
    # The server adds a 1 s hard deadline after the grace period; leave room above both.
    assert seconds(service["TimeoutStopSec"]) >= args.graceful_timeout + 5
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"]


def test_the_server_unit_runs_allq_server_with_its_state_directory() -> None:
    unit = read_unit(UNITS / "allq-server.service")
    service = unit["Service"]
    args = parse_allq(exec_start(unit)[1:])
    assert args.command == "server"
    assert_keys_under_etc(args, "key", "allow")
    assert args.name
    assert args.log_json
    assert service["StateDirectory"] == "allq"
    assert service["WorkingDirectory"] == "/var/lib/allq"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # reloads the allow-list


def test_the_gateway_unit_runs_allq_gateway_on_loopback() -> None:
    unit = read_unit(UNITS / "allq-gateway.service")
    args = parse_allq(exec_start(unit)[1:])
    assert args.command == "gateway"
    assert args.host == "127.0.0.1"
    assert_keys_under_etc(args, "key", "server_key")
    assert [ServerAddress.parse(s) for s in args.servers]
    assert args.log_json
    assert args.api_token is None, "a token on the command line is visible in ps"


def test_the_sysusers_file_creates_the_units_user() -> None:
    lines = [
        line.split()
        for line in (UNITS / "allq.sysusers.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [(kind, name) for kind, name, *_ in lines] == [("u", "allq")]


# -- compose -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_compose_has_a_keygen_three_servers_and_a_gateway(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"keygen", "s1", "s2", "s3", "gateway"}
    for name, service in services.items():
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (
            DEPLOY / "Dockerfile"
        )
        if name != "keygen":
            assert service["depends_on"]["keygen"] == {
                "condition": "service_completed_successfully"
            }
            assert service["stop_signal"] == "SIGTERM"
            assert "keys:/etc/allq:ro" in service["volumes"]
            assert service["ulimits"]["nofile"]["soft"] >= 65536
    assert set(compose["volumes"]) >= {"keys"}


def test_compose_keygen_is_a_one_shot_writing_the_shared_volume(compose: dict[str, Any]) -> None:
    keygen_service = compose["services"]["keygen"]
    assert keygen_service["restart"] == "no"
    assert keygen_service["volumes"] == ["keys:/etc/allq"]
    assert keygen_service["entrypoint"] == ["/bin/sh", "-c"]
    [script] = keygen_service["command"]
    guard, _, command = script.partition(" || ")
    assert guard == "test -e /etc/allq/server.key"  # idempotent: the second start keeps keys
    argv = shlex.split(command)
    assert argv[0] == "allq"
    args = parse_allq(argv[1:])
    assert (args.command, args.directory, args.force) == ("keygen", Path("/etc/allq"), False)


def test_compose_servers_are_named_s1_to_s3_and_not_published(compose: dict[str, Any]) -> None:
    for name in ("s1", "s2", "s3"):
        service = compose["services"][name]
        args = parse_allq(service["command"])
        assert (args.command, args.name, args.host, args.port) == ("server", name, "0.0.0.0", 5555)
        assert_keys_under_etc(args, "key", "allow")
        assert "ports" not in service
        assert seconds(service["stop_grace_period"]) > args.graceful_timeout


def test_compose_gateway_lists_the_servers_and_publishes_on_loopback(
    compose: dict[str, Any],
) -> None:
    service = compose["services"]["gateway"]
    args = parse_allq(service["command"])
    assert args.command == "gateway"
    assert args.servers == ("s1:5555", "s2:5555", "s3:5555")
    assert {ServerAddress.parse(s).host for s in args.servers} <= set(compose["services"])
    assert_keys_under_etc(args, "key", "server_key")
    assert service["ports"] == [f"127.0.0.1:{args.port}:{args.port}"]
    assert args.api_token is None


# -- Dockerfile ------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ))  # fmt: skip
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_the_dockerfile_installs_the_project_and_runs_allq_unprivileged() -> None:
    steps = instructions((DEPLOY / "Dockerfile").read_text())
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [args for word, args in steps if word == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    [entrypoint] = [args for word, args in steps if word == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["allq"]
    assert any(word == "RUN" and "pip install /src" in args for word, args in steps)
    for word, args in steps:
        if word in ("COPY", "ADD"):
            sources = args.split()[:-1]
            assert not {".", "./"} & set(sources), "copy only what the package needs"
            assert not any(s.endswith((".key", ".allow")) or ".allq" in s for s in sources)
        if word in ("ENV", "ARG"):
            assert not re.search(r"KEY|SECRET|TOKEN", args, re.IGNORECASE), args
    # The build context (repository root) leaves keys and local data out.
    ignore = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "**", "everything is left out unless listed"
    assert "**/*.key" in ignore


# -- secrets -----------------------------------------------------------------------------------


def test_the_key_pattern_finds_real_key_files(tmp_path: Path) -> None:
    keygen(tmp_path, clients=1, force=False)
    for name in ("server.key", "server.pub", "client-1.key", "clients.allow"):
        assert KEY_MATERIAL.search((tmp_path / name).read_text()), name


def test_no_file_under_deploy_holds_key_material() -> None:
    files = [path for path in DEPLOY.rglob("*") if path.is_file()]
    assert len(files) >= 6
    for path in files:
        found = KEY_MATERIAL.findall(path.read_text())
        assert not found, f"{path.relative_to(DEPLOY)}: {found}"
