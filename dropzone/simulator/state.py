"""The simulated subscription as a pure model: request in, response out.

Owns authentication, limits, faults, jobs, the envelopes and the record of
what was imported; the path table is ``routes``', the describe and target
records ``describe``'s (every endpoint passes the same token, limit, fault and
603 gates). Has no sockets, threads or clock of its own: every call is handed
``now``, and the caller serialises access (``Simulator`` holds one lock).
The HTTP edge drives a call in three steps, so that waiting (slow faults) and
parsing (10 MB bodies) happen outside the lock:

    ticket = state.begin(request, now)      # route, 615 gate, edge fault draw
    state.prepare(ticket)                   # pure, lock-free: multipart + rows
    response = state.process(ticket, now)   # auth, limits, the endpoint
    state.end(ticket, now, response)        # leave the 615 gate, log the call

Armed faults act at four points of ``process`` (see ``faults``): as the call
arrives, after the token and the limits (refusals), after an import created
its job, and while a status body is built. The bytes of pages and rewritten
bodies are ``replies``'.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs

from . import codes, describe, faults, imports, replies, rows
from .config import SimConfig
from .faults import Fault, FaultPlan
from .jobs import Job, JobQueue, JobStatus
from .limits import DailyQuota, InFlight, RateWindow
from .replies import CSV_TYPE, JSON_TYPE, Response, http_page, json_bytes
from .routes import Route, route
from .tokens import TokenBook

_REDACTED = "<redacted>"
_SECRET_PARAMS = frozenset({"access_token", "client_secret"})
# The call log keeps the newest calls only, so a long standalone run stays bounded.
CALL_LOG_LIMIT = 100_000


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    authorization: str | None = None
    content_type: str | None = None
    body: bytes = b""
    body_too_large: bool = False


@dataclass
class Ticket:
    request: Request
    route: Route
    started: float
    # The fault drawn as the call arrived; ``fault`` is its kind (the call log's "fault").
    edge: Fault | None = None
    fault: str | None = None
    # Kinds of every fault that acted on the call, in order (the call log's "faults").
    applied: list[str] = field(default_factory=list)
    over_concurrency: bool = False
    in_flight: bool = False
    prepared: imports.Prepared | None = None
    auth: str | None = None


def parse_query(raw: str) -> dict[str, str]:
    """First value of each parameter, URL-decoded (``On%20List`` and ``On+List`` alike)."""
    return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}


def redact(query: Mapping[str, str]) -> dict[str, str]:
    """The query as the call log keeps it: secrets replaced, their presence kept."""
    return {k: (_REDACTED if k in _SECRET_PARAMS else v) for k, v in query.items()}


class SimState:
    """One Marketo subscription with one API user."""

    def __init__(self, cfg: SimConfig, *, now: float) -> None:
        self.cfg = cfg
        self.schemas = imports.Schemas(cfg)
        self._denied = cfg.denied()
        seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**32)
        # Separate streams: minting a token must not shift the fault draws of a seeded run.
        # Not cryptographic on purpose: a seed must reproduce a run.
        self._id_rng = random.Random(seed)
        self.tokens = TokenBook(ttl=cfg.token_ttl, pod=cfg.pod, rng=random.Random(seed + 1))
        self.faults = FaultPlan(cfg.fault_rates, random.Random(seed + 2))
        self.rate = RateWindow(cfg.rate_limit, cfg.rate_window)
        self.quota = DailyQuota(cfg.daily_quota)
        self.in_flight = InFlight(cfg.max_concurrent)
        self.queue = JobQueue(
            max_importing=cfg.max_importing,
            max_open=cfg.max_open,
            retention=cfg.batch_retention,
            first_batch_id=cfg.first_batch_id,
        )
        self.calls: deque[dict[str, Any]] = deque(maxlen=CALL_LOG_LIMIT)
        self.submissions: list[Job] = []
        self.imported: list[dict[str, Any]] = []
        # JSON-lines records not yet written out; the Simulator drains this.
        self.records: list[dict[str, Any]] = []
        self._now = now

    # -- the three steps of a call ------------------------------------------

    def begin(self, request: Request, now: float) -> Ticket:
        ticket = Ticket(request=request, route=route(request.path), started=now)
        if ticket.route.endpoint != "identity":
            ticket.in_flight = True
            if not self.in_flight.enter():
                ticket.over_concurrency = True
                return ticket
        ticket.edge = self.faults.draw(ticket.route.endpoint, now)
        if ticket.edge is not None:
            ticket.fault = ticket.edge.kind
            ticket.applied.append(ticket.edge.kind)
        return ticket

    def prepare(self, ticket: Ticket) -> None:
        """Lock-free: read the body of an import (touches only the immutable config)."""
        req, rt = ticket.request, ticket.route
        if rt.endpoint != "import" or req.method != "POST" or ticket.over_concurrency:
            return
        if ticket.fault and not faults.proceeds(ticket.fault):
            return
        ticket.prepared = imports.prepare(
            cfg=self.cfg,
            schemas=self.schemas,
            kind=rt.kind or "leads",
            path_params=rt.params,
            query=req.query,
            content_type=req.content_type,
            body=req.body,
            body_too_large=req.body_too_large,
        )

    def process(self, ticket: Ticket, now: float) -> Response:
        self._now = now
        self.advance(now)
        response = self._process(ticket, now)
        edge = ticket.edge
        if edge is not None and edge.kind == "oversize":
            response = replies.pad(response, edge.param("size"))
        if edge is not None and edge.kind == "trickle":
            response = replace(response, pace=float(edge.param("bytes_per_second")))
        return response

    def _process(self, ticket: Ticket, now: float) -> Response:
        rt, fault = ticket.route, ticket.fault
        if ticket.over_concurrency:
            return self._error("615")
        if fault and fault.isdigit():
            return self._error(fault, limit=self.cfg.rate_limit, window=self._window_text())
        if fault in codes.HTTP_FAULTS:
            return http_page(codes.HTTP_FAULTS[fault])
        if ticket.edge is not None and ticket.edge.kind == "http429":
            return replies.too_many_requests(ticket.edge.param("retry_after"))
        if rt.endpoint == "identity":
            return self._identity(ticket, now)
        if not rt.known:
            if self.cfg.unknown_path_status != 200:
                return http_page(self.cfg.unknown_path_status)
            return self._error("610")
        if ticket.request.method not in rt.methods:
            return self._error("605")
        if ticket.prepared is not None and ticket.prepared.too_large:
            # A front end refuses the size before Marketo looks at the token.
            return http_page(413)
        refusal = self._authenticate(ticket, now)
        if refusal:
            return refusal
        # Everything above is answered before the limiter and so never counts toward
        # the rate window or the daily quota: identity, injected faults, 610, 605,
        # 413, 615 and the token codes (Adobe exempts 601/602/604/605/608/611).
        if not self.rate.admit(now):
            return self._error("606", limit=self.cfg.rate_limit, window=self._window_text())
        if not self.quota.admit(now, self.cfg.scope):
            self.rate.refund(now)
            return self._error("607")
        # A configuration-class refusal (603) comes after the token and counts toward the limits.
        asset = rt.endpoint in codes.ASSET_ENDPOINTS
        denied = self._take(ticket, faults.REFUSE, now)
        if denied is not None:
            text = replies.refusal_message(denied.param("flavour"), rt.endpoint, rt.kind)
            return self._error("603", message=text, asset=asset)
        if rt.endpoint in self._denied:
            return self._error("603", asset=asset)
        return self._endpoint(ticket, now)

    def end(self, ticket: Ticket, now: float, response: Response | None, *, delivered: bool = True) -> None:
        """Leave the concurrency gate and log the call.

        ``response`` is None when nothing was processed (reset_before);
        ``delivered`` is False when the reply was computed but never sent (reset).
        """
        if ticket.in_flight:
            self.in_flight.leave()
        req = ticket.request
        self.calls.append(
            {
                "method": req.method,
                "path": req.path,
                "query": redact(req.query),
                "auth": ticket.auth,
                "endpoint": ticket.route.endpoint,
                "code": response.code if response is not None else None,
                "http_status": response.status if response is not None else None,
                "fault": ticket.fault or (ticket.applied[0] if ticket.applied else None),
                "faults": list(ticket.applied),
                "delivered": delivered and response is not None,
                "t": ticket.started,
                "t_end": now,
            }
        )

    # -- time -----------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Run the queue up to ``now`` and record the rows of jobs that completed."""
        for job in self.queue.advance(now):
            if job.background or job.status is not JobStatus.COMPLETE:
                continue
            for outcome in job.outcomes:
                if not outcome.imported:
                    continue
                entry = {
                    "batchId": job.batch_id,
                    "kind": job.kind,
                    "row": rows.row_dict(job.header, outcome.values),
                    "warning": outcome.warning,
                }
                self.imported.append(entry)
                self.records.append({"record": "row", **entry, "t": job.finished_at})

    def add_background_jobs(self, n: int, seconds: float, now: float) -> list[int]:
        """Queue ``n`` jobs of other integrations; they may be refused like anyone's (1016)."""
        self.advance(now)
        ids = []
        for _ in range(n):
            if self.queue.is_full():
                break
            job = Job(
                batch_id=self.queue.next_batch_id(),
                kind="background",
                submitted_at=now,
                queued_dwell=0.0,
                duration=seconds,
            )
            self.queue.submit(job)
            ids.append(job.batch_id)
        self.advance(now)
        return ids

    def _window_text(self) -> str:
        window = float(self.cfg.rate_window)
        return str(int(window)) if window.is_integer() else str(window)

    # -- identity ---------------------------------------------------------------

    def _identity(self, ticket: Ticket, now: float) -> Response:
        req = ticket.request
        if req.method not in ("GET", "POST"):
            return replies.oauth_error(405, "method_not_allowed", f"Request method '{req.method}' not supported")
        params = dict(req.query)
        if req.body and "json" not in (req.content_type or "").lower():
            for key, value in parse_query(req.body.decode("utf-8", "replace")).items():
                params.setdefault(key, value)
        client_id, secret = params.get("client_id"), params.get("client_secret")
        if not client_id or not secret:
            return replies.oauth_error(401, "unauthorized", "Full authentication is required to access this resource")
        if client_id != self.cfg.client_id or secret != self.cfg.client_secret:
            return replies.oauth_error(401, "invalid_client", "Bad client credentials")
        grant = params.get("grant_type")
        if not grant:
            return replies.oauth_error(400, "invalid_request", "Missing grant type")
        if grant != "client_credentials":
            return replies.oauth_error(400, "unsupported_grant_type", f"Unsupported grant type: {grant}")
        token, expires_in = self.tokens.grant(
            now,
            zero_if_reissued=self.cfg.zero_expires_in,
            zero=ticket.fault == "expires_in_0",
            grace=self.cfg.zero_expires_grace,
        )
        body = {"access_token": token, "token_type": "bearer", "expires_in": expires_in, "scope": self.cfg.scope}
        return Response(200, json_bytes(body), JSON_TYPE, 200)

    def _authenticate(self, ticket: Ticket, now: float) -> Response | None:
        req = ticket.request
        form = ticket.prepared.form if ticket.prepared else {}
        bearer = None
        if req.authorization:
            scheme, _, value = req.authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                bearer = value.strip()
        candidates = [
            ("bearer", bearer, True),
            ("query", req.query.get("access_token") or None, self.cfg.accept_query_token),
            ("form", form.get("access_token") or None, self.cfg.accept_form_token),
        ]
        present = [(where, value, allowed) for where, value, allowed in candidates if value]
        if not present:
            return self._error(self.cfg.missing_token_code)
        ticket.auth = present[0][0]
        usable = [(where, value) for where, value, allowed in present if allowed]
        if not usable:
            return self._error("601")
        ticket.auth, token = usable[0]
        code = self.tokens.check(token, now)
        return self._error(code) if code else None

    # -- bulk endpoints ---------------------------------------------------------

    def _endpoint(self, ticket: Ticket, now: float) -> Response:
        rt = ticket.route
        if rt.endpoint == "import":
            return self._submit(ticket, now)
        if rt.endpoint == "usage":
            return self._usage(now)
        if rt.endpoint in codes.DESCRIBE_ENDPOINTS:
            return self._describe(ticket)
        job = self._find(rt, now)
        if job is None:
            batch = rt.params.get("batchId")
            return self._error(self.cfg.unknown_batch_code, message=f"Batch not found: {batch}")
        if rt.endpoint == "status":
            return self._status_reply(ticket, job, now)
        return self._report(job, warnings=rt.endpoint == "warnings")

    def _usage(self, now: float) -> Response:
        """The day's calls, every API user's (this call included: it was counted on the way in)."""
        date, total, users = self.quota.today(now)
        split = [{"userId": user, "count": n} for user, n in sorted(users.items())]
        return self._ok([{"date": date, "total": total, "users": split}])

    def _describe(self, ticket: Ticket) -> Response:
        rt = ticket.route
        found = describe.answer(rt.endpoint, rt.params, ticket.request.query, self.schemas, self.cfg)
        asset = rt.endpoint in codes.ASSET_ENDPOINTS
        if found.error is not None:
            code, text = found.error
            return self._error(code, message=text, asset=asset)
        body: dict[str, Any] = {"requestId": self.request_id(), "success": True}
        if asset:
            body.update(errors=[], warnings=list(found.warnings))
        if found.result is not None:
            body["result"] = found.result
        return Response(200, json_bytes(body), JSON_TYPE, 200)

    def _take(self, ticket: Ticket, stage: str, now: float, pm: bool = False) -> Fault | None:
        """Consume the armed fault of ``stage`` for this call, if any, and note it in the log."""
        fault = self.faults.take(stage, ticket.route.endpoint, now, lambda f: pm or f.kind != "bare_status")
        if fault is not None:
            ticket.applied.append(fault.kind)
        return fault

    def _find(self, rt: Route, now: float) -> Job | None:
        job = self.queue.get(int(rt.params["batchId"]), now)
        if job is None or job.kind != rt.kind:
            return None
        if job.kind == "customobject" and job.params.get("objectApiName") != rt.params.get("apiName"):
            return None
        return job

    def _submit(self, ticket: Ticket, now: float) -> Response:
        prepared = ticket.prepared
        assert prepared is not None
        upload = prepared.outcome
        if isinstance(upload, imports.Rejection):
            return self._error(upload.code, message=upload.message)
        assert upload is not None
        list_id = upload.params.get("listId")
        if list_id is not None and any(
            j.kind == "leads" and j.params.get("listId") == list_id for j in self.queue.open_jobs()
        ):
            return self._error("1019")
        if self.queue.is_full():
            return self._error("1016")
        dwell, per_job, per_row = self.cfg.timings()
        job = Job(
            batch_id=self.queue.next_batch_id(),
            kind=upload.kind,
            submitted_at=now,
            queued_dwell=dwell,
            duration=per_job + per_row * len(upload.outcomes),
            params=upload.params,
            param_sources=upload.param_sources,
            header=upload.header,
            outcomes=upload.outcomes,
            delimiter=upload.delimiter,
            nbytes=upload.nbytes,
            filename=upload.filename,
            fail_message="Import failed" if ticket.fault == "job_failed" else None,
        )
        self.queue.submit(job)
        self.submissions.append(job)
        self.records.append(
            {
                "record": "submission",
                "batchId": job.batch_id,
                "kind": job.kind,
                "params": job.params,
                "header": job.header,
                "rows": len(job.outcomes),
                "bytes": job.nbytes,
                "t": now,
            }
        )
        result: dict[str, Any] = {"batchId": job.batch_id}
        if job.kind != "customobject":
            result["importId"] = str(job.batch_id)
        result["status"] = job.status.value
        if job.kind == "customobject":
            result["objectApiName"] = job.params["objectApiName"]
        created = self._ok([result])
        lost = self._take(ticket, faults.CREATED, now)
        return created if lost is None else replies.after_create(lost.param("reply"), created)

    def _status_reply(self, ticket: Ticket, job: Job, now: float) -> Response:
        result = self._status(job, now)
        pm = job.kind == "programmember"
        fault = self._take(ticket, faults.STATUS, now, pm=pm)
        if (fault is not None and fault.kind == "bare_status") or (pm and not self.cfg.program_member_counters):
            result = replies.bare(result)
        envelope = self._envelope(result)
        if fault is not None and fault.kind == "malformed_status":
            envelope = replies.malform(envelope, fault.param("shape"))
        return Response(200, json_bytes(envelope), JSON_TYPE, 200 if envelope["success"] else "611")

    def _status(self, job: Job, now: float) -> dict[str, Any]:
        processed, failed, warned = job.counts(now)
        message = status_message(job, processed, failed, warned)
        if job.kind == "customobject":
            return {
                "batchId": job.batch_id,
                "operation": "import",
                "status": job.status.value,
                "objectApiName": job.params["objectApiName"],
                "numOfObjectsProcessed": processed,
                "numOfRowsFailed": failed,
                "numOfRowsWithWarning": warned,
                "importTime": f"{job.import_seconds(now)} second(s)",
                "message": message,
            }
        return {
            "batchId": job.batch_id,
            "importId": str(job.batch_id),
            "status": job.status.value,
            "numOfLeadsProcessed": processed,
            "numOfRowsFailed": failed,
            "numOfRowsWithWarning": warned,
            "message": message,
        }

    def _report(self, job: Job, *, warnings: bool) -> Response:
        # Before Complete there is no file yet [INF]: answered like a job with no such rows.
        affected: list[rows.RowOutcome] = []
        if job.status is JobStatus.COMPLETE:
            if warnings:
                affected = [o for o in job.outcomes if o.imported and o.warning is not None]
            else:
                affected = [o for o in job.outcomes if o.failure is not None and not o.dropped]
        if not affected:
            if self.cfg.failures_404:
                return http_page(404)
            return Response(200, b"", CSV_TYPE, 200)
        drop = None
        if self.cfg.failure_file_quirk and job.kind == "leads" and not warnings:
            lookup = job.params.get("lookupField", "email")
            last = len(job.header) - 1
            if job.header and job.header[last].lower() == str(lookup).lower():
                drop = last
        body = rows.render_report(
            job.header,
            affected,
            warnings=warnings,
            delimiter=job.delimiter,
            drop_column=drop,
            unquoted=self.cfg.failure_file_quirk,
        )
        return Response(200, body, CSV_TYPE, 200)

    # -- envelopes ----------------------------------------------------------------

    def request_id(self) -> str:
        # "%04x#%011x": a random tag and the clock in milliseconds, like "d01f#15d672f8560".
        return f"{self._id_rng.getrandbits(16):04x}#{int(self._now * 1000) & 0xFFFFFFFFFFF:011x}"

    def _envelope(self, *result: dict[str, Any]) -> dict[str, Any]:
        return {"requestId": self.request_id(), "result": list(result), "success": True}

    def _ok(self, result: list[dict[str, Any]]) -> Response:
        return Response(200, json_bytes(self._envelope(*result)), JSON_TYPE, 200)

    def _error(self, code: str, *, message: str | None = None, asset: bool = False, **values: object) -> Response:
        """The error envelope; the Asset API's (``asset``) also carries an empty ``warnings``."""
        text = message if message is not None else codes.message(code, **values)
        body: dict[str, Any] = {"requestId": self.request_id(), "success": False}
        body["errors"] = [{"code": code, "message": text}]
        if asset:
            body["warnings"] = []
        return Response(200, json_bytes(body), JSON_TYPE, code)


def status_message(job: Job, processed: int, failed: int, warned: int) -> str:
    """Message templates from the docs' examples (clients must not parse them)."""
    if job.status is JobStatus.QUEUED:
        return "Queued for processing"
    if job.status is JobStatus.IMPORTING:
        return "Import in progress"
    if job.status is JobStatus.FAILED:
        return job.fail_message or "Import failed"
    head = "Import succeeded" if failed == 0 else "Import completed with errors"
    text = f"{head}, {processed} records imported ({processed} members)"
    if failed:
        text += f", {failed} failed"
    if warned:
        text += f", {warned} warning."
    return text
