"""The sans-IO protocol engine (h11 style): handshake, secretstream frames, envelopes.

Charter: no trio, no clock, no logging. Bytes go in with `receive_data` (b"" = EOF), events
come out of `next_event`, and `send` turns a message into bytes to write. `now` and every
random input are passed in by the caller (the trio shell in `stream.py`).

States (`Connection.state`)::

    client:  START --start()--> AWAIT_WELCOME --WELCOME ok--> OPEN
    server:  AWAIT_HELLO --HELLO ok--> OPEN
    OPEN --send(final=True) or a TAG_FINAL frame received--> CLOSED
    any  --bad handshake, bad frame, bad envelope--> ERROR (sticky)

In ERROR, `next_event` re-raises the error. After a framing or handshake error nothing may
be sent (the stream can no longer be trusted); after a message error (a frame that opened
but whose content or envelope is invalid, `MessageError`) one final frame may still be sent,
which is how the server says `closing: "protocol"` (wire.md §4).

Events: `HandshakeComplete` (carrying the bytes to write now: WELCOME ‖ server header, or
the client header), `MessageReceived`, `NEED_DATA`, `PEER_CLOSED` (EOF after the peer's
TAG_FINAL frame). EOF anywhere else is an error (truncation).

Frames (wire.md §4): `L` (u32 BE) ‖ secretstream ciphertext with `L` as associated data;
`L < 18` or `L > receive_cap` fails before the body is buffered.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

import nacl.bindings as sodium

from allq.wire import codec, handshake, secretstream
from allq.wire.handshake import (
    HEADER_SIZE,
    HELLO_SIZE,
    WELCOME_SIZE,
    ClientHello,
    HandshakeError,
    HelloRandomness,
    ReplayCache,
    WelcomeRandomness,
)
from allq.wire.keyfiles import AllowList, KeyPair, fingerprint
from allq.wire.transport import LocalProtocolError, Message, RemoteProtocolError

ABYTES: Final = sodium.crypto_secretstream_xchacha20poly1305_ABYTES  # 17
TAG_MESSAGE: Final = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
TAG_PUSH: Final = sodium.crypto_secretstream_xchacha20poly1305_TAG_PUSH
TAG_REKEY: Final = sodium.crypto_secretstream_xchacha20poly1305_TAG_REKEY
TAG_FINAL: Final = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
MIN_FRAME: Final = ABYTES + 1  # an L below 18 cannot hold a CBOR map
MAX_FRAME_CEILING: Final = 16 * 1024 * 1024
FRAME_OVERHEAD: Final = 65_536  # max_frame = max_job_bytes + 65,536
READ_SIZE: Final = 65_536  # the shell's bound for one receive_some


def max_frame_for(max_job_bytes: int) -> int:
    """`max_frame` for a server's `max_job_bytes` (wire.md §4), at most 16 MiB."""
    frame = max_job_bytes + FRAME_OVERHEAD
    if frame > MAX_FRAME_CEILING:
        raise ValueError("max_job_bytes can be at most 16,711,680")
    return frame


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    START = "start"
    AWAIT_HELLO = "await_hello"
    AWAIT_WELCOME = "await_welcome"
    OPEN = "open"
    CLOSED = "closed"
    ERROR = "error"


class Sentinel(enum.Enum):
    NEED_DATA = "need_data"
    PEER_CLOSED = "peer_closed"


NEED_DATA: Final = Sentinel.NEED_DATA
PEER_CLOSED: Final = Sentinel.PEER_CLOSED


class FramingError(RemoteProtocolError):
    """Bad `L`, failed authentication, bad tag, data after TAG_FINAL, truncation."""


class MessageError(RemoteProtocolError):
    """A frame that authenticated but holds bad CBOR or a bad envelope."""


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """The handshake succeeded; write `data` now (it precedes every frame)."""

    data: bytes = field(repr=False)
    peer_public: bytes
    peer_name: str

    @property
    def peer_fingerprint(self) -> str:
        return fingerprint(self.peer_public)


@dataclass(frozen=True, slots=True)
class MessageReceived:
    message: Message
    final: bool = False


Event = HandshakeComplete | MessageReceived | Literal[Sentinel.NEED_DATA, Sentinel.PEER_CLOSED]


