"""Places for transfers: a reader's demand (and a layer that must be parsed) first, then
prefetch, then bulk warm; readers and layers have express places that neither a bulk warm nor
the prefetch of leaves (textures) takes; small files share a place."""

from __future__ import annotations

import itertools

import trio

from ..core.types import READER

# A place (of ``jobs``) is one transfer of a file that is bound by bandwidth. A file of at
# most SMALL_FILE bytes is bound by its round trip instead (its body takes less time than
# the round trip on any link worth a cache), so SMALL_PER_PLACE of them share a place: a
# warm of small files keeps enough requests in flight to use the link (bench_wan.py).
SMALL_FILE = 256 * 1024
SMALL_PER_PLACE = 4


class Ticket:
    __slots__ = ("granted", "priority", "seq", "units")

    def __init__(self, priority: int, seq: int, units: int) -> None:
        self.priority = priority
        self.seq = seq
        self.units = units  # of a place's SMALL_PER_PLACE
        self.granted = trio.Event()


class PriorityLimiter:
    """At most ``total`` holders, and ``express`` places more that only READER tickets take: a
    reader's cold open, or a layer a load or a closure must parse before it knows what else
    to fetch, does not wait for a warm's transfers to end, nor for the textures a layer named
    (which, their folder listed first, took every ordinary place: the next level of layers
    waited a transfer for a place, bench_wan's daemon log at 200 ms).
    A freed place goes to the best waiting ticket (lowest priority value, then oldest) that
    fits. A waiting ticket can be promoted (then ``grant``). Callers keep the number of
    waiters small (a warm feeds its files a few at a time), so picking is a scan."""

    def __init__(self, total: int, express: int = 0) -> None:
        self.total = total
        self.express = express
        self.busy = 0  # in units: a place is SMALL_PER_PLACE units
        self._waiting: list[Ticket] = []
        self._seq = itertools.count()

    def ticket(self, priority: int, size: int | None = None) -> Ticket:
        """A ticket for one transfer: a whole place, or a share of one for a small file."""
        units = 1 if size is not None and size <= SMALL_FILE else SMALL_PER_PLACE
        return Ticket(priority, next(self._seq), units)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _fits(self, ticket: Ticket) -> bool:
        places = self.total + (self.express if ticket.priority == READER else 0)
        return self.busy + ticket.units <= places * SMALL_PER_PLACE

    async def acquire(self, ticket: Ticket) -> None:
        if self._fits(ticket) and not any(w.priority <= ticket.priority for w in self._waiting):
            self.busy += ticket.units
            return
        self._waiting.append(ticket)
        try:
            await ticket.granted.wait()
        except BaseException:
            if ticket.granted.is_set():
                self.release(ticket)  # handed a place while being cancelled: pass it on
            else:
                self._waiting.remove(ticket)
            raise

    def release(self, ticket: Ticket) -> None:
        self.busy -= ticket.units
        self.grant()

    def grant(self) -> None:
        """Hand free places to the best waiting tickets that fit (after a release or a
        promotion), in order: the best ticket that does not fit yet holds the others back."""
        while self._waiting:
            best = min(self._waiting, key=lambda t: (t.priority, t.seq))
            if not self._fits(best):
                return
            self._waiting.remove(best)
            self.busy += best.units
            best.granted.set()


