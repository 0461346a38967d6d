"""Operator and scripting subcommands over the REST API (operations.md §2).

`add_operator_commands(commands)` registers put, reserve, done, peek, kick, pause,
throttle, clear, stats and work on the `allq` parser. Every command takes `--url` (default
$ALLQ_URL, else http://127.0.0.1:8090) and `--token` (default $ALLQ_API_TOKEN).

Output, for scripts: `put` prints the job id; `reserve`, `peek` print one JSON job per line
(`body` as text when it is UTF-8, else `body_b64`); `stats` prints tables (`--json`: the
raw answers); the others print the gateway's JSON answer.

Exit codes: 0 success, 1 runtime failure (the gateway refused or could not be reached),
2 usage error (including BAD_FORMAT / BAD_TUBE answers, which name a bad argument),
130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from allq.client import DEFAULT_URL, AllQ, ApiError, BadFormat, BadTube, Job, TransportError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A bad combination of arguments: exit code 2."""


# -- shared ------------------------------------------------------------------------------------


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--url", help=f"the gateway (default: $ALLQ_URL, else {DEFAULT_URL})")
    group.add_argument("--token", help="API token (default: $ALLQ_API_TOKEN)")
    group.add_argument(
        "--request-timeout", type=float, default=30.0, help="seconds per request (default 30)"
    )


def gateway_url(args: argparse.Namespace) -> str:
    return str(args.url or os.environ.get("ALLQ_URL") or DEFAULT_URL)


def api_token(args: argparse.Namespace) -> str | None:
    token = args.token or os.environ.get("ALLQ_API_TOKEN")
    return str(token) if token else None


def _client(args: argparse.Namespace) -> AllQ:
    try:
        return AllQ(gateway_url(args), token=api_token(args), timeout_s=args.request_timeout)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _print_json(value: object) -> None:
    print(json.dumps(value, ensure_ascii=False, separators=(",", ":")), flush=True)


def job_json(job: Job) -> dict[str, Any]:
    """A job as printed: the REST job object (body as text when UTF-8, else body_b64)."""
    record: dict[str, Any] = {"id": job.id, "tube": job.tube}
    try:
        record["body"] = job.body.decode("utf-8")
    except UnicodeDecodeError:
        record["body_b64"] = base64.b64encode(job.body).decode("ascii")
    record.update(state=job.state, priority=job.priority, ttr=job.ttr)
    optional = {
        "lease": job.lease,
        "deadline_in_s": job.deadline_in_s,
        "delay_left_s": job.delay_left_s,
        "parent_id": job.parent_id,
        "shard_key": job.shard_key,
    }
    record.update({key: value for key, value in optional.items() if value is not None})
    record.update(
        age_s=job.age_s,
        reserves=job.reserves,
        timeouts=job.timeouts,
        releases=job.releases,
        buries=job.buries,
        kicks=job.kicks,
    )
    return record


def _guarded(command: Command) -> Command:
    """Map failures to exit codes with a one-line message on stderr."""

    def run(args: argparse.Namespace) -> int:
        name = f"allq {args.command}"
        try:
            return command(args)
        except UsageError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except (BadFormat, BadTube) as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except ApiError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        except TransportError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED

    return run


# -- jobs --------------------------------------------------------------------------------------


def _cmd_put(args: argparse.Namespace) -> int:
    body: bytes = sys.stdin.buffer.read() if args.body == "-" else args.body.encode("utf-8")
    options = {
        "priority": args.priority,
        "delay": args.delay,
        "ttr": args.ttr,
        "run_at": args.run_at,
        "shard_key": args.shard_key,
        "idempotency_key": args.idempotency_key,
        "parent_id": args.parent_id,
    }
    with _client(args) as client:
        put = client.put(args.tube, body, **options)
    print(put.id, flush=True)
    return EXIT_OK


