"""The sans-IO engine: handshake checks, frame rejection, envelopes, chunking (wire.md §3-§5).

Rules: no trio here; two `Connection`s exchange bytes by hand. Every rejection asserts the
error class, that nothing was produced for the peer, and the replay cache's content where
the spec fixes it (no state before check 7).
"""

from __future__ import annotations

import struct
from typing import Any

import nacl.bindings as sodium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allq.wire import handshake
from allq.wire.connection import (
    MIN_FRAME,
    NEED_DATA,
    PEER_CLOSED,
    TAG_PUSH,
    TAG_REKEY,
    Connection,
    FramingError,
    HandshakeComplete,
    MessageError,
    MessageReceived,
    State,
)
from allq.wire.handshake import (
    HELLO_SIZE,
    HandshakeError,
    HelloRandomness,
    ReplayCache,
)
from allq.wire.keyfiles import KeyPair
from allq.wire.transport import LocalProtocolError
from tests.wire.helpers import (
    ALLOW,
    CLIENT,
    NOW,
    SERVER,
    STRANGER,
    client_conn,
    label_bytes,
    open_pair,
    server_conn,
)
from tests.wire.test_codec import messages


def fixed_hello(
    keys: Any = CLIENT, ts: int = int(NOW), server_public: bytes = SERVER.public
) -> bytes:
    rand = HelloRandomness(label_bytes("e_c"), label_bytes("n_v", 24), label_bytes("n_o", 24))
    return handshake.make_hello(keys, server_public, ts, rand).hello


def server_rejects(hello: bytes, replay: ReplayCache, now: float = NOW) -> HandshakeError:
    server = server_conn(replay)
    server.receive_data(hello)
    with pytest.raises(HandshakeError) as info:
        server.next_event(now)
    assert server.state is State.ERROR
    with pytest.raises(LocalProtocolError):
        server.send({"id": 0, "closing": "protocol"}, final=True)
    with pytest.raises(HandshakeError):
        server.next_event(now)  # sticky
    return info.value


def test_handshake_success_both_ways() -> None:
    client, server = open_pair()
    assert client.state is State.OPEN
    assert server.state is State.OPEN
    assert server.peer_public == CLIENT.public
    assert server.peer_name == "client-1"
    server.receive_data(client.send({"id": 1, "op": "ping"}))
    event = server.next_event()
    assert event == MessageReceived({"id": 1, "op": "ping"})
    client.receive_data(server.send({"id": 1, "result": {"pong": True}}))
    assert client.next_event() == MessageReceived({"id": 1, "result": {"pong": True}})
    assert client.inflight == server.inflight == frozenset()


def test_hello_and_welcome_sizes() -> None:
    client = client_conn()
    server = server_conn()
    hello = client.start(int(NOW))
    assert len(hello) == 220
    assert hello[:4] == b"ALQ\x01"
    server.receive_data(hello)
    event = server.next_event(NOW)
    assert isinstance(event, HandshakeComplete)
    assert len(event.data) == 160  # WELCOME (136) ‖ server stream header (24)
    assert event.peer_fingerprint == CLIENT.fingerprint


def test_unlisted_client_refused_without_cache_entry() -> None:
    replay = ReplayCache()
    error = server_rejects(fixed_hello(STRANGER), replay)
    assert error.reason == "not allowed"
    assert error.fingerprint == STRANGER.fingerprint
    assert len(replay) == 0


@pytest.mark.parametrize(("skew", "ok"), [(-121, False), (-120, True), (120, True), (121, False)])
def test_timestamp_window(skew: int, ok: bool) -> None:
    replay = ReplayCache()
    hello = fixed_hello(ts=int(NOW) + skew)
    if ok:
        server = server_conn(replay)
        server.receive_data(hello)
        assert isinstance(server.next_event(NOW), HandshakeComplete)
        assert len(replay) == 1
    else:
        assert server_rejects(hello, replay).reason == "clock skew"
        assert len(replay) == 0


def test_replayed_hello_refused_until_expiry() -> None:
    replay = ReplayCache()
    hello = fixed_hello()
    server = server_conn(replay)
    server.receive_data(hello)
    assert isinstance(server.next_event(NOW), HandshakeComplete)
    assert server_rejects(hello, replay, NOW + 100).reason == "replay"
    assert len(replay) == 1
    # at the window's edge the entry still exists; after it the timestamp is stale anyway
    assert server_rejects(hello, replay, NOW + 120).reason == "replay"
    assert server_rejects(hello, replay, NOW + 240.5).reason == "clock skew"
    assert len(replay) == 1  # failures before check 7 touch nothing, not even expiry
    replay.expire(NOW + 240.5)
    assert len(replay) == 0


