"""Strict CBOR codec and envelopes (wire.md §4, §5.1, §5.5, §10.6).

Rules: every rejection case is raw bytes written by hand (hex) so the test does not depend
on the encoder; round trips use Hypothesis over the allowed types only.
"""

from __future__ import annotations

import math
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from allq.wire import codec
from allq.wire.transport import LocalProtocolError, RemoteProtocolError

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=codec.INT_MIN, max_value=codec.INT_MAX)
    | st.floats(allow_nan=False)
    | st.binary(max_size=64)
    | st.text(max_size=32)
)


def values(depth: int) -> st.SearchStrategy[Any]:
    if depth >= codec.MAX_DEPTH:
        return scalars
    inner = values(depth + 1)
    return (
        scalars
        | st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    )


messages = st.dictionaries(st.text(max_size=12), values(2), max_size=6)


@given(messages)
def test_round_trip(message: dict[str, Any]) -> None:
    assert codec.decode(codec.encode(message)) == message


def test_nan_and_infinities_decode_validation_is_the_engines() -> None:
    out = codec.decode(codec.encode({"a": math.nan, "b": math.inf, "c": -math.inf}))
    assert math.isnan(out["a"])  # type: ignore[arg-type]
    assert out["b"] == math.inf
    assert out["c"] == -math.inf


def test_depth_eight_ok_nine_refused() -> None:
    eight: Any = 1
    for _ in range(7):
        eight = [eight]
    assert codec.decode(codec.encode({"a": eight})) == {"a": eight}
    with pytest.raises(LocalProtocolError):
        codec.encode({"a": [eight]})
    with pytest.raises(RemoteProtocolError):
        codec.decode(bytes.fromhex("a16161" + "81" * 8 + "01"))


REJECTED = {
    "indefinite map": "bf616101ff",
    "indefinite array": "a161619f01ff",
    "indefinite bytes": "a161615f4101ff",
    "indefinite text": "a161617f6161ff",
    "duplicate keys": "a2616101616102",
    "tag 0": "a16161c074323031332d30332d32315432303a30343a30305a",
    "tag 1": "a16161c11a514b67b0",
    "tag 2": "a16161c249010000000000000000",
    "tag 35": "a16161d8236161",
    "tag 55799": "d9d9f7a0",
    "tag 55799 inside": "a16161d9d9f701",
    "unassigned tag 40000": "a16161d99c4001",
    "tag 258 (set)": "a16161d9010280",
    "depth 9": "a16161" + "81" * 8 + "01",
    "trailing bytes": "a000",
    "trailing map": "a0a0",
    "array top level": "80",
    "integer top level": "01",
    "text top level": "6161",
    "integer key": "a10101",
    "byte-string key": "a1410101",
    "nested integer key": "a16161a10101",
    "undefined": "a16161f7",
    "simple 16": "a16161f0",
    "simple 255": "a16161f8ff",
    "invalid utf-8": "a1616162c328",
    "invalid utf-8 key": "a162c32801",
    "huge byte string": "a161615b7fffffffffffffff",
    "huge text": "a161617a7fffffff",
    "huge map": "bb7fffffffffffffff",
    "huge array": "a161619b00000000ffffffff",
    "truncated": "a26161",
    "empty": "",
    "lone break": "a16161ff",
    "reserved info": "a161611c",
}


@pytest.mark.parametrize("hex_bytes", REJECTED.values(), ids=REJECTED.keys())
def test_decoder_rejects(hex_bytes: str) -> None:
    with pytest.raises(RemoteProtocolError):
        codec.decode(bytes.fromhex(hex_bytes))


@pytest.mark.parametrize(
    "value",
    [
        {1: 2},
        {"a": {b"k": 1}},
        {"a": 2**64},
        {"a": -(2**64) - 1},
        {"a": cbor2.undefined},
        {"a": object()},
        {"a": {1, 2}},
        {"a": cbor2.CBORTag(1, 0)},
    ],
)
def test_encoder_refuses(value: Any) -> None:
    with pytest.raises(LocalProtocolError):
        codec.encode(value)


def test_encoder_emits_definite_lengths_and_bytes_bodies() -> None:
    data = codec.encode({"id": 1, "op": "put", "body": b"\x00\xff", "jobs": [{"a": None}]})
    assert b"\x5f" not in data
    assert b"\x9f" not in data
    assert b"\xbf" not in data
    assert codec.decode(data)["body"] == b"\x00\xff"


@pytest.mark.parametrize(
    "message",
    [
        {"id": 1, "op": "put"},
        {"id": 4294967295, "op": "x", "tube": "t"},
        {"id": 0, "closing": "client"},
    ],
)
def test_request_envelope_ok(message: dict[str, object]) -> None:
    assert codec.request_envelope_problem(message) is None


@pytest.mark.parametrize(
    "message",
    [
        {"op": "put"},
        {"id": -1, "op": "put"},
        {"id": 4294967296, "op": "put"},
        {"id": True, "op": "put"},
        {"id": 1.0, "op": "put"},
        {"id": "1", "op": "put"},
        {"id": 1},
        {"id": 1, "op": 5},
        {"id": 0, "op": "put"},
    ],
)
def test_request_envelope_refused(message: dict[str, object]) -> None:
    assert codec.request_envelope_problem(message) is not None


@pytest.mark.parametrize(
    "message",
    [
        {"id": 1, "result": {}},
        {"id": 1, "result": [], "extra": 1},
        {"id": 2, "error": "NOT_FOUND", "message": "gone", "field": "job_id"},
        {"id": 2, "error": "DRAINING", "message": "later", "retry_after": 1.5},
        {"id": 0, "event": "shutting_down", "grace": 10},
        {"id": 0, "closing": "revoked", "error": "UNAUTHORIZED", "message": "bye"},
        {"id": 0, "closing": "idle"},
    ],
)
def test_response_envelope_ok(message: dict[str, object]) -> None:
    assert codec.response_envelope_problem(message) is None


@pytest.mark.parametrize(
    "message",
    [
        {"id": 1},
        {"id": 1, "result": {}, "error": "X", "message": ""},
        {"id": 1, "result": 5},
        {"id": 1, "error": "X"},
        {"id": 1, "error": 1, "message": "m"},
        {"id": 1, "error": "X", "message": "m", "field": 3},
        {"id": 1, "error": "X", "message": "m", "retry_after": "soon"},
        {"id": 1, "error": "X", "message": "m", "retry_after": math.nan},
        {"id": 0, "result": {}},
        {"id": 0, "closing": "x", "error": 5},
        {"id": -3, "result": {}},
    ],
)
def test_response_envelope_refused(message: dict[str, object]) -> None:
    assert codec.response_envelope_problem(message) is not None


def test_the_reused_decoder_stays_strict_after_errors() -> None:
    """decode_item reuses one decoder per thread; a failure must not leave state behind."""
    good = cbor2.dumps({"id": 1, "op": "ping"})
    for bad in (b"\xa2\x61a\x01\x61a\x02", b"\xd8\x23\x61x", b"\xbf\xff", good + b"\x00", b"\xa1"):
        with pytest.raises(RemoteProtocolError):
            codec.decode(bad)
        assert codec.decode(good) == {"id": 1, "op": "ping"}
