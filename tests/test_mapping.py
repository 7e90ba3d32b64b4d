"""Column mapping and constants: the pure plan, the configuration, the rewriting split, the way back."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropzone import config, mapping, outbox
from dropzone.config import Route
from dropzone.daemon import Daemon
from dropzone.errors import ConfigError, InputError, SplitError
from dropzone.jobs import ChunkState, FileState
from dropzone.kinds import FileFormat, ObjectKind
from dropzone.mapping import LineMap, ReverseMap, build_plan
from dropzone.prepare import check_header
from dropzone.simulator import Simulator
from dropzone.splitting import SplitResult, split
from tests.conftest import wait_until
from tests.helpers import daemons, drop, make_config, run_until_idle, status_of

# --- the plan (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "columns", "constants", "names", "keep", "missing", "rewrites"),
    [
        pytest.param(["E-mail Address", "First Name"], [("E-mail Address", "email")], [],
                     ["email", "First Name"], (0, 1), (), False, id="rename-exact"),
        pytest.param([" e-mail ADDRESS ", "x"], [("E-mail Address", "email")], [],
                     ["email", "x"], (0, 1), (), False, id="rename-ignoring-case-and-spaces"),
        pytest.param(["Email", "EMAIL"], [("Email", "email")], [],
                     ["email", "EMAIL"], (0, 1), (), False, id="exact-first"),
        pytest.param(["a", "Internal Ref", "b"], [("internal ref", None)], [],
                     ["a", "b"], (0, 2), (), True, id="drop"),
        pytest.param(["a", "ref", "REF"], [("Ref", None)], [], ["a"], (0,), (), True, id="drop-every-match"),
        pytest.param(["a"], [], [("leadSource", "Expo 2026")], ["a", "leadSource"], (0,), (), True, id="constant"),
        pytest.param(["a"], [("Gone", "x"), ("Also", None)], [], ["a"], (0,), ("Gone", "Also"), False,
                     id="missing-columns"),
        pytest.param(["b", "a"], [("a", "x"), ("b", "y")], [], ["y", "x"], (0, 1), (), False, id="file-order"),
    ],
)
def test_plan(fields, columns, constants, names, keep, missing, rewrites) -> None:
    plan = build_plan(fields, columns, constants)
    assert (list(plan.names), plan.keep, plan.missing, plan.rewrites_records) == (names, keep, missing, rewrites)
    plan.check_unique()


@pytest.mark.parametrize(
    ("fields", "columns", "constants", "words"),
    [
        (["a", "b"], [("a", None), ("B", None)], [], "every column on line 1 is dropped"),
        (["email", "EMAIL"], [("Email", "email")], [], "'email' and 'EMAIL' on line 1 both match 'Email'"),
        (["email", "E-mail"], [("E-mail", "email")], [],
         "'email' on line 1 would be sent twice: as column 'email', passed through unchanged, and as column "
         "'E-mail', renamed"),
        (["leadSource", "email"], [], [("leadSource", "x")],
         "'leadSource' on line 1 would be sent twice: it is column 'leadSource', passed through unchanged, "
         "and a constant of the route; drop the column"),
        (["a", "a"], [], [], "header column 'a' appears twice on line 1"),
    ],
)
def test_plan_refusals(fields, columns, constants, words) -> None:
    with pytest.raises(InputError) as caught:
        build_plan(fields, columns, constants).check_unique()
    assert words in str(caught.value) and caught.value.line == 1


@pytest.mark.parametrize(
    ("drop", "row", "sent"),
    [
        ("B", ["a", "b", "c"], ["a", "c", "k"]),
        ("B", ["a", "b"], ["a", "k"]),  # C missing: stays short of a column, Marketo fails it as ragged
        ("C", ["a", "b"], ["a", "b", "k"]),  # only a dropped column missing: every value still in place
        ("B", ["a", "b", "c", "x"], ["a", "c", "x", "k"]),  # extra field: stays ragged
    ],
)
def test_record(drop, row, sent) -> None:
    plan = build_plan(["A", "B", "C"], [(drop, None)], [("K", "k")])
    assert plan.record(row) == sent


def test_a_record_with_nothing_to_send_is_never_a_blank_line() -> None:
    assert build_plan(["A", "B"], [("A", None)]).record(["a"]) == [""]


def test_reverse_map_renames_back_and_removes_constants() -> None:
    plan = build_plan(["E-mail Address", "Ref", "city"], [("e-mail address", "email"), ("Ref", None)],
                      [("leadSource", "Expo")])
    reverse = plan.reverse()
    assert reverse == ReverseMap(columns=(("email", "E-mail Address"),), constants=("leadSource",))
    assert ReverseMap.decode(reverse.encode()) == reverse
    header = ["email", "city", "leadSource", "Import Failure Reason"]
    rows = [["", "Paris", "Expo", "no email"], ["x", "y", "z", "w", "ragged"]]
    assert reverse.apply(header, rows) == (
        ["E-mail Address", "city", "Import Failure Reason"],
        [["", "Paris", "no email"], ["x", "y", "z", "w", "ragged"]],
    )
    # Marketo left the constant's column out of this file: nothing to remove, names still given back.
    assert reverse.apply(["email", "Import Failure Reason"], [["a", "r"]]) == (
        ["E-mail Address", "Import Failure Reason"], [["a", "r"]]
    )
    assert not build_plan([" a "], []).trimmed().reverse(), "a trimmed name is no rename"


def test_line_map() -> None:
    lines = LineMap(((1, 2), (4, 5)))
    assert [lines.source_line(10, k) for k in (0, 1, 2, 4, 9)] == [10, 13, 14, 19, 24]
    assert LineMap.decode(lines.encode()) == lines
    assert LineMap().source_line(7, 3) == 10
    for bad in (b"{}", b'{"version": 1, "points": [1]}', b"[1", b'{"version": 1, "points": 3}'):
        with pytest.raises(ValueError):
            LineMap.decode(bad)
    with pytest.raises(ValueError):
        ReverseMap.decode(b'{"version": 1}')


# --- the header check in prepare, and its seam -------------------------------------


def _route(**kw: Any) -> Route:
    return Route(match="*.csv", object=kw.pop("object", ObjectKind.LEADS), **kw)


class TestCheckHeader:
    def test_mapped_names_need_no_trim_but_passed_through_ones_do(self) -> None:
        route = _route(columns=((" E-mail Address", "email"),))
        notes: list[str] = []
        assert check_header("x.csv", route, ["E-mail Address ", "city"], notes).names == ("email", "city")
        with pytest.raises(InputError, match=r"x.csv: header names with spaces around them \(' city'\)"):
            check_header("x.csv", route, ["E-mail Address ", " city"], notes)
        trimmed = _route(columns=route.columns, trim_header=True)
        assert check_header("x.csv", trimmed, ["E-mail Address", " city"], notes).names == ("email", "city")

    def test_missing_columns_are_noted_and_refusals_name_the_file_and_line_1(self) -> None:
        route = _route(columns=(("Gone", "email"), ("a", None)), constants=(("b", "1"),))
        notes: list[str] = []
        check_header("x.csv", route, ["a", "c"], notes)
        assert notes == ["columns listed in the route's columns but not in this file: 'Gone'"]
        with pytest.raises(InputError) as caught:
            check_header("sub/x.csv", route, ["a", "b"], notes)
        assert str(caught.value).startswith("sub/x.csv: 'b' on line 1 would be sent twice") and caught.value.line == 1

    def test_the_seam_respells_names_after_mapping(self) -> None:
        """The pre-flight's hook sees the mapped names (constants included) and may respell them."""
        seen: list[list[str]] = []

        def as_marketo(route: Route, names: list[str], notes: list[str]) -> list[str]:
            seen.append(names)
            return [n.lower() if n != "leadSource" else n for n in names]

        route = _route(columns=(("Mail", "EMAIL"),), constants=(("leadSource", "x"),))
        plan = check_header("x.csv", route, ["Mail", "City"], [], as_marketo)
        assert seen == [["EMAIL", "City", "leadSource"]]
        assert plan.names == ("email", "city", "leadSource")
        assert plan.reverse() == ReverseMap((("email", "Mail"), ("city", "City")), ("leadSource",))

        def collide(route: Route, names: list[str], notes: list[str]) -> list[str]:
            return ["email"] * len(names)

        with pytest.raises(InputError, match=r"x\.csv: 'email' on line 1 would be sent twice"):
            check_header("x.csv", route, ["Mail", "City"], [], collide)

    def test_program_members_may_get_their_email_column_by_mapping(self) -> None:
        route = _route(object=ObjectKind.PROGRAM_MEMBER, columns=(("Mail", "email"),))
        assert check_header("x.ssv", route, ["Mail"], []).names == ("email",)
        with pytest.raises(InputError, match="need an 'email' column"):
            check_header("x.ssv", _route(object=ObjectKind.PROGRAM_MEMBER, columns=(("Mail", None),)),
                         ["Mail", "x"], [])


