"""``dropzone demo`` as the README describes it: every sample's outcome, on the example configuration.

The example configuration runs as shipped, moved into a temporary folder and onto free ports.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from dropzone import config as config_module
from dropzone.demo import SAMPLES, run_demo

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def outbox(tmp_path: Path):
    text = EXAMPLE.read_text().replace("./demo/", f"{tmp_path}/demo/")
    for port in ("8788", "8789"):
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    config = config_module.load(path)
    stop = threading.Event()
    errors: list[BaseException] = []

    def demo() -> None:
        try:
            run_demo(config, stop)
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    thread = threading.Thread(target=demo, daemon=True)
    thread.start()
    out = tmp_path / "demo" / "outbox"
    deadline = time.monotonic() + 90.0
    while not all((out / f"{name}.status.json").exists() for name in SAMPLES):
        assert not errors, errors
        assert time.monotonic() < deadline, sorted(p.name for p in out.glob("*"))
        stop.wait(0.1)
    yield out
    stop.set()
    thread.join(30.0)
    assert not errors, errors


def status(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.status.json").read_text())


def test_every_sample_ends_as_the_readme_says(outbox: Path) -> None:
    leads = status(outbox, "leads_demo.csv")
    assert (leads["status"], leads["rowsProcessed"], leads["rowsFailed"]) == ("Partial", 2, 1)
    failures = (outbox / "leads_demo.csv.failures.csv").read_text()
    header, row = failures.splitlines()
    assert header.endswith("Source Line") and row.endswith("NoEmail,Acme,Value for lookup field 'email' not found,3")
    assert status(outbox, "cars_demo.tsv")["status"] == "Complete"
    members = status(outbox, "members_demo.ssv")
    assert (members["status"], members["rowsWithWarning"]) == ("Complete", 1)
    assert (outbox / "members_demo.ssv.warnings.ssv").exists()
    sandbox = status(outbox, "test_demo.csv")
    assert (sandbox["status"], sandbox["instance"]) == ("Complete", "sandbox")
    expo = status(outbox, "expo_demo.csv")
    assert (expo["status"], expo["rowsProcessed"]) == ("Complete", 2)
    typo = status(outbox, "leads_typo.csv")
    assert typo["status"] == "Rejected"
    assert '"firstNme" is not a lead field; did you mean "firstName"?' in typo["error"]["message"]