class Connection:
    """One end of one connection. See the module docstring for states and events.

    Args:
        role: CLIENT or SERVER.
        keys: this side's static key pair.
        server_public: (client) the pinned server key.
        allowlist, replay_cache: (server) the allow-list and the shared replay cache.
        receive_cap: the largest `L` accepted (server: `max_frame`; client: 16 MiB).
        send_cap: the largest `L` this side may send (the peer's cap).
        welcome_randomness: (server, tests) fixed `e_s` and `n_w`; fresh when None.
    """

    def __init__(
        self,
        role: Role,
        keys: KeyPair,
        *,
        server_public: bytes | None = None,
        allowlist: AllowList | None = None,
        replay_cache: ReplayCache | None = None,
        receive_cap: int = MAX_FRAME_CEILING,
        send_cap: int = MAX_FRAME_CEILING,
        welcome_randomness: WelcomeRandomness | None = None,
    ) -> None:
        if role is Role.CLIENT and server_public is None:
            raise ValueError("a client needs the server's public key")
        if role is Role.SERVER and (allowlist is None or replay_cache is None):
            raise ValueError("a server needs an allow-list and a replay cache")
        if not MIN_FRAME <= receive_cap <= MAX_FRAME_CEILING:
            raise ValueError("receive_cap out of range")
        self.role = role
        self.keys = keys
        self.server_public = server_public
        self.allowlist = allowlist
        self.replay_cache = replay_cache
        self.receive_cap = receive_cap
        self.send_cap = send_cap
        self._welcome_randomness = welcome_randomness
        self._phase = State.START if role is Role.CLIENT else State.AWAIT_HELLO
        self._hello: ClientHello | None = None
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._push: sodium.crypto_secretstream_xchacha20poly1305_state | None = None
        self._pull: sodium.crypto_secretstream_xchacha20poly1305_state | None = None
        self._pusher: secretstream.Pusher | None = None
        self._puller: secretstream.Puller | None = None
        self._pull_key: bytes | None = None
        self._our_final = False
        self._their_final = False
        self._error: RemoteProtocolError | None = None
        self._inflight: set[int] = set()
        self.peer_public: bytes | None = None
        self.peer_name = ""

    # --- introspection --------------------------------------------------------------

    @property
    def state(self) -> State:
        if self._error is not None:
            return State.ERROR
        if self._phase is State.OPEN and (self._our_final or self._their_final):
            return State.CLOSED
        return self._phase

    @property
    def inflight(self) -> frozenset[int]:
        """Request ids sent (client) or received (server) and not yet answered."""
        return frozenset(self._inflight)

    @property
    def awaiting_peer_header(self) -> bool:
        """True until the peer's 24-byte stream header has been read (after handshake)."""
        return self._pull is None

    @property
    def frame_in_progress(self) -> bool:
        """True when part of a frame is buffered (the shell's 30 s frame deadline runs)."""
        return self._pull is not None and len(self._buf) > self._pos

    @property
    def can_send(self) -> bool:
        return self._phase is State.OPEN and not self._our_final and self._error is None

    def next_read_size(self) -> int:
        """How many bytes the shell should ask `receive_some` for at most."""
        have = len(self._buf) - self._pos
        if self._phase is State.AWAIT_HELLO:
            return max(HELLO_SIZE - have, 1)  # never read past HELLO before it is checked
        # Frames: one read takes whatever is there, up to READ_SIZE, so a read can hold
        # many frames (and the start of the next); the buffer stays bounded by the frame
        # cap plus one read.
        return READ_SIZE

    # --- input ----------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes read from the peer; `b""` means EOF."""
        if self._eof:
            raise LocalProtocolError("data received after EOF")
        if not data:
            self._eof = True
            return
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    def _available(self) -> int:
        return len(self._buf) - self._pos

    def _take(self, n: int) -> bytes:
        with memoryview(self._buf) as view:  # one copy, released before any resize
            chunk = bytes(view[self._pos : self._pos + n])
        self._pos += n
        if self._pos > READ_SIZE and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        return chunk

    def _fail(self, error: RemoteProtocolError) -> RemoteProtocolError:
        self._error = error
        return error

    # --- client handshake -----------------------------------------------------------

    def start(self, ts: int, randomness: HelloRandomness | None = None) -> bytes:
        """(client) Build HELLO for client time `ts`; returns the 220 bytes to write."""
        if self.role is not Role.CLIENT or self._phase is not State.START:
            raise LocalProtocolError("start() is for a client that has not started")
        assert self.server_public is not None
        rand = randomness or handshake.fresh_hello_randomness()
        self._hello = handshake.make_hello(self.keys, self.server_public, ts, rand)
        self._phase = State.AWAIT_WELCOME
        return self._hello.hello

    # --- events ---------------------------------------------------------------------

    def next_event(self, now: float | None = None) -> Event:
        """The next event; `now` (Unix seconds) is required while a server awaits HELLO.

        Raises:
            HandshakeError, FramingError, MessageError: the peer misbehaved (sticky).
            LocalProtocolError: called in a state where no event can come.
        """
        if self._error is not None:
            raise self._error
        try:
            if self._phase is State.AWAIT_HELLO:
                return self._server_handshake(now)
            if self._phase is State.AWAIT_WELCOME:
                return self._client_handshake()
            if self._phase is State.START:
                raise LocalProtocolError("call start() first")
            return self._next_frame()
        except RemoteProtocolError as exc:
            raise self._fail(exc) from None

    def _server_handshake(self, now: float | None) -> Event:
        have = self._available()
        if have < HELLO_SIZE:
            if self._eof:
                raise HandshakeError("short hello")
            return NEED_DATA
        if have > HELLO_SIZE:
            raise HandshakeError("data after hello")
        if now is None:
            raise LocalProtocolError("the server needs `now` to check HELLO")
        assert self.allowlist is not None
        assert self.replay_cache is not None
        accepted = handshake.check_hello(
            self._take(HELLO_SIZE), self.keys, self.allowlist, self.replay_cache, now
        )
        rand = self._welcome_randomness or handshake.fresh_welcome_randomness()
        welcome, keys = handshake.make_welcome(accepted, self.keys, rand)
        header = self._open_streams(push_key=keys.s2c, pull_key=keys.c2s)
        self.peer_public, self.peer_name = accepted.client_public, accepted.client_name
        return HandshakeComplete(welcome + header, accepted.client_public, accepted.client_name)

    def _client_handshake(self) -> Event:
        if self._available() < WELCOME_SIZE:
            if self._eof:
                raise HandshakeError("refused")
            return NEED_DATA
        assert self._hello is not None
        assert self.server_public is not None
        keys = handshake.check_welcome(self._hello, self.keys, self._take(WELCOME_SIZE))
        self._hello = None  # drop e_c
        header = self._open_streams(push_key=keys.c2s, pull_key=keys.s2c)
        self.peer_public = self.server_public
        return HandshakeComplete(header, self.server_public, "server")

    def _open_streams(self, push_key: bytes, pull_key: bytes) -> bytes:
        state = sodium.crypto_secretstream_xchacha20poly1305_state()
        header: bytes = sodium.crypto_secretstream_xchacha20poly1305_init_push(state, push_key)
        self._push = state
        self._pusher = secretstream.Pusher(state)
        self._pull_key = pull_key
        self._phase = State.OPEN
        return header

    # --- frames in ------------------------------------------------------------------

    def read_peer_header(self) -> bool:
        """Consume the peer's stream header if buffered; True once it has been read.

        The shells call this to finish the handshake without consuming any frame.

        Raises:
            FramingError: EOF before the header (sticky, like `next_event`).
        """
        if self._error is not None:
            raise self._error
        if self._phase is not State.OPEN:
            raise LocalProtocolError("the handshake is not complete")
        if self._pull is not None:
            return True
        try:
            return self._read_header()
        except RemoteProtocolError as exc:
            raise self._fail(exc) from None

    def _read_header(self) -> bool:
        if self._available() < HEADER_SIZE:
            if self._eof:
                raise FramingError("EOF before the stream header (truncated)")
            return False
        state = sodium.crypto_secretstream_xchacha20poly1305_state()
        assert self._pull_key is not None
        try:
            sodium.crypto_secretstream_xchacha20poly1305_init_pull(
                state, self._take(HEADER_SIZE), self._pull_key
            )
        except Exception:
            raise FramingError("bad stream header") from None
        self._pull, self._pull_key = state, None
        self._puller = secretstream.Puller(state)
        return True

    def _next_frame(self) -> Event:
        have = self._available()
        if self._their_final:
            if have:
                raise FramingError("data after the final frame")
            return PEER_CLOSED if self._eof else NEED_DATA
        if self._pull is None:
            if not self._read_header():
                return NEED_DATA
            have -= HEADER_SIZE
        if have < 4:
            if self._eof:
                raise FramingError(
                    "EOF inside a frame" if have else "EOF without a final frame (truncated)"
                )
            return NEED_DATA
        with memoryview(self._buf) as view:
            ad = bytes(view[self._pos : self._pos + 4])
        (length,) = struct.unpack(">I", ad)
        if length < MIN_FRAME:
            raise FramingError(f"frame length {length} below {MIN_FRAME}")
        if length > self.receive_cap:
            raise FramingError(f"frame length {length} above the cap {self.receive_cap}")
        if have < 4 + length:
            if self._eof:
                raise FramingError("EOF inside a frame")
            return NEED_DATA
        self._pos += 4
        ciphertext = self._take(length)
        assert self._puller is not None
        try:
            plaintext, tag = self._puller.pull(ciphertext, ad)
        except Exception:
            raise FramingError("frame failed authentication") from None
        if tag == TAG_FINAL:
            self._their_final = True
        elif tag != TAG_MESSAGE:
            raise FramingError(f"frame tag {tag} not allowed")
        try:
            message = codec.decode(plaintext)
        except RemoteProtocolError as exc:
            raise MessageError(str(exc)) from None
        self._check_incoming(message, final=tag == TAG_FINAL)
        return MessageReceived(message, final=tag == TAG_FINAL)

    def _check_incoming(self, message: Message, *, final: bool) -> None:
        if self.role is Role.SERVER:
            problem = codec.request_envelope_problem(message)
        else:
            problem = codec.response_envelope_problem(message)
        if problem is not None:
            raise MessageError(problem)
        if ("closing" in message and message["id"] == 0) != final:
            raise MessageError("a closing frame, and only it, must be the final frame")
        ident = message["id"]
        assert isinstance(ident, int)
        if ident == 0:
            return
        if self.role is Role.SERVER:
            if ident in self._inflight:
                raise MessageError(f"request id {ident} is already in flight")
            self._inflight.add(ident)
        else:
            if ident not in self._inflight:
                raise MessageError(f"answer for unknown request id {ident}")
            self._inflight.discard(ident)

    # --- frames out -----------------------------------------------------------------

    def send(self, message: Mapping[str, object], final: bool = False) -> bytes:
        """Encode and seal one message; returns the frame bytes to write.

        Raises:
            LocalProtocolError: the state forbids sending, the envelope is invalid for
                this role, the id is wrong, or the frame would exceed `send_cap`.
        """
        if self._phase is not State.OPEN:
            raise LocalProtocolError(f"cannot send in state {self.state.name}")
        if self._our_final:
            raise LocalProtocolError("cannot send after the final frame")
        if self._error is not None and not (isinstance(self._error, MessageError) and final):
            raise LocalProtocolError("cannot send after a protocol error (except a final frame)")
        if self.role is Role.SERVER:
            problem = codec.response_envelope_problem(message)
        else:
            problem = codec.request_envelope_problem(message)
        if problem is not None:
            raise LocalProtocolError(problem)
        ident = message["id"]
        assert isinstance(ident, int)
        if ("closing" in message and ident == 0) != final:
            raise LocalProtocolError("a closing frame, and only it, must be final")
        if ident:
            known = ident in self._inflight
            if self.role is Role.SERVER and not known:
                raise LocalProtocolError(f"no request {ident} in flight")
            if self.role is Role.CLIENT and known:
                raise LocalProtocolError(f"request id {ident} is already in flight")
        plaintext = codec.encode(message)
        length = len(plaintext) + ABYTES
        if length > self.send_cap:
            raise LocalProtocolError(f"frame of {length} bytes exceeds the peer's cap")
        ad = struct.pack(">I", length)
        assert self._pusher is not None
        ciphertext = self._pusher.push(plaintext, ad, TAG_FINAL if final else TAG_MESSAGE)
        if ident:
            if self.role is Role.SERVER:
                self._inflight.discard(ident)
            else:
                self._inflight.add(ident)
        if final:
            self._our_final = True
        return ad + ciphertext

    def forget(self, ident: int) -> None:
        """(client) Stop expecting an answer for `ident` (never used in normal flow)."""
        self._inflight.discard(ident)
