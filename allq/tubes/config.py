"""Engine configuration (semantics.md §3): one frozen record, validated on construction."""

from __future__ import annotations

import re
from dataclasses import dataclass

from allq.errors import BadFormat

SERVER_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
UINT32_MAX = 4_294_967_295
#: wire.md §4: the frame cap is max_job_bytes + 65,536 and at most 16 MiB.
MAX_JOB_BYTES_CEILING = 16_777_216 - 65_536


def _check_range(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadFormat(f"setting {name} = {value!r} is out of range {low} … {high}", field=name)


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """Settings of one server's engine; a bad value raises BadFormat naming the setting."""

    server_id: str
    max_job_bytes: int = 1_048_576
    default_ttr: int = 3600
    default_expired_limit: int = 3
    default_parent_timeout: int = 3600
    fair_prefix: str = "fq-"
    default_shard_reservation_limit: int = 0
    dedup_window: int = 600
    tube_gc_idle: int = 3600
    max_tubes: int = 100_000
    max_jobs: int = 0

    def __post_init__(self) -> None:
        server_id: object = self.server_id
        if not isinstance(server_id, str) or not SERVER_ID_RE.fullmatch(server_id):
            raise BadFormat(
                f"setting server_id = {self.server_id!r} must be 1-32 characters of [A-Za-z0-9_-]",
                field="server_id",
            )
        _check_range("max_job_bytes", self.max_job_bytes, 1, MAX_JOB_BYTES_CEILING)
        _check_range("default_ttr", self.default_ttr, 1, UINT32_MAX)
        _check_range("default_expired_limit", self.default_expired_limit, 1, 1_000_000)
        _check_range("default_parent_timeout", self.default_parent_timeout, 1, UINT32_MAX)
        _check_range(
            "default_shard_reservation_limit", self.default_shard_reservation_limit, 0, 1_000_000
        )
        _check_range("dedup_window", self.dedup_window, 1, 86_400)
        _check_range("tube_gc_idle", self.tube_gc_idle, 1, 31_536_000)
        _check_range("max_tubes", self.max_tubes, 1, 10_000_000)
        _check_range("max_jobs", self.max_jobs, 0, 2**63 - 1)
        from allq.tubes.validate import TUBE_NAME_RE  # local: validate imports this module

        prefix: object = self.fair_prefix
        if (
            not isinstance(prefix, str)
            or not 1 <= len(prefix) <= 32
            or not TUBE_NAME_RE.fullmatch(prefix + "x")
        ):
            raise BadFormat(
                f"setting fair_prefix = {self.fair_prefix!r} must be 1-32 bytes of the "
                "tube-name charset",
                field="fair_prefix",
            )
