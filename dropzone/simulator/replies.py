"""What goes on the wire (pure): the ``Response``, pages and error bodies, and the rewrites faults make.

Owns the bytes of every answer that is not a result ``state`` builds: the HTML
pages a proxy or servlet container answers with, the OAuth error body, and the
fault rewrites (the 429 page, the replies of a created-then-lost import, padded
bodies, malformed or bare status results, the messages of a 603).
Knows nothing of jobs, tokens or time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

from . import codes

JSON_TYPE = "application/json;charset=UTF-8"
CSV_TYPE = "text/csv;charset=UTF-8"
HTML_TYPE = "text/html;charset=ISO-8859-1"

# The role permission each call needs (docs §3 for imports: leads and program members
# "Read-Write Lead", custom objects "Read-Write Custom Object"; the swagger for the reads).
_IMPORT_PERMISSIONS = {"customobject": "Read-Write Custom Object"}
_DEFAULT_PERMISSION = "Read-Write Lead"
_READ_PERMISSIONS = {
    "describe_leads": "Read-Only Lead",
    "describe_programmember": "Read-Only Lead",
    "list": "Read-Only Lead",
    "partitions": "Read-Only Lead",
    "describe_customobject": "Read-Only Custom Object",
    "program": "Read-Only Assets",
    "channel": "Read-Only Assets",
}


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str
    # What the call log shows: a Marketo code string, or an HTTP status.
    code: str | int | None
    # Extra headers (Content-Type and Content-Length are the server's).
    headers: dict[str, str] = field(default_factory=dict)
    # Send the body at this many bytes per second (the trickle fault); None = at once.
    pace: float | None = None


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def oauth_error(status: int, error: str, description: str) -> Response:
    return Response(status, json_bytes({"error": error, "error_description": description}), JSON_TYPE, status)


def http_page(status: int, headers: dict[str, str] | None = None) -> Response:
    """Not the JSON envelope: what a proxy or servlet container answers."""
    reason = codes.HTTP_REASONS.get(status, "Error")
    page = f"<html><head><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1></body></html>\n"
    return Response(status, page.encode("ascii"), HTML_TYPE, status, headers=dict(headers or {}))


def too_many_requests(retry_after: int | None) -> Response:
    """A front proxy's 429: an HTML page, with ``Retry-After`` in seconds when given."""
    return http_page(429, {} if retry_after is None else {"Retry-After": str(retry_after)})


def after_create(reply: str, created: Response) -> Response:
    """What a client sees of an import whose job was created (``created`` is the real answer)."""
    if reply == "not_json":
        page = b"<html><head><title>Marketo</title></head><body><p>Request accepted.</p></body></html>\n"
        return Response(200, page, HTML_TYPE, 200)
    if reply == "truncated":
        return Response(200, created.body[: len(created.body) // 2], created.content_type, 200)
    return http_page(int(reply))


def refusal_message(flavour: str, endpoint: str, kind: str | None) -> str:
    """The 603 message of a configuration-class refusal; only "access_denied" is the documented text [INF]."""
    if flavour == "ip_allowlist":
        return "Access denied: the caller's IP address is not in the allowlist for IP-based API access"
    if flavour == "permission":
        permission = _READ_PERMISSIONS.get(endpoint) or _IMPORT_PERMISSIONS.get(kind or "", _DEFAULT_PERMISSION)
        return f"Access denied: the API user's role lacks the '{permission}' permission"
    return codes.message("603")


def malform(envelope: dict[str, Any], shape: str) -> dict[str, Any]:
    """A successful status envelope, broken as ``shape`` says (see faults: "malformed_status")."""
    if shape == "errors_dict":
        error = {"code": "611", "message": codes.message("611")}
        return {"requestId": envelope["requestId"], "success": False, "errors": error}
    result = dict(envelope["result"][0])
    if shape == "failed_string":
        result["numOfRowsFailed"] = "n/a"
    else:
        key = "numOfObjectsProcessed" if "numOfObjectsProcessed" in result else "numOfLeadsProcessed"
        result[key] = None
    return {**envelope, "result": [result]}


def bare(result: dict[str, Any]) -> dict[str, Any]:
    """A program-member status result as the swagger's ImportProgramMemberResponse lists it."""
    return {key: result[key] for key in ("batchId", "importId", "status") if key in result}


def pad(response: Response, size: int) -> Response:
    """``response`` with its body grown to ``size`` bytes (see faults: "oversize")."""
    body = response.body
    if len(body) >= size:
        return response
    ctype = response.content_type.lower()
    stripped = body.rstrip()
    if ctype.startswith("application/json") and stripped.endswith(b"}"):
        # Whitespace before the closing brace: the same JSON value, exactly ``size`` bytes.
        padded = stripped[:-1] + b" " * (size - len(stripped)) + b"}"
    else:
        head, _, rows = body.partition(b"\n")
        if ctype.startswith("text/csv") and rows.strip():
            # A big failures file: the same rows, over and over.
            rows = rows if rows.endswith(b"\n") else rows + b"\n"
            padded = head + b"\n" + rows * math.ceil((size - len(head) - 1) / len(rows))
        else:
            padded = body + b"\n" * (size - len(body))
    return replace(response, body=padded)
