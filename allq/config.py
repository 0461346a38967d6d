"""Process configuration records (design.md §2.7): frozen, validated, units in names.

The operations issue adds TOML files and ALLQ_* environment variables on top; today the
command line fills these records. A bad value raises `ConfigError` naming the setting,
the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from allq.tubes.config import EngineConfig


class ConfigError(ValueError):
    """A setting has a value outside what is allowed; the message names all three."""


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"setting {name} = {value!r}: must be > 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Everything `allq server` needs."""

    engine: EngineConfig
    host: str = "127.0.0.1"
    port: int = 5555
    key_file: Path | None = None
    allow_file: Path | None = None
    graceful_s: float = 10.0
    idle_timeout_s: float = 300.0
    write_stall_s: float = 30.0
    max_connections: int = 1024
    max_inflight: int = 1024
    backlog: int = 2048
    handshake_rate: float = 100.0
    handshake_rate_per_source: float = 10.0
    server_id_generated: bool = False
    data_dir: Path | None = None
    sync: str = "interval"
    sync_interval_ms: float = 50.0
    segment_bytes: int = 64 * 1024 * 1024
    repair: bool = False
    compaction_floor_bytes: int = 64 * 1024 * 1024
    min_free_bytes: int = 256 * 1024 * 1024
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"setting port = {self.port!r}: must be 0 … 65535")
        for name in (
            "graceful_s",
            "idle_timeout_s",
            "write_stall_s",
            "handshake_rate",
            "handshake_rate_per_source",
        ):
            _positive(name, getattr(self, name))
        for name in ("max_connections", "max_inflight", "backlog"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"setting {name} = {value!r}: must be an integer ≥ 1")

    @property
    def max_frame(self) -> int:
        return self.engine.max_job_bytes + 65_536
