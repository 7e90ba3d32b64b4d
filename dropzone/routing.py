"""Which route takes a file: the first whose glob matches its path relative to the inbox.

Owns: route choice, and the file's format (the route's ``format``, else the
extension). Does not own: ignoring hidden and temporary names (that is
``readiness.is_ignored_name`` / ``is_ignored_path``; the watcher filters
before it routes, so a route ``*`` never sees ``x.csv.filepart``), nor the
glob syntax, which ``globs.compile_glob`` checks and compiles once.

What a glob means (gitignore-like, least surprising for partner drops):

* Paths are relative to the inbox, with ``/`` separators; matching is
  case-sensitive.
* ``*`` and ``?`` never cross ``/``; ``[abc]``, ``[!abc]`` are sets.
* A glob **without** ``/`` matches the file name at any depth:
  ``leads_*.csv`` takes ``leads_1.csv`` and ``acme/leads_1.csv``.
* A glob **with** ``/`` is anchored at the inbox: ``acme/*.csv`` takes
  ``acme/a.csv`` but not ``acme/old/a.csv`` nor ``x/acme/a.csv``; a ``**``
  segment stands for any number of folders (``acme/**/*.csv``).
* The first route that matches wins, even if it then cannot be used (its
  format is unknown): routes are never tried past the first match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dropzone.config import Route
from dropzone.errors import InputError
from dropzone.kinds import FileFormat
from dropzone.targets import ImportTarget


class NoRouteError(InputError):
    """No route takes this file, or the route that matched cannot tell its format."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteMatch:
    """A file and the route that takes it, with the format resolved."""

    route: Route
    index: int
    relpath: str
    format: FileFormat

    @property
    def marker_relpath(self) -> str | None:
        """The marker file this one waits for, relative to the inbox, or None."""
        return self.route.marker_for(self.relpath)

    def marketo_params(self) -> dict[str, str | int]:
        """Marketo's parameters for this import, under Marketo's names, format included."""
        return self.route.marketo_params(self.format)

    @property
    def target(self) -> ImportTarget:
        """Where the rows go, as the client (and the journal) take it."""
        return self.route.target()

@dataclass(frozen=True, slots=True, kw_only=True)
class NoMatch:
    """Why a file has no usable route, for the status file.

    ``tried`` holds the globs looked at, in order. ``index`` is the route
    that matched when the only problem is an unknown format, else None.
    """

    relpath: str
    tried: tuple[str, ...]
    message: str
    index: int | None = None

    def error(self) -> NoRouteError:
        return NoRouteError(self.message)


def route(routes: Sequence[Route], relpath: str) -> RouteMatch | NoMatch:
    """Pick the route for a file.

    Args:
        routes: the inbox's routes, in configuration order.
        relpath: the file's path relative to the inbox, ``/``-separated.

    Returns:
        The first matching route with the resolved format; or a ``NoMatch``
        saying which globs were tried and why none applies.

    Raises:
        ValueError: ``relpath`` is absolute, empty, or has ``.``, ``..`` or
            empty segments (a caller's bug, not a partner's).
    """
    _check_relpath(relpath)
    for index, candidate in enumerate(routes):
        if not candidate.matches(relpath):
            continue
        fmt = candidate.format or FileFormat.from_name(relpath)
        if fmt is None:
            return NoMatch(
                relpath=relpath,
                tried=tuple(r.match for r in routes[: index + 1]),
                index=index,
                message=(
                    f"{relpath}: route {index + 1} ({candidate.match!r}) matches, but its format is unknown: "
                    "name the file .csv, .tsv or .ssv, or give the route a format"
                ),
            )
        return RouteMatch(route=candidate, index=index, relpath=relpath, format=fmt)
    tried = tuple(r.match for r in routes)
    listed = ", ".join(repr(g) for g in tried) or "none"
    return NoMatch(relpath=relpath, tried=tried, message=f"{relpath}: no route matches; tried {listed}")


def _check_relpath(relpath: str) -> None:
    if not relpath or relpath.startswith("/"):
        raise ValueError(f"expected a path relative to the inbox, got {relpath!r}")
    if any(seg in ("", ".", "..") for seg in relpath.split("/")):
        raise ValueError(f"expected a normalized relative path, got {relpath!r}")


__all__ = ["NoMatch", "NoRouteError", "RouteMatch", "route"]
