"""What the kernel says about mountpoints: mounted, stale, by whom; and unmounting."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import MountError, is_disconnected

FSTYPE = "fuse.isaacfs"


@dataclass(frozen=True)
class MountInfo:
    mountpoint: str
    device: str  # "major:minor", as /sys/class/bdi/ names it
    fstype: str
    source: str
    options: str = ""  # the superblock options: for FUSE, user_id=N,group_id=N,...

    @property
    def owner_uid(self) -> int | None:
        """The uid that mounted a FUSE filesystem (its ``user_id=`` option)."""
        for option in self.options.split(","):
            key, _, value = option.partition("=")
            if key == "user_id" and value.isdigit():
                return int(value)
        return None


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return field.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")


def find_mount(path: Path) -> MountInfo | None:
    """The mount whose mountpoint is exactly ``path`` (the last one, if stacked)."""
    target = os.path.abspath(path)
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as stream:
        for line in stream:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and _unescape(fields[4]) == target:
                found = MountInfo(target, fields[2], tail[0], tail[1] if len(tail) > 1 else "",
                                  tail[2] if len(tail) > 2 else "")
    return found


def is_stale(path: Path) -> bool:
    """True for a FUSE mount whose daemon is gone ("transport endpoint is not connected")."""
    # statfs always reaches the daemon; a stat may be answered from the kernel's cache.
    try:
        os.statvfs(path)
    except OSError as exc:
        return is_disconnected(exc)
    return False


FUSE_CONF = Path("/etc/fuse.conf")


def fuse_conf_allows_other(path: Path = FUSE_CONF) -> bool:
    """Whether fuse.conf lets users other than root mount with allow_other: a line
    ``user_allow_other`` that is not commented out (the stock file has it commented)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in text.splitlines())


ALLOW_OTHER_REFUSED = ("--allow-other needs the line 'user_allow_other' in /etc/fuse.conf, which this machine"
                       " does not have; ask an administrator to add it, or mount without --allow-other")


def answers(path: Path, timeout: float) -> bool | None:
    """Whether the filesystem at ``path`` answers a statfs within ``timeout`` seconds: True,
    False for a stale mount (its daemon is gone), None for no answer (a wedged daemon).
    The statfs runs in a side thread, so a wedged daemon cannot hang the caller."""
    outcome: list[bool] = []

    def ask() -> None:
        try:
            os.statvfs(path)
            outcome.append(True)
        except OSError as exc:
            outcome.append(not is_disconnected(exc))

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(timeout)
    return outcome[0] if outcome else None


def daemon_pids(path: Path) -> list[int]:
    """Processes serving ``path`` as isaacfs daemons, found in /proc (never through the mount)."""
    target = os.fsencode(os.path.abspath(path))
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as stream:
                argv = stream.read().split(b"\0")
        except OSError:
            continue
        if b"--foreground" in argv and b"mount" in argv and target in argv and any(b"isaacfs" in a for a in argv):
            found.append(int(entry))
    return found


def exited(pid: int) -> bool:
    """Whether process ``pid`` has ended. A daemon whose main thread has ended counts as
    ended (a zombie): its mount is released; what is left are worker threads stuck in a read
    from a hung upstream file system (NFS), which end when that file system answers."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            state = stream.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in (b"Z", b"X")


def live(path: Path) -> bool:
    """True if ``path`` is a live isaacfs mount, False if nothing is mounted there. A stale or
    wedged mount (its mirror is hidden under it, unreadable) is one clear MountError."""
    info = find_mount(path)
    if info is None:
        return False
    if info.fstype != FSTYPE:
        raise MountError(f"{path} is a {info.fstype} mount, not isaacfs")
    state = answers(path, 3.0)
    if state is False:
        raise MountError(f"{path} is a stale mount (its daemon died); run: isaacfs umount {path}")
    if state is None:
        raise MountError(f"the isaacfs daemon of {path} does not answer; run: isaacfs umount {path}")
    return True


def abort_connection(info: MountInfo) -> bool:
    """Abort the kernel's FUSE connection of a mount: every waiting request fails at once."""
    minor = info.device.partition(":")[2]
    try:
        Path(f"/sys/fs/fuse/connections/{minor}/abort").write_text("1")
    except OSError:
        return False
    return True


def unmount(path: Path, lazy: bool = False) -> None:
    """Unmount a FUSE mount; raise MountError with the reason if the kernel refuses."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise MountError("fusermount3 is not installed (Debian: apt-get install fuse3)")
    command = [tool, "-u", *(["-z"] if lazy else []), str(path)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "unknown reason"
        if "busy" in reason.lower():
            raise MountError(
                f"{path} is busy: a program still has files open there (see `fuser -vm {path}`);"
                f" close it, or run `isaacfs umount --lazy {path}`")
        raise MountError(f"cannot unmount {path}: {reason}")


def recover_stale(path: Path) -> bool:
    """Detach a stale mount left by a crashed daemon; True if there was one."""
    if not is_stale(path):
        return False
    unmount(path, lazy=True)
    return True


def set_read_ahead(info: MountInfo, kib: int) -> bool:
    """Raise the mount's read-ahead so the kernel sends 1 MiB reads (root only)."""
    try:
        Path(f"/sys/class/bdi/{info.device}/read_ahead_kb").write_text(f"{kib}\n")
    except OSError:
        return False
    return True
