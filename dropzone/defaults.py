"""Every default and every Marketo limit, defined once.

A change here must also be made in ``config.example.yaml``, which documents
each user-facing default. Modules import these names; none redefines them.
"""

from __future__ import annotations

from typing import Final

from dropzone.kinds import LogFormat, LogLevel, WatchMode

# --- Marketo's own limits (shared/docs/marketo-bulk-import.md) ---------------

MARKETO_CALLS_PER_WINDOW: Final = 100
"""Calls per sliding 20 s window per instance, shared by every integration (606 beyond)."""
RATE_WINDOW_S: Final = 20.0
MARKETO_MAX_CONCURRENT_CALLS: Final = 10
"""Calls in flight at once per instance; Marketo answers 615 beyond."""
MARKETO_IMPORTING: Final = 2
"""Imports Marketo runs at once per instance; the others wait, Queued, first in first out."""
MARKETO_MAX_OPEN_IMPORTS: Final = 10
"""Imports queued or running per instance; Marketo answers 1016 beyond."""
MARKETO_MAX_IMPORT_BYTES: Final = 10_000_000
"""Marketo refuses import files of 10 MB or more (HTTP 413)."""
QUOTA_EXEMPT_CODES: Final = frozenset({"601", "602", "604", "605", "608", "611"})
"""Answers Adobe marks "not counted against your daily quota" (error-codes.md); Identity calls do not count either."""

# --- The client ----------------------------------------------------------------

DEFAULT_INSTANCE: Final = "default"
"""The name of the ``marketo:`` instance; ``instances:`` adds others by name."""
CALLS_PER_20S: Final = 50
"""Our share of the 20 s window: Adobe asks a third-party integration to stay within
50 calls / 20 s, leaving the rest to the customer's other integrations."""
MAX_CONCURRENT_CALLS: Final = 5
"""Adobe's integration best practice: at most 5 concurrent requests (Marketo's hard limit is 10)."""
MAX_OPEN_IMPORTS: Final = 10
POLL_INTERVAL_S: Final = 5.0
"""The longest wait between two status polls of one import."""
CONNECT_TIMEOUT_S: Final = 10.0
READ_TIMEOUT_S: Final = 120.0
"""Marketo gives up on a request after about 30 s (604); a 10 MB upload over a
slow uplink needs more than that to *send*, so reads get a margin."""
MAX_RETRY_S: Final = 300.0
"""How long one call keeps retrying transient errors before it gives up."""
BACKOFF_BASE_S: Final = 1.0
BACKOFF_CAP_S: Final = 60.0
DAILY_QUOTA: Final = 50_000
"""API calls per day of a typical instance ("at least 10,000"), shared with every integration."""
DAILY_RESERVE: Final = 10_000
"""Calls of the daily quota left to the customer's other integrations: new imports pause when only this
many are left (0: never pause). Open imports still finish, a few calls each."""
USAGE_REFRESH_S: Final = 600.0
"""How often the instance's calls today are asked of /rest/v1/stats/usage.json (itself a call),
while files wait to be submitted."""
USAGE_RETRY_S: Final = 60.0
"""After a usage.json call failed (not a 603)."""
USAGE_FIRST_WAIT_S: Final = 5.0
"""How long new imports wait for the first usage.json answer after a start: long enough for a
healthy Marketo to answer; a slow one (its timeout is a minute) no longer holds every import,
which go ahead on our own count until it answers."""
USAGE_DENIED_RETRY_S: Final = 3600.0
"""After usage.json answered 603 (the API user may lack the permission, or an IP allow-list refused
once): our own count only, and usage.json asked again this much later."""

# --- Files -------------------------------------------------------------------

