"""Configuration: YAML text in, frozen dataclasses out, or a ``ConfigError`` naming the key.

Owns: the file format (every key, every default, every check that needs no
filesystem), ``${VAR}`` expansion, and the glob *syntax* of routes (compiled
once, here, into the matcher ``routing`` uses). Does not own: which route
takes a file (``routing``), whether a directory exists or is writable
(``check_paths`` does that I/O, separately from ``parse``), or which watcher an
inbox with ``watch: auto`` gets (``watching``).

Conventions of the file (``config.example.yaml`` documents every key):

* Relative paths are resolved against the directory of the config file, so a
  config and its ``./demo/...`` folders move together. ``~`` is not expanded.
* ``${VAR}`` in any string value is replaced by the environment variable
  ``VAR``; ``${VAR:-default}`` uses ``default`` when ``VAR`` is unset or
  empty; ``$${`` is a literal ``${``. A ``$`` not followed by ``{`` is kept.
  A value that came from the environment may stand for a number or a
  boolean (``listId: ${LIST_ID}``).
* Durations are seconds, as a number or a string with a unit: ``"500ms"``,
  ``"90s"``, ``"10m"``, ``"24h"``, ``"1d"``.
* Marketo parameters keep Marketo's names (``lookupField``, ``listId``, …);
  dropzone's own keys are snake_case.
"""

from __future__ import annotations

import codecs
import difflib
import enum
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from dropzone.errors import ConfigError
from dropzone.readiness import is_ignored_name

from dropzone import defaults as D
from dropzone.kinds import FileFormat, LogFormat, LogLevel, ObjectKind, WatchMode

# --- Globs -------------------------------------------------------------------


def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile a route's ``match`` into a regex for ``fullmatch`` on a ``/``-separated relative path.

    Semantics (gitignore-like; ``routing`` documents and tests them):

    * ``*`` matches any run of characters except ``/``; ``?`` one character
      except ``/``; ``[abc]``, ``[a-z]``, ``[!abc]`` one character of (not
      of) a set. ``[*]`` is a literal ``*``. Matching is case-sensitive.
    * A pattern without ``/`` matches the file name, at any depth:
      ``leads_*.csv`` matches ``leads_1.csv`` and ``acme/leads_1.csv``.
    * A pattern with ``/`` matches the whole path from the inbox:
      ``acme/*.csv`` matches ``acme/a.csv`` only; a ``**`` segment matches any
      number of folders (``**/x.csv``, ``acme/**``).

    Raises:
        ValueError: the pattern is not valid; the message says why.
    """
    if not pattern:
        raise ValueError("must not be empty")
    if pattern.startswith("/"):
        raise ValueError(f"{pattern!r} must be relative to the inbox (no leading /)")
    if "\\" in pattern:
        raise ValueError(f"{pattern!r}: backslash is not allowed; separate folders with /, write [*] for a literal *")
    segments = pattern.split("/")
    if "" in segments:
        raise ValueError(f"{pattern!r} has an empty folder name (// or a trailing /)")
    if "." in segments or ".." in segments:
        raise ValueError(f"{pattern!r}: '.' and '..' are not allowed")
    parts = [None if seg == "**" else _segment_regex(pattern, seg) for seg in segments]
    if len(parts) == 1:
        body = "(?:[^/]+/)*" + (parts[0] or "[^/]+")
    else:
        body = ""
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part is None:
                body += "[^/]+(?:/[^/]+)*" if last else "(?:[^/]+/)*"
            else:
                body += part if last else part + "/"
    try:
        return re.compile(body, re.DOTALL)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a valid glob: {exc}") from None


def _segment_regex(pattern: str, seg: str) -> str:
    if "**" in seg:
        raise ValueError(f"{pattern!r}: ** must be a whole folder segment, as in **/x.csv")
    out: list[str] = []
    i, n = 0, len(seg)
    while i < n:
        c = seg[i]
        i += 1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i
            negate = j < n and seg[j] == "!"
            if negate:
                j += 1
            start = j
            if j < n and seg[j] == "]":  # a ] first in the set is a literal
                j += 1
            while j < n and seg[j] != "]":
                j += 1
            if j >= n:
                raise ValueError(f"{pattern!r}: unclosed [ (write [[] for a literal [)")
            chars = seg[start:j]
            # Escape what Python's re would read as set syntax or nested sets.
            chars = re.sub(r"([\\\[\]&~|^])", r"\\\1", chars)
            out.append(f"[^/{chars}]" if negate else f"[{chars}]")
            i = j + 1
        else:
            out.append(re.escape(c))
    return "".join(out)


