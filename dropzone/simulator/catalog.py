"""What the simulated instance holds besides fields: static lists, programs, channels, lead partitions.

Owns their defaults, the configuration shapes ``SimConfig`` accepts for them,
and the one normalised ``Catalog`` both the imports (1013, 1025, 1008, 1009)
and the target endpoints (Get List by Id, Get Program by Id, Get Channel by
Name, Get Lead Partitions) read, so an import and a lookup never disagree
about what exists. Pure, and free of ``SimConfig`` (which validates through it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NOT_IN_PROGRAM = "Not in Program"
DEFAULT_WORKSPACE = "Default"
# Marketo's own name for the partition every instance starts with.
DEFAULT_PARTITION = "Default"
_DEFAULT_PARTITION_TEXT = "Initial system lead partition"
# A channel's statuses without explicit steps are numbered in order, this far apart.
_STEP = 10
_MAX_ID_DIGITS = 18

# Lists 1001..1010 plus 1234, the list of the demo, config.example.yaml and the daemon tests.
DEFAULT_LISTS: Mapping[int, Any] = {
    **{n: f"Static List {n}" for n in range(1001, 1011)},
    1234: {"name": "Partner Uploads", "description": "Leads dropped by partners"},
}

# "Event" keeps every status the simulator accepted before channels existed (the demo's
# "Registered", the tests' "On List" and "Member"); "Online Advertising" is the channel of
# Adobe's channels.md example, so a status valid elsewhere can be refused (1025).
DEFAULT_CHANNELS: Mapping[str, Any] = {
    "Event": {
        "applicableProgramType": "event",
        "progressionStatuses": [
            NOT_IN_PROGRAM,
            "Member",
            "On List",
            "Invited",
            "Registered",
            "No Show",
            {"name": "Attended", "success": True},
            {"name": "Influenced", "success": True},
        ],
    },
    "Online Advertising": [
        NOT_IN_PROGRAM,
        "Invited",
        "Registered",
        "No Show",
        {"name": "Attended", "success": True},
    ],
}

# 1044: the program of the demo, the benchmarks and the daemon tests.
DEFAULT_PROGRAMS: Mapping[int, Any] = {
    1044: {"name": "Partner Event", "channel": "Event", "type": "Event"},
    1107: {"name": "Online Ads", "channel": "Online Advertising"},
}

ASSET_NOT_FOUND_MODES = ("warning", "702")


@dataclass(frozen=True)
class StaticList:
    id: int
    name: str
    description: str = ""
    program_name: str | None = None
    workspace: str = DEFAULT_WORKSPACE


@dataclass(frozen=True)
class Status:
    """One progression status of a channel, as Get Channels lists it."""

    name: str
    step: int
    success: bool = False
    hidden: bool = False
    description: str | None = None


@dataclass(frozen=True)
class Channel:
    id: int
    name: str
    program_type: str
    statuses: tuple[Status, ...]

    def importable(self) -> tuple[str, ...]:
        """Statuses an import may give: every one but "Not in Program" (docs §9)."""
        return tuple(s.name for s in self.statuses if s.name != NOT_IN_PROGRAM)


@dataclass(frozen=True)
class Program:
    id: int
    name: str
    channel: str
    type: str = "Default"
    workspace: str = DEFAULT_WORKSPACE
    description: str = ""


@dataclass(frozen=True)
class Partition:
    id: int
    name: str
    description: str


@dataclass(frozen=True)
class Catalog:
    """The instance's targets. ``None`` lists or programs mean "any id exists" (the pre-describe leniency)."""

    lists: Mapping[int, StaticList] | None
    programs: Mapping[int, Program] | None
    channels: Mapping[str, Channel]
    # None: one "Default" partition is listed, and an import may name any partition or none.
    partitions: tuple[str, ...] | None

    def static_list(self, list_id: int) -> StaticList | None:
        if self.lists is None:
            return StaticList(list_id, f"Static List {list_id}") if list_id > 0 else None
        return self.lists.get(list_id)

    def program(self, program_id: str | int) -> Program | None:
        """The program a path segment names; None for an unknown or non-numeric id."""
        number = parse_id(program_id)
        if number is None or number <= 0:
            return None
        if self.programs is None:
            return Program(number, f"Program {number}", next(iter(self.channels)))
        return self.programs.get(number)

    def channel(self, name: str) -> Channel | None:
        return self.channels.get(name)

    def statuses_for(self, program: Program) -> tuple[str, ...]:
        return self.channels[program.channel].importable()

    def lead_partitions(self) -> list[Partition]:
        names = self.partitions if self.partitions is not None else (DEFAULT_PARTITION,)
        return [
            Partition(i, name, _DEFAULT_PARTITION_TEXT if name == DEFAULT_PARTITION else "")
            for i, name in enumerate(names, start=1)
        ]