# --- configuration -----------------------------------------------------------------


def _config(route: dict[str, Any]) -> Route:
    doc = {
        "marketo": {"endpoint": "https://1-A-2.mktorest.com", "client_id": "i", "client_secret": "s"},
        "state_dir": "/var/lib/dropzone",
        "inboxes": [{
            "path": "/srv/in",
            "outbox": "/srv/out",
            "routes": [{"match": "x.csv", "object": "leads"}, {"match": "*.csv", "object": "leads", **route}],
        }],
    }
    return config.parse(yaml.safe_dump(doc, sort_keys=False), environ={}).inboxes[0].routes[1]


class TestConfig:
    def test_columns_and_constants(self) -> None:
        route = _config({"columns": {"E-mail Address": "email", "Internal Ref": None},
                         "constants": {"leadSource": "Expo 2026", "leadScore": 10, "unsubscribed": False,
                                       "rate": 1.5}})
        assert route.columns == (("E-mail Address", "email"), ("Internal Ref", None))
        assert route.constants == (("leadSource", "Expo 2026"), ("leadScore", "10"), ("unsubscribed", "false"),
                                   ("rate", "1.5"))
        assert route.redacted()["columns"] == {"E-mail Address": "email", "Internal Ref": None}

    @pytest.mark.parametrize(
        ("route", "words"),
        [
            ({"columns": ["a"]}, 'routes[1].columns: expected a mapping of names, got a list'),
            ({"columns": {"First Name": ""}}, 'routes[1].columns["First Name"]: must not be empty'),
            ({"columns": {"First Name": 3}}, 'routes[1].columns["First Name"]: expected a Marketo field name'),
            ({"columns": {"a": " email"}}, 'routes[1].columns["a"]: \' email\' has spaces around it'),
            ({"columns": {"a": "email", "b": "email"}},
             'routes[1].columns["b"]: \'email\' is already the field of inboxes[0].routes[1].columns["a"]'),
            ({"columns": {"Mail": "email", " mail": "x"}},
             'routes[1].columns[" mail"]: matches the same header names as inboxes[0].routes[1].columns["Mail"]'),
            ({"columns": {1: "email"}}, "routes[1].columns: names must be strings (quote 1)"),
            ({"constants": {"leadSource": "a\nb"}}, 'routes[1].constants["leadSource"]: has a line break'),
            ({"constants": {"leadSource": None}}, 'constants["leadSource"]: expected text, a number or true/false'),
            ({"constants": {"leadSource": [1]}}, 'constants["leadSource"]: expected text, a number or true/false'),
            ({"constants": {"x y ": "v"}}, 'constants["x y "]: \'x y \' has spaces around it'),
            ({"columns": {"Source": "leadSource"}, "constants": {"leadSource": "v"}},
             'constants["leadSource"]: is also the field of inboxes[0].routes[1].columns["Source"]'),
        ],
    )
    def test_refusals_name_the_key(self, route: dict[str, Any], words: str) -> None:
        with pytest.raises(ConfigError) as caught:
            _config(route)
        assert words in str(caught.value)


