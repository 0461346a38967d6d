"""The `allq server` process: keys, listeners, signals, engine, serve (design.md §2.2).

Task tree:

    run_server
    └─ root nursery
       ├─ signal watcher      SIGINT/SIGTERM: graceful shutdown, a second one: stop now;
       │                      SIGHUP: reload the allow-list, close revoked connections
       ├─ compactor           with --data-dir: persistence.md §7 (allq.store.compaction)
       └─ serve()             (allq.server) engine timers, sessions, accept loop
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from allq import __version__
from allq.config import ConfigError, ServerConfig
from allq.gatekeeper import Gatekeeper, GateLimits
from allq.gcpause import paused_gc
from allq.server import ServerLimits, ServerStats, serve
from allq.session import SessionLimits, ShutdownState
from allq.store.compaction import Compactor
from allq.store.log import LogWriter, SyncMode, open_log_writer
from allq.store.recovery import Recovered, RecoveryError, recover
from allq.store.storage import DirectoryInUse, OsStorage
from allq.tubes.engine import Engine
from allq.tubes.replay import Replayer
from allq.tubes.runner import EngineShell, UnixClock
from allq.wire.keyfiles import AllowList, KeyFileError, KeyPair, load_allowlist, load_secret_key

log = logging.getLogger(__name__)


def load_server_keys(config: ServerConfig) -> tuple[KeyPair, AllowList]:
    """The server key pair and allow-list; refuses to start without them, naming the file."""
    if config.key_file is None:
        raise ConfigError("the server needs its secret key file: pass --key FILE (see allq keygen)")
    if config.allow_file is None:
        raise ConfigError("the server needs an allow-list of client keys: pass --allow FILE")
    for path in (config.key_file, config.allow_file):
        if not path.exists():
            raise ConfigError(f"key file {path} does not exist")
    try:
        return load_secret_key(config.key_file, role="server"), load_allowlist(config.allow_file)
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(slots=True)
class Persistence:
    """The open log of a server with `--data-dir` (persistence.md)."""

    directory: Path
    writer: LogWriter
    engine: Engine | None = None
    compactor: Compactor | None = None
    compact_at_start: bool = False
    free_bytes: Callable[[], int] = lambda: 2**63

    def stats(self) -> dict[str, object]:
        extra = self.compactor.stats() if self.compactor is not None else {}
        return {"mode": "wal", **dataclasses.asdict(self.writer.statistics()), **extra}


@asynccontextmanager
async def open_persistence(
    config: ServerConfig, engine: Engine
) -> AsyncIterator[tuple[Persistence | None, Recovered | None]]:
    """Lock and recover `config.data_dir`, then keep its log writer open (or nothing).

    Raises:
        ConfigError: the directory is in use, corrupt (names file, offset, reason), or
            belongs to another server_id; the process exits 1 without a traceback.
    """
    if config.data_dir is None:
        yield None, None
        return
    directory = config.data_dir
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    storage = OsStorage(directory)
    server_id = None if config.server_id_generated else config.engine.server_id
    started = time.monotonic()
    replayer = Replayer(engine)
    try:
        with paused_gc():  # one pause over the load and the placing of its jobs
            recovered = recover(storage, server_id=server_id, repair=config.repair, sink=replayer)
            replayer.finish()
    except (DirectoryInUse, RecoveryError) as exc:
        raise ConfigError(str(exc)) from None
    for warning in recovered.warnings:
        log.warning("%s", warning)
    engine.restore_sequences(recovered.seqs)
    counts = engine.server_stats(engine.now)["jobs"]
    log.info(
        "recovered %d job(s) %s in %d tube(s) from %d file(s), %d record(s), %d byte(s); "
        "torn bytes dropped %d; orphan changes %d; %.3f s",
        len(engine.jobs),
        counts,
        len(engine.tubes),
        recovered.files,
        recovered.records,
        recovered.bytes_read,
        recovered.torn_bytes_dropped,
        recovered.orphan_changes,
        time.monotonic() - started,
    )
    holder: list[Persistence] = []

    def seqs() -> dict[str, int]:
        engine = holder[0].engine if holder else None
        return engine.sequences() if engine is not None else dict(recovered.seqs)

    async with open_log_writer(
        storage,
        server_id=recovered.server_id or config.engine.server_id,
        version=__version__,
        seqs=seqs,
        first_seq=recovered.next_seq,
        prev=recovered.prev,
        sync=_sync_mode(config.sync),
        sync_interval_ms=config.sync_interval_ms,
        segment_bytes=config.segment_bytes,
        base_bytes=recovered.log_bytes,
        base_segments=recovered.segments,
    ) as writer:
        compactor = Compactor(
            storage,
            writer,
            config=config.engine,
            server_id=recovered.server_id or config.engine.server_id,
            version=__version__,
            floor_bytes=config.compaction_floor_bytes,
        )
        holder.append(
            Persistence(directory, writer, None, compactor, recovered.repaired, storage.free_bytes)
        )
        yield holder[0], recovered


def _sync_mode(text: str) -> SyncMode:
    if text == "always":
        return "always"
    if text == "never":
        return "never"
    return "interval"


async def run_server(  # noqa: ASYNC128 (_serve_process reports the address)
    config: ServerConfig,
    *,
    shutdown: ShutdownState | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one queue server until a signal (or `shutdown`) stops it; reports its address.

    With `shutdown` given (embedded use, `allq up`) the caller owns signals and starts the
    graceful shutdown through it; otherwise this process watches SIGINT/SIGTERM/SIGHUP.
    """
    keys, allowlist = load_server_keys(config)
    clock = UnixClock.start(time.time())
    # Made before recovery, which streams every record into it (no list of all changes).
    engine = Engine(config.engine, random_bytes=os.urandom, now=clock.now())
    async with open_persistence(config, engine) as (persistence, recovered):
        if recovered is not None and config.server_id_generated and recovered.server_id:
            config = dataclasses.replace(
                config, engine=dataclasses.replace(config.engine, server_id=recovered.server_id)
            )
            engine.config = config.engine  # only the stats read server_id
        await _serve_process(
            config, keys, allowlist, shutdown, persistence, engine, clock, task_status
        )


