"""The mirror's SQLite index in ``.isaacfs/index.db``.

The files on disk are the truth about what is mirrored; the index adds what the disk
cannot say: where a file came from and its upstream ETag, cached upstream listings
(with the time they were fetched), the misses strict mode refused, and counters.

The database lives in memory and is saved as a whole, atomically (temporary file,
fsync, rename), every few seconds when it changed and at stop. Every install is also
appended, as it happens, to ``.isaacfs/journal`` (one JSON line each), which the next
start replays: a kill -9 between two saves loses no record of a file it installed. Why not let SQLite
write the file itself: the mirror is usually hidden under the mount, reached only
through ``/proc/self/fd/N``, and SQLite resolves that link to its text path, which
leads back into our own mount: the daemon would wait on itself. The file stays a
plain SQLite database that any tool can read while the mirror is unmounted. A crash
loses at most the last few seconds of counters and listings, never a mirrored file or
the record of one.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..core.paths import RelPath
from ..core.types import RemoteEntry

log = logging.getLogger("isaacfs.index")

# Misses kept in the index: the newest ones; a storm of made-up names must not grow it.
MAX_MISSES = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files(
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime REAL NOT NULL, etag TEXT NOT NULL,
    source TEXT NOT NULL, fetched_at REAL NOT NULL, last_access REAL, md5 TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS listings(path TEXT PRIMARY KEY, fetched_at REAL NOT NULL, entries TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS misses(
    path TEXT PRIMARY KEY, mode TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def _key(rel: RelPath) -> str | None:
    """The index key of a path; None for names SQLite cannot store (undecodable bytes)."""
    text = str(rel)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def _serialize(db: sqlite3.Connection) -> bytes:
    """The whole in-memory database as the bytes of a SQLite file."""
    if sys.version_info >= (3, 11):
        return bytes(db.serialize())
    with tempfile.TemporaryDirectory(prefix="isaacfs-index-") as scratch:  # Python 3.10: by a backup
        path = os.path.join(scratch, "index.db")
        target = sqlite3.connect(path)
        try:
            db.backup(target)
        finally:
            target.close()
        with open(path, "rb") as stream:
            return stream.read()


def _deserialize(db: sqlite3.Connection, data: bytes) -> None:
    """Load the bytes of a SQLite file into the in-memory database ``db``."""
    if sys.version_info >= (3, 11):
        db.deserialize(data)
        return
    with tempfile.TemporaryDirectory(prefix="isaacfs-index-") as scratch:
        path = os.path.join(scratch, "index.db")
        with open(path, "wb") as stream:
            stream.write(data)
        source = sqlite3.connect(path)
        try:
            source.backup(db)
        finally:
            source.close()


@dataclass(frozen=True, slots=True)
class FileRecord:
    path: str
    size: int
    mtime: float
    etag: str  # the upstream's ETag when fetched ("" for file: upstreams and adopted files)
    md5: str  # computed while installed ("" for adopted files and older indexes)
    source: str  # upstream, adopted, found


def _storable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False  # a name that is not UTF-8: served from disk, not indexed
    return True


class Index:
    def __init__(self, db_path: Path, read_only: bool = False) -> None:
        self.path = db_path
        self.read_only = read_only  # a report on a mirror someone else may own: never saved
        self.db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self.damaged = False  # the saved index could not be read: what is on disk must be indexed again
        try:
            data = db_path.read_bytes()
        except FileNotFoundError:
            data = b""
        if data:
            try:
                _deserialize(self.db, data)
                self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.DatabaseError as exc:
                if read_only:
                    log.warning("the mirror index %s is unreadable (%s)", db_path, exc)
                else:
                    aside = db_path.with_name(f"index.db.damaged-{int(time.time())}")
                    os.replace(db_path, aside)
                    log.warning("the mirror index was unreadable (%s); kept it as %s and started a new one",
                                exc, aside.name)
                self.db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
                self.damaged = True
        self.db.executescript(SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(files)")}
        if "md5" not in columns:  # an index written before content hashes were kept
            self.db.execute("ALTER TABLE files ADD COLUMN md5 TEXT NOT NULL DEFAULT ''")
        self.journal = db_path.with_name("journal")
        self._journal_fd = -1
        self.replayed = self._replay()
        self._counters: Counter[str] = Counter()
        self.session: Counter[str] = Counter()  # counts since this process started
        self._miss_writes = 0
        self._access: dict[str, float] = {}
        self._saved_changes = -1

    def close(self) -> None:
        if self.read_only:
            self.db.close()
            return
        try:
            self.save()
        except OSError as exc:
            log.warning("could not save the mirror index at stop: %s", exc.strerror)
        if self._journal_fd >= 0:
            os.close(self._journal_fd)
            self._journal_fd = -1
        self.db.close()

    # -- the journal of installs ----------------------------------------------------
    def _replay(self) -> int:
        """Apply the installs journalled since the last save (``journal.old``, then ``journal``)."""
        count = 0
        for path in (self.journal.with_name("journal.old"), self.journal):
            try:
                lines = path.read_bytes().splitlines()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("could not read the install journal %s: %s", path.name, exc.strerror)
                continue
            for line in lines:
                try:
                    item = json.loads(line)
                    self._insert_file(str(item["path"]), int(item["size"]), float(item["mtime"]),
                                      str(item["etag"]), str(item["source"]), str(item.get("md5", "")),
                                      float(item["at"]))
                    count += 1
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash
        return count

    def _journal_line(self, record: dict[str, object]) -> None:
        if self.read_only:
            return
        try:
            if self._journal_fd < 0:
                self._journal_fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.write(self._journal_fd, json.dumps(record, ensure_ascii=True).encode() + b"\n")
        except OSError as exc:
            log.warning("could not journal an install: %s", exc.strerror)

    def sync_journal(self) -> None:
        """fsync the journal (may run in a worker thread): installs survive a power loss too."""
        fd = self._journal_fd
        if fd >= 0:
            try:
                os.fsync(fd)
            except OSError:
                pass

    def _rotate_journal(self) -> None:
        """The snapshot about to be taken holds every journalled install: start a new journal,
        keeping the old one until that snapshot is safely on disk."""
        old = self.journal.with_name("journal.old")
        if self._journal_fd < 0 or old.exists():
            return
        try:
            os.replace(self.journal, old)
        except OSError:
            return
        os.close(self._journal_fd)
        self._journal_fd = -1

    def copy(self) -> Index:
        """A private, read-only copy of the database that another thread may query or serialize
        while this one goes on writing. A page copy: about 25 ms at 200,000 files, where the
        queries of status or verify take seconds (on the thread that owns ``db``: a sqlite3
        connection must never be used from two threads at once)."""
        self.flush()
        clone = object.__new__(Index)
        clone.path, clone.read_only, clone.damaged = self.path, True, self.damaged
        clone.db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self.db.backup(clone.db)
        clone.journal, clone._journal_fd, clone.replayed = self.journal, -1, 0
        clone._counters, clone.session = Counter(), Counter(self.session)
        clone._miss_writes, clone._access, clone._saved_changes = 0, {}, -1
        return clone

    def pending(self) -> bool:
        """Whether the database changed since the last save (counting it as saved from now)."""
        self.flush()
        changes = self.db.total_changes
        if changes == self._saved_changes:
            return False
        self._saved_changes = changes
        self._rotate_journal()
        return True

    def serialized(self) -> bytes:
        """The whole database as the bytes of a SQLite file (the daemon serializes a ``copy()``
        in a worker thread; this connection must never be used from two threads at once)."""
        return _serialize(self.db)

    def write_snapshot(self, data: bytes) -> None:
        """Replace the index file atomically with ``data`` (may run in a worker thread)."""
        temp = self.path.with_name(f"index.db.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(temp, self.path)
            self.journal.with_name("journal.old").unlink(missing_ok=True)  # all of it is in the snapshot
        except OSError:
            self._saved_changes = -1  # try again at the next save
            temp.unlink(missing_ok=True)
            raise
        finally:
            if fd >= 0:
                os.close(fd)

    def save(self) -> None:
        if self.read_only:
            return
        if self.pending():
            self.write_snapshot(self.serialized())

    # -- meta -----------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", (key, value))

    # -- files ----------------------------------------------------------------------
    def record_file(self, rel: RelPath, size: int, mtime: float, etag: str, source: str, md5: str = "") -> None:
        """An install: in the database, and at once in the journal. ``md5``: the content hash
        computed while the file was written, the one ``verify`` checks it against."""
        key = _key(rel)
        if key is None:
            return
        now = time.time()
        self._insert_file(key, size, mtime, etag, source, md5, now)
        self._journal_line({"path": key, "size": size, "mtime": mtime, "etag": etag, "source": source,
                            "md5": md5, "at": now})
        # The file and the folders above it are no longer missing.
        prefixes = ["/".join(rel.parts[:depth]) for depth in range(1, len(rel.parts) + 1)]
        self.db.executemany("DELETE FROM misses WHERE path=?", [(p,) for p in prefixes])

    def _insert_file(self, key: str, size: int, mtime: float, etag: str, source: str, md5: str, at: float) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO files(path, size, mtime, etag, source, fetched_at, last_access, md5)"
            " VALUES(?, ?, ?, ?, ?, ?, ?, ?)", (key, size, mtime, etag, source, at, at, md5))

    def file_md5(self, rel: RelPath) -> str:
        """The content hash recorded when the file was installed ("" if none was)."""
        row = self.db.execute("SELECT md5 FROM files WHERE path=?", (_key(rel),)).fetchone()
        return "" if row is None else str(row[0])

    def file_record(self, rel: RelPath) -> tuple[int, str, str] | None:
        """(size, etag, source) the index holds for a mirrored file."""
        row = self.db.execute("SELECT size, etag, source FROM files WHERE path=?", (_key(rel),)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]), str(row[2]))

    def records(self) -> list[FileRecord]:
        """Every indexed file, with what verify needs."""
        self.flush()
        rows = self.db.execute("SELECT path, size, mtime, etag, md5, source FROM files ORDER BY path")
        return [FileRecord(str(p), int(s), float(m), str(e), str(h), str(o)) for p, s, m, e, h, o in rows]

    def files(self) -> list[tuple[str, int, str, float, float | None]]:
        """Every indexed file: (path, size, etag, fetched_at, last_access)."""
        self.flush()
        rows = self.db.execute("SELECT path, size, etag, fetched_at, last_access FROM files ORDER BY path")
        return [(str(p), int(s), str(e), float(f), None if a is None else float(a)) for p, s, e, f, a in rows]

    def record_adopted(self, records: list[tuple[str, int, float]]) -> None:
        now = time.time()
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT OR IGNORE INTO files(path, size, mtime, etag, source, fetched_at)"
            " VALUES(?, ?, ?, '', 'adopted', ?)",
            [(path, size, mtime, now) for path, size, mtime in records if _storable(path)])
        self.db.execute("COMMIT")

    def touch(self, rel: RelPath) -> None:
        key = _key(rel)
        if key is not None:
            self._access[key] = time.time()

    # -- listings -------------------------------------------------------------------
    def listing(self, rel: RelPath) -> tuple[float, list[RemoteEntry]] | None:
        """The cached upstream listing of a folder and when it was fetched (epoch seconds)."""
        row = self.db.execute("SELECT fetched_at, entries FROM listings WHERE path=?", (_key(rel),)).fetchone()
        if row is None:
            return None
        return float(row[0]), [RemoteEntry(*item) for item in json.loads(row[1])]

    def store_listing(self, rel: RelPath, entries: list[RemoteEntry]) -> None:
        key = _key(rel)
        if key is None:
            return
        payload = json.dumps([[e.name, e.is_dir, e.size, e.mtime, e.etag] for e in entries], ensure_ascii=False)
        self.db.execute("INSERT OR REPLACE INTO listings(path, fetched_at, entries) VALUES(?, ?, ?)",
                        (key, time.time(), payload))

    # -- misses ---------------------------------------------------------------------
    def record_miss(self, rel: RelPath, mode: str) -> None:
        key = _key(rel)
        if key is None:
            return
        now = time.time()
        # A deeper miss replaces those of the folders on its way (strict mode's ghosts).
        self.db.executemany("DELETE FROM misses WHERE path=?",
                            [("/".join(rel.parts[:depth]),) for depth in range(1, len(rel.parts))])
        self.db.execute(
            "INSERT INTO misses(path, mode, first_seen, last_seen, count) VALUES(?, ?, ?, ?, 1)"
            " ON CONFLICT(path) DO UPDATE SET last_seen=excluded.last_seen, count=count+1, mode=excluded.mode",
            (key, mode, now, now))
        self._miss_writes += 1
        if self._miss_writes % 1000 == 0:
            self.db.execute("DELETE FROM misses WHERE path NOT IN"
                            " (SELECT path FROM misses ORDER BY last_seen DESC LIMIT ?)", (MAX_MISSES,))

    def misses(self) -> list[tuple[str, str, float, float, int]]:
        """Recorded misses, newest first: (path, mode, first_seen, last_seen, count)."""
        rows = self.db.execute("SELECT path, mode, first_seen, last_seen, count FROM misses ORDER BY last_seen DESC")
        return [(str(p), str(m), float(f), float(last), int(c)) for p, m, f, last, c in rows]

    def file_count(self) -> int:
        self.flush()
        return int(self.db.execute("SELECT count(*) FROM files").fetchone()[0])

    def miss_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM misses").fetchone()[0])

    def clear_listings(self) -> int:
        return self.db.execute("DELETE FROM listings").rowcount

    def clear_misses(self) -> int:
        return self.db.execute("DELETE FROM misses").rowcount

    # -- counters -------------------------------------------------------------------
    def count(self, name: str, amount: int = 1) -> None:
        self._counters[name] += amount
        self.session[name] += amount

    def counters(self) -> dict[str, int]:
        """Totals over the mirror's life."""
        self.flush()
        return {str(name): int(value) for name, value in self.db.execute("SELECT name, value FROM counters")}

    def flush(self) -> None:
        if not self._counters and not self._access:
            return
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO counters(name, value) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET value=value+excluded.value",
            list(self._counters.items()))
        self.db.executemany("UPDATE files SET last_access=? WHERE path=?",
                            [(t, p) for p, t in self._access.items()])
        self.db.execute("COMMIT")
        self._counters.clear()
        self._access.clear()
