"""Start and measure `allq` processes for the benchmarks (loopback only)."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

LISTENING = re.compile(r"listening on (?:http://)?([0-9.]+):(\d+)")


START_TIMEOUT_S = 180.0  # a server recovering 1,000,000 jobs (B8) may take a while


def start(args: list[str], log: Path) -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
    """`python -m allq ARGS` with stderr to `log`; waits for its "listening on" line (at
    most `START_TIMEOUT_S`)."""
    with log.open("w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "allq", *args], stderr=handle)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (match := LISTENING.search(log.read_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"allq {args[0]} did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return process, (match.group(1), int(match.group(2)))


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(child) for child in text.split()]


def cpu_seconds(pid: int, *, with_children: bool = False) -> float:
    """User + system CPU seconds of a process (and its direct children), from /proc."""
    total = 0.0
    for member in [pid, *(children(pid) if with_children else [])]:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
