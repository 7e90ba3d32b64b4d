"""When a submit look may be skipped: the last one sent nothing, and nothing it depended on has changed.

Most passes of a backlog find nothing to send: every queue slot is taken, a
list is busy, a hold is not over. Looking again costs journal queries in
proportion to what waits, so the dispatch stage keeps, as of a look that
sent nothing, everything that decided it (``IdleMark``), and asks the mark
first. The mark holds while

* the journal has committed nothing since (``Store.changes``: a chunk split,
  requeued, reassigned, a batch finished, an owner changed);
* the stage's configuration is the same (settings, draining, the largest
  merged import: a reload);
* no hold it saw has ended (a list's or a target's pause, on the monotonic
  clock; a resubmit hold, on the wall clock);
* usage.json is not due while chunks wait (it is asked on its schedule only
  then, as if every pass looked).

What a mark cannot see, the stage clears it for (``SubmitIdle.clear``): a
call's answer collected (a submit thread freed, usage.json answered, a pause
Marketo asked for). A pause of every submit and the daily quota's hold are
checked before the mark at every pass, and a look they cut short leaves no
mark, so their end (a clock, an answer) always brings a full look.
``IdleMark`` and ``mark`` are pure: plain values in, a yes or no out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Facts:
    """What a submit look depends on, as of now."""

    changes: int  # ``Store.changes``
    config: tuple[object, ...]  # the stage's settings, draining flag, merged-import limit
    now: float  # monotonic
    wall: float  # wall clock
    usage_due: bool  # usage.json would be asked now, if chunks wait


@dataclass(frozen=True, slots=True)
class IdleMark:
    """A submit look that sent nothing, and what decided it."""

    changes: int
    config: tuple[object, ...]
    until: float = math.inf  # monotonic: the earliest list or target pause that ends
    until_wall: float = math.inf  # wall clock: the earliest resubmit hold that ends
    waiting: bool = False  # chunks were pending: usage.json stays on its schedule

    def holds(self, facts: Facts) -> bool:
        """Whether another look now would find what this one found: nothing to send."""
        return (
            facts.changes == self.changes
            and facts.config == self.config
            and facts.now < self.until
            and facts.wall < self.until_wall
            and not (self.waiting and facts.usage_due)
        )


def mark(facts: Facts, *, pauses_until: Iterable[float], held_until: Iterable[float | None], waiting: bool) -> IdleMark:
    """The mark of a look that sent nothing: ``pauses_until`` (monotonic) and ``held_until`` (wall clock,
    None: not held) are the holds it saw; those already over are no reason to look again."""
    return IdleMark(
        facts.changes,
        facts.config,
        until=min((t for t in pauses_until if t > facts.now), default=math.inf),
        until_wall=min((t for t in held_until if t is not None and t > facts.wall), default=math.inf),
        waiting=waiting,
    )


@dataclass
class SubmitIdle:
    """One dispatch stage's mark, if its last submit look sent nothing."""

    last: IdleMark | None = None

    def holds(self, facts: Facts) -> bool:
        return self.last is not None and self.last.holds(facts)

    def found_nothing(
        self, facts: Facts, *, pauses_until: Iterable[float], held_until: Iterable[float | None], waiting: bool
    ) -> None:
        self.last = mark(facts, pauses_until=pauses_until, held_until=held_until, waiting=waiting)

    def clear(self) -> None:
        self.last = None


__all__ = ["Facts", "IdleMark", "SubmitIdle", "mark"]
