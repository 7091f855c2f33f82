"""The record of misses: every miss in the index; each path logged once, at most
MISS_LOG_BURST a minute (``core.policy`` decides what is a miss and what a probe)."""

from __future__ import annotations

import logging
import os
import time

from ..core.categories import warm_command
from ..core.paths import RelPath
from ..core.policy import MAX_REMEMBERED_MISSES, MISS_LOG_BURST, is_probe
from ..core.types import Mode
from ..store.index import Index

log = logging.getLogger("isaacfs")


class MissReporter:
    """Records every miss in the index; logs each path once, at most MISS_LOG_BURST a minute."""

    def __init__(self, index: Index, mount_display: str) -> None:
        self.index = index
        self.mount_display = mount_display
        self._reported: set[RelPath] = set()
        self._window, self._logged, self._suppressed = 0.0, 0, 0

    def ghost(self, rel: RelPath, mode: Mode) -> None:
        """A missing folder answered as a ghost: recorded (not logged) until a deeper miss replaces it."""
        self.index.record_miss(rel, mode)

    def miss(self, rel: RelPath, mode: Mode, upstream_down: bool) -> None:
        if is_probe(rel):
            return
        self.index.count("misses")
        self.index.record_miss(rel, mode)
        if rel in self._reported:
            return
        if len(self._reported) >= MAX_REMEMBERED_MISSES:
            self._reported.clear()
        self._reported.add(rel)
        if mode == "strict":
            if not self._log_allowed():
                return
            log.warning(
                "[isaacfs] ASSET NOT FOUND (strict mode)\n  missing:  %s\n  expected: %s\n  fetch it: %s",
                rel, os.path.join(self.mount_display, str(rel)), warm_command(rel, self.mount_display))
        elif upstream_down:
            log.warning("[isaacfs] %s is not in the mirror and the upstream is unavailable", rel)

    def _log_allowed(self) -> bool:
        now = time.monotonic()
        if now - self._window >= 60.0:
            if self._suppressed:
                log.warning("[isaacfs] %d more missing paths in the last minute were not logged one by one;"
                            " all are recorded: isaacfs misses", self._suppressed)
            self._window, self._logged, self._suppressed = now, 0, 0
        if self._logged < MISS_LOG_BURST:
            self._logged += 1
            return True
        self._suppressed += 1
        return False
