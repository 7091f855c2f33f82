"""Scan-ahead: a helper process that reads mirror folders' metadata from disk one level
ahead of the daemon, so a cold walk's disk reads overlap the daemon's work.

A walk of the mount (``os.walk``, ``du``, an asset browser) lists one folder at a time and
waits for each: the daemon scans the mirror folder (a directory read and a stat per entry),
then answers. On a cold disk those reads are most of a folder's cost, and the daemon's own
CPU the rest; done one after the other, they add up. Once the daemon has scanned a folder it
hands the folder's subfolders to this helper, which scans them as the kernel's read-ahead
would: the dentries and inodes are in memory when the walk gets there.

The helper is a separate process, not a thread: a thread's stats took the GIL back and
forth with the event loop's, and a walk ran slower with scan-ahead threads than without
(tried, measured, reverted). It does nothing but read: it holds no lock, writes nothing,
and a failure of any kind only means the daemon reads from the disk itself, as before.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
from collections.abc import Iterable

from ..core.paths import RelPath

log = logging.getLogger("isaacfs.mirror")

# The helper: reads NUL-separated folder paths (relative to ROOT) from stdin and scans them,
# the latest first (a depth-first walk goes where it was last pointed), each once. It reads
# what the daemon has sent before every scan, and waits only when it has nothing to do.
HELPER = r"""
import os, select, sys
root, report, stack, done, pending = sys.argv[1], len(sys.argv) > 2, [], set(), b""
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
    try:
        with os.scandir(os.path.join(root, os.fsdecode(name))) as entries:
            for entry in entries:
                try:
                    entry.stat(follow_symlinks=False)
                except OSError:
                    pass
    except OSError:
        pass
    if report:  # tests: which folder was scanned, in order
        os.write(1, name + b"\n")
"""


class ScanAhead:
    """The daemon's end of the helper. ``hint`` never blocks and never fails: a full pipe
    drops the hint, a dead helper ends scan-ahead."""

    def __init__(self, root_fd: int, report: bool = False) -> None:
        """``root_fd``: the mirror's folder. ``report``: the helper writes each folder it
        scanned to its stdout (``self.reports``), for tests."""
        self._process: subprocess.Popen[bytes] | None = None
        self.reports: int | None = None
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", HELPER, f"/proc/self/fd/{root_fd}", *(["report"] if report else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE if report else subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, pass_fds=(root_fd,), close_fds=True)
        except OSError as exc:
            log.info("scan-ahead off: the helper process did not start (%s)", exc.strerror)
            return
        assert self._process.stdin is not None
        self._fd = self._process.stdin.fileno()
        if report:
            assert self._process.stdout is not None
            self.reports = self._process.stdout.fileno()
        os.set_blocking(self._fd, False)

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

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            assert process.stdin is not None
            process.stdin.close()  # end of input: the helper exits
        except OSError:
            pass
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:  # a scan stuck in the disk: it holds nothing
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
