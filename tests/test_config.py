"""config: YAML text to frozen dataclasses, and every refusal naming its key."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dropzone import config, instances, unpack_config
from dropzone import defaults as D
from dropzone.config import (
    Config,
    FileFormat,
    LogFormat,
    LogLevel,
    ObjectKind,
    Route,
    WatchMode,
    load,
    parse,
)
from dropzone.errors import ConfigError
from dropzone.preflight import check_paths

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-value"

SAMPLE = """\
marketo:
  endpoint: https://123-ABC-456.mktorest.com
  identity: https://123-ABC-456.mktorest.com/identity
  client_id: ${MARKETO_CLIENT_ID}
  client_secret: ${MARKETO_CLIENT_SECRET}
  poll_interval: 5
state_dir: /var/lib/dropzone
inboxes:
  - path: /srv/sftp/acme/inbox
    outbox: /srv/sftp/acme/outbox
    archive: /srv/sftp/acme/archive
    routes:
      - match: "leads_*.csv"
        object: leads
        lookupField: email
        listId: 1234
        partitionName: EMEA
      - match: "cars_*.tsv"
        object: customobject
        apiName: car_c
      - match: "*.ssv"
        object: programmember
        programId: 1044
        programMemberStatus: Registered
        format: ssv
"""
SAMPLE_ENV = {"MARKETO_CLIENT_ID": "the-id", "MARKETO_CLIENT_SECRET": SECRET}

BASE: dict[str, Any] = {
    "marketo": {"endpoint": "https://123-ABC-456.mktorest.com", "client_id": "the-id", "client_secret": SECRET},
    "state_dir": "/var/lib/dropzone",
    "inboxes": [
        {
            "path": "/srv/acme/inbox",
            "outbox": "/srv/acme/outbox",
            "routes": [{"match": "leads_*.csv", "object": "leads"}],
        }
    ],
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def first_route(data: dict[str, Any]) -> dict[str, Any]:
    route: dict[str, Any] = data["inboxes"][0]["routes"][0]
    return route


def parse_data(data: dict[str, Any], **kw: Any) -> Config:
    kw.setdefault("environ", {})
    kw.setdefault("base_dir", "/etc/dropzone")
    return parse(yaml.safe_dump(data, sort_keys=False), **kw)


def refused(data: dict[str, Any] | str, message: str, **kw: Any) -> ConfigError:
    """Parse, expect a ConfigError whose text contains ``message``, and return it."""
    kw.setdefault("environ", {})
    kw.setdefault("base_dir", "/etc/dropzone")
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse(text, **kw)
    return info.value


class TestSample:
    def test_the_documented_sample_parses(self) -> None:
        """The format shown to users parses into inboxes and routes with their parameters."""
        cfg = parse(SAMPLE, environ=SAMPLE_ENV)
        inbox = cfg.inboxes[0]
        assert inbox.path == Path("/srv/sftp/acme/inbox")
        assert inbox.archive == Path("/srv/sftp/acme/archive")
        leads, cars, members = inbox.routes
        assert (leads.object, leads.lookup_field, leads.list_id, leads.partition_name) == (
            ObjectKind.LEADS,
            "email",
            1234,
            "EMEA",
        )
        assert (cars.object, cars.api_name) == (ObjectKind.CUSTOM_OBJECT, "car_c")
        assert (members.program_id, members.program_member_status, members.format) == (
            1044,
            "Registered",
            FileFormat.SSV,
        )

    def test_defaults_are_filled_in(self) -> None:
        """Every key left out takes its named default."""
        cfg = parse_data(base())
        m, inbox = cfg.marketo, cfg.inboxes[0]
        assert (m.poll_interval, m.calls_per_20s, m.max_concurrent_calls) == (
            D.POLL_INTERVAL_S,
            D.CALLS_PER_20S,
            D.MAX_CONCURRENT_CALLS,
        )
        assert (m.max_open_imports, m.resubmit_hold) == (D.MAX_OPEN_IMPORTS, D.RESUBMIT_HOLD_S)
        assert (m.connect_timeout, m.read_timeout, m.max_retry_seconds) == (
            D.CONNECT_TIMEOUT_S,
            D.READ_TIMEOUT_S,
            D.MAX_RETRY_S,
        )
        assert cfg.split_max_bytes == D.SPLIT_MAX_BYTES == 9_500_000
        assert (inbox.watch, inbox.scan_interval, inbox.quiet_period, inbox.stale_partial_after) == (
            WatchMode.AUTO,
            D.SCAN_INTERVAL_S,
            D.QUIET_PERIOD_S,
            D.STALE_PARTIAL_AFTER_S,
        )
        assert inbox.archive is None
        route = inbox.routes[0]
        assert (route.format, route.marker, route.trim_header, route.encoding) == (None, None, False, None)
        assert route.coalesce is True  # small files waiting together share imports unless a route says no
        assert cfg.http is None
        assert (cfg.log.format, cfg.log.level) == (LogFormat.AUTO, LogLevel.INFO)

    def test_lookup_field_defaults_to_email(self) -> None:
        """A lead route needs nothing beyond its object; lookupField is email."""
        assert parse_data(base()).inboxes[0].routes[0].lookup_field == "email"

    def test_identity_defaults_from_the_endpoint(self) -> None:
        """Without identity, it is {endpoint}/identity."""
        assert parse_data(base()).marketo.identity == "https://123-ABC-456.mktorest.com/identity"

    def test_a_trailing_slash_on_the_endpoint_is_dropped(self) -> None:
        """'https://host/' and 'https://host' are the same endpoint."""
        data = base()
        data["marketo"]["endpoint"] = "http://127.0.0.1:8788/"
        assert parse_data(data).marketo.endpoint == "http://127.0.0.1:8788"

    def test_the_config_is_frozen(self) -> None:
        """Parsed settings cannot be changed in place."""
        cfg = parse_data(base())
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.split_max_bytes = 1  # type: ignore[misc]

    def test_the_source_name_is_kept(self) -> None:
        """Config.source is the name errors and `dropzone check` use."""
        assert parse_data(base(), source="/etc/dropzone/dz.yaml").source == "/etc/dropzone/dz.yaml"


class TestSecrets:
    def test_the_secret_is_not_in_the_repr(self) -> None:
        """repr() of the config never shows the client secret."""
        cfg = parse_data(base())
        assert cfg.marketo.client_secret == SECRET
        assert SECRET not in repr(cfg)

    def test_redacted_masks_the_secret(self) -> None:
        """Config.redacted() is the whole config with the secret masked."""
        out = parse_data(base()).redacted()
        assert out["marketo"]["client_secret"] == D.SECRET_MASK
        assert SECRET not in repr(out)
        assert out["inboxes"][0]["routes"][0]["lookupField"] == "email"
        assert out["state_dir"] == "/var/lib/dropzone"

    def test_the_secret_can_come_from_a_file(self) -> None:
        """client_secret_file is read through read_file, relative to the config's folder, newline stripped."""
        data = base()
        del data["marketo"]["client_secret"]
        data["marketo"]["client_secret_file"] = "secrets/mkto"
        asked: list[str] = []

        def read_file(path: str) -> str:
            asked.append(path)
            return SECRET + "\n"

        cfg = parse_data(data, read_file=read_file)
        assert asked == ["/etc/dropzone/secrets/mkto"]
        assert cfg.marketo.client_secret == SECRET
        assert cfg.redacted()["marketo"]["client_secret_file"] == "/etc/dropzone/secrets/mkto"

    def test_an_unreadable_secret_file_names_the_key(self) -> None:
        """A secret file that cannot be read is a ConfigError on client_secret_file."""
        data = base()
        del data["marketo"]["client_secret"]
        data["marketo"]["client_secret_file"] = "/run/secrets/mkto"

        def read_file(path: str) -> str:
            raise FileNotFoundError(2, "No such file or directory", path)

        refused(data, "marketo.client_secret_file: cannot read /run/secrets/mkto: No such file", read_file=read_file)

    def test_an_empty_secret_file_is_refused(self) -> None:
        """A secret file holding only a newline is an error, not an empty secret."""
        data = base()
        del data["marketo"]["client_secret"]
        data["marketo"]["client_secret_file"] = "/run/secrets/mkto"
        refused(data, "marketo.client_secret_file: /run/secrets/mkto is empty", read_file=lambda p: "\n")

    def test_both_secret_sources_are_refused(self) -> None:
        """client_secret and client_secret_file together are ambiguous."""
        data = base()
        data["marketo"]["client_secret_file"] = "/run/secrets/mkto"
        refused(data, "marketo.client_secret: give client_secret or client_secret_file, not both")

    def test_a_missing_secret_is_refused(self) -> None:
        """One of client_secret / client_secret_file is required."""
        data = base()
        del data["marketo"]["client_secret"]
        refused(data, "marketo.client_secret: is required (or client_secret_file)")

    def test_a_wrongly_typed_secret_is_not_echoed(self) -> None:
        """A secret of the wrong type is refused without printing its value."""
        data = base()
        data["marketo"]["client_secret"] = 98765432
        error = refused(data, "marketo.client_secret: expected a string, got an integer")
        assert "98765432" not in str(error)


