"""secretstream push/pull for the frame hot path: the libsodium calls PyNaCl makes.

`nacl.bindings.crypto_secretstream_xchacha20poly1305_push/_pull` check their arguments
with a dozen Python calls each (~3-5 µs a frame, more than the cipher on a small frame).
The engine already guarantees those arguments (bytes, lengths under the frame cap, an
initialised state), so these functions call the same libsodium functions through
PyNaCl's own cffi module with a reused output buffer: the same bytes, cheaper. If that
module is not available (a PyNaCl without `nacl._sodium`), they fall back to the public
bindings. `tests/wire/test_secretstream.py` checks both against each other.

Failures raise `nacl.exceptions.CryptoError` like the bindings (any exception from a
crypto call is a failure, wire.md §2).
"""

from __future__ import annotations

from typing import Any

import nacl.bindings as sodium
from nacl.exceptions import CryptoError

State = sodium.crypto_secretstream_xchacha20poly1305_state
ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES

try:
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover - every PyNaCl since 1.4 has it
    _ffi = _lib = None

FAST = _lib is not None and hasattr(_lib, "crypto_secretstream_xchacha20poly1305_push")


class Pusher:
    """Seals frames for one push state (`init_push` already done)."""

    __slots__ = ("_buf", "_size", "_state")

    def __init__(self, state: State) -> None:
        self._state = state
        self._size = 0
        self._buf: Any = None

    def push(self, message: bytes, ad: bytes, tag: int) -> bytes:
        if not FAST:
            out: bytes = sodium.crypto_secretstream_xchacha20poly1305_push(
                self._state, message, ad, tag
            )
            return out
        size = len(message) + ABYTES
        if size > self._size:
            self._size = max(size, 4096)
            self._buf = _ffi.new("unsigned char[]", self._size)
        rc = _lib.crypto_secretstream_xchacha20poly1305_push(
            self._state.statebuf, self._buf, _ffi.NULL, message, len(message), ad, len(ad), tag
        )
        if rc != 0:
            raise CryptoError("secretstream push failed")
        return _ffi.buffer(self._buf, size)[:]  # type: ignore[no-any-return]


class Puller:
    """Opens frames for one pull state (`init_pull` already done)."""

    __slots__ = ("_buf", "_size", "_state", "_tag")

    def __init__(self, state: State) -> None:
        self._state = state
        self._size = 0
        self._buf: Any = None
        self._tag: Any = _ffi.new("unsigned char[]", 1) if FAST else None

    def pull(self, ciphertext: bytes, ad: bytes) -> tuple[bytes, int]:
        if not FAST:
            result: tuple[bytes, int] = sodium.crypto_secretstream_xchacha20poly1305_pull(
                self._state, ciphertext, ad
            )
            return result
        size = len(ciphertext) - ABYTES
        if size < 0:
            raise CryptoError("ciphertext too short")
        if size > self._size or self._buf is None:
            self._size = max(size, 4096)
            self._buf = _ffi.new("unsigned char[]", self._size)
        rc = _lib.crypto_secretstream_xchacha20poly1305_pull(
            self._state.statebuf,
            self._buf,
            _ffi.NULL,
            self._tag,
            ciphertext,
            len(ciphertext),
            ad,
            len(ad),
        )
        if rc != 0:
            raise CryptoError("secretstream pull failed")
        return _ffi.buffer(self._buf, size)[:], int(self._tag[0])
