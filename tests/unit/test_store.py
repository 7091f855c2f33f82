"""The mirror (plain folder + .isaacfs/ state) and its index, on a temp folder."""

from __future__ import annotations

import hashlib
import os
import select
from pathlib import Path

import pytest

from isaacfs.core.errors import InvalidPath
from isaacfs.core.paths import RelPath
from isaacfs.core.types import RemoteEntry
from isaacfs.store.index import Index
from isaacfs.store.mirror import Mirror, MirrorLocked, TempWriter, classify_folder
from isaacfs.store.scanahead import ScanAhead
from tests.unit.conftest import trio_test, trio_test_real_clock


def test_second_mirror_on_one_folder_is_refused(mirror: Mirror) -> None:
    other = Mirror(mirror.display)
    try:
        with pytest.raises(MirrorLocked, match=f"pid {os.getpid()}"):
            other.prepare()
    finally:
        other.close()


def test_prepare_removes_unfinished_downloads(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    (folder / ".isaacfs" / "tmp").mkdir(parents=True)
    (folder / ".isaacfs" / "tmp" / "x.part").write_bytes(b"half")
    mirror = Mirror(folder)
    try:
        mirror.prepare()
        assert list((folder / ".isaacfs" / "tmp").iterdir()) == []
    finally:
        mirror.close()


@trio_test
async def test_install_is_atomic_and_hashed(mirror: Mirror) -> None:
    body = os.urandom(5 * 1024 * 1024)  # above the parallel-hash size
    writer = mirror.writer()
    await writer.write(body[:1000])
    await writer.write(memoryview(body)[1000:])
    assert await writer.finish() == hashlib.md5(body).hexdigest()
    rel = RelPath.parse("Isaac/Props/a b%+#é.usd")
    assert mirror.entry(rel) is None  # nothing visible before the rename
    entry = mirror.install(writer.path, rel, mtime=1_600_000_000.0)
    writer.discard()  # a no-op after install: the temporary name is gone
    assert entry.size == len(body) and not entry.is_dir
    target = Path(mirror.display, "Isaac/Props/a b%+#é.usd")
    assert target.read_bytes() == body and target.stat().st_mtime == 1_600_000_000.0
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert list(mirror.tmp.iterdir()) == []


@trio_test
async def test_discarded_download_leaves_nothing(mirror: Mirror) -> None:
    writer = TempWriter(mirror.new_temp())
    await writer.write(b"partial")
    writer.discard()
    assert list(mirror.tmp.iterdir()) == []


def test_scan_hides_state_and_special_files(mirror: Mirror) -> None:
    root = Path(mirror.display)
    (root / "Isaac").mkdir()
    (root / "Isaac" / "a.usd").write_bytes(b"x")
    os.mkfifo(root / "Isaac" / "pipe")
    entries = {e.name: e for e in mirror.scan(RelPath()) or []}
    assert set(entries) == {"Isaac"}
    assert {e.name for e in mirror.scan(RelPath.parse("Isaac")) or []} == {"a.usd"}
    with pytest.raises(InvalidPath):
        mirror.path(RelPath.parse(".isaacfs/index.db"))


def test_classify_folder(tmp_path: Path) -> None:
    assert classify_folder(tmp_path / "none") == "missing"
    (tmp_path / "e").mkdir()
    assert classify_folder(tmp_path / "e") == "empty"
    (tmp_path / "a" / "Isaac").mkdir(parents=True)
    assert classify_folder(tmp_path / "a") == "assets"
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    assert classify_folder(tmp_path / "o") == "other"


def test_index_survives_a_save_and_reload(mirror: Mirror) -> None:
    index = Index(mirror.state / "index.db")
    rel = RelPath.parse("Isaac/Robots/x.usd")
    index.record_file(rel, 10, 1.0, "abc", "upstream")
    index.store_listing(RelPath.parse("Isaac"), [RemoteEntry("Robots", True, 0, 0.0, "")])
    index.record_miss(RelPath.parse("Isaac/Robots/y.usd"), "strict")
    index.count("fetches", 3)
    index.close()
    again = Index(mirror.state / "index.db")
    try:
        assert again.file_record(rel) == (10, "abc", "upstream")
        stored = again.listing(RelPath.parse("Isaac"))
        assert stored is not None and stored[1][0].name == "Robots"
        assert [m[0] for m in again.misses()] == ["Isaac/Robots/y.usd"]
        assert again.counters()["fetches"] == 3
    finally:
        again.close()


@trio_test_real_clock
async def test_index_queries_run_on_a_copy_while_the_loop_goes_on(index: Index) -> None:
    """status, manifest and verify scan the whole index: at 200,000 files that took 1.6 s on
    the daemon's thread, stalling every FUSE request. They run on a copy in a worker thread;
    the loop keeps turning and keeps writing, and the copy is not disturbed."""
    import trio

    from isaacfs.jobs.reports import off_loop
    index.record_adopted([(f"Isaac/g{i // 1000}/asset_{i:06d}.usda", 10, 1.0) for i in range(20_000)])
    started = trio.Event()
    ticks = 0

    def slow_scan(copy: Index) -> int:
        trio.from_thread.run_sync(started.set)
        total = 0
        for _ in range(3):
            total = len(copy.records())
        return total

    async def ticker() -> None:
        nonlocal ticks
        await started.wait()
        while True:
            ticks += 1
            index.record_file(RelPath.parse(f"Isaac/new/f{ticks}.usd"), 1, 0.0, "", "upstream")  # writes go on
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        seen = await off_loop(index, slow_scan)
        nursery.cancel_scope.cancel()
    assert seen == 20_000  # what the index held when the copy was taken
    assert ticks > 5  # the loop ran (and wrote) while the scan did
    assert len(index.records()) == 20_000 + ticks
    assert index.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_recording_a_file_clears_its_misses(index: Index) -> None:
    index.record_miss(RelPath.parse("Isaac/Robots"), "strict")
    index.record_miss(RelPath.parse("Isaac/Robots/x.usd"), "strict")
    index.record_file(RelPath.parse("Isaac/Robots/x.usd"), 1, 0.0, "", "upstream")
    assert index.miss_count() == 0


def test_damaged_index_is_set_aside_not_fatal(mirror: Mirror) -> None:
    (mirror.state / "index.db").write_bytes(b"this is not sqlite" * 100)
    index = Index(mirror.state / "index.db")
    try:
        assert index.files() == []
        assert any(p.name.startswith("index.db.damaged-") for p in mirror.state.iterdir())
    finally:
        index.close()


def test_an_unreadable_or_wrong_mirror_folder_is_one_sentence(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from isaacfs.core.errors import MountError

    (tmp_path / "file").write_text("x")
    with pytest.raises(MountError, match="is a file, not a folder"):
        classify_folder(tmp_path / "file")

    def denied(path: object) -> list[str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "listdir", denied)
    with pytest.raises(MountError, match=r"cannot be read \(Permission denied\)"):
        classify_folder(tmp_path)


def test_a_ctrl_c_just_after_a_close_stops_the_job_and_closes_no_other_file(
        mirror: Mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGINT whose handler ran between a temporary file's close and the line that forgot
    its number: the caller's ``discard`` closed the number again, by then another download's
    file (EBADF there), and that OSError replaced the KeyboardInterrupt, so a warm Ctrl-C'd
    went on to the end (tests/mount/test_warm.py caught it, now and then)."""
    writer = mirror.writer()
    other = os.open(os.devnull, os.O_RDONLY)
    real_close, closes = os.close, []

    def close_then_signal(fd: int) -> None:
        real_close(fd)
        closes.append(fd)
        if len(closes) == 1:
            raise KeyboardInterrupt  # the handler runs as the close returns

    monkeypatch.setattr(os, "close", close_then_signal)
    try:
        with pytest.raises(KeyboardInterrupt):
            try:
                writer._close()
            finally:
                writer.discard()  # what every download's cleanup does
    finally:
        monkeypatch.undo()
    assert len(closes) == 1
    os.fstat(other)  # still open
    os.close(other)


def _arrived(scan_ahead: ScanAhead, count: int) -> list[str]:
    """The next ``count`` folders whose scan came back from the helper (waits on the pipe: an
    event, with a deadline only for a helper that never answers)."""
    assert scan_ahead.arrived is not None
    while len(scan_ahead.arrived) < count:
        assert select.select([scan_ahead.results], [], [], 30)[0], f"only {scan_ahead.arrived} came back"
        scan_ahead.drain()
        assert scan_ahead.running, f"the helper ended after {scan_ahead.arrived}"
    arrived = scan_ahead.arrived[:count]
    del scan_ahead.arrived[:count]
    return arrived


def test_scan_ahead_scans_the_latest_hint_first_and_each_folder_once(mirror: Mirror) -> None:
    for name in ("A", "B", "C"):
        (mirror.display / "Isaac" / name).mkdir(parents=True)
        (mirror.display / "Isaac" / name / "x.usda").write_bytes(b"#usda 1.0\n")
    scan_ahead = ScanAhead(mirror.fd, report=True)
    try:
        assert scan_ahead.running
        scan_ahead.hint(RelPath.parse("Isaac"), ["A", "B", "C", "Gone", "C"])
        # The last hint first (a depth-first walk goes where it was last pointed); the folder
        # that is not there costs nothing more; C, hinted twice, is scanned once.
        assert _arrived(scan_ahead, 4) == ["Isaac/C", "Isaac/Gone", "Isaac/B", "Isaac/A"]
        scan_ahead.hint(RelPath.parse("Isaac"), ["A"])
        scan_ahead.hint(RelPath(), ["Isaac"])
        assert _arrived(scan_ahead, 1) == ["Isaac"]  # A was scanned already
    finally:
        scan_ahead.close()
    assert not scan_ahead.running


def _folder_stat(mirror: Mirror, rel: RelPath) -> tuple[int, int]:
    st = os.stat(mirror.os_path(rel))
    return st.st_mtime_ns, st.st_size


def test_the_daemon_takes_the_helpers_scan_which_is_what_its_own_would_be(mirror: Mirror) -> None:
    folder = mirror.display / "Isaac" / "Props"
    (folder / "Sub").mkdir(parents=True)
    (folder / "a.usda").write_bytes(b"#usda 1.0\n")
    (folder / ("long_" * 20 + ".usd")).write_bytes(b"x" * 7)  # a name past SHORT_NAME
    (folder / "link.usda").symlink_to("a.usda")  # followed, as the daemon's own scan does
    (folder / "dangling.usda").symlink_to("nowhere.usda")  # left out
    os.mkfifo(folder / "pipe")  # not an asset: left out
    rel = RelPath.parse("Isaac/Props")
    scan_ahead = ScanAhead(mirror.fd, report=True)
    try:
        scan_ahead.hint(RelPath.parse("Isaac"), ["Props"])
        assert _arrived(scan_ahead, 1) == ["Isaac/Props"]
        taken = scan_ahead.take(rel, *_folder_stat(mirror, rel))
        own = mirror.scan(rel)
        assert taken is not None and own is not None
        assert sorted(taken) == sorted(own)
        assert {entry.name for entry in taken} == {"Sub", "a.usda", "long_" * 20 + ".usd", "link.usda"}
        assert scan_ahead.taken == 1
        assert scan_ahead.take(rel, *_folder_stat(mirror, rel)) is None  # taken once
    finally:
        scan_ahead.close()


def test_a_scan_of_a_folder_that_changed_since_or_an_old_one_is_not_taken(
        mirror: Mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("A", "B"):
        (mirror.display / "Isaac" / name).mkdir(parents=True)
        (mirror.display / "Isaac" / name / "x.usda").write_bytes(b"#usda 1.0\n")
    scan_ahead = ScanAhead(mirror.fd, report=True)
    try:
        scan_ahead.hint(RelPath.parse("Isaac"), ["A", "B"])
        assert sorted(_arrived(scan_ahead, 2)) == ["Isaac/A", "Isaac/B"]
        changed = RelPath.parse("Isaac/A")
        (mirror.display / "Isaac" / "A" / "y.usda").write_bytes(b"#usda 1.0\n")
        mtime_ns, _size = _folder_stat(mirror, changed)
        os.utime(mirror.os_path(changed), ns=(mtime_ns, mtime_ns + 1_000_000_000))  # a tick later, whatever the clock
        assert scan_ahead.take(changed, *_folder_stat(mirror, changed)) is None
        monkeypatch.setattr("isaacfs.store.scanahead.FRESH_SECONDS", -1.0)  # every scan is too old
        assert scan_ahead.take(RelPath.parse("Isaac/B"), *_folder_stat(mirror, RelPath.parse("Isaac/B"))) is None
        assert scan_ahead.taken == 0
    finally:
        scan_ahead.close()


@pytest.mark.parametrize("record", [b"\xff" * 5, b"i\x01\x00\x00\x00"])  # not marshal; not a scan
def test_a_scan_that_cannot_be_read_ends_scan_ahead(mirror: Mirror, record: bytes) -> None:
    scan_ahead = ScanAhead(mirror.fd)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    scan_ahead.results = read_end  # in place of the helper's output
    try:
        os.write(write_end, len(record).to_bytes(4, "little") + record)
        assert scan_ahead.take(RelPath.parse("Isaac"), 0, 0) is None  # the daemon scans it itself
        assert not scan_ahead.running
    finally:
        scan_ahead.close()
        os.close(read_end)
        os.close(write_end)


def test_a_helper_that_died_ends_scan_ahead_without_an_error(mirror: Mirror) -> None:
    scan_ahead = ScanAhead(mirror.fd)
    process = scan_ahead._process
    assert process is not None
    process.kill()
    process.wait()
    scan_ahead.hint(RelPath(), ["Isaac"])  # the pipe is broken: scan-ahead stops, quietly
    assert not scan_ahead.running
    scan_ahead.hint(RelPath(), ["Isaac"])


def test_the_mirror_stops_its_helper_when_it_closes(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    mirror = Mirror(folder)
    mirror.prepare()
    mirror.start_scan_ahead()
    assert mirror.scan_ahead is not None and mirror.scan_ahead.running
    process = mirror.scan_ahead._process
    mirror.close()
    assert process is not None and process.returncode == 0  # it read the end of its input and left
