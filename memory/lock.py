"""One writer per memory directory, enforced by the operating system.

The writer holds an exclusive ``flock`` on ``DIR/writer.lock`` for its whole lifetime
and records its PID in the file (for the error message a second writer gets). The
kernel releases the lock when the holder's file is closed or the process dies (kill -9
included), so a lock file left by a dead writer is simply taken over: the file's content
is only a note, never the lock itself. Readers take no lock.

flock locks belong to an open file: a second writer in the same process (another
TokenMemory on the same directory) is refused too. The descriptor is not inherited by
child processes started with ``subprocess`` (close-on-exec).
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from memory.errors import MemoryLockedError

__all__ = ["LOCK_FILE", "WriterLock", "lock_holder"]

LOCK_FILE = "writer.lock"


def lock_holder(root: Path) -> int | None:
    """The PID recorded by the last writer of ``root`` (it may be dead), or None."""
    try:
        text = (root / LOCK_FILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _holder_pid(root: Path, tries: int = 20) -> int | None:
    """The holder's PID; a writer that has just taken the lock writes it a moment later."""
    for _ in range(tries):
        pid = lock_holder(root)
        if pid is not None:
            return pid
        time.sleep(0.005)
    return None


class WriterLock:
    """The exclusive writer lock of the memory at ``root``: :meth:`acquire` fails at once
    (never waits) with :class:`MemoryLockedError` while another writer holds it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> WriterLock:
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            pid = _holder_pid(self.root)
            who = "pid unknown" if pid is None else f"pid {pid}"
            if pid == os.getpid():
                raise MemoryLockedError(
                    f"this process ({who}) already has {self.root} open for writing; close that TokenMemory "
                    "first, share it, or open this one with read_only=True",
                    pid,
                ) from None
            raise MemoryLockedError(
                f"another streamvid process ({who}) is writing to {self.root}; stop it or use another --memory",
                pid,
            ) from None
        # the lock is ours: the previous holder (if any) is gone, so its note is replaced
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (idempotent). The file stays: removing it could race a new writer."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __del__(self) -> None:  # a writer dropped without close() must not hold the lock forever
        self.release()

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
