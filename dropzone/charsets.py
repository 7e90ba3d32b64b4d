"""The source file's character encoding, as the splitter needs it.

This module owns what the splitter knows about encodings: the UTF-16 byte
order marks it refuses to take for UTF-8, validating UTF-8 block by block
(sequences may straddle blocks), transcoding a source in another encoding to
UTF-8 as it is read (refusing an undecodable byte with its line), measuring
how many source bytes a stretch of transcoded output came from (so the
manifest keeps pointing at the partner's own bytes), and turning a configured
encoding name into a canonical codec name.

It does not sniff the first block or decide what a byte order mark means for
the configured encoding, nor word the bad-UTF-8 error: those are
``dropzone.splitting``'s, which drives these pieces.  No paths are opened;
readers are passed in.
"""

from __future__ import annotations

import codecs
from typing import BinaryIO

from dropzone.errors import ConfigError, SplitError

UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_UTF8_PIECE = 16 * 1024


class Utf8Check:
    """Validates UTF-8 block by block; sequences may straddle blocks."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, block: bytes, final: bool) -> int | None:
        """Offset of the first bad byte relative to ``block`` (negative if it
        began in the previous block), or None if all is well so far."""
        if not self.pending and block.isascii():
            return None  # the common case costs next to nothing
        held = len(self.pending)
        data = self.pending + block if held else block
        view = memoryview(data)
        i = 0
        try:
            # Small pieces keep the throwaway str in cache: twice as fast as
            # decoding a megabyte at once.
            while i + _UTF8_PIECE < len(data):
                i += codecs.utf_8_decode(view[i : i + _UTF8_PIECE], "strict", False)[1]
            i += codecs.utf_8_decode(view[i:], "strict", final)[1]
        except UnicodeDecodeError as e:
            return i + e.start - held
        finally:
            view.release()
        self.pending = data[i:]
        return None


class Transcoder:
    """A reader giving UTF-8 bytes from a source in another encoding."""

    def __init__(self, raw: BinaryIO, encoding: str, first: bytes) -> None:
        self._raw = raw
        self._encoding = encoding
        self._decoder = codecs.getincrementaldecoder(encoding)("strict")
        self._first: bytes | None = first
        self._lines = 0  # LFs decoded so far, to place a bad byte on its line

    def read(self, size: int) -> bytes:
        while True:
            if self._first is not None:
                raw, self._first = self._first, None
            else:
                raw = self._raw.read(size)
            try:
                text = self._decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                seen = bytes(e.object[: e.start]).decode(self._encoding, "replace")
                line = self._lines + seen.count("\n") + 1
                bad = bytes(e.object[e.start : e.end]).hex(" ").upper()
                raise SplitError(
                    f"line {line}: bytes {bad} are not valid {self._encoding}; "
                    f"check the file's encoding",
                    line=line,
                ) from None
            if text or not raw:
                self._lines += text.count("\n")
                return text.encode("utf-8")


class SourceMeter:
    """Source byte offsets of output bytes when transcoding.

    Output is UTF-8, the source is not, so offsets are found by encoding the
    output back with one incremental encoder (it emits a BOM once, as the
    source had): exact for codecs that round-trip, which single-byte code
    pages and UTF-16/32 do.
    """

    def __init__(self, encoding: str) -> None:
        self._encoder = codecs.getincrementalencoder(encoding)("strict")

    def measure(self, utf8: bytes | memoryview) -> int:
        return len(self._encoder.encode(bytes(utf8).decode("utf-8")))


def normalise_encoding(encoding: str | None) -> str | None:
    """None for UTF-8 (the native path); a canonical codec name otherwise."""
    if encoding is None:
        return None
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise ConfigError(
            f"unknown encoding {encoding!r}; use a Python codec name such as cp1252 or latin-1"
        ) from None
    return None if name in ("utf-8", "utf-8-sig") else name
