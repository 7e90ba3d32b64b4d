"""One open folder, and everything done below it without following a symlink.

This module owns :class:`Root`: opening a configured folder, reaching folders
below it one component at a time, and looking (``stat``, ``exists``,
``walk``), reading (``open_file``), writing (``atomic_write``) and removing
(``unlink``) through directory descriptors. It does not own moving a file
from one Root into another (:func:`dropzone.safefs.rename`), nor the path
checks, error types and messages (``dropzone.safepaths``). Callers import
:class:`Root` and :class:`Entry` from ``dropzone.safefs``, whose docstring
also lists what this design cannot close.

* :meth:`Root.open` opens the configured folder itself. That path is the
  operator's and is trusted: symlinks in it (above and at the folder) are
  followed, once.
* Everything below it is reached one component at a time with
  ``openat(parent_fd, name, O_DIRECTORY | O_NOFOLLOW)``; ``stat``, ``open``,
  ``rename``, ``unlink`` and ``mkdir`` take the parent's descriptor
  (``dir_fd=``) and a single name, and never follow a final symlink. A
  symlink, or a non-folder where a folder is expected, raises
  :class:`UnsafePathError` naming the relative path and what was found.

Linux first: it relies on ``O_DIRECTORY``, ``O_NOFOLLOW`` and ``dir_fd``
support. A :class:`Root` holds one descriptor; it is cheap, but close it (it
is a context manager).

``lstat_at``, ``write_all``, ``CREATE_FLAGS`` and ``TMP_PREFIX`` are shared
with ``dropzone.safefs``, whose :func:`rename` also calls Root's private
helpers (``_check``, ``_parent``, ``_check_regular``); none of these are for
other callers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from dropzone.safepaths import (
    DevIno,
    Expect,
    FileChangedError,
    TooManyEntriesError,
    UnsafePathError,
    components,
    describe,
    join_rel,
    kind_text,
    matches,
    rewrap,
    show,
)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TMP_PREFIX = ".dropzone-tmp-"


# ---- descriptor helpers ------------------------------------------------------


def _not_a_folder(dir_fd: int, name: str, *, root: str, rel: str, shown: str) -> UnsafePathError:
    err, what = describe(dir_fd, name)
    subject = "" if shown == rel else f"'{show(shown)}' "
    return UnsafePathError(err, root, rel, f"{subject}{what} where a folder was expected; not followed")


def _open_subdir(dir_fd: int, name: str, *, root: str, rel: str, shown: str, create: bool, mode: int) -> int:
    """Open folder ``name`` in ``dir_fd`` without following it, creating it first if asked.

    ``rel`` is the whole relative path being walked and ``shown`` the part of
    it up to ``name``, both for messages.
    """
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError as exc:
        if not create:
            raise rewrap(exc, join_rel(root, shown)) from exc
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise _not_a_folder(dir_fd, name, root=root, rel=rel, shown=shown) from None
        raise rewrap(exc, join_rel(root, shown)) from exc
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
    except FileExistsError:
        pass  # made by someone else meanwhile: opened (and checked) below like any other
    except OSError as exc:
        raise rewrap(exc, join_rel(root, shown)) from exc
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise _not_a_folder(dir_fd, name, root=root, rel=rel, shown=shown) from None
        raise rewrap(exc, join_rel(root, shown)) from exc


def lstat_at(dir_fd: int, name: str, display: str) -> os.stat_result:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise rewrap(exc, display) from exc


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


# ---- the walk's entries ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One non-folder found by :meth:`Root.walk`.

    ``relpath`` is ``/``-separated below the root, in the ``surrogateescape``
    form (see ``dropzone.safepaths``). ``st`` is the entry's own lstat. ``kind`` is
    ``"file"`` for a regular file, ``"symlink"`` for a symbolic link (never
    followed), ``"other"`` for anything else: FIFO, socket, device, or a
    folder nested deeper than the walk's ``max_depth`` (``st`` tells which).
    """

    relpath: str
    st: os.stat_result
    kind: Literal["file", "symlink", "other"]

    @property
    def dev_ino(self) -> DevIno:
        """``(st_dev, st_ino)``, for the ``expect=`` arguments."""
        return (self.st.st_dev, self.st.st_ino)


@dataclass(slots=True)
class _Frame:
    fd: int
    rel: str
    depth: int
    subdirs: list[tuple[str, os.stat_result]] | None = None


# ---- Root ---------------------------------------------------------------------