class TestEnvironment:
    def test_a_variable_is_expanded(self) -> None:
        """${VAR} takes its value from the environment given."""
        assert parse(SAMPLE, environ=SAMPLE_ENV).marketo.client_id == "the-id"

    def test_a_missing_variable_names_the_key_and_the_variable(self) -> None:
        """An unset ${VAR} is a ConfigError naming both."""
        refused(SAMPLE, "config.yaml: marketo.client_id: environment variable MARKETO_CLIENT_ID is not set")

    def test_a_default_applies_when_unset_or_empty(self) -> None:
        """${VAR:-default} falls back when VAR is unset or empty."""
        data = base()
        data["marketo"]["client_id"] = "${MKTO_ID:-demo}"
        assert parse_data(data).marketo.client_id == "demo"
        assert parse_data(data, environ={"MKTO_ID": ""}).marketo.client_id == "demo"
        assert parse_data(data, environ={"MKTO_ID": "real"}).marketo.client_id == "real"

    def test_double_dollar_is_a_literal(self) -> None:
        """$${ stands for a literal ${, and a lone $ is kept."""
        data = base()
        data["marketo"]["client_secret"] = "a$b$${NOT_A_VAR}"
        assert parse_data(data).marketo.client_secret == "a$b${NOT_A_VAR}"

    def test_an_unterminated_reference_is_refused(self) -> None:
        """'${' without '}' is an error, not kept as text."""
        data = base()
        data["marketo"]["client_id"] = "${OOPS"
        refused(data, "marketo.client_id: unterminated ${")

    def test_an_invalid_variable_name_is_refused(self) -> None:
        """${1X} is not a valid reference."""
        data = base()
        data["marketo"]["client_id"] = "${1X}"
        refused(data, "marketo.client_id: ${1X} is not a valid reference")

    def test_a_variable_may_stand_for_a_number(self) -> None:
        """A value from the environment is read as the integer or duration the key needs."""
        data = base()
        first_route(data)["listId"] = "${LIST_ID}"
        data["inboxes"][0]["quiet_period"] = "${QUIET:-30}"
        cfg = parse_data(data, environ={"LIST_ID": "1234"})
        assert cfg.inboxes[0].routes[0].list_id == 1234
        assert cfg.inboxes[0].quiet_period == 30.0

    def test_a_variable_that_is_not_a_number_is_refused(self) -> None:
        """listId from the environment must still be an integer."""
        data = base()
        first_route(data)["listId"] = "${LIST_ID}"
        refused(data, "inboxes[0].routes[0].listId: expected an integer, got 'many'", environ={"LIST_ID": "many"})

    def test_a_literal_string_is_not_a_number(self) -> None:
        """Only values from the environment are converted; a quoted '1234' in YAML is a type error."""
        data = base()
        first_route(data)["listId"] = "1234"
        refused(data, "inboxes[0].routes[0].listId: expected an integer, got a string")


