"""The trio shell of the encrypted wire protocol: handshakes and `EncryptedMessageStream`.

`server_handshake` / `client_handshake` drive a sans-IO `Connection` over any
`trio.abc.Stream` (TCP in production, memory streams in tests) and return an
`EncryptedMessageStream`, which implements `allq.wire.transport.MessageStream`.

Resource handling: the handshake functions take ownership of the stream. On failure they
close it (sending nothing more) and raise `HandshakeFailed`; on success the returned
`EncryptedMessageStream` owns it and `aclose()` closes it.

Batching: `receive_batch()` returns every complete frame of one read; `send_nowait()`
seals a message and queues its frame, `flush()` writes all queued frames with one
`send_all` (`allq.wire.writer.FrameWriter`); `send()` is both, and frames that other tasks
queue while a write is running go out together in the next one.

Cancellation: once a write has started it is finished even if its caller is cancelled
(shielded, bounded by the write-stall timeout), then the caller raises `Cancelled`; a
half-written frame would make the byte stream unusable for every other request on it.
A frame that was queued goes out even if its sender is cancelled while waiting. A write
blocked longer than the write-stall timeout marks the stream broken, and later sends
raise `trio.BrokenResourceError`. `receive()` can be cancelled safely between reads:
buffered bytes stay in the engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import trio

from allq.wire.connection import (
    MAX_FRAME_CEILING,
    PEER_CLOSED,
    READ_SIZE,
    Connection,
    FramingError,
    HandshakeComplete,
    MessageReceived,
    Role,
)
from allq.wire.handshake import HandshakeError, ReplayCache
from allq.wire.keyfiles import AllowList, KeyPair, PublicKey, fingerprint
from allq.wire.transport import LocalProtocolError, Message, RemoteProtocolError
from allq.wire.writer import FrameWriter, WriterBacked

HANDSHAKE_TIMEOUT = 5.0
FRAME_TIMEOUT = 30.0
WRITE_STALL_TIMEOUT = 30.0


class HandshakeFailed(Exception):
    """The handshake did not complete; the stream has been closed.

    `reason` is for logs (server: the failed check, `timeout`, `eof`, `broken`; client:
    `refused`, `server key mismatch`, `timeout`, `broken`). `fingerprint` names the client
    key once the server knows it.
    """

    def __init__(self, reason: str, fingerprint: str | None = None) -> None:
        super().__init__(reason if fingerprint is None else f"{reason} (client {fingerprint})")
        self.reason = reason
        self.fingerprint = fingerprint


class EncryptedMessageStream(WriterBacked):
    """Messages over a secretstream-framed byte stream (wire.md §4, §5).

    `receive()` returns each message; after a message that came in a TAG_FINAL frame
    (the peer's closing frame) the next call raises `trio.EndOfChannel` without reading.
    Errors: `RemoteProtocolError` (`FramingError`: close at once; `MessageError`: the
    server may still `send(..., final=True)` a closing frame), `trio.BrokenResourceError`
    when the transport failed. A frame whose first byte arrived must be complete within
    `frame_timeout` seconds (trio clock), else `FramingError`.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: Connection,
        *,
        frame_timeout: float = FRAME_TIMEOUT,
        write_timeout: float = WRITE_STALL_TIMEOUT,
    ) -> None:
        self._stream = stream
        self._conn = conn
        self._frame_timeout = frame_timeout
        self._writer = FrameWriter(stream, write_timeout)
        self._receiving = False
        self._reads = 0
        self._received = 0
        self._peer_finished = False
        self._frame_started: float | None = None
        self._closed = False

    # --- identity and limits --------------------------------------------------------

    @property
    def peer_public(self) -> bytes:
        assert self._conn.peer_public is not None
        return self._conn.peer_public

    @property
    def peer_fingerprint(self) -> str:
        return fingerprint(self.peer_public)

    @property
    def peer_name(self) -> str:
        return self._conn.peer_name

    @property
    def connection(self) -> Connection:
        """The sans-IO engine (read-only use: state, in-flight ids)."""
        return self._conn

    @property
    def send_cap(self) -> int:
        """The largest frame this side may send (a client sets it from `stats`)."""
        return self._conn.send_cap

    @send_cap.setter
    def send_cap(self, value: int) -> None:
        self._conn.send_cap = value

    @property
    def transport_stream(self) -> trio.abc.Stream:
        return self._stream

    # --- MessageStream --------------------------------------------------------------

    async def receive(self) -> Message:
        return (await self.receive_batch(1))[0]

    async def receive_batch(self, limit: int) -> list[Message]:
        """Every complete message already buffered, at most `limit` (≥ 1 returned).

        Reads from the transport only when no complete frame is buffered, so one
        `receive_some` of many frames yields them all in one call. An error found after
        some messages were decoded is raised by the next call (the engine's error is
        sticky); a peer's final frame ends the batch and the next call raises
        `trio.EndOfChannel`.
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving")
        self._receiving = True
        try:
            return await self._receive_batch(max(limit, 1))
        finally:
            self._receiving = False

    async def _receive_batch(self, limit: int) -> list[Message]:
        conn = self._conn
        out: list[Message] = []
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            if self._peer_finished:
                if out:
                    break
                raise trio.EndOfChannel
            try:
                event = conn.next_event()
            except RemoteProtocolError:
                if out:
                    break  # raised again by the next call
                raise
            if isinstance(event, MessageReceived):
                out.append(event.message)
                if event.final:
                    self._peer_finished = True
                if len(out) >= limit:
                    break
                continue
            if event is PEER_CLOSED:
                if out:
                    break
                raise trio.EndOfChannel
            assert not isinstance(event, HandshakeComplete)
            if out:
                break
            deadline = math.inf
            if self._frame_started is not None:
                deadline = self._frame_started + self._frame_timeout
            with trio.move_on_at(deadline) as scope:
                data = await self._stream.receive_some(conn.next_read_size())
            self._reads += 1
            if scope.cancelled_caught:
                raise FramingError(f"frame not complete within {self._frame_timeout:g} s")
            conn.receive_data(data)
            if data and self._frame_started is None and conn.frame_in_progress:
                self._frame_started = trio.current_time()
        self._frame_started = trio.current_time() if conn.frame_in_progress else None
        self._received += len(out)
        return out

    def statistics(self) -> dict[str, int]:
        """Reads and frames received, writes and frames written (batching at a glance)."""
        return {
            "reads": self._reads,
            "frames_in": self._received,
            "writes": self._writer.writes,
            "frames_out": self._writer.written,
        }

    def send_nowait(self, message: Mapping[str, object], *, final: bool = False) -> None:
        """Seal one message and queue it; `flush()` (or any later send) writes it.

        Once queued, the frame goes out unless the stream breaks.

        Raises:
            LocalProtocolError: the message or state is invalid (nothing queued).
            trio.BrokenResourceError: an earlier write failed or stalled.
            trio.ClosedResourceError: `aclose()` was called.
        """
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._writer.broken is not None:
            raise trio.BrokenResourceError(self._writer.broken)
        self._writer.queue(self._conn.send(message, final))

    async def flush(self) -> None:
        """Write every queued frame: one `send_all` for all frames queued meanwhile.

        A write once started is finished even if the caller is cancelled (shielded,
        bounded by the write-stall timeout); a cancelled caller then raises `Cancelled`.

        Raises:
            trio.BrokenResourceError: the transport failed or a write stalled.
        """
        await self._writer.flush()

    async def send(self, message: Mapping[str, object], *, final: bool = False) -> None:
        """Seal and write one message; frames from several tasks are coalesced.

        Raises:
            LocalProtocolError: the message or state is invalid (nothing written).
            trio.BrokenResourceError: the transport failed or an earlier write broke.
            trio.ClosedResourceError: `aclose()` was called.
        """
        # A half-written frame would break the stream for every other request on it
        # (one cancelled caller, e.g. an HTTP client gone, would cut a gateway's whole
        # link), so the writer finishes a write once started even if its caller is
        # cancelled; the write-stall timeout bounds it instead (wire.md §7).
        self.send_nowait(message, final=final)
        await self._writer.flush()

    async def aclose(self) -> None:
        """Close the transport (idempotent). Sends nothing by itself: send a final frame
        first for a graceful close."""
        self._closed = True
        await self._stream.aclose()


async def _fail(stream: trio.abc.Stream, error: HandshakeFailed) -> HandshakeFailed:
    await trio.aclose_forcefully(stream)
    return error


async def server_handshake(
    stream: trio.abc.Stream,
    server_keys: KeyPair,
    allowlist: AllowList,
    replay_cache: ReplayCache,
    now_fn: Callable[[], float],
    *,
    max_frame: int = MAX_FRAME_CEILING,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    frame_timeout: float = FRAME_TIMEOUT,
) -> EncryptedMessageStream:
    """Run the server side of wire.md §3 within `handshake_timeout` seconds of the call.

    Reads exactly 220 bytes before checking HELLO, writes WELCOME ‖ header in one write,
    then waits for the client's stream header. `now_fn` gives Unix seconds (`time.time`).

    Raises:
        HandshakeFailed: any failure; the stream was closed and no byte was sent
            (except WELCOME when only the client header failed to arrive).
    """
    conn = Connection(
        Role.SERVER,
        server_keys,
        allowlist=allowlist,
        replay_cache=replay_cache,
        receive_cap=max_frame,
    )
    try:
        with trio.fail_after(handshake_timeout):
            while True:
                event = conn.next_event(now_fn())
                if isinstance(event, HandshakeComplete):
                    break
                conn.receive_data(await stream.receive_some(conn.next_read_size()))
            await stream.send_all(event.data)
            while not conn.read_peer_header():
                conn.receive_data(await stream.receive_some(READ_SIZE))
    except HandshakeError as exc:
        raise await _fail(stream, HandshakeFailed(exc.reason, exc.fingerprint)) from None
    except FramingError:
        raise await _fail(stream, HandshakeFailed("eof", fingerprint_of(conn))) from None
    except trio.TooSlowError:
        raise await _fail(stream, HandshakeFailed("timeout", fingerprint_of(conn))) from None
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise await _fail(stream, HandshakeFailed("broken", fingerprint_of(conn))) from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return EncryptedMessageStream(stream, conn, frame_timeout=frame_timeout)


def fingerprint_of(conn: Connection) -> str | None:
    return None if conn.peer_public is None else fingerprint(conn.peer_public)


async def client_handshake(
    stream: trio.abc.Stream,
    client_keys: KeyPair,
    server_public: PublicKey | bytes,
    now_fn: Callable[[], float],
    *,
    receive_cap: int = MAX_FRAME_CEILING,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    frame_timeout: float = FRAME_TIMEOUT,
) -> EncryptedMessageStream:
    """Run the client side of wire.md §3 within `handshake_timeout` seconds of the call.

    Raises:
        HandshakeFailed: `refused` (EOF before WELCOME: unknown key, clock skew, version
            or replay look the same), `server key mismatch`, `timeout`, `broken`; the
            stream was closed without sending anything after HELLO.
    """
    server_raw = server_public.public if isinstance(server_public, PublicKey) else server_public
    conn = Connection(Role.CLIENT, client_keys, server_public=server_raw, receive_cap=receive_cap)
    try:
        with trio.fail_after(handshake_timeout):
            await stream.send_all(conn.start(int(now_fn())))
            while True:
                event = conn.next_event()
                if isinstance(event, HandshakeComplete):
                    break
                conn.receive_data(await stream.receive_some(READ_SIZE))
            await stream.send_all(event.data)
            while not conn.read_peer_header():
                conn.receive_data(await stream.receive_some(READ_SIZE))
    except HandshakeError as exc:
        raise await _fail(stream, HandshakeFailed(exc.reason)) from None
    except FramingError:
        raise await _fail(stream, HandshakeFailed("refused")) from None
    except trio.TooSlowError:
        raise await _fail(stream, HandshakeFailed("timeout")) from None
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise await _fail(stream, HandshakeFailed("broken")) from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return EncryptedMessageStream(stream, conn, frame_timeout=frame_timeout)


__all__ = [
    "EncryptedMessageStream",
    "HandshakeFailed",
    "LocalProtocolError",
    "RemoteProtocolError",
    "client_handshake",
    "server_handshake",
]
