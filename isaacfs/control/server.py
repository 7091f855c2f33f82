"""The control socket: how `isaacfs status|misses|mode|warm|verify|manifest` reach a daemon.

One Unix stream socket per mount. A client sends one JSON object on one line,
``{"command": "...", ...}``; the daemon answers with zero or more event lines
(``{"event": ...}``, progress of long jobs) and one final line, ``{"ok": true,
"result": ...}`` or ``{"ok": false, "error": "..."}``. A client that hangs up cancels
its job. Who may ask: the socket lives in a folder only the mount's owner (and root)
can enter, and the kernel's SO_PEERCRED is checked as well (the mounting user and
root only). A malformed request gets an error line; a connection that fails in any
way costs that connection only; at most MAX_CONNECTIONS are served at once, the rest
are closed at once, so a flood cannot exhaust the daemon's file descriptors.

The socket's path is published as the mount root's ``user.isaacfs.control``
attribute, so any client (root included) finds it from the mountpoint alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pwd
import select
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from ..core.errors import UserError

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup
from ..system import logs, mounts

log = logging.getLogger("isaacfs.control")

MAX_REQUEST = 16 * 1024 * 1024  # a warm manifest of ~300,000 paths
REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request line
MAX_CONNECTIONS = 32  # served at once; more are closed without an answer
REFUSAL_LOGS_PER_MINUTE = 10
EVENT_BUFFER = 10_000  # events a command may have queued for a client that does not read them
XATTR_CONTROL = "user.isaacfs.control"

Emit = Callable[[dict[str, Any]], None]
Handler = Callable[[dict[str, Any], Emit], Awaitable[Any]]


class ControlError(Exception):
    """A request the daemon refuses; the message goes back to the client."""


def runtime_dir() -> Path:
    """Where this user's daemons put their sockets: /run/isaacfs for root, else
    $XDG_RUNTIME_DIR/isaacfs, else ~/.local/state/isaacfs (private to the user)."""
    if os.geteuid() == 0:
        return Path("/run/isaacfs")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "isaacfs" if runtime else logs.state_dir()


def _socket_name(mountpoint: Path) -> str:
    # Hashed: a Unix socket path must fit in 108 bytes, whatever the mountpoint's length.
    return hashlib.sha256(str(mountpoint).encode("utf-8", "surrogateescape")).hexdigest()[:20] + ".sock"


def socket_path_for(mountpoint: Path) -> Path:
    return runtime_dir() / _socket_name(mountpoint)


def _sockets_of_owner(mountpoint: Path, uid: int) -> list[Path]:
    """Where a daemon run by ``uid`` may have put the socket of ``mountpoint``."""
    folders = [Path("/run/isaacfs")] if uid == 0 else [Path(f"/run/user/{uid}/isaacfs")]
    try:
        folders.append(Path(pwd.getpwuid(uid).pw_dir) / ".local" / "state" / "isaacfs")
    except KeyError:
        pass
    return [folder / _socket_name(mountpoint) for folder in folders]


def _peer_uid(sock: trio.socket.SocketType) -> int:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def private_folder(folder: Path) -> None:
    """Create ``folder`` (mode 0700) or make it private: only its owner (and root) may enter."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_mode & 0o077:
        os.chmod(folder, 0o700)


