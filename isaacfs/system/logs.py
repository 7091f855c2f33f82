"""Logging for operators: one line per event, to stderr (journal) or the daemon's log file."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def state_dir(env: dict[str, str] | None = None) -> Path:
    """$XDG_STATE_HOME/isaacfs (default ~/.local/state/isaacfs), from ``env`` or this process's."""
    base = (os.environ if env is None else env).get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "isaacfs"


def log_path_for(mountpoint: Path, env: dict[str, str] | None = None) -> Path:
    """~/.local/state/isaacfs/<mountpoint, / as ->.log: /home/ada/IsaacLab/offline_assets logs to
    home-ada-IsaacLab-offline_assets.log."""
    name = str(mountpoint).strip("/").replace("/", "-") or "root"
    return state_dir(env) / f"{name}.log"


def setup(level: str = "INFO") -> None:
    # Under systemd the journal adds its own timestamps.
    fmt = "%(levelname)s %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
