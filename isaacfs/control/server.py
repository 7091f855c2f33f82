"""The control socket: how `isaacfs status|misses|mode|warm|verify|manifest` reach a daemon.

One Unix stream socket per mount. A client sends one JSON object on one line,
``{"command": "...", ...}``; the daemon answers with zero or more event lines
(``{"event": ...}``, progress of long jobs) and one final line, ``{"ok": true,
"result": ...}`` or ``{"ok": false, "error": "..."}``. A client that hangs up cancels
its job. Who may ask is decided by the kernel's SO_PEERCRED: the mounting user and
root only; anything else, and any malformed request, gets an error line, and the
daemon goes on serving.

The socket's path is published as the mount root's ``user.isaacfs.control``
attribute, so any client (root included) finds it from the mountpoint alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import select
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from ..core.errors import UserError
from ..system import logs

log = logging.getLogger("isaacfs.control")

MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request line
XATTR_CONTROL = "user.isaacfs.control"

Emit = Callable[[dict[str, Any]], None]
Handler = Callable[[dict[str, Any], Emit], Awaitable[Any]]


class ControlError(Exception):
    """A request the daemon refuses; the message goes back to the client."""


def runtime_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/isaacfs")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "isaacfs" if runtime else logs.state_dir()


def socket_path_for(mountpoint: Path) -> Path:
    # Hashed: a Unix socket path must fit in 108 bytes, whatever the mountpoint's length.
    digest = hashlib.sha256(str(mountpoint).encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return runtime_dir() / f"{digest}.sock"


def _peer_uid(sock: trio.socket.SocketType) -> int:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self.owner = os.geteuid()

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # left by a daemon that died; ours is the live mount
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(str(self.path))
        # Anyone may connect; who may act is checked per connection with SO_PEERCRED,
        # so another user gets a clear refusal rather than a bare "permission denied".
        os.chmod(self.path, 0o666)
        sock.listen(16)
        task_status.started()
        try:
            await trio.serve_listeners(self._connection, [trio.SocketListener(sock)])
        finally:
            self.path.unlink(missing_ok=True)

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                await self._answer(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away; its job was cancelled

    async def _answer(self, stream: trio.SocketStream) -> None:
        uid = _peer_uid(stream.socket)
        try:
            if uid not in (self.owner, 0):
                log.warning("control socket: refused a request from uid %d (mount belongs to uid %d)",
                            uid, self.owner)
                raise ControlError(f"uid {uid} may not control this mount: only its owner (uid {self.owner})"
                                   " and root may")
            request = await _read_request(stream)
            handler = self.handlers.get(request["command"])
            if handler is None:
                raise ControlError(f"unknown command {request['command']!r};"
                                   f" known: {', '.join(sorted(self.handlers))}")
        except ControlError as exc:
            log.warning("control socket: %s", exc)
            await _send(stream, {"ok": False, "error": str(exc)})
            await _drain(stream)
            return
        await self._run(stream, handler, request)

    async def _run(self, stream: trio.SocketStream, handler: Handler, request: dict[str, Any]) -> None:
        send_events, receive_events = trio.open_memory_channel[dict[str, Any]](math.inf)
        outcome: dict[str, Any] = {}
        job_scope = trio.CancelScope()

        async def job() -> None:
            try:
                with job_scope:
                    outcome["result"] = await handler(request, send_events.send_nowait)
                if job_scope.cancelled_caught:
                    log.info("control command %r cancelled: the client hung up", request["command"])
            except (ControlError, UserError) as exc:
                outcome["error"] = str(exc)
            except Exception as exc:  # a bug must cost one request, never the mount
                log.exception("control command %r failed", request["command"])
                outcome["error"] = f"internal error in the daemon: {exc!r} (see its log)"
            finally:
                send_events.close()

        async def hang_up_watch() -> None:
            # The client sends nothing after its request. End of stream is either a
            # half-close (it still reads) or a hang-up (Ctrl-C); only a hang-up
            # (POLLHUP: it can no longer read either) cancels the job.
            while await stream.receive_some(4096):
                pass
            while not _peer_gone(stream.socket):
                await trio.sleep(0.2)
            job_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(job)
            nursery.start_soon(hang_up_watch)
            async for event in receive_events:
                await _send(stream, {"event": event.pop("event"), **event})
            if "error" in outcome:
                await _send(stream, {"ok": False, "error": outcome["error"]})
            elif "result" in outcome:
                await _send(stream, {"ok": True, "result": outcome["result"]})
            nursery.cancel_scope.cancel()


def _peer_gone(sock: trio.socket.SocketType) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLHUP)
    return any(events & select.POLLHUP for _fd, events in poller.poll(0))


async def _drain(stream: trio.SocketStream) -> None:
    """Read what the client still sends (briefly), so closing does not reset the connection
    before it has read our answer."""
    with trio.move_on_after(1.0):
        received = 0
        while received < 4 * MAX_REQUEST:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            received += len(chunk)


async def _send(stream: trio.SocketStream, message: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n")


async def _read_request(stream: trio.SocketStream) -> dict[str, Any]:
    data = b""
    with trio.move_on_after(REQUEST_TIMEOUT) as timer:
        while b"\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST:
                raise ControlError(f"malformed request: longer than {MAX_REQUEST} bytes")
    if timer.cancelled_caught:
        raise ControlError("malformed request: no complete line within 10 s")
    line = data.partition(b"\n")[0]
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"malformed request: not JSON ({exc})") from None
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        raise ControlError('malformed request: expected {"command": "...", ...}')
    return request


# -- the client side ------------------------------------------------------------------
def socket_of_mount(mountpoint: Path) -> Path:
    try:
        return Path(os.fsdecode(os.getxattr(mountpoint, XATTR_CONTROL)))
    except OSError:
        return socket_path_for(mountpoint)


def call(mountpoint: Path, command: str, on_event: Emit | None = None, timeout: float | None = 30.0,
         **arguments: Any) -> Any:
    """Send one request to the daemon serving ``mountpoint``; return its result.

    Raises UserError with the daemon's message if it refuses, or if it cannot be reached.
    """
    path = socket_of_mount(mountpoint)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise UserError(f"cannot reach the isaacfs daemon of {mountpoint} at {path}: {exc.strerror}") from None
        sock.sendall(json.dumps({"command": command, **arguments}).encode() + b"\n")
        with sock.makefile("rb") as replies:
            for line in replies:
                message = json.loads(line)
                if "event" in message:
                    if on_event is not None:
                        on_event(message)
                    continue
                if not message.get("ok"):
                    raise UserError(str(message.get("error")))
                return message.get("result")
    raise UserError(f"the isaacfs daemon of {mountpoint} closed the connection without an answer")
