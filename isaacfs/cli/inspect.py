"""`isaacfs status|misses|mode|verify|manifest`: ask the daemon of a live mount, or read the mirror."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from ..control import server as control
from ..core.config import Settings
from ..core.errors import UserError
from ..core.paths import STATE_DIR_NAME, escape_line, shown
from ..core.units import plural, size
from ..jobs import reports
from ..jobs.verify import VerifyResult
from ..jobs.verify import verify as run_verify
from ..store.index import Index
from ..system import mounts


def _live(path: Path) -> bool:
    return mounts.live(path)


@contextmanager
def _bare_index(folder: Path) -> Iterator[Index]:
    """The index of a mirror nobody serves, opened read-only."""
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist: no mount and no mirror there")
    path = folder / STATE_DIR_NAME / "index.db"
    if not path.exists():
        raise UserError(f"{folder} is not mounted and holds no isaacfs mirror index (no {path})")
    index = Index(path, read_only=True)
    try:
        yield index
    finally:
        index.close()


def show_status(path: Path, as_json: bool, prometheus: bool = False) -> int:
    if _live(path):
        report = control.call(path, "status")
    else:
        with _bare_index(path) as index:
            stat = os.statvfs(path)
            report = {"running": False, "why_bare": "not mounted", "mirror": str(path),
                      "disk_free": stat.f_bavail * stat.f_frsize, "mirrored": reports.mirrored_by_category(index),
                      "total": reports.counters(index, False), "recorded_misses": index.miss_count()}
    if prometheus:
        sys.stdout.write(reports.prometheus(report))
    elif as_json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(reports.render_status(report)))
    return 0


def misses(path: Path, as_json: bool, clear: bool) -> int:
    if _live(path):
        if clear:
            count = control.call(path, "clear-misses")
            print(f"isaacfs: forgot {count} recorded misses")
            return 0
        found = control.call(path, "misses")
    else:
        if clear:
            raise UserError("--clear works on a live mount (the daemon owns the index)")
        with _bare_index(path) as index:
            found = reports.misses(index, mount=str(path))
    if as_json:
        print(json.dumps(found, indent=2))
    else:
        print("\n".join(reports.render_misses(found, mount=str(path))))
    return 0


def switch_mode(path: Path, mode: str) -> int:
    if not _live(path):
        raise UserError(f"{path} is not a running isaacfs mount; mount it with: isaacfs mount {path} --mode {mode}")
    answer = control.call(path, "mode", mode=mode)
    if answer["old"] == mode:
        print(f"isaacfs: {path} is already in {mode} mode")
    else:
        print(f"isaacfs: {path} switched from {answer['old']} to {mode} mode (open files are unaffected)")
    return 0


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str | None, now: float | None = None) -> float:
    """`2h`, `30m`, `1d` ago, an ISO date/time, or epoch seconds; None means the beginning."""
    if not text:
        return 0.0
    now = time.time() if now is None else now
    match = _DURATION.match(text.strip())
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--since {text!r}: expected 2h, 30m, 1d, a date like 2026-11-24T09:00,"
                        " or epoch seconds") from None


def manifest(path: Path, since_text: str | None, output: str | None) -> int:
    since = parse_since(since_text)
    if _live(path):
        paths = control.call(path, "manifest", since=since)
    else:
        with _bare_index(path) as index:
            paths = reports.manifest(index, since)
    when = "the beginning" if not since else datetime.fromtimestamp(since).isoformat(timespec="seconds")
    text = f"# isaacfs manifest of {path}: {len(paths)} paths served or asked for since {when}\n"
    text += "".join(f"{escape_line(line)}\n" for line in paths)  # one path per line, whatever its name
    if output:
        try:
            Path(output).write_text(text, encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise UserError(f"cannot write {output}: {exc.strerror}") from None
        print(f"isaacfs: wrote {len(paths)} paths to {output}; replay with: isaacfs warm --manifest {output}",
              file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def verify(settings: Settings, path: Path, repair: bool, against_upstream: bool = False) -> int:
    def progress(event: dict[str, Any]) -> None:
        if event.get("event") == "done" and event.get("outcome") == "failed":
            print(f"wrong: {event['path']}", flush=True)

    if _live(path):
        answer = control.call(path, "verify", progress, timeout=None, repair=repair, upstream=against_upstream)
        result = VerifyResult(**answer)
    else:
        result = _verify_local(settings, path, repair, progress, against_upstream)
    print(f"isaacfs verify: {plural(result.checked, 'file')} ({size(result.bytes)}) checked in {result.elapsed:.1f}s:"
          f" {result.by_hash:,} by the MD5 recorded at install, {result.by_etag:,} by the upstream's MD5 ETag,"
          f" {result.size_only:,} by size only (no hash known: adopted files)")
    if result.unindexed:
        print(f"isaacfs verify: {plural(result.unindexed, 'file')} on disk the index did not know;"
              f" {result.indexed_now:,} hashed and indexed now (not compared with the upstream)")
    if against_upstream:
        print(f"isaacfs verify: {plural(result.upstream_checked, 'file')} compared with a fresh upstream listing:"
              f" {len(result.changed_upstream):,} changed there, {len(result.gone_upstream):,} gone from it")
    for line in result.problems[:100]:
        print(f"  wrong: {shown(line)}")
    for line in result.changed_upstream[:100]:
        print(f"  changed upstream: {shown(line)}")
    for line in result.gone_upstream[:20]:
        print(f"  gone upstream (kept): {shown(line)}")
    for line in result.repaired[:100]:
        print(f"  repaired: {shown(line)}")
    if not result.problems and not result.changed_upstream and not result.unrepaired:
        print("isaacfs verify: all files checked match" + ("" if result.size_only == 0 else
              " (those checked by size only: as far as size can tell)"))
    elif result.unrepaired:
        print(f"isaacfs verify: {len(result.unrepaired)} wrong and not repaired"
              + ("" if repair else "; run again with --repair to fetch them again"))
    return 0 if result.ok else 1


def _verify_local(settings: Settings, path: Path, repair: bool, progress: control.Emit,
                  against_upstream: bool) -> VerifyResult:
    from ..jobs.workspace import run_on_mirror

    if not (path / STATE_DIR_NAME / "index.db").exists():
        raise UserError(f"{path} holds no isaacfs mirror index: nothing to verify against")
    return run_on_mirror(settings, path, lambda workspace: run_verify(workspace, repair, progress, against_upstream))
