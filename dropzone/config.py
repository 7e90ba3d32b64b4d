"""Configuration: YAML text in, frozen dataclasses out, or a ``ConfigError`` naming the key.

Owns: the parsed shape the rest of dropzone takes, and every key, every
default and every check that needs no filesystem (down to folders the daemon
writes not overlapping those it reads). Does not own: the conventions every
value follows, ``${VAR}`` expansion, durations, relative paths (``schema``);
the glob syntax of routes (``globs``, compiled once into each ``Route``);
which route takes a file (``routing``); whether a directory exists or is
writable (``preflight.check_paths`` does that I/O, separately from
``parse``); or which watcher an inbox with ``watch: auto`` gets
(``watching``).

Marketo parameters keep Marketo's names (``lookupField``, ``listId``, …);
dropzone's own keys are snake_case. ``config.example.yaml`` documents every
key.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from dropzone import defaults as D
from dropzone.errors import ConfigError
from dropzone.globs import compile_glob, literal_extension, sample_name
from dropzone.instances import MarketoSettings, parse_instances
from dropzone.kinds import SHEET_EXTENSION, FileFormat, Layer, LogFormat, LogLevel, ObjectKind, WatchMode
from dropzone.mapping_config import parse_columns, parse_constants
from dropzone.readiness import is_ignored_name
from dropzone.schema import (
    Context,
    FromEnv,
    Section,
    check_duplicate_keys,
    describe,
    expand,
    join,
    os_problem,
    read_text,
    yaml_problem,
)
from dropzone.targets import ImportTarget
from dropzone.unpack_config import TOP_KEYS as _UNPACK_KEYS
from dropzone.unpack_config import PgpSettings, UnpackLimits, parse_limits, parse_pgp

# --- The parsed shape --------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One routing rule: which files (``match``) go to which Marketo import, and how to read them.

    ``format`` None means "from the file's extension, at routing time".
    ``marker`` is a suffix (``".done"``): the file is ready only once
    ``NAME<marker>`` exists. ``encoding`` None means the file is UTF-8.
    ``columns``: (partner header name, Marketo field name, or None to drop
    the column); ``constants``: (field name, text) added to every record
    (``dropzone.mapping``).
    """

    match: str
    object: ObjectKind
    format: FileFormat | None = None
    lookup_field: str | None = None
    list_id: int | None = None
    partition_name: str | None = None
    api_name: str | None = None
    program_id: int | None = None
    program_member_status: str | None = None
    marker: str | None = None
    trim_header: bool = False
    encoding: str | None = None
    #: Merge this route's small files with other pending ones of the same inbox, target, format and header
    #: into one import (each file still gets its own results).
    coalesce: bool = True
    columns: tuple[tuple[str, str | None], ...] = ()
    constants: tuple[tuple[str, str], ...] = ()
    #: Check the header against Marketo's describe before the file takes a queue slot (``gate``, ``fieldcheck``).
    preflight: bool = D.PREFLIGHT
    #: The Marketo instance (a name from ``marketo``/``instances``): the route's own, else its inbox's.
    instance: str = D.DEFAULT_INSTANCE
    #: The sheet of an ``.xlsx`` drop to import (None: its first sheet).
    sheet: str | None = None
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A frozen dataclass: the compiled glob is set once, here.
        object.__setattr__(self, "_regex", compile_glob(self.match))

    def matches(self, relpath: str) -> bool:
        """Whether the glob matches a ``/``-separated path relative to the inbox."""
        return self._regex.fullmatch(relpath) is not None

    def marker_for(self, relpath: str) -> str | None:
        """The marker file a path waits for (``a/x.csv`` → ``a/x.csv.done``), or None."""
        return relpath + self.marker if self.marker else None

    def target(self) -> ImportTarget:
        """The import this route sends to (``lookupField`` defaults to Marketo's own, ``email``)."""
        leads = self.object is ObjectKind.LEADS
        return ImportTarget(
            kind=self.object,
            instance=self.instance,
            lookup_field=(self.lookup_field or D.LOOKUP_FIELD) if leads else None,
            list_id=self.list_id,
            partition_name=self.partition_name,
            api_name=self.api_name,
            program_id=self.program_id,
            program_member_status=self.program_member_status,
        )

    def marketo_params(self, format: FileFormat | None = None) -> dict[str, str | int]:
        """The import's parameters under Marketo's names, for the status file.

        Args:
            format: the resolved format; the route's own when omitted (left
                out if neither is known).
        """
        fmt = format or self.format
        return {**({"format": fmt.value} if fmt is not None else {}), **self.target().params()}

    def redacted(self) -> dict[str, Any]:
        out: dict[str, Any] = {"match": self.match, "object": self.object.value}
        out.update({k: v for k, v in self.marketo_params().items() if k != "format"})
        out["format"] = self.format.value if self.format else None
        out.update(
            marker=self.marker, trim_header=self.trim_header, encoding=self.encoding, instance=self.instance,
            coalesce=self.coalesce, preflight=self.preflight, sheet=self.sheet,
        )
        if self.columns:
            out["columns"] = dict(self.columns)
        if self.constants:
            out["constants"] = dict(self.constants)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Inbox:
    path: Path
    outbox: Path
    routes: tuple[Route, ...]
    archive: Path | None = None
    watch: WatchMode = D.WATCH
    scan_interval: float = D.SCAN_INTERVAL_S
    quiet_period: float = D.QUIET_PERIOD_S
    stale_partial_after: float = D.STALE_PARTIAL_AFTER_S
    #: The inbox's Marketo instance when it names one; each route has the one it uses.
    instance: str | None = None

    @property
    def processing_dir(self) -> Path:
        """Where files are claimed to, by ``rename(2)``: inside the inbox, so on its filesystem."""
        return self.path / D.PROCESSING_DIRNAME

    @property
    def marker_suffixes(self) -> tuple[str, ...]:
        """The marker suffixes of this inbox's routes, each once."""
        return tuple(dict.fromkeys(r.marker for r in self.routes if r.marker))

    def redacted(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "outbox": str(self.outbox),
            "archive": str(self.archive) if self.archive else None,
            "watch": self.watch.value,
            "scan_interval": self.scan_interval,
            "quiet_period": self.quiet_period,
            "stale_partial_after": self.stale_partial_after,
            "instance": self.instance,
            "routes": [r.redacted() for r in self.routes],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    host: str
    port: int

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    format: LogFormat = D.LOG_FORMAT
    level: LogLevel = D.LOG_LEVEL

    @property
    def json(self) -> bool | None:
        """For ``logs.configure(json=…)``: None lets it decide by TTY."""
        return {LogFormat.AUTO: None, LogFormat.JSON: True, LogFormat.CONSOLE: False}[self.format]


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    marketo: MarketoSettings  # the default instance
    state_dir: Path
    inboxes: tuple[Inbox, ...]
    #: The other instances, by name (``instances:``).
    instances: Mapping[str, MarketoSettings] = field(default_factory=dict)
    split_max_bytes: int = D.SPLIT_MAX_BYTES
    http: HttpSettings | None = None
    log: LogSettings = field(default_factory=LogSettings)
    source: str = "config.yaml"
    #: The private key that decrypts *.pgp, *.gpg, *.asc drops (None: such drops are refused).
    pgp: PgpSettings | None = None
    #: How far compressed, encrypted and spreadsheet drops may expand.
    unpack: UnpackLimits = field(default_factory=UnpackLimits)

    def all_instances(self) -> dict[str, MarketoSettings]:
        """Every instance by name, the default (``marketo:``) first."""
        return {self.marketo.name: self.marketo, **self.instances}

    def redacted(self) -> dict[str, Any]:
        """The whole configuration, defaults filled in, secrets masked: for ``dropzone check``."""
        return {
            "source": self.source,
            "marketo": self.marketo.redacted(),
            "instances": {name: i.redacted() for name, i in self.instances.items()},
            "state_dir": str(self.state_dir),
            "split_max_bytes": self.split_max_bytes,
            "inboxes": [i.redacted() for i in self.inboxes],
            "http": {"listen": self.http.listen} if self.http else None,
            "log": {"format": self.log.format.value, "level": self.log.level.value},
            "pgp": self.pgp.redacted() if self.pgp else None,
            **self.unpack.redacted(),
        }


# --- Parsing -----------------------------------------------------------------

_TOP_KEYS = ("marketo", "state_dir", "instances", "inboxes", "split_max_bytes", "http", "log", *_UNPACK_KEYS)
_INBOX_KEYS = (
    "path", "outbox", "archive", "routes", "watch", "scan_interval", "quiet_period", "stale_partial_after", "instance"
)
_ROUTE_COMMON_KEYS = (
    "match", "object", "format", "marker", "trim_header", "encoding", "instance", "coalesce", "preflight",
    "columns", "constants", "sheet",
)
_ROUTE_PARAM_KEYS: Final[dict[ObjectKind, tuple[str, ...]]] = {
    ObjectKind.LEADS: ("lookupField", "listId", "partitionName"),
    ObjectKind.CUSTOM_OBJECT: ("apiName",),
    ObjectKind.PROGRAM_MEMBER: ("programId", "programMemberStatus"),
}
_ROUTE_KEYS = _ROUTE_COMMON_KEYS + tuple(k for keys in _ROUTE_PARAM_KEYS.values() for k in keys)
_HTTP_KEYS = ("listen",)
_LOG_KEYS = ("format", "level")

_API_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


def parse(
    text: str,
    *,
    source: str = "config.yaml",
    environ: Mapping[str, str] | None = None,
    read_file: Callable[[str], str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> Config:
    """Parse and validate a configuration. Touches no directory.

    Args:
        text: the YAML text.
        source: the file's name, used in every error message.
        environ: for ``${VAR}``; ``os.environ`` when omitted.
        read_file: reads ``client_secret_file``; a real file read when omitted.
        base_dir: relative paths are resolved against it; the directory of
            ``source`` when omitted.

    Returns:
        The configuration, every default filled in.

    Raises:
        ConfigError: the text is not valid YAML or not a valid configuration;
            the message names ``source`` and the key path.
    """
    ctx = Context(
        source=source,
        environ=os.environ if environ is None else environ,
        read_file=read_file or read_text,
        base_dir=Path(base_dir) if base_dir is not None else Path(source).parent.absolute(),
    )
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ctx.error("", f"not valid YAML: {yaml_problem(exc)}") from None
    if data is None:
        raise ctx.error("", "is empty")
    if node is not None:
        check_duplicate_keys(ctx, node, "", set())
    data = expand(ctx, data, "")
    return _config(ctx, data)


def load(path: str | os.PathLike[str]) -> Config:
    """Read and parse a configuration file; its directory anchors relative paths.

    Raises:
        ConfigError: the file cannot be read, or ``parse`` refuses it.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the configuration: {os_problem(exc)}") from None
    return parse(text, source=str(p), base_dir=p.absolute().parent)


def _config(ctx: Context, data: object) -> Config:
    top = Section(ctx, data, "", _TOP_KEYS)
    instances = parse_instances(ctx, top.raw("marketo", required=True), top.raw("instances"))
    marketo = instances.pop(D.DEFAULT_INSTANCE)
    state_dir = top.path("state_dir")
    raw_inboxes = top.raw("inboxes", required=True)
    if not isinstance(raw_inboxes, list):
        raise top.error("inboxes", f"expected a list, got {describe(raw_inboxes)}")
    if not raw_inboxes:
        raise top.error("inboxes", "must list at least one inbox")
    names = (D.DEFAULT_INSTANCE, *instances)
    inboxes = tuple(_inbox(ctx, item, join("inboxes", i), names) for i, item in enumerate(raw_inboxes))
    _check_layout(ctx, state_dir, inboxes)
    split_max_bytes = top.integer("split_max_bytes", D.SPLIT_MAX_BYTES, low=1, high=D.MARKETO_MAX_IMPORT_BYTES)
    http = _http(ctx, top.raw("http")) if "http" in top.data else None
    log = _log(ctx, top.raw("log")) if top.has("log") else LogSettings()
    return Config(
        marketo=marketo,
        instances=instances,
        state_dir=state_dir,
        inboxes=inboxes,
        split_max_bytes=split_max_bytes,
        http=http,
        log=log,
        source=ctx.source,
        pgp=parse_pgp(ctx, top.raw("pgp")),
        unpack=parse_limits(top),
    )


def _instance(s: Section, names: Sequence[str], default: str | None) -> str | None:
    name: str | None = s.string("instance", default)
    if name is not None and name not in names:
        raise s.error("instance", f"{name!r} is not a configured instance; one of {', '.join(names)}")
    return name


def _inbox(ctx: Context, data: object, path: str, names: Sequence[str]) -> Inbox:
    s = Section(ctx, data, path, _INBOX_KEYS)
    inbox_path = s.path("path")
    instance = _instance(s, names, None)
    raw_routes = s.raw("routes", required=True)
    if not isinstance(raw_routes, list):
        raise s.error("routes", f"expected a list, got {describe(raw_routes)}")
    if not raw_routes:
        raise s.error("routes", "must list at least one route")
    routes = tuple(
        _route(ctx, item, join(s.key("routes"), i), names, instance or D.DEFAULT_INSTANCE)
        for i, item in enumerate(raw_routes)
    )
    inbox = Inbox(
        path=inbox_path,
        outbox=s.path("outbox"),
        archive=s.path("archive", None),
        routes=routes,
        watch=s.choice("watch", WatchMode, D.WATCH),
        scan_interval=s.seconds("scan_interval", D.SCAN_INTERVAL_S),
        quiet_period=s.seconds("quiet_period", D.QUIET_PERIOD_S, allow_zero=True),
        stale_partial_after=s.seconds("stale_partial_after", D.STALE_PARTIAL_AFTER_S),
        instance=instance,
    )
    markers = inbox.marker_suffixes
    for i, route in enumerate(routes):
        last = route.match.rpartition("/")[2]
        if last != "**" and is_ignored_name(sample_name(last), markers):
            raise ctx.error(
                join(join(s.key("routes"), i), "match"),
                f"{route.match!r} only matches names that are always ignored (hidden, temporary or marker files)",
            )
    return inbox


def _route(ctx: Context, data: object, path: str, names: Sequence[str], inbox_instance: str) -> Route:
    s = Section(ctx, data, path, _ROUTE_KEYS)
    match = s.string("match")
    try:
        compile_glob(match)
    except ValueError as exc:
        raise s.error("match", str(exc)) from None
    kind: ObjectKind = s.choice("object", ObjectKind)
    for other, keys in _ROUTE_PARAM_KEYS.items():
        for key in keys:
            if other is not kind and key in s.data:
                raise s.error(key, f"applies only to object: {other.value}, not {kind.value}")
    fmt: FileFormat | None = s.choice("format", FileFormat, None)
    ext = literal_extension(match)
    if ext is not None and Layer.from_extension(ext) is not None:
        # A .gz or .pgp drop follows the route of the name inside it; a zip's members, their own routes.
        raise s.error("match", f"{match!r}: routes match the name inside a .{ext} file (for leads.csv.gz: "
                      "leads.csv), so this route would never match")
    sheet = s.string("sheet", None)
    if sheet is not None and ext is not None and ext.lower() != SHEET_EXTENSION:
        raise s.error("sheet", f"applies to .{SHEET_EXTENSION} workbooks only, and {match!r} matches .{ext} files")
    if fmt is None and ext is not None and ext.lower() != SHEET_EXTENSION and FileFormat.from_name(f"x.{ext}") is None:
        raise s.error("format", f"is required: the extension .{ext} of {match!r} does not give csv, tsv or ssv")
    marker = _marker(s)
    encoding = s.string("encoding", None)
    if encoding is not None:
        encoding = _encoding(s, encoding)
    params: dict[str, Any] = {}
    if kind is ObjectKind.LEADS:
        params.update(
            lookup_field=s.string("lookupField", D.LOOKUP_FIELD),
            list_id=s.integer("listId", None, low=1),
            partition_name=s.string("partitionName", None),
        )
    elif kind is ObjectKind.CUSTOM_OBJECT:
        api_name = s.string("apiName")
        if not _API_NAME.match(api_name):
            raise s.error("apiName", f"{api_name!r} is not a custom object API name (like car_c)")
        params["api_name"] = api_name
    else:
        params.update(
            program_id=s.integer("programId", low=1),
            program_member_status=s.string("programMemberStatus"),
        )
        if params["program_member_status"].strip().casefold() == D.NOT_IN_PROGRAM.casefold():
            raise s.error("programMemberStatus", f'"{D.NOT_IN_PROGRAM}" is never a valid status for an import')
    columns = parse_columns(s)
    return Route(
        match=match,
        object=kind,
        format=fmt,
        marker=marker,
        trim_header=s.boolean("trim_header", False),
        encoding=encoding,
        coalesce=s.boolean("coalesce", True),
        preflight=s.boolean("preflight", D.PREFLIGHT),
        instance=_instance(s, names, inbox_instance) or inbox_instance,
        columns=columns,
        constants=parse_constants(s, columns),
        sheet=sheet,
        **params,
    )


def _marker(s: Section) -> str | None:
    value = s.raw("marker")
    if isinstance(value, FromEnv) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"
    if value is None or value is False:
        return None
    if value is True:
        return D.MARKER_SUFFIX
    if not isinstance(value, str):
        raise s.error("marker", f"expected true, false or a suffix like '.done', got {describe(value)}")
    if len(value) < 2 or not value.startswith(".") or any(c in value for c in "/*?["):
        raise s.error("marker", f"{value!r}: expected a suffix like '.done' (a dot, then a name)")
    return str(value)


def _encoding(s: Section, name: str) -> str:
    try:
        canonical = codecs.lookup(name).name
        # codecs.lookup also knows bytes-to-bytes codecs (base64, zlib): refuse those.
        "".encode(canonical)
    except LookupError:
        raise s.error("encoding", f"{name!r} is not a known text encoding (like utf-8 or cp1252)") from None
    return canonical


def _http(ctx: Context, data: object) -> HttpSettings:
    s = Section(ctx, {} if data is None else data, "http", _HTTP_KEYS)
    listen = s.string("listen", D.HTTP_LISTEN)
    host, sep, port_text = listen.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise s.error("listen", f"{listen!r}: expected HOST:PORT, like 127.0.0.1:9108")
    return HttpSettings(host=host, port=int(port_text))


def _log(ctx: Context, data: object) -> LogSettings:
    s = Section(ctx, data, "log", _LOG_KEYS)
    return LogSettings(
        format=s.choice("format", LogFormat, D.LOG_FORMAT),
        level=s.choice("level", LogLevel, D.LOG_LEVEL),
    )


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_layout(ctx: Context, state_dir: Path, inboxes: tuple[Inbox, ...]) -> None:
    """Folders the daemon writes must not be, or be inside, a folder it reads."""
    for i, inbox in enumerate(inboxes):
        key = join("inboxes", i)
        for j, other in enumerate(inboxes[:i]):
            if inbox.path == other.path:
                raise ctx.error(join(key, "path"), f"{inbox.path} is already inboxes[{j}].path")
            if _is_within(inbox.path, other.path) or _is_within(other.path, inbox.path):
                raise ctx.error(join(key, "path"), f"{inbox.path} and inboxes[{j}].path {other.path} overlap")
    written: list[tuple[str, Path]] = [("state_dir", state_dir)]
    for i, inbox in enumerate(inboxes):
        written.append((join(join("inboxes", i), "outbox"), inbox.outbox))
        if inbox.archive is not None:
            written.append((join(join("inboxes", i), "archive"), inbox.archive))
    for i, inbox in enumerate(inboxes):
        for key, folder in written:
            if folder == inbox.path:
                raise ctx.error(key, f"must not be the inbox itself ({inbox.path})")
            if _is_within(folder, inbox.path):
                # The daemon would find its own status files, or the archive, in the inbox.
                raise ctx.error(key, f"{folder} must not be inside inboxes[{i}].path {inbox.path}")


__all__ = [
    "Config",
    "FileFormat",
    "HttpSettings",
    "Inbox",
    "LogFormat",
    "LogLevel",
    "LogSettings",
    "MarketoSettings",
    "ObjectKind",
    "Route",
    "WatchMode",
    "load",
    "parse",
]
