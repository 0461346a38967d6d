"""The `allq` command: argparse subcommands, `trio.run`, exit codes (operations.md §2).

Exit codes: 0 success, 1 runtime failure, 2 usage error, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path

import trio

from allq.config import ConfigError, ServerConfig
from allq.errors import AllQError
from allq.log import configure_logging
from allq.tubes.config import EngineConfig

log = logging.getLogger("allq.cli")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="allq", description="allq: a federated job queue.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    server = commands.add_parser(
        "server",
        help="run one queue server (a silo)",
        description="Run one queue server. It refuses to start without --key and --allow.",
    )
    server.add_argument("--host", default="127.0.0.1", help="address to listen on")
    server.add_argument("--port", type=int, default=5555, help="TCP port (0: any free port)")
    server.add_argument("--name", help="server_id: 1-32 of [A-Za-z0-9_-], prefixes job ids")
    server.add_argument("--key", type=Path, help="the server's secret key file (allq keygen)")
    server.add_argument("--allow", type=Path, help="allow-list of client public keys")
    server.add_argument("--graceful-timeout", type=float, default=10.0, help="seconds")
    server.add_argument("--max-job-bytes", type=int, default=1_048_576)
    server.add_argument("--max-tubes", type=int, default=100_000)
    server.add_argument("--max-jobs", type=int, default=0, help="0: unlimited")
    server.add_argument("--default-ttr", type=int, default=3600)
    server.add_argument("--fair-prefix", default="fq-")
    server.add_argument(
        "--handshake-rate", type=float, default=100.0, help="handshakes/s in all (burst 2x)"
    )
    server.add_argument(
        "--handshake-rate-per-source",
        type=float,
        default=10.0,
        help="handshakes/s per source address (burst 2x)",
    )
    _add_logging(server)
    server.set_defaults(run=_cmd_server)

    gateway = commands.add_parser(
        "gateway",
        help="run the gateway: REST API for workers over the queue servers",
        description="Run the gateway (the AllQ client): REST v1 on --host:--port, "
        "federating the queue servers of --servers.",
    )
    gateway.add_argument("--host", default="127.0.0.1", help="REST address (loopback)")
    gateway.add_argument("--port", type=int, default=8090, help="REST port (0: any free port)")
    gateway.add_argument(
        "--servers", default="", help="queue servers, comma-separated host:port list"
    )
    gateway.add_argument("--key", type=Path, help="the gateway's client secret key file")
    gateway.add_argument("--server-key", type=Path, help="the servers' public key file")
    gateway.add_argument("--api-token", help="require 'Authorization: Bearer TOKEN'")
    gateway.add_argument("--workers", type=int, default=1, help="Hypercorn worker processes")
    gateway.add_argument("--graceful-timeout", type=float, default=10.0, help="seconds")
    gateway.add_argument(
        "--probe-interval", type=float, default=1.0, help="seconds between health probes"
    )
    gateway.add_argument(
        "--probe-timeout", type=float, default=2.0, help="a probe slower than this fails"
    )
    gateway.add_argument(
        "--fail-after", type=int, default=3, help="failed probes before a server is down"
    )
    gateway.add_argument(
        "--request-timeout", type=float, default=10.0, help="seconds for one server request"
    )
    gateway.add_argument(
        "--max-inflight", type=int, default=10_000, help="requests in flight before 429"
    )
    gateway.add_argument(
        "--max-waiting", type=int, default=10_000, help="waiting long polls before 429"
    )
    gateway.add_argument(
        "--long-poll-cap", type=float, default=300.0, help="longest reserve wait, seconds"
    )
    _add_logging(gateway)
    gateway.set_defaults(run=_cmd_gateway)

    up = commands.add_parser(
        "up",
        help="run an embedded cluster: N queue servers and a gateway in one process",
        description="Run N queue servers and a gateway in one process tree; keys are made "
        "under --data-dir on first start. Ctrl-C stops everything.",
    )
    up.add_argument("--servers", type=int, default=2, help="embedded queue servers")
    up.add_argument("--host", default="127.0.0.1", help="REST address (loopback)")
    up.add_argument("--port", type=int, default=8090, help="REST port (0: any free port)")
    up.add_argument("--data-dir", type=Path, default=Path(".allq"), help="keys (and data)")
    up.add_argument("--memory", action="store_true", help="keep jobs in memory only")
    up.add_argument("--api-token", help="require 'Authorization: Bearer TOKEN'")
    _add_logging(up)
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
    return parser


def _cmd_server(args: argparse.Namespace) -> int:
    from allq.server_process import run_server

    configure_logging(args.log_level, json_lines=args.log_json)
    generated = args.name is None
    try:
        engine = EngineConfig(
            server_id=args.name or "s-" + secrets.token_hex(4),
            max_job_bytes=args.max_job_bytes,
            max_tubes=args.max_tubes,
            max_jobs=args.max_jobs,
            default_ttr=args.default_ttr,
            fair_prefix=args.fair_prefix,
        )
        config = ServerConfig(
            engine=engine,
            host=args.host,
            port=args.port,
            key_file=args.key,
            allow_file=args.allow,
            graceful_s=args.graceful_timeout,
            handshake_rate=args.handshake_rate,
            handshake_rate_per_source=args.handshake_rate_per_source,
            server_id_generated=generated,
        )
        from allq.server_process import load_server_keys

        load_server_keys(config)  # fail before binding, with the file named
    except (ConfigError, AllQError) as exc:
        print(f"allq server: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_USAGE
    return _run_trio(partial(run_server, config))


def _cmd_gateway(args: argparse.Namespace) -> int:
    from allq.gateway.process import (
        GatewayProcessConfig,
        core_config,
        run_gateway,
        run_gateway_workers,
    )

    configure_logging(args.log_level, json_lines=args.log_json)
    try:
        from allq.gateway.health import HealthPolicy
        from allq.gateway.links import LinkSettings

        config = GatewayProcessConfig(
            servers=[item.strip() for item in args.servers.split(",") if item.strip()],
            key_file=args.key,
            server_key_file=args.server_key,
            host=args.host,
            port=args.port,
            api_token=args.api_token,
            workers=args.workers,
            graceful_s=args.graceful_timeout,
            max_inflight=args.max_inflight,
            max_waiting=args.max_waiting,
            long_poll_cap_s=args.long_poll_cap,
            log_level=args.log_level,
            log_json=args.log_json,
            health=HealthPolicy(fail_after=args.fail_after),
            links=LinkSettings(
                probe_interval_s=args.probe_interval,
                probe_timeout_s=args.probe_timeout,
                request_timeout_s=args.request_timeout,
            ),
        )
        core_config(config)  # fail before binding, with the file named
    except (ConfigError, ValueError) as exc:
        print(f"allq gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if config.workers > 1:
        return run_gateway_workers(config)
    return _run_trio(partial(run_gateway, config))


def _cmd_up(args: argparse.Namespace) -> int:
    from allq.up import UpConfig, run_up

    configure_logging(args.log_level, json_lines=args.log_json)
    try:
        config = UpConfig(
            servers=args.servers,
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            memory=args.memory,
            api_token=args.api_token,
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)
