"""Per-process modes: which mode a request is answered in, by the process that made it.

A mount has one mode, but one command can ask for another: `isaacfs run --offline --
COMMAND` registers the run's root process (strict or permissive for its whole process
tree), and a process whose environment holds ``OFFLINE=1`` or ``OFFLINE_PERMISSIVE=1``
gets that mode on its own. FUSE tells the daemon the requesting pid; a process belongs to
a run if the run's root is among its ancestors (``/proc/<pid>/stat``). Answers are cached
per process (pid and start time, so a reused pid is a new process). Only requests for
names the mirror does not hold ask: a mirrored file is the same in every mode. An
environment that widens the mode (``OFFLINE_PERMISSIVE=1``: fetching) counts only for the
mount's owner and root; anyone may narrow it (``OFFLINE=1``).
"""

from __future__ import annotations

import os
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.types import Mode

MAX_CACHED_PROCESSES = 10_000
MAX_DEPTH = 64
MAX_RUN_MISSES = 100_000  # paths one run keeps for its summary and manifest


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            data = stream.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _environment_mode(pid: int, may_widen: Callable[[int], bool]) -> Mode | None:
    """OFFLINE_PERMISSIVE=1 / OFFLINE=1 in a process's environment (readable by its owner and
    root). Anyone may narrow (strict); widening (permissive: fetching) is honoured only for the
    processes ``may_widen`` allows by their uid, by default the mount's owner and root."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as stream:
            variables = stream.read().split(b"\0")
    except OSError:
        raise _Unreadable from None
    if variables == [b""]:
        raise _Unreadable  # mid-exec, or a zombie: not an answer to keep
    if b"OFFLINE_PERMISSIVE=1" in variables:
        return "permissive" if may_widen(_uid(pid)) else None
    if b"OFFLINE=1" in variables:
        return "strict"
    return None


class _Unreadable(Exception):
    """A process's environment could not be read now."""


def _uid(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


def _program(pid: int) -> str:
    """The program a process runs now: it changes at exec, where pid and start time do not."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


@dataclass
class Run:
    """A command started by `isaacfs run`: its mode, what it did, and where its events go."""

    root_pid: int
    start: int
    mode: Mode | None
    emit: Callable[[dict[str, Any]], None]
    counts: Counter[str] = field(default_factory=Counter)
    missed: dict[str, None] = field(default_factory=dict)  # the first MAX_RUN_MISSES, in order
    missed_count: int = 0
    upstream_wait: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def miss(self, path: str) -> bool:
        """Record a miss; True the first time this run misses ``path``. A run's memory stays
        bounded: past MAX_RUN_MISSES distinct paths, misses are counted, not kept."""
        if path in self.missed:
            return False
        if len(self.missed) >= MAX_RUN_MISSES:
            self.missed_count += 1  # may count a repeat once: it can no longer be told apart
            return False
        self.missed[path] = None
        self.missed_count += 1
        return True

    def summary(self) -> dict[str, Any]:
        return {"served": self.counts["served"], "fetched": self.counts["fetched"],
                "fetched_bytes": self.counts["fetched_bytes"], "served_bytes": self.counts["served_bytes"],
                "missed": self.missed_count, "misses": list(self.missed), "upstream_wait": self.upstream_wait,
                "elapsed": time.monotonic() - self.started}


def owner_and_root(owner: int) -> Callable[[int], bool]:
    return lambda uid: uid in (0, owner)


class Runs:
    def __init__(self, may_widen: Callable[[int], bool] | None = None) -> None:
        self.runs: dict[tuple[int, int], Run] = {}
        # Per process: pid, start time and the program it runs (an exec of another program,
        # `exec env OFFLINE=1 cat`, is asked afresh; an exec of the same program with another
        # environment is not seen until the entry is evicted).
        self._cache: OrderedDict[tuple[int, int, str], tuple[Mode | None, Run | None]] = OrderedDict()
        self.may_widen = may_widen or owner_and_root(os.getuid())

    def register(self, root_pid: int, mode: Mode | None, emit: Callable[[dict[str, Any]], None]) -> Run | None:
        found = _stat(root_pid)
        if found is None:
            return None
        run = Run(root_pid, found[1], mode, emit)
        self.runs[(root_pid, found[1])] = run
        self._cache.clear()  # answers given before this run began may now be wrong
        return run

    def overriding(self, mount_mode: Mode) -> bool:
        """Whether a registered run asks for another mode than the mount's: while one does, "no
        such name" answers are not left in the kernel for everyone."""
        return any(run.mode is not None and run.mode != mount_mode for run in self.runs.values())

    def unregister(self, run: Run) -> None:
        self.runs.pop((run.root_pid, run.start), None)
        self._cache.clear()

    def prune(self) -> list[Run]:
        """Forget runs whose root process is gone (a `run` that crashed); the runs dropped."""
        gone = [run for key, run in self.runs.items() if (_stat(key[0]) or (0, -1))[1] != key[1]]
        for run in gone:
            self.unregister(run)
        return gone

    def lookup(self, pid: int) -> tuple[Mode | None, Run | None]:
        """The mode a process asked for (None: the mount's own) and the run it belongs to."""
        if pid <= 0:
            return None, None
        me = _stat(pid)
        if me is None:
            return None, None
        key = (pid, me[1], _program(pid))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        try:
            answer = self._resolve(pid, me)
        except _Unreadable:
            return None, None  # the mount's own mode this time; asked again next time
        self._cache[key] = answer
        if len(self._cache) > MAX_CACHED_PROCESSES:
            self._cache.popitem(last=False)
        return answer

    def _resolve(self, pid: int, me: tuple[int, int]) -> tuple[Mode | None, Run | None]:
        if self.runs:
            current, stat = pid, me
            for _depth in range(MAX_DEPTH):
                run = self.runs.get((current, stat[1]))
                if run is not None:
                    return run.mode, run
                if stat[0] <= 1:
                    break
                parent = _stat(stat[0])
                if parent is None:
                    break
                current, stat = stat[0], parent
        return _environment_mode(pid, self.may_widen), None
