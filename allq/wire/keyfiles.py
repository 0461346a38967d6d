"""Key files and the allow-list (wire.md §2).

Charter: parse and write the text formats of `allq-secret-key v1` / `allq-public-key v1`
files and of `clients.allow`; check keys (32 bytes, `public` matches `secret`, X25519
validity); refuse group- or world-accessible secret files; `keygen` for the CLI. File I/O
uses `pathlib`/`os` only; no trio, no clock, no logging. Key generation draws from
libsodium's RNG (`nacl.public.PrivateKey.generate()`), the only randomness here.

Every failure raises `KeyFileError` with a message naming the file (and the line number
for allow-list lines) that the CLI can print as is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import nacl.bindings
import nacl.public

SECRET_HEADER: Final = "allq-secret-key v1"
PUBLIC_HEADER: Final = "allq-public-key v1"
KEY_BYTES: Final = 32

# A fixed scalar for the X25519 validity check: multiplying a low-order point (or the
# all-zero point) by any clamped scalar gives the all-zero point, which libsodium refuses.
_CHECK_SCALAR: Final = hashlib.blake2b(b"allq1-keycheck", digest_size=32).digest()


class KeyFileError(ValueError):
    """A key file or allow-list is missing, malformed, unsafe or holds a bad key."""


def encode_key(raw: bytes) -> str:
    """The canonical text form of a 32-byte key: padded standard base64 (44 characters)."""
    return base64.b64encode(raw).decode("ascii")


def fingerprint(public: bytes) -> str:
    """The key's fingerprint for logs: the first 16 characters of its base64 form."""
    return encode_key(public)[:16]


def decode_key(text: str) -> bytes:
    """Decode a key written as 44-character padded base64 or 64 hex digits.

    Raises:
        ValueError: not one of the two forms, or not 32 bytes once decoded.
    """
    text = text.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ValueError("64 characters but not hex digits") from None
    if len(text) == 44:
        try:
            raw = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise ValueError("44 characters but not padded standard base64") from None
        if len(raw) == KEY_BYTES:
            return raw
    raise ValueError("a key is 44 characters of base64 or 64 hex digits (32 bytes)")


def is_valid_public_key(public: bytes) -> bool:
    """X25519 check: 32 bytes, not all-zero and not a low-order point."""
    if len(public) != KEY_BYTES:
        return False
    try:
        nacl.bindings.crypto_scalarmult(_CHECK_SCALAR, public)
    except Exception:
        return False
    return True


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A peer's static public key as read from a `.pub` file (or built in code)."""

    public: bytes
    role: str = ""
    name: str = ""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def to_nacl(self) -> nacl.public.PublicKey:
        return nacl.public.PublicKey(self.public)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A static X25519 key pair (server or client host)."""

    secret: bytes = field(repr=False)
    public: bytes
    role: str = ""
    name: str = ""

    @classmethod
    def generate(cls, role: str = "", name: str = "") -> KeyPair:
        sk = nacl.public.PrivateKey.generate()
        return cls(bytes(sk), bytes(sk.public_key), role, name)

    @classmethod
    def from_secret(cls, secret: bytes, role: str = "", name: str = "") -> KeyPair:
        """Build a pair from 32 secret bytes (tests and vectors)."""
        sk = nacl.public.PrivateKey(secret)
        return cls(bytes(sk), bytes(sk.public_key), role, name)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def public_key(self) -> PublicKey:
        return PublicKey(self.public, self.role, self.name)

    def to_nacl(self) -> nacl.public.PrivateKey:
        return nacl.public.PrivateKey(self.secret)


# --- text formats -------------------------------------------------------------------------


def format_secret_key(pair: KeyPair) -> str:
    """The text of a secret key file."""
    return (
        f"{SECRET_HEADER}\nrole: {pair.role}\nname: {pair.name}\n"
        f"public: {encode_key(pair.public)}\nsecret: {encode_key(pair.secret)}\n"
    )


def format_public_key(key: PublicKey) -> str:
    """The text of a public key file."""
    return (
        f"{PUBLIC_HEADER}\nrole: {key.role}\nname: {key.name}\npublic: {encode_key(key.public)}\n"
    )


def format_allow_line(key: PublicKey) -> str:
    """One allow-list line: the key, then the client's name."""
    return f"{encode_key(key.public)} {key.name}".rstrip()


