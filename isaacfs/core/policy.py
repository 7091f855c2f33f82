"""What each mode lets a process see, and how a miss is reported.

strict: only what the mirror holds exists; a missing path is answered at once, logged
once with the command that fetches it, and recorded in the index. permissive: what
the upstream lists exists too. Strict mode's "ghost" folders let the kernel's
name-by-name walk reach the whole missing path, so the miss names it.
"""

from __future__ import annotations

import logging
from typing import Protocol

from .categories import looks_like_file
from .paths import RelPath
from .types import Mode

log = logging.getLogger("isaacfs")

# Names desktops and shells probe on every mount; their absence is not an asset miss.
PROBE_NAMES = frozenset({".Trash", ".xdg-volume-info", "autorun.inf", ".hidden", ".directory", "desktop.ini"})
MAX_REMEMBERED_MISSES = 10_000
MAX_GHOST_DEPTH = 16
# Ghost folders live as long as the mount; past this many, a missing folder is a plain
# "no such name" again, so a probe storm of made-up names cannot grow the daemon.
MAX_GHOSTS = 20_000
MISS_LOG_BURST = 100  # strict-mode miss reports logged per minute


class NodeState(Protocol):
    @property
    def cached(self) -> bool: ...

    @property
    def ghost(self) -> bool: ...

    @property
    def remote(self) -> object | None: ...


# Names that tools look for in any folder they pass (version control, Python's import
# system when a process runs inside the mount, desktops): never assets.
NOT_ASSET_NAMES = frozenset({".git", ".svn", ".hg", ".bzr", "HEAD", "__pycache__", ".DS_Store", "Thumbs.db",
                             "pyvenv.cfg", "sitecustomize.py", "usercustomize.py", ".gitignore", ".gitmodules"})
NOT_ASSET_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so", ".pth", ".egg-link", ".egg-info", ".dist-info")


def is_probe(rel: RelPath) -> bool:
    """A name probed by desktops, shells, version control or Python's import system, or
    isaacfs's own state: answered "no such name" but never recorded or offered as a miss."""
    name = rel.name
    return (name in PROBE_NAMES or name in NOT_ASSET_NAMES or name.startswith(".Trash-")
            or name.endswith(NOT_ASSET_SUFFIXES) or any(part in NOT_ASSET_NAMES for part in rel.parts[:-1])
            or rel.is_state())


def visible(node: NodeState, mode: Mode) -> bool:
    if mode == "strict":
        return node.cached or node.ghost
    return node.cached or node.remote is not None or not node.ghost


def may_ghost(rel: RelPath, node: NodeState | None, mode: Mode, ghosts: int, listed: bool | None) -> bool:
    """Whether a missing name is answered as an empty, unlisted folder the kernel forgets soon.

    The kernel walks a path one name at a time: without this, a strict miss of
    Isaac/Robots/X/x.usd in an empty mirror would be reported as a miss of "Isaac".
    ``listed``: whether a stored upstream listing of the parent names it as a folder (None:
    no listing of the parent is known). A name the upstream is known to hold as a file, or
    known not to hold, is never a ghost; with no listing known, a name without a file
    suffix may be one (the ghost itself is recorded as a miss until a deeper one replaces it).
    """
    if not (mode == "strict" and (node is None or not node.cached) and len(rel.parts) <= MAX_GHOST_DEPTH
            and (node is not None or ghosts < MAX_GHOSTS) and not is_probe(rel)):
        return False
    remote = getattr(node, "remote", None)
    if remote is not None:
        return bool(getattr(remote, "is_dir", False))
    if listed is not None:
        return listed
    return not looks_like_file(rel.name)
