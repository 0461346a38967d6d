"""The storage interface (persistence.md §10): the `os` implementation and the double."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from allq.store.storage import DirectoryInUse, MemoryStorage, OsStorage, write_all

# --- OsStorage ---------------------------------------------------------------------------


def test_os_storage_files(tmp_path: Path) -> None:
    storage = OsStorage(tmp_path / "data")
    storage.lock()
    assert stat.S_IMODE(os.stat(tmp_path / "data").st_mode) == 0o700
    handle = storage.create("a")
    assert storage.write(handle, b"hello ") == 6
    storage.truncate(handle, 4)
    assert storage.write(handle, b"-world") == 6  # O_APPEND: after the truncation point
    storage.fdatasync(handle)
    storage.close(handle)
    assert storage.read("a") == b"hell-world"
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "a").st_mode) == 0o600
    with pytest.raises(FileExistsError):
        storage.create("a")
    handle = storage.open_append("a")
    storage.write(handle, b"!")
    storage.close(handle)
    storage.rename("a", "b")
    storage.sync_dir()
    assert storage.list() == ["LOCK", "b"]
    assert storage.read("b") == b"hell-world!"
    handle = storage.create("quarantine/b.4")
    storage.close(handle)
    storage.sync_dir("quarantine")
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "quarantine").st_mode) == 0o700
    storage.unlink("b")
    assert storage.list() == ["LOCK", "quarantine"]
    assert storage.free_bytes() > 0
    assert storage.describe("b") == str(tmp_path / "data" / "b")
    with pytest.raises(FileNotFoundError):
        storage.open_append("b")
    storage.unlock()


def test_lock_refuses_a_second_owner_naming_the_pid(tmp_path: Path) -> None:
    first, second = OsStorage(tmp_path), OsStorage(tmp_path)
    first.lock()
    first.lock()  # idempotent for its owner
    assert (tmp_path / "LOCK").read_text() == f"{os.getpid()}\n"
    with pytest.raises(DirectoryInUse) as caught:
        second.lock()
    assert str(caught.value) == (
        f"data directory {tmp_path} is in use by another allq server (pid {os.getpid()})"
    )
    assert caught.value.pid == os.getpid()
    assert (tmp_path / "LOCK").read_text() == f"{os.getpid()}\n"  # untouched
    first.unlock()
    second.lock()
    second.unlock()


# --- MemoryStorage ------------------------------------------------------------------------


def test_memory_storage_basics() -> None:
    storage = MemoryStorage()
    handle = storage.create("a")
    write_all(storage, handle, b"abc")
    with pytest.raises(FileExistsError):
        storage.create("a")
    storage.truncate(handle, 1)
    write_all(storage, handle, b"z")
    assert storage.read("a") == b"az"
    storage.rename("a", "b")
    assert storage.list() == ["b"]
    storage.close(handle)
    with pytest.raises(OSError, match="Bad file descriptor"):
        storage.write(handle, b"x")
    storage.unlink("b")
    with pytest.raises(FileNotFoundError):
        storage.read("b")


def test_injected_write_faults() -> None:
    storage = MemoryStorage()
    handle = storage.create("a")
    storage.fail_write(2, errno.EIO)
    assert storage.write(handle, b"one") == 3
    with pytest.raises(OSError, match="Input/output error") as caught:
        storage.write(handle, b"two")
    assert caught.value.errno == errno.EIO
    assert storage.write(handle, b"three") == 5
    storage.write_limit = 2
    assert storage.write(handle, b"four") == 2
    storage.write_limit = 0
    assert storage.write(handle, b"four") == 0
    storage.write_limit = None
    storage.short_writes = True
    counts = [storage.write(handle, b"0123456789") for _ in range(20)]
    assert all(1 <= c <= 10 for c in counts)
    assert any(c < 10 for c in counts)


def test_injected_sync_and_create_faults() -> None:
    storage = MemoryStorage()
    handle = storage.create("a")
    storage.write(handle, b"x")
    storage.fail_fdatasync()
    with pytest.raises(OSError) as caught:
        storage.fdatasync(handle)
    assert caught.value.errno == errno.EIO
    assert storage.unsynced_bytes("a") == 1
    storage.fdatasync(handle)
    assert storage.unsynced_bytes("a") == 0
    storage.fail_create(1, errno.ENOSPC)
    with pytest.raises(OSError, match="No space") as created:
        storage.create("b")
    assert created.value.errno == errno.ENOSPC
    assert "b" not in storage.list()
    storage.create("b")


def test_power_loss_keeps_synced_bytes_and_a_prefix_of_the_rest() -> None:
    prefixes = set()
    for seed in range(40):
        storage = MemoryStorage(seed)
        handle = storage.create("a")
        storage.write(handle, b"synced-")
        storage.fdatasync(handle)
        storage.sync_dir()
        storage.write(handle, b"unsynced")
        after = storage.survivor()
        data = after.read("a")
        assert data.startswith(b"synced-")
        assert b"synced-unsynced".startswith(data)
        prefixes.add(len(data))
        assert storage.read("a") == b"synced-unsynced"  # the original is untouched
    assert len(prefixes) > 3


def test_power_loss_zero_fill_from_a_block_boundary() -> None:
    seen_zero = False
    for seed in range(30):
        storage = MemoryStorage(seed)
        storage.put_file("a", b"synced")
        handle = storage.open_append("a")
        storage.write(handle, b"x" * 2000)
        data = storage.survivor(zero_fill=True).read("a")
        assert data.startswith(b"synced")
        written = len(data.rstrip(b"\0"))
        assert data[:written] == (b"synced" + b"x" * 2000)[:written]
        if written < len(data):
            seen_zero = True
            assert written % 512 == 0
    assert seen_zero


def test_power_loss_undoes_directory_changes_not_synced() -> None:
    storage = MemoryStorage(1)
    storage.put_file("kept", b"k")
    storage.put_file("renamed", b"r")
    storage.put_file("unlinked", b"u")
    handle = storage.create("created")
    storage.write(handle, b"c")
    storage.fdatasync(handle)
    storage.rename("renamed", "new-name")
    storage.unlink("unlinked")
    storage.power_loss()
    assert storage.list() == ["kept", "renamed", "unlinked"]
    assert storage.read("unlinked") == b"u"
    with pytest.raises(OSError, match="Bad file descriptor"):
        storage.write(handle, b"x")
    handle = storage.create("created")
    storage.rename("renamed", "new-name")
    storage.unlink("unlinked")
    storage.sync_dir()
    storage.power_loss()
    assert storage.list() == ["created", "kept", "new-name"]
    assert storage.read("created") == b""  # the entry was synced, its bytes were not


def test_power_loss_truncation_not_synced_keeps_either_size() -> None:
    sizes = set()
    for seed in range(20):
        storage = MemoryStorage(seed)
        storage.put_file("a", b"0123456789")
        handle = storage.open_append("a")
        storage.truncate(handle, 4)
        sizes.add(len(storage.survivor().read("a")))
    assert sizes == {4, 10}


def test_power_loss_is_deterministic_per_seed() -> None:
    def run(seed: int) -> bytes:
        storage = MemoryStorage(seed)
        handle = storage.create("a")
        storage.sync_dir()
        storage.write(handle, bytes(range(200)))
        return storage.survivor(zero_fill=True).read("a")

    assert run(7) == run(7)
    assert len({run(seed) for seed in range(10)}) > 1


def test_quarantine_names_in_the_double() -> None:
    storage = MemoryStorage()
    handle = storage.create("quarantine/x.5")
    storage.close(handle)
    storage.sync_dir("quarantine")
    assert storage.list() == ["quarantine"]
    storage.power_loss()
    assert storage.read("quarantine/x.5") == b""
