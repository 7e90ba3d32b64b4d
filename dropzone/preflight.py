"""Pre-flight: look at the folders a parsed configuration names, before the daemon relies on them.

Owns: every check that touches the disk (a folder exists, can be listed and
written, and sits on the filesystem ``rename(2)`` needs), reported as
sentences naming the key rather than raised, so ``dropzone check`` can list
them all. Does not own: parsing or the checks that need no filesystem
(``config``), nor creating anything; the caller decides what to create
(``cli`` creates ``state_dir``) and what a problem means.
"""

from __future__ import annotations

import os
from pathlib import Path

from dropzone.config import Config
from dropzone.schema import join, os_problem


def check_paths(config: Config) -> list[str]:
    """Look at the folders a configuration names; list what would stop the daemon.

    Checks: each inbox exists and can be listed, read and written (files are
    claimed by renaming them); outbox, archive and state_dir exist and are
    writable; the archive and an existing processing area are on the inbox's
    filesystem, because files move there by ``rename(2)``. The state_dir may
    be on another filesystem.

    Returns:
        One sentence per problem, each naming the key; empty when all is well.
    """
    problems: list[str] = []
    _check_dir(problems, "state_dir", config.state_dir, write=True)
    for i, inbox in enumerate(config.inboxes):
        key = join("inboxes", i)
        inbox_dev = _check_dir(problems, join(key, "path"), inbox.path, write=True)
        _check_dir(problems, join(key, "outbox"), inbox.outbox, write=True)
        if inbox.archive is not None:
            dev = _check_dir(problems, join(key, "archive"), inbox.archive, write=True)
            if dev is not None and inbox_dev is not None and dev != inbox_dev:
                problems.append(
                    f"{join(key, 'archive')}: {inbox.archive} is not on the inbox's filesystem; "
                    "files are moved there by rename, which cannot cross filesystems"
                )
        if inbox.processing_dir.exists():
            dev = _check_dir(problems, join(key, "path"), inbox.processing_dir, write=True)
            if dev is not None and inbox_dev is not None and dev != inbox_dev:
                problems.append(
                    f"{join(key, 'path')}: {inbox.processing_dir} is not on the inbox's filesystem; "
                    "files are claimed by rename, which cannot cross filesystems"
                )
    return problems


def _check_dir(problems: list[str], key: str, path: Path, *, write: bool) -> int | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        problems.append(f"{key}: {path} does not exist")
        return None
    except OSError as exc:
        problems.append(f"{key}: {path} cannot be examined: {os_problem(exc)}")
        return None
    if not path.is_dir():
        problems.append(f"{key}: {path} is not a directory")
        return None
    if not os.access(path, os.R_OK | os.X_OK):
        problems.append(f"{key}: {path} cannot be listed (no read/search permission)")
    if write and not os.access(path, os.W_OK | os.X_OK):
        problems.append(f"{key}: {path} is not writable")
    return st.st_dev