class Root:
    """An open folder: a configured one (inbox, outbox, archive root, state_dir) or one reached below it.

    All methods take paths relative to this folder and never follow a symlink
    below it. ``path`` is for messages only; no I/O ever goes through it.

    Methods may be called from several threads at once: each call opens its
    own descriptors (a walk re-opens ``.`` so it has its own read position);
    only :meth:`close` while another thread uses the Root is a bug. A Root
    keeps working on the same folder if someone renames it (the descriptor
    follows the folder, not its name).
    """

    __slots__ = ("_fd", "path")

    def __init__(self, fd: int, path: str | os.PathLike[str]) -> None:
        """Take ownership of ``fd``, an open folder descriptor. Prefer :meth:`open` / :meth:`open_dir`."""
        self._fd = fd
        self.path = Path(path)

    # -- lifetime

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, create: bool = False, mode: int = 0o750, pin: str | None = None
    ) -> Root:
        """Open the configured folder ``path``, following any symlink in the operator's path.

        With ``create``, a missing folder whose parent exists is made (only
        that last component, like Camel's ``autoCreate``) with ``mode``, less
        the process umask. A missing parent raises FileNotFoundError. With
        ``pin`` (the folder's real path at start), a path that now leads
        elsewhere (a symlink put in its place by whoever can write its
        parent) is refused with UnsafePathError; the same folder made anew
        at the same place is accepted.
        """
        root = cls._open(Path(path), create=create, mode=mode)
        if pin is not None:
            opened = os.fstat(root.fileno())
            try:
                there = os.stat(pin)
            except OSError:
                there = None
            if os.path.realpath(path) != pin or there is None or (there.st_dev, there.st_ino) != (
                opened.st_dev, opened.st_ino
            ):
                root.close()
                raise UnsafePathError(
                    errno.ESTALE, "", str(path),
                    f"now leads somewhere else than {pin} (a symlink put in its place?); "
                    "if an operator did this, reload dropzone (SIGHUP)",
                )
        return root

    @classmethod
    def _open(cls, path: Path, *, create: bool, mode: int) -> Root:
        if "\0" in str(path):
            raise UnsafePathError(errno.EINVAL, "", str(path), "NUL character in a configured path")
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        try:
            return cls(os.open(path, flags), path)
        except FileNotFoundError as exc:
            if not create or path.name in ("", ".", ".."):
                raise rewrap(exc, str(path)) from exc
        except OSError as exc:
            raise rewrap(exc, str(path)) from exc
        try:
            parent = os.open(path.parent, flags)
        except OSError as exc:
            raise rewrap(exc, str(path.parent)) from exc
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path.name, mode, dir_fd=parent)
            return cls(os.open(path.name, flags, dir_fd=parent), path)
        except OSError as exc:
            raise rewrap(exc, str(path)) from exc
        finally:
            os.close(parent)

    def close(self) -> None:
        """Close the descriptor; idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        """The folder's descriptor (owned by this Root)."""
        return self._check()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)
            self.close()

    def __repr__(self) -> str:
        return f"Root({show(str(self.path))!r}, fd={self._fd})"

    def _check(self) -> int:
        if self._fd < 0:
            raise OSError(errno.EBADF, "I/O on a closed Root", show(str(self.path)))
        return self._fd

    @property
    def _root(self) -> str:
        return str(self.path)

    # -- folders

    def _descend(self, comps: Sequence[str], rel: str, *, create: bool, mode: int) -> int:
        """A new descriptor for folder ``comps`` below this one, walked without following anything."""
        fd = os.open(".", _DIR_FLAGS, dir_fd=self._check())
        try:
            for i, name in enumerate(comps):
                shown = "/".join(comps[: i + 1])
                sub = _open_subdir(fd, name, root=self._root, rel=rel, shown=shown, create=create, mode=mode)
                os.close(fd)
                fd = sub
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def _parent(self, rel: str, *, create: bool = False, mode: int = 0o750) -> Iterator[tuple[int, str]]:
        """``(descriptor of rel's folder, rel's last name)``; the descriptor is closed afterwards."""
        comps = components(rel, self._root)
        if len(comps) == 1:
            # Directly in this folder: its own descriptor, not a new one (a look at each of
            # thousands of files in an inbox would otherwise cost an open and a close more).
            yield self._check(), comps[0]
            return
        fd = self._descend(comps[:-1], rel, create=create, mode=mode)
        try:
            yield fd, comps[-1]
        finally:
            os.close(fd)

    def open_dir(self, rel: str, *, create: bool = False, private: bool = False, mode: int = 0o750) -> Root:
        """Open folder ``rel`` below this one, one component at a time, following nothing.

        ``create`` makes missing components (``mode`` less umask; 0o700 when
        ``private``). With ``private`` the final folder must be owned by our
        effective uid and not writable by group or others, else
        UnsafePathError (EPERM): for ``.processing`` and the archive tree.
        """
        comps = components(rel, self._root)
        fd = self._descend(comps, rel, create=create, mode=0o700 if private else mode)
        try:
            if private:
                st = os.fstat(fd)
                euid = os.geteuid()
                if st.st_uid != euid:
                    raise UnsafePathError(
                        errno.EPERM, self._root, rel, f"is owned by uid {st.st_uid}, not by us (uid {euid})"
                    )
                if st.st_mode & 0o022:
                    raise UnsafePathError(
                        errno.EPERM, self._root, rel, f"is writable by group or others (mode {st.st_mode & 0o7777:o})"
                    )
        except BaseException:
            os.close(fd)
            raise
        return Root(fd, self.path / rel)

    def fsync(self) -> None:
        """fsync this folder (makes renames and creations in it durable)."""
        os.fsync(self._check())

    # -- looking

    def stat(self, rel: str) -> os.stat_result:
        """lstat of ``rel``: a final symlink is described, not followed; a symlinked folder on the way is refused."""
        with self._parent(rel) as (fd, name):
            return lstat_at(fd, name, join_rel(self._root, rel))

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` is there and is not a symlink (of any kind: file, folder, FIFO...).

        A symlink, or a path through a symlink or a non-folder, is not there:
        a marker file planted as a symlink does not count. An invalid ``rel``
        still raises UnsafePathError (EINVAL); other errors (EACCES, EIO) raise.
        """
        components(rel, self._root)  # an invalid rel raises, whatever is on disk
        try:
            st = self.stat(rel)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except UnsafePathError as exc:
            if exc.errno == errno.EINVAL:
                raise
            return False
        return not stat.S_ISLNK(st.st_mode)

    def walk(
        self,
        *,
        skip_hidden_dirs: bool = True,
        max_depth: int = 16,
        max_entries: int | None = None,
        on_error: Callable[[str, OSError], None] | None = None,
    ) -> Generator[Entry, None, None]:
        """Every non-folder below this folder, in name order, folder by folder (a folder's files before its subfolders).

        Lists folders with ``os.scandir`` on descriptors and enters real
        subfolders with a no-follow open: nothing outside this tree is ever
        listed or examined. Symlinks and special files are yielded with
        their own lstat so the caller can refuse and report them.

        ``skip_hidden_dirs``: folders whose name starts with ``.`` (our
        ``.processing``, upload tools' temporary folders) are not entered nor
        yielded. A folder more than ``max_depth`` levels below this one is
        yielded as kind ``"other"`` instead of entered. Past ``max_entries``
        names examined (files, links and folders), TooManyEntriesError is
        raised after what was found so far was yielded.

        A subfolder that vanishes, or is replaced (by a symlink, a file or
        another folder) between being listed and opened, is skipped silently:
        the next walk sees what is there then. Any other error on a subfolder
        (EACCES, EIO...) calls ``on_error(relpath, exc)`` when given, and the
        subfolder is skipped; an error listing this folder itself raises.

        The generator holds one descriptor per level being walked; close it
        (or exhaust it) to release them.
        """
        seen = 0
        try:
            top = os.open(".", _DIR_FLAGS, dir_fd=self._check())
        except OSError as exc:
            raise rewrap(exc, self._root) from exc
        frames = [_Frame(top, "", 0)]
        try:
            while frames:
                frame = frames[-1]
                if frame.subdirs is None:
                    try:
                        names = []
                        with os.scandir(frame.fd) as it:
                            for dirent in it:
                                seen += 1
                                if max_entries is not None and seen > max_entries:
                                    raise TooManyEntriesError(
                                        errno.E2BIG, self._root, frame.rel, f"more than {max_entries} entries"
                                    )
                                names.append(dirent.name)
                    except TooManyEntriesError:
                        raise
                    except OSError as exc:
                        if not frame.rel:
                            raise rewrap(exc, self._root) from exc
                        if on_error is not None:
                            on_error(frame.rel, exc)
                        names = []
                    names.sort()
                    frame.subdirs = []
                    for name in names:
                        rel = join_rel(frame.rel, name)
                        try:
                            st = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
                        except FileNotFoundError:
                            continue  # gone between listing and stat
                        except OSError as exc:
                            if on_error is not None:
                                on_error(rel, exc)
                            continue
                        mode = st.st_mode
                        if stat.S_ISDIR(mode):
                            if skip_hidden_dirs and name.startswith("."):
                                continue
                            if frame.depth + 1 > max_depth:
                                yield Entry(rel, st, "other")
                            else:
                                frame.subdirs.append((name, st))
                        elif stat.S_ISREG(mode):
                            yield Entry(rel, st, "file")
                        elif stat.S_ISLNK(mode):
                            yield Entry(rel, st, "symlink")
                        else:
                            yield Entry(rel, st, "other")
                    frame.subdirs.reverse()  # popped from the end: name order
                if not frame.subdirs:
                    frames.pop()
                    os.close(frame.fd)
                    continue
                name, seen_st = frame.subdirs.pop()
                rel = join_rel(frame.rel, name)
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=frame.fd)
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP) and on_error is not None:
                        on_error(rel, exc)
                    continue
                try:
                    st = os.fstat(sub)
                except OSError:
                    os.close(sub)
                    continue
                if (st.st_dev, st.st_ino) != (seen_st.st_dev, seen_st.st_ino):
                    os.close(sub)  # swapped for another folder since listed
                    continue
                frames.append(_Frame(sub, rel, frame.depth + 1))
        finally:
            for frame in frames:
                _close_quietly(frame.fd)

    # -- files

    def open_file(self, rel: str, *, expect: Expect | None = None) -> int:
        """Open regular file ``rel`` for reading; return a blocking descriptor the caller closes.

        Opened with O_NOFOLLOW|O_NONBLOCK through its folder's descriptor, so
        a symlink is refused (UnsafePathError ELOOP) and a FIFO cannot block;
        anything but a regular file is refused (UnsafePathError). With
        ``expect`` (``(st_dev, st_ino)`` or a stat result, see :data:`Expect`),
        a different file raises FileChangedError.
        The name is lstat'ed first, so a device or FIFO is refused unopened
        (a swap between that lstat and the open is caught by the fstat after).
        """
        display = join_rel(self._root, rel)
        with self._parent(rel) as (pfd, name):
            before = lstat_at(pfd, name, display)
            self._check_regular(before, rel, expect)
            try:
                fd = os.open(name, _READ_FLAGS, dir_fd=pfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    err, what = describe(pfd, name)
                    raise UnsafePathError(err, self._root, rel, f"{what}; not followed") from None
                raise rewrap(exc, display) from exc
            try:
                st = os.fstat(fd)
                self._check_regular(st, rel, before)
                os.set_blocking(fd, True)
            except BaseException:
                os.close(fd)
                raise
            return fd

    def _check_regular(self, st: os.stat_result, rel: str, expect: Expect | None) -> None:
        if not stat.S_ISREG(st.st_mode):
            err = errno.EINVAL
            if stat.S_ISLNK(st.st_mode):
                err = errno.ELOOP
            elif stat.S_ISDIR(st.st_mode):
                err = errno.EISDIR
            raise UnsafePathError(err, self._root, rel, f"is {kind_text(st)}, not a regular file; not used")
        if expect is not None and not matches(st, expect):
            raise FileChangedError(errno.ESTALE, self._root, rel, "was replaced by another file since it was looked at")

    def atomic_write(
        self, rel: str, data: bytes, *, create_dirs: bool = False, mode: int = 0o640, dir_mode: int = 0o750
    ) -> None:
        """Replace ``rel`` with ``data`` so readers see the old file or the whole new one.

        Writes a hidden temporary name (``.dropzone-tmp-<hex>``, created with
        O_CREAT|O_EXCL|O_NOFOLLOW, so never through a planted link) in the
        target's folder, reached without following anything (created with
        ``dir_mode`` if ``create_dirs``), fsyncs it, sets ``mode`` exactly (no
        umask), renames it over the final name through the folder's descriptor
        and fsyncs the folder. A symlink at the final name is replaced (the
        link, never its target); a folder there raises UnsafePathError (EISDIR).
        """
        display = join_rel(self._root, rel)
        with self._parent(rel, create=create_dirs, mode=dir_mode) as (pfd, name):
            with contextlib.suppress(FileNotFoundError):
                existing = lstat_at(pfd, name, display)
                if stat.S_ISDIR(existing.st_mode):
                    raise UnsafePathError(errno.EISDIR, self._root, rel, "is a folder; not replaced")
            tmp = f"{TMP_PREFIX}{secrets.token_hex(8)}"
            try:
                fd = os.open(tmp, CREATE_FLAGS, 0o600, dir_fd=pfd)
            except OSError as exc:
                raise rewrap(exc, join_rel(self._root, os.path.dirname(rel), tmp)) from exc
            try:
                try:
                    write_all(fd, data)
                    os.fchmod(fd, mode)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=pfd)
                if isinstance(exc, OSError):
                    if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                        raise UnsafePathError(errno.EISDIR, self._root, rel, "is a folder; not replaced") from None
                    raise rewrap(exc, display) from exc
                raise
            try:
                os.fsync(pfd)
            except OSError as exc:
                raise rewrap(exc, display) from exc

    def unlink(self, rel: str) -> None:
        """Remove the non-folder ``rel`` (a symlink itself, never its target)."""
        with self._parent(rel) as (pfd, name):
            try:
                os.unlink(name, dir_fd=pfd)
            except OSError as exc:
                if exc.errno in (errno.EISDIR, errno.EPERM) and stat.S_ISDIR(
                    lstat_at(pfd, name, join_rel(self._root, rel)).st_mode
                ):
                    raise UnsafePathError(errno.EISDIR, self._root, rel, "is a folder; not removed") from None
                raise rewrap(exc, join_rel(self._root, rel)) from exc
