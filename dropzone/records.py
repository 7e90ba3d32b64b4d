"""Where records end in a csv/tsv/ssv byte buffer, found without parsing fields.

This module owns the quote and line-feed arithmetic the splitter cuts by:
which line feeds end a record, where the last whole record in a slice ends,
and where the header ends.  It works on ``bytes`` already in memory and never
reads, writes, decodes or checks encodings; reading blocks, carrying the
unfinished record, the size rules and the error messages are
``dropzone.splitting``'s, and character encodings are ``dropzone.charsets``'.

How records are found without parsing fields: only quotes and line feeds
matter.  A line feed ends a record iff an even number of quote characters
precede it (doubled quotes inside a quoted field count twice, so parity
still works).  Per block, ``bytes.translate`` deletes every other byte and
``replace`` cancels quote pairs that sit on the same physical line; what is
left is one byte per line feed plus a lone quote on each line that has an
odd quote count.  In the usual file no quote is left and every line feed is
a record boundary, all found at C speed; otherwise the odd lines tell which
line feed ordinals fall inside quotes.  Byte positions are only looked up
(``rfind``, or bisecting with ``count``) where a chunk has to be cut.

Pure: no I/O, tested through ``dropzone.splitting``.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

QUOTE = 0x22
LF = 0x0A
# translate() deletes these, leaving only quotes and line feeds.
_NOT_QUOTE_OR_LF = bytes(b for b in range(256) if b not in (QUOTE, LF))


class Quotes:
    """Where quotes hide line feeds in a buffer that starts outside quotes.

    Line feeds are identified by ordinal (0 = first LF in the buffer).
    ``los[i]``..``his[i]`` (exclusive) are the ordinals inside the i-th
    quoted stretch that holds line feeds; ``open_line`` is the index of the
    physical line (0-based within the buffer) where a quote opened that the
    buffer never closes, or -1.
    """

    __slots__ = ("before", "his", "lfs", "los", "open_line")

    def __init__(self, data: bytes) -> None:
        self.los: list[int] = []
        self.his: list[int] = []
        self.before: list[int] = [0]  # inside ordinals in stretches before i
        self.open_line = -1
        if b'"' not in data:
            # memchr finds this at memory speed, and counting line feeds costs
            # half of filtering every byte: quote-free blocks are the norm.
            self.lfs = data.count(b"\n")
            return
        reduced = data.translate(None, _NOT_QUOTE_OR_LF)
        if b'"' in reduced:
            # Quotes of one physical line are adjacent here, so pairs cancel;
            # at most one quote per line survives, on lines with odd counts.
            # Cancelling fours first halves the matches in quote-heavy files.
            reduced = reduced.replace(b'""""', b"").replace(b'""', b"")
        if b'"' not in reduced:  # the hot path: no quoted line feeds
            self.lfs = len(reduced)
            return
        # Odd parts hold the LFs inside quotes.  Built with map/accumulate,
        # not a loop: files where every record has a multi-line field exist.
        parts = reduced.split(b'"')
        lengths = list(map(len, parts))
        ends = list(accumulate(lengths))  # ordinal after each part
        self.los = ends[0 : len(parts) - 1 : 2]
        self.his = ends[1::2]
        self.before = list(accumulate(lengths[1::2], initial=0))
        self.lfs = ends[-1]
        if len(parts) % 2 == 0:
            self.open_line = self.los[-1]

    def inside(self, ordinal: int) -> int:
        """Index of the stretch holding LF ``ordinal``, or -1."""
        i = bisect_right(self.los, ordinal) - 1
        return i if i >= 0 and ordinal < self.his[i] else -1

    def inside_before(self, ordinal: int) -> int:
        """How many LFs with a smaller ordinal are inside quotes."""
        i = bisect_right(self.los, ordinal) - 1
        if i < 0:
            return 0
        return self.before[i] + min(ordinal, self.his[i]) - self.los[i]


def last_boundary(data: bytes, start: int, stop: int, start_ord: int, q: Quotes) -> tuple[int, int]:
    """End of the last whole record in ``data[start:stop]``: (position after
    its LF, LF count in ``data[:position]``), or (-1, -1) if there is none.
    ``start`` must be a record boundary with ``start_ord`` LFs before it."""
    p = data.rfind(b"\n", start, stop)
    if p < 0:
        return -1, -1
    # The LF's ordinal, counted from whichever end is nearer: a count over the
    # whole block per cut would cost as much as finding the records did.
    nearer_start = p - start <= len(data) - p
    k = start_ord + data.count(b"\n", start, p) if nearer_start else q.lfs - 1 - data.count(b"\n", p + 1)
    if not q.los:
        return p + 1, k + 1
    i = q.inside(k)
    if i >= 0:
        # Inside a quoted field: the record ends at the LF just before the
        # line where that field's quote opened (which is outside quotes).
        k = q.los[i] - 1
        if k < start_ord:
            return -1, -1
        p = nth_lf(data, start, start_ord, p, k)
    return p + 1, k + 1


def nth_lf(data: bytes, lo: int, lo_ord: int, hi: int, target: int) -> int:
    """Position of the LF with ordinal ``target``, known to lie in
    ``data[lo:hi]`` with ``lo_ord`` LFs before ``lo``.  Bisects with C-speed
    counts, so a quoted field of a million lines costs no million steps."""
    while hi - lo > 512:
        mid = (lo + hi) // 2
        ordinal = lo_ord + data.count(b"\n", lo, mid)
        if ordinal > target:
            hi = mid
        else:
            lo, lo_ord = mid, ordinal
    p = lo - 1
    for _ in range(target - lo_ord + 1):
        p = data.find(b"\n", p + 1, hi)
    return p


def first_boundary(data: bytes) -> int:
    """Position after the LF that ends the first record, or -1."""
    q = Quotes(data)
    target = q.his[0] if q.los and q.los[0] == 0 else 0
    if target >= q.lfs:
        return -1
    return nth_lf(data, 0, 0, len(data), target) + 1
