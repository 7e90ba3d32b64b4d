"""Names, relative paths and errors for the no-follow file operations of ``dropzone.safefs``.

This module owns the vocabulary ``dropzone.saferoot`` and ``dropzone.safefs``
share: checking a relative path or a single name before any system call, the
error types, how a path or a found entry is shown in a message, what pins a
file's identity across a look and a later use (:data:`Expect`), and
:func:`flatten`, which turns a partner's relative path into one safe file
name. It opens no descriptor and does no I/O on the caller's behalf: its only
system calls are the lstat and readlink in :func:`describe`, which put words
on what was found. Callers import its public names from ``dropzone.safefs``.

Relative paths
    Relative paths are ``/``-separated strings. An empty, ``.`` or ``..``
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
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

#: Longest file name (one component) Linux filesystems take, in bytes.
NAME_MAX = 255

#: ``(st_dev, st_ino)``: which file an entry was when the caller looked at it.
DevIno = tuple[int, int]

#: What ``expect=`` takes: ``(st_dev, st_ino)``, or a whole stat result, which
#: also pins the file type, size and mtime (so a recycled inode number, or a
#: file written since, does not pass for the one the caller looked at).
Expect = DevIno | os.stat_result


# ---- errors -----------------------------------------------------------------


def show(text: str) -> str:
    """``text`` safe for a log line or JSON: undecodable bytes as ``\\xff``, other non-printables escaped."""
    return "".join(map(_show_char, text))


def _show_char(c: str) -> str:
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: one byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if c.isprintable():
        return c
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def join_rel(*parts: str) -> str:
    return "/".join(p for p in parts if p)


class _PathError(OSError):
    """An OSError whose message is ``<root>/<relpath>: <what>``; ``strerror`` holds the same text."""

    def __init__(self, err: int, root: str, relpath: str, found: str) -> None:
        where = show(join_rel(root.rstrip("/") or "/", relpath)) if root else show(relpath)
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


def kind_text(st: os.stat_result) -> str:
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


def describe(dir_fd: int, name: str) -> tuple[int, str]:
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
        shown = show(target)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        return errno.ELOOP, f"is a symbolic link (to '{shown}')"
    return (errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.ENOTDIR), f"is {kind_text(st)}"


def identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What survives a rename unchanged: device, inode, file type, size, mtime."""
    return (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)


def matches(st: os.stat_result, expect: Expect) -> bool:
    if isinstance(expect, os.stat_result):
        return identity(st) == identity(expect)
    return (st.st_dev, st.st_ino) == tuple(expect)


def rewrap(exc: OSError, display: str) -> OSError:
    """``exc`` again with ``filename`` set to ``display`` (for messages; never used for I/O)."""
    if isinstance(exc, _PathError) or exc.errno is None:
        return exc
    try:
        return type(exc)(exc.errno, exc.strerror, show(display))
    except TypeError:  # an OSError subclass with its own constructor
        return exc


# ---- relative paths ---------------------------------------------------------


def components(rel: str, root: str = "") -> list[str]:
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


def single_name(name: str, root: str) -> str:
    if not isinstance(name, str):
        raise UnsafePathError(errno.EINVAL, root, repr(name), "a name must be a str")
    if "/" in name:
        raise UnsafePathError(errno.EINVAL, root, name, "a single name was expected, not a path")
    _check_name(name, root, name)
    return name


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
    comps = components(relpath)
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