def test_replay_cache_full_refuses_and_never_evicts() -> None:
    replay = ReplayCache(max_entries=2)
    replay.check_and_add(b"a" * 32, b"1" * 32, NOW)
    replay.check_and_add(b"b" * 32, b"2" * 32, NOW + 10)
    assert server_rejects(fixed_hello(), replay).reason == "replay cache full"
    assert len(replay) == 2
    replay.expire(NOW + 240)
    assert len(replay) == 2  # an entry lives 240 s inclusive
    replay.expire(NOW + 240.001)
    assert len(replay) == 1
    server = server_conn(replay)
    server.receive_data(fixed_hello(ts=int(NOW) + 200))
    assert isinstance(server.next_event(NOW + 240.001), HandshakeComplete)


def test_replay_cache_clock_step_back_keeps_entries() -> None:
    replay = ReplayCache()
    replay.check_and_add(b"a" * 32, b"1" * 32, 1000.0)
    replay.check_and_add(b"b" * 32, b"2" * 32, 500.0)  # clock stepped back
    replay.expire(800.0)
    assert b"b" * 32 + b"2" * 32 in replay  # kept longer, never shorter


# HELLO field ranges (wire.md §3 table) and the reason each flipped bit yields.
FIELDS = {
    "magic": (0, "bad magic"),
    "version": (3, "unsupported version"),
    "E_C": (4, "outer box"),
    "n_o": (36, "outer box"),
    "outer MAC": (60, "outer box"),
    "outer ciphertext": (76, "outer box"),
    "outer ciphertext end": (219, "outer box"),
}


@pytest.mark.parametrize(("offset", "reason"), FIELDS.values(), ids=FIELDS.keys())
def test_flipped_hello_bit_refused(offset: int, reason: str) -> None:
    hello = bytearray(fixed_hello())
    hello[offset] ^= 0x01
    replay = ReplayCache()
    assert server_rejects(bytes(hello), replay).reason == reason
    assert len(replay) == 0


def test_version_two_refused() -> None:
    hello = bytearray(fixed_hello())
    hello[3] = 2
    assert server_rejects(bytes(hello), ReplayCache()).reason == "unsupported version"


def test_vouch_binding_mismatches() -> None:
    other = handshake.public_of(label_bytes("another server"))
    rand = HelloRandomness(label_bytes("e_c"), label_bytes("n_v", 24), label_bytes("n_o", 24))
    # A vouch naming another server key, wrapped in a correct outer box.
    e_pub = handshake.public_of(rand.ephemeral_secret)
    for vouch_plain in (
        e_pub + other + struct.pack(">Q", int(NOW)),
        handshake.public_of(label_bytes("x")) + SERVER.public + struct.pack(">Q", int(NOW)),
    ):
        vouch = handshake._box(CLIENT.secret, SERVER.public, vouch_plain, rand.n_v)
        outer = handshake._box(
            rand.ephemeral_secret, SERVER.public, CLIENT.public + vouch, rand.n_o
        )
        hello = b"ALQ\x01" + e_pub + outer
        assert server_rejects(hello, ReplayCache()).reason == "vouch binding"


def test_vouch_by_another_key_refused() -> None:
    rand = HelloRandomness(label_bytes("e_c"), label_bytes("n_v", 24), label_bytes("n_o", 24))
    e_pub = handshake.public_of(rand.ephemeral_secret)
    vouch_plain = e_pub + SERVER.public + struct.pack(">Q", int(NOW))
    vouch = handshake._box(STRANGER.secret, SERVER.public, vouch_plain, rand.n_v)
    outer = handshake._box(rand.ephemeral_secret, SERVER.public, CLIENT.public + vouch, rand.n_o)
    assert server_rejects(b"ALQ\x01" + e_pub + outer, ReplayCache()).reason == "vouch"


def test_low_order_ephemeral_refused() -> None:
    low = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
    hello = fixed_hello()
    hello = hello[:4] + low + hello[36:]
    assert server_rejects(hello, ReplayCache()).reason == "outer box"