class TestMarketoSettings:
    def test_an_endpoint_with_rest_is_refused(self) -> None:
        """The endpoint is given without /rest."""
        data = base()
        data["marketo"]["endpoint"] = "https://123-ABC-456.mktorest.com/rest"
        refused(data, "marketo.endpoint: 'https://123-ABC-456.mktorest.com/rest': give the endpoint without /rest")

    def test_an_endpoint_that_is_not_a_url_is_refused(self) -> None:
        """The endpoint must be an http(s) URL."""
        data = base()
        data["marketo"]["endpoint"] = "123-ABC-456.mktorest.com"
        refused(data, "marketo.endpoint: '123-ABC-456.mktorest.com' is not an http(s) URL")

    def test_the_call_rate_is_capped_at_marketos_limit(self) -> None:
        """calls_per_20s above 100 is refused."""
        data = base()
        data["marketo"]["calls_per_20s"] = 101
        refused(data, "marketo.calls_per_20s: must be between 1 and 100, got 101")

    def test_open_imports_are_capped_at_ten(self) -> None:
        """max_open_imports above 10 is refused."""
        data = base()
        data["marketo"]["max_open_imports"] = 11
        refused(data, "marketo.max_open_imports: must be between 1 and 10, got 11")

    def test_max_importing_is_gone(self) -> None:
        """max_importing was read by nothing (Marketo alone decides which 2 import): the key is refused by name."""
        data = base()
        data["marketo"]["max_importing"] = 2
        refused(data, "max_importing")

    def test_a_boolean_is_not_an_integer(self) -> None:
        """YAML's true is not accepted where a count is expected."""
        data = base()
        data["marketo"]["max_open_imports"] = True
        refused(data, "marketo.max_open_imports: expected an integer, got a boolean")

    def test_split_max_bytes_stays_under_ten_megabytes(self) -> None:
        """split_max_bytes above 10,000,000 is refused."""
        data = base()
        data["split_max_bytes"] = 10_000_001
        refused(data, "split_max_bytes: must be between 1 and 10000000, got 10000001")


