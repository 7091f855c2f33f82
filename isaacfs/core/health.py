"""Whether the upstream is worth asking right now: a breaker every backend shares.

After connection-level evidence (``ConnectionLost``: refused, reset, no answer to a small
request in time) the upstream rests for ``retry_after`` seconds: lookups and listings
skip it and the mirror serves alone, instead of every request waiting for a dead host.
One slow object or one failing key is not such evidence. Any answer ends the rest.
"""

from __future__ import annotations

import logging
import time

from .errors import ConnectionLost, Unavailable

log = logging.getLogger("isaacfs.upstream")


class Health:
    def __init__(self, name: str, retry_after: float) -> None:
        self.name = name  # the upstream as logs may show it (no credentials)
        self.retry_after = retry_after
        self._down_until = 0.0
        self._down_reason = ""

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    @property
    def reason(self) -> str:
        return self._down_reason

    def check(self, what: str) -> None:
        """Raise Unavailable while resting."""
        if not self.available:
            left = self._down_until - time.monotonic()
            raise Unavailable(f"{what}: upstream unavailable ({self._down_reason}); next try in {left:.0f}s")

    def mark(self, exc: BaseException | None) -> None:
        """Record the outcome of one request: ConnectionLost starts a rest; an answer (a result,
        or an error the upstream itself gave) ends it; a slow transfer says nothing either way."""
        if isinstance(exc, Unavailable) and not isinstance(exc, ConnectionLost):
            return
        if isinstance(exc, ConnectionLost):
            if self.available:
                log.warning("upstream %s is unavailable: %s; serving the mirror only for %.0fs",
                            self.name, exc, self.retry_after)
            self._down_until = time.monotonic() + self.retry_after
            self._down_reason = cause_of(exc)
        elif self._down_reason:
            log.info("upstream %s answers again", self.name)
            self._down_reason = ""
            self._down_until = 0.0


def cause_of(exc: BaseException) -> str:
    """The cause in an upstream error's message: ``list Isaac: upstream unavailable
    (ERROR_CONNECTION)`` gives ``ERROR_CONNECTION``; a message of another shape gives its last part."""
    reason = str(exc).rsplit(": ", 1)[-1]
    prefix = "upstream unavailable ("
    if reason.startswith(prefix) and reason.endswith(")"):
        reason = reason[len(prefix):-1]
    return reason
