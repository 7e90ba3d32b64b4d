"""The glob syntax of a route's ``match``: checked and compiled into a regex, once.

Owns: what a pattern may contain and what it matches (``compile_glob``), and
the two facts ``config`` reads off a pattern without matching anything: a
name it would match (``sample_name``) and the extension it fixes
(``literal_extension``). Does not own: which route takes a file
(``routing``), nor which names are always ignored (``readiness``).
"""

from __future__ import annotations

import re


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


def sample_name(seg: str) -> str:
    """A name the last segment of a glob would match, to test it against the ignore list."""
    return re.sub(r"\[[^\]]*\]|[*?]", "x", seg)


def literal_extension(pattern: str) -> str | None:
    """The extension every match of ``pattern`` has, if the pattern fixes it (``*.csv`` → ``csv``)."""
    last = pattern.rpartition("/")[2]
    _, dot, ext = last.rpartition(".")
    if not dot or not ext or any(c in ext for c in "*?["):
        return None
    return ext
