"""The unit tier: the core, store, fetcher and jobs against the in-memory upstream, on a temp
folder. No kernel mount, no server, no network."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from isaacfs import sample_assets
from isaacfs.fetch.fetcher import Fetcher
from isaacfs.jobs.workspace import Workspace
from isaacfs.store.index import Index
from isaacfs.store.mirror import Mirror
from tests.support.memory import MemoryUpstream

SAMPLE = sample_assets()
GO2 = "Isaac/IsaacLab/Robots/Unitree/Go2/go2.usd"
FRANKA = "Isaac/Robots/FrankaRobotics/FrankaPanda/franka.usda"


def sample_files() -> dict[str, bytes]:
    """The embedded sample asset root as a path -> bytes dict."""
    return {path.relative_to(SAMPLE).as_posix(): path.read_bytes()
            for path in sorted(SAMPLE.rglob("*")) if path.is_file()}


# Real seconds the loop must sit idle (every task waiting, no worker thread running) before
# the mock clock jumps to the next deadline: a backoff or a timeout costs that much real time
# instead of its length.
AUTOJUMP_AFTER = 0.002


_threads_running = 0  # worker threads (trio.to_thread) and usd-core worker requests under way


def mock_clock() -> trio.testing.MockClock:
    """trio's MockClock with autojump, except while a worker thread (``trio.to_thread``) is
    running: the loop looks idle then, but a disk write or a hash is under way, and jumping
    would fire whatever deadline is next (a stall watchdog) in the middle of it. MockClock is
    final: its ``_autojump``, which trio's run loop calls once it has sat idle, is wrapped on
    the instance; ``count_worker_threads`` (autouse) keeps the count."""
    clock = trio.testing.MockClock(autojump_threshold=AUTOJUMP_AFTER)
    jump = clock._autojump

    def autojump() -> None:
        if not _threads_running:
            jump()

    clock._autojump = autojump  # type: ignore[method-assign]
    return clock


@pytest.fixture(autouse=True)
def count_worker_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Count what runs outside the loop while the loop waits for it: worker threads, and the
    usd-core worker process answering a layer."""
    from isaacfs.jobs.parser import Parser

    def counted(real: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def busy(*args: Any, **kwargs: Any) -> Any:
            global _threads_running
            _threads_running += 1
            try:
                return await real(*args, **kwargs)
            finally:
                _threads_running -= 1

        return busy

    monkeypatch.setattr(trio.to_thread, "run_sync", counted(trio.to_thread.run_sync))
    monkeypatch.setattr(Parser, "dependencies", counted(Parser.dependencies))
    monkeypatch.setattr(Parser, "start", counted(Parser.start))


def trio_test(body: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test body under trio (the project's event loop) with trio's MockClock:
    waits (retry backoff, timeouts, stall watchdogs) pass in virtual time, so a test that
    waits for a deadline takes no real time and says so in virtual seconds."""
    return _under_trio(body, mock=True)


def trio_test_real_clock(body: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """The same on the real clock, for a test whose subject is a child process (the usd-core
    worker) or a thread racing the loop: under the mock clock, their real time would jump
    deadlines."""
    return _under_trio(body, mock=False)


def _under_trio(body: Callable[..., Awaitable[None]], mock: bool) -> Callable[..., None]:
    @functools.wraps(body)
    def run(*args: Any, **kwargs: Any) -> None:
        trio.run(functools.partial(body, *args, **kwargs), clock=mock_clock() if mock else None)

    return run


@pytest.fixture
def upstream() -> MemoryUpstream:
    return MemoryUpstream(sample_files())


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    folder = tmp_path / "mirror"
    folder.mkdir()
    made = Mirror(folder)
    made.prepare()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def index(mirror: Mirror) -> Iterator[Index]:
    made = Index(mirror.state / "index.db")
    try:
        yield made
    finally:
        made.close()


class Running:
    """A workspace whose fetcher has a live nursery, for the length of one ``async with``."""

    def __init__(self, mirror: Mirror, index: Index, upstream: MemoryUpstream, jobs: int = 4) -> None:
        self.fetcher = Fetcher(mirror, index, upstream, jobs, retries=3)
        self.ws = Workspace(mirror, index, upstream, self.fetcher, jobs)
        self._nursery_cm: Any = None

    async def __aenter__(self) -> Workspace:
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        self.fetcher.attach(nursery)
        self._nursery = nursery
        return self.ws

    async def __aexit__(self, *exc: Any) -> bool | None:
        self._nursery.cancel_scope.cancel()
        return bool(await self._nursery_cm.__aexit__(*exc))