SPLIT_MAX_BYTES: Final = 9_500_000
"""Largest chunk sent in one import, header included; a margin under Marketo's limit."""
SPLIT_BLOCK_BYTES: Final = 1 << 20
"""The splitter reads this much at a time: its memory does not grow with the file."""
LOOKUP_FIELD: Final = "email"
"""Marketo's own default ``lookupField`` for lead imports."""
MARKER_SUFFIX: Final = ".done"
"""``marker: true`` means: ``leads.csv`` waits for ``leads.csv.done``."""
PROCESSING_DIRNAME: Final = ".processing"
"""Files are claimed by renaming them into this folder of their inbox (same filesystem)."""

# --- Pre-flight: Marketo's describe, and the import targets -----------------------

PREFLIGHT: Final = True
"""Route key ``preflight``: check a file's header against Marketo's describe before it takes a queue slot."""
DESCRIBE_REFRESH_S: Final = 6 * 3600.0
"""A describe older than this is fetched again, in the background (the one held is used meanwhile)."""
DESCRIBE_RECHECK_S: Final = 300.0
"""Before a file is rejected for an unknown column, a describe older than this is fetched again and the
file checked once more: an admin may just have added the field."""
DESCRIBE_DEADLINE_S: Final = 120.0
"""How long files wait for an object's first describe while Marketo does not answer it; then they go
ahead unchecked, with a note (a describe outage never holds files)."""
DESCRIBE_RETRY_S: Final = 600.0
"""After a describe was unavailable (603, a malformed reply, the deadline): asked again this much later,
files going ahead unchecked meanwhile."""
DESCRIBE_MAX_ITEMS: Final = 20_000
"""Most fields (or statuses, partitions) a reply may list; more is a hostile reply, not a schema."""
DESCRIBE_MAX_NAME_CHARS: Final = 255
"""Longest field, status or partition name a reply may hold (Marketo's API names are far shorter)."""
TARGET_CHECK_INTERVAL_S: Final = 3600.0
"""How often the configured import targets (lists, programs, statuses, partitions, custom objects) are
checked against Marketo, besides start-up and reload."""
TARGET_RETRY_S: Final = 60.0
"""A target check that could not be answered for a passing reason (the rate window, a 5xx) is tried again
this soon."""
TARGET_FIRST_WAIT_S: Final = 60.0
"""At start-up and reload, files of a route wait at most this long for the first answer about its target
(a wrong list would otherwise start a stream of failed files); unanswered, they go ahead."""
NOT_IN_PROGRAM: Final = "Not in Program"
"""The program member status every channel has and no import may give (Marketo's own docs)."""

# --- Compressed, encrypted and spreadsheet drops (``unpacking``) -------------------

MAX_EXPANDED_BYTES: Final = 2 << 30
"""Largest a decompressed, decrypted or converted file may grow (each zip member too): 2 GiB."""
MAX_ARCHIVE_BYTES: Final = 4 << 30
"""Largest the members of one zip may grow together: 4 GiB."""
MAX_ARCHIVE_MEMBERS: Final = 1_000
"""Most files one zip may hold (folders not counted)."""
MAX_COMPRESSION_RATIO: Final = 100
"""Largest expanded/compressed size ratio (Apache POI's bound for zip bombs); a CSV rarely passes 20."""
RATIO_GRACE_BYTES: Final = 1 << 20
"""The ratio applies beyond this much output: a small file of repeated values compresses far better
than 100:1 and is no bomb."""
MAX_SHEET_CELLS: Final = 10_000_000
"""Most cells a worksheet's used rectangle may span (first used cell to last): calamine holds it whole, about
32 bytes a cell, so some 320 MB at most; 200,000 rows of 50 columns pass."""
MAX_WORKBOOK_BYTES: Final = 256 << 20
"""Largest an .xlsx's parts may grow, expanded: the reader holds a whole sheet in memory."""
DECRYPT_DEADLINE_S: Final = 240.0
"""Wall-clock bound on one gpg run (inside the 300 s watchdog) that keeps producing plaintext."""
DECRYPT_STALL_S: Final = 15.0
"""gpg killed when it has written no plaintext for this long (a stuck agent): the loop waits no longer."""
DECRYPT_STALLS_PER_FILE: Final = 3
"""A file on which gpg stalled this many times (its agent restarted in between) is Rejected: gpg stalls on
it, not on every file (a message with many bogus key packets for our key makes gpg try each, silently)."""
DECRYPT_REST_S: Final = 60.0
"""After a stalled gpg, decryption waits this long (its files stay claimed, others go on) before gpg is
tried again, with its agent restarted: a stuck gpg never holds the loop pass after pass."""
PGP_DIRNAME: Final = "pgp"
"""The private keyring's folder under ``state_dir`` (mode 0700), rebuilt from the key file at start and reload."""

