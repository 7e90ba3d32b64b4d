"""Access tokens as Marketo's Identity service hands them out (pure; time is passed in).

Owns minting, the same-token-until-expiry rule and the 602-then-601 sequence.
Does not know where a token travelled (header, query, form): that is the
caller's business.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass


@dataclass
class _Token:
    value: str
    expires_at: float
    expiry_reported: bool = False


class TokenBook:
    """Tokens of the one configured API user."""

    def __init__(self, *, ttl: float, pod: str, rng: random.Random) -> None:
        self._ttl = ttl
        self._pod = pod
        self._rng = rng
        self._tokens: dict[str, _Token] = {}
        self._current: _Token | None = None

    def grant(
        self, now: float, *, zero_if_reissued: bool = False, zero: bool = False, grace: float = 1.0
    ) -> tuple[str, int]:
        """Answer an Identity call: (access_token, expires_in).

        The same token comes back until it expires, with its remaining life
        floored to whole seconds. ``zero`` forces ``expires_in: 0`` and a real
        death ``grace`` seconds later. ``zero_if_reissued`` does so for a token
        handed out before, and for the very first grant, which stands for a
        token another integration of the same API user fetched an hour ago.
        """
        token = self._current
        first_grant = token is None
        reissued = token is not None and now < token.expires_at
        if token is None or not reissued:
            token = self._mint(now)
        if zero or (zero_if_reissued and (reissued or first_grant)):
            token.expires_at = min(token.expires_at, now + grace)
            return token.value, 0
        return token.value, max(0, math.floor(token.expires_at - now))

    def check(self, value: str, now: float) -> str | None:
        """None if ``value`` is usable now, else the Marketo code to answer."""
        token = self._tokens.get(value)
        if token is None:
            return "601"
        if now < token.expires_at:
            return None
        # Blog "Error Handling Part 3": the first use after expiry says 602, later ones 601.
        if token.expiry_reported:
            return "601"
        token.expiry_reported = True
        return "602"

    def expire_all(self, now: float) -> None:
        """Every live token expires at ``now``."""
        for token in self._tokens.values():
            token.expires_at = min(token.expires_at, now)

    def current(self) -> str | None:
        return self._current.value if self._current else None

    def _mint(self, now: float) -> _Token:
        value = f"{uuid.UUID(int=self._rng.getrandbits(128), version=4)}:{self._pod}"
        token = _Token(value, now + self._ttl)
        self._tokens[value] = token
        self._current = token
        return token
