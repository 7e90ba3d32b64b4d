"""Real SFTP, end to end: OpenSSH's sshd and sftp client, a real daemon process, the simulator.

Each test starts a throwaway sshd (``tests/sftp_server.py``) whose only
service is ``internal-sftp`` rooted at the inbox, and a ``dropzone run``
subprocess watching that inbox, then uploads the way partners do: in place
(OpenSSH's ``sftp put``), to a temporary name then ``rename`` (WinSCP's
``.filepart``), killed halfway, and again under the same name. The simulator
says what reached "Marketo": every complete file exactly once and whole,
nothing from an upload that never finished under a temporary name, and an
in-place upload cut short flagged in its status.

A killed upload ends on a multiple of the client's write size (``-B``,
``BUFFER``): the server only applies whole write requests. The files for the
killed in-place uploads are built so that every such multiple falls inside
one chosen field, which makes where the cut lands deterministic.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dropzone import watching
from dropzone.simulator import Simulator
from tests.conftest import CLIENT_ID, CLIENT_SECRET, wait_until
from tests.sftp_server import BUFFER, SftpServer, kill, sftp_server

pytestmark = pytest.mark.slow

HEADER = "email,firstName,lastName,address"
QUIET_PERIOD = 2.0  # above the longest stall of a throttled sftp upload (it writes every few ms)
STALE_AFTER = 3.0  # a temporary upload unchanged this long is reported as abandoned


# ---- fixtures and helpers -------------------------------------------------


@pytest.fixture
def sftp(tmp_path: Path) -> Iterator[SftpServer]:
    with sftp_server(tmp_path / "ssh", tmp_path / "inbox") as server:
        yield server


def write_config(tmp_path: Path, base_url: str, quiet_period: float = QUIET_PERIOD) -> Path:
    for name in ("inbox", "outbox", "archive"):
        (tmp_path / name).mkdir(exist_ok=True)
    path = tmp_path / "dropzone.yaml"
    path.write_text(
        f"""
marketo:
  endpoint: {base_url}
  client_id: {CLIENT_ID}
  client_secret: ${{TEST_SECRET}}
  poll_interval: 0.3
  max_retry_seconds: 5
state_dir: state
log: {{format: json, level: debug}}
inboxes:
  - path: inbox
    outbox: outbox
    archive: archive
    quiet_period: {quiet_period}
    stale_partial_after: {STALE_AFTER}
    scan_interval: 0.5
    routes:
      - match: "leads_*.csv"
        object: leads
"""
    )
    return path


@contextmanager
def daemon(tmp_path: Path, sim: Simulator, quiet_period: float = QUIET_PERIOD) -> Iterator[Path]:
    """A ``dropzone run`` subprocess on ``tmp_path``'s inbox; yields its log; SIGTERM must end it with 0."""
    config = write_config(tmp_path, sim.base_url, quiet_period)
    log = tmp_path / "daemon.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dropzone", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TEST_SECRET": CLIENT_SECRET},
        )
    ok = False
    try:
        wait_until(lambda: '"daemon_started"' in log.read_text() or proc.poll() is not None, timeout=20)
        assert proc.poll() is None, f"the daemon exited {proc.returncode} at start:\n{log.read_text()[-4000:]}"
        yield log
        ok = True
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(timeout=10)
    if ok:
        assert code == 0, f"the daemon exited {code}:\n{log.read_text()[-4000:]}"


def events(log: Path, name: str) -> list[dict]:
    found = []
    for line in log.read_text().splitlines():
        if f'"{name}"' in line:
            found.append(json.loads(line))
    return found


def statuses(tmp_path: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in (tmp_path / "outbox").glob("*.status.json")}


def wait_for_statuses(tmp_path: Path, count: int, log: Path, timeout: float = 30) -> dict[str, dict]:
    try:
        wait_until(lambda: len(statuses(tmp_path)) >= count, timeout=timeout, interval=0.1)
    except AssertionError:
        raise AssertionError(f"{count} status file(s) expected; daemon log:\n{log.read_text()[-4000:]}") from None
    return statuses(tmp_path)