# --- Inboxes -----------------------------------------------------------------

WATCH: Final = WatchMode.AUTO
SCAN_INTERVAL_S: Final = 30.0
"""Between reconcile scans of an inbox; events are only hints."""
QUIET_PERIOD_S: Final = 10.0
"""A file must stay unchanged this long, on the daemon's clock, before it is taken."""
STALE_PARTIAL_AFTER_S: Final = 86_400.0
"""An unchanged temporary upload (``*.filepart``) is reported as abandoned after this."""

# --- Operations --------------------------------------------------------------

HTTP_LISTEN: Final = "127.0.0.1:9108"
"""Where ``/metrics`` and the health endpoints listen when an ``http`` section is given."""
LOG_FORMAT: Final = LogFormat.AUTO
LOG_LEVEL: Final = LogLevel.INFO
SECRET_MASK: Final = "********"  # noqa: S105 - a mask shown instead of the secret, not a secret

# --- Pauses after Marketo said "not now" (seconds) -----------------------------

QUEUE_FULL_PAUSE_S: Final = 15.0
"""After 1016, growing with each one in a row (others fill Marketo's queue)."""
QUEUE_FULL_PAUSE_MAX_S: Final = 120.0
LIST_BUSY_PAUSE_S: Final = 10.0
"""After 1019: only imports into that static list wait."""
TRANSIENT_PAUSE_S: Final = 30.0
MISCONFIGURED_PAUSE_S: Final = 60.0
"""After 603 and friends: the integration, not the file, is wrong; look again this often."""
QUOTA_PAUSE_MIN_S: Final = 60.0

# --- A submit whose outcome is unknown ------------------------------------------

RESUBMIT_HOLD_S: Final = 120.0
"""Least wait before a chunk whose first submit may have created a job is sent again."""
RESUBMIT_HOLD_BYTES_PER_S: Final = 20_000.0
"""A slow import rate: a possibly-created copy of N bytes is waited out for N / this."""
RESUBMIT_HOLD_MAX_S: Final = 1_800.0

# --- The loop -------------------------------------------------------------------

MAX_IDLE_S: Final = 1.0
GONE_ANSWERS: Final = 3
GONE_AFTER_S: Final = 300.0
"""Marketo's "no such batch" (1003) for a batch it accepted is believed only when said GONE_ANSWERS
times in a row over GONE_AFTER_S at least: giving a batch up fails every file in it."""
DRAIN_DEADLINE_S: Final = 3600.0
"""How long the stage of an instance a reload removed keeps finishing what it sent; then what is
left is reported as of unknown outcome (a Marketo that never answers must not hold files forever)."""
"""Longest the loop sleeps when nothing is due; hints from the watchers wake it earlier."""
CLAIMS_PER_PASS: Final = 500
"""Files one inbox may claim in one pass, so others (and the heartbeat) get their turn. They are
claimed as a batch (two journal transactions and one fsync per folder for all of them): about
0.3 ms a file, so a pass of claims stays under a fifth of a second."""
GAUGES_EVERY_S: Final = 1.0
"""Seconds between two updates of the queued-chunks gauges: counting a backlog's chunks costs
O(backlog), and once a second is fresh enough for /metrics."""
PREPARES_PER_PASS: Final = 4
"""Files a pass looks at first to split; a split may take seconds."""
PREPARE_PASS_S: Final = 0.05
"""A pass goes on splitting files (up to PREPARES_MAX_PER_PASS) while it has spent less than this on them:
a backlog of small files is split hundreds a second, so coalescing has them to merge, while one large
file still ends the pass."""
PREPARES_MAX_PER_PASS: Final = 500
"""Most files split in one pass, however small."""
PREPARE_CRASHES: Final = 2
"""Times the daemon may die while preparing one file before that file is Rejected rather than tried again
(``crashguard``): a reader crash on one partner's file never becomes a crash loop. Two, so that two such
files cost four restarts, under the systemd unit's StartLimitBurst of 5."""
PREPARE_RETRIES_PER_PASS: Final = 3
"""Files a pass may keep for a retry (a disk, journal or gpg trouble) before it stops splitting: one such
file never holds the others back, and a full disk costs a pass three attempts, not hundreds."""
TRACKED_PER_INBOX: Final = 10_000
"""Candidates one inbox tracks between scans; beyond it, names wait for the next scan.
Temporary names (which cannot become ready) have a cap of their own, so they never crowd out a real file."""
ABANDONED_NOTICES_PER_PASS: Final = 20
"""Abandoned-upload notices one inbox writes per pass; the rest follow in later passes."""

