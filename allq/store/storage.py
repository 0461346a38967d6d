"""The storage interface of persistence.md §10, its `os` implementation and a test double.

Charter: every file access of the persistence layer goes through `Storage`. Names are
relative to the data directory; a name may hold one `/` (a file in a subdirectory such as
`quarantine/`), created on demand with mode 0700. Handles are small integers. The methods
block: callers run `fdatasync` and `sync_dir` in a worker thread (persistence.md §5).

* `OsStorage(path)` is the real implementation.
* `MemoryStorage(seed)` is the deterministic in-memory double: it fails the n-th write,
  fdatasync or create with a chosen errno, makes writes short, and simulates a power loss
  (`power_loss()`): per file it keeps the synced bytes plus a random-length prefix of the
  unsynced ones (optionally zero-filling part of that prefix), and it undoes creations,
  renames and unlinks that no `sync_dir()` followed.

Resource handling: a handle returned by `create` or `open_append` belongs to the caller,
who closes it with `close`. `lock` keeps its descriptor open until `unlock`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

LOCK_NAME: Final = "LOCK"
FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700


class DirectoryInUse(Exception):
    """Another process holds the data directory's lock (persistence.md §8)."""

    def __init__(self, directory: str, pid: int | None) -> None:
        owner = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"data directory {directory} is in use by another allq server ({owner})")
        self.directory = directory
        self.pid = pid


class Storage(Protocol):
    """All file access of the persistence layer (persistence.md §10)."""

    def describe(self, name: str) -> str:
        """How messages name the file `name` (the full path for the real storage)."""
        ...

    def list(self) -> list[str]:
        """The names of the directory's entries (not those of subdirectories)."""
        ...

    def read(self, name: str) -> bytes: ...

    def create(self, name: str) -> int:
        """A new file, `O_WRONLY | O_APPEND | O_CREAT | O_EXCL`, mode 0600."""
        ...

    def open_append(self, name: str) -> int:
        """An existing file, `O_WRONLY | O_APPEND`."""
        ...

    def write(self, handle: int, data: bytes) -> int:
        """`os.write`: the number of bytes written, possibly fewer than `len(data)`."""
        ...

    def fdatasync(self, handle: int) -> None: ...

    def truncate(self, handle: int, size: int) -> None: ...

    def close(self, handle: int) -> None: ...

    def rename(self, src: str, dst: str) -> None: ...

    def unlink(self, name: str) -> None: ...

    def sync_dir(self, subdir: str = "") -> None:
        """Make creations, renames and unlinks in the directory (or `subdir`) durable."""
        ...

    def lock(self) -> None:
        """Take the directory's lock, creating the directory (0700) if needed.

        Raises:
            DirectoryInUse: another process holds it; nothing in the directory is changed.
        """
        ...

    def unlock(self) -> None: ...

    def free_bytes(self) -> int: ...


def write_all(storage: Storage, handle: int, data: bytes) -> None:
    """Write every byte of `data`, looping on short writes.

    Raises:
        OSError: from the storage, or EIO when a write makes no progress.
    """
    done = 0
    while done < len(data):
        count = storage.write(handle, data[done:])
        if count <= 0:
            raise OSError(errno.EIO, f"write made no progress after {done} bytes")
        done += count


def _read_pid(data: bytes) -> int | None:
    text = data.decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


