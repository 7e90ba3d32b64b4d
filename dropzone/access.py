"""What ``dropzone check`` asks a Marketo instance beyond Identity: the import targets, and the reads
each feature needs, with the permission a refusal (603) names.

The API user's role needs (AdobeDocs ``custom-services.md``, ``endpoint-reference.md``):

* imports of leads and program members: **Read-Write Lead** (it includes reading: Describe Lead,
  lists, partitions); custom objects: **Read-Write Custom Object** (includes Describe);
* pre-flight of headers: reading the object's describe (the permissions above are enough);
* target checks of programs and member statuses: **Read-Only Assets** (programs, channels).

So Marketo refusing to describe an object the routes import to means its imports would be refused
too (or an IP allow-list refuses this host): a problem. Refusing assets only turns the program
checks off: a warning. Blocking calls, no retries: the operator is waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dropzone import schemas, targetcheck
from dropzone.config import Config
from dropzone.errors import DescribeUnavailableError, MarketoError, WouldWaitError
from dropzone.kinds import ObjectKind
from dropzone.marketo import MarketoClient
from dropzone.schemas import Key
from dropzone.targets import ImportTarget

_IMPORTS_NEED = {
    ObjectKind.LEADS: "imports of leads need 'Read-Write Lead'",
    ObjectKind.PROGRAM_MEMBER: "imports of program members need 'Read-Write Lead'",
    ObjectKind.CUSTOM_OBJECT: "imports of custom objects need 'Read-Write Custom Object'",
}


@dataclass
class Report:
    """Sentences for the operator: ``problems`` make ``dropzone check`` fail, ``warnings`` do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fine: list[str] = field(default_factory=list)


def objects_of(config: Config, instance: str) -> dict[Key, ImportTarget]:
    """The objects the routes of ``instance`` import to, one target each."""
    out: dict[Key, ImportTarget] = {}
    for inbox in config.inboxes:
        for route in inbox.routes:
            target = route.target()
            if target.instance == instance:
                out.setdefault(schemas.key_of(target), target)
    return out


def check_instance(client: MarketoClient, config: Config) -> Report:
    """Describe each object the instance's routes use, then check their targets."""
    name = client.settings.name
    who = f"marketo instance {name}"
    report = Report()
    for key in objects_of(config, name):
        kind, api_name = key
        what = f"custom object {api_name}" if api_name else f"{kind.value}"
        try:
            schema = schemas.fetch(client, key)
        except MarketoError as exc:
            if exc.code == "603":
                report.problems.append(
                    f"{who}: Marketo denied access (603) to the describe of {what}: {_IMPORTS_NEED[kind]} (which also "
                    "lets pre-flight read the fields), or an IP allow-list refuses this host"
                )
            elif exc.code not in targetcheck.NOT_FOUND_CODES:  # a wrong apiName: the target check says it
                report.warnings.append(f"{who}: headers of {what} files will go unchecked: "
                                       f"{schemas.why_unavailable(exc)}")
            continue
        except (DescribeUnavailableError, WouldWaitError) as exc:
            report.warnings.append(f"{who}: headers of {what} files will go unchecked: {schemas.why_unavailable(exc)}")
            continue
        report.fine.append(f"{who}: pre-flight can read the {schema.what} fields ({len(schema.fields)})")
    needs = targetcheck.needs_of(config).get(name, [])
    findings = targetcheck.check(client, needs)
    for finding in findings:
        if finding.wrong is not None:
            report.problems.append(finding.wrong)
    report.warnings += targetcheck.unknowns(findings)
    checked = sum(1 for f in findings if f.wrong is None and f.unknown is None)
    if needs:
        report.fine.append(f"{who}: {checked} of {len(needs)} import target checks passed")
    return report


__all__ = ["Report", "check_instance", "objects_of"]