# --- the rewriting split -----------------------------------------------------------


class Chunks:
    """Chunks and line maps in memory, as the splitter hands them out."""

    def __init__(self) -> None:
        self.data: dict[int, io.BytesIO] = {}
        self.lines: dict[int, LineMap] = {}

    @contextlib.contextmanager
    def open(self, index: int) -> Iterator[BinaryIO]:
        self.data[index] = io.BytesIO()
        yield self.data[index]

    def line_map(self, index: int, lines: LineMap) -> None:
        assert index not in self.lines
        self.lines[index] = lines

    def rows(self, index: int, delimiter: str = ",") -> list[list[str]]:
        text = self.data[index].getvalue().decode()
        return list(csv.reader(io.StringIO(text, newline="\n"), delimiter=delimiter))


def _split_mapped(data: bytes, plan: mapping.Plan, chunks: Chunks, **kw: Any) -> SplitResult:
    header = (lambda fields: plan) if plan.rewrites_records else (lambda fields: list(plan.names))
    return split(io.BytesIO(data), chunks.open, header_check=header, line_map=chunks.line_map, **kw)


class TestRewritingSplit:
    def test_a_rename_alone_keeps_records_byte_for_byte(self) -> None:
        data = b'E-mail Address,Notes\r\na@x.com,"two\nlines"\r\nb@x.com,"q""uote"\r\n'
        chunks = Chunks()
        result = _split_mapped(data, build_plan(["E-mail Address", "Notes"], [("E-mail Address", "email")]), chunks)
        assert chunks.data[0].getvalue() == b"email,Notes\r\n" + data.split(b"\r\n", 1)[1]
        assert result.header == b"email,Notes\r\n" and chunks.lines == {}

    def test_mapped_file_crossing_chunks_keeps_source_lines(self) -> None:
        """Dropped multi-line notes leave chunks with fewer lines: each chunk's lines stay the source's."""
        plan = build_plan(["email", "notes", "name"], [("notes", None), ("name", "firstName")],
                          [("leadSource", "Expo, 2026")])
        records = [f'u{i}@x.com,"{"n" + chr(10) * (i % 3)}",Name {i}\n' for i in range(40)]
        data = ("email,notes,name\n" + "".join(records)).encode()
        chunks = Chunks()
        result = _split_mapped(data, plan, chunks, max_bytes=120, block_size=64)
        assert len(result.chunks) > 5 and result.rows == 40
        assert all(len(chunks.data[c.index].getvalue()) == c.size <= 120 for c in result.chunks)
        sent = [row for c in result.chunks for row in chunks.rows(c.index)[1:]]
        assert sent == [[f"u{i}@x.com", f"Name {i}", "Expo, 2026"] for i in range(40)]
        starts, line = [], 2
        for i in range(40):
            starts.append(line)
            line += 1 + i % 3
        for c in result.chunks:
            lines = chunks.lines.get(c.index, LineMap())
            k = [lines.source_line(c.first_line, j) for j in range(c.rows)]  # one physical line per record sent
            assert k == starts[starts.index(c.first_line) : starts.index(c.first_line) + c.rows]
            assert c.last_line == starts[starts.index(c.first_line) + c.rows - 1] + (
                starts.index(c.first_line) + c.rows - 1) % 3
        assert result.chunks[-1].last_line == line - 1 and result.chunks[0].source_start == len("email,notes,name\n")
        assert result.chunks[-1].source_end == len(data)

    def test_transcoded_source_keeps_source_offsets(self) -> None:
        data = "Straße,Notiz\nmüller@x.de,\"ä\nö\"\nb@x.de,é\n".encode("cp1252")
        plan = build_plan(["Straße", "Notiz"], [("Notiz", None)], [("k", "ü")])
        chunks = Chunks()
        result = _split_mapped(data, plan, chunks, max_bytes=30, encoding="cp1252")
        assert [chunks.rows(c.index) for c in result.chunks] == [[["Straße", "k"], ["müller@x.de", "ü"]],
                                                                  [["Straße", "k"], ["b@x.de", "ü"]]]
        assert [(c.source_start, c.source_end, c.first_line, c.last_line) for c in result.chunks] == [
            (13, 31, 2, 3), (31, len(data), 4, 4)]

    def test_blank_lines_and_a_last_record_without_line_break(self) -> None:
        plan = build_plan(["a", "b"], [("b", None)], [("k", "v")])
        chunks = Chunks()
        result = _split_mapped(b"a,b\r\n1,\"x\r\ny\"\r\n\r\n2,z", plan, chunks)
        assert chunks.data[0].getvalue() == b"a,k\r\n1,v\r\n\r\n2,v"
        assert (result.rows, result.ends_with_newline, result.chunks[0].last_line) == (3, False, 5)
        assert chunks.lines[0] == LineMap(((1, 1),))

    @pytest.mark.parametrize(
        ("data", "words", "line"),
        [
            (b'a,b\n1,2\n3,x"y\n4,"5\n', 'line 3: a " inside a value that is not quoted', 3),
            (b'a,b\n1,"a"b"\nc"\n', 'line 2: a " inside a value', 2),
            (b'a,b\n0,0\n1"x,"y\nz\n2,3\n', 'line 3: a " inside a value', 3),  # csv reads a quote parity does not
            (b"a,b\n1,2\n3,x\ry\n", "line 3: this record cannot be read to map its columns", 3),
            (b"a,b\n1,2\n" + b"3," + b"x" * 60 + b"\n", "line 3: the record starting here is larger", 3),
        ],
    )
    def test_refusals_name_the_line(self, data: bytes, words: str, line: int) -> None:
        plan = build_plan(["a", "b"], [], [("k", "y" * 20)])
        with pytest.raises(SplitError) as caught:
            _split_mapped(data, plan, Chunks(), max_bytes=80)
        assert words in str(caught.value) and caught.value.line == line


