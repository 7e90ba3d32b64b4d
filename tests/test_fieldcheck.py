"""The pre-flight's pure core: a header against Marketo's describe (``dropzone.fieldcheck``), table tests."""

from __future__ import annotations

import difflib

import pytest

from dropzone import fieldcheck
from dropzone.describe import Schema
from dropzone.errors import InputError, UnknownFieldError
from dropzone.kinds import ObjectKind
from dropzone.prepare import check_header, described
from dropzone.targets import ImportTarget
from tests.test_routing import leads as route

LEAD = Schema(
    what="lead",
    fields=("id", "email", "firstName", "lastName", "company", "sfdcLeadId", "leadScore"),
    display={"first name": "firstName", "email address": "email"},
)
CAR = Schema(what="custom object car_c", fields=("color", "make", "model", "vin", "marketoGUID"), dedupe=("vin",))
MEMBER = LEAD.plus(Schema(what="program member", fields=("membershipDate", "webinarUrl_c")), "program member")

LEADS = ImportTarget(kind=ObjectKind.LEADS, lookup_field="email")
BY_ID = ImportTarget(kind=ObjectKind.LEADS, lookup_field="id")
CARS = ImportTarget(kind=ObjectKind.CUSTOM_OBJECT, api_name="car_c")
MEMBERS = ImportTarget(kind=ObjectKind.PROGRAM_MEMBER, program_id=1044, program_member_status="Registered")


@pytest.mark.parametrize(
    ("schema", "target", "header", "sent"),
    [
        (LEAD, LEADS, ["email", "firstName"], ["email", "firstName"]),
        # The seeds' own example header: matched case-insensitively, sent as Marketo spells it.
        (LEAD, LEADS, ["FirstName", "LastName", "Email", "Company"], ["firstName", "lastName", "email", "company"]),
        (LEAD, LEADS, ["EMAIL"], ["email"]),
        (LEAD, BY_ID, ["ID", "leadscore"], ["id", "leadScore"]),
        (CAR, CARS, ["color", "make", "model", "vin"], ["color", "make", "model", "vin"]),
        (CAR, CARS, ["VIN", "Color"], ["vin", "color"]),
        (MEMBER, MEMBERS, ["Email", "firstName", "WEBINARURL_C"], ["email", "firstName", "webinarUrl_c"]),
        (MEMBER, MEMBERS, ["email", "membershipDate"], ["email", "membershipDate"]),
    ],
)
def test_names_are_sent_as_marketo_spells_them(
    schema: Schema, target: ImportTarget, header: list[str], sent: list[str]
) -> None:
    assert fieldcheck.check(schema, target, header, shown="f.csv") == sent


def test_an_exact_spelling_wins_over_a_case_insensitive_one() -> None:
    twins = Schema(what="lead", fields=("email", "score", "Score"))
    assert fieldcheck.check(twins, LEADS, ["email", "Score", "score"], shown="f.csv") == ["email", "Score", "score"]


@pytest.mark.parametrize(
    ("schema", "target", "header", "error", "says"),
    [
        # An unknown column, with difflib's close match.
        (LEAD, LEADS, ["email", "firstNme"], UnknownFieldError,
         'f.csv: line 1, column 2: "firstNme" is not a lead field; did you mean "firstName"?'),
        # Close matches are found case-insensitively.
        (LEAD, LEADS, ["email", "FIRSTNME"], UnknownFieldError, 'did you mean "firstName"?'),
        # A display name: its API name is suggested.
        (LEAD, LEADS, ["email", "First Name"], UnknownFieldError,
         '"First Name" is not a lead field; did you mean "firstName" (the API name of "First Name")?'),
        # Nothing close: no suggestion, and every unknown column is named.
        (LEAD, LEADS, ["email", "zzz", "qqq"], UnknownFieldError,
         'column 2: "zzz" is not a lead field. Column 3: "qqq" is not a lead field.'),
        (CAR, CARS, ["vin", "colour"], UnknownFieldError, '"colour" is not a custom object car_c field; did you mean '
                                                           '"color"?'),
        # Two columns that are one field.
        (LEAD, LEADS, ["email", "Email"], InputError, 'columns 1 ("email") and 2 ("Email") are both the lead field '
                                                        '"email"'),
        # What each kind of import needs.
        (LEAD, LEADS, ["firstName", "lastName"], InputError, 'line 1 has no "email" column: lead imports find existing '
                                                             'leads by the route\'s lookupField ("email")'),
        (LEAD, BY_ID, ["email"], InputError, 'line 1 has no "id" column'),
        (CAR, CARS, ["color", "make"], InputError, 'lacks the dedupe field(s) "vin" of custom object car_c'),
        (MEMBER, MEMBERS, ["firstName"], InputError, 'line 1 has no "email" column: program member imports need it'),
    ],
)
def test_refused_before_a_queue_slot_is_spent(
    schema: Schema, target: ImportTarget, header: list[str], error: type[InputError], says: str
) -> None:
    with pytest.raises(error) as caught:
        fieldcheck.check(schema, target, header, shown="f.csv")
    assert caught.type is error
    assert says in str(caught.value)
    assert caught.value.line == 1


