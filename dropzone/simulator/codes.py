"""Marketo response codes and the messages the simulator sends with them.

Messages follow Adobe's error-codes page and the live texts quoted by clients
(1016 from rudder-transformer, 606 from the Azure/Clay connector docs).
"""

from __future__ import annotations

MESSAGES: dict[str, str] = {
    "502": "Bad Gateway",
    "600": "Access token not specified",
    "601": "Access token invalid",
    "602": "Access token expired",
    "603": "Access denied",
    "604": "Request time-out",
    "605": "HTTP Method not supported",
    "606": "Max rate limit '{limit}' exceeded with in '{window}' secs",
    "607": "Daily quota reached",
    "608": "API Temporarily Unavailable",
    "609": "Invalid JSON",
    "610": "Requested resource not found",
    "611": "System error",
    "612": "Invalid Content Type",
    "613": "Invalid Multipart Request",
    "614": "Invalid Subscription",
    "615": "Concurrent access limit reached",
    "616": "Invalid subscription type",
    "701": "{name} cannot be blank",
    "702": "No data found for a given search scenario",
    "713": "Transient Error",
    "719": "Lock wait timeout exception",
    "1001": "Invalid value '{value}'. Required of type '{type}'",
    "1003": "Invalid data",
    "1006": "Field '{name}' not found",
    "1008": "Access denied to partition '{name}'",
    "1009": "Partition name must be specified",
    "1010": "Partition update not allowed",
    "1013": "Object not found",
    "1016": "There are 10 imports currently being processed. Please try again later",
    "1019": "Import in progress",
    "1025": "Program status not found",
    "1026": "Custom object not enabled",
    "1029": "Too many jobs in queue",
}

# Faults at the HTTP level rather than in the JSON envelope.
HTTP_FAULTS: dict[str, int] = {"http413": 413, "http500": 500, "http502": 502, "http503": 503, "http504": 504}

HTTP_REASONS: dict[int, str] = {
    404: "Not Found",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

# The Asset API's answer when nothing matches (live recordings; error-codes.md: "Many failed search
# operations return success = true and no errors and set a warnings informational string").
NO_ASSETS_WARNING = "No assets found for the given search criteria."

# Endpoint names used by fault filters, denied_endpoints and the call log.
BULK_ENDPOINTS = ("import", "status", "failures", "warnings")
# The describe and target endpoints a client reads before it spends a queue slot.
DESCRIBE_ENDPOINTS = (
    "describe_leads",
    "describe_customobject",
    "describe_programmember",
    "list",
    "program",
    "channel",
    "partitions",
)
# Answered in the Asset API's envelope (``warnings`` and ``errors`` always present).
ASSET_ENDPOINTS = ("program", "channel")
ENDPOINTS = ("identity", *BULK_ENDPOINTS, "usage", *DESCRIBE_ENDPOINTS, "other")


def message(code: str, **values: object) -> str:
    """The documented message for ``code``, with its placeholders filled.

    Placeholders not given stay readable (``{name}`` → ``unknown``) so an
    injected 1006 still reads like Marketo's.
    """
    template = MESSAGES.get(code, "Injected fault")
    defaults: dict[str, object] = {"limit": 100, "window": 20, "name": "unknown", "value": "", "type": "String"}
    defaults.update(values)
    return template.format(**defaults)