# --- property: any records survive the mapping, and come back to their lines ------------

_PIECES = ["a", "Z", " ", ",", ";", "\t", '"', "\r", "\n", "é", "\r\n"]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=6).map("".join)


@st.composite
def _files(draw: st.DrawFn) -> dict[str, Any]:
    width = draw(st.integers(1, 4))
    fate = draw(st.lists(st.sampled_from(["keep", "rename", "drop"]), min_size=width, max_size=width))
    if all(f == "drop" for f in fate):
        fate[0] = "keep"
    one_line = _TEXT.map(lambda t: t.replace("\r", "").replace("\n", ""))
    constants = [(f"k{i}", v) for i, v in enumerate(draw(st.lists(one_line, max_size=2)))]
    rows = draw(st.lists(st.lists(_TEXT, min_size=width, max_size=width), min_size=1, max_size=25))
    return {
        "fields": [f"c,{i}" if i % 2 else f"c{i}" for i in range(width)],
        "columns": [(f"c,{i}" if i % 2 else f"c{i}", None if f == "drop" else f"f{i}")
                    for i, f in enumerate(fate) if f != "keep"],
        "constants": constants,
        "rows": rows,
        "fmt": draw(st.sampled_from(list(FileFormat))),
        "ending": draw(st.sampled_from(["\n", "\r\n"])),
        "terminated": draw(st.booleans()),
        "room": draw(st.integers(0, 200)),
        "block": draw(st.sampled_from([7, 64, 1 << 16])),
    }


