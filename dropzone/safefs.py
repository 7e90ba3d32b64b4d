"""File operations below partner-controlled folders that never follow a symlink.

Partners are strangers to each other sharing one machine. Each one controls
the names, contents, symlinks and folders inside their own inbox and outbox
(OpenSSH's sftp lets them symlink, rename and mkdir), and can change them
while the daemon works. A path such as ``inbox / "x/leads.csv"`` is resolved
by the kernel again at every call, through whatever ``x`` is at that moment:
a symlink to another partner's folder turns an innocent ``open`` or
``rename`` into a read or write in that folder.

This module does all I/O below a configured folder through directory file
descriptors instead of paths:

* :meth:`Root.open` opens the configured folder itself. That path is the
  operator's and is trusted: symlinks in it (above and at the folder) are
  followed, once.
* Everything below it is reached one component at a time with
  ``openat(parent_fd, name, O_DIRECTORY | O_NOFOLLOW)``; ``stat``, ``open``,
  ``rename``, ``unlink`` and ``mkdir`` take the parent's descriptor
  (``dir_fd=``) and a single name, and never follow a final symlink. A
  symlink, or a non-folder where a folder is expected, raises
  :class:`UnsafePathError` naming the relative path and what was found.
* Relative paths are ``/``-separated strings. An empty, ``.`` or ``..``
  component, a leading ``/``, a NUL byte or a character that cannot become a
  file-name byte is refused with :class:`UnsafePathError` before any system
  call.

Names that are not UTF-8
    File names are bytes on Linux. Everywhere here they are ``str`` as Python's
    ``os`` module gives them: decoded with :func:`os.fsdecode` (UTF-8 with
    ``surrogateescape``), so each undecodable byte is a lone surrogate
    ``U+DC80..U+DCFF`` and :func:`os.fsencode` gives the exact bytes back.
    :meth:`Root.walk` yields such strings and every other function takes them,
    so a name read from the disk always finds the same file again. Such
    strings cannot be written to JSON or SQLite as they are; error messages
    here show those bytes as ``\\xff`` escapes (and control characters
    escaped), so they are safe to log.

Errors
    Every filesystem condition is an :class:`OSError` subclass: the usual
    ``FileNotFoundError``, ``FileExistsError``... (their ``filename`` is set to
    a display path, for messages only), :class:`UnsafePathError` for what the
    daemon refuses on principle, :class:`FileChangedError` when an entry is no
    longer the inode the caller looked at, and :class:`TooManyEntriesError`
    when a walk exceeds its bound.

What this cannot close (the callers' part)
    * A rename moves whatever holds the source name at that instant: Linux
      has no "rename if still this inode". :func:`rename` lstats first and
      checks the moved entry afterwards (inode, type, size, mtime); a swap in
      between moves the partner's own new entry (a symlink itself, never its
      target), which is put back and reported as FileChangedError.
    * ``expect=(st_dev, st_ino)`` can be fooled by a recycled inode number
      (delete, re-upload, same inode). Pass the whole stat result seen at scan
      time to also pin type, size and mtime.
    * Hard links: a partner can hard-link into the inbox any file on the same
      filesystem that they are allowed to link (``fs.protected_hardlinks=1``,
      the usual default, limits that to files they own or can read and
      write). No-follow opens do not see links; callers that care should
      refuse ``st_nlink != 1``.
    * Without renameat2(RENAME_NOREPLACE) (old kernel or C library, or a
      filesystem that refuses the flag), "never replace" is a check then a
      rename: only safe when nobody else can create names in the destination,
      i.e. destinations private to the daemon (``open_dir(private=True)``).
    * With ``cross_device=True`` the source is unlinked by name after the
      copy; it is checked just before, but not atomically.
    * The configured folder itself is trusted: whoever can rename entries in
      its parent can swap it before :meth:`Root.open`. Keep configured roots
      in folders partners cannot write, and keep Roots open.
    * A partner owning an inbox can rename or remove (when empty) our
      ``.processing`` in it, unless the inbox has the sticky bit; an open
      Root keeps pointing at the renamed folder, and a folder they plant in
      its place fails the ``private`` check.

Linux first: it relies on ``O_DIRECTORY``, ``O_NOFOLLOW``, ``dir_fd``
support and, for no-replace renames, ``renameat2(RENAME_NOREPLACE)`` (Linux
3.15+, glibc 2.28+; a documented fallback is used where it is missing).
A :class:`Root` holds one descriptor; it is cheap, but close it (it is a
context manager).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import secrets
import stat
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, cast

__all__ = [
    "NAME_MAX",
    "DevIno",
    "Entry",
    "Expect",
    "FileChangedError",
    "Root",
    "TooManyEntriesError",
    "UnsafePathError",
    "flatten",
    "rename",
]

#: Longest file name (one component) Linux filesystems take, in bytes.
NAME_MAX = 255

#: ``(st_dev, st_ino)``: which file an entry was when the caller looked at it.
DevIno = tuple[int, int]

#: What ``expect=`` takes: ``(st_dev, st_ino)``, or a whole stat result, which
#: also pins the file type, size and mtime (so a recycled inode number, or a
#: file written since, does not pass for the one the caller looked at).
Expect = DevIno | os.stat_result

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TMP_PREFIX = ".dropzone-tmp-"
_COPY_CHUNK = 1 << 20


# ---- errors -----------------------------------------------------------------


def _show(text: str) -> str:
    """``text`` safe for a log line or JSON: undecodable bytes as ``\\xff``, other non-printables escaped."""
    return "".join(map(_show_char, text))


def _show_char(c: str) -> str:
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: one byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if c.isprintable():
        return c
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


class _PathError(OSError):
    """An OSError whose message is ``<root>/<relpath>: <what>``; ``strerror`` holds the same text."""

    def __init__(self, err: int, root: str, relpath: str, found: str) -> None:
        where = _show(_join(root.rstrip("/") or "/", relpath)) if root else _show(relpath)
        message = f"{where}: {found}"
        super().__init__(err, message)
        self.root = root
        self.relpath = relpath
        self.found = found

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.errno, self.root, self.relpath, self.found))


class UnsafePathError(_PathError):
    """Refused on principle: a symlink, a non-folder where a folder was expected, a
    non-regular file where a file was expected, an invalid relative path
    (empty, absolute, ``.``/``..`` component, NUL), or a folder not private to us
    where that was required. Nothing was followed; ``errno`` says which
    (``ELOOP`` symlink, ``ENOTDIR``, ``EISDIR``, ``EINVAL``, ``EPERM`` ownership).
    """


class FileChangedError(_PathError):
    """The entry is no longer the file the caller expected (``errno`` ``ESTALE``; see :data:`Expect`).

    Usually innocent: the partner replaced the file since it was scanned.
    """


class TooManyEntriesError(_PathError):
    """:meth:`Root.walk` examined more than ``max_entries`` names (``errno`` ``E2BIG``)."""


def _kind_text(st: os.stat_result) -> str:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return f"a special file (mode {mode:o})"


def _describe(dir_fd: int, name: str) -> tuple[int, str]:
    """errno and words for what ``name`` is, looked at without following it."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        return errno.ENOTDIR, f"could not be examined ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            return errno.ELOOP, "is a symbolic link"
        shown = _show(target)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        return errno.ELOOP, f"is a symbolic link (to '{shown}')"
    return (errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.ENOTDIR), f"is {_kind_text(st)}"


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What survives a rename unchanged: device, inode, file type, size, mtime."""
    return (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)


def _matches(st: os.stat_result, expect: Expect) -> bool:
    if isinstance(expect, os.stat_result):
        return _identity(st) == _identity(expect)
    return (st.st_dev, st.st_ino) == tuple(expect)


def _rewrap(exc: OSError, display: str) -> OSError:
    """``exc`` again with ``filename`` set to ``display`` (for messages; never used for I/O)."""
    if isinstance(exc, _PathError) or exc.errno is None:
        return exc
    try:
        return type(exc)(exc.errno, exc.strerror, _show(display))
    except TypeError:  # an OSError subclass with its own constructor
        return exc


# ---- relative paths ---------------------------------------------------------


def _components(rel: str, root: str = "") -> list[str]:
    """``rel`` split on ``/``, each part checked; UnsafePathError (EINVAL) when one is not a plain name."""
    if not isinstance(rel, str):  # a bytes path from a caller would silently mean something else
        raise UnsafePathError(errno.EINVAL, root, repr(rel), "a relative path must be a str")
    if rel == "":
        raise UnsafePathError(errno.EINVAL, root, rel, "empty relative path")
    if rel.startswith("/"):
        raise UnsafePathError(errno.EINVAL, root, rel, "absolute path where a relative one was expected")
    parts = rel.split("/")
    for part in parts:
        _check_name(part, root, rel)
    return parts


def _check_name(name: str, root: str, rel: str) -> None:
    if name in ("", ".", ".."):
        raise UnsafePathError(errno.EINVAL, root, rel, f"invalid path component {name!r}")
    if "\0" in name:
        raise UnsafePathError(errno.EINVAL, root, rel, "NUL character in a name")
    try:
        os.fsencode(name)
    except UnicodeError:
        raise UnsafePathError(errno.EINVAL, root, rel, "a character that is not a file-name byte") from None


def _single_name(name: str, root: str) -> str:
    if not isinstance(name, str):
        raise UnsafePathError(errno.EINVAL, root, repr(name), "a name must be a str")
    if "/" in name:
        raise UnsafePathError(errno.EINVAL, root, name, "a single name was expected, not a path")
    _check_name(name, root, name)
    return name


# ---- descriptor helpers ------------------------------------------------------


def _not_a_folder(dir_fd: int, name: str, *, root: str, rel: str, shown: str) -> UnsafePathError:
    err, what = _describe(dir_fd, name)
    subject = "" if shown == rel else f"'{_show(shown)}' "
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
            raise _rewrap(exc, _join(root, shown)) from exc
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise _not_a_folder(dir_fd, name, root=root, rel=rel, shown=shown) from None
        raise _rewrap(exc, _join(root, shown)) from exc
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
    except FileExistsError:
        pass  # made by someone else meanwhile: opened (and checked) below like any other
    except OSError as exc:
        raise _rewrap(exc, _join(root, shown)) from exc
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise _not_a_folder(dir_fd, name, root=root, rel=rel, shown=shown) from None
        raise _rewrap(exc, _join(root, shown)) from exc


def _lstat(dir_fd: int, name: str, display: str) -> os.stat_result:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise _rewrap(exc, display) from exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


# renameat2(2) with RENAME_NOREPLACE: the only way to rename without ever
# replacing an existing name. glibc has exported it since 2.28.
_RENAME_NOREPLACE = 1
_Renameat2 = Callable[[int, bytes, int, bytes, int], int]


def _load_renameat2() -> _Renameat2 | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return cast(_Renameat2, func)


_renameat2: _Renameat2 | None = _load_renameat2()


def _rename_noreplace(src_fd: int, src_name: str, dst_fd: int, dst_name: str) -> None:
    """Rename, failing with FileExistsError if ``dst_name`` exists.

    Atomic with renameat2(RENAME_NOREPLACE). Where the C library lacks it or
    the filesystem refuses the flag (EINVAL, ENOSYS), this falls back to
    "lstat the destination, then rename": whoever can create names in the
    destination folder between the two calls gets replaced. Callers keep
    destinations in folders only the daemon writes (see :func:`rename`).
    """
    func = _renameat2
    if func is not None:
        result = func(src_fd, os.fsencode(src_name), dst_fd, os.fsencode(dst_name), _RENAME_NOREPLACE)
        if result == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), src_name, None, dst_name)
    try:
        os.stat(dst_name, dir_fd=dst_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst_name)


# ---- the walk's entries ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One non-folder found by :meth:`Root.walk`.

    ``relpath`` is ``/``-separated below the root, in the ``surrogateescape``
    form (see the module doc). ``st`` is the entry's own lstat. ``kind`` is
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
    def open(cls, path: str | os.PathLike[str], *, create: bool = False, mode: int = 0o750) -> Root:
        """Open the configured folder ``path``, following any symlink in the operator's path.

        With ``create``, a missing folder whose parent exists is made (only
        that last component, like Camel's ``autoCreate``) with ``mode``, less
        the process umask. A missing parent raises FileNotFoundError.
        """
        path = Path(path)
        if "\0" in str(path):
            raise UnsafePathError(errno.EINVAL, "", str(path), "NUL character in a configured path")
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        try:
            return cls(os.open(path, flags), path)
        except FileNotFoundError as exc:
            if not create or path.name in ("", ".", ".."):
                raise _rewrap(exc, str(path)) from exc
        except OSError as exc:
            raise _rewrap(exc, str(path)) from exc
        try:
            parent = os.open(path.parent, flags)
        except OSError as exc:
            raise _rewrap(exc, str(path.parent)) from exc
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path.name, mode, dir_fd=parent)
            return cls(os.open(path.name, flags, dir_fd=parent), path)
        except OSError as exc:
            raise _rewrap(exc, str(path)) from exc
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
        return f"Root({_show(str(self.path))!r}, fd={self._fd})"

    def _check(self) -> int:
        if self._fd < 0:
            raise OSError(errno.EBADF, "I/O on a closed Root", _show(str(self.path)))
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
        comps = _components(rel, self._root)
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
        comps = _components(rel, self._root)
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
            return _lstat(fd, name, _join(self._root, rel))

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` is there and is not a symlink (of any kind: file, folder, FIFO...).

        A symlink, or a path through a symlink or a non-folder, is not there:
        a marker file planted as a symlink does not count. An invalid ``rel``
        still raises UnsafePathError (EINVAL); other errors (EACCES, EIO) raise.
        """
        _components(rel, self._root)  # an invalid rel raises, whatever is on disk
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
            raise _rewrap(exc, self._root) from exc
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
                            raise _rewrap(exc, self._root) from exc
                        if on_error is not None:
                            on_error(frame.rel, exc)
                        names = []
                    names.sort()
                    frame.subdirs = []
                    for name in names:
                        rel = _join(frame.rel, name)
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
                rel = _join(frame.rel, name)
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
        display = _join(self._root, rel)
        with self._parent(rel) as (pfd, name):
            before = _lstat(pfd, name, display)
            self._check_regular(before, rel, expect)
            try:
                fd = os.open(name, _READ_FLAGS, dir_fd=pfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    err, what = _describe(pfd, name)
                    raise UnsafePathError(err, self._root, rel, f"{what}; not followed") from None
                raise _rewrap(exc, display) from exc
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
            raise UnsafePathError(err, self._root, rel, f"is {_kind_text(st)}, not a regular file; not used")
        if expect is not None and not _matches(st, expect):
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
        display = _join(self._root, rel)
        with self._parent(rel, create=create_dirs, mode=dir_mode) as (pfd, name):
            with contextlib.suppress(FileNotFoundError):
                existing = _lstat(pfd, name, display)
                if stat.S_ISDIR(existing.st_mode):
                    raise UnsafePathError(errno.EISDIR, self._root, rel, "is a folder; not replaced")
            tmp = f"{_TMP_PREFIX}{secrets.token_hex(8)}"
            try:
                fd = os.open(tmp, _CREATE_FLAGS, 0o600, dir_fd=pfd)
            except OSError as exc:
                raise _rewrap(exc, _join(self._root, os.path.dirname(rel), tmp)) from exc
            try:
                try:
                    _write_all(fd, data)
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
                    raise _rewrap(exc, display) from exc
                raise
            try:
                os.fsync(pfd)
            except OSError as exc:
                raise _rewrap(exc, display) from exc

    def unlink(self, rel: str) -> None:
        """Remove the non-folder ``rel`` (a symlink itself, never its target)."""
        with self._parent(rel) as (pfd, name):
            try:
                os.unlink(name, dir_fd=pfd)
            except OSError as exc:
                if exc.errno in (errno.EISDIR, errno.EPERM) and stat.S_ISDIR(
                    _lstat(pfd, name, _join(self._root, rel)).st_mode
                ):
                    raise UnsafePathError(errno.EISDIR, self._root, rel, "is a folder; not removed") from None
                raise _rewrap(exc, _join(self._root, rel)) from exc


# ---- moving files -------------------------------------------------------------


def rename(
    src: Root,
    src_rel: str,
    dst: Root,
    dst_name: str,
    *,
    expect: Expect | None = None,
    replace: bool = False,
    cross_device: bool = False,
) -> None:
    """Move the regular file ``src_rel`` (below ``src``) to ``dst_name`` directly in ``dst``.

    The source's folder is reached without following anything and the source
    is lstat'ed through it: a symlink or anything but a regular file is
    refused (UnsafePathError), and so is another file than ``expect``
    (FileChangedError; see :data:`Expect`). Unless ``replace``, an existing
    ``dst_name`` (even a symlink) is never overwritten (FileExistsError):
    atomically with renameat2(RENAME_NOREPLACE), else by a check just before
    the rename (see :func:`_rename_noreplace`). Both folders are fsynced
    afterwards.

    The rename moves whatever has the source name at that instant; if the
    partner swapped the entry between the lstat and the rename, the moved
    entry is checked afterwards, put back when possible, and FileChangedError
    is raised (the swapped-in entry comes from the partner's own folder; only
    a symlink itself or another of their files can be moved, never what a
    link points to).

    ``cross_device``: on EXDEV (``dst`` on another filesystem), copy the open,
    checked source into a temporary name in ``dst``, fsync, rename it into
    place (same no-replace rule), then unlink the source if it is still the
    same inode. Without it, EXDEV is raised.
    """
    dst_name = _single_name(dst_name, str(dst.path))
    dst_fd = dst._check()
    src_display = _join(str(src.path), src_rel)
    with src._parent(src_rel) as (sfd, sname):
        before = _lstat(sfd, sname, src_display)
        src._check_regular(before, src_rel, expect)
        try:
            if replace:
                os.rename(sname, dst_name, src_dir_fd=sfd, dst_dir_fd=dst_fd)
            else:
                _rename_noreplace(sfd, sname, dst_fd, dst_name)
        except OSError as exc:
            if exc.errno == errno.EXDEV and cross_device:
                _copy_across(src, src_rel, sfd, sname, before, dst, dst_name, replace=replace)
                return
            if exc.errno == errno.EEXIST:
                shown = _show(_join(str(dst.path), dst_name))
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), shown) from None
            raise _rewrap(exc, src_display) from exc
        try:
            after: os.stat_result | None = os.stat(dst_name, dir_fd=dst_fd, follow_symlinks=False)
        except FileNotFoundError:
            after = None
        if after is None:
            raise FileChangedError(
                errno.ESTALE, str(dst.path), dst_name, "vanished from the destination right after the move"
            )
        if _identity(after) != _identity(before):
            # Swapped between the lstat and the rename: we moved the partner's
            # new entry (never anything it points to). Give it back.
            try:
                _rename_noreplace(dst_fd, dst_name, sfd, sname)
                where = "it was put back"
            except OSError:
                where = f"it is left at {_show(_join(str(dst.path), dst_name))}"
            raise FileChangedError(
                errno.ESTALE,
                str(src.path),
                src_rel,
                f"was replaced by another entry ({_kind_text(after)}) during the move; {where}",
            )
        try:
            os.fsync(dst_fd)
            os.fsync(sfd)
        except OSError as exc:
            raise _rewrap(exc, _join(str(dst.path), dst_name)) from exc


