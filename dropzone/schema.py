"""The configuration file's format: what holds for every value, whichever key it sits under.

Owns: the conventions below, the refusal of a key given twice, and the typed
getters (``Section``) that check a value's type and name its key path in every
error. Does not own: which keys exist, their defaults or what they mean
(``config``), the glob syntax of routes (``globs``), or whether a named folder
exists (``preflight``); the only file it reads is one a value names
(``read_text``, for ``client_secret_file``).

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
"""

from __future__ import annotations

import difflib
import enum
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from dropzone.errors import ConfigError

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*\Z")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# The default of a required key: None cannot be it, since None is a valid default for an optional one.
MISSING: Any = object()


class FromEnv(str):
    """A string produced by ``${VAR}`` expansion: it may stand for a number or a boolean."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Context:
    """What every getter needs: the file's name for errors, the environment, a file reader, the base folder."""

    source: str
    environ: Mapping[str, str]
    read_file: Callable[[str], str]
    base_dir: Path

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}" if key else f"{self.source}: {problem}")


def join(path: str, key: str | int) -> str:
    """The key path of ``key`` under ``path``, as errors show it: ``inboxes[0].routes``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def describe(value: object) -> str:
    """What a value is, in the words of an error: ``expected a list, got a mapping``."""
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


class Section:
    """One mapping of the file: typed getters that name the key in every error."""

    def __init__(self, ctx: Context, data: object, path: str, known: Iterable[str]) -> None:
        if not isinstance(data, dict):
            raise ctx.error(path, f"expected a mapping, got {describe(data)}")
        known = tuple(known)
        for key in data:
            if not isinstance(key, str):
                raise ctx.error(path, f"keys must be strings, got {key!r}")
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                more = f"; did you mean {hint[0]}?" if hint else f"; known keys: {', '.join(known)}"
                raise ctx.error(join(path, key), f"unknown key{more}")
        self.ctx = ctx
        self.data: dict[str, Any] = data
        self.where = path

    def key(self, name: str) -> str:
        return join(self.where, name)

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def error(self, name: str, problem: str) -> ConfigError:
        return self.ctx.error(self.key(name), problem)

    def raw(self, name: str, *, required: bool = False) -> Any:
        value = self.data.get(name)
        if value is None and required:
            raise self.error(name, "is required")
        return value

    def string(self, name: str, default: Any = MISSING) -> Any:
        value = self.raw(name, required=default is MISSING)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {describe(value)}")
        if not value.strip():
            raise self.error(name, "must not be empty")
        return str(value)

    def integer(self, name: str, default: Any = MISSING, *, low: int, high: int | None = None) -> Any:
        value = self.raw(name, required=default is MISSING)
        if value is None:
            return default
        if isinstance(value, FromEnv):
            try:
                value = int(value.strip())
            except ValueError:
                raise self.error(name, f"expected an integer, got {str(value)!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected an integer, got {describe(value)}")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise self.error(name, f"must be {bound}, got {value}")
        return value

    def seconds(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool):
            raise self.error(name, f"expected seconds, got {describe(value)}")
        if isinstance(value, int | float):
            result = float(value)
        elif isinstance(value, str):
            m = _DURATION.match(value)
            if not m:
                raise self.error(name, f"expected seconds (a number, or like '90s', '10m', '24h'), got {value!r}")
            result = float(m.group(1)) * _UNITS[m.group(2)]
        else:
            raise self.error(name, f"expected seconds, got {describe(value)}")
        if not math.isfinite(result):
            raise self.error(name, "must be a finite number of seconds")
        if result < 0 or (result == 0 and not allow_zero):
            raise self.error(name, f"must be {'at least 0' if allow_zero else 'more than 0'} seconds, got {value}")
        return result

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, FromEnv):
            lowered = value.strip().lower()
            if lowered in ("true", "yes", "on", "1"):
                return True
            if lowered in ("false", "no", "off", "0"):
                return False
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {describe(value)}")
        return value

    def choice(self, name: str, enum_type: type[enum.StrEnum], default: Any = MISSING) -> Any:
        value = self.raw(name, required=default is MISSING)
        if value is None:
            return default
        allowed = ", ".join(m.value for m in enum_type)
        if not isinstance(value, str):
            raise self.error(name, f"expected one of {allowed}, got {describe(value)}")
        try:
            return enum_type(value.strip().lower())
        except ValueError:
            raise self.error(name, f"{str(value)!r} is not one of {allowed}") from None

    def path(self, name: str, default: Any = MISSING) -> Any:
        value = self.string(name, default)
        if value is None or value is default:
            return value
        if value.startswith("~"):
            raise self.error(name, f"{value!r}: '~' is not expanded; write the full path")
        return Path(os.path.normpath(self.ctx.base_dir / value))

    def url(self, name: str, default: Any = MISSING) -> Any:
        value = self.string(name, default)
        if value is None or value is default:
            return value
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise self.error(name, f"{value!r} is not an http(s) URL")
        if parts.query or parts.fragment:
            raise self.error(name, f"{value!r} must not have a query string or fragment")
        return value.strip().rstrip("/")


def read_text(path: str) -> str:
    """The default ``Context.read_file``: a file a value names, as UTF-8."""
    return Path(path).read_text(encoding="utf-8")


def os_problem(exc: Exception) -> str:
    """Why a read failed, without the errno and path Python would repeat: ``No such file or directory``."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line, with the 1-based line and column an editor shows."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return problem


def check_duplicate_keys(ctx: Context, node: yaml.Node, path: str, visited: set[int]) -> None:
    """Refuse a key given twice in one mapping, naming both lines."""
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
                    raise ctx.error(join(path, key), f"duplicate key (lines {lines[key]} and {line})")
                lines[key] = line
            check_duplicate_keys(ctx, value_node, join(path, key) if key else path, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            check_duplicate_keys(ctx, item, join(path, i), visited)


def expand(ctx: Context, value: Any, path: str) -> Any:
    """Replace every ``${VAR}`` in the strings of a loaded document; ``path`` names the key in errors."""
    if isinstance(value, dict):
        return {k: expand(ctx, v, join(path, k) if isinstance(k, str) else path) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(ctx, v, join(path, i)) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        return _expand_string(ctx, value, path)
    return value


def _expand_string(ctx: Context, value: str, path: str) -> str:
    out: list[str] = []
    pos = 0
    substituted = False
    for m in _REFERENCE.finditer(value):
        out.append(value[pos : m.start()])
        pos = m.end()
        matched = m.group(0)
        if matched == "$${":
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
    return FromEnv(result) if substituted else result
