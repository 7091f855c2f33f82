"""The control socket server on a temp path (no mount): whatever a client does costs that
client only."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from isaacfs.control import server as control
from isaacfs.control.server import MAX_CONNECTIONS, ControlServer
from isaacfs.core.errors import UserError
from tests.unit.conftest import trio_test


class Jobs:
    def __init__(self) -> None:
        self.cancelled = 0
        self.flood_done = trio.Event()

    async def flood(self, request: dict[str, Any], emit: control.Emit) -> Any:
        for number in range(5 * control.EVENT_BUFFER):  # a client that reads none of these
            emit({"event": "tick", "n": number, "pad": "x" * 1024})
        self.flood_done.set()
        return "done"

    async def echo(self, request: dict[str, Any], emit: control.Emit) -> Any:
        return request.get("value")

    async def chatty(self, request: dict[str, Any], emit: control.Emit) -> Any:
        try:
            for number in range(1000):
                emit({"event": "tick", "n": number, "pad": "x" * 4096})
                await trio.sleep(0.001)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        return "done"


def raw(path: Path, payload: bytes) -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return sock.makefile().read()


async def serving(nursery: trio.Nursery, tmp_path: Path) -> tuple[ControlServer, Path, Jobs]:
    jobs = Jobs()
    path = tmp_path / "run" / "isaacfs" / "x.sock"
    server = ControlServer(path, {"echo": jobs.echo, "chatty": jobs.chatty, "flood": jobs.flood})
    await nursery.start(server.serve)
    return server, path, jobs


@trio_test
async def test_socket_is_private_to_its_owner(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        _server, path, _jobs = await serving(nursery, tmp_path)
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        nursery.cancel_scope.cancel()


@trio_test
async def test_a_client_that_hangs_up_mid_stream_cancels_its_job_only(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        _server, path, jobs = await serving(nursery, tmp_path)

        def hang_up() -> None:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                sock.sendall(b'{"command": "chatty"}\n')
                sock.recv(100)  # one event arrived: Ctrl-C now

        for _ in range(5):
            await trio.to_thread.run_sync(hang_up)
        with trio.fail_after(10):
            while jobs.cancelled < 5:
                await trio.sleep(0.01)
        assert await trio.to_thread.run_sync(lambda: control_call(path, "echo", value=7)) == 7
        nursery.cancel_scope.cancel()


def control_call(path: Path, command: str, **arguments: Any) -> Any:
    original = control.socket_of_mount
    control.socket_of_mount = lambda mountpoint: path
    try:
        return control.call(Path("/nowhere"), command, **arguments)
    finally:
        control.socket_of_mount = original


@trio_test
async def test_malformed_and_hostile_requests_get_an_error_line(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        _server, path, _jobs = await serving(nursery, tmp_path)
        cases = [(b"[" * 30_000 + b"]" * 30_000 + b"\n", "nested too deeply"),
                 (b"not json\n", "not JSON"), (b'{"command": "format"}\n', "unknown command"),
                 (b"\xff\xfe\n", "not JSON"), (b"", "not JSON")]
        for payload, expected in cases:
            answer = await trio.to_thread.run_sync(raw, path, payload)
            assert expected in answer and '"ok": false' in answer, (payload[:20], answer)
        assert await trio.to_thread.run_sync(lambda: control_call(path, "echo", value="still here")) == "still here"
        nursery.cancel_scope.cancel()


@trio_test
async def test_a_connection_flood_is_bounded_and_the_owner_is_answered_after(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        server, path, _jobs = await serving(nursery, tmp_path)
        flood = []
        try:
            for _ in range(300):
                sock = socket.socket(socket.AF_UNIX)
                sock.setblocking(False)
                try:
                    sock.connect(str(path))
                except BlockingIOError:
                    pass
                flood.append(sock)
                await trio.sleep(0)
            await trio.sleep(0.3)
            assert server.active <= MAX_CONNECTIONS
            fds = len(os.listdir("/proc/self/fd"))
            assert fds < 300 + MAX_CONNECTIONS + 64  # the flood's own 300, ours bounded
        finally:
            for sock in flood:
                sock.close()
        with trio.fail_after(15):
            while server.active:
                await trio.sleep(0.05)
        assert await trio.to_thread.run_sync(lambda: control_call(path, "echo", value=1)) == 1
        nursery.cancel_scope.cancel()


def test_an_unreachable_daemon_is_one_sentence(tmp_path: Path) -> None:
    def call() -> None:
        control_call(tmp_path / "none.sock", "status")

    with pytest.raises(UserError, match="cannot reach the isaacfs daemon"):
        call()


@trio_test
async def test_a_client_that_stops_reading_costs_a_bounded_buffer(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        _server, path, jobs = await serving(nursery, tmp_path)
        sock = socket.socket(socket.AF_UNIX)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            sock.connect(str(path))
            sock.sendall(b'{"command": "flood"}\n')  # and never reads
            with trio.fail_after(10):
                await jobs.flood_done.wait()  # the job was never held up by the silent client
            # What it could not send was dropped, not queued: at most EVENT_BUFFER events held.
            assert _server.dropped_events >= 4 * control.EVENT_BUFFER - 100
        finally:
            sock.close()
        assert await trio.to_thread.run_sync(lambda: control_call(path, "echo", value=7)) == 7
        nursery.cancel_scope.cancel()
