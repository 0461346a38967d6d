"""Every setting of every `allq` process, in one table (operations.md §3).

Each setting has three spellings: a command-line flag (`--max-job-bytes`), an environment
variable (`ALLQ_SERVER_MAX_JOB_BYTES`; a few original AllQ names too) and a key in a TOML
config file (`[server] max_job_bytes = …`, given with `--config allq.toml`). Precedence:
flag > environment > file > default. A bad value stops start-up with one line naming the
setting, the value, where it came from and what is allowed.

The README's settings table is generated from `SETTINGS` (`python -m allq.settings`), and
a test fails when the two drift apart.
"""

from __future__ import annotations

import argparse
import math
import re
import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allq.config import ConfigError

SECTIONS = ("server", "gateway", "up")
_HOST_PORT = re.compile(r"(?:tcp://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})")


@dataclass(frozen=True, slots=True)
class Setting:
    section: str
    name: str
    kind: str  # int, float, str, bool, path, servers, level
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    pattern: str | None = None
    legacy: tuple[str, ...] = ()  # original AllQ (or short) environment names, also read

    @property
    def env(self) -> str:
        return f"ALLQ_{self.section.upper()}_{self.name.upper()}"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def allowed(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.kind == "servers":
            return "a comma-separated list of host:port"
        if self.kind == "level":
            return "one of DEBUG, INFO, WARNING, ERROR"
        if self.kind in ("int", "float"):
            what = "an integer" if self.kind == "int" else "a number"
            low = "" if self.low is None else f"{self.low:g}"
            high = "" if self.high is None else f"{self.high:g}"
            return f"{what} {low} … {high}".rstrip(" …") if low or high else what
        if self.pattern is not None:
            return f"text matching {self.pattern}"
        return "a path" if self.kind == "path" else "text"


def _s(section: str, name: str, kind: str, default: Any, text: str, **extra: Any) -> Setting:
    return Setting(section, name, kind, default, text, **extra)


_LOGGING = [
    ("log_level", "level", "INFO", "log level"),
    ("log_json", "bool", False, "one JSON object per log line"),
]

#: The `socket` setting's value that turns the unix socket off.
SOCKET_OFF = "off"


def _line_settings(section: str) -> tuple[Setting, ...]:
    """The line protocol's endpoints (allq.gateway.line); 0 / `off` turn one off."""
    return (
        _s(
            section,
            "line_port",
            "int",
            7766,
            "line protocol TCP port, always on 127.0.0.1 (0: off)",
            low=0,
            high=65535,
            legacy=("TCP_CLIENT_PORT",) if section == "gateway" else (),
        ),
        _s(
            section,
            "socket",
            "path",
            None,
            "line protocol unix socket (default $XDG_RUNTIME_DIR/allq.sock, else "
            "/tmp/allq-<uid>.sock; off: none)",
        ),
    )


SETTINGS: tuple[Setting, ...] = (
    # -- allq server ------------------------------------------------------------------------
    _s("server", "host", "str", "127.0.0.1", "address to listen on"),
    _s(
        "server",
        "port",
        "int",
        5555,
        "TCP port (0: any free port)",
        low=0,
        high=65535,
        legacy=("SERVER_PORT",),
    ),
    _s(
        "server",
        "name",
        "str",
        None,
        "server_id, prefixes job ids (default: random per process)",
        pattern=r"[A-Za-z0-9_-]{1,32}",
    ),
    _s("server", "key", "path", None, "the server's secret key file"),
    _s("server", "allow", "path", None, "allow-list of client public keys"),
    _s(
        "server",
        "graceful_timeout",
        "float",
        10.0,
        "seconds to drain on shutdown",
        low=0.001,
        high=3600,
    ),
    _s(
        "server",
        "idle_timeout",
        "float",
        300.0,
        "close idle connections after (s)",
        low=1,
        high=86400,
    ),
    _s(
        "server", "max_connections", "int", 1024, "authenticated connections", low=1, high=1_000_000
    ),
    _s(
        "server",
        "max_inflight",
        "int",
        1024,
        "requests in flight per connection",
        low=1,
        high=65536,
    ),
    _s(
        "server",
        "handshake_rate",
        "float",
        100.0,
        "handshakes/s in all (burst 2x)",
        low=0.001,
        high=1e6,
    ),
    _s(
        "server",
        "handshake_rate_per_source",
        "float",
        10.0,
        "handshakes/s per address (burst 2x)",
        low=0.001,
        high=1e6,
    ),
    _s("server", "max_job_bytes", "int", 1_048_576, "largest job body", low=1, high=16_711_680),
    _s("server", "max_tubes", "int", 100_000, "most tubes", low=1, high=10_000_000),
    _s("server", "max_jobs", "int", 0, "most live jobs (0: unlimited)", low=0, high=2**63 - 1),
    _s(
        "server",
        "default_ttr",
        "int",
        3600,
        "TTR of jobs put without one (s)",
        low=1,
        high=4_294_967_295,
        legacy=("DEFAULT_TTL",),
    ),
    _s(
        "server",
        "default_expired_limit",
        "int",
        3,
        "TTR expiries before auto-bury",
        low=1,
        high=1_000_000,
    ),
    _s(
        "server",
        "default_parent_timeout",
        "int",
        3600,
        "parent timeout (s)",
        low=1,
        high=4_294_967_295,
    ),
    _s(
        "server",
        "fair_prefix",
        "str",
        "fq-",
        "tube-name prefix of fair tubes",
        pattern=r"[A-Za-z0-9_.:@$!#=+][A-Za-z0-9_.:@$!#=+-]{0,31}",
        legacy=("FQ_PREFIX",),
    ),
    _s(
        "server",
        "default_shard_reservation_limit",
        "int",
        0,
        "reserved jobs per shard (0: off)",
        low=0,
        high=1_000_000,
        legacy=("SHARD_RESERVATION_LIMIT",),
    ),
    _s("server", "dedup_window", "int", 600, "idempotency key lifetime (s)", low=1, high=86_400),
    _s(
        "server",
        "tube_gc_idle",
        "int",
        3600,
        "idle time before an empty tube is collected (s)",
        low=1,
        high=31_536_000,
    ),
    _s(
        "server",
        "data_dir",
        "path",
        None,
        "persistence directory (none: memory only)",
        legacy=("SERIALIZER_DIR",),
    ),
    _s(
        "server",
        "sync",
        "str",
        "interval",
        "when the log is fdatasync'ed",
        pattern=r"always|interval|never",
    ),
    _s(
        "server",
        "sync_interval_ms",
        "float",
        50.0,
        "fdatasync period in interval mode",
        low=1,
        high=60_000,
    ),
    _s(
        "server",
        "segment_bytes",
        "int",
        64 * 1024 * 1024,
        "log segment size before rotation",
        low=4096,
        high=2**40,
    ),
    _s("server", "repair", "bool", False, "quarantine corrupt log records and start"),
    _s(
        "server",
        "min_free_bytes",
        "int",
        256 * 1024 * 1024,
        "refuse new jobs below this free disk space",
        low=0,
        high=2**50,
    ),
    _s(
        "server",
        "compaction_floor_bytes",
        "int",
        64 * 1024 * 1024,
        "compact once files exceed max(this, 3 x live data)",
        low=4096,
        high=2**50,
    ),
    *(_s("server", n, k, d, h) for n, k, d, h in _LOGGING),
    # -- allq gateway -----------------------------------------------------------------------
    _s("gateway", "host", "str", "127.0.0.1", "REST address (loopback unless told otherwise)"),
    _s(
        "gateway",
        "port",
        "int",
        8090,
        "REST port (0: any free port)",
        low=0,
        high=65535,
        legacy=("HTTP_SERVER_PORT",),
    ),
    # the line protocol (api.md §4; allq.gateway.line)
    *_line_settings("gateway"),
    _s(
        "gateway",
        "line_max_connections",
        "int",
        1024,
        "line protocol connections (more get OVERLOADED)",
        low=1,
        high=1_000_000,
    ),
    _s(
        "gateway", "servers", "servers", (), "queue servers, host:port,…", legacy=("SERVER_STRING",)
    ),
    _s("gateway", "key", "path", None, "the gateway's client secret key file"),
    _s("gateway", "server_key", "path", None, "the servers' public key file"),
    _s(
        "gateway",
        "api_token",
        "str",
        None,
        "require Authorization: Bearer TOKEN",
        legacy=("ALLQ_API_TOKEN",),
    ),
    _s("gateway", "workers", "int", 1, "gateway worker processes", low=1, high=64),
    _s(
        "gateway",
        "graceful_timeout",
        "float",
        10.0,
        "seconds to drain on shutdown",
        low=0.001,
        high=3600,
    ),
    _s(
        "gateway",
        "probe_interval",
        "float",
        1.0,
        "seconds between health probes",
        low=0.01,
        high=3600,
    ),
    _s("gateway", "probe_timeout", "float", 2.0, "a slower probe fails (s)", low=0.01, high=3600),
    _s(
        "gateway", "fail_after", "int", 3, "failed probes before a server is down", low=1, high=1000
    ),
    _s(
        "gateway",
        "request_timeout",
        "float",
        10.0,
        "seconds for one server request",
        low=0.01,
        high=3600,
    ),
    _s(
        "gateway",
        "max_inflight",
        "int",
        10_000,
        "requests in flight before 429",
        low=1,
        high=10_000_000,
    ),
    _s(
        "gateway",
        "max_waiting",
        "int",
        10_000,
        "waiting long polls before 429",
        low=1,
        high=10_000_000,
    ),
    _s("gateway", "long_poll_cap", "float", 300.0, "longest reserve wait (s)", low=0.001, high=300),
    _s(
        "gateway",
        "max_body_bytes",
        "int",
        2 * 1_048_576,
        "largest REST request body or line-protocol line",
        low=1024,
        high=64 * 1_048_576,
    ),
    *(_s("gateway", n, k, d, h) for n, k, d, h in _LOGGING),
    # -- allq up ----------------------------------------------------------------------------
    _s("up", "servers", "int", 2, "embedded queue servers", low=1, high=16),
    _s("up", "host", "str", "127.0.0.1", "REST address"),
    _s("up", "port", "int", 8090, "REST port (0: any free port)", low=0, high=65535),
    *_line_settings("up"),
    _s("up", "data_dir", "path", ".allq", "keys and the servers' data"),
    _s("up", "memory", "bool", False, "keep jobs in memory only"),
    _s("up", "api_token", "str", None, "require Authorization: Bearer TOKEN"),
    *(_s("up", n, k, d, h) for n, k, d, h in _LOGGING),
)

BY_SECTION: dict[str, dict[str, Setting]] = {
    section: {s.name: s for s in SETTINGS if s.section == section} for section in SECTIONS
}


# -- parsing ------------------------------------------------------------------------------------


def _bad(setting: Setting, raw: object, source: str) -> ConfigError:
    return ConfigError(
        f"setting {setting.section}.{setting.name} = {raw!r} (from {source}): "
        f"must be {setting.allowed()}"
    )


def parse_value(setting: Setting, raw: object, source: str) -> Any:
    """Turn a raw value (text from a flag or the environment, or a TOML value) into a value."""
    kind = setting.kind
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(raw, str) and raw.strip().lower() in ("false", "0", "no", "off"):
            return False
        raise _bad(setting, raw, source)
    if kind in ("int", "float"):
        if isinstance(raw, bool):
            raise _bad(setting, raw, source)
        if not isinstance(raw, str | int | float):
            raise _bad(setting, raw, source)
        try:
            number: float = int(raw) if kind == "int" and not isinstance(raw, float) else float(raw)
        except ValueError:
            raise _bad(setting, raw, source) from None
        if kind == "int" and isinstance(number, float):
            raise _bad(setting, raw, source)
        if not math.isfinite(number):
            raise _bad(setting, raw, source)
        if (setting.low is not None and number < setting.low) or (
            setting.high is not None and number > setting.high
        ):
            raise _bad(setting, raw, source)
        return number
    if kind == "servers":
        items = raw if isinstance(raw, list) else str(raw).split(",")
        servers = []
        for item in items:
            text = str(item).strip()
            if not text:
                continue
            match = _HOST_PORT.fullmatch(text)
            if match is None or not 0 < int(match.group(2)) < 65536:
                raise _bad(setting, raw, source)
            servers.append(f"{match.group(1)}:{match.group(2)}")
        return tuple(servers)
    if not isinstance(raw, str) or not raw:
        raise _bad(setting, raw, source)
    if kind == "level":
        if raw.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise _bad(setting, raw, source)
        return raw.upper()
    if setting.pattern is not None and not re.fullmatch(setting.pattern, raw):
        raise _bad(setting, raw, source)
    return Path(raw) if kind == "path" else raw


def read_config_file(path: Path) -> dict[str, Any]:
    """A TOML file with one table per section; unknown tables and keys are errors."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    for table, values in data.items():
        if table not in SECTIONS or not isinstance(values, dict):
            raise ConfigError(
                f"config file {path}: unknown table [{table}] (known: {', '.join(SECTIONS)})"
            )
        for key in values:
            if key not in BY_SECTION[table]:
                known = ", ".join(sorted(BY_SECTION[table]))
                raise ConfigError(
                    f"config file {path}: [{table}] has no setting {key!r} (known: {known})"
                )
    return data


def resolve(
    section: str,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    config_file: Path | None = None,
    only: Collection[str] | None = None,
) -> dict[str, Any]:
    """Every setting of `section` (or the `only` ones): flag > environment > file > default."""
    table: Mapping[str, Any] = {}
    if config_file is not None:
        table = read_config_file(config_file).get(section, {})
    values: dict[str, Any] = {}
    for name, setting in BY_SECTION[section].items():
        if only is not None and name not in only:
            continue
        raw = flags.get(name)
        if raw is not None:
            values[name] = parse_value(setting, raw, setting.flag)
            continue
        env_name = next((e for e in (setting.env, *setting.legacy) if e in environ), None)
        if env_name is not None:
            values[name] = parse_value(setting, environ[env_name], env_name)
        elif name in table:
            values[name] = parse_value(setting, table[name], f"{config_file} [{section}]")
        elif setting.default is None:
            values[name] = None
        else:
            values[name] = parse_value(setting, _default_raw(setting), "the default")
    return values


def _default_raw(setting: Setting) -> object:
    default = setting.default
    if setting.kind == "servers":
        return list(default)
    return default if setting.kind in ("int", "float", "bool") else str(default)


def add_flags(parser: argparse.ArgumentParser, section: str) -> None:
    """One flag per setting of `section`; unset flags stay None so lower layers apply."""
    parser.add_argument("--config", type=Path, help="TOML config file ([server], [gateway], [up])")
    for setting in BY_SECTION[section].values():
        default = "none" if setting.default in (None, ()) else setting.default
        help_text = f"{setting.help} (env {setting.env}; default {default})"
        if setting.kind == "bool":
            parser.add_argument(
                setting.flag,
                dest=setting.name,
                action="store_const",
                const=True,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                setting.flag,
                dest=setting.name,
                default=None,
                metavar=setting.name.upper(),
                help=help_text,
            )


def from_args(section: str, args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    flags = {name: getattr(args, name, None) for name in BY_SECTION[section]}
    return resolve(section, flags, environ, getattr(args, "config", None))


# -- documentation ---------------------------------------------------------------------------


def markdown_table(sections: Sequence[str] = SECTIONS) -> str:
    """The README's settings table."""
    lines = [
        "| setting | flag | environment | default | allowed | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for setting in SETTINGS:
        if setting.section not in sections:
            continue
        env = " ".join(f"`{name}`" for name in (setting.env, *setting.legacy))
        default = "—" if setting.default in (None, ()) else f"`{setting.default}`"
        lines.append(
            f"| `{setting.section}.{setting.name}` | `{setting.flag}` | {env} | {default} "
            f"| {setting.allowed()} | {setting.help} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
