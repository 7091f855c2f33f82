"""Logging for operators: one line per event, to stderr (journal) or the daemon's log file."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ..core.paths import shown


def state_dir(env: dict[str, str] | None = None) -> Path:
    """$XDG_STATE_HOME/isaacfs (default ~/.local/state/isaacfs), from ``env`` or this process's."""
    base = (os.environ if env is None else env).get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "isaacfs"


def log_path_for(mountpoint: Path, env: dict[str, str] | None = None) -> Path:
    """~/.local/state/isaacfs/<mountpoint, / as ->.log: /home/ada/IsaacLab/offline_assets logs to
    home-ada-IsaacLab-offline_assets.log."""
    name = str(mountpoint).strip("/").replace("/", "-") or "root"
    return state_dir(env) / f"{name}.log"


class EscapeNames(logging.Filter):
    """Every argument of a log line (a path, an upstream answer, an exception) is shown escaped:
    a name holding a newline or a terminal escape sequence stays on one harmless line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(arg if isinstance(arg, (int, float)) else shown(arg) for arg in record.args)
        return True


def setup(level: str = "INFO", requests: bool = False) -> None:
    """Log lines to stderr at ``level``; ``requests``: one line per upstream request too
    (``request_log``), whatever the level."""
    # Under systemd the journal adds its own timestamps.
    fmt = "%(levelname)s %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s.%(msecs)03d %(levelname)s %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(EscapeNames())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("isaacfs.requests").setLevel(logging.INFO if requests else logging.WARNING)