def _cmd_reserve(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = client.reserve(args.tubes, count=args.count, timeout=args.timeout)
    for job in jobs:
        _print_json(job_json(job))
    return EXIT_OK


def _cmd_done(args: argparse.Namespace) -> int:
    with _client(args) as client:
        state = client.done(args.id, lease=args.lease)
    _print_json({"id": args.id, "state": state})
    return EXIT_OK


def _cmd_peek(args: argparse.Namespace) -> int:
    if (args.tube is None) == (args.job is None):
        raise UsageError("give a TUBE or --job ID (not both)")
    with _client(args) as client:
        if args.job is not None:
            _print_json(job_json(client.get(args.job)))
            return EXIT_OK
        job = client.peek(args.tube, args.state)
    if job is None:
        print(f"allq peek: no {args.state} job in tube {args.tube!r}", file=sys.stderr)
        return EXIT_FAILURE
    _print_json(job_json(job))
    return EXIT_OK


def _cmd_kick(args: argparse.Namespace) -> int:
    if (args.tube is None) == (args.job is None):
        raise UsageError("give a TUBE or --job ID (not both)")
    with _client(args) as client:
        if args.job is not None:
            _print_json({"id": args.job, "state": client.kick_job(args.job)})
        else:
            _print_json({"kicked": client.kick(args.tube, args.bound)})
    return EXIT_OK


# -- tubes -------------------------------------------------------------------------------------


def _cmd_pause(args: argparse.Namespace) -> int:
    if args.off and args.seconds is not None:
        raise UsageError("--off takes no --seconds")
    with _client(args) as client:
        answer = client.unpause(args.tube) if args.off else client.pause(args.tube, args.seconds)
    _print_json(answer)
    return EXIT_OK


def _cmd_throttle(args: argparse.Namespace) -> int:
    if args.off == (args.tps is not None):
        raise UsageError("give TPS, or --off to remove the throttle")
    with _client(args) as client:
        answer = client.unthrottle(args.tube) if args.off else client.throttle(args.tube, args.tps)
    _print_json(answer)
    return EXIT_OK


def _cmd_clear(args: argparse.Namespace) -> int:
    if not args.yes:
        raise UsageError(f"this deletes every job of {args.tube!r}; add --yes to do it")
    with _client(args) as client:
        _print_json({"deleted": client.clear(args.tube)})
    return EXIT_OK


def _cmd_stats(args: argparse.Namespace) -> int:
    from rich.console import Console, RenderableType
    from rich.text import Text

    from allq.stats_view import StatsWatch, render_stats, watch_stats

    if args.interval <= 0:
        raise UsageError("--interval must be > 0")
    with _client(args) as client:
        if args.json:
            _print_json({"stats": client.stats(), "servers": client.servers()})
            return EXIT_OK
        console = Console()
        if not args.watch:
            console.print(render_stats(client.stats(), client.servers()))
            return EXIT_OK

        watch = StatsWatch(client, errors=(ApiError,))

        def fetch() -> RenderableType:
            try:
                return watch.render()
            except (ApiError, TransportError) as exc:
                return Text(f"{gateway_url(args)}: {exc}", style="red")

        watch_stats(fetch, interval_s=args.interval, console=console)
    return EXIT_OK


# -- work --------------------------------------------------------------------------------------


def load_handler(spec: str) -> Callable[..., object]:
    """`module:function` (the function may be dotted: `module:Class.method`)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"--handler must be module:function, not {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: handlers next to where you run
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no {attribute!r}") from None
    if not callable(target):
        raise UsageError(f"{spec} is not callable")
    return target  # type: ignore[no-any-return]


def _cmd_work(args: argparse.Namespace) -> int:
    import trio

    from allq.client import AsyncAllQ
    from allq.log import configure_logging
    from allq.worker import Backoff, Worker, run_until_signalled

    handler = load_handler(args.handler)
    try:
        backoff = Backoff(args.backoff_base, args.backoff_cap, args.backoff_jitter)
        client = AsyncAllQ(gateway_url(args), token=api_token(args), timeout_s=args.request_timeout)
        worker = Worker(
            client,
            args.tubes,
            handler,
            concurrency=args.concurrency,
            max_attempts=args.max_attempts,
            backoff=backoff,
            touch_every=args.touch_every,
            reserve_timeout=args.reserve_timeout,
            grace_s=args.grace,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    try:  # after the usage checks, so a usage error leaves logging alone
        configure_logging(args.log_level, json_lines=args.log_json)
    except ValueError as exc:
        raise UsageError(f"--log-level: {exc}") from None

    async def main() -> bool:
        async with client:
            return await run_until_signalled(worker)

    try:
        graceful = trio.run(main)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseExceptionGroup as group:
        errors = group.subgroup((ApiError, TransportError))
        if errors is None:
            raise
        print(f"allq work: {errors.exceptions[0]}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK if graceful else EXIT_INTERRUPTED


# -- registration ------------------------------------------------------------------------------


def _add(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    command: Command,
    help_text: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=description or help_text)
    parser.set_defaults(run=_guarded(command))
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_operator_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register put, reserve, done, peek, kick, pause, throttle, clear, stats, work."""
    put = _add(
        commands,
        "put",
        _cmd_put,
        "put a job; prints its id",
        "Put a job into TUBE. BODY is the job body; '-' (the default) reads it from stdin.",
    )
    put.add_argument("tube", metavar="TUBE")
    put.add_argument("body", metavar="BODY", nargs="?", default="-", help="text, or - for stdin")
    put.add_argument("--priority", type=int, help="0 is most urgent (default: the server's)")
    put.add_argument("--delay", type=float, help="seconds before the job is ready")
    put.add_argument("--run-at", type=float, help="unix time at which the job is ready")
    put.add_argument("--ttr", type=float, help="seconds a worker has per reservation")
    put.add_argument("--shard-key", help="fair tubes: the shard")
    put.add_argument("--idempotency-key", help="a repeated key gives back the first job")
    put.add_argument("--parent-id", help="the parent job of this child")
    _connection_options(put)

    reserve = _add(
        commands,
        "reserve",
        _cmd_reserve,
        "reserve jobs; prints one JSON job (with its lease) per line",
    )
    reserve.add_argument("tubes", metavar="TUBE", nargs="+")
    reserve.add_argument("--timeout", type=float, default=0.0, help="seconds to wait (≤ 300)")
    reserve.add_argument("--count", type=_positive_int, default=1, help="jobs to take (≤ 1000)")
    _connection_options(reserve)

    done = _add(commands, "done", _cmd_done, "finish a reserved job")
    done.add_argument("id", metavar="ID")
    done.add_argument("--lease", required=True, help="the lease the reserve gave")
    _connection_options(done)

    peek = _add(
        commands,
        "peek",
        _cmd_peek,
        "show the next job of a tube (or one job by id)",
        "Print the next ready/delayed/buried job of TUBE, or the job --job ID, as JSON. "
        "Exit code 1 when there is none.",
    )
    peek.add_argument("tube", metavar="TUBE", nargs="?")
    peek.add_argument("--state", choices=("ready", "delayed", "buried"), default="ready")
    peek.add_argument("--job", metavar="ID", help="show this job instead")
    _connection_options(peek)

    kick = _add(
        commands,
        "kick",
        _cmd_kick,
        "kick buried (else delayed) jobs back to ready",
        "Kick up to --bound buried (else delayed) jobs of TUBE on every server, "
        "or the one job --job ID.",
    )
    kick.add_argument("tube", metavar="TUBE", nargs="?")
    kick.add_argument("--bound", type=_positive_int, default=1, help="at most this many")
    kick.add_argument("--job", metavar="ID", help="kick this job instead")
    _connection_options(kick)

    pause = _add(commands, "pause", _cmd_pause, "pause a tube on every server (--off: unpause)")
    pause.add_argument("tube", metavar="TUBE")
    pause.add_argument("--seconds", type=float, help="pause this long (default: until --off)")
    pause.add_argument("--off", action="store_true", help="unpause")
    _connection_options(pause)

    throttle = _add(
        commands, "throttle", _cmd_throttle, "limit a tube's cluster-wide rate (--off: remove)"
    )
    throttle.add_argument("tube", metavar="TUBE")
    throttle.add_argument("tps", metavar="TPS", type=float, nargs="?", help="jobs per second")
    throttle.add_argument("--off", action="store_true", help="remove the throttle")
    _connection_options(throttle)

    clear = _add(commands, "clear", _cmd_clear, "delete every job of a tube (needs --yes)")
    clear.add_argument("tube", metavar="TUBE")
    clear.add_argument("--yes", action="store_true", help="really delete them")
    _connection_options(clear)

    stats = _add(commands, "stats", _cmd_stats, "servers and tubes as a table")
    stats.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    stats.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    stats.add_argument("--json", action="store_true", help="print the raw JSON answers")
    _connection_options(stats)

    work = _add(
        commands,
        "work",
        _cmd_work,
        "run a handler over jobs of the tubes (a worker loop)",
        "Reserve jobs from the TUBEs and run --handler module:function on each (sync: in a "
        "thread; async: on Trio). Success: done. Exception: released with backoff, buried "
        "after --max-attempts. SIGTERM/SIGINT: finish current jobs (up to --grace s), "
        "reserve no more, exit 0; a second signal stops at once.",
    )
    work.add_argument("tubes", metavar="TUBE", nargs="+")
    work.add_argument("--handler", required=True, help="module:function, called with a Job")
    work.add_argument("--concurrency", type=_positive_int, default=1, help="jobs at once")
    work.add_argument("--max-attempts", type=_positive_int, default=5, help="then bury")
    work.add_argument("--backoff-base", type=float, default=1.0, help="first retry delay, s")
    work.add_argument("--backoff-cap", type=float, default=300.0, help="longest retry delay, s")
    work.add_argument("--backoff-jitter", type=float, default=0.0, help="0 … 1 random share")
    work.add_argument("--touch-every", type=float, help="seconds between touches (TTR / 2)")
    work.add_argument("--reserve-timeout", type=float, default=20.0, help="long-poll seconds")
    work.add_argument("--grace", type=float, default=30.0, help="seconds to finish on stop")
    work.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    work.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    _connection_options(work)