async def _serve_process(
    config: ServerConfig,
    keys: KeyPair,
    allowlist: AllowList,
    shutdown: ShutdownState | None,
    persistence: Persistence | None,
    engine: Engine,
    clock: UnixClock,
    task_status: trio.TaskStatus[tuple[str, int]],
) -> None:
    listeners = await trio.open_tcp_listeners(config.port, host=config.host, backlog=config.backlog)
    if persistence is not None:
        engine.changelog.enabled = True
    shell = EngineShell(engine, clock)
    if persistence is not None:
        persistence.engine = engine
        shell.journal = persistence.writer
        shell.free_space = persistence.free_bytes
        shell.min_free_bytes = config.min_free_bytes
    own_signals = shutdown is None
    if shutdown is None:
        shutdown = ShutdownState(grace_s=config.graceful_s)
    gate = Gatekeeper(
        keys,
        allowlist,
        limits=GateLimits(
            max_frame=config.max_frame,
            handshake_rate=config.handshake_rate,
            handshake_burst=2 * config.handshake_rate,
            handshake_rate_per_source=config.handshake_rate_per_source,
            handshake_burst_per_source=2 * config.handshake_rate_per_source,
        ),
    )
    stats = ServerStats()
    limits = ServerLimits(
        max_connections=config.max_connections,
        session=SessionLimits(
            max_inflight=config.max_inflight,
            idle_timeout_s=config.idle_timeout_s,
            write_stall_s=config.write_stall_s,
        ),
    )
    if persistence is None:
        engine.extra_stats = lambda: {"connections": stats.connections}
        log.warning(
            "persistence is off: jobs are kept in memory only and are lost when this server stops"
        )
    else:
        store = persistence
        engine.extra_stats = lambda: {
            "connections": stats.connections,
            "persistence": store.stats(),
        }
        log.info("persistence on: %s, sync %s", persistence.directory, config.sync)
    if config.server_id_generated:
        where = "for this process only" if persistence is None else f"kept in {config.data_dir}"
        log.warning("no --name given: this server is %s, %s", config.engine.server_id, where)
    address = listeners[0].socket.getsockname()
    async with trio.open_nursery() as root:
        if own_signals:
            root.start_soon(_watch_signals, shutdown, root.cancel_scope, gate, config, stats)
        if persistence is not None and persistence.compactor is not None:
            compactor, at_once = persistence.compactor, persistence.compact_at_start
            root.start_soon(lambda: compactor.run(now=at_once))
        await root.start(
            lambda task_status: serve(
                shell,
                listeners,
                gate,
                shutdown=shutdown,
                limits=limits,
                stats=stats,
                task_status=task_status,
            )
        )
        log.info(
            "allq server %s listening on %s:%s", config.engine.server_id, address[0], address[1]
        )
        task_status.started((str(address[0]), int(address[1])))
        await shutdown.started.wait()
        await stats.drained.wait()
        root.cancel_scope.cancel()
    log.info("allq server %s stopped", config.engine.server_id)


async def _watch_signals(
    shutdown: ShutdownState,
    root: trio.CancelScope,
    gate: Gatekeeper,
    config: ServerConfig,
    stats: ServerStats,
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                await _reload_allowlist(gate, config, stats)
            elif not shutdown.started.is_set():
                log.info("signal %s: graceful shutdown (grace %ss)", signum, shutdown.grace_s)
                shutdown.begin()
            else:
                log.warning("second signal %s: stopping now", signum)
                root.cancel()


async def _reload_allowlist(gate: Gatekeeper, config: ServerConfig, stats: ServerStats) -> None:
    assert config.allow_file is not None
    try:
        allowlist = load_allowlist(config.allow_file)
    except (KeyFileError, OSError) as exc:
        log.error("allow-list reload failed, keeping the old list: %s", exc)
        return
    gate.allowlist = allowlist
    revoked = [s for s in stats.sessions if s.peer_key is not None and s.peer_key not in allowlist]
    log.info("allow-list reloaded: %d keys, %d connection(s) revoked", len(allowlist), len(revoked))
    for session in revoked:
        await session.revoke()
