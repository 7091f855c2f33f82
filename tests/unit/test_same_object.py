"""Every answer is of the object expected: If-Match, the answer's ETag and Content-Range are
checked (backends/http.py), a replaced object is never installed as a mix of two versions,
and a failure of the mirror's disk mid-body is the disk's (ENOSPC), not the link's."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path
from typing import Any

import pytest

from isaacfs.backends.http import HttpRanges, _same_object
from isaacfs.core.errors import IntegrityError, MirrorFull, UpstreamError
from isaacfs.core.health import Health
from isaacfs.core.paths import RelPath
from isaacfs.fetch.stream import PART_SIZE, Transfer
from isaacfs.store.index import Index
from isaacfs.store.mirror import Mirror
from tests.support.memory import MemoryUpstream
from tests.unit.conftest import Running, trio_test

BIG = "Isaac/Environments/Sky/dome.exr"


def blob(size: int, seed: int) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]


class _Reply:
    """What urllib3 hands back for a GET: a status, headers, a body read in blocks."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.status, self.headers, self._body, self._at = status, headers, body, 0
        self.sent_headers: dict[str, str] = {}

    def readinto(self, view: memoryview) -> int:
        piece = self._body[self._at:self._at + len(view)]
        view[:len(piece)] = piece
        self._at += len(piece)
        return len(piece)

    def release_conn(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("status", "headers", "problem"), [
    (206, {"Content-Range": "bytes 0-99/100", "ETag": '"v1"'}, None),
    (206, {"Content-Range": "bytes 0-99/100", "ETag": '"v2"'}, IntegrityError),  # replaced meanwhile
    (206, {"Content-Range": "bytes 0-99/120"}, IntegrityError),  # grown upstream
    (206, {"Content-Range": "bytes 10-109/200"}, IntegrityError),  # of another size too
    (206, {"Content-Range": "bytes 50-99/100"}, UpstreamError),  # the wrong bytes
    (206, {}, UpstreamError),  # no Content-Range at all
    (200, {"Content-Length": "100", "ETag": 'W/"v1"'}, None),
    (200, {"Content-Length": "80"}, IntegrityError),  # shrunk upstream
])
def test_an_answer_must_be_of_the_object_and_range_asked_for(status: int, headers: dict[str, str],
                                                            problem: type[Exception] | None) -> None:
    reply: Any = _Reply(status, headers)
    if problem is None:
        _same_object(reply, 0, 100, "v1", 100, "fetch x")
    else:
        with pytest.raises(problem):
            _same_object(reply, 0, 100, "v1", 100, "fetch x")


class _Pool:
    def __init__(self, reply: _Reply) -> None:
        self.reply = reply
        self.asked: list[dict[str, str]] = []

    def request(self, method: str, url: str, **options: Any) -> _Reply:
        self.asked.append(options.get("headers", {}))
        return self.reply


@trio_test
async def test_a_get_carries_if_match_and_a_412_is_a_changed_object() -> None:
    ranges = HttpRanges(Health("test", 30), 5, 5, connections=2)
    pool = _Pool(_Reply(412, {}))
    ranges.pool = pool  # type: ignore[assignment]

    async def sink(block: bytes | memoryview) -> None:
        raise AssertionError("no byte of another version")

    with pytest.raises(IntegrityError):
        await ranges.read("https://h/b/k", 0, 100, "fetch k", sink, "v1", 100)
    assert pool.asked[0]["If-Match"] == '"v1"' and pool.asked[0]["Range"] == "bytes=0-99"


@trio_test
async def test_a_full_disk_mid_body_is_the_disks_failure_not_the_links() -> None:
    ranges = HttpRanges(Health("test", 30), 5, 5, connections=2)
    ranges.pool = _Pool(_Reply(206, {"Content-Range": "bytes 0-99/100"}, bytes(100)))  # type: ignore[assignment]

    async def full(block: bytes | memoryview) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as caught:
        await ranges.read("https://h/b/k", 0, 100, "fetch k", full, "", 100)
    assert caught.value.errno == errno.ENOSPC  # not "the connection broke mid-body"


@trio_test
async def test_an_object_replaced_mid_transfer_is_never_installed_as_a_mix(mirror: Mirror, index: Index) -> None:
    # More parts than run at once: the later ones start after the object was replaced.
    old, new = blob(10 * PART_SIZE, 1), blob(10 * PART_SIZE, 2)
    upstream = MemoryUpstream({BIG: old}, ranged=True)
    upstream.etags[BIG] = "version-1"  # not an MD5: the bytes alone cannot tell the versions apart
    upstream.chunk_delay = 0.001
    rel = RelPath.parse(BIG)
    entry = await upstream.stat(rel)
    async with Running(mirror, index, upstream) as ws:
        got = await ws.fetcher.stream(rel, entry)
        await got.wait_for(0, 64 * 1024)  # type: ignore[union-attr]
        upstream.files[BIG] = new  # replaced upstream while the parts are still coming
        upstream.etags[BIG] = "version-2"
        await ws.fetcher.ensure(rel, entry)
    assert Path(mirror.display, BIG).read_bytes() == new  # the new version, whole: listed afresh


@trio_test
async def test_a_full_disk_while_streaming_is_enospc(mirror: Mirror, index: Index,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    upstream = MemoryUpstream({BIG: blob(2 * PART_SIZE, 3)}, ranged=True)
    rel = RelPath.parse(BIG)
    entry = await upstream.stat(rel)
    import isaacfs.fetch.stream as stream

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stream, "_pwrite_all", full)
    async with Running(mirror, index, upstream) as ws:
        from isaacfs.core.errors import FetchFailed

        with pytest.raises(FetchFailed) as caught:
            await ws.fetcher.ensure(rel, entry)
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value.cause, MirrorFull)
    assert list(mirror.tmp.iterdir()) == []
    assert [path for path, _start, _end in upstream.ranges].count(BIG) <= 2  # not tried again and again


@trio_test
async def test_pages_a_closed_reader_was_served_are_dropped_when_the_check_fails(
        mirror: Mirror, index: Index) -> None:
    upstream = MemoryUpstream({BIG: blob(2 * PART_SIZE, 4)}, ranged=True)
    upstream.corrupt.add(BIG)
    rel = RelPath.parse(BIG)
    entry = await upstream.stat(rel)
    dropped: list[RelPath] = []
    async with Running(mirror, index, upstream) as ws:
        ws.fetcher.on_discarded = dropped.append
        got = await ws.fetcher.stream(rel, entry)
        assert isinstance(got, Transfer)
        got.readers += 1  # a reader opens it (as Tree.open does), reads, and closes
        got.served = True
        await got.wait_for(0, 64 * 1024)
        got.readers -= 1
        from isaacfs.core.errors import FetchFailed

        with pytest.raises(FetchFailed):
            await ws.fetcher.ensure(rel, entry)
    assert rel in dropped  # the kernel is told to drop what it cached, reader gone or not
