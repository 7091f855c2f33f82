"""Scan-ahead: a helper process that scans mirror folders one level ahead of the daemon and
hands back what it read, so a cold walk's disk reads, and the stat of every entry, leave the
daemon's critical path.

A walk of the mount (``os.walk``, ``du``, an asset browser) lists one folder at a time and
waits for each: the daemon scans the mirror folder (a directory read and a stat per entry),
then answers. On a cold disk those reads are most of a folder's cost, and the daemon's own
CPU the rest; done one after the other, they add up. Once the daemon has scanned a folder it
hands the folder's subfolders to this helper, which scans them on the other core, as the
kernel's read-ahead would, and sends each scan back: when the walk gets there, the daemon
takes the helper's scan instead of making its own, if the folder has not changed since (its
mtime and size, from the stat the daemon takes anyway) and the scan is recent.

The helper is a separate process, not a thread: a thread's stats took the GIL back and
forth with the event loop's, and a walk ran slower with scan-ahead threads than without
(tried, measured, reverted). It only reads: it holds no lock and writes nothing to the
mirror, and a failure of any kind only means the daemon scans the folder itself, as before.
"""

from __future__ import annotations

import fcntl
import logging
import marshal
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterable

from ..core.errors import InvalidPath
from ..core.paths import RelPath, check_name
from ..core.types import LocalEntry

log = logging.getLogger("isaacfs.mirror")

# A scan is taken only this soon after the helper made it: a file rewritten in place leaves
# its folder's mtime as it was, so the folder's stat alone cannot tell an old scan.
FRESH_SECONDS = 1.0
# Scans the daemon has not taken (folders a walk never opened) are dropped past this many.
READY_MAX = 4096
# Names longer than this are checked with ``check_name``, here and by ``Mirror.scan`` (63
# characters cannot reach NAME_MAX's 255 bytes; shorter ones need no check).
SHORT_NAME = 63

# The helper: reads NUL-separated folder paths (relative to ROOT) from stdin and scans them,
# the latest first (a depth-first walk goes where it was last pointed), each once. It reads
# what the daemon has sent before every scan, and waits only when it has nothing to do. Each
# scan goes to stdout as a length and a marshal record: (path, monotonic time before the scan,
# the folder's mtime_ns and size from an fstat before its entries were read, whether a name
# is longer than SHORT_NAME, and the entries as Mirror.scan makes them: (name, is_dir, size,
# mtime_ns, st_dev) of each folder and regular file, links followed); a folder it cannot read
# is sent with an mtime of -1 and no entries.
HELPER = r"""
import marshal, os, select, sys, time
root, stack, done, pending = sys.argv[1], [], set(), b""
def send(record):
    data = marshal.dumps(record)
    view = memoryview(len(data).to_bytes(4, "little") + data)
    while view:
        view = view[os.write(1, view):]
try:
    while True:
        ready = select.select([0], [], [], 0 if stack else None)[0]
        if ready:
            chunk = os.read(0, 1 << 16)
            if not chunk:
                break
            *names, pending = (pending + chunk).split(b"\0")
            stack.extend(name for name in names if name and name not in done)
            continue
        name = stack.pop()
        if name in done:
            continue
        done.add(name)
        if len(done) > 200000:
            done.clear()
        started, rows, long = time.monotonic(), [], False
        try:
            fd = os.open(os.path.join(root, os.fsdecode(name)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            send((name, started, -1, 0, False, []))
            continue
        try:
            folder = os.fstat(fd)
            with os.scandir(fd) as entries:
                for entry in entries:
                    try:
                        st = entry.stat()
                    except OSError:
                        continue
                    kind = st.st_mode & 0o170000
                    if kind == 0o040000:
                        rows.append((entry.name, True, 0, st.st_mtime_ns, st.st_dev))
                    elif kind == 0o100000:
                        rows.append((entry.name, False, st.st_size, st.st_mtime_ns, st.st_dev))
                    else:
                        continue
                    if len(entry.name) > SHORT_NAME:
                        long = True
        except OSError:
            send((name, started, -1, 0, False, []))
            continue
        finally:
            os.close(fd)
        send((name, started, folder.st_mtime_ns, folder.st_size, long, rows))
except OSError:
    pass  # the daemon closed its end
""".replace("SHORT_NAME", str(SHORT_NAME))


