"""Structured logs (operations.md §5): one line per event, `key=value` text or JSON.

The formatters are checked on records in this process (a private logger, never the root
one, so pytest's own capture is untouched); the contract "every stderr line of a server
and a gateway is one structured line" is checked on real `allq` processes.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from allq.log import JsonFormatter, TextFormatter, text_value
from tests.helpers.cluster import make_keys
from tests.helpers.http import HttpClient
from tests.helpers.processes import AllqProcess, gateway_args, server_args

FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"=\\]+)')
UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def parse_text(line: str) -> dict[str, str]:
    """A `key=value …` line back into fields; fails unless the whole line is fields."""
    fields: dict[str, str] = {}
    position = 0
    for match in FIELD.finditer(line):
        assert line[position : match.start()] in ("", " "), f"not key=value at {position}: {line}"
        key, value = match.groups()
        if value.startswith('"'):
            value = re.sub(r"\\(.)", lambda m: UNESCAPE[m.group(1)], value[1:-1])
        assert key not in fields, f"{key} twice: {line}"
        fields[key] = value
        position = match.end()
    assert position == len(line), f"trailing text: {line[position:]!r}"
    return fields


@pytest.fixture
def emit() -> Iterator[Any]:
    """`emit(formatter, callback)`: the lines a private logger writes while calling back."""
    logger = logging.getLogger("allq.test.logging")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)

    def run(formatter: logging.Formatter, call: Any) -> list[str]:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger.handlers[:] = [handler]
        call(logger)
        return stream.getvalue().splitlines()

    yield run
    logger.handlers.clear()


def test_text_lines_are_key_value_with_extras_as_fields(emit: Any) -> None:
    [line] = emit(
        TextFormatter(),
        lambda log: log.info(
            'job %s "done" = ok', "s1,abc", extra={"tube": "emails", "attempt": 2, "ok": True}
        ),
    )
    assert re.match(r"time=\S+ level=info logger=allq\.test\.logging msg=", line)
    fields = parse_text(line)
    assert TIME.fullmatch(fields["time"])
    assert fields["msg"] == 'job s1,abc "done" = ok'
    assert (fields["tube"], fields["attempt"], fields["ok"]) == ("emails", "2", "true")


def test_json_lines_carry_the_same_fields(emit: Any) -> None:
    [line] = emit(
        JsonFormatter(),
        lambda log: log.warning("peer %s gone", "10.0.0.1", extra={"peer": "10.0.0.1", "n": 3}),
    )
    record = json.loads(line)
    assert TIME.fullmatch(record.pop("time"))
    assert record == {
        "level": "warning",
        "logger": "allq.test.logging",
        "message": "peer 10.0.0.1 gone",
        "peer": "10.0.0.1",
        "n": 3,
    }


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_a_traceback_stays_on_its_line(emit: Any, formatter: logging.Formatter) -> None:
    def fail(log: logging.Logger) -> None:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            log.exception("multi\nline message")

    [line] = emit(formatter, fail)
    fields = parse_text(line) if isinstance(formatter, TextFormatter) else json.loads(line)
    assert fields["level"] == "error"
    assert fields.get("msg", fields.get("message")) == "multi\nline message"
    assert fields["exc"].startswith("Traceback (most recent call last):")
    assert fields["exc"].endswith("ValueError: bad\nvalue")


def test_a_hypercorn_access_record_becomes_fields_without_headers_or_environment(
    emit: Any,
) -> None:
    atoms = {
        "h": "127.0.0.1:5000", "m": "POST", "U": "/v1/reserve", "q": "count=2", "s": "200",
        "b": "57", "D": 1500, "H": "1.1", "{authorization}i": "Bearer secret",
        "{allq_gateway_api_token}e": "secret", "r": "POST /v1/reserve 1.1", "t": "[now]",
    }  # fmt: skip
    lines = emit(JsonFormatter(), lambda log: log.info('%(h)s "%(r)s" %(s)s', atoms))
    [record] = [json.loads(line) for line in lines]
    assert record["message"] == "POST /v1/reserve?count=2 200"
    assert {k: record[k] for k in ("remote", "method", "path", "status", "bytes")} == {
        "remote": "127.0.0.1:5000",
        "method": "POST",
        "path": "/v1/reserve?count=2",
        "status": 200,
        "bytes": 57,
    }
    assert record["duration_ms"] == 1.5
    assert "secret" not in lines[0]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        ("two words", '"two words"'),
        ("", '""'),
        ("a=b", '"a=b"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("line\nbreak", '"line\\nbreak"'),
        (None, "null"),
        (False, "false"),
        (2.5, "2.5"),
    ],
)
def test_text_values_are_quoted_only_when_needed(value: object, text: str) -> None:
    assert text_value(value) == text
    if isinstance(value, str):
        assert parse_text(f"k={text}") == {"k": value}


# -- real processes ------------------------------------------------------------------------


def json_lines(process: AllqProcess) -> list[dict[str, Any]]:
    records = []
    for line in process.log().splitlines():
        record = json.loads(line)  # every line, not just most
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        assert TIME.fullmatch(record["time"]), line
        records.append(record)
    return records


async def test_server_and_gateway_write_one_json_object_per_line(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    server = AllqProcess(tmp_path / "s1.log", *server_args(keys, "s1"), "--log-json")
    gateway: AllqProcess | None = None
    try:
        with trio.fail_after(60):
            port = (await server.address())[1]
            gateway = AllqProcess(
                tmp_path / "gateway.log",
                *gateway_args(keys, [f"127.0.0.1:{port}"], "--log-json"),
            )
            client = await HttpClient.connect(await gateway.address())
            while (await client.request("GET", "/readyz"))[0] != 200:  # noqa: ASYNC110
                await trio.sleep(0.05)  # polling the API under test: no event to wait on
            status, _ = await client.request("POST", "/v1/tubes/logs/jobs", {"body": "x"})
            assert status == 201
            status, _ = await client.request("GET", "/v1/nothing-here")
            assert status == 404
            await client.aclose()
    finally:
        gateway_code = gateway.stop() if gateway is not None else None
        server_code = server.stop()
    assert (gateway_code, server_code) == (0, 0)

    records = json_lines(server)
    assert any(r["message"].startswith("allq server s1 listening on") for r in records)
    assert records[-1]["message"] == "allq server s1 stopped"

    assert gateway is not None
    records = json_lines(gateway)
    access = [r for r in records if r["logger"] == "allq.gateway.access"]
    assert {(r["method"], r["path"], r["status"]) for r in access} >= {
        ("POST", "/v1/tubes/logs/jobs", 201),
        ("GET", "/v1/nothing-here", 404),
    }
    assert all(isinstance(r["duration_ms"], float) for r in access)
    assert records[-1]["message"] == "allq gateway stopped"


async def test_a_server_writes_key_value_lines_without_log_json(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    server = AllqProcess(tmp_path / "s1.log", *server_args(keys, "s1"))
    try:
        with trio.fail_after(30):
            await server.address()
    finally:
        assert server.stop() == 0
    lines = server.log().splitlines()
    assert len(lines) >= 3
    for line in lines:
        fields = parse_text(line)
        assert list(fields)[:4] == ["time", "level", "logger", "msg"], line
    assert parse_text(lines[-1])["msg"] == "allq server s1 stopped"