def test_short_hello_then_eof_and_extra_bytes() -> None:
    server = server_conn()
    server.receive_data(fixed_hello()[:219])
    assert server.next_event(NOW) is NEED_DATA
    assert server.next_read_size() == 1
    server.receive_data(b"")
    with pytest.raises(HandshakeError, match="short hello"):
        server.next_event(NOW)
    assert server_rejects(fixed_hello() + b"x", ReplayCache()).reason == "data after hello"


def test_garbage_before_handshake_refused() -> None:
    garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 200
    assert server_rejects(garbage[:HELLO_SIZE], ReplayCache()).reason == "bad magic"


def test_client_rejects_bad_welcome() -> None:
    def run(tamper: Any) -> None:
        client = client_conn()
        server = server_conn()
        server.receive_data(client.start(int(NOW)))
        event = server.next_event(NOW)
        assert isinstance(event, HandshakeComplete)
        client.receive_data(tamper(event.data))
        with pytest.raises(HandshakeError, match="server key mismatch"):
            client.next_event()
        assert client.state is State.ERROR

    for offset in (0, 31, 32, 56, 72, 135):
        run(lambda data, o=offset: data[:o] + bytes([data[o] ^ 0x80]) + data[o + 1 :])

    # a WELCOME made by another server key for this HELLO
    def impostor(data: bytes) -> bytes:
        fake = KeyPair.from_secret(label_bytes("impostor"))
        return data[:32] + handshake._box(fake.secret, data[:32], b"\0" * 64, b"\0" * 24)

    run(impostor)


def test_client_reports_refused_on_eof() -> None:
    client = client_conn()
    client.start(int(NOW))
    client.receive_data(b"")
    with pytest.raises(HandshakeError, match="refused"):
        client.next_event()


def test_client_welcome_for_another_hello() -> None:
    server = server_conn()
    server.receive_data(client_conn().start(int(NOW)))
    event = server.next_event(NOW)
    assert isinstance(event, HandshakeComplete)
    client = client_conn()
    client.start(int(NOW))
    client.receive_data(event.data)
    with pytest.raises(HandshakeError):
        client.next_event()


# --- frames -------------------------------------------------------------------------------


def frames(sender: Connection, *msgs: dict[str, Any], final_last: bool = False) -> list[bytes]:
    out = []
    for i, message in enumerate(msgs):
        out.append(sender.send(message, final=final_last and i == len(msgs) - 1))
    return out


def drain(receiver: Connection) -> None:
    while receiver.next_event() is not NEED_DATA:
        pass


def expect_framing_error(receiver: Connection, data: bytes) -> None:
    receiver.receive_data(data)
    with pytest.raises(FramingError):
        drain(receiver)
    assert receiver.state is State.ERROR
    with pytest.raises(LocalProtocolError):
        receiver.send({"id": 0, "closing": "protocol"}, final=True)


def test_tampered_ciphertext_length_and_mac() -> None:
    for offset in (0, 3, 4, 10, -1, -17):
        client, server = open_pair()
        frame, after = frames(client, {"id": 1, "op": "ping"}, {"id": 2, "op": "ping"})
        data = bytearray(frame)
        data[offset] ^= 0x01
        expect_framing_error(server, bytes(data) + after)


def test_replayed_frame_refused() -> None:
    client, server = open_pair()
    (frame,) = frames(client, {"id": 1, "op": "ping"})
    server.receive_data(frame)
    assert isinstance(server.next_event(), MessageReceived)
    expect_framing_error(server, frame)


def test_reordered_and_dropped_frames_refused() -> None:
    client, server = open_pair()
    a, b = frames(client, {"id": 1, "op": "ping"}, {"id": 2, "op": "ping"})
    expect_framing_error(server, b + a)
    client, server = open_pair()
    a, b, c = frames(client, *({"id": i, "op": "ping"} for i in (1, 2, 3)))
    server.receive_data(a)
    assert isinstance(server.next_event(), MessageReceived)
    expect_framing_error(server, c)


def test_frame_from_another_connection_refused() -> None:
    client, _ = open_pair()
    _, server = open_pair(server=server_conn(), client=client_conn())
    (frame,) = frames(client, {"id": 1, "op": "ping"})
    expect_framing_error(server, frame)


@pytest.mark.parametrize("length", [0, 17, MIN_FRAME - 1])
def test_short_length_refused_before_body(length: int) -> None:
    _, server = open_pair()
    expect_framing_error(server, struct.pack(">I", length))