def _csv_line(fields: list[str], delimiter: str, ending: str) -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerow(fields)
    return out.getvalue()[:-2] + ending


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_files())
def test_records_survive_mapping_and_come_back_to_their_source_lines(f: dict[str, Any]) -> None:
    delimiter = f["fmt"].delimiter
    header = _csv_line(f["fields"], delimiter, f["ending"])
    lines = [_csv_line(row, delimiter, f["ending"]) for row in f["rows"]]
    if not f["terminated"]:
        lines[-1] = lines[-1][: -len(f["ending"])]
    starts = [header.count("\n") + 1]
    for text in lines[:-1]:
        starts.append(starts[-1] + text.count("\n"))
    data = (header + "".join(lines)).encode()
    plan = build_plan(f["fields"], f["columns"], f["constants"])
    expected = [plan.record(row) for row in f["rows"]]
    biggest = max(len(_csv_line(r, delimiter, f["ending"]).encode()) for r in [list(plan.names), *expected])
    biggest = max(biggest, *(len(text.encode()) for text in [header, *lines]))
    chunks = Chunks()
    result = _split_mapped(data, plan, chunks, fmt=f["fmt"], max_bytes=2 * biggest + f["room"],
                           block_size=f["block"])
    assert result.rows == len(f["rows"]) and result.ends_with_newline == f["terminated"]
    sent = []
    for c in result.chunks:
        rows = chunks.rows(c.index, delimiter)
        assert rows[0] == list(plan.names) and len(rows) - 1 == c.rows
        sent.extend(rows[1:])
    assert sent == expected
    for lines in chunks.lines.values():  # compact: a point only where the drift grows
        assert lines and all(a[0] < b[0] and a[1] < b[1] for a, b in itertools.pairwise(lines.points))
    # The way back: every row as if Marketo failed it, through the outbox, with line maps from disk.
    reverse = plan.reverse()
    with tempfile.TemporaryDirectory() as tmp:
        pieces = []
        for c in result.chunks:
            path = Path(tmp) / f"chunk.part{c.index:04d}"
            path.write_bytes(chunks.data[c.index].getvalue())
            if c.index in chunks.lines:
                mapping.line_map_path(path).write_bytes(chunks.lines[c.index].encode())
            failed = [[*plan.names, "Reason"]] + [[*r, "bad"] for r in chunks.rows(c.index, delimiter)[1:]]
            body = "".join(_csv_line(r, delimiter, "\n") for r in failed)
            pieces.append(outbox.ChunkRows(path, c.first_line, body.encode()))
        merged, count = outbox.merge_rows(pieces, fmt=f["fmt"], reverse=reverse)
    assert merged is not None and count == len(f["rows"])
    back = list(csv.reader(io.StringIO(merged.decode(), newline="\n"), delimiter=delimiter))
    kept = len(plan.keep)
    assert back[0] == [*(f["fields"][i] for i in plan.keep), "Reason", "Source Line"]
    assert back[1:] == [[*row[:kept], "bad", str(line)] for row, line in zip(expected, starts, strict=True)]