class TestDurations:
    def test_durations_take_units(self) -> None:
        """'24h', '10m', '500ms' and plain numbers are seconds."""
        data = base()
        data["inboxes"][0].update(stale_partial_after="24h", scan_interval="10m", quiet_period="500ms")
        data["marketo"]["poll_interval"] = 2.5
        cfg = parse_data(data)
        inbox = cfg.inboxes[0]
        assert (inbox.stale_partial_after, inbox.scan_interval, inbox.quiet_period) == (86400.0, 600.0, 0.5)
        assert cfg.marketo.poll_interval == 2.5

    def test_a_word_is_not_a_duration(self) -> None:
        """poll_interval: fast is a type error naming the key."""
        data = base()
        data["marketo"]["poll_interval"] = "fast"
        refused(data, "marketo.poll_interval: expected seconds (a number, or like '90s', '10m', '24h'), got 'fast'")

    def test_a_zero_quiet_period_is_allowed(self) -> None:
        """quiet_period 0 means one look is enough."""
        data = base()
        data["inboxes"][0]["quiet_period"] = 0
        assert parse_data(data).inboxes[0].quiet_period == 0.0

    def test_a_zero_scan_interval_is_refused(self) -> None:
        """scan_interval must be positive."""
        data = base()
        data["inboxes"][0]["scan_interval"] = 0
        refused(data, "inboxes[0].scan_interval: must be more than 0 seconds, got 0")

    def test_a_negative_duration_is_refused(self) -> None:
        """Durations cannot be negative."""
        data = base()
        data["inboxes"][0]["quiet_period"] = -1
        refused(data, "inboxes[0].quiet_period: must be at least 0 seconds, got -1")


class TestStructure:
    def test_an_unknown_key_suggests_the_right_one(self) -> None:
        """A typo is refused with a "did you mean" hint."""
        data = base()
        first_route(data)["lookupfield"] = "email"
        refused(data, "config.yaml: inboxes[0].routes[0].lookupfield: unknown key; did you mean lookupField?")

    def test_an_unknown_top_level_key_lists_the_known_ones(self) -> None:
        """A key nothing resembles is refused with the list of known keys."""
        data = base()
        data["zzz"] = 1
        refused(data, "config.yaml: zzz: unknown key; known keys: marketo, state_dir")

    def test_a_missing_required_key_is_named(self) -> None:
        """Missing state_dir is refused by name."""
        data = base()
        del data["state_dir"]
        refused(data, "config.yaml: state_dir: is required")

    def test_a_section_of_the_wrong_type_is_refused(self) -> None:
        """marketo must be a mapping."""
        data = base()
        data["marketo"] = ["endpoint"]
        refused(data, "config.yaml: marketo: expected a mapping, got a list")

    def test_an_empty_inbox_list_is_refused(self) -> None:
        """At least one inbox is needed."""
        data = base()
        data["inboxes"] = []
        refused(data, "inboxes: must list at least one inbox")

    def test_an_inbox_without_routes_is_refused(self) -> None:
        """Each inbox needs at least one route."""
        data = base()
        data["inboxes"][0]["routes"] = []
        refused(data, "inboxes[0].routes: must list at least one route")

    def test_duplicate_keys_are_refused(self) -> None:
        """A key given twice is an error with both line numbers, not a silent override."""
        text = yaml.safe_dump(base(), sort_keys=False) + "state_dir: /other\n"
        refused(text, "config.yaml: state_dir: duplicate key (lines")

    def test_invalid_yaml_is_refused(self) -> None:
        """A YAML syntax error names the file and the line."""
        refused("marketo: [unclosed\n", "config.yaml: not valid YAML:")

    def test_an_empty_file_is_refused(self) -> None:
        """An empty configuration is an error."""
        refused("", "config.yaml: is empty", source="config.yaml")

    def test_a_top_level_list_is_refused(self) -> None:
        """The document must be a mapping."""
        refused("- a\n- b\n", "config.yaml: expected a mapping, got a list")

    def test_http_is_off_unless_given(self) -> None:
        """No http section means no listener; an empty one listens on the default address."""
        assert parse_data(base()).http is None
        data = base()
        data["http"] = {}
        http = parse_data(data).http
        assert http is not None
        assert http.listen == D.HTTP_LISTEN

    def test_http_listen_takes_ipv6(self) -> None:
        """listen accepts [::1]:PORT."""
        data = base()
        data["http"] = {"listen": "[::1]:9000"}
        http = parse_data(data).http
        assert http is not None
        assert (http.host, http.port, http.listen) == ("::1", 9000, "[::1]:9000")

    def test_a_bad_listen_address_is_refused(self) -> None:
        """listen must be HOST:PORT."""
        data = base()
        data["http"] = {"listen": "9108"}
        refused(data, "http.listen: '9108': expected HOST:PORT")

    def test_log_settings(self) -> None:
        """log.format and log.level are parsed; json maps to logs.configure's argument."""
        data = base()
        data["log"] = {"format": "console", "level": "DEBUG"}
        log = parse_data(data).log
        assert (log.format, log.level, log.json) == (LogFormat.CONSOLE, LogLevel.DEBUG, False)

    def test_a_bad_watch_mode_is_refused(self) -> None:
        """watch is one of auto, native, polling."""
        data = base()
        data["inboxes"][0]["watch"] = "inotify"
        refused(data, "inboxes[0].watch: 'inotify' is not one of auto, native, polling")


