"""routing: first match wins, glob semantics on the inbox-relative path, format resolution."""

from __future__ import annotations

import pytest

from dropzone.config import FileFormat, ObjectKind, Route
from dropzone.errors import InputError
from dropzone.routing import NoMatch, NoRouteError, RouteMatch, route


def leads(match: str, **kw: object) -> Route:
    return Route(match=match, object=ObjectKind.LEADS, lookup_field="email", **kw)  # type: ignore[arg-type]


def matches(glob: str, relpath: str) -> bool:
    return isinstance(route([leads(glob, format=FileFormat.CSV)], relpath), RouteMatch)


class TestFirstMatch:
    def test_the_first_matching_route_wins(self) -> None:
        """When two routes match, the earlier one takes the file."""
        routes = [leads("leads_*.csv", list_id=1), leads("*.csv", list_id=2)]
        result = route(routes, "leads_1.csv")
        assert isinstance(result, RouteMatch)
        assert (result.index, result.route.list_id) == (0, 1)

    def test_a_later_route_takes_what_earlier_ones_do_not(self) -> None:
        """Routes are tried in order until one matches."""
        routes = [leads("leads_*.csv"), leads("*.csv", list_id=2)]
        result = route(routes, "other.csv")
        assert isinstance(result, RouteMatch)
        assert result.index == 1

    def test_no_match_lists_the_globs_tried(self) -> None:
        """A file no route takes gets a NoMatch naming every glob, for the status file."""
        result = route([leads("leads_*.csv"), leads("*.tsv")], "orders.xlsx")
        assert isinstance(result, NoMatch)
        assert result.tried == ("leads_*.csv", "*.tsv")
        assert result.index is None
        assert result.message == "orders.xlsx: no route matches; tried 'leads_*.csv', '*.tsv'"

    def test_no_match_becomes_an_input_error(self) -> None:
        """NoMatch.error() is a NoRouteError, an InputError, carrying the message."""
        result = route([leads("*.csv")], "x.txt")
        assert isinstance(result, NoMatch)
        error = result.error()
        assert isinstance(error, NoRouteError)
        assert isinstance(error, InputError)
        assert str(error) == result.message

    def test_no_routes_at_all(self) -> None:
        """With no routes, nothing matches and the message says none were tried."""
        result = route([], "x.csv")
        assert isinstance(result, NoMatch)
        assert result.message.endswith("tried none")


class TestFormat:
    def test_format_comes_from_the_extension(self) -> None:
        """Without a route format, .csv/.tsv/.ssv give the format."""
        routes = [leads("*")]
        assert route(routes, "a.csv").format is FileFormat.CSV  # type: ignore[union-attr]
        assert route(routes, "a.tsv").format is FileFormat.TSV  # type: ignore[union-attr]
        assert route(routes, "a.ssv").format is FileFormat.SSV  # type: ignore[union-attr]

    def test_the_extension_is_read_in_any_case(self) -> None:
        """An upper-case extension (Windows partners) still gives the format."""
        result = route([leads("*.CSV")], "LEADS.CSV")
        assert isinstance(result, RouteMatch)
        assert result.format is FileFormat.CSV

    def test_the_route_format_wins_over_the_extension(self) -> None:
        """A route's format applies whatever the extension says."""
        result = route([leads("*.txt", format=FileFormat.SSV)], "a.txt")
        assert isinstance(result, RouteMatch)
        assert result.format is FileFormat.SSV

    def test_an_unknown_format_stops_at_the_matching_route(self) -> None:
        """A matching route that cannot tell the format does not fall through to later routes."""
        routes = [leads("data_*"), leads("*", format=FileFormat.CSV)]
        result = route(routes, "data_1.txt")
        assert isinstance(result, NoMatch)
        assert result.index == 0
        assert result.tried == ("data_*",)
        assert "format is unknown" in result.message
        assert "'data_*'" in result.message

    def test_the_match_gives_marketo_parameters_with_the_format(self) -> None:
        """marketo_params of a match uses Marketo's names and the resolved format."""
        result = route([leads("*.csv", list_id=1234, partition_name="EMEA")], "a.csv")
        assert isinstance(result, RouteMatch)
        assert result.marketo_params() == {
            "format": "csv",
            "lookupField": "email",
            "listId": 1234,
            "partitionName": "EMEA",
        }

    def test_the_match_names_its_marker_file(self) -> None:
        """A route with a marker tells which file the upload waits for."""
        result = route([leads("*.csv", marker=".done")], "acme/a.csv")
        assert isinstance(result, RouteMatch)
        assert result.marker_relpath == "acme/a.csv.done"
        plain = route([leads("*.csv")], "a.csv")
        assert isinstance(plain, RouteMatch)
        assert plain.marker_relpath is None


class TestGlobs:
    def test_a_glob_without_slash_matches_the_name_at_any_depth(self) -> None:
        """'leads_*.csv' takes leads files at the top and in subfolders."""
        assert matches("leads_*.csv", "leads_1.csv")
        assert matches("leads_*.csv", "acme/2026/leads_1.csv")

    def test_star_does_not_cross_slash(self) -> None:
        """In 'leads_*.csv', * cannot swallow a folder: 'leads_x/y.csv' is not a leads file."""
        assert not matches("leads_*.csv", "leads_x/y.csv")

    def test_a_glob_with_slash_is_anchored_at_the_inbox(self) -> None:
        """'acme/*.csv' takes acme/a.csv only, not deeper nor under another folder."""
        assert matches("acme/*.csv", "acme/a.csv")
        assert not matches("acme/*.csv", "acme/old/a.csv")
        assert not matches("acme/*.csv", "x/acme/a.csv")
        assert not matches("acme/*.csv", "a.csv")

    def test_double_star_matches_any_number_of_folders(self) -> None:
        """A ** segment stands for zero or more folders."""
        assert matches("acme/**/*.csv", "acme/a.csv")
        assert matches("acme/**/*.csv", "acme/x/y/a.csv")
        assert matches("**/a.csv", "a.csv")
        assert matches("acme/**", "acme/x/a.csv")
        assert not matches("acme/**", "acme")

    def test_question_mark_and_sets(self) -> None:
        """? is one character; [..] and [!..] are sets; neither matches /."""
        assert matches("l?.csv", "l1.csv")
        assert not matches("l?.csv", "l12.csv")
        assert matches("leads_[0-9].csv", "leads_7.csv")
        assert not matches("leads_[!0-9].csv", "leads_7.csv")
        assert matches("leads_[!0-9].csv", "leads_x.csv")
        assert not matches("a?b.csv", "a/b.csv")

    def test_brackets_make_a_literal_star(self) -> None:
        """[*] matches a literal star only."""
        assert matches("a[*].csv", "a*.csv")
        assert not matches("a[*].csv", "ab.csv")

    def test_matching_is_case_sensitive(self) -> None:
        """'leads_*.csv' does not take LEADS_1.CSV."""
        assert not matches("leads_*.csv", "LEADS_1.CSV")

    def test_dots_and_regex_characters_are_literal(self) -> None:
        """A . in a glob is a dot, and regex syntax has no meaning."""
        assert not matches("a.csv", "abcsv")
        assert matches("a+(b).csv", "a+(b).csv")

    @pytest.mark.parametrize("relpath", ["", "/abs/a.csv", "../a.csv", "a//b.csv", "./a.csv"])
    def test_a_malformed_relative_path_is_a_caller_bug(self, relpath: str) -> None:
        """route() wants a normalized path relative to the inbox."""
        with pytest.raises(ValueError, match="relative"):
            route([leads("*")], relpath)