def test_several_case_insensitive_matches_are_refused_as_ambiguous() -> None:
    twins = Schema(what="lead", fields=("email", "score", "Score"))
    with pytest.raises(InputError, match=r'column 2: "SCORE" matches several lead fields \("score", "Score"\)'):
        fieldcheck.check(twins, LEADS, ["email", "SCORE"], shown="f.csv")


def test_unknown_columns_are_found_before_missing_ones() -> None:
    """A typo'd lookup column is named with its suggestion, not as "no email column"."""
    with pytest.raises(UnknownFieldError, match='"emial" is not a lead field; did you mean "email"'):
        fieldcheck.check(LEAD, LEADS, ["emial", "firstName"], shown="f.csv")


def test_a_custom_object_whose_dedupe_fields_are_unknown_needs_none() -> None:
    loose = Schema(what="custom object car_c", fields=("color", "vin"))
    assert fieldcheck.check(loose, CARS, ["color"], shown="f.csv") == ["color"]


def test_hostile_column_names_are_shown_escaped_and_cut_short() -> None:
    name = "bad\nname\x1b[31m" + "x" * 500
    with pytest.raises(UnknownFieldError) as caught:
        fieldcheck.check(LEAD, LEADS, ["email", name], shown="f.csv")
    text = str(caught.value)
    assert "\n" not in text and "\x1b" not in text
    assert '"bad\\nname\\u001b[31m' in text
    assert len(text) < 400


def test_many_unknown_columns_are_summed_up() -> None:
    with pytest.raises(UnknownFieldError, match=r"And 5 more\. Header names must be"):
        fieldcheck.check(LEAD, LEADS, ["email", *(f"zz{i}" for i in range(15))], shown="f.csv")


@pytest.mark.parametrize(
    ("before", "after", "note"),
    [
        (["email"], ["email"], None),
        (["Email", "firstName"], ["email", "firstName"], 'header names were sent as Marketo spells them: "Email" as '
                                                         '"email"'),
    ],
)
def test_the_status_file_says_which_names_were_respelled(before: list[str], after: list[str], note: str | None) -> None:
    assert fieldcheck.renamed_note(before, after) == note


def test_check_header_runs_the_preflight_step_last_and_notes_the_respelling() -> None:
    notes: list[str] = []
    r = route("*.csv", trim_header=True)
    plan = check_header("f.csv", r, [" Email ", "FirstName"], notes, described(LEAD, "f.csv"))
    assert plan.names == ("email", "firstName")
    assert notes == [
        "spaces around header names were removed (trim_header)",
        'header names were sent as Marketo spells them: "Email" as "email", "FirstName" as "firstName"',
    ]


def test_check_header_without_a_schema_checks_no_names() -> None:
    plan = check_header("f.csv", route("*.csv"), ["anything", "goes"], [], described(None, "f.csv"))
    assert plan.names == ("anything", "goes")


def test_a_header_of_many_unknown_columns_costs_a_few_suggestions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Suggestions scan every field: only the columns the message lists get one (attack review: 100,000
    near-miss names held the loop for minutes)."""
    asked: list[str] = []
    real = difflib.get_close_matches

    def counting(word: str, *args: object, **kwargs: object) -> list[str]:
        asked.append(word)
        return real(word, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(difflib, "get_close_matches", counting)
    names = ["email", *(f"firstNme{i}" for i in range(5_000))]
    with pytest.raises(UnknownFieldError, match="And 4990 more"):
        fieldcheck.check(LEAD, route("*.csv").target(), names, shown="f.csv")
    assert len(asked) == 10
