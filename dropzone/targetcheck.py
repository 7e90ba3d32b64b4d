"""Checking the configured import targets against Marketo: lists, programs, statuses, partitions, custom objects.

``needs_of(config)`` lists what each route's target asks of its instance (pure), each under the key
that names it (``inboxes[0].routes[2].listId``). ``check(client, needs)`` asks Marketo (a few
calls, each read once per run) and returns a ``Finding`` per need:

* ``wrong``: a configuration error naming the key (``static list 1234 does not exist in Marketo
  instance "default"``): ``dropzone check`` exits non-zero, the daemon holds the route's files;
* ``unknown``: Marketo could not answer (no answer, 603, a malformed reply): a warning; nothing
  is held for it. ``code`` is Marketo's, so ``dropzone check`` can name the missing permission.

A program member status must be one of the program's channel's statuses (AdobeDocs ``channels.md``)
and never "Not in Program"; a lead route needs ``partitionName`` when the instance has several lead
partitions (contract doc §9). Runs wherever it is called: ``dropzone check`` calls it directly, the
daemon on the instance's own threads (``targetwatch``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dropzone import defaults as D
from dropzone import describe
from dropzone.config import Config
from dropzone.errors import DescribeUnavailableError, MarketoError, WouldWaitError
from dropzone.kinds import ObjectKind, TargetPart
from dropzone.marketo import MarketoClient
from dropzone.replies import Endpoint
from dropzone.schema import join
from dropzone.schemas import why_unavailable
from dropzone.targets import ImportTarget

#: Marketo's answers that mean "no such thing" to a read (1013 Object not found, 702 No data found).
NOT_FOUND_CODES = frozenset({"1013", "702"})

#: What each part's read needs, for ``dropzone check``'s advice on a 603.
PERMISSIONS: Mapping[TargetPart, str] = {
    TargetPart.LIST: "'Read-Only Lead'",
    TargetPart.PARTITION: "'Read-Only Lead'",
    TargetPart.API_NAME: "'Read-Only Custom Object'",
    TargetPart.PROGRAM: "'Read-Only Assets'",
    TargetPart.STATUS: "'Read-Only Assets'",
}


@dataclass(frozen=True, slots=True)
class Need:
    """One part of one route's target, to be confirmed by its instance."""

    key: str
    part: TargetPart
    target: ImportTarget


@dataclass(frozen=True, slots=True)
class Finding:
    """What Marketo said about a need: fine, ``wrong`` (a configuration error, the key first) or ``unknown``."""

    need: Need
    wrong: str | None = None
    unknown: str | None = None
    code: str | None = None
    #: Unknown for a passing reason (the rate window, a 5xx, no answer): asked again soon.
    passing: bool = False


def needs_of(config: Config) -> dict[str, list[Need]]:
    """Every route's target parts, by instance (a route with ``preflight: false`` is still checked: its
    target is configuration, not a file)."""
    out: dict[str, list[Need]] = {name: [] for name in config.all_instances()}
    for i, inbox in enumerate(config.inboxes):
        for j, route in enumerate(inbox.routes):
            key = join(join(join("inboxes", i), "routes"), j)
            target = route.target()
            parts: list[TargetPart] = []
            match target.kind:
                case ObjectKind.LEADS:
                    parts = [TargetPart.PARTITION] + ([TargetPart.LIST] if target.list_id is not None else [])
                case ObjectKind.CUSTOM_OBJECT:
                    parts = [TargetPart.API_NAME]
                case ObjectKind.PROGRAM_MEMBER:
                    parts = [TargetPart.PROGRAM, TargetPart.STATUS]
            out.setdefault(target.instance, []).extend(Need(join(key, p.value), p, target) for p in parts)
    return out


class _NotFoundError(Exception):
    """Marketo's own "no such thing" to a read."""


class _Reads:
    """Each path read once per run; what it raised is raised again for the next need asking."""

    def __init__(self, client: MarketoClient, retry_for: float | None) -> None:
        self.client, self.retry_for = client, retry_for
        self.memo: dict[tuple[str, str], tuple[dict[str, Any] | None, Exception | None]] = {}

    def get(self, path: str, name: str = "") -> dict[str, Any]:
        key = (path, name)
        if key not in self.memo:
            try:
                params = {"name": name} if name else None
                value = self.client.get_json(Endpoint.TARGETS, path, params=params, retry_for=self.retry_for)
                self.memo[key] = (value, None)
            except MarketoError as exc:
                self.memo[key] = (None, _NotFoundError() if exc.code in NOT_FOUND_CODES else exc)
            except WouldWaitError as exc:
                self.memo[key] = (None, exc)
        got, error = self.memo[key]
        if error is not None:
            raise error
        assert got is not None
        return got


