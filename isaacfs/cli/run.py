"""`isaacfs run [--offline | --offline-permissive] [--mount MOUNTPOINT] -- COMMAND ...`

The command runs with the asset root at the mount (ISAACSIM_ASSET_ROOT), and its whole
process tree gets the mode asked for, whatever the mount's mode is for everyone else. Each
asset it misses is printed at once as a box on this terminal; in permissive runs each
fetch is one warning line; at the end a summary table and the one command that fetches
everything this run missed. The exit code is the command's own; Ctrl-C and SIGTERM reach
the command. A mountpoint not mounted is mounted for the run and unmounted after.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..control import server as control
from ..core.errors import UserError
from ..core.paths import shown
from ..core.units import plural, size
from ..system import launch, logs, mounts

RULE = "=" * 70


def _tilde(path: Path) -> str:
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home):] if text == home or text.startswith(home + "/") else text


def miss_box(mountpoint: Path, path: str, fetch: str, strict: bool) -> str:
    title = "ASSET NOT FOUND (offline mode)" if strict else "ASSET NOT FOUND"
    return (f"{RULE}\n[isaacfs] {title}\n{RULE}\nMissing:  {shown(path)}\n"
            f"Expected: {shown(_tilde(mountpoint / path))}\n\nTo download this asset, run:\n  {fetch}\n")


class _Events(threading.Thread):
    """Reads the daemon's events for this run and prints them the moment they come."""

    def __init__(self, stream: Any, mountpoint: Path, strict: bool) -> None:
        super().__init__(daemon=True)
        self.stream, self.mountpoint, self.strict = stream, mountpoint, strict
        self.summary: dict[str, Any] | None = None
        self.error = ""

    def run(self) -> None:
        try:
            for line in self.stream:
                message = json.loads(line)
                kind = message.get("event")
                if kind == "miss":
                    sys.stderr.write(miss_box(self.mountpoint, message["path"], message["fetch"], self.strict))
                    sys.stderr.flush()
                elif kind == "fetch":
                    print(f"[isaacfs] warning: {shown(message['path'])} was not in the mirror; fetched it"
                          f" ({size(int(message.get('size', 0)))})", file=sys.stderr, flush=True)
                elif kind is None:
                    if message.get("ok"):
                        self.summary = message.get("result")
                    else:
                        self.error = str(message.get("error"))
                    return
        except (OSError, ValueError) as exc:
            self.error = f"the daemon's events stopped: {exc}"


def _register(mountpoint: Path, mode: str | None) -> tuple[socket.socket, Any, dict[str, Any]]:
    path = control.socket_of_mount(mountpoint)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot reach the isaacfs daemon of {mountpoint}: {exc.strerror};"
                        f" try: isaacfs umount {mountpoint} and run again") from None
    sock.sendall(json.dumps({"command": "run", "root_pid": os.getpid(), "mode": mode}).encode() + b"\n")
    stream = sock.makefile("rb")
    first = json.loads(stream.readline() or b'{"ok": false, "error": "no answer"}')
    if first.get("event") != "registered":
        sock.close()
        raise UserError(f"the isaacfs daemon of {mountpoint} refused the run: {first.get('error')}")
    return sock, stream, first


def run(mountpoint: Path, mode: str | None, command: list[str]) -> int:
    if not command:
        raise UserError("say what to run: isaacfs run --offline -- ./isaaclab.sh -p scripts/...")
    if mode is None:
        if os.environ.get("OFFLINE_PERMISSIVE") == "1":
            mode = "permissive"
        elif os.environ.get("OFFLINE") == "1":
            mode = "strict"
    mounted_here = False
    if not mounts.live(mountpoint):
        if not mountpoint.is_dir():
            raise UserError(f"{mountpoint} does not exist; create it with: mkdir -p {mountpoint}")
        started = subprocess.run(launch.python_module("isaacfs", "mount", str(mountpoint)), capture_output=True,
                                 text=True)
        if started.returncode != 0:
            raise UserError(f"could not mount {mountpoint} for the run: {started.stderr.strip()}")
        mounted_here = True
    try:
        sock, stream, registered = _register(mountpoint, mode)
        strict = registered.get("mode") == "strict"
        events = _Events(stream, mountpoint, strict)
        events.start()
        env = {**os.environ, "ISAACSIM_ASSET_ROOT": str(mountpoint)}
        # The mode goes into the command's environment too: a child that leaves the run's
        # process tree (a daemon that double-forks) keeps it through OFFLINE / OFFLINE_PERMISSIVE.
        env.pop("OFFLINE", None)
        env.pop("OFFLINE_PERMISSIVE", None)
        if registered.get("mode") == "strict":
            env["OFFLINE"] = "1"
        elif registered.get("mode") == "permissive":
            env["OFFLINE_PERMISSIVE"] = "1"
        try:
            child = subprocess.Popen(command, env=env)
        except OSError as exc:
            sock.close()
            raise UserError(f"cannot start {command[0]}: {exc.strerror}") from None
        forward = {sig: signal.signal(sig, lambda number, _frame: child.send_signal(number))
                   for sig in (signal.SIGTERM, signal.SIGHUP)}
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal sends it to the command too
        try:
            code = child.wait()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            for sig, handler in forward.items():
                signal.signal(sig, handler)
        try:
            control.call(mountpoint, "run-end", timeout=10, root_pid=os.getpid())
        except UserError:
            pass
        events.join(10)
        sock.close()
        report(events, mountpoint, registered)
    finally:
        if mounted_here:
            subprocess.run(launch.python_module("isaacfs", "umount", str(mountpoint)), capture_output=True)
    return code if code >= 0 else 128 - code


def report(events: _Events, mountpoint: Path, registered: dict[str, Any]) -> None:
    summary = events.summary
    if summary is None:
        print(f"[isaacfs] run: no summary from the daemon ({events.error or 'it did not answer'})", file=sys.stderr)
        return
    lines = [f"[isaacfs] run summary ({registered.get('mode')} mode, {_tilde(mountpoint)}):",
             f"  served from the mirror  {plural(summary['served'], 'file'):>14}  {size(summary['served_bytes']):>10}",
             f"  fetched from upstream   {plural(summary['fetched'], 'file'):>14}  {size(summary['fetched_bytes']):>10}"
             f"  ({summary['upstream_wait']:.1f}s waiting on the upstream)",
             f"  missed                  {plural(summary['missed'], 'file'):>14}"]
    misses = summary.get("misses") or []
    if misses:
        path = logs.state_dir() / f"run-{os.getpid()}-{int(time.time())}.misses"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            from ..core.paths import escape_line

            path.write_text("".join(f"{escape_line(miss)}\n" for miss in misses), encoding="utf-8",
                            errors="surrogateescape")
            lines.append(f"  fetch every miss of this run: isaacfs warm {mountpoint} --manifest {path}")
        except OSError as exc:
            lines.append(f"  (could not write the list of misses: {exc.strerror})")
    print("\n".join(lines), file=sys.stderr, flush=True)