def build(
    *,
    lists: Mapping[Any, Any] | Sequence[Any] | None,
    programs: Mapping[Any, Any] | None,
    channels: Mapping[str, Any],
    partitions: Sequence[str] | None,
) -> Catalog:
    """Normalise the configuration's shapes; raises ValueError naming the entry it cannot read.

    lists:      None, a list of ids, or {id: name | {name, description, programName, workspaceName}}
    programs:   None or {id: {name, channel, type, workspace, description}}; the channel must exist;
                the shorthand {id: [status, ...]} gives the program a channel of its own, "Program <id>"
    channels:   {name: [status, ...] | {applicableProgramType, progressionStatuses: [status, ...]}},
                a status being a name or {name, step, success, hidden, description};
                "Not in Program" is added at step 0 when missing (every channel has it)
    partitions: None or a list of names
    """
    own = {} if programs is None else {k: v for k, v in programs.items() if _is_status_list(v)}
    all_channels = {**channels, **{f"Program {_id('programs', k)}": v for k, v in own.items()}}
    built_channels = {name: _channel(i, name, spec) for i, (name, spec) in enumerate(all_channels.items(), start=1)}
    if not built_channels:
        raise ValueError("channels: at least one channel is needed (programs take their statuses from it)")
    built_programs = None
    if programs is not None:
        built_programs = {
            _id("programs", k): _program(k, {"channel": f"Program {_id('programs', k)}"} if k in own else v)
            for k, v in programs.items()
        }
    for program in (built_programs or {}).values():
        if program.channel not in built_channels:
            raise ValueError(
                f"programs: {program.id} names channel {program.channel!r}, not one of {sorted(built_channels)}"
            )
    if partitions is not None:
        if isinstance(partitions, str) or not all(isinstance(p, str) and p for p in partitions):
            raise ValueError("partitions must be a list of names, or None")
        if len(set(partitions)) != len(partitions):
            raise ValueError("partitions: names must be unique")
    return Catalog(
        lists=_lists(lists),
        programs=built_programs,
        channels=built_channels,
        partitions=None if partitions is None else tuple(partitions),
    )


def _lists(spec: Mapping[Any, Any] | Sequence[Any] | None) -> dict[int, StaticList] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        raise ValueError("lists must be a list of ids, a mapping of id to name, or None")
    if not isinstance(spec, Mapping):
        return {n: StaticList(n, f"Static List {n}") for n in (_id("lists", k) for k in spec)}
    out = {}
    for key, value in spec.items():
        list_id = _id("lists", key)
        if isinstance(value, str):
            out[list_id] = StaticList(list_id, value)
        elif isinstance(value, Mapping):
            program = value.get("programName")
            out[list_id] = StaticList(
                list_id,
                str(value.get("name", f"Static List {list_id}")),
                str(value.get("description", "")),
                None if program is None else str(program),
                str(value.get("workspaceName", DEFAULT_WORKSPACE)),
            )
        else:
            raise ValueError(f"lists: {key!r}: expected a name or a mapping, got {value!r}")
    return out


def _is_status_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def _program(key: Any, value: Any) -> Program:
    if not isinstance(value, Mapping) or not isinstance(value.get("channel"), str):
        raise ValueError(f"programs: {key!r}: expected a mapping with a channel name, got {value!r}")
    program_id = _id("programs", key)
    return Program(
        program_id,
        str(value.get("name", f"Program {program_id}")),
        value["channel"],
        str(value.get("type", "Default")),
        str(value.get("workspace", DEFAULT_WORKSPACE)),
        str(value.get("description", "")),
    )


def _channel(channel_id: int, name: str, spec: Any) -> Channel:
    program_type = "program"
    entries = spec
    if isinstance(spec, Mapping):
        program_type = str(spec.get("applicableProgramType", program_type))
        entries = spec.get("progressionStatuses")
    if isinstance(entries, str) or not isinstance(entries, Sequence) or not entries:
        raise ValueError(f"channels: {name!r}: expected a non-empty list of statuses, got {entries!r}")
    statuses = [_status(name, i, entry) for i, entry in enumerate(entries)]
    if all(s.name != NOT_IN_PROGRAM for s in statuses):
        statuses.insert(0, Status(NOT_IN_PROGRAM, 0))
        statuses[1:] = [_restep(s, i) for i, s in enumerate(statuses[1:], start=1)]
    if len({s.name for s in statuses}) != len(statuses):
        raise ValueError(f"channels: {name!r}: status names must be unique")
    return Channel(channel_id, name, program_type, tuple(statuses))


def _status(channel: str, index: int, entry: Any) -> Status:
    if isinstance(entry, str) and entry:
        return Status(entry, index * _STEP)
    if isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and entry["name"]:
        step = entry.get("step", index * _STEP)
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"channels: {channel!r}: step of {entry['name']!r} must be an integer")
        description = entry.get("description")
        return Status(
            entry["name"],
            step,
            bool(entry.get("success", False)),
            bool(entry.get("hidden", False)),
            None if description is None else str(description),
        )
    raise ValueError(f"channels: {channel!r}: cannot read status {entry!r}")


def _restep(status: Status, index: int) -> Status:
    # Only statuses numbered by position move up when "Not in Program" is put in front.
    if status.step != (index - 1) * _STEP:
        return status
    return Status(status.name, index * _STEP, status.success, status.hidden, status.description)


def _id(section: str, key: Any) -> int:
    number = parse_id(key)
    if number is None or number <= 0:
        raise ValueError(f"{section}: {key!r} is not a positive integer id")
    return number


def parse_id(value: Any) -> int | None:
    """An id from a path segment or a configuration key; None for anything else (a hostile 5000-digit
    segment included: ``int()`` would raise past 4300 digits, and no Marketo id is that long)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= _MAX_ID_DIGITS:
        return int(value)
    return None
