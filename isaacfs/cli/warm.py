"""What `isaacfs warm` shows, and where it runs: in the daemon of a live mount, or here.

Progress comes as events (the same from the daemon's socket or from this process):
an overall bar with per-file rows for downloads in flight on a terminal, a plain line
every few seconds otherwise; then the summary table.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ..control import server as control
from ..core.config import Settings, redact
from ..core.errors import UserError
from ..core.paths import shown
from ..core.units import size
from ..jobs.spec import WarmResult, WarmSpec
from ..jobs.warm import run
from ..jobs.workspace import run_on_mirror
from ..system import logs, mounts

PLAIN_EVERY = 5.0  # seconds between progress lines when not on a terminal


class WarmProgress:
    """Turns warm events into bars (terminal) or periodic lines (logs, CI)."""

    def __init__(self, console: Console, interactive: bool) -> None:
        self.console = console
        self.interactive = interactive
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), TimeElapsedColumn(),
                                 console=console, disable=not interactive, transient=True)
        self.overall = self.progress.add_task("planning", total=None)
        self.files: dict[str, TaskID] = {}
        self.total_files = 0  # known once planning ends; downloads start before that
        self.planned = False
        self.done_files = 0
        self.done_bytes = 0
        self.printed = time.monotonic()
        self.interrupted = False

    def __enter__(self) -> WarmProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "phase":
            self.progress.update(self.overall, description=str(event["text"]))
            if not self.interactive:
                print(f"isaacfs warm: {event['text']}", flush=True)
        elif kind == "plan":
            self.total_files = int(event["files"])
            self.planned = True
            self.progress.update(self.overall, total=int(event["bytes"]), description=self._overall_text())
            if not self.interactive:
                print(f"isaacfs warm: {self.total_files:,} files, {int(event['bytes']) / 1e6:,.1f} MB planned",
                      flush=True)
        elif kind == "start" and self.interactive:
            name = str(event["path"])
            shown = name if len(name) <= 60 else "…" + name[-59:]
            self.files[name] = self.progress.add_task(f"  {shown}", total=int(event["size"]) or None)
        elif kind == "done":
            self.done_files += 1
            self.done_bytes += int(event["size"])
            task = self.files.pop(str(event["path"]), None)
            if task is not None:
                self.progress.remove_task(task)
            self.progress.update(self.overall, advance=int(event["size"]), description=self._overall_text())
            if not self.interactive and time.monotonic() - self.printed >= PLAIN_EVERY:
                self.printed = time.monotonic()
                print(f"isaacfs warm: {self._count()} files, {self.done_bytes / 1e6:,.1f} MB", flush=True)

    def _count(self) -> str:
        return f"{self.done_files:,}/{self.total_files:,}" if self.planned else f"{self.done_files:,} (still planning)"

    def _overall_text(self) -> str:
        return f"warming {self._count()} files"


def render(console: Console, result: WarmResult, mirror: Path, mounted: bool) -> None:
    title = ("would fetch (dry run)" if result.dry_run else "isaacfs warm") + f" into {mirror}"
    table = Table(title=title)
    columns = ["category", "files", "size", "skipped (already there)", "fetched", "failed"]
    for column in columns:
        table.add_column(column, justify="left" if column == "category" else "right")
    for group in result.groups:
        table.add_row(group.name, f"{group.files:,}", size(group.size), f"{group.skipped:,}",
                      "-" if result.dry_run else f"{group.fetched:,}", f"{group.failed:,}")
    if len(result.groups) > 1:
        table.add_row("total", f"{sum(g.files for g in result.groups):,}", size(sum(g.size for g in result.groups)),
                      f"{sum(g.skipped for g in result.groups):,}",
                      "-" if result.dry_run else f"{sum(g.fetched for g in result.groups):,}",
                      f"{sum(g.failed for g in result.groups):,}", style="bold")
    console.print(table)
    fetched = sum(g.fetched_bytes for g in result.groups)
    rate = fetched / max(result.elapsed, 1e-6)
    console.print(f"elapsed {result.elapsed:.1f}s, fetched {size(fetched)} at {rate / 1e6:,.1f} MB/s;"
                  f" mirror {mirror}", soft_wrap=True)
    for note in result.notes[:50]:
        console.print(f"note: {shown(note)}", soft_wrap=True, markup=False)
    if len(result.notes) > 50:
        console.print(f"note: ... and {len(result.notes) - 50} more")
    for failure in result.failures[:20]:
        console.print(f"failed: {shown(failure)}", soft_wrap=True, markup=False)
    if len(result.failures) > 20:
        console.print(f"failed: ... and {len(result.failures) - 20} more")
    if result.stopped:
        console.print(result.stopped, soft_wrap=True, markup=False)
    if not result.dry_run and (result.ok or any(g.fetched or g.skipped for g in result.groups)):
        use = (f'eval "$(isaacfs env {mirror})"' if mounted
               else f'isaacfs mount {mirror} && eval "$(isaacfs env {mirror})"')
        console.print(f"use it with Isaac Lab: {use}", soft_wrap=True, markup=False)


def _daemon_of(mirror: Path, settings: Settings) -> bool:
    """True if ``mirror`` is a live isaacfs mount (its daemon does the work)."""
    if not mounts.live(mirror):
        return False
    if settings.sources.get("upstream") in ("flag", "--release"):
        try:
            serving = os.getxattr(mirror, "user.isaacfs.upstream").decode()
        except OSError:
            serving = settings.upstream
        if serving.rstrip("/") != redact(settings.upstream).rstrip("/"):
            raise UserError(f"{mirror} is mounted with upstream {redact(serving)}, not {redact(settings.upstream)};"
                            " its daemon warms from its own upstream (leave out --upstream/--release)")
    return True


def run_local(settings: Settings, mirror_dir: Path, spec: WarmSpec, emit: control.Emit) -> WarmResult:
    try:
        mirror_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the mirror folder {mirror_dir}: {exc.strerror}; pick a folder you can"
                        " write with --mirror DIR") from None
    return run_on_mirror(settings, mirror_dir, lambda workspace: run(workspace, spec, emit), read_only=spec.dry_run)


def _is_interrupt(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(KeyboardInterrupt) is not None
    return isinstance(exc, KeyboardInterrupt)


def warm_and_report(settings: Settings, mirror: Path, spec: WarmSpec) -> int:
    logs.setup("WARNING", settings.request_log)
    interactive = sys.stdout.isatty()
    # Not a terminal (a log, CI): wide enough that no row or path is wrapped.
    console = Console(width=None if interactive else 200)
    mounted = _daemon_of(mirror, settings)
    with WarmProgress(console, interactive) as progress:
        try:
            if mounted:
                answer = control.call(mirror, "warm", progress.event, timeout=None, spec=spec.__dict__)
                result = WarmResult.from_dict(answer)
            else:
                result = run_local(settings, mirror, spec, progress.event)
        except BaseException as exc:  # Ctrl-C; trio may deliver it inside a group
            if not _is_interrupt(exc):
                raise
            progress.interrupted = True
    if progress.interrupted:
        planned = f" of {progress.total_files:,}" if progress.total_files else ""
        # Through a mount, downloads the daemon had already started finish after this command
        # stops counting (they are kept): the count is what this command saw, not the mirror's.
        under_way = (f"; the {mirror} daemon finishes the downloads it had started, and keeps them (isaacfs"
                     " status counts them)") if mounted else ""
        print(f"isaacfs warm: interrupted with {progress.done_files:,}{planned} files seen done"
              f" ({progress.done_bytes / 1e6:,.1f} MB){under_way}; what was fetched is kept: run the same command"
              " again to continue", file=sys.stderr)
        return 130
    render(console, result, mirror, mounted)
    return 0 if result.ok else 1


def fill_and_report(settings: Settings, mirror: Path, spec: WarmSpec, store_url: str) -> int:
    """`warm --to s3://...`: warm into ``mirror`` (not a live mount: a filler keeps its own),
    then copy into the store and write its manifest."""
    from ..backends.s3store import S3Store
    from ..core.config import check_upstream_url
    from ..jobs.fill import fill

    if not store_url.startswith("s3://"):
        raise UserError(f"--to {store_url!r}: the store to fill is an s3://BUCKET/PREFIX?endpoint=URL")
    check_upstream_url(store_url)
    if spec.dry_run:
        raise UserError("--to copies into a store; --dry-run lists what a warm would fetch: give one of them")
    if mounts.live(mirror):
        raise UserError(f"{mirror} is a live mount; a filler warms its own mirror: give --mirror DIR (a folder"
                        " on this host) or unmount it")
    logs.setup("WARNING", settings.request_log)
    interactive = sys.stdout.isatty()
    console = Console(width=None if interactive else 200)
    store = S3Store(store_url, settings.upstream_timeout)
    try:
        mirror.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the mirror folder {mirror}: {exc.strerror}; pick a folder you can"
                        " write with --mirror DIR") from None
    with WarmProgress(console, interactive) as progress:
        try:
            result = run_on_mirror(settings, mirror, lambda ws: fill(ws, spec, store, progress.event,
                                                                     settings.fetch_jobs))
        except BaseException as exc:
            if not _is_interrupt(exc):
                raise
            progress.interrupted = True
        finally:
            store.close()
    if progress.interrupted:
        print("isaacfs warm: interrupted; the store's manifest is as it was (nothing half written is visible):"
              " run the same command again to continue", file=sys.stderr)
        return 130
    render(console, result.warm, mirror, False)
    table = Table(title=f"copied into {result.store}")
    for column in ("category", "files", "uploaded", "already there", "failed", "uploaded size"):
        table.add_column(column, justify="left" if column == "category" else "right")
    for row in result.rows:
        table.add_row(row.name, f"{row.files:,}", f"{row.uploaded:,}", f"{row.present:,}", f"{row.failed:,}",
                      size(row.uploaded_bytes))
    console.print(table)
    for failure in result.failures[:20]:
        console.print(f"failed: {shown(failure)}", soft_wrap=True, markup=False)
    if result.manifest_id:
        console.print(f"manifest {result.manifest_id} ({result.manifest_files:,} files) written to {result.store};"
                      f" nodes use it with: isaacfs mount --upstream '{store_url}' --upstream {settings.upstream}",
                      soft_wrap=True, markup=False)
    return 0 if result.ok else 1
