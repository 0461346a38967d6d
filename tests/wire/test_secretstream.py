"""The frame hot path's secretstream calls match PyNaCl's bindings byte for byte."""

from __future__ import annotations

import nacl.bindings as sodium
import pytest
from nacl.exceptions import CryptoError

from allq.wire import secretstream

KEY = bytes(range(32))
TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL


def states() -> tuple[secretstream.State, secretstream.State, secretstream.State]:
    """Two push states with the same header (twins) and a pull state for them."""
    push = sodium.crypto_secretstream_xchacha20poly1305_state()
    header = sodium.crypto_secretstream_xchacha20poly1305_init_push(push, KEY)
    twin = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_push(twin, KEY)
    twin.statebuf[0 : len(push.statebuf)] = push.statebuf[0 : len(push.statebuf)]  # type: ignore[index]
    pull = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(pull, header, KEY)
    return push, twin, pull


def test_the_fast_path_is_available() -> None:
    assert secretstream.FAST


@pytest.mark.parametrize("size", [0, 1, 100, 4096, 70_000])
def test_push_matches_the_bindings_and_pull_opens_them(size: int) -> None:
    push, twin, pull = states()
    fast_pusher = secretstream.Pusher(push)
    puller = secretstream.Puller(pull)
    for n, tag in enumerate((TAG_MESSAGE, TAG_MESSAGE, TAG_FINAL)):
        message, ad = bytes([n]) * size, b"\x00\x00\x00\x07"
        ours = fast_pusher.push(message, ad, tag)
        theirs = sodium.crypto_secretstream_xchacha20poly1305_push(twin, message, ad, tag)
        assert ours == theirs
        assert puller.pull(ours, ad) == (message, tag)


def test_pull_refuses_tampering_and_wrong_ad() -> None:
    push, _, pull = states()
    frame = secretstream.Pusher(push).push(b"hello", b"ad", TAG_MESSAGE)
    puller = secretstream.Puller(pull)
    with pytest.raises(CryptoError):
        puller.pull(frame[:-1] + bytes([frame[-1] ^ 1]), b"ad")
    with pytest.raises(CryptoError):
        puller.pull(frame, b"other")
    with pytest.raises(CryptoError):
        puller.pull(b"short", b"ad")
    assert puller.pull(frame, b"ad") == (b"hello", TAG_MESSAGE)  # state unchanged by failures


def test_the_bindings_fallback_gives_the_same_results(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secretstream, "FAST", False)
    push, twin, pull = states()
    frame = secretstream.Pusher(push).push(b"x" * 50, b"ad", TAG_MESSAGE)
    assert frame == sodium.crypto_secretstream_xchacha20poly1305_push(
        twin, b"x" * 50, b"ad", TAG_MESSAGE
    )
    assert secretstream.Puller(pull).pull(frame, b"ad") == (b"x" * 50, TAG_MESSAGE)
