"""Pre-flight: look at the folders a parsed configuration names, before the daemon relies on them.

Owns: every check that touches the disk (a folder exists, or can be made,
and can be listed and written), reported as
sentences naming the key rather than raised, so ``dropzone check`` can list
them all. Does not own: parsing or the checks that need no filesystem
(``config``), nor creating anything; the caller decides what to create
(``cli`` creates ``state_dir``) and what a problem means.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from dropzone.config import Config
from dropzone.errors import ConfigError
from dropzone.schema import join, os_problem


def reloadable(load: Callable[[], Config] | None, current: Config) -> Config:
    """The configuration a reload would swap in, or ConfigError saying why it cannot."""
    if load is None:
        raise ConfigError("this daemon was started without a configuration file to reload")
    new = load()
    if new.state_dir != current.state_dir:
        raise ConfigError(f"{new.source}: state_dir: cannot change on reload; restart dropzone to move it")
    problems = check_paths(new)
    if problems:
        raise ConfigError("; ".join(problems))
    return new


def check_paths(config: Config) -> list[str]:
    """Look at the folders a configuration names; list what would stop the daemon.

    Checks: each inbox exists and can be listed, read and written (files are
    claimed by renaming them); state_dir, each outbox and archive exist and
    are writable, or are missing with a writable parent (the daemon creates
    them at start, as Camel's ``autoCreate`` and NiFi's PutFile do); a missing
    inbox is refused, since it names where partners upload. What a partner
    may plant inside an inbox (a ``.processing`` that is a symlink or a file)
    is never a reason to refuse a configuration: the claim refuses it, for
    that inbox only, and logs it.

    Returns:
        One sentence per problem, each naming the key; empty when all is well.
    """
    problems: list[str] = []
    _check_dir(problems, "state_dir", config.state_dir, write=True)
    for i, inbox in enumerate(config.inboxes):
        key = join("inboxes", i)
        _check_dir(problems, join(key, "path"), inbox.path, write=True, may_create=False)
        _check_dir(problems, join(key, "outbox"), inbox.outbox, write=True)
        if inbox.archive is not None:
            _check_dir(problems, join(key, "archive"), inbox.archive, write=True)
    return problems


def _check_dir(problems: list[str], key: str, path: Path, *, write: bool, may_create: bool = True) -> None:
    try:
        path.stat()
    except FileNotFoundError:
        parent = path.parent
        if may_create and parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
            return  # created at start
        problems.append(f"{key}: {path} does not exist")
        return
    except OSError as exc:
        problems.append(f"{key}: {path} cannot be examined: {os_problem(exc)}")
        return
    if not path.is_dir():
        problems.append(f"{key}: {path} is not a directory")
        return
    if not os.access(path, os.R_OK | os.X_OK):
        problems.append(f"{key}: {path} cannot be listed (no read/search permission)")
    if write and not os.access(path, os.W_OK | os.X_OK):
        problems.append(f"{key}: {path} is not writable")
