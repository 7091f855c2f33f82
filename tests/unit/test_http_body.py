"""A ranged GET's body goes from the socket straight into the reader's buffer (http.client's
readinto under urllib3's response: urllib3's own copies, urllib3 issue #1540), and its
failures are still the link's: a stall is "no byte arrived", a body cut short returns short
for the caller to resume. Real http.client responses over a socket pair, no server."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3

from isaacfs.backends.http import HttpRanges
from isaacfs.core.errors import Unavailable
from isaacfs.core.health import Health
from tests.unit.conftest import trio_test

BODY = bytes(range(256)) * 12  # 3,072 bytes


class _Pool:
    def __init__(self, reply: urllib3.HTTPResponse) -> None:
        self.reply = reply

    def request(self, method: str, url: str, **options: Any) -> urllib3.HTTPResponse:
        return self.reply


@pytest.fixture
def link() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


def _answer(ours: socket.socket, theirs: socket.socket, sent: bytes, length: int = len(BODY),
            encoding: str = "") -> urllib3.HTTPResponse:
    """The reply urllib3 would hand back for a ranged GET whose server sent ``sent`` of a
    body of ``length`` bytes."""
    extra = f"Content-Encoding: {encoding}\r\n" if encoding else ""
    theirs.sendall(f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-{length - 1}/{length}\r\n"
                   f"Content-Length: {length}\r\n{extra}\r\n".encode() + sent)
    raw = http.client.HTTPResponse(ours)
    raw.begin()
    return urllib3.HTTPResponse(body=raw, headers=dict(raw.getheaders()), status=raw.status,
                                preload_content=False, original_response=raw)


def _ranges(reply: urllib3.HTTPResponse) -> HttpRanges:
    ranges = HttpRanges(Health("test", 30), 5, 5, connections=2)
    ranges.pool = _Pool(reply)  # type: ignore[assignment]
    return ranges


@trio_test
async def test_the_body_is_read_straight_into_the_buffer_not_through_urllib3s_copy(
        link: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    reply = _answer(*link, BODY)

    def copying(*_args: Any) -> int:
        raise AssertionError("urllib3's readinto reads into a temporary and copies it")

    monkeypatch.setattr(urllib3.HTTPResponse, "readinto", copying)
    got = bytearray()

    async def take(block: bytes | memoryview) -> None:
        got.extend(block)

    await _ranges(reply).read("https://h/b/k", 0, len(BODY), "fetch k", take, "", len(BODY))
    assert got == BODY


@trio_test
async def test_an_encoded_body_goes_through_urllib3(link: tuple[socket.socket, socket.socket],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    reply = _answer(*link, BODY, encoding="br")  # not decoded here: urllib3 knows what to do
    asked: list[int] = []
    original = urllib3.HTTPResponse.readinto

    def counted(self: urllib3.HTTPResponse, view: Any) -> int:
        asked.append(len(view))
        return original(self, view)

    monkeypatch.setattr(urllib3.HTTPResponse, "readinto", counted)

    async def take(block: bytes | memoryview) -> None:
        pass

    try:
        await _ranges(reply).read("https://h/b/k", 0, len(BODY), "fetch k", take, "", len(BODY))
    except Unavailable:
        pass  # urllib3 may not decode brotli without the package: what matters is who read
    assert asked


@trio_test
async def test_a_body_cut_short_returns_what_came_for_the_caller_to_resume(
        link: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = link
    reply = _answer(ours, theirs, BODY[:1000])
    theirs.shutdown(socket.SHUT_WR)  # the server hangs up mid-body
    got = bytearray()

    async def take(block: bytes | memoryview) -> None:
        got.extend(block)

    await _ranges(reply).read("https://h/b/k", 0, len(BODY), "fetch k", take, "", len(BODY))
    assert got == BODY[:1000]  # the caller goes on from byte 1000


@trio_test
async def test_a_stalled_body_is_no_byte_arrived_not_a_broken_connection(
        link: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = link
    reply = _answer(ours, theirs, BODY[:1000])
    ours.settimeout(0.01)  # the read timeout: the server sends nothing more
    with pytest.raises(Unavailable, match="no byte arrived"):
        async def take(block: bytes | memoryview) -> None:
            pass

        await _ranges(reply).read("https://h/b/k", 0, len(BODY), "fetch k", take, "", len(BODY))