class TestRoutes:
    def test_an_unknown_object_is_refused(self) -> None:
        """object must be leads, customobject or programmember, and the message says so."""
        data = base()
        data["inboxes"][0]["routes"].extend(
            [{"match": "a_*.csv", "object": "leads"}, {"match": "b_*.csv", "object": "lead"}]
        )
        refused(
            data, "config.yaml: inboxes[0].routes[2].object: 'lead' is not one of leads, customobject, programmember"
        )

    def test_a_custom_object_needs_its_api_name(self) -> None:
        """customobject without apiName is refused."""
        data = base()
        data["inboxes"][0]["routes"] = [{"match": "*.csv", "object": "customobject"}]
        refused(data, "inboxes[0].routes[0].apiName: is required")

    def test_a_bad_api_name_is_refused(self) -> None:
        """apiName goes into a URL path, so it must look like an API name."""
        data = base()
        data["inboxes"][0]["routes"] = [{"match": "*.csv", "object": "customobject", "apiName": "car/../x"}]
        refused(data, "inboxes[0].routes[0].apiName: 'car/../x' is not a custom object API name")

    def test_program_members_need_program_and_status(self) -> None:
        """programmember needs programId, then programMemberStatus."""
        data = base()
        data["inboxes"][0]["routes"] = [{"match": "*.csv", "object": "programmember"}]
        refused(data, "inboxes[0].routes[0].programId: is required")
        data["inboxes"][0]["routes"][0]["programId"] = 1044
        refused(data, "inboxes[0].routes[0].programMemberStatus: is required")

    def test_a_parameter_of_another_object_is_refused(self) -> None:
        """apiName on a leads route is an error, not silently ignored."""
        data = base()
        first_route(data)["apiName"] = "car_c"
        refused(data, "inboxes[0].routes[0].apiName: applies only to object: customobject, not leads")

    @pytest.mark.parametrize(
        ("glob", "problem"),
        [
            ("leads_[0-9.csv", "unclosed ["),
            ("/srv/in/*.csv", "must be relative to the inbox"),
            ("../*.csv", "'.' and '..' are not allowed"),
            ("acme//*.csv", "empty folder name"),
            ("a**.csv", "** must be a whole folder segment"),
            ("acme\\*.csv", "backslash is not allowed"),
            ("[z-a].csv", "not a valid glob"),
        ],
    )
    def test_a_bad_glob_is_refused(self, glob: str, problem: str) -> None:
        """Malformed globs are refused at load, naming the route's match key."""
        data = base()
        first_route(data)["match"] = glob
        refused(data, "inboxes[0].routes[0].match: ")
        refused(data, problem)

    def test_a_glob_of_ignored_names_is_refused(self) -> None:
        """A route that could only match temporary files would never fire."""
        data = base()
        first_route(data).update(match="*.tmp", format="csv")
        refused(data, "inboxes[0].routes[0].match: '*.tmp' only matches names that are always ignored")

    def test_a_glob_of_marker_files_is_refused(self) -> None:
        """A route matching the inbox's marker files would never fire."""
        data = base()
        data["inboxes"][0]["routes"] = [
            {"match": "*.csv", "object": "leads", "marker": True},
            {"match": "*.csv.done", "object": "leads", "format": "csv"},
        ]
        refused(data, "inboxes[0].routes[1].match: '*.csv.done' only matches names that are always ignored")

    def test_a_fixed_unknown_extension_needs_a_format(self) -> None:
        """'*.txt' without format is refused: the extension says nothing."""
        data = base()
        first_route(data)["match"] = "*.txt"
        refused(data, "inboxes[0].routes[0].format: is required: the extension .txt of '*.txt'")

    def test_an_open_extension_leaves_the_format_to_routing(self) -> None:
        """'data_*' without format parses; routing reads each file's extension."""
        data = base()
        first_route(data)["match"] = "data_*"
        assert parse_data(data).inboxes[0].routes[0].format is None

    def test_an_unknown_format_is_refused(self) -> None:
        """format is one of csv, tsv, ssv."""
        data = base()
        first_route(data)["format"] = "xlsx"
        refused(data, "inboxes[0].routes[0].format: 'xlsx' is not one of csv, tsv, ssv")

    def test_marker_true_means_dot_done(self) -> None:
        """marker: true waits for NAME.done; a string gives another suffix."""
        data = base()
        first_route(data)["marker"] = True
        assert parse_data(data).inboxes[0].routes[0].marker == ".done"
        first_route(data)["marker"] = ".ok"
        assert parse_data(data).inboxes[0].routes[0].marker == ".ok"

    def test_a_marker_must_be_a_suffix(self) -> None:
        """marker: done (no dot) is refused."""
        data = base()
        first_route(data)["marker"] = "done"
        refused(data, "inboxes[0].routes[0].marker: 'done': expected a suffix like '.done'")

    def test_an_encoding_is_checked_and_normalized(self) -> None:
        """A known text encoding is kept under its canonical name."""
        data = base()
        first_route(data)["encoding"] = "CP1252"
        assert parse_data(data).inboxes[0].routes[0].encoding == "cp1252"

    @pytest.mark.parametrize("name", ["klingon", "base64"])
    def test_an_unknown_or_binary_encoding_is_refused(self, name: str) -> None:
        """Unknown codecs, and bytes-to-bytes codecs such as base64, are refused."""
        data = base()
        first_route(data)["encoding"] = name
        refused(data, f"inboxes[0].routes[0].encoding: {name!r} is not a known text encoding")

    def test_trim_header_must_be_a_boolean(self) -> None:
        """trim_header: 'yes' (a string) is refused."""
        data = base()
        first_route(data)["trim_header"] = "yes"
        refused(data, "inboxes[0].routes[0].trim_header: expected true or false, got a string")

    def test_coalesce_is_a_boolean_route_key(self) -> None:
        data = base()
        first_route(data)["coalesce"] = False
        assert parse_data(data).inboxes[0].routes[0].coalesce is False
        first_route(data)["coalesce"] = "no"
        refused(data, "inboxes[0].routes[0].coalesce: expected true or false, got a string")


