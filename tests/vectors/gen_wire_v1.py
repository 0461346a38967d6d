"""Generate tests/vectors/wire_v1.json, the wire protocol v1 test vectors (wire.md §10).

Run: `.venv/bin/python -m tests.vectors.gen_wire_v1 --write` (from the repository root).

Every input is derived from a label: `H(label, "allq1-testvector")` (BLAKE2b-256 with that
personalisation), truncated to 24 bytes for nonces. Sections `inputs`, `handshake`,
`rejected_handshakes`, `rejected_frames`, `decoder` and `requests` (§10.6: per op one valid
and one invalid request) are deterministic; `transport` is verify-only because libsodium
draws each secretstream header from its RNG, so it changes on every run and tests check it by
decrypting, not by comparing.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nacl.bindings as sodium

from allq.wire import codec, handshake
from allq.wire.connection import (
    TAG_FINAL,
    TAG_PUSH,
    Connection,
    HandshakeComplete,
    MessageReceived,
    Role,
)
from allq.wire.handshake import (
    H,
    HelloRandomness,
    ReplayCache,
    WelcomeRandomness,
    make_hello,
)
from allq.wire.keyfiles import (
    AllowList,
    KeyPair,
    format_allow_line,
    format_public_key,
    format_secret_key,
)

PATH = Path(__file__).with_name("wire_v1.json")
PERSON = b"allq1-testvector"
TS = 1_700_000_000
SERVER_NOW = TS + 7
MAX_FRAME = 1_048_576 + 65_536
LOW_ORDER = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
DETERMINISTIC = (
    "inputs",
    "handshake",
    "rejected_handshakes",
    "rejected_frames",
    "decoder",
    "requests",
)


def label(name: str, size: int = 32) -> bytes:
    return H(name.encode(), PERSON)[:size]


SERVER = KeyPair.from_secret(label("server-static"), "server", "server")
CLIENT = KeyPair.from_secret(label("client-static"), "client", "client-1")
STRANGER = KeyPair.from_secret(label("unlisted-client-static"), "client", "unlisted")
OTHER_SERVER = KeyPair.from_secret(label("other-server-static"), "server", "other")
ALLOW = AllowList.of({CLIENT.public: "client-1"})
HELLO_RAND = HelloRandomness(label("client-ephemeral"), label("n_v", 24), label("n_o", 24))
WELCOME_RAND = WelcomeRandomness(label("server-ephemeral"), label("n_w", 24))


def diag(value: Any) -> str:
    """CBOR diagnostic notation (RFC 8949 §8) of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, bytes):
        return f"h'{value.hex()}'"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(diag(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{diag(k)}: {diag(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def hello_for(
    keys: KeyPair = CLIENT, ts: int = TS, rand: HelloRandomness = HELLO_RAND
) -> handshake.ClientHello:
    return make_hello(keys, SERVER.public, ts, rand)


def handshake_section() -> tuple[dict[str, Any], dict[str, Any]]:
    client_hello = hello_for()
    accepted = handshake.check_hello(client_hello.hello, SERVER, ALLOW, ReplayCache(), SERVER_NOW)
    welcome, server_keys = handshake.make_welcome(accepted, SERVER, WELCOME_RAND)
    client_keys = handshake.check_welcome(client_hello, CLIENT, welcome)
    assert (client_keys.c2s, client_keys.s2c) == (server_keys.c2s, server_keys.s2c)
    e_s = handshake.public_of(WELCOME_RAND.ephemeral_secret)
    inputs = {
        "server_static_secret": SERVER.secret.hex(),
        "client_static_secret": CLIENT.secret.hex(),
        "client_ephemeral_secret": HELLO_RAND.ephemeral_secret.hex(),
        "server_ephemeral_secret": WELCOME_RAND.ephemeral_secret.hex(),
        "unlisted_client_static_secret": STRANGER.secret.hex(),
        "other_server_static_secret": OTHER_SERVER.secret.hex(),
        "n_v": HELLO_RAND.n_v.hex(),
        "n_o": HELLO_RAND.n_o.hex(),
        "n_w": WELCOME_RAND.n_w.hex(),
        "ts": TS,
        "server_now": SERVER_NOW,
        "max_frame": MAX_FRAME,
        "derivation": "secret = BLAKE2b-256(label, person='allq1-testvector'); nonce = first 24",
    }
    out = {
        "server_public": SERVER.public.hex(),
        "client_public": CLIENT.public.hex(),
        "client_ephemeral_public": client_hello.ephemeral_public.hex(),
        "server_ephemeral_public": e_s.hex(),
        "vouch_plaintext": client_hello.vouch_plaintext.hex(),
        "vouch": client_hello.vouch.hex(),
        "outer_plaintext": client_hello.outer_plaintext.hex(),
        "hello": client_hello.hello.hex(),
        "hello_hash": H(client_hello.hello, handshake.P_HELLO).hex(),
        "welcome_plaintext": (e_s + H(client_hello.hello, handshake.P_HELLO)).hex(),
        "welcome": welcome.hex(),
        "transcript": client_keys.transcript.hex(),
        "client_kx_rx": client_keys.rx.hex(),
        "client_kx_tx": client_keys.tx.hex(),
        "server_kx_rx": server_keys.rx.hex(),
        "server_kx_tx": server_keys.tx.hex(),
        "client_dh1": client_keys.dh1.hex(),
        "client_dh2": client_keys.dh2.hex(),
        "server_dh1": server_keys.dh1.hex(),
        "server_dh2": server_keys.dh2.hex(),
        "k_c2s": client_keys.c2s.hex(),
        "k_s2c": client_keys.s2c.hex(),
        "client_fingerprint": CLIENT.fingerprint,
        "server_fingerprint": SERVER.fingerprint,
        "client_secret_key_file": format_secret_key(CLIENT),
        "server_public_key_file": format_public_key(SERVER.public_key()),
        "allow_line": format_allow_line(CLIENT.public_key()),
    }
    return inputs, out


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def custom_hello(vouch_plain: bytes, client: KeyPair = CLIENT) -> bytes:
    e_pub = handshake.public_of(HELLO_RAND.ephemeral_secret)
    vouch = handshake._box(client.secret, SERVER.public, vouch_plain, HELLO_RAND.n_v)
    outer = handshake._box(
        HELLO_RAND.ephemeral_secret, SERVER.public, CLIENT.public + vouch, HELLO_RAND.n_o
    )
    return b"ALQ\x01" + e_pub + outer


def rejected_handshakes() -> dict[str, Any]:
    hello = hello_for().hello
    e_pub = hello[4:36]
    stamp = struct.pack(">Q", TS)
    other = handshake.public_of(label("some-other-ephemeral"))
    server_cases: list[tuple[str, bytes, str, int, bool]] = [
        ("wrong magic", b"ALX" + hello[3:], "bad magic", SERVER_NOW, False),
        ("version 02", hello[:3] + b"\x02" + hello[4:], "unsupported version", SERVER_NOW, False),
    ]
    fields = [
        ("magic", 1),
        ("version", 3),
        ("E_C", 20),
        ("n_o", 40),
        ("outer MAC", 65),
        ("outer ciphertext: C", 80),
        ("outer ciphertext: n_v", 120),
        ("outer ciphertext: vouch MAC", 140),
        ("outer ciphertext: vouch ciphertext", 200),
    ]
    reasons = {"magic": "bad magic", "version": "unsupported version"}
    for name, offset in fields:
        reason = reasons.get(name, "outer box")
        server_cases.append(
            (f"flipped bit: {name}", flip(hello, offset), reason, SERVER_NOW, False)
        )
    server_cases += [
        ("unlisted C", hello_for(STRANGER).hello, "not allowed", SERVER_NOW, False),
        (
            "vouch E_C mismatch",
            custom_hello(other + SERVER.public + stamp),
            "vouch binding",
            SERVER_NOW,
            False,
        ),
        (
            "vouch S mismatch",
            custom_hello(e_pub + OTHER_SERVER.public + stamp),
            "vouch binding",
            SERVER_NOW,
            False,
        ),
        (
            "vouch by another key",
            custom_hello(e_pub + SERVER.public + stamp, STRANGER),
            "vouch",
            SERVER_NOW,
            False,
        ),
        ("ts 121 s behind", hello_for(ts=SERVER_NOW - 121).hello, "clock skew", SERVER_NOW, False),
        ("ts 121 s ahead", hello_for(ts=SERVER_NOW + 121).hello, "clock skew", SERVER_NOW, False),
        ("same HELLO twice", hello, "replay", SERVER_NOW, True),
        ("219 bytes then EOF", hello[:219], "short hello", SERVER_NOW, False),
        ("low-order E_C", hello[:4] + LOW_ORDER + hello[36:], "outer box", SERVER_NOW, False),
    ]
    accepted = handshake.check_hello(hello, SERVER, ALLOW, ReplayCache(), SERVER_NOW)
    welcome, _ = handshake.make_welcome(accepted, SERVER, WELCOME_RAND)
    fake_e = handshake.public_of(label("other-server-ephemeral"))
    impostor = fake_e + handshake._box(
        OTHER_SERVER.secret, e_pub, fake_e + H(hello, handshake.P_HELLO), WELCOME_RAND.n_w
    )
    another_hello = hello_for(
        rand=HelloRandomness(HELLO_RAND.ephemeral_secret, label("n_v-2", 24), label("n_o-2", 24))
    ).hello
    e_s = welcome[:32]
    wrong_hash = e_s + handshake._box(
        SERVER.secret, e_pub, e_s + H(another_hello, handshake.P_HELLO), WELCOME_RAND.n_w
    )
    client_cases = [
        ("WELCOME under another server key", impostor),
        ("flipped bit: E_S", flip(welcome, 5)),
        ("flipped bit: n_w", flip(welcome, 40)),
        ("flipped bit: MAC", flip(welcome, 60)),
        ("flipped bit: ciphertext", flip(welcome, 100)),
        ("hash of another HELLO", wrong_hash),
        ("135 bytes then EOF", welcome[:135]),
    ]
    return {
        "note": "server: feed `hello` at `server_now` (after accepting it once if "
        "`replay_first`); expect a silent close with `reason` in the log and zero bytes "
        "written. client: after sending the vector HELLO, feed `welcome`; expect abort.",
        "server": [
            {
                "name": n,
                "hello": h.hex(),
                "server_now": now,
                "replay_first": twice,
                "reason": reason,
            }
            for n, h, reason, now, twice in server_cases
        ],
        "client": [
            {
                "name": n,
                "welcome": w.hex(),
                "reason": "refused" if len(w) < 136 else "server key mismatch",
            }
            for n, w in client_cases
        ],
    }


C2S_MESSAGES: list[dict[str, Any]] = [
    {
        "id": 1,
        "op": "put",
        "tube": "emails",
        "body": bytes(range(8)) + b"\xff\xfe",
        "priority": 10,
        "ttr": 60,
    },
    {
        "id": 2,
        "op": "reserve",
        "tubes": ["emails", "sms"],
        "count": 2,
        "timeout": 1.5,
        "owner": "worker-7",
    },
    {"id": 3, "op": "peek", "job_id": "s1,999"},
    {"id": 4, "op": "put_batch", "jobs": [{"tube": "a"}, {"tube": "b", "delay": 5}]},
    {"id": 5, "op": "ping"},
    {"id": 6, "op": "stats"},
]
C2S_FINAL: dict[str, Any] = {"id": 0, "closing": "client"}


def job_view(local: int, lease: str) -> dict[str, Any]:
    return {
        "id": f"s1,{local}",
        "tube": "emails",
        "state": "reserved",
        "body": b"\x00job" + bytes([local]),
        "priority": 10,
        "ttr": 60,
        "created_at": 1699999990.25,
        "shard_key": None,
        "parent_id": None,
        "reserves": 1,
        "timeouts": 0,
        "releases": 0,
        "buries": 0,
        "kicks": 0,
        "due_at": None,
        "lease": lease,
        "ttr_deadline": 1700000067.0,
    }


S2C_MESSAGES: list[dict[str, Any]] = [
    {"id": 1, "result": {"id": "s1,1", "state": "ready", "duplicate": False}},
    {"id": 2, "result": [job_view(1, "A" * 22), job_view(2, "b-_" + "x" * 19)]},
    {"id": 3, "error": "NOT_FOUND", "message": "no such job", "field": "job_id"},
    {"id": 0, "event": "shutting_down", "grace": 10},
    {"id": 5, "result": {"pong": True, "server_id": "s1", "version": "0.1.0", "now": 1700000007.5}},
    {
        "id": 4,
        "result": [
            {"id": "s1,2", "state": "ready", "duplicate": False},
            {"error": {"code": "DRAINING", "field": None, "message": "draining"}},
        ],
    },
]
S2C_FINAL: dict[str, Any] = {"id": 0, "closing": "shutdown"}


def open_pair() -> tuple[Connection, Connection, bytes, bytes]:
    """A deterministic handshake between engines; returns both and both stream headers."""
    client = Connection(Role.CLIENT, CLIENT, server_public=SERVER.public)
    server = Connection(
        Role.SERVER,
        SERVER,
        allowlist=ALLOW,
        replay_cache=ReplayCache(),
        receive_cap=MAX_FRAME,
        welcome_randomness=WELCOME_RAND,
    )
    server.receive_data(client.start(TS, HELLO_RAND))
    welcome = server.next_event(SERVER_NOW)
    assert isinstance(welcome, HandshakeComplete)
    client.receive_data(welcome.data)
    done = client.next_event()
    assert isinstance(done, HandshakeComplete)
    return client, server, done.data, welcome.data[136:]


def frame_record(frame: bytes, message: dict[str, Any], tag: int) -> dict[str, Any]:
    plaintext = codec.encode(message)
    return {
        "L": struct.unpack(">I", frame[:4])[0],
        "frame": frame.hex(),
        "tag": tag,
        "plaintext": plaintext.hex(),
        "diagnostic": diag(message),
    }


def transport_section() -> dict[str, Any]:
    client, server, c_header, s_header = open_pair()
    server.receive_data(c_header)
    c2s = []
    for message in C2S_MESSAGES:
        frame = client.send(message)
        server.receive_data(frame)
        assert isinstance(server.next_event(), MessageReceived)
        c2s.append(frame_record(frame, message, 0))
    s2c = [frame_record(server.send(m), m, 0) for m in S2C_MESSAGES]
    s2c.append(frame_record(server.send(S2C_FINAL, final=True), S2C_FINAL, TAG_FINAL))
    c2s.append(frame_record(client.send(C2S_FINAL, final=True), C2S_FINAL, TAG_FINAL))
    # A frame with TAG_PUSH on a separate c2s stream (for the rejection cases).
    push_client, _, push_header, _ = open_pair()
    assert push_client._push is not None
    plaintext = codec.encode({"id": 1, "op": "ping"})
    ad = struct.pack(">I", len(plaintext) + 17)
    push = ad + sodium.crypto_secretstream_xchacha20poly1305_push(
        push_client._push, plaintext, ad, TAG_PUSH
    )
    return {
        "note": "verify-only: headers are random per run; pull each frame with the header "
        "and k_c2s / k_s2c, L (4 bytes) as associated data",
        "c2s": {"header": c_header.hex(), "frames": c2s},
        "s2c": {"header": s_header.hex(), "frames": s2c},
        "c2s_push": {
            "header": push_header.hex(),
            "frames": [frame_record(push, {"id": 1, "op": "ping"}, TAG_PUSH)],
        },
    }


def rejected_frames() -> list[dict[str, Any]]:
    """Mutations of the `transport` c2s frames; each must close the receiver."""
    return [
        {"name": "L = 17", "stream": "c2s", "frames": [0], "set_length": 17},
        {"name": "L = max_frame + 1", "stream": "c2s", "frames": [0], "set_length": MAX_FRAME + 1},
        {"name": "flipped bit in L", "stream": "c2s", "frames": [0, 1], "flip": [0, 3]},
        {"name": "flipped bit in ciphertext", "stream": "c2s", "frames": [0], "flip": [0, 10]},
        {"name": "flipped bit in MAC", "stream": "c2s", "frames": [0], "flip": [0, -1]},
        {"name": "replayed frame", "stream": "c2s", "frames": [0, 0]},
        {"name": "swapped frames", "stream": "c2s", "frames": [1, 0]},
        {"name": "dropped frame", "stream": "c2s", "frames": [0, 2]},
        {"name": "TAG_PUSH", "stream": "c2s_push", "frames": [0]},
        {
            "name": "EOF without TAG_FINAL",
            "stream": "c2s",
            "frames": [0, 1, 2, 3, 4, 5],
            "eof": True,
        },
        {"name": "data after TAG_FINAL", "stream": "c2s", "frames": [0, 1, 2, 3, 4, 5, 6, 0]},
        {
            "name": "EOF after TAG_FINAL (accepted: clean close)",
            "stream": "c2s",
            "frames": [0, 1, 2, 3, 4, 5, 6],
            "eof": True,
            "accept": True,
        },
    ]


def decoder_cases() -> list[dict[str, Any]]:
    rejected = {
        "indefinite-length map": "bf616101ff",
        "indefinite-length array": "a161619f01ff",
        "indefinite-length byte string": "a161615f4101ff",
        "indefinite-length text string": "a161617f6161ff",
        "duplicate keys": "a2616101616102",
        "tag 0 (date/time text)": "a16161c074323031332d30332d32315432303a30343a30305a",
        "tag 1 (epoch time)": "a16161c11a514b67b0",
        "tag 2 (bignum)": "a16161c249010000000000000000",
        "tag 35 (regexp)": "a16161d8236161",
        "tag 55799 (self-describe)": "d9d9f7a0",
        "unassigned tag 40000": "a16161d99c4001",
        "depth 9": "a16161" + "81" * 8 + "01",
        "trailing bytes": "a000",
        "non-map top level (array)": "80",
        "non-map top level (integer)": "01",
        "integer map key": "a10101",
        "byte-string map key": "a1410101",
        "undefined": "a16161f7",
        "simple value 16": "a16161f0",
        "invalid UTF-8 text": "a1616162c328",
        "huge declared byte-string length": "a161615b7fffffffffffffff",
        "huge declared map length": "bb7fffffffffffffff",
    }
    cases: list[dict[str, Any]] = [
        {"name": name, "cbor": hex_bytes, "outcome": "close"}
        for name, hex_bytes in rejected.items()
    ]
    accepted: list[tuple[str, bytes, dict[str, str]]] = [
        ("depth 8", bytes.fromhex("a16161" + "81" * 7 + "01"), {}),
        (
            "NaN priority (decodes; validation rejects)",
            codec.encode({"id": 1, "op": "put", "tube": "t", "priority": math.nan}),
            {"code": "BAD_FORMAT", "field": "priority"},
        ),
        (
            "true where an integer is due",
            codec.encode({"id": 1, "op": "put", "tube": "t", "priority": True}),
            {"code": "BAD_FORMAT", "field": "priority"},
        ),
        (
            "5.5 where an integer is due",
            codec.encode({"id": 1, "op": "put", "tube": "t", "priority": 5.5}),
            {"code": "BAD_FORMAT", "field": "priority"},
        ),
        (
            "5.0 where an integer is due (accepted)",
            codec.encode({"id": 1, "op": "put", "tube": "t", "priority": 5.0}),
            {},
        ),
        ("float16 1.0", bytes.fromhex("a16161f93c00"), {}),
    ]
    for name, data, validation in accepted:
        case: dict[str, Any] = {
            "name": name,
            "cbor": data.hex(),
            "outcome": "decode",
            "diagnostic": diag(codec.decode(data)),
        }
        if validation:
            case["validation"] = validation
        cases.append(case)
    return cases


# -- §10.6: per op, one valid and one invalid request ------------------------------------------

VECTOR_JOB = "s1,vector-job-00000000001"
VECTOR_LOCAL = "vector-job-00000000002"
VECTOR_LEASE = "vector-lease-000000001"
NO_JOB = {"code": "NOT_FOUND", "field": "job_id"}
NO_TUBE = {"code": "NOT_FOUND", "field": "tube"}


def bad(code: str, field: str) -> dict[str, str]:
    return {"code": code, "field": field}


#: (op, kind, name, arguments, expected outcome on a fresh server). For a valid request "ok"
#: means a result; a code means the fields were accepted and the state decided (NOT_FOUND,
#: TIMED_OUT). An invalid request breaks exactly one rule: a field rule of semantics.md §13.2,
#: the put_batch envelope of §13.1, or the `cancel` fields of wire.md §5.3.
# fmt: off
REQUEST_CASES: list[tuple[str, str, str, dict[str, Any], Any]] = [
    ("put", "valid", "every common field",
     {"tube": "emails", "body": b"\x00\xffhello", "priority": 10, "ttr": 60.5,
      "expired_limit": 3, "max_releases": 0, "shard_key": "user:42",
      "idempotency_key": "order-7"}, "ok"),
    ("put", "invalid", "priority above u32",
     {"tube": "emails", "priority": 4_294_967_296}, bad("BAD_FORMAT", "priority")),
    ("put_batch", "valid", "two items, one delayed",
     {"jobs": [{"tube": "a"}, {"tube": "b", "delay": 5, "body": b""}]}, "ok"),
    ("put_batch", "invalid", "empty jobs list (envelope)",
     {"jobs": []}, bad("BAD_FORMAT", "jobs")),
    ("put_parent", "valid", "every parent field",
     {"tube": "flows", "timeout": 3600, "run_on_timeout": True, "limit": 2, "noop": False,
      "on_child_failure": "bury"}, "ok"),
    ("put_parent", "invalid", "delay is not a put_parent field",
     {"tube": "flows", "delay": 5}, bad("BAD_FORMAT", "delay")),
    ("reserve", "valid", "two tubes, a duplicate, no wait",
     {"tubes": ["emails", "sms", "emails"], "count": 2, "timeout": 0, "owner": "worker-7"},
     {"code": "TIMED_OUT", "field": None}),
    ("reserve", "invalid", "bad second tube name",
     {"tubes": ["emails", "no spaces"]}, bad("BAD_TUBE", "tubes[1]")),
    ("cancel", "valid", "no such reserve in flight", {"target": 7}, "ok"),
    ("cancel", "invalid", "target as text", {"target": "7"}, bad("BAD_FORMAT", "target")),
    ("done", "valid", "full id and lease", {"job_id": VECTOR_JOB, "lease": VECTOR_LEASE},
     NO_JOB),
    ("done", "invalid", "job id one character short",
     {"job_id": VECTOR_JOB[:-1], "lease": VECTOR_LEASE}, bad("BAD_FORMAT", "job_id")),
    ("delete", "valid", "local id, no lease", {"job_id": VECTOR_LOCAL}, NO_JOB),
    ("delete", "invalid", "lease with a bad character",
     {"job_id": VECTOR_LOCAL, "lease": VECTOR_LEASE[:-1] + "."}, bad("BAD_FORMAT", "lease")),
    ("touch", "valid", "id and lease", {"job_id": VECTOR_JOB, "lease": VECTOR_LEASE}, NO_JOB),
    ("touch", "invalid", "job_id missing", {"lease": VECTOR_LEASE}, bad("BAD_FORMAT", "job_id")),
    ("release", "valid", "priority and a fractional delay",
     {"job_id": VECTOR_JOB, "lease": VECTOR_LEASE, "priority": 0, "delay": 2.5}, NO_JOB),
    ("release", "invalid", "negative delay",
     {"job_id": VECTOR_JOB, "delay": -1}, bad("BAD_FORMAT", "delay")),
    ("bury", "valid", "priority as a float with no fraction",
     {"job_id": VECTOR_JOB, "priority": 7.0}, NO_JOB),
    ("bury", "invalid", "true as priority",
     {"job_id": VECTOR_JOB, "priority": True}, bad("BAD_FORMAT", "priority")),
    ("unreserve", "valid", "id and lease", {"job_id": VECTOR_JOB, "lease": VECTOR_LEASE},
     NO_JOB),
    ("unreserve", "invalid", "lease missing", {"job_id": VECTOR_JOB},
     bad("BAD_FORMAT", "lease")),
    ("kick", "valid", "bound, absent tube", {"tube": "emails", "bound": 10}, "ok"),
    ("kick", "invalid", "bound 0", {"tube": "emails", "bound": 0}, bad("BAD_FORMAT", "bound")),
    ("kick_job", "valid", "local id", {"job_id": VECTOR_LOCAL}, NO_JOB),
    ("kick_job", "invalid", "integer job id", {"job_id": 5}, bad("BAD_FORMAT", "job_id")),
    ("set_children_started", "valid", "full id", {"job_id": VECTOR_JOB}, NO_JOB),
    ("set_children_started", "invalid", "unknown field",
     {"job_id": VECTOR_JOB, "limit": 2}, bad("BAD_FORMAT", "limit")),
    ("peek", "valid", "id of another server", {"job_id": "s2," + VECTOR_LOCAL}, NO_JOB),
    ("peek", "invalid", "null job id", {"job_id": None}, bad("BAD_FORMAT", "job_id")),
    ("peek_ready", "valid", "absent tube", {"tube": "emails"}, NO_TUBE),
    ("peek_ready", "invalid", "name starting with '-'", {"tube": "-x"},
     bad("BAD_TUBE", "tube")),
    ("peek_delayed", "valid", "absent tube", {"tube": "emails"}, NO_TUBE),
    ("peek_delayed", "invalid", "name of dots only", {"tube": ".."}, bad("BAD_TUBE", "tube")),
    ("peek_buried", "valid", "absent tube", {"tube": "emails"}, NO_TUBE),
    ("peek_buried", "invalid", "integer tube", {"tube": 7}, bad("BAD_TUBE", "tube")),
    ("stats_job", "valid", "local id", {"job_id": VECTOR_LOCAL}, NO_JOB),
    ("stats_job", "invalid", "23-character id", {"job_id": VECTOR_LOCAL + "x"},
     bad("BAD_FORMAT", "job_id")),
    ("stats_tube", "valid", "absent tube", {"tube": "emails"}, NO_TUBE),
    ("stats_tube", "invalid", "201-byte name", {"tube": "a" * 201}, bad("BAD_TUBE", "tube")),
    ("stats", "valid", "no fields", {}, "ok"),
    ("stats", "invalid", "unknown field", {"verbose": True}, bad("BAD_FORMAT", "verbose")),
    ("list_tubes", "valid", "after and limit", {"after": "a", "limit": 10}, "ok"),
    ("list_tubes", "invalid", "limit 10001", {"limit": 10_001}, bad("BAD_FORMAT", "limit")),
    ("ping", "valid", "no fields", {}, "ok"),
    ("ping", "invalid", "unknown field", {"tube": "t"}, bad("BAD_FORMAT", "tube")),
    ("pause", "valid", "duration", {"tube": "emails", "duration": 30}, "ok"),
    ("pause", "invalid", "NaN duration", {"tube": "emails", "duration": math.nan},
     bad("BAD_FORMAT", "duration")),
    ("unpause", "valid", "absent tube", {"tube": "emails"}, "ok"),
    ("unpause", "invalid", "tube missing", {}, bad("BAD_FORMAT", "tube")),
    ("throttle", "valid", "fractional tps", {"tube": "emails", "tps": 2.5}, "ok"),
    ("throttle", "invalid", "infinite tps", {"tube": "emails", "tps": math.inf},
     bad("BAD_FORMAT", "tps")),
    ("drain", "valid", "one tube", {"tube": "emails"}, "ok"),
    ("drain", "invalid", "space in the name", {"tube": "a b"}, bad("BAD_TUBE", "tube")),
    ("undrain", "valid", "server-wide (no tube)", {}, "ok"),
    ("undrain", "invalid", "empty name", {"tube": ""}, bad("BAD_TUBE", "tube")),
    ("set_shard_limit", "valid", "fair tube", {"tube": "fq-orders", "limit": 2}, "ok"),
    ("set_shard_limit", "invalid", "fractional limit", {"tube": "fq-orders", "limit": 2.5},
     bad("BAD_FORMAT", "limit")),
    ("clear", "valid", "absent tube", {"tube": "emails"}, "ok"),
    ("clear", "invalid", "slash in the name", {"tube": "a/b"}, bad("BAD_TUBE", "tube")),
]
# fmt: on


def request_cases() -> dict[str, Any]:
    cases: list[dict[str, Any]] = []
    for index, (op, kind, name, args, expect) in enumerate(REQUEST_CASES, start=1):
        message = {"id": index, "op": op, **args}
        data = codec.encode(message)
        assert diag(codec.decode(data)) == diag(message)
        cases.append(
            {
                "op": op,
                "kind": kind,
                "name": name,
                "cbor": data.hex(),
                "diagnostic": diag(message),
                "expect": expect,
            }
        )
    return {
        "note": "send each request to a fresh server (`server_id`, clock at `now`, default "
        "settings). `expect` is 'ok' (a result) or the error code and field; on a valid "
        "request a code is a state outcome (the fields were accepted). `cancel` is a "
        "session op (wire.md §5.3), the rest are engine ops (semantics.md §14).",
        "server_id": "s1",
        "now": SERVER_NOW,
        "cases": cases,
    }


def generate() -> dict[str, Any]:
    inputs, hs = handshake_section()
    return {
        "protocol": "allq wire v1",
        "inputs": inputs,
        "handshake": hs,
        "transport": transport_section(),
        "rejected_handshakes": rejected_handshakes(),
        "rejected_frames": rejected_frames(),
        "decoder": decoder_cases(),
        "requests": request_cases(),
    }


def dumps(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None, out: Callable[[str], object] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write", action="store_true", help=f"write {PATH.name}")
    args = parser.parse_args(argv)
    text = dumps(generate())
    if args.write:
        PATH.write_text(text, encoding="utf-8")
        out(f"wrote {PATH}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
