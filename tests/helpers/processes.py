"""Real `allq` processes for end-to-end tests: start, learn the bound address, stop or kill.

The process's stderr goes to a file (a pipe could fill up and block a chatty process);
`address()` waits for the "listening on" log line.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

LISTENING = re.compile(r"listening on (?:http://)?([0-9.]+):(\d+)")


class AllqProcess:
    def __init__(self, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self.args = args
        self._log = log_path.open("w")
        self.process = subprocess.Popen([sys.executable, "-m", "allq", *args], stderr=self._log)

    def log(self) -> str:
        return self.log_path.read_text()

    async def address(self, limit_s: float = 30.0) -> tuple[str, int]:
        """Wait for the "listening on host:port" line (polling the log file)."""
        with trio.fail_after(limit_s):
            while True:
                match = LISTENING.search(self.log())
                if match:
                    return match.group(1), int(match.group(2))
                if self.process.poll() is not None:
                    raise AssertionError(f"allq {self.args[0]} exited early:\n{self.log()}")
                await trio.sleep(0.02)

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGINT, wait, and kill if it does not stop; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log.close()


def server_args(keys: Path, name: str, port: int = 0) -> list[str]:
    return [
        "server", "--port", str(port), "--name", name,
        "--key", str(keys / "server.key"), "--allow", str(keys / "clients.allow"),
    ]  # fmt: skip


def gateway_args(keys: Path, servers: list[str], *extra: str) -> list[str]:
    return [
        "gateway", "--port", "0", "--servers", ",".join(servers),
        "--key", str(keys / "client-1.key"), "--server-key", str(keys / "server.pub"),
        "--line-port", "0", "--socket", "off", *extra,  # no fixed line port / socket in tests
    ]  # fmt: skip
