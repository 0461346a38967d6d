"""The one-round-trip handshake of wire.md §3: HELLO, WELCOME, session keys.

Charter: pure functions over bytes. No trio, no clock, no logging, no randomness: the
caller passes `now` (Unix seconds) and every random input (ephemeral secret keys, the
nonces `n_v`, `n_o`, `n_w`), so the test vectors can fix them. Production callers draw
them with `nacl.utils.random(24)` and `bytes(nacl.public.PrivateKey.generate())`
(see `fresh_hello_randomness` / `fresh_welcome_randomness`, which only call libsodium).

Server side: `check_hello` runs checks 1-7 in the order of §3 and raises `HandshakeError`
with a `reason` for logs (the peer never learns it); `make_welcome` builds WELCOME and
derives the keys (check 8). Client side: `make_hello` then `check_welcome`.
Until check 7 the server keeps no state for the peer; `ReplayCache` holds that state.
"""

from __future__ import annotations

import hashlib
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Final

import nacl.bindings
import nacl.public
import nacl.utils

from allq.wire.keyfiles import AllowList, KeyPair, fingerprint
from allq.wire.transport import RemoteProtocolError

MAGIC: Final = b"ALQ"
VERSION: Final = 1
SUPPORTED_VERSIONS: Final = frozenset({VERSION})
HELLO_SIZE: Final = 220
WELCOME_SIZE: Final = 136
HEADER_SIZE: Final = 24  # crypto_secretstream header
NONCE_SIZE: Final = 24
KEY_SIZE: Final = 32
TIME_WINDOW: Final = 120.0
REPLAY_TTL: Final = 240.0
REPLAY_MAX_ENTRIES: Final = 65_536

P_HELLO: Final = b"allq1-hello"
P_TRANSCRIPT: Final = b"allq1-transcript"
P_C2S: Final = b"allq1-c2s"
P_S2C: Final = b"allq1-s2c"

# Step 3: an unlisted C still gets step 4, against this fixed key, so timing does not tell
# listed from unlisted keys. Its secret is public knowledge; it never authenticates anyone
# because a listed key is required before step 4's result counts.
_DUMMY_PUBLIC: Final = bytes(
    nacl.public.PrivateKey(
        hashlib.blake2b(b"allq1-dummy-client", digest_size=32).digest()
    ).public_key
)


def H(message: bytes, person: bytes) -> bytes:
    """BLAKE2b-256 with a personalisation right-padded with zero bytes to 16."""
    return hashlib.blake2b(message, digest_size=32, person=person.ljust(16, b"\0")).digest()


def KH(key: bytes, message: bytes, person: bytes) -> bytes:
    """Keyed BLAKE2b-256 with a personalisation (wire.md §3)."""
    return hashlib.blake2b(
        message, digest_size=32, key=key, person=person.ljust(16, b"\0")
    ).digest()


class HandshakeError(RemoteProtocolError):
    """The handshake failed; `reason` is for logs only and never sent to the peer.

    Server reasons: `short hello`, `bad magic`, `unsupported version`, `outer box`,
    `not allowed`, `vouch`, `vouch binding`, `clock skew`, `replay`, `replay cache full`,
    `key derivation`. Client reasons: `refused`, `server key mismatch`.
    """

    def __init__(self, reason: str, fingerprint: str | None = None) -> None:
        super().__init__(reason if fingerprint is None else f"{reason} (client {fingerprint})")
        self.reason = reason
        self.fingerprint = fingerprint


# --- replay cache -------------------------------------------------------------------------


