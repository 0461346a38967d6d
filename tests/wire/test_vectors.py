"""The committed wire vectors (tests/vectors/wire_v1.json, wire.md §10).

Rules: the deterministic sections must equal a fresh run of the generator; the handshake is
replayed from the file's inputs alone (hex), byte for byte, through the real engines; the
verify-only transport frames are opened with the file's keys; every rejection case of the
file is run through the engine and must fail with the recorded reason. The `requests`
section (§10.6) is decoded and applied: engine ops to a fresh engine (a rejection must leave
its snapshot unchanged), and every request, `cancel` included, through the real session over
the in-memory server, whose answer must carry the recorded code and field.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from allq.errors import AllQError
from allq.tubes.validate import OPERATIONS
from allq.wire import codec, handshake
from allq.wire.connection import (
    NEED_DATA,
    PEER_CLOSED,
    Connection,
    FramingError,
    HandshakeComplete,
    MessageReceived,
    Role,
)
from allq.wire.handshake import HandshakeError, HelloRandomness, ReplayCache, WelcomeRandomness
from allq.wire.keyfiles import (
    AllowList,
    KeyPair,
    format_allow_line,
    format_public_key,
    format_secret_key,
    parse_allowlist,
    parse_public_key,
    parse_secret_key,
)
from allq.wire.transport import RemoteProtocolError
from tests.helpers.engines import diff, make_engine, snapshot
from tests.helpers.servers import memory_server
from tests.vectors import gen_wire_v1

VECTORS: dict[str, Any] = json.loads(gen_wire_v1.PATH.read_text(encoding="utf-8"))
INPUTS = VECTORS["inputs"]
HS = VECTORS["handshake"]


def x(name: str) -> bytes:
    return bytes.fromhex(INPUTS[name])


SERVER = KeyPair.from_secret(x("server_static_secret"), "server", "server")
CLIENT = KeyPair.from_secret(x("client_static_secret"), "client", "client-1")
ALLOW = AllowList.of({CLIENT.public: "client-1"})
HELLO_RAND = HelloRandomness(x("client_ephemeral_secret"), x("n_v"), x("n_o"))
WELCOME_RAND = WelcomeRandomness(x("server_ephemeral_secret"), x("n_w"))


def test_deterministic_sections_match_the_generator() -> None:
    fresh = json.loads(gen_wire_v1.dumps(gen_wire_v1.generate()))
    for section in gen_wire_v1.DETERMINISTIC:
        assert fresh[section] == VECTORS[section], f"section {section} changed: regenerate"


def server() -> Connection:
    return Connection(
        Role.SERVER,
        SERVER,
        allowlist=ALLOW,
        replay_cache=ReplayCache(),
        receive_cap=INPUTS["max_frame"],
        welcome_randomness=WELCOME_RAND,
    )


def client() -> Connection:
    return Connection(Role.CLIENT, CLIENT, server_public=SERVER.public)


def replayed_handshake() -> tuple[Connection, Connection]:
    c, s = client(), server()
    hello = c.start(INPUTS["ts"], HELLO_RAND)
    assert hello.hex() == HS["hello"]
    s.receive_data(hello)
    welcome = s.next_event(INPUTS["server_now"])
    assert isinstance(welcome, HandshakeComplete)
    assert welcome.data[:136].hex() == HS["welcome"]
    c.receive_data(welcome.data[:136])  # stream headers come from the vector file
    assert isinstance(c.next_event(), HandshakeComplete)
    return c, s


def test_handshake_replayed_byte_for_byte() -> None:
    assert SERVER.public.hex() == HS["server_public"]
    assert CLIENT.public.hex() == HS["client_public"]
    assert SERVER.fingerprint == HS["server_fingerprint"]
    assert CLIENT.fingerprint == HS["client_fingerprint"]
    replayed_handshake()
    hello = handshake.make_hello(CLIENT, SERVER.public, INPUTS["ts"], HELLO_RAND)
    assert hello.vouch_plaintext.hex() == HS["vouch_plaintext"]
    assert hello.vouch.hex() == HS["vouch"]
    assert hello.outer_plaintext.hex() == HS["outer_plaintext"]
    assert hello.ephemeral_public.hex() == HS["client_ephemeral_public"]


def test_session_keys() -> None:
    hello = handshake.make_hello(CLIENT, SERVER.public, INPUTS["ts"], HELLO_RAND)
    accepted = handshake.check_hello(
        hello.hello, SERVER, ALLOW, ReplayCache(), INPUTS["server_now"]
    )
    welcome, server_keys = handshake.make_welcome(accepted, SERVER, WELCOME_RAND)
    client_keys = handshake.check_welcome(hello, CLIENT, welcome)
    assert welcome[:32].hex() == HS["server_ephemeral_public"]
    assert handshake.H(hello.hello, handshake.P_HELLO).hex() == HS["hello_hash"]
    assert client_keys.transcript.hex() == server_keys.transcript.hex() == HS["transcript"]
    assert (client_keys.rx.hex(), client_keys.tx.hex()) == (HS["client_kx_rx"], HS["client_kx_tx"])
    assert (server_keys.rx.hex(), server_keys.tx.hex()) == (HS["server_kx_rx"], HS["server_kx_tx"])
    assert client_keys.rx == server_keys.tx
    assert (client_keys.dh1.hex(), client_keys.dh2.hex()) == (HS["client_dh1"], HS["client_dh2"])
    assert client_keys.dh1 == server_keys.dh1
    assert client_keys.dh2 == server_keys.dh2
    assert client_keys.c2s.hex() == server_keys.c2s.hex() == HS["k_c2s"]
    assert client_keys.s2c.hex() == server_keys.s2c.hex() == HS["k_s2c"]


def test_key_file_texts() -> None:
    assert format_secret_key(CLIENT) == HS["client_secret_key_file"]
    assert format_public_key(SERVER.public_key()) == HS["server_public_key_file"]
    assert format_allow_line(CLIENT.public_key()) == HS["allow_line"]
    assert parse_secret_key(HS["client_secret_key_file"]) == CLIENT
    assert parse_public_key(HS["server_public_key_file"]).public == SERVER.public
    assert CLIENT.public in parse_allowlist(HS["allow_line"])


def frames_of(stream: str) -> list[bytes]:
    return [bytes.fromhex(f["frame"]) for f in VECTORS["transport"][stream]["frames"]]


@pytest.mark.parametrize("direction", ["c2s", "s2c"])
def test_transport_frames_open_with_the_vector_keys(direction: str) -> None:
    c, s = replayed_handshake()
    receiver = s if direction == "c2s" else c
    section = VECTORS["transport"][direction]
    assert len(section["frames"]) >= 6
    if direction == "s2c":  # the client only accepts answers to requests it sent
        for message in gen_wire_v1.C2S_MESSAGES:
            c.send(message)
    receiver.receive_data(bytes.fromhex(section["header"]))
    for record in section["frames"]:
        frame = bytes.fromhex(record["frame"])
        assert struct.unpack(">I", frame[:4])[0] == record["L"] == len(frame) - 4
        assert record["L"] == len(bytes.fromhex(record["plaintext"])) + 17
        receiver.receive_data(frame)
        event = receiver.next_event()
        assert isinstance(event, MessageReceived)
        assert event.message == codec.decode(bytes.fromhex(record["plaintext"]))
        assert event.final == (record["tag"] == 3)
        assert gen_wire_v1.diag(event.message) == record["diagnostic"]
    receiver.receive_data(b"")
    assert receiver.next_event() is PEER_CLOSED


@pytest.mark.parametrize(
    "case", VECTORS["rejected_handshakes"]["server"], ids=lambda case: case["name"]
)
def test_rejected_handshake_server(case: dict[str, Any]) -> None:
    cache = ReplayCache()
    if case["replay_first"]:
        first = server()
        first.replay_cache = cache
        first.receive_data(bytes.fromhex(case["hello"]))
        assert isinstance(first.next_event(case["server_now"]), HandshakeComplete)
    s = server()
    s.replay_cache = cache
    before = len(cache)
    hello = bytes.fromhex(case["hello"])
    s.receive_data(hello)
    if len(hello) < 220:
        assert s.next_event(case["server_now"]) is NEED_DATA
        s.receive_data(b"")
    with pytest.raises(HandshakeError) as info:
        s.next_event(case["server_now"])
    assert info.value.reason == case["reason"]
    assert len(cache) == before


@pytest.mark.parametrize(
    "case", VECTORS["rejected_handshakes"]["client"], ids=lambda case: case["name"]
)
def test_rejected_handshake_client(case: dict[str, Any]) -> None:
    c = client()
    assert c.start(INPUTS["ts"], HELLO_RAND).hex() == HS["hello"]
    welcome = bytes.fromhex(case["welcome"])
    c.receive_data(welcome)
    if len(welcome) < 136:
        assert c.next_event() is NEED_DATA
        c.receive_data(b"")
    with pytest.raises(HandshakeError) as info:
        c.next_event()
    assert info.value.reason == case["reason"]


@pytest.mark.parametrize("case", VECTORS["rejected_frames"], ids=lambda case: case["name"])
def test_rejected_frames(case: dict[str, Any]) -> None:
    _, s = replayed_handshake()
    s.receive_data(bytes.fromhex(VECTORS["transport"][case["stream"]]["header"]))
    available = frames_of(case["stream"])
    frames = [available[i] for i in case["frames"]]
    if "set_length" in case:
        frames[0] = struct.pack(">I", case["set_length"]) + frames[0][4:]
    if "flip" in case:
        index, offset = case["flip"]
        data = bytearray(frames[index])
        data[offset] ^= 0x01
        frames[index] = bytes(data)
    s.receive_data(b"".join(frames))
    if case.get("eof"):
        s.receive_data(b"")

    def drain() -> object:
        event: object = s.next_event()
        while isinstance(event, MessageReceived):
            event = s.next_event()
        return event

    if case.get("accept"):
        assert drain() is PEER_CLOSED
    else:
        with pytest.raises(FramingError):
            assert drain() is not NEED_DATA, "the engine waits for more instead of closing"


@pytest.mark.parametrize("case", VECTORS["decoder"], ids=lambda case: case["name"])
def test_decoder_cases(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["cbor"])
    if case["outcome"] == "close":
        with pytest.raises(RemoteProtocolError):
            codec.decode(data)
    else:
        assert gen_wire_v1.diag(codec.decode(data)) == case["diagnostic"]


# -- §10.6: per op, one valid and one invalid request -------------------------------------

REQUESTS = VECTORS["requests"]
REQUEST_CASES: list[dict[str, Any]] = REQUESTS["cases"]


def case_id(case: dict[str, Any]) -> str:
    return f"{case['op']}-{case['kind']}"


def outcome_of(error: AllQError) -> dict[str, str | None]:
    return {"code": error.code, "field": error.field}


@pytest.mark.parametrize("kind", ["valid", "invalid"])
def test_request_cases_cover_every_op(kind: str) -> None:
    ops = [case["op"] for case in REQUEST_CASES if case["kind"] == kind]
    assert sorted(ops) == sorted(OPERATIONS | {"cancel"}), "one case per op and kind"


def decoded_request(case: dict[str, Any]) -> tuple[str, dict[str, object]]:
    message = codec.decode(bytes.fromhex(case["cbor"]))
    assert codec.request_envelope_problem(message) is None
    assert gen_wire_v1.diag(message) == case["diagnostic"]
    op = message["op"]
    assert isinstance(op, str)
    assert op == case.get("op", op)
    return op, {key: value for key, value in message.items() if key not in ("id", "op")}


@pytest.mark.parametrize(
    "case", [case for case in REQUEST_CASES if case["op"] != "cancel"], ids=case_id
)
def test_request_case_through_the_engine(case: dict[str, Any]) -> None:
    op, args = decoded_request(case)
    now = float(REQUESTS["now"])
    engine = make_engine(now=now, server_id=REQUESTS["server_id"])
    before = snapshot(engine)
    outcome: object = "ok"
    result: object = None
    try:
        result = engine.handle(op, args, now)
    except AllQError as error:
        outcome = outcome_of(error)
    assert outcome == case["expect"], f"{op} answered {result!r}"
    if outcome != "ok":
        after = snapshot(engine)
        assert after == before, "a rejected request changed: " + "; ".join(diff(before, after))
    elif op == "put_batch":
        assert isinstance(result, list)
        assert all("error" not in item for item in result)
    engine.check_invariants()


@pytest.mark.parametrize("case", REQUEST_CASES, ids=case_id)
async def test_request_case_through_the_session(case: dict[str, Any]) -> None:
    """The wire answer to the vector bytes, `cancel` included (a session-level op)."""
    message = codec.decode(bytes.fromhex(case["cbor"]))
    request_id = message["id"]
    assert isinstance(request_id, int)
    async with memory_server(server_id=REQUESTS["server_id"]) as server:
        client = await server.client()
        await client.stream.send(message)
        answer = await client.answer(request_id)
        await client.aclose()
    if case["expect"] == "ok":
        assert "result" in answer, answer
        if case["op"] == "cancel":
            assert answer["result"] == {"outcome": "unknown"}
        if case["op"] == "put_batch":
            assert all("error" not in item for item in answer["result"])
    else:
        assert {"code": answer.get("error"), "field": answer.get("field")} == case["expect"]


@pytest.mark.parametrize(
    "case",
    [case for case in VECTORS["decoder"] if "validation" in case],
    ids=lambda case: case["name"],
)
def test_decoder_cases_validation(case: dict[str, Any]) -> None:
    op, args = decoded_request(case)
    engine = make_engine()
    with pytest.raises(AllQError) as caught:
        engine.handle(op, args, engine.now)
    assert outcome_of(caught.value) == case["validation"]
