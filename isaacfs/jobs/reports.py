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
        lines += render_tiers(report.get("tiers") or [])
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


def render_tiers(rows: list[dict[str, Any]]) -> list[str]:
    """One block per upstream tier: state and since when, traffic, errors, latency, manifest."""
    lines = []
    for row in rows:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["since"]))
        state = row["state"] + (f" ({row['reason']})" if row["reason"] else "")
        lines.append(f"tier {row['tier']}     {row['upstream']}: {state} since {since}")
        errors = ", ".join(f"{kind} {count}" for kind, count in sorted(row["errors"].items())) or "none"
        latency = (f"p50 {row['p50_ms']:g} ms, p95 {row['p95_ms']:g} ms" if row["p50_ms"] is not None
                   else "no requests timed")
        lines.append(f"           {row['requests']:,} requests, {size(row['bytes'])}, errors: {errors},"
                     f" refused bodies {row['rejected']:,}, {latency}")
        lines.append("           manifest " + (row["manifest"] or "none"))
        if row.get("last_failover"):
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["last_failover"]["at"]))
            lines.append(f"           last failover {at}: {row['last_failover']['why']}")
    return lines


def prometheus(report: dict[str, Any]) -> str:
    """The report in Prometheus' text format (node_exporter's textfile collector reads it)."""
    mount = str(report.get("mountpoint") or report.get("mirror", "")).replace("\\", "\\\\").replace('"', '\\"')
    out: list[str] = []

    def metric(name: str, kind: str, text: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP isaacfs_{name} {text}")
        out.append(f"# TYPE isaacfs_{name} {kind}")
        for labels, value in samples:
            out.append(f'isaacfs_{name}{{mount="{mount}"{labels}}} {value:g}')

    metric("up", "gauge", "1 while the mount's daemon runs", [("", 1.0 if report.get("running") else 0.0)])
    mirrored = report.get("mirrored") or {}
    metric("mirrored_files", "gauge", "files in the mirror", [("", float(mirrored.get("files", 0)))])
    metric("mirrored_bytes", "gauge", "bytes in the mirror", [("", float(mirrored.get("bytes", 0)))])
    session = report.get("session") or {}
    for key, text in (("hits", "opens served from the mirror"), ("misses", "names the mirror did not hold"),
                      ("fetches", "files fetched"), ("bytes_fetched", "bytes fetched"), ("errors", "fetch errors")):
        if key in session:
            metric(f"{key}_total", "counter", f"{text}, since the mount", [("", float(session[key]))])
    rows = report.get("tiers") or []
    if rows:
        def tier(row: dict[str, Any]) -> str:
            upstream = str(row["upstream"]).replace("\\", "\\\\").replace('"', '\\"')
            return f',tier="{row["tier"]}",upstream="{upstream}"'

        metric("tier_up", "gauge", "1 while the tier answers", [(tier(row), 1.0 if row["state"] in ("up", "unknown")
                                                                   else 0.0) for row in rows])
        metric("tier_requests_total", "counter", "requests to the tier", [(tier(row), row["requests"]) for row in rows])
        metric("tier_bytes_total", "counter", "body bytes from the tier", [(tier(row), row["bytes"]) for row in rows])
        metric("tier_errors_total", "counter", "failures of the tier, by class",
               [(tier(row) + f',class="{kind}"', count) for row in rows for kind, count in row["errors"].items()])
        metric("tier_rejected_total", "counter", "bodies from the tier that failed their check",
               [(tier(row), row["rejected"]) for row in rows])
        samples = [(tier(row) + f',quantile="{quantile}"', row[key] / 1000) for row in rows
                   for quantile, key in (("0.5", "p50_ms"), ("0.95", "p95_ms")) if row[key] is not None]
        if samples:
            metric("tier_latency_seconds", "gauge", "request time, at the quantile, of the last 2048 requests", samples)
    return "\n".join(out) + "\n"
