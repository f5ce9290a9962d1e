"""Data only its owner may read: stores, caches and keys hold users' documents, questions,
answers and credentials.

apportion creates its data files 0600 and the folders it creates for them 0700, whatever the
umask. A folder that already existed is left as it is (it may be the user's project folder);
a data file that already existed is tightened to 0600, since it is ours.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "private_dir", "private_file", "private_tree", "private_umask"]

FILE_MODE = 0o600
DIR_MODE = 0o700
# SQLite keeps a database's recent writes beside it, in files named after it.
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")

_umask_lock = threading.Lock()


def private_dir(path: Path) -> Path:
    """Create `path` and its missing parents, each 0700; leave folders that exist alone."""
    path = path.expanduser()
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            folder.mkdir(mode=DIR_MODE)
            os.chmod(folder, DIR_MODE)  # the umask may have taken bits away; never adds any
    return path


def private_file(path: Path, *, sqlite: bool = False) -> Path:
    """Make sure `path` exists as a 0600 file (its folder made by `private_dir`), before a
    library opens it: SQLite then creates its -wal and -shm files with the same mode. With
    `sqlite`, those sidecars are tightened too where they already exist."""
    path = path.expanduser()
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        pass
    else:
        os.close(fd)
    for each in (path, *(Path(f"{path}{s}") for s in SQLITE_SIDECARS if sqlite)):
        _tighten(each, FILE_MODE)
    return path


def private_tree(root: Path) -> None:
    """Tighten everything under `root` (a folder a library filled, e.g. milvus-lite's): folders
    0700, files 0600."""
    _tighten(root, DIR_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            _tighten(Path(folder, name), DIR_MODE)
        for name in files:
            _tighten(Path(folder, name), FILE_MODE)


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """umask 077 while a library creates files we cannot pre-create (milvus-lite starts a
    server process, which inherits it). The umask is per process: a thread creating a file
    meanwhile gets it stricter, never looser, and the lock keeps two of these from restoring
    each other's value."""
    with _umask_lock:
        old = os.umask(0o077)
        try:
            yield
        finally:
            os.umask(old)


def _tighten(path: Path, mode: int) -> None:
    """chmod a regular file or folder (never through a link) we own to `mode` if it is looser."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)) or st.st_uid != os.geteuid():
        return
    if stat.S_IMODE(st.st_mode) & ~mode:
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
