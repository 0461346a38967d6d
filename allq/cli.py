"""The `allq` command: argparse subcommands, `trio.run`, exit codes (operations.md §2).

Exit codes: 0 success, 1 runtime failure, 2 usage error, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from allq.config import ConfigError, ServerConfig
from allq.errors import AllQError
from allq.log import configure_logging
from allq.settings import add_flags, from_args
from allq.tubes.config import EngineConfig

log = logging.getLogger("allq.cli")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="allq", description="allq: a federated job queue.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    server = commands.add_parser(
        "server",
        help="run one queue server (a silo)",
        description="Run one queue server. It refuses to start without --key and --allow. "
        "Every flag also reads ALLQ_SERVER_<NAME> and [server] in --config.",
    )
    add_flags(server, "server")
    server.set_defaults(run=_cmd_server)

    gateway = commands.add_parser(
        "gateway",
        help="run the gateway: REST API for workers over the queue servers",
        description="Run the gateway (the AllQ client): REST v1 on --host:--port, federating "
        "the queue servers of --servers. Every flag also reads ALLQ_GATEWAY_<NAME> and "
        "[gateway] in --config.",
    )
    add_flags(gateway, "gateway")
    gateway.set_defaults(run=_cmd_gateway)

    up = commands.add_parser(
        "up",
        help="run an embedded cluster: N queue servers and a gateway in one process",
        description="Run N queue servers and a gateway in one process tree; keys are made "
        "under --data-dir on first start. Ctrl-C stops everything. Every flag also reads "
        "ALLQ_UP_<NAME> and [up] in --config.",
    )
    add_flags(up, "up")
    up.set_defaults(run=_cmd_up)

    keygen = commands.add_parser(
        "keygen",
        help="write a server key pair, client key pairs and the allow-list",
        description="Write server.key/.pub, client-N.key/.pub and clients.allow (mode 0600).",
    )
    keygen.add_argument("directory", type=Path)
    keygen.add_argument("--clients", type=int, default=1, help="client key pairs to write")
    keygen.add_argument("--force", action="store_true", help="overwrite existing files")
    keygen.set_defaults(run=_cmd_keygen)

    from allq.cli_ops import add_operator_commands

    add_operator_commands(commands)
    commands.add_parser(
        "bench",
        help="run the benchmark suite (benchmarks/suite.py; a source checkout)",
        add_help=False,
    )
    return parser


def _cmd_bench(argv: list[str]) -> int:
    """`allq bench ARGS` = `python -m benchmarks.suite ARGS` (benchmarks/ is not installed)."""
    import importlib

    checkout = str(Path(__file__).resolve().parents[1])
    if checkout not in sys.path:
        sys.path.append(checkout)
    try:
        suite = importlib.import_module("benchmarks.suite")
    except ImportError as exc:
        log.error("allq bench needs the source checkout's benchmarks/ package: %s", exc)
        return EXIT_FAILURE
    result: int = suite.main(argv)
    return result


def _settings(section: str, args: argparse.Namespace) -> dict[str, Any]:
    values = from_args(section, args, os.environ)
    configure_logging(values["log_level"], json_lines=values["log_json"])
    return values


def _cmd_server(args: argparse.Namespace) -> int:
    from allq.server_process import load_server_keys, run_server

    try:
        values = _settings("server", args)
        engine = EngineConfig(
            server_id=values["name"] or "s-" + secrets.token_hex(4),
            max_job_bytes=values["max_job_bytes"],
            default_ttr=values["default_ttr"],
            default_expired_limit=values["default_expired_limit"],
            default_parent_timeout=values["default_parent_timeout"],
            fair_prefix=values["fair_prefix"],
            default_shard_reservation_limit=values["default_shard_reservation_limit"],
            dedup_window=values["dedup_window"],
            tube_gc_idle=values["tube_gc_idle"],
            max_tubes=values["max_tubes"],
            max_jobs=values["max_jobs"],
        )
        config = ServerConfig(
            engine=engine,
            host=values["host"],
            port=values["port"],
            key_file=values["key"],
            allow_file=values["allow"],
            graceful_s=values["graceful_timeout"],
            idle_timeout_s=values["idle_timeout"],
            max_connections=values["max_connections"],
            max_inflight=values["max_inflight"],
            handshake_rate=values["handshake_rate"],
            handshake_rate_per_source=values["handshake_rate_per_source"],
            server_id_generated=values["name"] is None,
            data_dir=values["data_dir"],
            sync=values["sync"],
            sync_interval_ms=values["sync_interval_ms"],
            segment_bytes=values["segment_bytes"],
            repair=values["repair"],
            compaction_floor_bytes=values["compaction_floor_bytes"],
            min_free_bytes=values["min_free_bytes"],
        )
        load_server_keys(config)  # fail before binding, with the file named
    except (ConfigError, AllQError) as exc:
        print(f"allq server: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_USAGE
    return _run_trio(partial(run_server, config))


def _cmd_gateway(args: argparse.Namespace) -> int:
    from allq.gateway.process import (
        config_from_settings,
        core_config,
        run_gateway,
        run_gateway_workers,
    )

    try:
        config = config_from_settings(_settings("gateway", args))
        core_config(config)  # fail before binding, with the file named
    except (ConfigError, ValueError) as exc:
        print(f"allq gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if config.workers > 1:
        return run_gateway_workers(config)
    return _run_trio(partial(run_gateway, config))


def _cmd_up(args: argparse.Namespace) -> int:
    from allq.gateway.line import socket_setting
    from allq.up import UpConfig, run_up

    try:
        values = _settings("up", args)
        config = UpConfig(
            servers=values["servers"],
            host=values["host"],
            port=values["port"],
            data_dir=values["data_dir"],
            memory=values["memory"],
            api_token=values["api_token"],
            line_port=values["line_port"],
            socket_path=socket_setting(values["socket"]),
        )
    except ConfigError as exc:
        print(f"allq up: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return _run_trio(partial(run_up, config))


def _cmd_keygen(args: argparse.Namespace) -> int:
    from allq.wire.keyfiles import KeyFileError, keygen

    if args.clients < 1:
        print("allq keygen: --clients must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        for line in keygen(args.directory, args.clients, args.force):
            print(line)
    except (KeyFileError, OSError) as exc:
        print(f"allq keygen: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _run_trio(main: Callable[[], Awaitable[object]]) -> int:
    """Run a process under trio; a stray Ctrl-C (even inside a group) exits with 130.

    A main that returns an int gives the exit code; otherwise success is 0.
    """
    try:
        result = trio.run(main)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is not None:
            return EXIT_INTERRUPTED
        log.error("stopped by an error", exc_info=group)
        return EXIT_FAILURE
    except (ConfigError, OSError) as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    return result if isinstance(result, int) else EXIT_OK


#: Options whose values are opaque tokens that may begin with "-" (a lease is 22 URL-safe
#: base64 characters, so 1 in 64 does); argparse would read such a value as an option.
OPAQUE_VALUE_OPTIONS = frozenset({"--lease", "--token"})


def glue_opaque_values(arguments: Sequence[str]) -> list[str]:
    """`--lease -Xy…` -> `--lease=-Xy…`, so a token starting with "-" parses as the value."""
    glued: list[str] = []
    index = 0
    while index < len(arguments):
        item = arguments[index]
        if item == "--":
            glued.extend(arguments[index:])
            break
        if item in OPAQUE_VALUE_OPTIONS and index + 1 < len(arguments):
            glued.append(f"{item}={arguments[index + 1]}")
            index += 2
            continue
        glued.append(item)
        index += 1
    return glued


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:  # its own parser: every flag goes to the suite
        return _cmd_bench(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(glue_opaque_values(arguments))
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)