def test_line_maps_are_read_from_beside_the_chunk(tmp_path: Path) -> None:
    """An unreadable line map gives no source lines rather than wrong ones."""
    path = tmp_path / "chunk.part0000"
    path.write_text("a,k\n1,v\n2,v\n")
    mapping.line_map_path(path).write_bytes(b"garbage")
    body = b"a,k,Reason\n2,v,bad\n"
    merged, _ = outbox.merge_rows([outbox.ChunkRows(path, 5, body)], fmt="csv")
    assert merged is not None and merged.decode().splitlines()[1] == "2,v,bad,"
    mapping.line_map_path(path).write_bytes(LineMap(((1, 3),)).encode())
    merged, _ = outbox.merge_rows([outbox.ChunkRows(path, 5, body)], fmt="csv")
    assert merged is not None and merged.decode().splitlines()[1] == "2,v,bad,9"



# --- end to end: a real daemon, the simulator over HTTP ---------------------------

EXPO = """
      - match: "expo_*.csv"
        object: leads
        lookupField: email
        columns:
          "E-mail Address": email
          "First Name": firstName
          "Internal Ref": null
          "Fax Number": fax
        constants:
          leadSource: Expo 2026
"""
# A partner's file: a dropped field with line breaks before each failing row.
EXPO_FILE = (
    '"E-mail Address","First Name",Internal Ref,city\n'
    'ann@example.com,Ann,"ref\nwith\nlines",Paris\n'  # lines 2-4
    ",NoEmail,r2,Rome\n"  # line 5: no email, fails
    'bob@example.com,"Bob ""B""",x,Oslo\n'  # line 6
    '"",Cy,"a\nb",Lima\n'  # lines 7-8: fails
    "cat@example.com,Cat,,Kyiv\n"  # line 9
)
FAILED_BACK = [
    ["E-mail Address", "First Name", "city", "Import Failure Reason", "Source Line"],
    ["", "NoEmail", "Rome", "Value for lookup field 'email' not found", "5"],
    ["", "Cy", "Lima", "Value for lookup field 'email' not found", "7"],
]


