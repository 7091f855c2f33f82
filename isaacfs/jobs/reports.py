"""What `isaacfs status` and `isaacfs misses` report, from a daemon or from a bare mirror."""

from __future__ import annotations

import shlex
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from ..core.categories import category_of, warm_command
from ..core.errors import InvalidPath
from ..core.paths import RelPath, shown
from ..core.units import plural, size
from ..store.index import Index

T = TypeVar("T")


async def off_loop(index: Index, query: Callable[[Index], T]) -> T:
    """Run ``query`` on a copy of ``index`` in a worker thread: at 200,000 files a full scan
    takes seconds, which on the daemon's thread would stall every FUSE request."""
    copy = index.copy()
    try:
        return await trio.to_thread.run_sync(query, copy)
    finally:
        copy.close()


def mirrored_by_category(index: Index) -> dict[str, Any]:
    """Files and bytes the index knows, in total and per top-level category."""
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    files = total = 0
    for path, length, _etag, _fetched, _access in index.files():
        try:
            category = category_of(RelPath.parse(path))[0]
        except InvalidPath:
            category = "(other)"
        per[category][0] += 1
        per[category][1] += length
        files += 1
        total += length
    return {"files": files, "bytes": total,
            "categories": {name: {"files": n, "bytes": b} for name, (n, b) in sorted(per.items())}}


def counters(index: Index, session: bool) -> dict[str, int]:
    values = dict(index.session) if session else index.counters()
    opens = values.get("opens", 0)
    fetched_on_open = values.get("misses_fetched", 0)
    return {"hits": opens - fetched_on_open, "misses": values.get("misses", 0),
            "fetches": values.get("fetches", 0), "bytes_fetched": values.get("bytes_fetched", 0),
            "errors": values.get("fetch_errors", 0), "listings": values.get("listings", 0)}


def misses(index: Index, limit: int | None = None, mount: str = "") -> list[dict[str, Any]]:
    found = []
    for path, mode, first, last, count in index.misses()[:limit]:
        try:
            command = warm_command(RelPath.parse(path), mount)
        except InvalidPath:
            command = ""
        found.append({"path": path, "mode": mode, "first_seen": first, "last_seen": last, "count": count,
                      "fetch": command})
    return found


def manifest(index: Index, since: float) -> list[str]:
    """Paths served (opened) or asked for (misses) since ``since`` (epoch seconds)."""
    served = {path for path, _s, _e, fetched, access in index.files()
              if max(fetched, access or 0.0) >= since}
    asked = {path for path, _m, _f, last, _c in index.misses() if last >= since}
    return sorted(served | asked)


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def render_status(report: dict[str, Any]) -> list[str]:
    lines = []
    if report.get("running"):
        upstream_state = "answers" if report["upstream_answers"] else f"not answering ({report['upstream_problem']})"
        lines += [f"mount      {report['mountpoint']} (pid {report['pid']}, up {_ago(report['uptime'])})",
                  f"mode       {report['mode']}",
                  f"upstream   {report['upstream']} ({upstream_state})"]
    else:
        lines += [f"mount      none running ({report['why_bare']}); reporting on the mirror folder alone"]
    lines.append(f"mirror     {report['mirror']} ({report['disk_free'] / 1e9:,.1f} GB free on its disk)")
    mirrored = report["mirrored"]
    lines.append(f"mirrored   {plural(mirrored['files'], 'file')}, {size(mirrored['bytes'])}")
    if mirrored["categories"]:
        lines.append(f"  {'category':<28} {'files':>8} {'size':>14}")
    for name, numbers in mirrored["categories"].items():
        lines.append(f"  {name:<28} {numbers['files']:>8,} {size(numbers['bytes']):>14}")
    for label, key in (("this mount", "session"), ("all time", "total")):
        numbers = report.get(key)
        if numbers is None:
            continue
        lines.append(f"{label:<10} hits {numbers['hits']:,}, misses {numbers['misses']:,},"
                     f" fetches {numbers['fetches']:,} ({size(numbers['bytes_fetched'])}),"
                     f" errors {numbers['errors']:,}")
    if report.get("running"):
        lines.append(f"in flight  {plural(report['in_flight'], 'download')}"
                     + (f" (downloads: {report['download_path']})" if report.get("download_path") else ""))
        prefetch = report.get("prefetch")
        if prefetch:
            lines.append(f"prefetch   {plural(prefetch['prefetched'], 'file')} ({size(prefetch['prefetched_bytes'])})"
                         f" fetched ahead of readers, {prefetch['read_after_prefetch']:,} of them read since")
        elif "prefetch" in report:
            lines.append("prefetch   off (prefetch = false)")
        if "nodes" in report:
            lines.append(f"memory     {report['nodes']:,} names held for the kernel")
    lines.append(f"misses     {report['recorded_misses']:,} recorded (see: isaacfs misses)")
    return lines


def render_misses(found: list[dict[str, Any]], now: float | None = None, mount: str = "") -> list[str]:
    if not found:
        return ["no misses recorded"]
    now = time.time() if now is None else now
    lines = [f"{'last':>4}      {'count':<5} {'mode':<10} path"]
    commands: dict[str, None] = {}
    for miss in found:
        ago = _ago(now - miss["last_seen"])
        lines.append(f"{ago:>4} ago  x{miss['count']:<4} {miss['mode']:<10} {shown(miss['path'])}")
        if miss["fetch"]:
            commands[miss["fetch"]] = None
    lines.append("")
    target = f" {shlex.quote(mount)}" if mount else ""
    lines.append(f"to fetch them all: isaacfs warm{target} --from-misses")
    lines.append("or by category:")
    lines += [f"  {command}" for command in commands]
    return lines