def check(client: MarketoClient, needs: Sequence[Need], *, retry_for: float | None = 0.0) -> list[Finding]:
    """Ask ``client``'s instance about each need; one ``Finding`` per need, in order."""
    reads = _Reads(client, retry_for)
    out: list[Finding] = []
    for need in needs:
        try:
            out.append(_one(reads, need, client.settings.name))
        except _NotFoundError:
            out.append(Finding(need, wrong=_missing(need, client.settings.name)))
        except WouldWaitError as exc:
            out.append(Finding(need, unknown=f"not asked yet ({exc})", passing=True))
        except (MarketoError, DescribeUnavailableError) as exc:
            code = exc.code if isinstance(exc, MarketoError) else None
            passing = isinstance(exc, MarketoError) and code != "603" and not code_is_lasting(code)
            out.append(Finding(need, unknown=why_unavailable(exc) if code != "603" else _denied(need),
                               code=code, passing=passing))
    return out


def code_is_lasting(code: str | None) -> bool:
    """Answers that will not change by asking again soon (a wrong endpoint, a disabled feature)."""
    return code in ("603", "610", "616", "1026")


def _instance(name: str) -> str:
    return f'Marketo instance "{name}"'


def _missing(need: Need, instance: str) -> str:
    t = need.target
    match need.part:
        case TargetPart.LIST:
            return f"{need.key}: static list {t.list_id} does not exist in {_instance(instance)}"
        case TargetPart.PROGRAM | TargetPart.STATUS:
            return f"{need.key}: program {t.program_id} does not exist in {_instance(instance)}"
        case TargetPart.API_NAME:
            return f"{need.key}: custom object {t.api_name!r} does not exist in {_instance(instance)}"
        case TargetPart.PARTITION:
            return f"{need.key}: {_instance(instance)} lists no lead partitions"


def _denied(need: Need) -> str:
    return (f"Marketo denied access (603) to the check of {need.part.value}: the API user's role needs "
            f"{PERMISSIONS[need.part]} for it, or an IP allow-list refuses this host")


def _like(value: str, names: Sequence[str]) -> str:
    folded = {n.casefold(): n for n in names}
    close = difflib.get_close_matches(value.casefold(), list(folded), n=1, cutoff=0.6)
    return f'; did you mean "{folded[close[0]]}"?' if close else ""


def _one(reads: _Reads, need: Need, instance: str) -> Finding:
    t = need.target
    where = _instance(instance)
    match need.part:
        case TargetPart.LIST:
            assert t.list_id is not None
            if not describe.list_exists(reads.get(describe.static_list(t.list_id)), t.list_id):
                raise _NotFoundError
        case TargetPart.API_NAME:
            assert t.api_name is not None
            try:
                found = describe.custom_object_exists(reads.get(describe.custom_object_describe(t.api_name)),
                                                      t.api_name)
            except MarketoError as exc:
                if exc.code != "1026":
                    raise
                return Finding(need, wrong=f"{need.key}: custom objects are not enabled in {where} (1026)")
            if not found:
                raise _NotFoundError
        case TargetPart.PROGRAM:
            assert t.program_id is not None
            if describe.program_channel(reads.get(describe.program(t.program_id)), t.program_id) is None:
                raise _NotFoundError
        case TargetPart.STATUS:
            return _status(reads, need, where)
        case TargetPart.PARTITION:
            names = describe.partition_names(reads.get(describe.PARTITIONS))
            listed = ", ".join(f'"{n}"' for n in names)
            if t.partition_name is not None and t.partition_name not in names:
                return Finding(need, wrong=f'{need.key}: lead partition "{t.partition_name}" does not exist in '
                                           f"{where} (its partitions: {listed}){_like(t.partition_name, names)}")
            if t.partition_name is None and len(names) > 1:
                return Finding(need, wrong=f"{need.key}: is required: {where} has several lead partitions "
                                           f"({listed}); Marketo refuses lead imports without one (1009)")
    return Finding(need)


def _status(reads: _Reads, need: Need, where: str) -> Finding:
    t = need.target
    assert t.program_id is not None and t.program_member_status is not None
    status = t.program_member_status
    if status.casefold() == D.NOT_IN_PROGRAM.casefold():
        return Finding(need, wrong=f'{need.key}: "{D.NOT_IN_PROGRAM}" is never a valid status for an import')
    try:
        channel = describe.program_channel(reads.get(describe.program(t.program_id)), t.program_id)
    except _NotFoundError:
        return Finding(need)  # the programId need says so
    if channel is None:
        return Finding(need)
    try:
        statuses = describe.channel_statuses(reads.get(describe.CHANNEL_BY_NAME, channel), channel)
    except _NotFoundError:
        statuses = None
    if statuses is None:
        return Finding(need, unknown=f'Marketo has no channel "{channel}" (the channel of program {t.program_id})')
    valid = [s for s in statuses if s.casefold() != D.NOT_IN_PROGRAM.casefold()]
    if status not in valid:
        listed = ", ".join(f'"{s}"' for s in valid)
        return Finding(need, wrong=f'{need.key}: "{status}" is not a member status of program {t.program_id} in '
                                   f'{where} (channel "{channel}": {listed}){_like(status, valid)}')
    return Finding(need)


def unknowns(findings: Sequence[Finding]) -> list[str]:
    """A sentence per finding that could not be answered, each once (several routes may share one read)."""
    return list(dict.fromkeys(f"{f.need.key}: could not be checked: {f.unknown}" for f in findings
                              if f.unknown is not None))


__all__ = ["NOT_FOUND_CODES", "PERMISSIONS", "Finding", "Need", "check", "needs_of", "unknowns"]
