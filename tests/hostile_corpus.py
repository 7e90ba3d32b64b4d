"""The hostile input corpus: files partners (or attackers) drop, written at test time.

Nothing here is committed as a blob: every case is a small recipe that writes
its entry into an inbox (``tmp_path / "inbox"``) and says what the daemon must
make of it. ``tests/test_hostile.py`` runs each recipe through a real daemon.

Names are bytes (``os.fsencode``) wherever a partner's name may not be UTF-8;
the daemon sees them as ``os.fsdecode`` strings (surrogate escapes).

Kinds of expectation:

* ``rejected``: a ``Rejected`` status naming the reason (``words``, matched
  case-insensitively) and, where there is one, the ``line``; the original in
  ``archive/failed/`` byte for byte; nothing sent to Marketo.
* ``complete``: a ``Complete`` status; ``rows`` (emails) arrive at Marketo.
* ``untouched``: no status; the entry stays in the inbox exactly as it was and
  the daemon logs a refusal naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: A record over 10 MB (Marketo's limit, and dropzone's 9.5 MB chunk limit).
BIG_RECORD_BYTES = 10 * 1024 * 1024 + 4096

GOOD = b"email,firstName\nann@example.com,Ann\nbob@example.com,Bob\n"
GOOD_EMAILS = ["ann@example.com", "bob@example.com"]

LATIN1_TEXT = (
    "email,firstName,lastName\nann@example.com,Ann,Lee\n"
    "jose@example.com,José,Müller\nzoe@example.com,Zoë,Ångström\n"
)
CP1252_TEXT = (
    "email,firstName,lastName\nann@example.com,Ann,Lee\n"
    "pay@example.com,Euro €5,“Quoted” – dash\nzoe@example.com,Zoë’s,Œuvre\n"
)


@dataclass(frozen=True)
class Case:
    """One hostile entry and what the daemon must make of it."""

    id: str
    name: bytes  # relative to the inbox, as on disk
    expect: str  # "rejected" | "complete" | "untouched"
    make: Callable[[Path, bytes], None]  # writes the entry at inbox / name
    words: tuple[str, ...] = ()  # for "rejected": all must appear in the message
    line: int | None = None  # for "rejected": error.line
    rows: tuple[dict[str, str], ...] = ()  # for "complete": rows Marketo must receive
    routes: str = ""  # routes tried before the usual ones (YAML under ``routes:``)
    inbox_extra: str = ""  # inbox keys after the routes (YAML at 4 spaces)
    exact_status_name: bool = True  # False: NAME.status.json cannot exist (NAME is 255 bytes)

    @property
    def text_name(self) -> str:
        return os.fsdecode(self.name)


def _bytes(data: bytes) -> Callable[[Path, bytes], None]:
    def make(inbox: Path, name: bytes) -> None:
        path = Path(os.fsdecode(os.path.join(os.fsencode(inbox), name)))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return make


def _big_record(quoted: bool) -> Callable[[Path, bytes], None]:
    """``email,company`` then one record over 10 MB, written in pieces (memory stays small)."""

    def make(inbox: Path, name: bytes) -> None:
        piece = (b"x" * 1023 + (b"\n" if quoted else b"y")) * 64  # 64 KiB
        with open(inbox / os.fsdecode(name), "wb") as out:
            out.write(b"email,company\nann@example.com,ok\nbig@example.com,")
            if quoted:
                out.write(b'"')
            written = 0
            while written < BIG_RECORD_BYTES:
                out.write(piece)
                written += len(piece)
            out.write(b'"\n' if quoted else b"\n")
            out.write(b"zed@example.com,after\n")

    return make


def _utf16(codec: str, bom: bytes) -> Callable[[Path, bytes], None]:
    return _bytes(bom + "email,firstName\nann@example.com,Ann\n".encode(codec))


CP1252_ROUTES = """
      - match: "cp_*.csv"
        object: leads
        lookupField: email
        encoding: cp1252"""

UTF16_ROUTES = """
      - match: "u16_*.csv"
        object: leads
        lookupField: email
        encoding: utf-16"""

CONTENT_CASES: list[Case] = [
    Case("header-only", b"leads_header.csv", "rejected", _bytes(b"email,firstName\n"),
         words=("header", "no data"), line=1),
    Case("header-only-no-newline", b"leads_header2.csv", "rejected", _bytes(b"email,firstName"),
         words=("no data",), line=1),
    Case("blank-lines-only", b"leads_blank.csv", "rejected", _bytes(b"\n\n\n"), words=("header",), line=1),
    Case("binary-png", b"leads_image.csv", "rejected",
         _bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256)) * 4),
         words=("UTF-8",), line=1),
    Case("binary-gzip", b"leads_archive.csv", "rejected",
         _bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + bytes(range(255, -1, -1)) * 8), words=("UTF-8",), line=1),
    Case("nul-bytes", b"leads_nul.csv", "rejected", _bytes(b"e\x00m\x00a\x00i\x00l\x00\n\x00a\x00\n\x00"),
         words=("NUL",), line=1),
    Case("latin1", b"leads_latin1.csv", "rejected", _bytes(LATIN1_TEXT.encode("latin-1")),
         words=("UTF-8", "E9"), line=3),
    Case("cp1252", b"leads_cp1252.csv", "rejected", _bytes(CP1252_TEXT.encode("cp1252")),
         words=("UTF-8", "80"), line=3),
    Case("latin1-routed-cp1252", b"cp_latin1.csv", "complete", _bytes(LATIN1_TEXT.encode("latin-1")),
         routes=CP1252_ROUTES,
         rows=({"email": "ann@example.com", "firstName": "Ann", "lastName": "Lee"},
               {"email": "jose@example.com", "firstName": "José", "lastName": "Müller"},
               {"email": "zoe@example.com", "firstName": "Zoë", "lastName": "Ångström"})),
    Case("cp1252-routed-cp1252", b"cp_cp1252.csv", "complete", _bytes(CP1252_TEXT.encode("cp1252")),
         routes=CP1252_ROUTES,
         rows=({"email": "ann@example.com", "firstName": "Ann", "lastName": "Lee"},
               {"email": "pay@example.com", "firstName": "Euro €5", "lastName": "“Quoted” – dash"},
               {"email": "zoe@example.com", "firstName": "Zoë’s", "lastName": "Œuvre"})),
    Case("utf16-le-bom", b"leads_utf16le.csv", "rejected", _utf16("utf-16-le", b"\xff\xfe"), words=("UTF-16",), line=1),
    Case("utf16-be-bom", b"leads_utf16be.csv", "rejected", _utf16("utf-16-be", b"\xfe\xff"), words=("UTF-16",), line=1),
    Case("utf16-bom-routed-cp1252", b"cp_utf16.csv", "rejected", _utf16("utf-16-le", b"\xff\xfe"),
         routes=CP1252_ROUTES, words=("UTF-16",), line=1),
    Case("utf16-bom-routed-utf16", b"u16_ok.csv", "complete", _utf16("utf-16-le", b"\xff\xfe"),
         routes=UTF16_ROUTES, rows=({"email": "ann@example.com", "firstName": "Ann"},)),
    Case("utf8-bom-routed-cp1252", b"cp_bom.csv", "rejected", _bytes(b"\xef\xbb\xbf" + GOOD),
         routes=CP1252_ROUTES, words=("UTF-8 byte order mark",), line=1),
    Case("unterminated-quote", b"leads_quote.csv", "rejected",
         _bytes(b'email,firstName\nann@example.com,Ann\nbob@example.com,"Bob\ncid@example.com,Cid\n'),
         words=("quote", "never closed"), line=3),
    Case("unterminated-quote-in-header", b"leads_hquote.csv", "rejected",
         _bytes(b'email,"firstName\nann@example.com,Ann\n'), words=("quote",), line=1),
    Case("record-over-10mb", b"leads_huge.csv", "rejected", _big_record(quoted=False),
         words=("larger",), line=3),
    Case("quoted-record-over-10mb", b"leads_hugeq.csv", "rejected", _big_record(quoted=True),
         words=("larger",), line=3),
    Case("header-spaces", b"leads_pad.csv", "rejected", _bytes(b"email , firstName\nann@example.com,Ann\n"),
         words=("spaces", "'email '"), line=1),
    Case("header-duplicate", b"leads_dup.csv", "rejected",
         _bytes(b"email,firstName,email\nann@example.com,Ann,b@example.com\n"), words=("'email'", "twice"), line=1),
    Case("header-empty-name", b"leads_noname.csv", "rejected", _bytes(b"email,,firstName\nann@example.com,x,Ann\n"),
         words=("column 2", "no name"), line=1),
    Case("cr-only-line-endings", b"leads_mac.csv", "rejected",
         _bytes(b"email,firstName\rann@example.com,Ann\rbob@example.com,Bob\r"), words=("line endings",), line=1),
]

#: Partner file names: each holds a good file and must come back Complete under its own name.
NAME_CASES: list[Case] = [
    Case("name-spaces", b"leads_ my file  .csv", "complete", _bytes(GOOD)),
    Case("name-quotes", b"leads_\"double\" 'single'.csv", "complete", _bytes(GOOD)),
    Case("name-newline", b"leads_line1\nline2.csv", "complete", _bytes(GOOD)),
    Case("name-shell", b"leads_$(touch pwned);`id`|&<>*?[x]\\!#.csv", "complete", _bytes(GOOD)),
    Case("name-not-utf8", b"leads_\xff\xfe\xe9t\xe9.csv", "complete", _bytes(GOOD)),
    Case("name-control-chars", b"leads_\x1b[31mred\x07\t.csv", "complete", _bytes(GOOD)),
    Case("name-255-bytes", b"leads_" + b"n" * 245 + b".csv", "complete", _bytes(GOOD), exact_status_name=False),
    Case("name-not-utf8-bad-content", b"leads_\xff\xe9.csv", "rejected", _bytes(LATIN1_TEXT.encode("latin-1")),
         words=("UTF-8",), line=3),
    Case("name-newline-bad-content", b"leads_a\nb.csv", "rejected", _bytes(b"email\n"), words=("no data",), line=1),
    Case("name-no-route-not-utf8", b"report_\xff.xlsx", "rejected", _bytes(b"PK\x03\x04"), words=("leads_*.csv",)),
]

#: Entries that are not regular files: never followed, never imported, left as they are.


def _symlink_to_outside(inbox: Path, name: bytes) -> None:
    outside = inbox.parent / "outside.csv"
    outside.write_bytes(b"email\nsecret@example.com\n")
    (inbox / os.fsdecode(name)).symlink_to(outside)


def _symlink_to_outside_dir(inbox: Path, name: bytes) -> None:
    outside = inbox.parent / "outside_dir"
    outside.mkdir(exist_ok=True)
    (outside / "leads_secret.csv").write_bytes(b"email\nsecret@example.com\n")
    (inbox / os.fsdecode(name)).symlink_to(outside, target_is_directory=True)


def _dangling_symlink(inbox: Path, name: bytes) -> None:
    (inbox / os.fsdecode(name)).symlink_to(inbox.parent / "does-not-exist.csv")


def _fifo(inbox: Path, name: bytes) -> None:
    os.mkfifo(inbox / os.fsdecode(name))


def _directory(inbox: Path, name: bytes) -> None:
    (inbox / os.fsdecode(name)).mkdir()


def _unix_socket(inbox: Path, name: bytes) -> None:
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fsdecode(os.path.join(os.fsencode(inbox), name)))
    finally:
        sock.close()


UNTOUCHED_CASES: list[Case] = [
    Case("symlink-outside", b"leads_link.csv", "untouched", _symlink_to_outside),
    Case("symlink-outside-dir", b"leads_linkdir", "untouched", _symlink_to_outside_dir),
    Case("symlink-dangling", b"leads_dangling.csv", "untouched", _dangling_symlink),
    Case("fifo", b"leads_fifo.csv", "untouched", _fifo),
    Case("unix-socket", b"leads_sock.csv", "untouched", _unix_socket),
    Case("directory-named-like-data", b"leads_folder.csv", "untouched", _directory),
]


def snapshot(path: Path) -> tuple:
    """What must not change about an entry left in the inbox (never follows a symlink)."""
    st = os.lstat(path)
    target = os.readlink(path) if os.path.islink(path) else None
    content = path.read_bytes() if os.path.isfile(path) and not os.path.islink(path) else None
    listing = sorted(os.listdir(path)) if os.path.isdir(path) and not os.path.islink(path) else None
    return (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, target, content, listing)


ALL_CASES = CONTENT_CASES + NAME_CASES + UNTOUCHED_CASES