def _sample_name(seg: str) -> str:
    """A name the last segment of a glob would match, to test it against the ignore list."""
    return re.sub(r"\[[^\]]*\]|[*?]", "x", seg)


def _literal_extension(pattern: str) -> str | None:
    """The extension every match of ``pattern`` has, if the pattern fixes it (``*.csv`` → ``csv``)."""
    last = pattern.rpartition("/")[2]
    _, dot, ext = last.rpartition(".")
    if not dot or not ext or any(c in ext for c in "*?["):
        return None
    return ext


# --- The parsed shape --------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MarketoSettings:
    """One Marketo instance: where, who, and how hard to use it. The client takes this as is."""

    endpoint: str
    client_id: str
    client_secret: str = field(repr=False)
    identity: str | None = None
    client_secret_file: Path | None = None
    poll_interval: float = D.POLL_INTERVAL_S
    calls_per_20s: int = D.CALLS_PER_20S
    max_concurrent_calls: int = D.MAX_CONCURRENT_CALLS
    max_open_imports: int = D.MAX_OPEN_IMPORTS
    connect_timeout: float = D.CONNECT_TIMEOUT_S
    read_timeout: float = D.READ_TIMEOUT_S
    max_retry_seconds: float = D.MAX_RETRY_S

    @property
    def identity_url(self) -> str:
        return (self.identity or f"{self.endpoint.rstrip('/')}/identity").rstrip("/")

    def redacted(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "endpoint": self.endpoint,
            "identity": self.identity_url,
            "client_id": self.client_id,
            "client_secret": D.SECRET_MASK,
        }
        if self.client_secret_file is not None:
            out["client_secret_file"] = str(self.client_secret_file)
        out.update(
            poll_interval=self.poll_interval,
            calls_per_20s=self.calls_per_20s,
            max_concurrent_calls=self.max_concurrent_calls,
            max_open_imports=self.max_open_imports,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_retry_seconds=self.max_retry_seconds,
        )
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One routing rule: which files (``match``) go to which Marketo import, and how to read them.

    ``format`` None means "from the file's extension, at routing time".
    ``marker`` is a suffix (``".done"``): the file is ready only once
    ``NAME<marker>`` exists. ``encoding`` None means the file is UTF-8.
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

    def marketo_params(self, format: FileFormat | None = None) -> dict[str, str | int]:
        """The import's parameters under Marketo's names, for the status file.

        Args:
            format: the resolved format; the route's own when omitted (left
                out if neither is known).
        """
        params: dict[str, str | int] = {}
        fmt = format or self.format
        if fmt is not None:
            params["format"] = fmt.value
        match self.object:
            case ObjectKind.LEADS:
                params["lookupField"] = self.lookup_field or D.LOOKUP_FIELD
                if self.list_id is not None:
                    params["listId"] = self.list_id
                if self.partition_name:
                    params["partitionName"] = self.partition_name
            case ObjectKind.CUSTOM_OBJECT:
                params["apiName"] = str(self.api_name)
            case ObjectKind.PROGRAM_MEMBER:
                params["programId"] = int(self.program_id or 0)
                params["programMemberStatus"] = str(self.program_member_status)
        return params

    def redacted(self) -> dict[str, Any]:
        out: dict[str, Any] = {"match": self.match, "object": self.object.value}
        out.update({k: v for k, v in self.marketo_params().items() if k != "format"})
        out["format"] = self.format.value if self.format else None
        out.update(marker=self.marker, trim_header=self.trim_header, encoding=self.encoding)
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
    marketo: MarketoSettings
    state_dir: Path
    inboxes: tuple[Inbox, ...]
    split_max_bytes: int = D.SPLIT_MAX_BYTES
    http: HttpSettings | None = None
    log: LogSettings = field(default_factory=LogSettings)
    source: str = "config.yaml"

    def redacted(self) -> dict[str, Any]:
        """The whole configuration, defaults filled in, secrets masked: for ``dropzone check``."""
        return {
            "source": self.source,
            "marketo": self.marketo.redacted(),
            "state_dir": str(self.state_dir),
            "split_max_bytes": self.split_max_bytes,
            "inboxes": [i.redacted() for i in self.inboxes],
            "http": {"listen": self.http.listen} if self.http else None,
            "log": {"format": self.log.format.value, "level": self.log.level.value},
        }


