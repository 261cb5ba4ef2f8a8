"""Directories and files that only their owner reads, unless a group was given the right.

The lake holds every tenant's spend; the reporting API confines a tenant key to its own
rows, and that is worth nothing if any local user can open the Parquet files. So what
Tollgate creates is private whatever the umask: directories ``0700``, files ``0600``.

To let a group read (an analysts' group, a backup agent), mark the top directory the way a
shared group directory is marked, before Tollgate writes into it: owned by that group,
group-readable and **setgid** (``install -d -m 2750 -g analysts var/lake``). Directories
created below a setgid directory keep its group, its setgid bit and its group
read/search bits (``2750``), and files in them are ``0640``. Write access is never
granted to the group, and nothing is ever granted to other users.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_GROUP_READ_DIR = stat.S_IRGRP | stat.S_IXGRP
_GROUP_READ_FILE = stat.S_IRGRP


def _shared_with_group(directory_mode: int) -> bool:
    return bool(directory_mode & stat.S_ISGID and directory_mode & stat.S_IRGRP)


def make_private_dirs(path: Path) -> None:
    """``mkdir -p path``, each directory created ``0700`` (``2750`` under a setgid,
    group-readable directory). Directories that exist already are left as they are."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # made by another process meanwhile: it chose its mode
        parent_mode = directory.parent.stat().st_mode
        mode = PRIVATE_DIR_MODE
        if _shared_with_group(parent_mode):
            mode |= stat.S_ISGID | (parent_mode & _GROUP_READ_DIR)
        os.chmod(directory, mode)


def private_file_mode(directory: Path) -> int:
    """The mode for a new file in ``directory``: ``0600``, or ``0640`` in a directory shared
    with a group as above."""
    if _shared_with_group(directory.stat().st_mode):
        return PRIVATE_FILE_MODE | _GROUP_READ_FILE
    return PRIVATE_FILE_MODE


def open_private(path: Path) -> int:
    """Create (or truncate) ``path`` for writing with ``private_file_mode``: a descriptor."""
    mode = private_file_mode(path.parent)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(descriptor, mode)  # the umask may have taken bits, or the file was older
    return descriptor