def _copy_across(
    src: Root, src_rel: str, sfd: int, sname: str, before: os.stat_result, dst: Root, dst_name: str, *, replace: bool
) -> None:
    """The EXDEV half of :func:`rename`: copy, fsync, rename into place, then unlink the source."""
    dst_fd = dst._check()
    in_fd = src.open_file(src_rel, expect=before)
    tmp = f"{_TMP_PREFIX}{secrets.token_hex(8)}"
    display = _join(str(dst.path), dst_name)
    try:
        st = os.fstat(in_fd)
        out_fd = os.open(tmp, _CREATE_FLAGS, 0o600, dir_fd=dst_fd)
        try:
            try:
                while chunk := os.read(in_fd, _COPY_CHUNK):
                    _write_all(out_fd, chunk)
                os.fchmod(out_fd, st.st_mode & 0o777)
                os.utime(out_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                os.fsync(out_fd)
            finally:
                os.close(out_fd)
            if replace:
                os.rename(tmp, dst_name, src_dir_fd=dst_fd, dst_dir_fd=dst_fd)
            else:
                _rename_noreplace(dst_fd, tmp, dst_fd, dst_name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dst_fd)
            raise
        os.fsync(dst_fd)
    except OSError as exc:
        raise _rewrap(exc, display) from exc
    finally:
        os.close(in_fd)
    now = _lstat(sfd, sname, _join(str(src.path), src_rel))
    if _identity(now) != _identity(before):
        raise FileChangedError(
            errno.ESTALE, str(src.path), src_rel, f"was replaced during the copy; the copy is at {_show(display)}"
        )
    try:
        os.unlink(sname, dir_fd=sfd)
        os.fsync(sfd)
    except OSError as exc:
        raise _rewrap(exc, _join(str(src.path), src_rel)) from exc


# ---- flat names ---------------------------------------------------------------


def flatten(relpath: str, *, sep: str = "__", reserve: int = 0) -> str:
    """One file name for a partner's ``relpath``: ``"sub/dir/name.csv"`` -> ``"sub__dir__name.csv"``.

    For flat destinations (archive, result names) where creating the
    partner's folders would mean more folders to walk and names to check.
    The components are validated like any relative path, so the result is a
    single safe name (no ``/``, NUL, ``.`` or ``..``); undecodable bytes are
    kept as they are.

    Not injective (``a/b`` and ``a__b`` give the same name): destinations
    must still be written with ``replace=False`` and the caller picks another
    name on FileExistsError. When the result would exceed ``NAME_MAX -
    reserve`` bytes (``reserve``: room the caller needs for a suffix such as
    ``.status.json``), its middle is cut at a UTF-8 boundary and replaced by
    ``~`` and 16 hex digits of the SHA-256 of the full name, keeping the
    extension (up to 16 bytes) so the type stays visible. Two long names
    sharing their first ~200 bytes thus stay distinct.
    """
    comps = _components(relpath)
    if not sep or "/" in sep or "\0" in sep:
        raise ValueError("sep must be a non-empty name fragment")
    limit = NAME_MAX - reserve
    if limit < 40:
        raise ValueError("reserve leaves too little room for a name")
    raw = os.fsencode(sep.join(comps))
    if len(raw) <= limit:
        return os.fsdecode(raw)
    digest = b"~" + hashlib.sha256(raw).hexdigest()[:16].encode("ascii")
    stem, ext = os.path.splitext(raw)
    if len(ext) > 16:
        ext = b""
    keep = limit - len(digest) - len(ext)
    cut = keep
    while cut > 0 and cut > keep - 3 and (raw[cut] & 0xC0) == 0x80:
        cut -= 1  # do not split a UTF-8 sequence
    if (raw[cut] & 0xC0) == 0x80:
        cut = keep  # not UTF-8 there anyway: any byte boundary will do
    return os.fsdecode(stem[:cut] + digest + ext)
