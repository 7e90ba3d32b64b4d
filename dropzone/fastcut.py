"""Chunk records moved by the kernel while the splitter reads on.

When the source is a regular file read as UTF-8, a chunk's records are one
byte range of that file, copied verbatim.  The splitter must still read every
byte (to check the UTF-8 and find where records end) but it need not write
them back from Python: this module owns moving such a range into a chunk
file.  ``os.copy_file_range`` copies inside the kernel; where it is refused
(another filesystem type, an old kernel, a sandbox) ``os.sendfile`` does the
same job, and where both are refused (a chunk opened for appending, say)
``pread`` and ``write`` do.  A chunk that is not an OS file at all (a wrapper the caller
yields) is filled by ``pread`` and its own ``write``, in the caller's thread.

A copy can run on a helper thread, so the kernel copies chunk k while the
splitter reads and checks chunk k+1: the copy is one system call per chunk,
which releases the GIL for its whole length.  A helper that wrote block by
block would spend its time waiting for the GIL instead.

It does not decide where chunks are cut, open or name them, or word errors
about the data; ``dropzone.splitting`` does, and drives this.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import threading
from typing import BinaryIO

from dropzone.errors import SplitError

# Errors that say "this way of copying is not available here", not "the copy
# failed": another filesystem type (EXDEV), a filesystem or file kind that
# cannot (EINVAL, EOPNOTSUPP), a chunk opened for appending (EBADF), a seccomp
# filter (ENOSYS, EPERM), a sendfile that only writes to sockets (ENOTSOCK, macOS).
# Should one of these be a real failure, the plain write that follows fails too, and raises it.
_UNSUPPORTED = frozenset(
    {errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF, errno.ENOSYS, errno.EPERM, errno.ENOTSOCK}
)
_PIECE = 1 << 20  # pread/write fallback: bounded memory whatever the chunk size


class SourceFile:
    """The source as a file descriptor: where the stream started, and its
    size and modification time then (copies read the file again, later)."""

    __slots__ = ("base", "fd", "stamp")

    def __init__(self, fd: int, base: int) -> None:
        self.fd = fd
        self.base = base
        self.stamp = _stamp(fd)

    @classmethod
    def of(cls, source: BinaryIO) -> SourceFile | None:
        """The source as a regular file, or None (a pipe, a socket, memory)."""
        # Exact types: a wrapper with a fileno() (gzip's, say) reads other
        # bytes than its file holds.
        raw = source.raw if type(source) is io.BufferedReader else source
        if type(raw) is not io.FileIO:
            return None
        try:
            if not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
                return None
            return cls(raw.fileno(), source.tell())
        except (OSError, ValueError):
            return None

    def check_unchanged(self) -> None:
        """Chunks hold what the file holds now; the split checked what it read."""
        if _stamp(self.fd) != self.stamp:
            raise SplitError(
                "the file changed while it was being split (its size, modification or change time "
                "is not what it was when the split began); split it again once it is complete"
            )


def _stamp(fd: int) -> tuple[int, int, int]:
    # ctime too: a writer can put the mtime back (utime, sftp's fsetstat), never the ctime.
    st = os.fstat(fd)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


class Copy:
    """Source bytes ``[start, end)`` (stream offsets) appended to ``out``.

    With ``background`` and an ``out`` that is a plain OS file, the copy runs
    on a helper thread; ``wait()`` joins it and raises what it raised.
    ``out``'s buffered bytes (the header) are flushed first.
    """

    def __init__(self, src: SourceFile, out: BinaryIO, start: int, end: int, *, background: bool) -> None:
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        start, end = src.base + start, src.base + end
        # Exact types again: a wrapper the caller yields (counting, hashing)
        # must see every byte, so it gets them through its own write().
        if type(out) not in (io.BufferedWriter, io.FileIO):
            while start < end:
                data = _pread(src.fd, start, end)
                write_all(out, data)
                start += len(data)
            return
        out.flush()
        dst = out.fileno()
        if not background:
            copy_range(src.fd, dst, start, end)
            return
        self._thread = threading.Thread(
            target=self._run, args=(src.fd, dst, start, end), name="dropzone-chunk-copy", daemon=True
        )
        self._thread.start()

    def _run(self, src: int, dst: int, start: int, end: int) -> None:
        try:
            copy_range(src, dst, start, end)
        except BaseException as exc:  # noqa: BLE001  # raised again by wait(), in the splitter's thread
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def copy_range(src: int, dst: int, start: int, end: int) -> None:
    """File offsets ``[start, end)`` of ``src``, written at ``dst``'s position."""
    pos = start
    for name in ("copy_file_range", "sendfile"):
        if not hasattr(os, name):  # copy_file_range is Linux's, and Python 3.8's
            continue
        try:
            while pos < end:
                if name == "copy_file_range":
                    n = os.copy_file_range(src, dst, end - pos, pos)
                else:
                    n = os.sendfile(dst, src, pos, end - pos)
                if n == 0:
                    raise _shrunk()
                pos += n
            return
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
    while pos < end:
        data = _pread(src, pos, end)
        write_all(dst, data)
        pos += len(data)


def _pread(fd: int, start: int, end: int) -> bytes:
    data = os.pread(fd, min(end - start, _PIECE), start)
    if not data:
        raise _shrunk()
    return data


def _shrunk() -> SplitError:
    return SplitError("the file became shorter while it was being split; split it again once it is complete")


def write_all(out: BinaryIO | int, data: bytes | memoryview) -> None:
    """All of ``data`` to a file object or descriptor: raw files may write less than asked."""
    view = memoryview(data)
    while view:
        n = os.write(out, view) if isinstance(out, int) else out.write(view)
        if n is None or n >= len(view):
            return
        view = view[n:]