# --- Parsing -----------------------------------------------------------------

_TOP_KEYS = ("marketo", "state_dir", "inboxes", "split_max_bytes", "http", "log")
_MARKETO_KEYS = (
    "endpoint",
    "identity",
    "client_id",
    "client_secret",
    "client_secret_file",
    "poll_interval",
    "calls_per_20s",
    "max_concurrent_calls",
    "max_open_imports",
    "connect_timeout",
    "read_timeout",
    "max_retry_seconds",
)
_INBOX_KEYS = ("path", "outbox", "archive", "routes", "watch", "scan_interval", "quiet_period", "stale_partial_after")
_ROUTE_COMMON_KEYS = ("match", "object", "format", "marker", "trim_header", "encoding")
_ROUTE_PARAM_KEYS: Final[dict[ObjectKind, tuple[str, ...]]] = {
    ObjectKind.LEADS: ("lookupField", "listId", "partitionName"),
    ObjectKind.CUSTOM_OBJECT: ("apiName",),
    ObjectKind.PROGRAM_MEMBER: ("programId", "programMemberStatus"),
}
_ROUTE_KEYS = _ROUTE_COMMON_KEYS + tuple(k for keys in _ROUTE_PARAM_KEYS.values() for k in keys)
_HTTP_KEYS = ("listen",)
_LOG_KEYS = ("format", "level")

_API_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*\Z")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MISSING: Any = object()