def _failures(tmp_path: Path, name: str) -> list[list[str]]:
    text = (tmp_path / "outbox" / f"{name}.failures.csv").read_text(encoding="utf-8")
    return list(csv.reader(io.StringIO(text, newline="")))


@pytest.fixture
def make(tmp_path: Path, simulator: Simulator) -> Iterator[Any]:
    yield from daemons(tmp_path, simulator.base_url)


class TestEndToEnd:
    def test_a_mapped_file_lands_under_marketo_fields_and_fails_back_in_partner_names(
        self, tmp_path, simulator, make
    ) -> None:
        daemon = make(routes=EXPO, extra="split_max_bytes: 120")
        drop(tmp_path, "expo_1.csv", EXPO_FILE)
        run_until_idle(daemon)
        status = status_of(tmp_path, "expo_1.csv")
        assert (status["status"], status["rowsTotal"], status["rowsFailed"]) == ("Partial", 5, 2)
        assert len(status["batches"]) > 1
        assert "columns listed in the route's columns but not in this file: 'Fax Number'" in status["notes"]
        imported = sorted(simulator.imported_rows(), key=lambda r: r["row"]["email"])
        assert [r["row"] for r in imported] == [
            {"email": "ann@example.com", "firstName": "Ann", "city": "Paris", "leadSource": "Expo 2026"},
            {"email": "bob@example.com", "firstName": 'Bob "B"', "city": "Oslo", "leadSource": "Expo 2026"},
            {"email": "cat@example.com", "firstName": "Cat", "city": "Kyiv", "leadSource": "Expo 2026"},
        ]
        assert _failures(tmp_path, "expo_1.csv") == FAILED_BACK

    def test_files_with_other_partner_headers_but_one_mapped_header_share_an_import(
        self, tmp_path, simulator, make
    ) -> None:
        daemon = make(routes=EXPO)
        daemon.dispatch.pauses.submits_until = float("inf")  # a backlog builds up, as behind a full queue
        drop(tmp_path, "expo_a.csv", EXPO_FILE)
        drop(tmp_path, "expo_b.csv", '" e-mail address",FIRST NAME,city\n,Dee,Rome\ndee@example.com,Dee,Bern\n')
        daemon.rescan_now()

        def both_split() -> bool:
            daemon.run_once()
            return len(daemon.store.files([FileState.SPLIT])) == 2

        wait_until(both_split, timeout=20)
        daemon.dispatch.pauses.submits_until = 0.0
        run_until_idle(daemon)
        [shared] = simulator.submissions()
        assert shared["rows"] == 7
        assert status_of(tmp_path, "expo_b.csv")["batches"][0]["sharedWith"] == 1
        assert _failures(tmp_path, "expo_a.csv") == FAILED_BACK
        assert _failures(tmp_path, "expo_b.csv") == [
            [" e-mail address", "FIRST NAME", "city", "Import Failure Reason", "Source Line"],
            ["", "Dee", "Rome", "Value for lookup field 'email' not found", "2"],
        ]

    def test_the_way_back_survives_a_restart_with_the_mapping_gone(self, tmp_path, sim_config) -> None:
        """Split under one configuration, reported under another: the partner still gets their names."""
        plain = '\n      - match: "expo_*.csv"\n        object: leads\n'
        with Simulator(dataclasses.replace(sim_config, instant=False, import_seconds_per_job=0.5)) as sim:
            daemon = Daemon(make_config(tmp_path, sim.base_url, routes=EXPO))
            daemon.start()
            try:
                drop(tmp_path, "expo_2.csv", EXPO_FILE)

                def sent() -> bool:
                    daemon.run_once()
                    return bool(daemon.store.chunks([ChunkState.SUBMITTED]))

                wait_until(sent, timeout=20)
            finally:
                daemon.close()
            again = Daemon(make_config(tmp_path, sim.base_url, routes=plain))
            again.start()
            try:
                run_until_idle(again)
            finally:
                again.close()
            assert len(sim.submissions()) == 1
        assert _failures(tmp_path, "expo_2.csv") == FAILED_BACK