class TestRouteObject:
    def test_marketo_params_for_leads(self) -> None:
        """Lead parameters carry Marketo's names and leave out what is unset."""
        route = Route(match="*.csv", object=ObjectKind.LEADS, list_id=7)
        assert route.marketo_params(FileFormat.CSV) == {"format": "csv", "lookupField": "email", "listId": 7}

    def test_marketo_params_for_custom_objects(self) -> None:
        """Custom-object parameters name the object."""
        route = Route(match="*.tsv", object=ObjectKind.CUSTOM_OBJECT, api_name="car_c", format=FileFormat.TSV)
        assert route.marketo_params() == {"format": "tsv", "apiName": "car_c"}

    def test_marketo_params_for_program_members(self) -> None:
        """Program-member parameters name the program and the status."""
        route = Route(
            match="*.ssv", object=ObjectKind.PROGRAM_MEMBER, program_id=1044, program_member_status="Registered"
        )
        assert route.marketo_params() == {"programId": 1044, "programMemberStatus": "Registered"}

    def test_a_route_built_in_code_checks_its_glob(self) -> None:
        """Route() refuses a malformed glob with ValueError."""
        with pytest.raises(ValueError, match="unclosed"):
            Route(match="[x", object=ObjectKind.LEADS)

    def test_an_inbox_knows_its_markers_and_processing_area(self) -> None:
        """marker_suffixes lists each marker once; processing_dir is inside the inbox."""
        data = base()
        data["inboxes"][0]["routes"] = [
            {"match": "a*.csv", "object": "leads", "marker": True},
            {"match": "b*.csv", "object": "leads", "marker": ".done"},
            {"match": "*.csv", "object": "leads"},
        ]
        inbox = parse_data(data).inboxes[0]
        assert inbox.marker_suffixes == (".done",)
        assert inbox.processing_dir == Path("/srv/acme/inbox/.processing")


