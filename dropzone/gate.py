"""Whether a claimed file may be split now, and the describe its header is checked against.

Asked by prepare for each claimed file, before any byte of it is read:

* its route's import target is wrong (``targetwatch``): **held**, kept claimed, not rejected;
* the first answer about its target, or its object's first describe, is not in yet: **wait**,
  looked at again next pass (the answer's arrival wakes the loop);
* otherwise **go**: with the schema to check the header against (route key ``preflight``, default
  true), or without one and a note saying why the header was not checked.

Each instance's describes are cached per stage (``schemas.Schemas``): an instance a reload pointed
at another endpoint gets a new stage, and so a new cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dropzone.config import Route
from dropzone.describe import Schema
from dropzone.schemas import Schemas, Stage
from dropzone.targetwatch import TargetWatch


@dataclass(frozen=True, slots=True)
class Gate:
    """``go``: split now, checking against ``schema`` when there is one (``note``: why not). Not ``go``:
    ``held`` says why when the target is wrong; otherwise the file waits for an answer."""

    go: bool
    schema: Schema | None = None
    note: str | None = None
    held: str | None = None


class Preflight:
    """The gate of every claimed file: target checks and describes, per instance.

    Args:
        stage: an instance's dispatch stage by name (its client and threads), None when it has none.
        targets: the target checks; None checks none.
        wake: called from a describe's thread when it ends.
    """

    def __init__(
        self,
        stage: Callable[[str], Stage | None],
        targets: TargetWatch | None = None,
        *,
        wake: Callable[[], None] = lambda: None,
        schemas: Callable[[str, Stage], Schemas] | None = None,
    ) -> None:
        self._stage, self.targets, self._wake = stage, targets, wake
        self._make = schemas or self._schemas_of
        self._caches: dict[str, tuple[Stage, Schemas]] = {}

    def _schemas_of(self, name: str, stage: Stage) -> Schemas:
        return Schemas(name, lambda: stage.client, stage.calls, wake=self._wake)

    def schemas(self, name: str) -> Schemas | None:
        """Instance ``name``'s describes (a new cache for a new stage), None when it has no stage."""
        stage = self._stage(name)
        if stage is None:
            return None
        cached = self._caches.get(name)
        if cached is None or cached[0] is not stage:
            cached = self._caches[name] = (stage, self._make(name, stage))
        return cached[1]

    def run_once(self, now: float) -> bool:
        """Collect the target checks that finished, start those due; True when one was collected."""
        return self.targets.run_once(now) if self.targets is not None else False

    def gate(self, route: Route, now: float) -> Gate:
        target = route.target()
        if self.targets is not None:
            held = self.targets.held(target)
            if held is not None:
                return Gate(go=False, held=held)
            if self.targets.waiting(target, now):
                return Gate(go=False)
        if not route.preflight:
            return Gate(go=True)
        schemas = self.schemas(target.instance)
        if schemas is None:
            return Gate(go=True)  # no stage for its instance: dispatch tells the partner
        found = schemas.lookup(target, now)
        if found.pending:
            return Gate(go=False)
        if found.schema is not None:
            return Gate(go=True, schema=found.schema)
        return Gate(go=True, note=f"line 1 was not checked against Marketo's fields (pre-flight): {found.unavailable}")

    def recheck(self, route: Route, now: float) -> bool:
        """An unknown column: True when the describe is fetched again first (the file waits for it)."""
        schemas = self.schemas(route.instance)
        return schemas is not None and schemas.recheck(route.target(), now)


__all__ = ["Gate", "Preflight"]