def rows_of(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def assert_imported_once_and_whole(sim: Simulator, *files: bytes) -> None:
    """Every row of every file reached the simulator exactly once, with every value as sent; nothing else did."""
    imported = [r["row"] for r in sim.imported_rows()]
    counts = Counter(r["email"] for r in imported)
    twice = [email for email, n in counts.items() if n > 1]
    assert not twice, f"{len(twice)} rows imported more than once, e.g. {twice[:3]}"
    wanted = {r["email"]: r for data in files for r in rows_of(data)}
    got = {r["email"]: r for r in imported}
    assert set(got) == set(wanted), (
        f"{len(set(wanted) - set(got))} rows missing, {len(set(got) - set(wanted))} unexpected"
    )
    changed = [email for email in wanted if got[email] != wanted[email]]
    assert not changed, f"{len(changed)} rows arrived altered, e.g. {got[changed[0]]!r} != {wanted[changed[0]]!r}"


def archived(tmp_path: Path) -> dict[str, bytes]:
    root = tmp_path / "archive"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def inbox_files(tmp_path: Path) -> list[str]:
    inbox = tmp_path / "inbox"
    return sorted(str(p.relative_to(inbox)) for p in inbox.rglob("*") if p.is_file() and ".processing" not in p.parts)


def leads(prefix: str, count: int, pad: int = 0) -> bytes:
    """A leads file: quoted multi-line addresses, ``pad`` extra bytes per record."""
    lines = [HEADER]
    for i in range(count):
        lines.append(f'{prefix}{i:06d}@example.com,First{i},Last{i},"{i} Main Street\nSuite {i % 97}\n{"x" * pad}"')
    return ("\n".join(lines) + "\n").encode()


Render = Callable[[int, int], tuple[bytes, bytes, bytes]]


def cut_inside(render: Render, count: int, *, base: int = 40) -> tuple[bytes, list[tuple[int, int]]]:
    """A file in which every multiple of ``BUFFER`` falls strictly inside one record's stretchable field.

    ``render(i, n)`` gives record ``i`` as (bytes before the field, the field's
    content of length ``n``, bytes after it, line break included). Whenever
    the next multiple would fall outside a field, the current field is
    lengthened to cover it. Returns the file and each field's [start, end).
    """
    out = bytearray((HEADER + "\n").encode())
    fields: list[tuple[int, int]] = []
    for i in range(count):
        pos = len(out)
        before, _, after = render(i, base)
        start = pos + len(before)
        m = -(-pos // BUFFER) * BUFFER  # the first multiple at or after this record
        assert m > start, "a multiple fell before the field: the previous record was not stretched"
        n = base
        next_start = start + n + len(after) + len(render(i + 1, base)[0])
        if start + n <= m <= next_start:
            n = m - start + 3
        before, field, after = render(i, n)
        assert len(field) == n
        fields.append((start, start + n))
        out += before + field + after
    data = bytes(out)
    for m in range(BUFFER, len(data), BUFFER):
        assert any(s < m < e for s, e in fields), f"offset {m} is not inside a field"
    return data, fields


def quoted_address(i: int, n: int) -> tuple[bytes, bytes, bytes]:
    body = f"{i} Main Street\nSuite 7\n".encode()
    body = (body + b"y" * n)[:n] if n >= len(body) else b"y" * n
    return f"q{i:06d}@example.com,First{i},Last{i},\"".encode(), body, b'"\n'


def unquoted_last_name(i: int, n: int) -> tuple[bytes, bytes, bytes]:
    return f"u{i:06d}@example.com,First{i},".encode(), (f"Last{i}" + "z" * n)[:n].encode(), b",Main Street\n"


def unquoted_address(i: int, n: int) -> tuple[bytes, bytes, bytes]:
    return f"u{i:06d}@example.com,First{i},Last{i},".encode(), (f"{i} Main Street " + "z" * n)[:n].encode(), b"\n"


def upload_and_kill(sftp: SftpServer, source: Path, remote: str, *, limit_kbit: int, fraction: float) -> int:
    """Start a throttled ``put``, SIGKILL the client (and its ssh) once ``fraction`` arrived; the size left."""
    total = source.stat().st_size
    target = sftp.inbox / remote
    proc = sftp.start([f"put {source} {remote}"], limit_kbit=limit_kbit)
    try:
        wait_until(lambda: target.exists() and target.stat().st_size >= total * fraction, timeout=30)
    finally:
        kill(proc)
    # The server applies the write requests it has whole, then closes the file: wait until it stops growing.
    last = [-1]

    def settled() -> bool:
        size = target.stat().st_size
        same = size == last[0]
        last[0] = size
        return same

    wait_until(settled, timeout=10, interval=0.3)
    size = target.stat().st_size
    assert 0 < size < total, f"the kill did not cut the upload short ({size} of {total} bytes)"
    assert size % BUFFER == 0, f"{size} bytes: not a whole number of {BUFFER}-byte writes"
    return size


# ---- the tests ---------------------------------------------------------------


def test_in_place_throttled_upload_is_taken_only_when_finished(tmp_path, simulator, sftp):
    """(a) A 2.5 MB ``put`` under the final name, throttled to ~5 s: imported once, whole, never early."""
    data = leads("a", 10_000, pad=180)
    assert 2_400_000 < len(data) < 2_700_000
    source = tmp_path / "big.csv"
    source.write_bytes(data)
    with daemon(tmp_path, simulator) as log:
        began = time.monotonic()
        sftp.upload([f"put {source} leads_a.csv"], limit_kbit=4000)
        took = time.monotonic() - began
        assert took > 3.5, f"the upload took {took:.1f} s: not throttled enough to test anything"
        # The daemon's quiet period has not passed since the last write: the file must still be there.
        assert (sftp.inbox / "leads_a.csv").exists(), "the daemon took the file before the upload ended"
        done = wait_for_statuses(tmp_path, 1, log)
    status = done["leads_a.csv.status.json"]
    assert status["status"] == "Complete", status
    assert status["rowsTotal"] == status["rowsProcessed"] == 10_000
    assert "notes" not in status, status["notes"]
    assert len(simulator.submissions()) == 1
    assert_imported_once_and_whole(simulator, data)
    assert list(archived(tmp_path).values()) == [data]
    assert inbox_files(tmp_path) == []


def test_in_place_upload_stalling_longer_than_the_quiet_period_is_held_back_while_open(tmp_path, simulator, sftp):
    """(a) Stalls of ~1.3 s against a 0.3 s quiet period: only the open-for-write check stops an early claim.

    The daemon can see the sftp-server's write descriptor when it runs as the
    same user as sshd's session (or as root); where it cannot, the quiet
    period alone must exceed the longest stall.
    """
    data = leads("s", 400, pad=200)[: 3 * BUFFER + 1000]
    data = data[: data.rfind(b"\n") + 1]
    assert 3 * BUFFER < len(data) < 4 * BUFFER  # four writes, ~1.3 s apart at 200 kbit/s
    source = tmp_path / "s.csv"
    source.write_bytes(data)
    target = sftp.inbox / "leads_s.csv"
    with daemon(tmp_path, simulator, quiet_period=0.3) as log:
        proc = sftp.start([f"put {source} leads_s.csv"], limit_kbit=200)
        try:
            wait_until(lambda: target.exists() and target.stat().st_size > 0, timeout=20)
            if not watching.is_open_for_writing(target):
                pytest.skip("this process cannot see sshd's open file descriptors (/proc), nor can the daemon")
        finally:
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        done = wait_for_statuses(tmp_path, 1, log)
        held = [e for e in events(log, "file_still_open") if e["file"] == "leads_s.csv"]
    assert held, "the quiet period passed during a stall but the daemon never found the file open"
    assert done["leads_s.csv.status.json"]["status"] == "Complete"
    assert len(simulator.submissions()) == 1
    assert_imported_once_and_whole(simulator, data)


def test_filepart_then_rename_is_imported_once_under_the_final_name(tmp_path, simulator, sftp):
    """(b) WinSCP's convention with the stock client: ``put NAME.filepart``, then ``rename``."""
    data = leads("b", 3_000, pad=200)
    source = tmp_path / "b.csv"
    source.write_bytes(data)
    with daemon(tmp_path, simulator) as log:
        # Throttled to ~3 s, longer than the quiet period: the temporary name is taken on no account.
        sftp.upload(
            [f"put {source} leads_b.csv.filepart", "rename leads_b.csv.filepart leads_b.csv"], limit_kbit=2000
        )
        done = wait_for_statuses(tmp_path, 1, log)
    assert list(done) == ["leads_b.csv.status.json"]
    assert done["leads_b.csv.status.json"]["status"] == "Complete"
    assert done["leads_b.csv.status.json"]["rowsTotal"] == 3_000
    submissions = simulator.submissions()
    assert len(submissions) == 1
    assert "filepart" not in (submissions[0]["filename"] or "")
    assert not [e for e in events(log, "file_claimed") if "filepart" in e["file"]]
    assert_imported_once_and_whole(simulator, data)
    assert inbox_files(tmp_path) == []


def test_killed_filepart_upload_is_never_imported_and_reported_abandoned(tmp_path, simulator, sftp):
    """(c) The client SIGKILLed halfway through ``put NAME.filepart``: nothing imported, it stays, a warning."""
    data = leads("c", 6_000, pad=200)
    source = tmp_path / "c.csv"
    source.write_bytes(data)
    with daemon(tmp_path, simulator) as log:
        size = upload_and_kill(sftp, source, "leads_c.csv.filepart", limit_kbit=3000, fraction=0.4)
        wait_until(lambda: events(log, "upload_abandoned"), timeout=STALE_AFTER + 10, interval=0.1)
        # Reported after STALE_AFTER > QUIET_PERIOD unchanged: a real name would have been claimed by now.
        (warning,) = events(log, "upload_abandoned")
    assert warning["level"] == "warning"
    assert warning["file"] == "leads_c.csv.filepart"
    assert "abandoned" in warning["reason"]
    assert simulator.submissions() == []
    assert statuses(tmp_path) == {}
    report = json.loads((tmp_path / "outbox" / "leads_c.csv.filepart.abandoned.json").read_text())
    assert (report["status"], report["kind"], report["file"]) == ("Abandoned", "partial", "leads_c.csv.filepart")
    assert not events(log, "file_claimed")
    assert inbox_files(tmp_path) == ["leads_c.csv.filepart"]
    assert (sftp.inbox / "leads_c.csv.filepart").stat().st_size == size


def test_killed_in_place_upload_cut_inside_a_quoted_field_is_rejected(tmp_path, simulator, sftp):
    """(c) Killed halfway through an in-place ``put``, the cut inside a quoted field: Rejected, nothing imported."""
    data, _ = cut_inside(quoted_address, 5_000, base=250)
    source = tmp_path / "q.csv"
    source.write_bytes(data)
    with daemon(tmp_path, simulator) as log:
        size = upload_and_kill(sftp, source, "leads_q.csv", limit_kbit=3000, fraction=0.4)
        done = wait_for_statuses(tmp_path, 1, log)
    status = done["leads_q.csv.status.json"]
    assert status["status"] == "Rejected", status
    assert "never closed" in status["error"]["message"], status["error"]
    opening_quote_line = data[:size].rsplit(b'"', 1)[0].count(b"\n") + 1  # the field's content has no quote
    assert status["error"]["line"] == opening_quote_line, status["error"]
    assert simulator.submissions() == []
    assert archived(tmp_path) and all(k.startswith("failed/") for k in archived(tmp_path))
    assert list(archived(tmp_path).values()) == [data[:size]]


@pytest.mark.parametrize("column", ["lastName", "address"])
def test_killed_in_place_upload_cut_mid_record_is_flagged_only_by_a_note(tmp_path, simulator, sftp, column):
    """(c) Killed halfway through an in-place ``put``, the cut inside an unquoted value.

    This is what in-place uploads cannot guarantee: the file looks finished
    and is imported. Cut inside the last column, the last record arrives with
    its value cut short and the file is ``Complete``; cut earlier, the record
    has too few fields and Marketo fails that row (``Partial``). Either way
    the status file's note about the missing final line break is the sign.
    """
    render = unquoted_last_name if column == "lastName" else unquoted_address
    data, _ = cut_inside(render, 20_000, base=40)
    source = tmp_path / "u.csv"
    source.write_bytes(data)
    with daemon(tmp_path, simulator) as log:
        size = upload_and_kill(sftp, source, "leads_u.csv", limit_kbit=3000, fraction=0.4)
        done = wait_for_statuses(tmp_path, 1, log)
    status = done["leads_u.csv.status.json"]
    received = data[:size]
    complete = rows_of(received[: received.rfind(b"\n") + 1])
    assert status["rowsTotal"] == len(complete) + 1, "the cut record counts as a row"
    assert any("no line break at its end" in note and "uploaded in place" in note for note in status["notes"]), status
    rows = [r["row"] for r in simulator.imported_rows()]
    assert len({r["email"] for r in rows}) == len(rows), "a row was imported twice"
    sent = {r["email"]: r for r in rows_of(data)}
    if column == "address":
        assert status["status"] == "Complete", status
        assert status["rowsFailed"] == 0
        assert rows[:-1] == complete, "the complete records arrived whole"
        last = rows[-1]
        assert last["address"] != sent[last["email"]]["address"]
        assert sent[last["email"]]["address"].startswith(last["address"]), "imported with its last value cut short"
    else:
        assert status["status"] == "Partial", status
        assert status["rowsFailed"] == 1
        assert rows == complete, "the complete records arrived whole, the cut one was not imported"
        failures = (tmp_path / "outbox" / status["failuresFile"]).read_text()
        assert "Invalid number of fields" in failures, failures


def test_reupload_of_the_same_name_is_imported_again_with_a_stamped_status(tmp_path, simulator, sftp):
    """(d) The same name uploaded again after the first was imported: each imported once, results kept apart."""
    first, second = leads("d1-", 200), leads("d2-", 300)
    (tmp_path / "d1.csv").write_bytes(first)
    (tmp_path / "d2.csv").write_bytes(second)
    with daemon(tmp_path, simulator) as log:
        sftp.upload([f"put {tmp_path / 'd1.csv'} leads_d.csv"])
        wait_for_statuses(tmp_path, 1, log)
        wait_until(lambda: inbox_files(tmp_path) == [] and archived(tmp_path), timeout=10)
        sftp.upload([f"put {tmp_path / 'd2.csv'} leads_d.csv"])
        done = wait_for_statuses(tmp_path, 2, log)
    assert "leads_d.csv.status.json" in done
    (stamped,) = [name for name in done if name != "leads_d.csv.status.json"]
    assert re.fullmatch(r"leads_d\.csv\.\d{8}T\d{6}Z(-\d+)?\.status\.json", stamped), stamped
    assert done["leads_d.csv.status.json"]["rowsTotal"] == 200
    assert done[stamped]["rowsTotal"] == 300
    assert {s["status"] for s in done.values()} == {"Complete"}
    assert len(simulator.submissions()) == 2
    assert_imported_once_and_whole(simulator, first, second)
    assert sorted(archived(tmp_path).values()) == sorted([first, second])
    assert inbox_files(tmp_path) == []