class ScanAhead:
    """The daemon's end of the helper. ``hint`` and ``take`` never block and never fail: a
    full pipe drops the hint, a scan not back yet is made by the daemon, a dead helper ends
    scan-ahead."""

    def __init__(self, root_fd: int, report: bool = False) -> None:
        """``root_fd``: the mirror's folder. ``report``: keep the path of every scan that came
        back, in order (``self.arrived``), for tests."""
        self._process: subprocess.Popen[bytes] | None = None
        self._buffer = bytearray()
        self._ready: dict[bytes, tuple[bytes, float, int, int, bool, list[tuple[str, bool, int, int, int]]]] = {}
        self.arrived: list[str] | None = [] if report else None
        self.taken = 0  # folders whose scan the daemon took from the helper
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", HELPER, f"/proc/self/fd/{root_fd}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                pass_fds=(root_fd,), close_fds=True)
        except OSError as exc:
            log.info("scan-ahead off: the helper process did not start (%s)", exc.strerror)
            return
        assert self._process.stdin is not None and self._process.stdout is not None
        self._fd = self._process.stdin.fileno()
        self.results = self._process.stdout.fileno()
        os.set_blocking(self._fd, False)
        os.set_blocking(self.results, False)
        try:  # room for a walk's worth of scans while the daemon is busy elsewhere
            fcntl.fcntl(self.results, fcntl.F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass

    @property
    def running(self) -> bool:
        return self._process is not None

    def hint(self, folder: RelPath, names: Iterable[str]) -> None:
        """Scan these subfolders of ``folder`` ahead, the last one first. (Names a folder's
        scan has just read: they are checked by that scan, and no ``RelPath`` is made.)"""
        if self._process is None:
            return
        chunk = b""
        prefix = os.fsencode("".join(part + "/" for part in folder.parts))
        for text in names:
            name = prefix + os.fsencode(text) + b"\0"
            if len(name) > select.PIPE_BUF:
                continue
            if len(chunk) + len(name) > select.PIPE_BUF:
                if not self._send(chunk):
                    return
                chunk = b""
            chunk += name
        if chunk:
            self._send(chunk)

    def _send(self, chunk: bytes) -> bool:
        # Up to PIPE_BUF bytes, a write to a pipe is whole or nothing: no name arrives cut.
        try:
            os.write(self._fd, chunk)
        except BlockingIOError:  # the helper is behind: the hint is dropped
            return False
        except OSError:
            log.info("scan-ahead off: the helper process ended")
            self.close()
            return False
        return True

    def take(self, folder: RelPath, mtime_ns: int, size: int) -> list[LocalEntry] | None:
        """The helper's scan of ``folder`` (what ``Mirror.scan`` would return), if one came
        back in the last FRESH_SECONDS and the folder's mtime and size are still ``mtime_ns``
        and ``size`` (the stat just taken); None: scan it yourself."""
        if self._process is None or not folder.parts:
            return None
        self.drain()
        found = self._ready.pop(os.fsencode("/".join(folder.parts)), None)
        if (found is None or found[2] != mtime_ns or found[3] != size
                or time.monotonic() - found[1] > FRESH_SECONDS):
            return None
        entries = [LocalEntry(*row) for row in found[5]]
        if found[4]:
            entries = [entry for entry in entries if len(entry.name) <= SHORT_NAME or _valid(entry.name)]
        self.taken += 1
        return entries

    def drain(self) -> None:
        """Read the scans the helper has sent (never waits)."""
        if self._process is None:
            return
        while True:
            try:
                chunk = os.read(self.results, 1 << 20)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                log.info("scan-ahead off: the helper process ended")
                self.close()
                return
            self._buffer += chunk
        buffer, at = self._buffer, 0
        try:
            while len(buffer) - at >= 4:
                length = int.from_bytes(buffer[at:at + 4], "little")
                if len(buffer) - at - 4 < length:
                    break
                record = marshal.loads(buffer[at + 4:at + 4 + length])
                at += 4 + length
                self._ready[record[0]] = record
                if self.arrived is not None:
                    self.arrived.append(os.fsdecode(record[0]))
        except (ValueError, EOFError, TypeError, IndexError):
            log.warning("scan-ahead off: the helper process sent what it should not")
            self.close()
            return
        del buffer[:at]
        if len(self._ready) > READY_MAX:
            self._ready.clear()  # scans of folders no walk opened

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        log.debug("scan-ahead: %d folder scans taken from the helper", self.taken)
        self._ready.clear()
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdout.close()  # a helper blocked sending a scan gets EPIPE and exits
            process.stdin.close()  # end of input: the helper exits
        except OSError:
            pass
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:  # a scan stuck in the disk: it holds nothing
            process.kill()
            process.wait()


def _valid(name: str) -> bool:
    try:
        check_name(name)
    except InvalidPath:
        return False
    return True