class OsStorage:
    """`Storage` over a real directory (persistence.md §10)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._lock_fd: int | None = None

    def _full(self, name: str) -> str:
        return os.path.join(self.path, name)

    def describe(self, name: str) -> str:
        return self._full(name)

    def list(self) -> list[str]:
        return sorted(os.listdir(self.path))

    def read(self, name: str) -> bytes:
        with open(self._full(name), "rb") as file:
            return file.read()

    def create(self, name: str) -> int:
        full = self._full(name)
        parent = os.path.dirname(full)
        if parent != self.path:
            os.makedirs(parent, mode=DIR_MODE, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        return os.open(full, flags, FILE_MODE)

    def open_append(self, name: str) -> int:
        return os.open(self._full(name), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def write(self, handle: int, data: bytes) -> int:
        return os.write(handle, data)

    def fdatasync(self, handle: int) -> None:
        os.fdatasync(handle)

    def truncate(self, handle: int, size: int) -> None:
        os.ftruncate(handle, size)

    def close(self, handle: int) -> None:
        os.close(handle)

    def rename(self, src: str, dst: str) -> None:
        os.rename(self._full(src), self._full(dst))

    def unlink(self, name: str) -> None:
        os.unlink(self._full(name))

    def sync_dir(self, subdir: str = "") -> None:
        fd = os.open(self._full(subdir) if subdir else self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def lock(self) -> None:
        if self._lock_fd is not None:
            return
        os.makedirs(self.path, mode=DIR_MODE, exist_ok=True)
        fd = os.open(self._full(LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = _read_pid(os.pread(fd, 64, 0))
            finally:
                os.close(fd)
            raise DirectoryInUse(self.path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the description drops the flock
            self._lock_fd = None

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize


# --- the in-memory double ------------------------------------------------------------------


@dataclass(eq=False)
class _File:
    """One inode: its current bytes and the bytes as of its last fdatasync."""

    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""


@dataclass
class _Fault:
    """Fail the `countdown`-th next call (1 = the next one) with `code`."""

    countdown: int
    code: int


def _oserror(code: int, what: str) -> OSError:
    return OSError(code, f"{os.strerror(code)} (injected: {what})")


class MemoryStorage:
    """A deterministic, fault-injecting in-memory `Storage` (persistence.md §10).

    Thread-safe: fdatasync may run in a worker thread while the Trio thread writes.
    `fdatasync_hook`, when set, runs at the start of every fdatasync outside the internal
    lock (tests block it on a `threading.Event` to hold a sync in flight).
    """

    def __init__(self, seed: int = 0, *, free: int = 1 << 40) -> None:
        self.rng = random.Random(seed)
        self.free = free
        self.files: dict[str, _File] = {}
        self._durable_names: dict[str, _File] = {}
        self._handles: dict[int, _File] = {}
        self._handle_names: dict[int, str] = {}
        self._next_handle = 3
        self._mutex = threading.Lock()
        self._locked = False
        self._write_faults: list[_Fault] = []
        self._sync_faults: list[_Fault] = []
        self._create_faults: list[_Fault] = []
        self.short_writes = False
        self.write_limit: int | None = None
        self.fdatasync_hook: Callable[[], None] | None = None
        self.writes = 0
        self.fdatasyncs = 0
        self.dir_syncs = 0

    # fault injection

    def fail_write(self, n: int = 1, code: int = errno.ENOSPC) -> None:
        """Make the n-th next `write` raise OSError(code)."""
        with self._mutex:
            self._write_faults.append(_Fault(n, code))

    def fail_fdatasync(self, n: int = 1, code: int = errno.EIO) -> None:
        """Make the n-th next `fdatasync` raise OSError(code)."""
        with self._mutex:
            self._sync_faults.append(_Fault(n, code))

    def fail_create(self, n: int = 1, code: int = errno.ENOSPC) -> None:
        """Make the n-th next `create` raise OSError(code)."""
        with self._mutex:
            self._create_faults.append(_Fault(n, code))

    @staticmethod
    def _due(faults: list[_Fault]) -> int | None:
        code = None
        for fault in faults:
            fault.countdown -= 1
            if fault.countdown == 0:
                code = fault.code
        faults[:] = [f for f in faults if f.countdown > 0]
        return code

    def power_loss(self, *, zero_fill: bool = False) -> None:
        """Simulate a power failure in place; see `survivor`. Every handle is dropped."""
        after = self.survivor(zero_fill=zero_fill)
        with self._mutex:
            self.files = after.files
            self._durable_names = after._durable_names
            self._handles.clear()
            self._handle_names.clear()
            self._locked = False

    def survivor(self, *, zero_fill: bool = False, seed: int | None = None) -> MemoryStorage:
        """A new storage holding what a power failure now would leave; self is unchanged.

        Per file: the synced bytes, then a random-length prefix of the unsynced ones; with
        `zero_fill`, that prefix reads back as zeros from a random 512-byte boundary (blocks
        the kernel had not written). A file
        truncated below its synced size since the last fdatasync keeps either size. The
        namespace is the one of the last `sync_dir()`.
        """
        after = MemoryStorage(self.rng.randrange(1 << 32) if seed is None else seed)
        with self._mutex:
            done: dict[int, _File] = {}
            for name, file in self._durable_names.items():
                if id(file) not in done:
                    kept = self._surviving_bytes(file, zero_fill)
                    done[id(file)] = _File(bytearray(kept), kept)
                after.files[name] = done[id(file)]
            after._durable_names = dict(after.files)
        return after

    def _surviving_bytes(self, file: _File, zero_fill: bool) -> bytes:
        durable, data = file.durable, bytes(file.data)
        if not data.startswith(durable):
            if self.rng.random() < 0.5:
                return durable
            common = 0
            while common < min(len(durable), len(data)) and durable[common] == data[common]:
                common += 1
            durable = data[:common]
        keep = self.rng.randint(0, len(data) - len(durable))
        kept = bytearray(data[: len(durable) + keep])
        # blocks the kernel had not written read back as zeros: from a 512-byte boundary on
        first = -(-len(durable) // 512) * 512
        if zero_fill and first < len(kept):
            start = self.rng.randrange(first, len(kept), 512)
            kept[start:] = bytes(len(kept) - start)
        return bytes(kept)

    # helpers for tests

    def contents(self, name: str) -> bytes:
        with self._mutex:
            return bytes(self.files[name].data)

    def put_file(self, name: str, data: bytes) -> None:
        """Create or replace `name` with `data`, durable (as if written, synced, dir-synced)."""
        with self._mutex:
            file = _File(bytearray(data), bytes(data))
            self.files[name] = file
            self._durable_names[name] = file

    def unsynced_bytes(self, name: str) -> int:
        with self._mutex:
            file = self.files[name]
            return len(file.data) - len(file.durable)

    # Storage

    def describe(self, name: str) -> str:
        return name

    def list(self) -> list[str]:
        with self._mutex:
            names = {name.split("/", 1)[0] for name in self.files}
        return sorted(names)

    def read(self, name: str) -> bytes:
        with self._mutex:
            if name not in self.files:
                raise FileNotFoundError(errno.ENOENT, "No such file", name)
            return bytes(self.files[name].data)

    def _open(self, name: str, file: _File) -> int:
        handle = self._next_handle
        self._next_handle += 1
        self._handles[handle] = file
        self._handle_names[handle] = name
        return handle

    def create(self, name: str) -> int:
        with self._mutex:
            code = self._due(self._create_faults)
            if code is not None:
                raise _oserror(code, f"create {name}")
            if name in self.files:
                raise FileExistsError(errno.EEXIST, "File exists", name)
            file = _File()
            self.files[name] = file
            return self._open(name, file)

    def open_append(self, name: str) -> int:
        with self._mutex:
            if name not in self.files:
                raise FileNotFoundError(errno.ENOENT, "No such file", name)
            return self._open(name, self.files[name])

    def _file(self, handle: int) -> _File:
        try:
            return self._handles[handle]
        except KeyError:
            raise OSError(errno.EBADF, "Bad file descriptor") from None

    def write(self, handle: int, data: bytes) -> int:
        with self._mutex:
            file = self._file(handle)
            self.writes += 1
            code = self._due(self._write_faults)
            if code is not None:
                raise _oserror(code, f"write #{self.writes}")
            count = len(data)
            if self.write_limit is not None:
                count = min(count, self.write_limit)
            if self.short_writes and count > 1:
                count = self.rng.randint(1, count)
            file.data += data[:count]
            return count

    def fdatasync(self, handle: int) -> None:
        hook = self.fdatasync_hook
        if hook is not None:
            hook()
        with self._mutex:
            file = self._file(handle)
            self.fdatasyncs += 1
            code = self._due(self._sync_faults)
            if code is not None:
                raise _oserror(code, f"fdatasync #{self.fdatasyncs}")
            file.durable = bytes(file.data)

    def truncate(self, handle: int, size: int) -> None:
        with self._mutex:
            file = self._file(handle)
            del file.data[size:]

    def close(self, handle: int) -> None:
        with self._mutex:
            self._file(handle)
            del self._handles[handle]
            del self._handle_names[handle]

    def rename(self, src: str, dst: str) -> None:
        with self._mutex:
            if src not in self.files:
                raise FileNotFoundError(errno.ENOENT, "No such file", src)
            self.files[dst] = self.files.pop(src)

    def unlink(self, name: str) -> None:
        with self._mutex:
            if name not in self.files:
                raise FileNotFoundError(errno.ENOENT, "No such file", name)
            del self.files[name]

    def sync_dir(self, subdir: str = "") -> None:
        with self._mutex:
            self.dir_syncs += 1
            prefix = f"{subdir}/" if subdir else ""

            def inside(name: str) -> bool:
                return name.startswith(prefix) if prefix else "/" not in name

            kept = {n: f for n, f in self._durable_names.items() if not inside(n)}
            kept.update({n: f for n, f in self.files.items() if inside(n)})
            self._durable_names = kept

    def lock(self) -> None:
        with self._mutex:
            self._locked = True

    def unlock(self) -> None:
        with self._mutex:
            self._locked = False

    @property
    def locked(self) -> bool:
        return self._locked

    def free_bytes(self) -> int:
        return self.free