def test_oversized_length_refused_before_body() -> None:
    _, server = open_pair(server=server_conn(receive_cap=1000))
    server.receive_data(struct.pack(">I", 1000) + b"x")
    assert server.next_event() is NEED_DATA
    assert server.frame_in_progress
    _, server = open_pair(server=server_conn(receive_cap=1000))
    expect_framing_error(server, struct.pack(">I", 1001))  # no body needed to refuse
    _, server = open_pair()
    expect_framing_error(server, b"\xff\xff\xff\xff")


def test_sender_respects_peer_cap() -> None:
    client, _ = open_pair(client=client_conn(send_cap=100))
    with pytest.raises(LocalProtocolError, match="cap"):
        client.send({"id": 1, "op": "put", "body": b"x" * 100})
    assert client.send({"id": 1, "op": "ping"})  # still usable, id not consumed
    assert client.inflight == {1}


@pytest.mark.parametrize("tag", [TAG_PUSH, TAG_REKEY])
def test_push_and_rekey_tags_refused(tag: int) -> None:
    client, server = open_pair()
    plaintext = handshake_free_encode({"id": 1, "op": "ping"})
    ad = struct.pack(">I", len(plaintext) + 17)
    assert client._push is not None
    ct = sodium.crypto_secretstream_xchacha20poly1305_push(client._push, plaintext, ad, tag)
    expect_framing_error(server, ad + ct)


def handshake_free_encode(message: dict[str, Any]) -> bytes:
    from allq.wire import codec

    return codec.encode(message)


def test_final_frame_then_clean_eof() -> None:
    client, server = open_pair()
    server.receive_data(client.send({"id": 1, "op": "ping"}))
    assert isinstance(server.next_event(), MessageReceived)
    client.receive_data(
        server.send({"id": 1, "result": {}})
        + server.send({"id": 0, "closing": "shutdown"}, final=True)
    )
    assert server.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        server.send({"id": 0, "event": "x"})
    assert client.next_event() == MessageReceived({"id": 1, "result": {}})
    assert client.next_event() == MessageReceived({"id": 0, "closing": "shutdown"}, final=True)
    assert client.state is State.CLOSED
    assert client.next_event() is NEED_DATA
    client.receive_data(b"")
    assert client.next_event() is PEER_CLOSED


def test_data_after_final_refused() -> None:
    client, server = open_pair()
    final = client.send({"id": 0, "closing": "client"}, final=True)
    server.receive_data(final)
    assert server.next_event() == MessageReceived({"id": 0, "closing": "client"}, final=True)
    expect_framing_error(server, b"\0\0\0\x20")


def test_eof_without_final_is_truncation() -> None:
    client, server = open_pair()
    server.receive_data(client.send({"id": 1, "op": "ping"}))
    assert isinstance(server.next_event(), MessageReceived)
    server.receive_data(b"")
    with pytest.raises(FramingError, match="truncated"):
        server.next_event()


def test_eof_inside_frame_is_truncation() -> None:
    client, server = open_pair()
    frame = client.send({"id": 1, "op": "ping"})
    for cut in (1, 3, 4, len(frame) - 1):
        _, srv = open_pair()
        srv.receive_data(frame[:cut])
        assert srv.next_event() is NEED_DATA
        srv.receive_data(b"")
        with pytest.raises(FramingError, match="EOF"):
            srv.next_event()
    del server


def test_eof_before_stream_header() -> None:
    client = client_conn()
    server = server_conn()
    server.receive_data(client.start(int(NOW)))
    assert isinstance(server.next_event(NOW), HandshakeComplete)
    assert server.awaiting_peer_header
    server.receive_data(b"\0" * 10)
    server.receive_data(b"")
    with pytest.raises(FramingError):
        server.next_event()


def test_garbage_after_handshake_refused() -> None:
    _, server = open_pair()
    expect_framing_error(server, b"\0\0\0\x40" + b"garbage!" * 8)


def test_closing_frame_must_be_final() -> None:
    client, _ = open_pair()
    with pytest.raises(LocalProtocolError):
        client.send({"id": 0, "closing": "client"})
    with pytest.raises(LocalProtocolError):
        client.send({"id": 1, "op": "ping"}, final=True)


# --- envelopes ----------------------------------------------------------------------------


