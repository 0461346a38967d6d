"""FrameWriter: coalesced, shielded, stall-bounded writes of already-encoded frames.

The message streams (`allq.wire.stream`, `allq.wire.plain`) encode and seal a message at
once (`queue`), so frames enter the byte stream in the order they were sealed, and write
them with `flush`. The first flushing task becomes the writer: it writes everything
queued, in order, with one `send_all` per round, and keeps going while other tasks queue
more during its write. Those tasks do not write themselves: they wait until the writer
has written their frames. So N frames queued in one scheduler tick cost one or two
system calls instead of N.

Cancellation: the writer's `send_all` is shielded (a half-written frame would break the
stream for every other request on it) and bounded by the write-stall timeout, like a
single write before. A task cancelled while waiting for the writer raises `Cancelled`,
but its frame is already queued and still goes out: a queued frame is a sent frame
unless the stream breaks. A stall or a failed write marks the writer broken: waiting
and later flushes raise `trio.BrokenResourceError`.

Bounds: nothing limits the queue by itself; callers bound it by their in-flight limits
(a session writes at most one answer per request in flight, a client at most one
request per slot).
"""

from __future__ import annotations

import trio


class FrameWriter:
    """Coalescing writer over one `trio.abc.SendStream`. See the module docstring."""

    def __init__(self, stream: trio.abc.SendStream, write_timeout: float) -> None:
        self._stream = stream
        self.write_timeout = write_timeout
        self._out: list[bytes] = []
        self._queued = 0  # frames queued since the start
        self._written = 0  # frames written since the start
        self._writing = False
        self._progress: trio.Event | None = None  # made when a task waits for the writer
        self.broken: str | None = None  # why writes are impossible now
        self.writes = 0  # send_all calls made

    @property
    def written(self) -> int:
        """Frames written since the start."""
        return self._written

    @property
    def pending(self) -> int:
        """Frames queued and not yet written."""
        return self._queued - self._written

    def queue(self, frame: bytes) -> None:
        """Append one encoded frame; it is written by the next (or the running) flush."""
        self._out.append(frame)
        self._queued += 1

    async def flush(self) -> None:
        """Return once every frame queued before the call has been written.

        Raises:
            trio.BrokenResourceError: a write failed or stalled (now or earlier).
            trio.Cancelled: the caller was cancelled; its frames still go out.
        """
        target = self._queued
        if self._written >= target and self.broken is None:
            await trio.lowlevel.checkpoint()
            return
        if self._writing:
            while self._written < target:
                if self.broken is not None:
                    raise trio.BrokenResourceError(self.broken)
                if self._progress is None:
                    self._progress = trio.Event()
                await self._progress.wait()
        else:
            await self._drain()
        await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled caller learns it now

    async def _drain(self) -> None:
        if self.broken is not None:
            raise trio.BrokenResourceError(self.broken)
        self._writing = True
        try:
            with trio.CancelScope(shield=True):
                while self._out:
                    frames, self._out = self._out, []
                    data = frames[0] if len(frames) == 1 else b"".join(frames)
                    with trio.move_on_after(self.write_timeout) as stall:
                        try:
                            await self._stream.send_all(data)
                        except BaseException as exc:
                            self.broken = f"write failed: {exc!r}"
                            raise
                    if stall.cancelled_caught:
                        self.broken = f"write blocked for {self.write_timeout:g} s"
                        raise trio.BrokenResourceError(self.broken)
                    self._written += len(frames)
                    self.writes += 1
                    self._wake()
        finally:
            self._writing = False
            self._wake()

    def _wake(self) -> None:
        if self._progress is not None:
            self._progress.set()
            self._progress = None


class WriterBacked:
    """What a message stream built on a `FrameWriter` (`self._writer`) shares."""

    _writer: FrameWriter

    @property
    def write_timeout(self) -> float:
        """Seconds a write may stay blocked before the stream counts as broken."""
        return self._writer.write_timeout

    @write_timeout.setter
    def write_timeout(self, value: float) -> None:
        self._writer.write_timeout = value
