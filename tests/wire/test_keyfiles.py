"""Key files and allow-list (wire.md §2).

Rules: files are written to pytest's tmp_path; every refusal is checked for the file name
(and line number) in its message; keys are generated or derived from fixed bytes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from allq.wire import keyfiles
from allq.wire.keyfiles import (
    AllowList,
    KeyFileError,
    KeyPair,
    decode_key,
    encode_key,
    format_public_key,
    format_secret_key,
    keygen,
    load_allowlist,
    load_public_key,
    load_secret_key,
    parse_allowlist,
    parse_public_key,
    parse_secret_key,
)

PAIR = KeyPair.from_secret(bytes(range(32)), "client", "client-1")
# A point of order 8 on Curve25519 (libsodium's blacklist).
LOW_ORDER = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


def test_key_text_forms() -> None:
    b64 = encode_key(PAIR.public)
    assert len(b64) == 44
    assert decode_key(b64) == PAIR.public
    assert decode_key(PAIR.public.hex()) == PAIR.public
    assert decode_key(PAIR.public.hex().upper()) == PAIR.public
    assert PAIR.fingerprint == b64[:16]
    for bad in ["", "abc", b64[:-1], "!" * 44, "zz" * 32, encode_key(b"x" * 31) + "A"]:
        with pytest.raises(ValueError):
            decode_key(bad)


def test_secret_and_public_round_trip() -> None:
    text = format_secret_key(PAIR)
    assert text.splitlines()[0] == "allq-secret-key v1"
    assert parse_secret_key(text) == PAIR
    pub = parse_public_key(format_public_key(PAIR.public_key()))
    assert pub.public == PAIR.public
    assert (pub.role, pub.name) == ("client", "client-1")


def test_loader_accepts_hex_comments_blank_and_unknown_fields() -> None:
    text = (
        "allq-secret-key v1\n# comment\n\nfuture: yes\n"
        f"public: {PAIR.public.hex()}\nsecret: {PAIR.secret.hex()}\n"
    )
    assert parse_secret_key(text).public == PAIR.public


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("allq-secret-key v2\n", "line 1"),
        ("", "line 1"),
        (" allq-secret-key v1\n", "line 1"),
        ("allq-public-key v1\npublic: x\n", "public key file"),
        ("allq-secret-key v1\npublic: {p}\n", "missing field 'secret'"),
        ("allq-secret-key v1\npublic: {p}\npublic: {p}\nsecret: {s}\n", "repeated"),
        ("allq-secret-key v1\npublic {p}\n", "field: value"),
        ("allq-secret-key v1\npublic: {p}\nsecret: {p}\n", "does not match"),
        ("allq-secret-key v1\npublic: {p}\nsecret: abc\n", "'secret'"),
        ("allq-secret-key v1\nrole: server\npublic: {p}\nsecret: {s}\n", "role"),
    ],
)
def test_secret_file_refusals(text: str, needle: str) -> None:
    text = text.format(p=encode_key(PAIR.public), s=encode_key(PAIR.secret))
    with pytest.raises(KeyFileError, match=needle) as info:
        parse_secret_key(text, "some.key", role="client")
    assert "some.key" in str(info.value)


def test_public_file_refusals() -> None:
    with pytest.raises(KeyFileError, match="secret key file"):
        parse_public_key(format_secret_key(PAIR), "x.pub")
    with pytest.raises(KeyFileError, match="low-order"):
        parse_public_key(f"allq-public-key v1\npublic: {encode_key(LOW_ORDER)}\n", "x.pub")
    with pytest.raises(KeyFileError, match="low-order"):
        parse_public_key(f"allq-public-key v1\npublic: {encode_key(bytes(32))}\n", "x.pub")
    with pytest.raises(KeyFileError, match="'secret'"):
        parse_public_key(
            f"allq-public-key v1\npublic: {encode_key(PAIR.public)}\nsecret: x\n", "x.pub"
        )


def test_keygen_writes_everything_with_modes(tmp_path: Path) -> None:
    lines = keygen(tmp_path / "keys", clients=2, force=False)
    d = tmp_path / "keys"
    assert any("server.key" in line and "--key" in line for line in lines)
    assert any("server.pub" in line and "--server-key" in line for line in lines)
    for name in ["server.key", "client-1.key", "client-2.key"]:
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
    for name in ["server.pub", "client-1.pub", "client-2.pub", "clients.allow"]:
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o644
    server = load_secret_key(d / "server.key", role="server")
    assert load_public_key(d / "server.pub", role="server").public == server.public
    allow = load_allowlist(d / "clients.allow")
    clients = [load_secret_key(d / f"client-{n}.key", role="client") for n in (1, 2)]
    assert {c.public for c in clients} == set(allow.names)
    assert allow.name_of(clients[0].public) == "client-1"
    assert server.public not in allow
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temp files left


def test_keygen_never_overwrites_without_force(tmp_path: Path) -> None:
    keygen(tmp_path, clients=1, force=False)
    before = (tmp_path / "server.key").read_bytes()
    with pytest.raises(KeyFileError, match=r"server\.key.*--force"):
        keygen(tmp_path, clients=1, force=False)
    assert (tmp_path / "server.key").read_bytes() == before
    keygen(tmp_path, clients=1, force=True)
    assert (tmp_path / "server.key").read_bytes() != before
    assert stat.S_IMODE((tmp_path / "server.key").stat().st_mode) == 0o600


def test_keygen_checks_all_files_before_writing_any(tmp_path: Path) -> None:
    (tmp_path / "client-2.pub").write_text("mine")
    with pytest.raises(KeyFileError, match=r"client-2\.pub"):
        keygen(tmp_path, clients=2, force=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client-2.pub"]
    with pytest.raises(KeyFileError):
        keygen(tmp_path, clients=0, force=True)


def test_write_without_force_refuses_a_file_that_appeared(tmp_path: Path) -> None:
    target = tmp_path / "server.key"
    target.write_text("someone else's")
    with pytest.raises(FileExistsError):
        keyfiles.write_secret_key(target, PAIR)
    assert target.read_text() == "someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.key"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610, 0o601, 0o620])
def test_group_or_world_accessible_secret_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "server.key"
    keyfiles.write_secret_key(path, PAIR)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError) as info:
        load_secret_key(path)
    assert str(path) in str(info.value)
    assert f"{mode:04o}" in str(info.value)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_owner_only_modes_accepted(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "server.key"
    keyfiles.write_secret_key(path, PAIR)
    os.chmod(path, mode)
    assert load_secret_key(path) == PAIR


def test_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"nope\.pub"):
        load_public_key(tmp_path / "nope.pub")
    with pytest.raises(KeyFileError, match=r"nope\.key"):
        load_secret_key(tmp_path / "nope.key")


def test_allowlist_parsing() -> None:
    other = KeyPair.from_secret(bytes(range(1, 33)))
    text = (
        "# clients\n\n"
        f"{encode_key(PAIR.public)} gateway one\n"
        f"  {other.public.hex()}\n"
        f"{encode_key(KeyPair.from_secret(bytes(32)).public)}\tworker\n"
    )
    allow = parse_allowlist(text, "clients.allow")
    assert len(allow) == 3
    assert allow.name_of(PAIR.public) == "gateway one"
    assert allow.name_of(other.public) == ""
    assert PAIR.public in allow


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "holds no key"),
        ("# only a comment\n\n", "holds no key"),
        ("{p}\nnot-a-key name\n", "clients.allow:2"),
        ("\n\n{zero}\n", "clients.allow:3: key is all-zero"),
        ("{low}\n", "clients.allow:1: key is all-zero or a low-order"),
        ("{p} a\n{p} b\n", "clients.allow:2: key already listed on line 1"),
    ],
)
def test_allowlist_refusals(text: str, needle: str) -> None:
    text = text.format(p=encode_key(PAIR.public), zero="0" * 64, low=encode_key(LOW_ORDER))
    with pytest.raises(KeyFileError, match=needle):
        parse_allowlist(text, "clients.allow")


def test_allowlist_in_code() -> None:
    assert PAIR.public in AllowList.of([PAIR.public])
    with pytest.raises(KeyFileError):
        AllowList.of([])
    with pytest.raises(KeyFileError):
        AllowList.of([LOW_ORDER])