class TestPaths:
    def test_relative_paths_are_resolved_against_the_config_folder(self) -> None:
        """'./demo/inbox' in /etc/dropzone/config.yaml is /etc/dropzone/demo/inbox."""
        data = base()
        data["state_dir"] = "./demo/state"
        data["inboxes"][0].update(path="demo/inbox", outbox="./demo/../demo/outbox")
        cfg = parse_data(data, base_dir="/etc/dropzone")
        assert cfg.state_dir == Path("/etc/dropzone/demo/state")
        assert cfg.inboxes[0].path == Path("/etc/dropzone/demo/inbox")
        assert cfg.inboxes[0].outbox == Path("/etc/dropzone/demo/outbox")

    def test_the_config_folder_defaults_to_the_sources(self) -> None:
        """Without base_dir, relative paths are resolved against the folder of `source`."""
        data = base()
        data["state_dir"] = "state"
        cfg = parse(yaml.safe_dump(data), source="/opt/dz/config.yaml", environ={})
        assert cfg.state_dir == Path("/opt/dz/state")

    def test_a_tilde_is_refused(self) -> None:
        """'~' is not expanded, so it is refused rather than taken literally."""
        data = base()
        data["state_dir"] = "~/state"
        refused(data, "state_dir: '~/state': '~' is not expanded")

    def test_duplicate_inbox_paths_are_refused(self) -> None:
        """Two inboxes on one folder are refused."""
        data = base()
        data["inboxes"].append(copy.deepcopy(data["inboxes"][0]) | {"outbox": "/srv/other/outbox"})
        refused(data, "inboxes[1].path: /srv/acme/inbox is already inboxes[0].path")

    def test_nested_inboxes_are_refused(self) -> None:
        """An inbox inside another would be read twice."""
        data = base()
        data["inboxes"].append(copy.deepcopy(data["inboxes"][0]) | {"path": "/srv/acme/inbox/sub", "outbox": "/srv/o2"})
        refused(data, "inboxes[1].path: /srv/acme/inbox/sub and inboxes[0].path /srv/acme/inbox overlap")

    def test_an_outbox_equal_to_the_inbox_is_refused(self) -> None:
        """The outbox cannot be the inbox."""
        data = base()
        data["inboxes"][0]["outbox"] = "/srv/acme/inbox"
        refused(data, "inboxes[0].outbox: must not be the inbox itself (/srv/acme/inbox)")

    def test_an_outbox_inside_the_inbox_is_refused(self) -> None:
        """Status files inside the inbox would be picked up as uploads."""
        data = base()
        data["inboxes"][0]["outbox"] = "/srv/acme/inbox/results"
        refused(data, "inboxes[0].outbox: /srv/acme/inbox/results must not be inside inboxes[0].path")

    def test_an_archive_inside_the_inbox_is_refused(self) -> None:
        """Archived files inside the inbox would be imported again."""
        data = base()
        data["inboxes"][0]["archive"] = "/srv/acme/inbox/archive"
        refused(data, "inboxes[0].archive: /srv/acme/inbox/archive must not be inside inboxes[0].path")

    def test_a_state_dir_inside_an_inbox_is_refused(self) -> None:
        """The journal must not live in a partner's drop folder."""
        data = base()
        data["state_dir"] = "/srv/acme/inbox/state"
        refused(data, "state_dir: /srv/acme/inbox/state must not be inside inboxes[0].path")

    def test_one_inboxs_outbox_cannot_be_anothers_inbox(self) -> None:
        """Status files of one inbox must not land in another inbox."""
        data = base()
        data["inboxes"].append({"path": "/srv/acme/outbox", "outbox": "/srv/b/out", "routes": [first_route(data)]})
        refused(data, "inboxes[0].outbox: must not be the inbox itself (/srv/acme/outbox)")


