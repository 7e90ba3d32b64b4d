"""Which endpoint a request path is (pure): the path table of every API the simulator serves.

Owns the paths, their methods and their parameters; an unknown path is
``known=False`` (610). The endpoint names are ``codes.ENDPOINTS``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

IDENTITY_PATH = "/identity/oauth/token"


@dataclass(frozen=True)
class Route:
    endpoint: str
    # The import kind the endpoint belongs to ("leads", "customobject", "programmember"), if any.
    kind: str | None
    methods: tuple[str, ...]
    params: Mapping[str, str]
    known: bool = True


_CO = r"^/bulk/v1/customobjects/(?P<apiName>[^/]+)/import"
_CO_DESCRIBE = r"^/rest/v1/customobjects/(?P<apiName>[^/]+)/describe\.json$"
_PM = r"^/bulk/v1/program/members/import/(?P<batchId>\d+)"
_ROUTES: list[tuple[re.Pattern[str], str, str | None, tuple[str, ...]]] = [
    (re.compile(p), endpoint, kind, methods)
    for p, endpoint, kind, methods in [
        (r"^/bulk/v1/leads\.json$", "import", "leads", ("POST",)),
        (r"^/bulk/v1/leads/batch/(?P<batchId>\d+)\.json$", "status", "leads", ("GET",)),
        (r"^/bulk/v1/leads/batch/(?P<batchId>\d+)/failures\.json$", "failures", "leads", ("GET",)),
        (r"^/bulk/v1/leads/batch/(?P<batchId>\d+)/warnings\.json$", "warnings", "leads", ("GET",)),
        (_CO + r"\.json$", "import", "customobject", ("POST",)),
        (_CO + r"/(?P<batchId>\d+)/status\.json$", "status", "customobject", ("GET",)),
        (_CO + r"/(?P<batchId>\d+)/failures\.json$", "failures", "customobject", ("GET",)),
        (_CO + r"/(?P<batchId>\d+)/warnings\.json$", "warnings", "customobject", ("GET",)),
        (r"^/bulk/v1/program/(?P<programId>[^/]+)/members/import\.json$", "import", "programmember", ("POST",)),
        (_PM + r"/status\.json$", "status", "programmember", ("GET",)),
        (_PM + r"/failures\.json$", "failures", "programmember", ("GET",)),
        (_PM + r"/warnings\.json$", "warnings", "programmember", ("GET",)),
        (r"^/rest/v1/stats/usage\.json$", "usage", None, ("GET",)),
        (r"^/rest/v1/leads/describe2\.json$", "describe_leads", "leads", ("GET",)),
        (_CO_DESCRIBE, "describe_customobject", "customobject", ("GET",)),
        (r"^/rest/v1/programs/members/describe\.json$", "describe_programmember", "programmember", ("GET",)),
        (r"^/rest/v1/lists/(?P<listId>\d+)\.json$", "list", "leads", ("GET",)),
        (r"^/rest/v1/leads/partitions\.json$", "partitions", "leads", ("GET",)),
        (r"^/rest/asset/v1/program/(?P<programId>\d+)\.json$", "program", "programmember", ("GET",)),
        (r"^/rest/asset/v1/channel/byName\.json$", "channel", "programmember", ("GET",)),
    ]
]


def route(path: str) -> Route:
    """Which endpoint a path is; unknown paths are ``known=False`` (610)."""
    if path == IDENTITY_PATH:
        return Route("identity", None, ("GET", "POST"), {})
    for pattern, endpoint, kind, methods in _ROUTES:
        match = pattern.match(path)
        if match:
            return Route(endpoint, kind, methods, {k: unquote(v) for k, v in match.groupdict().items()})
    return Route("other", None, (), {}, known=False)
