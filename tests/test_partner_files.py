"""Issue 11's promise end to end: a partner file with its own column names, zipped or PGP-encrypted,
lands in Marketo under the right fields; a typo in a header never reaches Marketo."""

from __future__ import annotations

import gzip

import pytest

from tests import pgp_keys as keys_module
from tests.helpers import ROUTES, daemons, drop, run_until_idle, status_of
from tests.test_unpack_daemon import make_zip

pgp_keys = keys_module.pgp_keys  # the session's keys (a fixture)

EXPO = """
      - match: "expo_*.csv"
        object: leads
        lookupField: email
        listId: 1234
        columns:
          "E-mail Address": email
          "First Name": firstName
          "Internal Ref": null
        constants:
          leadSource: Expo 2026
"""

PARTNER = (
    b'E-mail Address,First Name,Internal Ref\n'
    b'gina@example.com,"Gina, ""G""",A-17\n'
    b'hal@example.com,Hal,"multi\nline ref"\n'
)


@pytest.fixture
def daemon_factory(tmp_path, simulator):
    yield from daemons(tmp_path, simulator.base_url)


def test_mapped_files_zipped_and_encrypted_land_under_marketo_fields_and_a_typo_never_leaves(
    tmp_path, simulator, daemon_factory, pgp_keys
):
    pgp_keys.secret_key("ours", tmp_path / "ours.key")
    daemon = daemon_factory(routes=EXPO + ROUTES, extra="pgp:\n  private_key_file: ours.key")
    typo = b"email,firstNme\ni@x.com,I\n"
    drop(tmp_path, "drop1.zip", make_zip([("expo_zip.csv", PARTNER), ("leads_typo.csv", typo)]))
    drop(tmp_path, "expo_sealed.csv.gz.pgp", pgp_keys.encrypt(gzip.compress(PARTNER.replace(b"gina", b"gus"))))
    run_until_idle(daemon)

    for name in ("expo_zip.csv", "expo_sealed.csv.gz.pgp"):
        status = status_of(tmp_path, name)
        assert (status["status"], status["rowsProcessed"]) == ("Complete", 2), status
    rows = sorted((r["row"] for r in simulator.imported_rows()), key=lambda r: r["email"])
    assert [r["email"] for r in rows] == ["gina@example.com", "gus@example.com", "hal@example.com", "hal@example.com"]
    assert {tuple(sorted(r)) for r in rows} == {("email", "firstName", "leadSource")}
    assert {r["leadSource"] for r in rows} == {"Expo 2026"}
    assert rows[0]["firstName"] == 'Gina, "G"'

    refused = status_of(tmp_path, "leads_typo.csv")
    assert refused["status"] == "Rejected"
    assert '"firstNme" is not a lead field; did you mean "firstName"?' in refused["error"]["message"]
    headers = [s["header"] for s in simulator.submissions()]
    assert headers and all(h == ["email", "firstName", "leadSource"] for h in headers)  # the typo never sent
    assert all(r["row"].get("email") != "i@x.com" for r in simulator.imported_rows())
    assert status_of(tmp_path, "drop1.zip")["status"] == "Partial"
