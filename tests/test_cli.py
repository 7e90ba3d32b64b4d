"""The dropzone command as a user runs it: real processes, exit codes, messages."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path


def dropzone(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dropzone", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_help_lists_the_subcommands():
    result = dropzone("--help")
    assert result.returncode == 0
    for name in ("run", "check", "status", "split", "simulate", "demo"):
        assert name in result.stdout


def test_split_writes_chunks_and_prints_the_manifest(tmp_path):
    """`dropzone split` cuts on record boundaries, repeats the header and prints one manifest line per chunk."""
    rows = [[f"u{i}@example.com", f"Name {i}\nsecond line"] for i in range(200)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["email", "firstName"])
    writer.writerows(rows)
    source = tmp_path / "leads.csv"
    source.write_text(buffer.getvalue(), newline="")
    result = dropzone("split", str(source), "--out", str(tmp_path / "out"), "--max-bytes", "2000")
    assert result.returncode == 0, result.stderr
    chunks = sorted((tmp_path / "out").iterdir())
    assert len(chunks) == len(result.stdout.strip().splitlines()) > 3
    parsed: list[list[str]] = []
    for chunk in chunks:
        assert chunk.stat().st_size <= 2000
        with open(chunk, newline="") as handle:
            table = list(csv.reader(handle))
        assert table[0] == ["email", "firstName"]
        parsed.extend(table[1:])
    assert parsed == rows


def test_split_refuses_bad_input_with_the_line(tmp_path):
    source = tmp_path / "bad.csv"
    source.write_text('email,firstName\na@example.com,"unterminated\n')
    result = dropzone("split", str(source), "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "line 2" in result.stderr


def test_split_check_prints_the_same_manifest_and_writes_nothing(tmp_path):
    source = tmp_path / "leads.csv"
    source.write_text("email\n" + "".join(f"u{i}@example.com\n" for i in range(300)))
    written = dropzone("split", str(source), "--out", str(tmp_path / "out"), "--max-bytes", "1000")
    checked = dropzone("split", str(source), "--check", "--max-bytes", "1000")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == written.stdout and len(checked.stdout.splitlines()) > 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leads.csv", "out"]
    bad = tmp_path / "bad.csv"
    bad.write_text('email\n"unterminated\n')
    refused = dropzone("split", str(bad), "--check")
    assert refused.returncode != 0 and "line 2" in refused.stderr
    assert dropzone("split", str(source)).returncode == 2  # neither --out nor --check


def test_check_names_the_bad_key(tmp_path):
    """A typo in the configuration is refused, naming the key, with exit code 2."""
    config = tmp_path / "bad.yaml"
    config.write_text(
        "marketo:\n  endpoint: http://127.0.0.1:1\n  client_id: a\n  client_secret: b\n"
        "state_dir: state\ninboxes:\n  - path: in\n    outbox: out\n    routes:\n"
        "      - match: '*.csv'\n        object: lead\n"
    )
    result = dropzone("check", "--config", str(config), "--offline")
    assert result.returncode == 2
    assert "inboxes[0].routes[0].object" in result.stderr


def test_run_refuses_missing_folders(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "marketo:\n  endpoint: http://127.0.0.1:1\n  client_id: a\n  client_secret: b\n"
        "state_dir: state\ninboxes:\n  - path: in\n    outbox: out\n    routes:\n"
        "      - match: '*.csv'\n        object: leads\n"
    )
    result = dropzone("run", "--config", str(config))
    assert result.returncode == 2
    assert "inboxes[0].path" in result.stderr


def test_check_accepts_the_example_config_offline(tmp_path):
    """config.example.yaml is valid as shipped (its demo folders are created first)."""
    example = Path(__file__).resolve().parent.parent / "config.example.yaml"
    target = tmp_path / "config.example.yaml"
    target.write_text(example.read_text())
    for folder in ("demo/state", "demo/inbox", "demo/outbox"):
        (tmp_path / folder).mkdir(parents=True)
    result = dropzone("check", "--config", str(target), "--offline")
    assert result.returncode == 0, result.stderr
    assert "dropzone-demo-secret" not in result.stdout, "the secret is masked"