def _lines(text: str) -> Iterator[tuple[int, str]]:
    # LF line ends; a CR before the LF is tolerated (files edited on Windows).
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")


def _parse_fields(text: str, source: str, header: str) -> dict[str, str]:
    lines = list(_lines(text))
    first = lines[0][1] if lines else ""
    if first != header:
        other = PUBLIC_HEADER if header == SECRET_HEADER else SECRET_HEADER
        if first == other:
            kind = "public" if header == SECRET_HEADER else "secret"
            raise KeyFileError(f"{source}: this is a {kind} key file, expected {header!r}")
        raise KeyFileError(f"{source}: line 1 must be exactly {header!r}")
    fields: dict[str, str] = {}
    for number, line in lines[1:]:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition(":")
        if not sep:
            raise KeyFileError(f"{source}:{number}: expected 'field: value'")
        name = name.strip()
        if name in fields:
            raise KeyFileError(f"{source}:{number}: field {name!r} repeated")
        fields[name] = value.strip()
    return fields


def _key_field(fields: Mapping[str, str], name: str, source: str) -> bytes:
    if name not in fields:
        raise KeyFileError(f"{source}: missing field {name!r}")
    try:
        return decode_key(fields[name])
    except ValueError as exc:
        raise KeyFileError(f"{source}: field {name!r}: {exc}") from None


def _check_role(fields: Mapping[str, str], role: str | None, source: str) -> None:
    if role is not None and fields.get("role", role) != role:
        raise KeyFileError(f"{source}: key file is for role {fields['role']!r}, expected {role!r}")


def parse_secret_key(text: str, source: str = "<secret key>", role: str | None = None) -> KeyPair:
    """Parse the text of a secret key file and check that `public` matches `secret`."""
    fields = _parse_fields(text, source, SECRET_HEADER)
    _check_role(fields, role, source)
    public = _key_field(fields, "public", source)
    secret = _key_field(fields, "secret", source)
    pair = KeyPair.from_secret(secret, fields.get("role", ""), fields.get("name", ""))
    if pair.public != public:
        raise KeyFileError(f"{source}: 'public' does not match 'secret'")
    if not is_valid_public_key(public):
        raise KeyFileError(f"{source}: not a usable X25519 key")
    return pair


def parse_public_key(text: str, source: str = "<public key>", role: str | None = None) -> PublicKey:
    """Parse the text of a public key file; the key must pass the X25519 check."""
    fields = _parse_fields(text, source, PUBLIC_HEADER)
    _check_role(fields, role, source)
    if "secret" in fields:
        raise KeyFileError(f"{source}: a public key file must not hold a 'secret' field")
    public = _key_field(fields, "public", source)
    if not is_valid_public_key(public):
        raise KeyFileError(f"{source}: 'public' is all-zero or a low-order point")
    return PublicKey(public, fields.get("role", ""), fields.get("name", ""))


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not UTF-8 text") from None