class _FromEnv(str):
    """A string produced by ``${VAR}`` expansion: it may stand for a number or a boolean."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class _Ctx:
    source: str
    environ: Mapping[str, str]
    read_file: Callable[[str], str]
    base_dir: Path

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}" if key else f"{self.source}: {problem}")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _describe(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class _Section:
    """One mapping of the file: typed getters that name the key in every error."""

    def __init__(self, ctx: _Ctx, data: object, path: str, known: Iterable[str]) -> None:
        if not isinstance(data, dict):
            raise ctx.error(path, f"expected a mapping, got {_describe(data)}")
        known = tuple(known)
        for key in data:
            if not isinstance(key, str):
                raise ctx.error(path, f"keys must be strings, got {key!r}")
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                more = f"; did you mean {hint[0]}?" if hint else f"; known keys: {', '.join(known)}"
                raise ctx.error(_join(path, key), f"unknown key{more}")
        self.ctx = ctx
        self.data: dict[str, Any] = data
        self.where = path

    def key(self, name: str) -> str:
        return _join(self.where, name)

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def error(self, name: str, problem: str) -> ConfigError:
        return self.ctx.error(self.key(name), problem)

    def raw(self, name: str, *, required: bool = False) -> Any:
        value = self.data.get(name)
        if value is None and required:
            raise self.error(name, "is required")
        return value

    def string(self, name: str, default: Any = _MISSING) -> Any:
        value = self.raw(name, required=default is _MISSING)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {_describe(value)}")
        if not value.strip():
            raise self.error(name, "must not be empty")
        return str(value)

    def integer(self, name: str, default: Any = _MISSING, *, low: int, high: int | None = None) -> Any:
        value = self.raw(name, required=default is _MISSING)
        if value is None:
            return default
        if isinstance(value, _FromEnv):
            try:
                value = int(value.strip())
            except ValueError:
                raise self.error(name, f"expected an integer, got {str(value)!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected an integer, got {_describe(value)}")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise self.error(name, f"must be {bound}, got {value}")
        return value

    def seconds(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool):
            raise self.error(name, f"expected seconds, got {_describe(value)}")
        if isinstance(value, int | float):
            result = float(value)
        elif isinstance(value, str):
            m = _DURATION.match(value)
            if not m:
                raise self.error(name, f"expected seconds (a number, or like '90s', '10m', '24h'), got {value!r}")
            result = float(m.group(1)) * _UNITS[m.group(2)]
        else:
            raise self.error(name, f"expected seconds, got {_describe(value)}")
        if not math.isfinite(result):
            raise self.error(name, "must be a finite number of seconds")
        if result < 0 or (result == 0 and not allow_zero):
            raise self.error(name, f"must be {'at least 0' if allow_zero else 'more than 0'} seconds, got {value}")
        return result

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, _FromEnv):
            lowered = value.strip().lower()
            if lowered in ("true", "yes", "on", "1"):
                return True
            if lowered in ("false", "no", "off", "0"):
                return False
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {_describe(value)}")
        return value

    def choice(self, name: str, enum_type: type[enum.StrEnum], default: Any = _MISSING) -> Any:
        value = self.raw(name, required=default is _MISSING)
        if value is None:
            return default
        allowed = ", ".join(m.value for m in enum_type)
        if not isinstance(value, str):
            raise self.error(name, f"expected one of {allowed}, got {_describe(value)}")
        try:
            return enum_type(value.strip().lower())
        except ValueError:
            raise self.error(name, f"{str(value)!r} is not one of {allowed}") from None

    def path(self, name: str, default: Any = _MISSING) -> Any:
        value = self.string(name, default)
        if value is None or value is default:
            return value
        if value.startswith("~"):
            raise self.error(name, f"{value!r}: '~' is not expanded; write the full path")
        return Path(os.path.normpath(self.ctx.base_dir / value))

    def url(self, name: str, default: Any = _MISSING) -> Any:
        value = self.string(name, default)
        if value is None or value is default:
            return value
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise self.error(name, f"{value!r} is not an http(s) URL")
        if parts.query or parts.fragment:
            raise self.error(name, f"{value!r} must not have a query string or fragment")
        return value.strip().rstrip("/")


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
    ctx = _Ctx(
        source=source,
        environ=os.environ if environ is None else environ,
        read_file=read_file or _read_text,
        base_dir=Path(base_dir) if base_dir is not None else Path(source).parent.absolute(),
    )
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ctx.error("", f"not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        raise ctx.error("", "is empty")
    if node is not None:
        _check_duplicate_keys(ctx, node, "", set())
    data = _expand(ctx, data, "")
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
        raise ConfigError(f"{p}: cannot read the configuration: {_os_problem(exc)}") from None
    return parse(text, source=str(p), base_dir=p.absolute().parent)


def _read_text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def _os_problem(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return problem


def _check_duplicate_keys(ctx: _Ctx, node: yaml.Node, path: str, visited: set[int]) -> None:
    # safe_load keeps the last of two equal keys without a word; a second
    # `routes:` silently dropping the first is the kind of mistake to catch.
    if id(node) in visited:
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise ctx.error(_join(path, key), f"duplicate key (lines {lines[key]} and {line})")
                lines[key] = line
            _check_duplicate_keys(ctx, value_node, _join(path, key) if key else path, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(ctx, item, _join(path, i), visited)


def _expand(ctx: _Ctx, value: Any, path: str) -> Any:
    if isinstance(value, dict):
        return {k: _expand(ctx, v, _join(path, k) if isinstance(k, str) else path) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(ctx, v, _join(path, i)) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        return _expand_string(ctx, value, path)
    return value


def _expand_string(ctx: _Ctx, value: str, path: str) -> str:
    out: list[str] = []
    pos = 0
    substituted = False
    for m in _REFERENCE.finditer(value):
        out.append(value[pos : m.start()])
        pos = m.end()
        token = m.group(0)
        if token == "$${":
            out.append("${")
            continue
        body = m.group(1)
        if body is None:
            raise ctx.error(path, "unterminated ${ (write $${ for a literal ${)")
        name, sep, default = body.partition(":-")
        if not _VAR_NAME.match(name):
            raise ctx.error(path, f"${{{body}}} is not a valid reference; use ${{NAME}} or ${{NAME:-default}}")
        found = ctx.environ.get(name)
        if sep and not found:
            found = default
        if found is None:
            raise ctx.error(path, f"environment variable {name} is not set")
        out.append(found)
        substituted = True
    out.append(value[pos:])
    result = "".join(out)
    return _FromEnv(result) if substituted else result


def _config(ctx: _Ctx, data: object) -> Config:
    top = _Section(ctx, data, "", _TOP_KEYS)
    marketo = _marketo(ctx, top.raw("marketo", required=True))
    state_dir = top.path("state_dir")
    raw_inboxes = top.raw("inboxes", required=True)
    if not isinstance(raw_inboxes, list):
        raise top.error("inboxes", f"expected a list, got {_describe(raw_inboxes)}")
    if not raw_inboxes:
        raise top.error("inboxes", "must list at least one inbox")
    inboxes = tuple(_inbox(ctx, item, _join("inboxes", i)) for i, item in enumerate(raw_inboxes))
    _check_layout(ctx, state_dir, inboxes)
    split_max_bytes = top.integer("split_max_bytes", D.SPLIT_MAX_BYTES, low=1, high=D.MARKETO_MAX_IMPORT_BYTES)
    http = _http(ctx, top.raw("http")) if "http" in top.data else None
    log = _log(ctx, top.raw("log")) if top.has("log") else LogSettings()
    return Config(
        marketo=marketo,
        state_dir=state_dir,
        inboxes=inboxes,
        split_max_bytes=split_max_bytes,
        http=http,
        log=log,
        source=ctx.source,
    )


def _marketo(ctx: _Ctx, data: object) -> MarketoSettings:
    s = _Section(ctx, data, "marketo", _MARKETO_KEYS)
    endpoint = s.url("endpoint")
    if endpoint.endswith("/rest"):
        raise s.error("endpoint", f"{endpoint!r}: give the endpoint without /rest")
    identity = s.url("identity", None) or f"{endpoint}/identity"
    client_id = s.string("client_id")
    if s.has("client_secret") and s.has("client_secret_file"):
        raise s.error("client_secret", "give client_secret or client_secret_file, not both")
    secret_file: Path | None = None
    if s.has("client_secret_file"):
        secret_file = s.path("client_secret_file")
        try:
            secret = ctx.read_file(str(secret_file)).rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise s.error("client_secret_file", f"cannot read {secret_file}: {_os_problem(exc)}") from None
        if not secret.strip():
            raise s.error("client_secret_file", f"{secret_file} is empty")
    elif s.has("client_secret"):
        secret = s.string("client_secret")
    else:
        raise s.error("client_secret", "is required (or client_secret_file)")
    max_open_imports = s.integer("max_open_imports", D.MAX_OPEN_IMPORTS, low=1, high=D.MARKETO_MAX_OPEN_IMPORTS)
    return MarketoSettings(
        endpoint=endpoint,
        identity=identity,
        client_id=client_id,
        client_secret=secret,
        client_secret_file=secret_file,
        poll_interval=s.seconds("poll_interval", D.POLL_INTERVAL_S),
        calls_per_20s=s.integer("calls_per_20s", D.CALLS_PER_20S, low=1, high=D.MARKETO_CALLS_PER_WINDOW),
        max_concurrent_calls=s.integer(
            "max_concurrent_calls", D.MAX_CONCURRENT_CALLS, low=1, high=D.MARKETO_MAX_CONCURRENT_CALLS
        ),
        max_open_imports=max_open_imports,
        connect_timeout=s.seconds("connect_timeout", D.CONNECT_TIMEOUT_S),
        read_timeout=s.seconds("read_timeout", D.READ_TIMEOUT_S),
        max_retry_seconds=s.seconds("max_retry_seconds", D.MAX_RETRY_S, allow_zero=True),
    )


def _inbox(ctx: _Ctx, data: object, path: str) -> Inbox:
    s = _Section(ctx, data, path, _INBOX_KEYS)
    inbox_path = s.path("path")
    raw_routes = s.raw("routes", required=True)
    if not isinstance(raw_routes, list):
        raise s.error("routes", f"expected a list, got {_describe(raw_routes)}")
    if not raw_routes:
        raise s.error("routes", "must list at least one route")
    routes = tuple(_route(ctx, item, _join(s.key("routes"), i)) for i, item in enumerate(raw_routes))
    inbox = Inbox(
        path=inbox_path,
        outbox=s.path("outbox"),
        archive=s.path("archive", None),
        routes=routes,
        watch=s.choice("watch", WatchMode, D.WATCH),
        scan_interval=s.seconds("scan_interval", D.SCAN_INTERVAL_S),
        quiet_period=s.seconds("quiet_period", D.QUIET_PERIOD_S, allow_zero=True),
        stale_partial_after=s.seconds("stale_partial_after", D.STALE_PARTIAL_AFTER_S),
    )
    markers = inbox.marker_suffixes
    for i, route in enumerate(routes):
        last = route.match.rpartition("/")[2]
        if last != "**" and is_ignored_name(_sample_name(last), markers):
            raise ctx.error(
                _join(_join(s.key("routes"), i), "match"),
                f"{route.match!r} only matches names that are always ignored (hidden, temporary or marker files)",
            )
    return inbox


def _route(ctx: _Ctx, data: object, path: str) -> Route:
    s = _Section(ctx, data, path, _ROUTE_KEYS)
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
    if fmt is None:
        ext = _literal_extension(match)
        if ext is not None and FileFormat.from_name(f"x.{ext}") is None:
            raise s.error(
                "format",
                f"is required: the extension .{ext} of {match!r} does not give csv, tsv or ssv",
            )
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
    return Route(
        match=match,
        object=kind,
        format=fmt,
        marker=marker,
        trim_header=s.boolean("trim_header", False),
        encoding=encoding,
        **params,
    )


def _marker(s: _Section) -> str | None:
    value = s.raw("marker")
    if isinstance(value, _FromEnv) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"
    if value is None or value is False:
        return None
    if value is True:
        return D.MARKER_SUFFIX
    if not isinstance(value, str):
        raise s.error("marker", f"expected true, false or a suffix like '.done', got {_describe(value)}")
    if len(value) < 2 or not value.startswith(".") or any(c in value for c in "/*?["):
        raise s.error("marker", f"{value!r}: expected a suffix like '.done' (a dot, then a name)")
    return str(value)


def _encoding(s: _Section, name: str) -> str:
    try:
        canonical = codecs.lookup(name).name
        # codecs.lookup also knows bytes-to-bytes codecs (base64, zlib): refuse those.
        "".encode(canonical)
    except LookupError:
        raise s.error("encoding", f"{name!r} is not a known text encoding (like utf-8 or cp1252)") from None
    return canonical


def _http(ctx: _Ctx, data: object) -> HttpSettings:
    s = _Section(ctx, {} if data is None else data, "http", _HTTP_KEYS)
    listen = s.string("listen", D.HTTP_LISTEN)
    host, sep, port_text = listen.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise s.error("listen", f"{listen!r}: expected HOST:PORT, like 127.0.0.1:9108")
    return HttpSettings(host=host, port=int(port_text))


def _log(ctx: _Ctx, data: object) -> LogSettings:
    s = _Section(ctx, data, "log", _LOG_KEYS)
    return LogSettings(
        format=s.choice("format", LogFormat, D.LOG_FORMAT),
        level=s.choice("level", LogLevel, D.LOG_LEVEL),
    )


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_layout(ctx: _Ctx, state_dir: Path, inboxes: tuple[Inbox, ...]) -> None:
    """Folders the daemon writes must not be, or be inside, a folder it reads."""
    for i, inbox in enumerate(inboxes):
        key = _join("inboxes", i)
        for j, other in enumerate(inboxes[:i]):
            if inbox.path == other.path:
                raise ctx.error(_join(key, "path"), f"{inbox.path} is already inboxes[{j}].path")
            if _is_within(inbox.path, other.path) or _is_within(other.path, inbox.path):
                raise ctx.error(_join(key, "path"), f"{inbox.path} and inboxes[{j}].path {other.path} overlap")
    written: list[tuple[str, Path]] = [("state_dir", state_dir)]
    for i, inbox in enumerate(inboxes):
        written.append((_join(_join("inboxes", i), "outbox"), inbox.outbox))
        if inbox.archive is not None:
            written.append((_join(_join("inboxes", i), "archive"), inbox.archive))
    for i, inbox in enumerate(inboxes):
        for key, folder in written:
            if folder == inbox.path:
                raise ctx.error(key, f"must not be the inbox itself ({inbox.path})")
            if _is_within(folder, inbox.path):
                # The daemon would find its own status files, or the archive, in the inbox.
                raise ctx.error(key, f"{folder} must not be inside inboxes[{i}].path {inbox.path}")


# --- Filesystem checks (the only I/O here besides load) ----------------------


def check_paths(config: Config) -> list[str]:
    """Look at the folders a configuration names; list what would stop the daemon.

    Checks: each inbox exists and can be listed, read and written (files are
    claimed by renaming them); outbox, archive and state_dir exist and are
    writable; the archive and an existing processing area are on the inbox's
    filesystem, because files move there by ``rename(2)``. The state_dir may
    be on another filesystem.

    Returns:
        One sentence per problem, each naming the key; empty when all is well.
    """
    problems: list[str] = []
    _check_dir(problems, "state_dir", config.state_dir, write=True)
    for i, inbox in enumerate(config.inboxes):
        key = _join("inboxes", i)
        inbox_dev = _check_dir(problems, _join(key, "path"), inbox.path, write=True)
        _check_dir(problems, _join(key, "outbox"), inbox.outbox, write=True)
        if inbox.archive is not None:
            dev = _check_dir(problems, _join(key, "archive"), inbox.archive, write=True)
            if dev is not None and inbox_dev is not None and dev != inbox_dev:
                problems.append(
                    f"{_join(key, 'archive')}: {inbox.archive} is not on the inbox's filesystem; "
                    "files are moved there by rename, which cannot cross filesystems"
                )
        if inbox.processing_dir.exists():
            dev = _check_dir(problems, _join(key, "path"), inbox.processing_dir, write=True)
            if dev is not None and inbox_dev is not None and dev != inbox_dev:
                problems.append(
                    f"{_join(key, 'path')}: {inbox.processing_dir} is not on the inbox's filesystem; "
                    "files are claimed by rename, which cannot cross filesystems"
                )
    return problems


def _check_dir(problems: list[str], key: str, path: Path, *, write: bool) -> int | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        problems.append(f"{key}: {path} does not exist")
        return None
    except OSError as exc:
        problems.append(f"{key}: {path} cannot be examined: {_os_problem(exc)}")
        return None
    if not path.is_dir():
        problems.append(f"{key}: {path} is not a directory")
        return None
    if not os.access(path, os.R_OK | os.X_OK):
        problems.append(f"{key}: {path} cannot be listed (no read/search permission)")
    if write and not os.access(path, os.W_OK | os.X_OK):
        problems.append(f"{key}: {path} is not writable")
    return st.st_dev


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
    "check_paths",
    "compile_glob",
    "load",
    "parse",
]
