"""The one retry policy: which failures a later try may not have, and how long to wait.

Modelled on S3QL's ``retry`` decorator over ``is_temp_failure``. Every loop that tries a
request again (a download, a part of a streamed file, a small file's GET, a folder listing
during a warm's walk) goes through :func:`retrying` with a :class:`RetryPolicy`: capped
exponential backoff with jitter, so many nodes that failed together do not try again
together. It waits with ``trio.sleep``, so tests drive it with trio's ``MockClock``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

from .errors import AccessDenied, ConnectionLost, IntegrityError, NotFound, TooSlow, UpstreamError

log = logging.getLogger("isaacfs.retry")

T = TypeVar("T")


def is_temp_failure(exc: BaseException) -> bool:
    """Whether a later try may succeed where this one failed.

    Yes: a server error, a cut, reset or stalled body, a body that failed its check (the
    object may have been replaced meanwhile). No: an answer (not found, access denied), a
    host that cannot be reached at all (the upstream rests instead: ``core.health``), a
    transfer that missed a deadline by size (it would only wait as long again), and any
    local failure (the mirror's disk)."""
    if isinstance(exc, (NotFound, AccessDenied, ConnectionLost, TooSlow)):
        return False
    return isinstance(exc, (UpstreamError, IntegrityError))


def resumable(exc: BaseException) -> bool:
    """A temporary failure worth going on from where a transfer stopped (a part, a body):
    not a changed object, which only a new listing and a new transfer can mend."""
    return is_temp_failure(exc) and not isinstance(exc, IntegrityError)


@dataclass(frozen=True)
class RetryPolicy:
    tries: int = 3
    base: float = 0.25  # the wait after the first failure, doubled after each
    cap: float = 4.0
    jitter: float = 0.5  # up to this fraction of each wait is taken off at random

    def __post_init__(self) -> None:
        if self.tries < 1:
            raise ValueError("a retry policy needs at least one try")

    def delay(self, failures: int, rng: Callable[[], float] = random.random) -> float:
        """The wait after the ``failures``-th failure."""
        full = min(self.cap, self.base * 2.0 ** (failures - 1))
        return float(full * (1.0 - self.jitter * rng()))


DEFAULT = RetryPolicy()


async def retrying(attempt: Callable[[int], Awaitable[T]], what: str, policy: RetryPolicy = DEFAULT,
                   temporary: Callable[[BaseException], bool] = is_temp_failure,
                   between: Callable[[BaseException], Awaitable[None]] | None = None) -> T:
    """``await attempt(n)`` for n = 1, 2, ... until it returns, its failure is not temporary,
    or ``policy.tries`` are used up (the last failure is raised). ``between`` runs after a
    failure that will be tried again (to refresh what the next try expects)."""
    for n in range(1, policy.tries + 1):
        try:
            return await attempt(n)
        except Exception as exc:
            if n == policy.tries or not temporary(exc):
                raise
            log.info("%s, try %d/%d: %s; trying again", what, n, policy.tries, exc)
            if between is not None:
                await between(exc)
        await trio.sleep(policy.delay(n))
    raise AssertionError("unreachable: the last try returns or raises")