class ReplayCache:
    """Seen `(C, E_C)` pairs, each kept `ttl` seconds; never evicts a live entry.

    `now` is passed in. Entries are expired in insertion order; if the clock stepped back,
    an entry may outlive its time until those inserted before it expire (never earlier).
    """

    def __init__(self, max_entries: int = REPLAY_MAX_ENTRIES, ttl: float = REPLAY_TTL) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._expiry: dict[bytes, float] = {}
        self._order: deque[tuple[float, bytes]] = deque()

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, key: object) -> bool:
        return key in self._expiry

    def expire(self, now: float) -> None:
        order, expiry = self._order, self._expiry
        # Strict `<`: an entry added at ts - 120 still exists at ts + 120, the last instant
        # the same HELLO passes the time window (TTL = 2 * window, no gap at the edge).
        while order and order[0][0] < now:
            when, key = order.popleft()
            if expiry.get(key) == when:
                del expiry[key]

    def check_and_add(self, client_public: bytes, ephemeral_public: bytes, now: float) -> None:
        """Check 7: refuse a seen pair or a full cache, else remember the pair.

        Raises:
            HandshakeError: `replay` or `replay cache full`; the cache is then unchanged
            (apart from dropping expired entries).
        """
        self.expire(now)
        key = client_public + ephemeral_public
        if key in self._expiry:
            raise HandshakeError("replay", fingerprint(client_public))
        if len(self._expiry) >= self.max_entries:
            raise HandshakeError("replay cache full", fingerprint(client_public))
        when = now + self.ttl
        self._expiry[key] = when
        self._order.append((when, key))


# --- keys ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The derivation of §3 with its intermediate values (kept for the test vectors)."""

    transcript: bytes
    rx: bytes = field(repr=False)
    tx: bytes = field(repr=False)
    dh1: bytes = field(repr=False)
    dh2: bytes = field(repr=False)
    c2s: bytes = field(repr=False)
    s2c: bytes = field(repr=False)


def _derive(
    transcript: bytes, rx: bytes, tx: bytes, dh1: bytes, dh2: bytes, client: bool
) -> SessionKeys:
    material = transcript + dh1 + dh2
    c2s_key, s2c_key = (tx, rx) if client else (rx, tx)
    return SessionKeys(
        transcript=transcript,
        rx=rx,
        tx=tx,
        dh1=dh1,
        dh2=dh2,
        c2s=KH(c2s_key, material, P_C2S),
        s2c=KH(s2c_key, material, P_S2C),
    )


def _box(secret: bytes, public: bytes, message: bytes, nonce: bytes) -> bytes:
    return bytes(
        nacl.public.Box(nacl.public.PrivateKey(secret), nacl.public.PublicKey(public)).encrypt(
            message, nonce
        )
    )


def _unbox(secret: bytes, public: bytes, boxed: bytes) -> bytes:
    """Open `nonce ‖ MAC ‖ ciphertext`; any exception (bad MAC, low-order key) propagates."""
    box = nacl.public.Box(nacl.public.PrivateKey(secret), nacl.public.PublicKey(public))
    return bytes(box.decrypt(boxed))


def public_of(secret: bytes) -> bytes:
    return bytes(nacl.public.PrivateKey(secret).public_key)


# --- client -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloRandomness:
    ephemeral_secret: bytes = field(repr=False)
    n_v: bytes
    n_o: bytes


