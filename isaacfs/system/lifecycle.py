"""A mount's daemon from outside: starting it in the background (it answers once the mount
does) and stopping it (clean unmount, a stale mount detached, a wedged daemon stopped).
The CLI's `mount` and `umount` call these; the daemon itself is app/daemon.py."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..core.errors import UserError
from . import logs, mounts
from .launch import python_module

READY_TIMEOUT = 60.0
UMOUNT_PROBE_SECONDS = 3.0  # a daemon that does not answer a statfs in this time is wedged


def start_background(mountpoint: Path, argv: list[str]) -> int:
    """Start the daemon as its own session, logging to a file; return once the mount answers."""
    log_path = logs.log_path_for(mountpoint)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    command = python_module("isaacfs", *argv, "--foreground", "--ready-fd", str(write_end))
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                 pass_fds=(write_end,), start_new_session=True,
                                 env={**os.environ, "ISAACFS_LOG_FILE": str(log_path)})
    os.close(write_end)
    with os.fdopen(read_end) as ready:
        # The daemon answers within seconds; a mount that hangs must not hang this command.
        answered, _, _ = select.select([ready], [], [], READY_TIMEOUT)
        line = ready.readline().strip() if answered else ""
    if not answered:
        print(f"isaacfs: the mount did not answer within {READY_TIMEOUT:.0f}s; the daemon (pid {child.pid})"
              f" is left running, see {log_path}", file=sys.stderr)
        return 1
    if line.startswith("READY "):
        print(f"isaacfs: {line[6:]}")
        print(f"isaacfs: daemon pid {child.pid}, log {log_path}")
        return 0
    if line.startswith("ERROR "):
        child.wait(timeout=30)
        print(f"isaacfs: {line[6:]}", file=sys.stderr)
        return child.returncode or 1
    code = child.wait(timeout=30)
    tail = log_path.read_text(errors="replace").splitlines()[-5:]
    print(f"isaacfs: the daemon stopped before the mount answered (exit {code}); log {log_path}:",
          file=sys.stderr)
    for text in tail:
        print(f"  {text}", file=sys.stderr)
    return code or 1


def stop(mountpoint: Path, lazy: bool = False) -> list[str]:
    """Unmount ``mountpoint`` cleanly and wait for its daemon to exit; detach a stale mount
    (its daemon died); stop a wedged one. What was done, in lines for the user."""
    info = mounts.find_mount(mountpoint)  # from /proc: never touches the mount itself
    if info is None:
        raise UserError(f"{mountpoint} is not mounted")
    if info.fstype != mounts.FSTYPE:
        raise UserError(f"{mountpoint} is a {info.fstype} mount, not isaacfs; not touching it")
    state = mounts.answers(mountpoint, UMOUNT_PROBE_SECONDS)
    pids = mounts.daemon_pids(mountpoint)
    if state is False:
        mounts.unmount(mountpoint, lazy=True)
        return [f"detached the stale mount at {mountpoint} (its daemon had died)"]
    if state is None:
        # A wedged daemon: nothing it serves answers. Stop it, fail its waiting requests, detach.
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        mounts.abort_connection(info)
        mounts.unmount(mountpoint, lazy=True)
        return [f"the daemon of {mountpoint} did not answer within {UMOUNT_PROBE_SECONDS:.0f}s;"
                f" stopped it{' (pid ' + ', '.join(map(str, pids)) + ')' if pids else ''} and detached the mount"]
    mounts.unmount(mountpoint, lazy=lazy)
    if lazy:
        return [f"detached {mountpoint}; its daemon exits once the last open file there is closed"]
    deadline = time.monotonic() + 60
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if not mounts.exited(pid)]
        time.sleep(0.05)
    return [f"unmounted {mountpoint}"]