# --- Replies ---------------------------------------------------------------------

CALL_DEADLINE_S: Final = 60.0
"""Wall-clock bound on one Identity or status call, reply included. Per-read
timeouts alone let a reply trickled byte by byte hold the daemon for ever;
Marketo itself gives up on a request after about 30 s (604)."""
TRANSFER_DEADLINE_S: Final = 240.0
"""The same bound for an import upload or a failure/warning file download. At most 240 s: under
the 300 s of systemd's WatchdogSec and of /livez, so that even a call nothing heartbeats during
(a client built without ``tick``, an injected session) ends inside that window. A 9.5 MB chunk
then needs about 40 KB/s on average; MIN_TRANSFER_BYTES_PER_S ends a trickle much earlier."""
MIN_TRANSFER_BYTES_PER_S: Final = 20_000.0
"""Slowest average rate of an upload or a reply once TRANSFER_RATE_GRACE_S has passed; below it the
call ends as if its deadline had passed (a GET is retried, an import POST's outcome is unknown), so a
reply trickled a byte at a time does not hold the daemon's single loop until the deadline."""
TRANSFER_RATE_GRACE_S: Final = 15.0
"""How long an upload (from its first byte sent) or a reply (from its first byte received) may run
before MIN_TRANSFER_BYTES_PER_S applies: Marketo's small JSON replies are over well before it."""
WIRE_TICK_S: Final = 1.0
"""Longest single wait on a socket. Between two, the client runs its ``tick`` (the daemon's heartbeat
and shutdown check) and checks the deadline and the rate again: a transfer keeps /livez and the
watchdog fed, and SIGTERM ends it within about this long."""
MAX_REPLY_BYTES: Final = 1 << 20
"""Largest JSON reply read (Identity, submit, status); Marketo's are a few hundred bytes."""
MAX_RESULT_FILE_BYTES: Final = 64 << 20
"""Largest failure or warning file read: it echoes one chunk's rows (under 10 MB) plus a reason each."""
RETRY_AFTER_MAX_S: Final = 3_600.0
"""A Retry-After beyond this is taken as this: a broken proxy must not park the daemon for days."""
TOKEN_REFRESH_MARGIN_S: Final = 60.0
"""A token with less life left is not used for an upload: an upload may take that long, and
Identity hands back the same token until it expires, so a dying one is waited out."""
TOKEN_SKEW_S: Final = 1.0
"""A token with less than this left is not used for a short call (status, files)."""
MAX_TOKEN_WAITS: Final = 5
"""Identity may keep answering ``expires_in`` 0; after this many waits its token is used anyway."""
MAX_AUTH_RETRIES: Final = 3
"""601/602 on fresh tokens more often than this in one call: the credentials or role are the problem."""
