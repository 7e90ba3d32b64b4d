"""Coalescing's rules with plain values (dropzone/coalescing.py), and the bytes of a shared import
(dropzone/merging.py) on real files."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from dropzone import coalescing, jobs
from dropzone.coalescing import MergeKey, Part
from dropzone.journal_schema import Counts
from dropzone.kinds import FileFormat
from dropzone.merging import ChangedChunkError, Member, share_results, write_merged

HEADER = b"email,firstName\n"
KEY = MergeKey(inbox="/in", instance="default", target='{"object":"leads"}', fmt="csv", header=HEADER)


def part(chunk_id, file_id=None, index=0, size=100, key=KEY, not_before=None):
    return Part(chunk_id, file_id if file_id is not None else chunk_id, index, size, key, not_before)


def ids(parts):
    return [p.chunk_id for p in parts]


class TestGather:
    @pytest.mark.parametrize(
        ("leader", "others", "limit", "wall", "expected"),
        [
            pytest.param(part(1), [part(2), part(3)], 10_000, 0.0, [1, 2, 3], id="same-key-all-in"),
            pytest.param(part(1), [part(3), part(2)], 10_000, 0.0, [1, 2, 3], id="order-of-receipt"),
            pytest.param(part(1), [part(2, file_id=5, index=1), part(3, file_id=5, index=0)], 10_000, 0.0,
                         [1, 3, 2], id="file-then-chunk-index"),
            pytest.param(part(1), [part(2, key=None)], 10_000, 0.0, [1], id="coalesce-off-never-merged"),
            pytest.param(part(1, key=None), [part(2)], 10_000, 0.0, [1], id="a-leader-that-may-not-merge-goes-alone"),
            pytest.param(part(1), [part(2, key=MergeKey("/in", "default", '{"object":"leads","listId":7}', "csv",
                                                        HEADER))], 10_000, 0.0, [1], id="other-target"),
            pytest.param(part(1), [part(2, key=MergeKey("/in", "default", KEY.target, "csv", b"email\n"))],
                         10_000, 0.0, [1], id="other-header"),
            pytest.param(part(1), [part(2, key=MergeKey("/in", "default", KEY.target, "csv", b"email,firstName\r\n"))],
                         10_000, 0.0, [1], id="other-line-ending-is-another-header"),
            pytest.param(part(1), [part(2, key=MergeKey("/other", "default", KEY.target, "csv", HEADER))],
                         10_000, 0.0, [1], id="other-inbox"),
            pytest.param(part(1), [part(2, key=MergeKey("/in", "sandbox", KEY.target, "csv", HEADER))],
                         10_000, 0.0, [1], id="other-instance"),
            pytest.param(part(1), [part(2, key=MergeKey("/in", "default", KEY.target, "tsv", HEADER))],
                         10_000, 0.0, [1], id="other-format"),
            pytest.param(part(1), [part(2, not_before=50.0), part(3, not_before=5.0)], 10_000, 10.0, [1, 3],
                         id="held-by-a-resubmit-hold"),
            # Each part adds its records (size - header) plus a possible line break: 100 - 16 + 1 = 85.
            pytest.param(part(1), [part(2), part(3)], 16 + 85 * 2, 0.0, [1, 2], id="limit-stops-the-third"),
            pytest.param(part(1), [part(2, size=500), part(3)], 16 + 85 * 2, 0.0, [1, 3],
                         id="a-big-one-is-skipped-a-later-small-one-fits"),
            pytest.param(part(1, size=900), [part(2)], 500, 0.0, [1], id="a-leader-over-the-limit-goes-alone"),
        ],
    )
    def test_which_pending_chunks_go_together(self, leader, others, limit, wall, expected):
        assert ids(coalescing.gather(leader, others, limit=limit, wall=wall)) == expected

    def test_the_merged_size_counts_the_header_once(self):
        assert coalescing.merged_bytes([part(1), part(2)], HEADER) == 16 + 2 * (100 - 16 + 1)

    def test_one_open_import_per_list_still_holds(self):
        """The leader is chosen by ``jobs.pick_next`` (which keeps one open import per listId); its members
        share its target, so its list: no second import into a busy list comes out of merging."""
        candidates = [jobs.Candidate(chunk_id=i, inbox="/in", file_id=i, index=0, list_id=1234) for i in (1, 2, 3)]
        busy = jobs.Slots(open=1, max_open=10, busy_lists=frozenset({1234}))
        assert jobs.pick_next(candidates, busy) is None
        pick = jobs.pick_next(candidates, jobs.Slots(open=0, max_open=10))
        assert pick is not None and pick.chunk_id == 1
        listed = MergeKey("/in", "default", '{"object":"leads","listId":1234}', "csv", HEADER)
        group = coalescing.gather(part(1, key=listed), [part(2, key=listed), part(3, key=KEY)], limit=10_000, wall=0)
        assert ids(group) == [1, 2]


class TestShareCounts:
    @pytest.mark.parametrize(
        ("status", "rows", "failed", "warned", "batch", "expected"),
        [
            ("Complete", 5, 2, 1, Counts(10, 3, 1), Counts(3, 2, 1)),
            ("Complete", 5, 0, 0, Counts(10, 3, 1), Counts(5, 0, 0)),
            # The failure file could not be had: this file's share is unknown, unless the batch had none.
            ("Complete", 5, None, 0, Counts(10, 3, 0), Counts(None, None, 0)),
            ("Complete", 5, None, None, Counts(10, 0, 0), Counts(5, 0, 0)),
            ("Failed", 5, 0, 0, Counts(0, 10, 0), Counts(0, 0, 0)),
        ],
    )
    def test_each_file_counts_its_own_rows(self, status, rows, failed, warned, batch, expected):
        assert coalescing.share_counts(status, rows, failed, warned, batch) == expected


def chunk_file(tmp_path: Path, name: str, body: bytes, header: bytes = HEADER) -> Path:
    path = tmp_path / name
    path.write_bytes(header + body)
    return path


class TestWriteMerged:
    def test_header_once_records_byte_for_byte_a_missing_line_break_added(self, tmp_path):
        a = chunk_file(tmp_path, "a", b'ann@x.com,"Ann\r\nMarie"\n')
        b = chunk_file(tmp_path, "b", b"bob@x.com,Bob")  # the last line of its file, no line break
        c = chunk_file(tmp_path, "c", b"cid@x.com,Cid\n")
        out = tmp_path / "import.1.csv"
        size = write_merged([a, b, c], HEADER, out)
        assert out.read_bytes() == HEADER + b'ann@x.com,"Ann\r\nMarie"\n' + b"bob@x.com,Bob\n" + b"cid@x.com,Cid\n"
        assert size == out.stat().st_size
        assert not list(tmp_path.glob(".*"))

    def test_crlf_files_get_crlf(self, tmp_path):
        header = b"email\r\n"
        a = chunk_file(tmp_path, "a", b"a@x.com", header)
        b = chunk_file(tmp_path, "b", b"b@x.com\r\n", header)
        write_merged([a, b], header, tmp_path / "m")
        assert (tmp_path / "m").read_bytes() == b"email\r\na@x.com\r\nb@x.com\r\n"

    def test_a_chunk_with_another_header_is_refused_and_nothing_is_left(self, tmp_path):
        a = chunk_file(tmp_path, "a", b"a@x.com,A\n")
        b = chunk_file(tmp_path, "b", b"b@x.com\n", b"email\n")
        with pytest.raises(ChangedChunkError):
            write_merged([a, b], HEADER, tmp_path / "m")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def failures(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["email", "firstName", "Import Failure Reason"])
    writer.writerows(rows)
    return buffer.getvalue().encode()


class TestShareResults:
    def test_each_row_goes_back_to_its_chunk_identical_rows_in_order_of_receipt(self, tmp_path):
        a = chunk_file(tmp_path, "a", b"ann@x.com,Ann\n,NoEmail\n")
        b = chunk_file(tmp_path, "b", b'bob@x.com,Bob\n,"No, Email"\n')
        c = chunk_file(tmp_path, "c", b",NoEmail\n,NoEmail\n")
        why = "Value for lookup field 'email' not found"
        body = failures([["", "NoEmail", why], ["", "No, Email", why], ["", "NoEmail", why], ["", "NoEmail", why],
                         ["zed@x.com", "Nobody", why]])
        members = [Member(1, a), Member(2, b), Member(3, c)]
        shares = share_results(body, members, FileFormat.CSV, "failures")
        assert shares.rows == {1: 1, 2: 1, 3: 2}
        assert shares.unmatched == 1  # a row no chunk sent is never guessed onto a file
        read = {k: list(csv.reader(io.StringIO(p.read_text()))) for k, p in shares.paths.items() if p is not None}
        assert read[1] == [["email", "firstName", "Import Failure Reason"], ["", "NoEmail", why]]
        assert read[2][1:] == [["", "No, Email", why]]
        assert read[3][1:] == [["", "NoEmail", why], ["", "NoEmail", why]]
        assert shares.paths[1] == tmp_path / "a.failures"

    def test_no_rows_no_files_and_an_old_share_is_removed(self, tmp_path):
        a = chunk_file(tmp_path, "a", b"ann@x.com,Ann\n")
        (tmp_path / "a.warnings").write_bytes(b"stale")
        shares = share_results(b"", [Member(1, a)], FileFormat.CSV, "warnings")
        assert shares.paths == {1: None} and shares.rows == {1: 0}
        assert not (tmp_path / "a.warnings").exists()