class TestLoad:
    def test_load_reads_and_resolves_against_the_files_folder(self, tmp_path: Path) -> None:
        """load() parses a file and resolves relative paths against its folder."""
        data = base()
        data["state_dir"] = "./state"
        path = tmp_path / "dz.yaml"
        path.write_text(yaml.safe_dump(data))
        cfg = load(path)
        assert cfg.state_dir == tmp_path / "state"
        assert cfg.source == str(path)

    def test_a_missing_file_is_a_config_error(self, tmp_path: Path) -> None:
        """load() of a missing file is a ConfigError naming it."""
        with pytest.raises(ConfigError, match="cannot read the configuration"):
            load(tmp_path / "nope.yaml")

    def test_errors_name_the_file(self, tmp_path: Path) -> None:
        """Errors from load() start with the path of the file."""
        data = base()
        first_route(data)["object"] = "lead"
        path = tmp_path / "dz.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError, match=re.escape(f"{path}: inboxes[0].routes[0].object: 'lead'")):
            load(path)

    def test_the_example_config_loads_without_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """config.example.yaml works out of the box against the simulator's default port."""
        monkeypatch.delenv("MARKETO_CLIENT_ID", raising=False)
        monkeypatch.delenv("MARKETO_CLIENT_SECRET", raising=False)
        cfg = load(REPO / "config.example.yaml")
        assert cfg.marketo.endpoint == "http://127.0.0.1:8788"
        assert cfg.state_dir == REPO / "demo" / "state"
        assert [r.object for r in cfg.inboxes[0].routes] == [ObjectKind.LEADS, ObjectKind.LEADS, *ObjectKind]
        assert [r.instance for r in cfg.inboxes[0].routes] == ["sandbox", "default", "default", "default", "default"]
        expo = cfg.inboxes[0].routes[2]
        assert expo.columns == (("E-mail Address", "email"), ("First Name", "firstName"), ("Internal Ref", None))
        assert expo.constants == (("leadSource", "Expo 2026"),)
        assert cfg.instances["sandbox"].endpoint == "http://127.0.0.1:8789"

    def test_the_example_config_documents_every_key(self) -> None:
        """Every key the parser accepts appears in config.example.yaml."""
        text = (REPO / "config.example.yaml").read_text()
        keys = (
            config._TOP_KEYS
            + instances.MARKETO_KEYS
            + config._INBOX_KEYS
            + config._ROUTE_KEYS
            + config._HTTP_KEYS
            + config._LOG_KEYS
            + unpack_config.PGP_KEYS
        )
        missing = [k for k in keys if not re.search(rf"^\s*#?\s*-?\s*{k}:", text, re.MULTILINE)]
        assert missing == []


class TestCheckPaths:
    def make(self, tmp_path: Path, **inbox: str) -> Config:
        for name in ("inbox", "outbox", "state"):
            (tmp_path / name).mkdir(exist_ok=True)
        data = base()
        data["state_dir"] = "state"
        data["inboxes"][0].update({"path": "inbox", "outbox": "outbox", **inbox})
        return parse_data(data, base_dir=tmp_path)

    def test_a_good_layout_has_no_problems(self, tmp_path: Path) -> None:
        """Existing, writable folders on one filesystem give no problems."""
        (tmp_path / "archive").mkdir()
        cfg = self.make(tmp_path, archive="archive")
        cfg.inboxes[0].processing_dir.mkdir()
        assert check_paths(cfg) == []

    def test_a_missing_inbox_is_reported_by_key(self, tmp_path: Path) -> None:
        """A missing folder is reported with its key and path."""
        cfg = self.make(tmp_path, path="gone")
        assert check_paths(cfg) == [f"inboxes[0].path: {tmp_path / 'gone'} does not exist"]

    def test_a_missing_outbox_or_archive_with_a_parent_is_created_not_refused(self, tmp_path: Path) -> None:
        cfg = self.make(tmp_path, outbox="new_outbox", archive="new_archive")
        (tmp_path / "outbox").rmdir()
        assert check_paths(cfg) == []
        cfg = self.make(tmp_path, outbox="no/such/outbox")
        assert check_paths(cfg) == [f"inboxes[0].outbox: {tmp_path / 'no/such/outbox'} does not exist"]

    def test_a_planted_processing_symlink_does_not_refuse_the_configuration(self, tmp_path: Path) -> None:
        """A partner's ``.processing -> elsewhere`` is the claim's to refuse, not a reason to stop the daemon."""
        cfg = self.make(tmp_path)
        (tmp_path / "elsewhere").mkdir()
        cfg.inboxes[0].processing_dir.symlink_to(tmp_path / "elsewhere")
        assert check_paths(cfg) == []

    def test_a_file_where_a_folder_should_be_is_reported(self, tmp_path: Path) -> None:
        """An outbox that is a regular file is reported."""
        (tmp_path / "out.txt").write_text("x")
        cfg = self.make(tmp_path, outbox="out.txt")
        assert check_paths(cfg) == [f"inboxes[0].outbox: {tmp_path / 'out.txt'} is not a directory"]

    @pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
    def test_a_read_only_outbox_is_reported(self, tmp_path: Path) -> None:
        """An outbox the daemon cannot write is reported."""
        cfg = self.make(tmp_path)
        (tmp_path / "outbox").chmod(0o500)
        try:
            assert check_paths(cfg) == [f"inboxes[0].outbox: {tmp_path / 'outbox'} is not writable"]
        finally:
            (tmp_path / "outbox").chmod(0o700)
