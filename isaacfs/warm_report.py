"""What `isaacfs warm` shows: progress while it runs, a summary table at the end."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from . import logs, warm
from .config import Settings
from .paths import RelPath


def run_and_report(settings: Settings, mirror: Path, categories: list[str], subsets: list[str],
                   dry_run: bool) -> int:
    logs.setup("WARNING")
    interactive = sys.stdout.isatty()
    # Not a terminal (a log, CI): wide enough that no row or path is wrapped.
    console = Console(width=None if interactive else 200)
    progress = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                        DownloadColumn(), TimeRemainingColumn(), console=console, disable=not interactive)
    task = progress.add_task("warming", total=None)
    done = {"files": 0, "bytes": 0, "printed": time.monotonic()}

    def on_file(_rel: RelPath, size: int) -> None:
        done["files"] += 1
        done["bytes"] += size
        progress.update(task, advance=1)
        if not interactive and time.monotonic() - done["printed"] > 5:
            done["printed"] = time.monotonic()
            print(f"isaacfs warm: {done['files']} files, {done['bytes'] / 1e6:.1f} MB", flush=True)

    with progress:
        reports, elapsed = warm.run(settings, mirror, categories, subsets, dry_run, on_file)
    table = Table(title=("would fetch (dry run)" if dry_run else "isaacfs warm") + f" into {mirror}")
    for column in ("category", "files", "size", "skipped (already there)", "fetched", "failed"):
        table.add_column(column, justify="left" if column == "category" else "right")
    for report in reports:
        table.add_row(report.name, f"{report.files:,}", f"{report.size / 1e6:,.1f} MB", f"{report.skipped:,}",
                      "-" if dry_run else f"{report.fetched:,}", "-" if dry_run else f"{report.failed:,}")
    console.print(table)
    total = sum(r.size for r in reports)
    console.print(f"elapsed {elapsed:.1f}s, {total / 1e6 / max(elapsed, 1e-6):,.1f} MB/s of planned bytes")
    failures = [line for report in reports for line in report.failures]
    for line in failures[:20]:
        console.print(f"failed: {line}")
    if not dry_run:
        console.print(f"use it with Isaac Lab 3.x: export ISAACSIM_ASSET_ROOT={mirror}", soft_wrap=True)
    return 1 if failures else 0