def fresh_hello_randomness() -> HelloRandomness:
    return HelloRandomness(
        bytes(nacl.public.PrivateKey.generate()),
        nacl.utils.random(NONCE_SIZE),
        nacl.utils.random(NONCE_SIZE),
    )


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What the client keeps between HELLO and WELCOME."""

    hello: bytes
    ephemeral_secret: bytes = field(repr=False)
    ephemeral_public: bytes
    server_public: bytes
    vouch_plaintext: bytes
    vouch: bytes
    outer_plaintext: bytes


def make_hello(
    client: KeyPair, server_public: bytes, ts: int, rand: HelloRandomness
) -> ClientHello:
    """Build the 220-byte HELLO (wire.md §3)."""
    e_pub = public_of(rand.ephemeral_secret)
    vouch_plain = e_pub + server_public + struct.pack(">Q", ts)
    vouch = _box(client.secret, server_public, vouch_plain, rand.n_v)
    outer_plain = client.public + vouch
    outer = _box(rand.ephemeral_secret, server_public, outer_plain, rand.n_o)
    hello = MAGIC + bytes([VERSION]) + e_pub + outer
    assert len(hello) == HELLO_SIZE
    return ClientHello(
        hello, rand.ephemeral_secret, e_pub, server_public, vouch_plain, vouch, outer_plain
    )


def check_welcome(state: ClientHello, client: KeyPair, welcome: bytes) -> SessionKeys:
    """Client checks on the 136-byte WELCOME, then the key derivation.

    Raises:
        HandshakeError: `server key mismatch` for any failure.
    """
    try:
        if len(welcome) != WELCOME_SIZE:
            raise ValueError("size")
        e_s = welcome[:32]
        plain = _unbox(state.ephemeral_secret, state.server_public, welcome[32:])
        if plain[:32] != e_s or plain[32:] != H(state.hello, P_HELLO):
            raise ValueError("binding")
        transcript = H(state.hello + welcome, P_TRANSCRIPT)
        rx, tx = nacl.bindings.crypto_kx_client_session_keys(
            state.ephemeral_public, state.ephemeral_secret, e_s
        )
        dh1 = nacl.bindings.crypto_scalarmult(state.ephemeral_secret, state.server_public)
        dh2 = nacl.bindings.crypto_scalarmult(client.secret, e_s)
    except Exception:
        raise HandshakeError("server key mismatch") from None
    return _derive(transcript, rx, tx, dh1, dh2, client=True)


# --- server -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcceptedHello:
    """A HELLO that passed checks 1-7."""

    hello: bytes
    client_public: bytes
    client_name: str
    ephemeral_public: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.client_public)


def check_hello(
    hello: bytes, server: KeyPair, allowlist: AllowList, replay: ReplayCache, now: float
) -> AcceptedHello:
    """Server checks 1-7 of wire.md §3, in order; check 7 records the pair.

    Raises:
        HandshakeError: at the first failed check; the caller closes and sends nothing.
    """
    if len(hello) != HELLO_SIZE:
        raise HandshakeError("short hello")
    if hello[:3] != MAGIC:  # 1
        raise HandshakeError("bad magic")
    if hello[3] not in SUPPORTED_VERSIONS:
        raise HandshakeError("unsupported version")
    e_c = hello[4:36]
    try:  # 2
        outer = _unbox(server.secret, e_c, hello[36:])
    except Exception:
        raise HandshakeError("outer box") from None
    client_public, vouch = outer[:32], outer[32:]
    fp = fingerprint(client_public)
    listed = client_public in allowlist  # 3 (decided after step 4, same work either way)
    try:  # 4
        vouch_plain = _unbox(server.secret, client_public if listed else _DUMMY_PUBLIC, vouch)
    except Exception:
        vouch_plain = None
    if not listed:
        raise HandshakeError("not allowed", fp)
    if vouch_plain is None:
        raise HandshakeError("vouch", fp)
    if vouch_plain[:32] != e_c or vouch_plain[32:64] != server.public:  # 5
        raise HandshakeError("vouch binding", fp)
    (ts,) = struct.unpack(">Q", vouch_plain[64:72])
    if abs(now - ts) > TIME_WINDOW:  # 6
        raise HandshakeError("clock skew", fp)
    replay.check_and_add(client_public, e_c, now)  # 7
    return AcceptedHello(hello, client_public, allowlist.name_of(client_public) or "", e_c)


@dataclass(frozen=True, slots=True)
class WelcomeRandomness:
    ephemeral_secret: bytes = field(repr=False)
    n_w: bytes


def fresh_welcome_randomness() -> WelcomeRandomness:
    return WelcomeRandomness(
        bytes(nacl.public.PrivateKey.generate()), nacl.utils.random(NONCE_SIZE)
    )


def make_welcome(
    accepted: AcceptedHello, server: KeyPair, rand: WelcomeRandomness
) -> tuple[bytes, SessionKeys]:
    """Build the 136-byte WELCOME and derive the session keys (check 8).

    Raises:
        HandshakeError: `key derivation` (a low-order point); nothing may be sent then.
    """
    try:
        e_s = public_of(rand.ephemeral_secret)
        plain = e_s + H(accepted.hello, P_HELLO)
        welcome = e_s + _box(server.secret, accepted.ephemeral_public, plain, rand.n_w)
        transcript = H(accepted.hello + welcome, P_TRANSCRIPT)
        rx, tx = nacl.bindings.crypto_kx_server_session_keys(
            e_s, rand.ephemeral_secret, accepted.ephemeral_public
        )
        dh1 = nacl.bindings.crypto_scalarmult(server.secret, accepted.ephemeral_public)
        dh2 = nacl.bindings.crypto_scalarmult(rand.ephemeral_secret, accepted.client_public)
    except Exception:
        raise HandshakeError("key derivation", accepted.fingerprint) from None
    assert len(welcome) == WELCOME_SIZE
    return welcome, _derive(transcript, rx, tx, dh1, dh2, client=False)
