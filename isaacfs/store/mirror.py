"""The mirror: a plain folder of assets, plus isaacfs's state in ``.isaacfs/``.

The mirror is usually the mountpoint's own underlying folder, which the mount hides.
The daemon opens it (a directory fd) before mounting and reaches it afterwards through
``/proc/self/fd/<fd>``: that path resolves to the opened folder itself, beneath the
mount, so ordinary path calls keep working.

A file appears in the tree only whole: it is written in ``.isaacfs/tmp/``, checked,
fsynced and renamed into place. A crash leaves at most a temporary file, which the next
start removes.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import stat
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from ..core.errors import InvalidPath, MirrorStalled, MountError
from ..core.paths import STATE_DIR_NAME, RelPath, check_name
from ..core.types import LocalEntry
from .scanahead import SHORT_NAME, ScanAhead

log = logging.getLogger("isaacfs.mirror")

T = TypeVar("T")
# File systems whose I/O can hang on a server (and FUSE ones, on their daemon).
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "9p", "afs",
                        "gpfs", "beegfs", "orangefs", "ocfs2", "gfs2", "davfs", "ncpfs"})
IO_THREADS = 16  # worker threads for a mirror's hanging I/O: a hung server holds at most these


def fs_type(device: int) -> str:
    """The type of the mounted file system holding ``device`` (from /proc/self/mountinfo;
    "" if not found)."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
            for line in table:
                fields = line.split()
                if len(fields) > 2 and fields[2] == wanted and " - " in line:
                    return line.split(" - ", 1)[1].split()[0]
    except OSError:
        pass
    return ""

ASSET_TOP_LEVEL = ("Isaac", "NVIDIA")


class MirrorLocked(MountError):
    pass


def classify_folder(path: Path) -> str:
    """'empty', 'mirror' (has .isaacfs/), 'assets' (holds Isaac/ or NVIDIA/) or 'other'."""
    try:
        names = set(os.listdir(path))
    except FileNotFoundError:
        return "missing"
    except NotADirectoryError:
        raise MountError(f"{path} is a file, not a folder; pick a folder for the mirror") from None
    except OSError as exc:
        raise MountError(f"{path} cannot be read ({exc.strerror}); pick a folder you own for the mirror"
                         " (--mirror DIR)") from None
    if not names:
        return "empty"
    if STATE_DIR_NAME in names:
        return "mirror"
    if any((path / top).is_dir() for top in ASSET_TOP_LEVEL if top in names):
        return "assets"
    return "other"