class _RateLimited:
    """At most ``per_minute`` lines a minute; the rest are summed up in the next line."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._window, self._count, self._dropped = 0.0, 0, 0

    def allow(self) -> tuple[bool, int]:
        now = time.monotonic()
        if now - self._window >= 60.0:
            dropped = self._dropped
            self._window, self._count, self._dropped = now, 0, 0
        else:
            dropped = 0
        if self._count < self.per_minute:
            self._count += 1
            return True, dropped
        self._dropped += 1
        return False, 0


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self.dropped_events = 0  # progress events dropped for clients that did not read them
        self.owner = os.geteuid()
        self.active = 0
        self._refusals = _RateLimited(REFUSAL_LOGS_PER_MINUTE)

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        private_folder(self.path.parent)
        self.path.unlink(missing_ok=True)  # left by a daemon that died; ours is the live mount
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(str(self.path))
        # The folder keeps other users out; the socket itself is the owner's alone too.
        os.chmod(self.path, 0o600)
        sock.listen(16)
        task_status.started()
        try:
            await trio.serve_listeners(self._connection, [trio.SocketListener(sock)])
        finally:
            self.path.unlink(missing_ok=True)

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self.active >= MAX_CONNECTIONS:
                self._note_refusal("control socket: more than %d connections at once; closed one", MAX_CONNECTIONS)
                return
            self.active += 1
            try:
                await self._answer(stream)
            except Exception as exc:  # one connection's failure is that connection's only
                if not _only_hang_ups(exc):
                    log.exception("control socket: a connection failed")
            finally:
                self.active -= 1

    def _note_refusal(self, message: str, *args: Any) -> None:
        allowed, dropped = self._refusals.allow()
        if dropped:
            log.warning("control socket: %d more refusals in the last minute were not logged", dropped)
        if allowed:
            log.warning(message, *args)

    async def _answer(self, stream: trio.SocketStream) -> None:
        uid = _peer_uid(stream.socket)
        try:
            if uid not in (self.owner, 0):
                self._note_refusal("control socket: refused a request from uid %d (mount belongs to uid %d)",
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
        # Bounded: a client that stops reading costs at most EVENT_BUFFER events of memory;
        # past that its progress events are dropped (counted), never the job's result.
        send_events, receive_events = trio.open_memory_channel[dict[str, Any]](EVENT_BUFFER)
        outcome: dict[str, Any] = {}
        job_scope = trio.CancelScope()
        dropped = [0]

        def emit(event: dict[str, Any]) -> None:
            try:
                send_events.send_nowait(event)
            except trio.WouldBlock:
                dropped[0] += 1
                self.dropped_events += 1
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

        async def job() -> None:
            try:
                with job_scope:
                    outcome["result"] = await handler(request, emit)
                if job_scope.cancelled_caught:
                    log.info("control command %r cancelled: the client hung up", request["command"])
            except (ControlError, UserError) as exc:
                outcome["error"] = str(exc)
            except Exception as exc:  # a bug must cost one request, never the mount
                log.exception("control command %r failed", request["command"])
                outcome["error"] = f"internal error in the daemon: {exc!r} (see its log)"
            finally:
                send_events.close()
                if dropped[0]:
                    log.info("control command %r: %d events dropped (the client did not read them)",
                             request["command"], dropped[0])

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


def _only_hang_ups(exc: BaseException) -> bool:
    """True if ``exc`` (or every exception in a group) only says the client went away."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_hang_ups(inner) for inner in exc.exceptions)
    return isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError, BrokenPipeError,
                            ConnectionResetError))


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
    data = bytearray()
    with trio.move_on_after(REQUEST_TIMEOUT) as timer:
        while b"\n" not in data[-65536:]:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST:
                raise ControlError(f"malformed request: longer than {MAX_REQUEST} bytes")
    if timer.cancelled_caught:
        raise ControlError("malformed request: no complete line within 10 s")
    line = bytes(data).partition(b"\n")[0]
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"malformed request: not JSON ({exc})") from None
    except RecursionError:
        raise ControlError("malformed request: nested too deeply") from None
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        raise ControlError('malformed request: expected {"command": "...", ...}')
    return request


# -- the client side ------------------------------------------------------------------
def socket_of_mount(mountpoint: Path) -> Path:
    """The control socket of the daemon serving ``mountpoint``: as its root advertises it, or
    (where FUSE hides the root from the caller: another user, root without allow_other)
    where the mount's owner keeps it."""
    try:
        return Path(os.fsdecode(os.getxattr(mountpoint, XATTR_CONTROL)))
    except OSError:
        pass
    info = mounts.find_mount(mountpoint)
    owner = info.owner_uid if info is not None else None
    if owner is not None and owner != os.geteuid():
        candidates = _sockets_of_owner(mountpoint, owner)
        for candidate in candidates:
            try:
                if candidate.exists():
                    return candidate
            except PermissionError:
                raise UserError(f"{mountpoint} is an isaacfs mount of uid {owner}: only its owner and root"
                                " may control it") from None
        return candidates[0]
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
        except PermissionError:
            raise UserError(f"{mountpoint} is an isaacfs mount of another user: only its owner and root"
                            " may control it") from None
        except OSError as exc:
            raise UserError(f"cannot reach the isaacfs daemon of {mountpoint} at {path}: {exc.strerror};"
                            f" is it mounted? (isaacfs mount {mountpoint})") from None
        try:
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
        except (OSError, ValueError) as exc:
            raise UserError(f"the isaacfs daemon of {mountpoint} stopped answering ({exc});"
                            f" see its log, or `isaacfs status {mountpoint}`") from None
    raise UserError(f"the isaacfs daemon of {mountpoint} closed the connection without an answer")
