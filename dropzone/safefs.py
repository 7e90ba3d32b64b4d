"""File operations below partner-controlled folders that never follow a symlink.

Partners are strangers to each other sharing one machine. Each one controls
the names, contents, symlinks and folders inside their own inbox and outbox
(OpenSSH's sftp lets them symlink, rename and mkdir), and can change them
while the daemon works. A path such as ``inbox / "x/leads.csv"`` is resolved
by the kernel again at every call, through whatever ``x`` is at that moment:
a symlink to another partner's folder turns an innocent ``open`` or
``rename`` into a read or write in that folder.

So all I/O below a configured folder goes through directory file
descriptors instead of paths. Callers import everything from this module,
which re-exports the pieces kept beside it:

* ``dropzone.saferoot``: :class:`Root`, an open folder, and everything done
  below it (walk, stat, open, atomic write, unlink), reached one component
  at a time without following anything; :class:`Entry`, what a walk yields.
* ``dropzone.safepaths``: relative-path and name checks, the error types
  (:class:`UnsafePathError`, :class:`FileChangedError`,
  :class:`TooManyEntriesError`), names that are not UTF-8, :data:`Expect`
  and :func:`flatten`.

This module itself owns :func:`rename`: moving a regular file from one Root
into another, never replacing an existing name unless asked, checking what
was moved, and copying across filesystems when allowed. It is the one
operation over two Roots, so it uses Root's private helpers.

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

Linux first: see ``dropzone.saferoot``; no-replace renames rely on
``renameat2(RENAME_NOREPLACE)`` (Linux 3.15+, glibc 2.28+; a documented
fallback is used where it is missing).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
from collections.abc import Callable
from typing import cast

from dropzone.safepaths import (
    NAME_MAX,
    DevIno,
    Expect,
    FileChangedError,
    TooManyEntriesError,
    UnsafePathError,
    flatten,
    identity,
    join_rel,
    kind_text,
    rewrap,
    show,
    single_name,
)
from dropzone.saferoot import CREATE_FLAGS, TMP_PREFIX, Entry, Root, lstat_at, write_all

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

_COPY_CHUNK = 1 << 20


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
    sync: bool = True,
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

    ``sync=False`` leaves the two fsyncs to the caller, who moves a batch and
    makes it durable with one fsync per folder (before journalling the moves).
    """
    dst_name = single_name(dst_name, str(dst.path))
    dst_fd = dst._check()
    src_display = join_rel(str(src.path), src_rel)
    with src._parent(src_rel) as (sfd, sname):
        before = lstat_at(sfd, sname, src_display)
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
                shown = show(join_rel(str(dst.path), dst_name))
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), shown) from None
            raise rewrap(exc, src_display) from exc
        try:
            after: os.stat_result | None = os.stat(dst_name, dir_fd=dst_fd, follow_symlinks=False)
        except FileNotFoundError:
            after = None
        if after is None:
            raise FileChangedError(
                errno.ESTALE, str(dst.path), dst_name, "vanished from the destination right after the move"
            )
        if identity(after) != identity(before):
            # Swapped between the lstat and the rename: we moved the partner's
            # new entry (never anything it points to). Give it back.
            try:
                _rename_noreplace(dst_fd, dst_name, sfd, sname)
                where = "it was put back"
            except OSError:
                where = f"it is left at {show(join_rel(str(dst.path), dst_name))}"
            raise FileChangedError(
                errno.ESTALE,
                str(src.path),
                src_rel,
                f"was replaced by another entry ({kind_text(after)}) during the move; {where}",
            )
        try:
            if sync:
                os.fsync(dst_fd)
                os.fsync(sfd)
        except OSError as exc:
            raise rewrap(exc, join_rel(str(dst.path), dst_name)) from exc


def _copy_across(
    src: Root, src_rel: str, sfd: int, sname: str, before: os.stat_result, dst: Root, dst_name: str, *, replace: bool
) -> None:
    """The EXDEV half of :func:`rename`: copy, fsync, rename into place, then unlink the source."""
    dst_fd = dst._check()
    in_fd = src.open_file(src_rel, expect=before)
    tmp = f"{TMP_PREFIX}{secrets.token_hex(8)}"
    display = join_rel(str(dst.path), dst_name)
    try:
        st = os.fstat(in_fd)
        out_fd = os.open(tmp, CREATE_FLAGS, 0o600, dir_fd=dst_fd)
        try:
            try:
                while chunk := os.read(in_fd, _COPY_CHUNK):
                    write_all(out_fd, chunk)
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
        raise rewrap(exc, display) from exc
    finally:
        os.close(in_fd)
    now = lstat_at(sfd, sname, join_rel(str(src.path), src_rel))
    if identity(now) != identity(before):
        raise FileChangedError(
            errno.ESTALE, str(src.path), src_rel, f"was replaced during the copy; the copy is at {show(display)}"
        )
    try:
        os.unlink(sname, dir_fd=sfd)
        os.fsync(sfd)
    except OSError as exc:
        raise rewrap(exc, join_rel(str(src.path), src_rel)) from exc