def check_secret_file_mode(path: Path) -> None:
    """Refuse a secret file that its group or others may access (any of bits 0o077)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: secret key file is accessible by group or others (mode {mode:04o}); "
            f"run: chmod 600 {path}"
        )


def load_secret_key(path: Path | str, role: str | None = None) -> KeyPair:
    """Load a secret key file after checking its mode (wire.md §2)."""
    path = Path(path)
    check_secret_file_mode(path)
    return parse_secret_key(_read(path), str(path), role)


def load_public_key(path: Path | str, role: str | None = None) -> PublicKey:
    """Load a public key file (a client's pinned `server.pub`)."""
    path = Path(path)
    return parse_public_key(_read(path), str(path), role)


# --- allow-list ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllowList:
    """The allow-listed client keys: public key bytes -> the name from the file."""

    names: Mapping[bytes, str]

    def __contains__(self, public: object) -> bool:
        return public in self.names

    def __len__(self) -> int:
        return len(self.names)

    def name_of(self, public: bytes) -> str | None:
        return self.names.get(public)

    @classmethod
    def of(cls, keys: Mapping[bytes, str] | list[bytes]) -> AllowList:
        """Build a list in code (tests); keys are checked like file entries."""
        names = dict(keys) if isinstance(keys, Mapping) else dict.fromkeys(keys, "")
        for public in names:
            if not is_valid_public_key(public):
                raise KeyFileError(f"allow-list key {fingerprint(public)!r} is not usable")
        if not names:
            raise KeyFileError("the allow-list is empty")
        return cls(names)


def parse_allowlist(text: str, source: str = "<allow-list>") -> AllowList:
    """Parse allow-list text: `<public key> [free text]` per line, `#` comments.

    Refuses a malformed line, a key failing the X25519 check, a key listed twice (each
    naming `source:line`) and an empty list.
    """
    names: dict[bytes, str] = {}
    first_line: dict[bytes, int] = {}
    for number, line in _lines(text):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key_text, *rest = stripped.split(None, 1)
        name = rest[0].strip() if rest else ""
        try:
            public = decode_key(key_text)
        except ValueError as exc:
            raise KeyFileError(f"{source}:{number}: {exc}") from None
        if not is_valid_public_key(public):
            raise KeyFileError(f"{source}:{number}: key is all-zero or a low-order point")
        if public in names:
            raise KeyFileError(
                f"{source}:{number}: key already listed on line {first_line[public]}"
            )
        names[public] = name
        first_line[public] = number
    if not names:
        raise KeyFileError(f"{source}: the allow-list holds no key")
    return AllowList(names)


def load_allowlist(path: Path | str) -> AllowList:
    """Load `--allow FILE` (also used on SIGHUP reloads: on error keep the old list)."""
    path = Path(path)
    return parse_allowlist(_read(path), str(path))


# --- writing ------------------------------------------------------------------------------


def _write_file(path: Path, text: str, mode: int, force: bool) -> None:
    """Write via a temporary file created with `mode`, then rename into place.

    Without `force` the final step is a hard link, which fails if `path` exists, so an
    existing file is never replaced even if it appeared after the caller's checks.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits we want (0644 files)
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_secret_key(path: Path, pair: KeyPair, *, force: bool = False) -> None:
    _write_file(path, format_secret_key(pair), 0o600, force)


def write_public_key(path: Path, key: PublicKey, *, force: bool = False) -> None:
    _write_file(path, format_public_key(key), 0o644, force)


def keygen(directory: Path, clients: int, force: bool) -> list[str]:
    """`allq keygen DIR --clients N`: write fresh keys and the allow-list.

    Writes `server.key`, `server.pub`, `client-1.key`/`.pub` … `client-N.key`/`.pub` and
    `clients.allow`. Without `force`, nothing is written if any of these files exists.

    Returns:
        Human-readable lines saying what was written and what to copy where.

    Raises:
        KeyFileError: `clients` < 1, or a file exists and `force` is false.
        OSError: the directory cannot be created or written.
    """
    if clients < 1:
        raise KeyFileError("--clients must be at least 1")
    directory = Path(directory)
    names = ["server.key", "server.pub", "clients.allow"]
    for n in range(1, clients + 1):
        names += [f"client-{n}.key", f"client-{n}.pub"]
    if not force:
        existing = [name for name in names if (directory / name).exists()]
        if existing:
            raise KeyFileError(
                f"{directory}: refusing to overwrite {', '.join(existing)} (use --force)"
            )
    directory.mkdir(parents=True, exist_ok=True)
    server = KeyPair.generate("server", "server")
    client_pairs = [KeyPair.generate("client", f"client-{n}") for n in range(1, clients + 1)]
    write_secret_key(directory / "server.key", server, force=force)
    write_public_key(directory / "server.pub", server.public_key(), force=force)
    for pair in client_pairs:
        write_secret_key(directory / f"{pair.name}.key", pair, force=force)
        write_public_key(directory / f"{pair.name}.pub", pair.public_key(), force=force)
    allow = "# allq allow-list: one client public key per line, then its name\n" + "".join(
        format_allow_line(pair.public_key()) + "\n" for pair in client_pairs
    )
    _write_file(directory / "clients.allow", allow, 0o644, force)
    lines = [
        f"Wrote {len(names)} files to {directory}:",
        f"  server.key      server secret key (mode 0600), fingerprint {server.fingerprint}",
        "  server.pub      server public key",
        f"  clients.allow   allow-list of {clients} client key(s)",
    ]
    lines += [
        f"  {p.name}.key/.pub  client key pair, fingerprint {p.fingerprint}" for p in client_pairs
    ]
    lines += [
        "Copy to the queue server host: server.key (--key) and clients.allow (--allow).",
        "Copy to client host N (gateway, worker): client-N.key (--key) and server.pub "
        "(--server-key).",
        "Secret files (*.key) must stay mode 0600 and never leave the host that uses them.",
    ]
    return lines