class Mirror:
    """The on-disk tree, addressed only by validated ``RelPath``s."""

    def __init__(self, folder: Path) -> None:
        self.display = folder  # the path a user knows it by (hidden under the mount, maybe)
        try:
            self.fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise MountError(f"mirror folder {folder} cannot be opened: {exc.strerror}") from None
        self.root = Path(f"/proc/self/fd/{self.fd}")
        self._root_text = str(self.root)
        self.state = self.root / STATE_DIR_NAME
        self.tmp = self.state / "tmp"
        self._lock_fd: int | None = None
        # Where the mirror's file system can hang (a network one: a hung NFS server stops
        # every stat and read of it), its I/O runs in worker threads under a deadline, so a
        # reader gets EIO and the mount goes on; a local disk is read on the loop (faster).
        self.device = os.fstat(self.fd).st_dev
        self.fs_type = fs_type(self.device)
        self.network = self.fs_type in NETWORK_FS or self.fs_type.startswith("fuse")
        self.io_timeout = 30.0
        self._io_threads = trio.CapacityLimiter(IO_THREADS)
        self.scan_ahead: ScanAhead | None = None

    def start_scan_ahead(self) -> None:
        """Scan folders ahead of a walk in a helper process (``scanahead.py``), where the
        mirror is on a local disk: a network one's reads can hang, and its server caches."""
        if not self.network and self.scan_ahead is None:
            self.scan_ahead = ScanAhead(self.fd)

    # -- lifecycle ------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the state folder, take the lock, clear what a crash left behind."""
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            probe = self.tmp / f"probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise MountError(
                f"mirror folder {self.display} is not writable ({exc.strerror}): isaacfs keeps its files"
                " and its state there; pick a folder you own with --mirror DIR") from None
        self._lock()
        leftovers = self._clear_tmp()
        if leftovers:
            log.info("removed %d unfinished download(s) left by an earlier stop", leftovers)

    def _clear_tmp(self) -> int:
        """Remove unfinished downloads (only while this process holds the lock)."""
        leftovers = 0
        for item in self.tmp.iterdir():
            item.unlink(missing_ok=True)
            leftovers += 1
        return leftovers

    def _lock(self) -> None:
        path = self.state / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise MirrorLocked(
                f"mirror {self.display} is in use by another isaacfs process (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        if self.scan_ahead is not None:
            self.scan_ahead.close()
            self.scan_ahead = None
        if self._lock_fd is not None:
            # A Ctrl-C can land between a temporary file's creation and the code that would
            # discard it; whatever is left, this writer leaves nothing half-written behind.
            try:
                self._clear_tmp()
            except OSError:
                pass
            lock_fd, self._lock_fd = self._lock_fd, None  # forgotten first: never closed twice
            os.close(lock_fd)
        os.close(self.fd)

    # -- I/O that may hang -------------------------------------------------------------
    def foreign(self, entry: LocalEntry) -> bool:
        """Whether ``entry`` lives where I/O can hang: a network mirror, or another file
        system mounted inside the mirror (an NFS share bind-mounted into it)."""
        return self.network or (entry.dev != 0 and entry.dev != self.device)

    async def io(self, foreign: bool, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` for a path of the mirror: at once on a local disk; where it may
        hang (``foreign``), in a worker thread, abandoned after ``io_timeout`` seconds
        (MirrorStalled: the reader gets EIO, the loop never waits)."""
        if not foreign:
            return call(*args)
        with trio.move_on_after(self.io_timeout):
            return await trio.to_thread.run_sync(call, *args, abandon_on_cancel=True, limiter=self._io_threads)
        raise MirrorStalled(f"the mirror's file system did not answer within {self.io_timeout:g}s"
                            f" ({self.fs_type or 'a mount inside the mirror'}; a hung network file system?)")

    # -- reading --------------------------------------------------------------------
    def path(self, rel: RelPath) -> Path:
        return Path(self.os_path(rel))

    def os_path(self, rel: RelPath) -> str:
        """``path`` as text, for the calls a walk makes per folder and file (building a
        ``Path`` took as long as the system call it was for)."""
        if rel.is_state():
            raise InvalidPath("isaacfs state is not part of the tree")
        return "/".join((self._root_text, *rel.parts))

    def entry(self, rel: RelPath) -> LocalEntry | None:
        """What the mirror holds at ``rel``: a file or folder, or None."""
        try:
            st = os.stat(self.os_path(rel))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return _local(rel.name, st)

    def scan(self, rel: RelPath) -> list[LocalEntry] | None:
        """The files and folders in a mirror folder; None if the folder is not there."""
        try:
            # Scanning by fd makes each entry's stat an fstatat() on that fd, not a walk of
            # the whole /proc/self/fd/N/... path again.
            fd = os.open(self.os_path(rel), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        entries = []
        try:
            with os.scandir(fd) as iterator:
                for item in iterator:
                    if rel.is_root and item.name == STATE_DIR_NAME:
                        continue
                    name = item.name
                    try:
                        # A directory read never names "", "." or "..", nor one holding "/" or
                        # NUL; only the length is left to check, and SHORT_NAME (63) characters cannot
                        # reach NAME_MAX's 255 bytes.
                        if len(name) > SHORT_NAME:
                            check_name(name)
                        local = _local(name, item.stat())
                    except (InvalidPath, OSError):
                        continue
                    if local is not None:
                        entries.append(local)
        finally:
            os.close(fd)
        return entries

    def open_read(self, rel: RelPath) -> int:
        return os.open(self.os_path(rel), os.O_RDONLY | os.O_CLOEXEC)

    def free_and_total_bytes(self) -> tuple[int, int]:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.root)

    # -- writing --------------------------------------------------------------------
    def new_temp(self) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}.part"

    def writer(self, hasher: Hasher | None = None) -> TempWriter:
        """A new temporary file in the state folder to receive a download (a ``Sink``), its
        bytes fed to ``hasher`` (default: an MD5) as they are written."""
        return TempWriter(self.new_temp(), hasher)

    def install(self, temp: Path, rel: RelPath, mtime: float) -> LocalEntry:
        """Make a checked, fsynced temporary file the mirror's copy of ``rel``, atomically."""
        target = self.path(rel)
        os.chmod(temp, 0o644)  # an unmounted mirror is an asset root other users may read
        if mtime > 0:
            os.utime(temp, (mtime, mtime))
        self.make_dirs(rel.parent)
        # The file's data was fsynced before this rename, so after a crash the name holds
        # the whole file or is absent. The folder is not fsynced: losing a rename only
        # means the file is fetched again, and a folder fsync per file doubled the cost
        # of small downloads.
        os.rename(temp, target)
        entry = self.entry(rel)
        assert entry is not None
        return entry

    def make_dirs(self, rel: RelPath) -> None:
        try:
            if stat.S_ISDIR(os.stat(self.root.joinpath(*rel.parts)).st_mode):
                return  # the common case: one stat, not a mkdir per level
        except (FileNotFoundError, NotADirectoryError):
            pass
        current = self.root
        for part in rel.parts:
            current = current / part
            try:
                current.mkdir(mode=0o755)
            except FileExistsError:
                if not current.is_dir():
                    raise NotADirectoryError(f"{current.name} is a file in the mirror") from None

    def walk_files(self) -> list[tuple[str, int, float]]:
        """Every file in the tree as (path, size, mtime), for indexing an adopted folder."""
        found: list[tuple[str, int, float]] = []
        stack = [RelPath()]
        while stack:
            rel = stack.pop()
            try:
                entries = self.scan(rel) or []
            except OSError as exc:
                log.warning("skipped mirror folder %s/: %s", rel, exc.strerror)
                continue
            for entry in entries:
                child = rel.child(entry.name)
                if entry.is_dir:
                    stack.append(child)
                else:
                    found.append((str(child), entry.size, entry.mtime_ns / 1e9))
        return found


def _local(name: str, st: os.stat_result) -> LocalEntry | None:
    if stat.S_ISDIR(st.st_mode):
        return LocalEntry(name, True, 0, st.st_mtime_ns, st.st_dev)
    if stat.S_ISREG(st.st_mode):
        return LocalEntry(name, False, st.st_size, st.st_mtime_ns, st.st_dev)
    return None  # sockets, fifos, devices are never assets


PARALLEL_HASH_BYTES = 4 * 1024 * 1024


def md5_of(path: Path) -> str:
    """The MD5 of a file, read in 1 MiB steps."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Hasher(Protocol):
    """What a download's bytes are fed to as they are written (``fetch.integrity.BodyHash``)."""

    def update(self, data: memoryview) -> None: ...

    @property
    def md5(self) -> str: ...


class Md5:
    def __init__(self) -> None:
        self._md5 = hashlib.md5(usedforsecurity=False)

    def update(self, data: memoryview) -> None:
        self._md5.update(data)

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()


def _write_hashed(fd: int, view: memoryview, md5: Hasher) -> None:
    """Append ``view`` to ``fd`` and feed it to ``md5``; a large piece is hashed in a second
    thread while this one writes (hashlib and os.write both release the GIL)."""
    hasher = threading.Thread(target=md5.update, args=(view,)) if len(view) >= PARALLEL_HASH_BYTES else None
    if hasher is not None:
        hasher.start()
    else:
        md5.update(view)
    try:
        rest = view
        while rest:
            rest = rest[os.write(fd, rest):]
    finally:
        if hasher is not None:
            hasher.join()


class TempWriter:
    """A download's temporary file: written in order, MD5 computed as it is written, fsynced
    by ``finish``. Removed by ``discard`` (always call it; it is a no-op after install)."""

    def __init__(self, path: Path, hasher: Hasher | None = None) -> None:
        self.path = path
        self.size = 0
        self.hasher = hasher if hasher is not None else Md5()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)

    async def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        await trio.to_thread.run_sync(_write_hashed, self._fd, view, self.hasher)
        self.size += len(view)

    async def finish(self) -> str:
        """fsync and close the file; its MD5."""
        await trio.to_thread.run_sync(os.fsync, self._fd)
        self._close()
        return self.hasher.md5

    def _close(self) -> None:
        # Forgotten before it is closed: a Ctrl-C landing just after the close (its handler
        # runs between the two) must not leave the number to be closed again by ``discard``,
        # by then another download's file (EBADF there, and the OSError replaced the
        # KeyboardInterrupt: the warm went on).
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def discard(self) -> None:
        self._close()
        self.path.unlink(missing_ok=True)