def test_server_message_error_allows_only_a_final_frame() -> None:
    client, server = open_pair()
    server.receive_data(client.send({"id": 1, "op": "ping"}))
    assert isinstance(server.next_event(), MessageReceived)
    client.forget(1)
    server.receive_data(client.send({"id": 1, "op": "ping"}))  # id already in flight
    with pytest.raises(MessageError, match="in flight"):
        server.next_event()
    assert server.state is State.ERROR
    with pytest.raises(LocalProtocolError):
        server.send({"id": 1, "result": {}})
    data = server.send(
        {"id": 0, "closing": "protocol", "error": "BAD_FORMAT", "message": "dup"}, final=True
    )
    client.receive_data(data)
    event = client.next_event()
    assert isinstance(event, MessageReceived)
    assert event.final


def test_undecodable_plaintext_is_message_error() -> None:
    client, server = open_pair()
    assert client._push is not None
    for plaintext in (b"\x80", b"\xa1\x01\x01", b"\xa0\x00", b"\xa1\x61\x61\xc1\x00"):
        c, s = open_pair()
        assert c._push is not None
        ad = struct.pack(">I", len(plaintext) + 17)
        ct = sodium.crypto_secretstream_xchacha20poly1305_push(c._push, plaintext, ad, 0)
        s.receive_data(ad + ct)
        with pytest.raises(MessageError):
            s.next_event()
    del client, server


def test_client_refuses_answer_for_unknown_id() -> None:
    client, server = open_pair()
    server.receive_data(client.send({"id": 7, "op": "ping"}))
    assert isinstance(server.next_event(), MessageReceived)
    client.forget(7)
    client.receive_data(server.send({"id": 7, "result": {}}))
    with pytest.raises(MessageError, match="unknown"):
        client.next_event()


def test_local_misuse() -> None:
    client, server = open_pair()
    with pytest.raises(LocalProtocolError):
        server.send({"id": 5, "result": {}})  # not in flight
    with pytest.raises(LocalProtocolError):
        client.send({"id": 1, "result": {}})  # not a request
    client.send({"id": 1, "op": "ping"})
    with pytest.raises(LocalProtocolError):
        client.send({"id": 1, "op": "ping"})  # already in flight
    with pytest.raises(LocalProtocolError):
        client.send({"id": 2, "op": "put", "body": object()})
    fresh = client_conn()
    with pytest.raises(LocalProtocolError):
        fresh.send({"id": 1, "op": "ping"})
    with pytest.raises(LocalProtocolError):
        fresh.next_event()
    with pytest.raises(LocalProtocolError):
        server_conn().start(0)


# --- round trips and chunking -------------------------------------------------------------


def as_request(message: dict[str, Any], ident: int) -> dict[str, Any]:
    return {**message, "id": ident, "op": "x"}


@settings(max_examples=40, deadline=None)
@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_random_chunking_round_trip(batch: list[dict[str, Any]], data: st.DataObject) -> None:
    client, server = open_pair()
    requests = [as_request(m, i + 1) for i, m in enumerate(batch)]
    wire = b"".join(client.send(r) for r in requests)
    wire += client.send({"id": 0, "closing": "client"}, final=True)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    got: list[dict[str, Any]] = []
    start = 0
    for cut in [*cuts, len(wire)]:
        if cut > start:
            server.receive_data(wire[start:cut])
        start = cut
        while isinstance(event := server.next_event(), MessageReceived):
            got.append(event.message)
    server.receive_data(b"")
    assert server.next_event() is PEER_CLOSED
    assert got == [*requests, {"id": 0, "closing": "client"}]
    assert server.inflight == {r["id"] for r in requests}


def test_next_read_size_bounds() -> None:
    client, server = open_pair()
    frame = client.send({"id": 1, "op": "put", "body": b"x" * 100_000})
    assert server.next_read_size() == 65_536
    server.receive_data(frame[:10])
    assert server.next_event() is NEED_DATA
    assert server.next_read_size() == 65_536
    server.receive_data(frame[10:70_000])
    assert server.next_event() is NEED_DATA
    assert server.next_read_size() == 65_536  # reads may run past the frame: batches
    server.receive_data(frame[70_000:])
    assert isinstance(server.next_event(), MessageReceived)
    assert not server.frame_in_progress


def test_allow_list_is_consulted() -> None:
    assert CLIENT.public in ALLOW
    assert STRANGER.public not in ALLOW
