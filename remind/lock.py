"""One run per results folder: an exclusive lock held for the life of a run.

The lock is ``fcntl.flock`` on the folder itself, so nothing is written for it (a rerun of a finished
run still changes no file). The kernel drops a flock when its process dies, however it dies, so a killed
run never blocks a rerun. A second run names the holder's process id, read from ``/proc/locks`` (Linux).
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class FolderInUse(ValueError):
    """Another live process runs in this folder."""


def lock_holder(folder: Path) -> str:
    """Process id holding a flock on ``folder``, from /proc/locks; ``unknown`` where that cannot be read."""
    inode = os.stat(folder).st_ino
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            return fields[4]
    return "unknown"


class FolderLock:
    """``with FolderLock(folder):`` creates ``folder`` if needed and holds its lock, or raises FolderInUse."""

    def __init__(self, folder: str | os.PathLike, what: str = "results folder"):
        self.folder, self.what = Path(folder), what
        self._fd: int | None = None

    def __enter__(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUse(f"{self.what} {self.folder} is in use by another run (process "
                              f"{lock_holder(self.folder)}); wait for it to finish, stop it, or choose another "
                              "folder") from None
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
