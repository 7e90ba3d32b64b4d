"""Which Marketo instance finishes each unfinished chunk, after the configuration changed.

Runs at start and on reload, never during a pass: it applies
``jobs.chunk_owner`` to every unfinished chunk. A renamed instance's chunks
follow its endpoint to the new name; work no configured instance can reach
is failed with the reason, so its file is reported, never left stuck.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import structlog

from dropzone import coalescing, jobs
from dropzone.instances import MarketoSettings
from dropzone.jobs import ChunkState, Ownership
from dropzone.store import ChunkRow, Counts, Results, Store

log = structlog.get_logger("dropzone.owners")


def assign_owners(
    store: Store,
    instances: Mapping[str, MarketoSettings],
    *,
    draining: Collection[str] = (),
    busy: Collection[int] = (),
) -> None:
    """Give each unfinished chunk to the configured instance that can finish it.

    ``draining``: endpoints a reload took away (an instance removed, or
    pointed elsewhere) whose stage still runs: what was sent there is
    finished there; unsent chunks of a removed instance are failed.
    ``busy``: chunks with a call running: left alone until its answer is in.
    """
    configured = {name: settings.subscription for name, settings in instances.items()}
    store.remember_instances(configured)
    last_known = store.known_instances()
    seen: set[int] = set()
    for chunk in store.chunks([s for s in ChunkState if s not in jobs.CHUNK_FINAL]):
        # The chunks of a shared import have one instance, one endpoint, one state: decided (and moved) once.
        if chunk.batch_key in seen:
            continue
        seen.add(chunk.batch_key)
        if chunk.batch_key in busy or (chunk.endpoint in draining and chunk.state is not ChunkState.PENDING):
            continue
        decision = jobs.chunk_owner(
            chunk.state, chunk.instance, chunk.endpoint, configured, last_known.get(chunk.instance),
            maybe_sent=chunk.resubmits > 0,
        )
        match decision.action:
            case Ownership.RENAMED if decision.instance is not None:
                store.reassign(chunk.id, decision.instance)
                log.info("chunk_follows_its_endpoint", chunk_id=chunk.id, was=chunk.instance, now=decision.instance)
            case Ownership.ORPHANED:
                if chunk.state is ChunkState.FETCHING:
                    # Marketo finished it and said how; only its failure and warning files are out of reach.
                    _results_out_of_reach(store, chunk)
                else:
                    store.fail_chunk(chunk.id, decision.reason)
                log.warning("chunk_orphaned", chunk_id=chunk.id, instance=chunk.instance, reason=decision.reason)


def _results_out_of_reach(store: Store, first: ChunkRow) -> None:
    members = store.group_of(first.id)
    per_chunk = None
    if len(members) > 1:
        # A shared batch's counters are the whole batch's: each file's share is known only if there were none.
        batch = Counts(first.processed, first.failed, first.warned)
        per_chunk = {
            c.id: Results(None, None, coalescing.share_counts(first.marketo_status, c.rows, None, None, batch))
            for c in members
        }
    for c in members:
        store.add_note(
            c.file_id,
            f"chunk {c.index}'s failure and warning files could not be fetched: the Marketo "
            f"instance {c.instance!r} is no longer configured",
        )
    store.store_results(first.id, failures=None, warnings=None, per_chunk=per_chunk)


__all__ = ["assign_owners"]
