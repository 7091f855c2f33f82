"""What the backends hand the router before names are checked."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..core.errors import InvalidPath
from ..core.paths import RelPath, check_name
from ..core.types import RemoteEntry

log = logging.getLogger("isaacfs.upstream")

# (name as listed, None if not UTF-8; how to make its entry once the name is checked)
Listing = list[tuple[str | None, Callable[[str], RemoteEntry]]]
# every folder below a root, with its entries
Folders = dict[RelPath, list[RemoteEntry]]


def checked_entries(listed: Listing, rel: RelPath) -> dict[str, RemoteEntry]:
    """The entries of a listing of ``rel`` whose names are safe, by name; the others are
    skipped with a log line. Some providers mark folders with one trailing slash; any other
    slash is hostile. A name listed as both file and folder is kept as the folder."""
    entries: dict[str, RemoteEntry] = {}
    for raw, make in listed:
        if raw is None:
            log.warning("skipped upstream entry in %s/: its name is not UTF-8", rel or "")
            continue
        if raw == "":
            continue  # an S3 folder marker (a key ending in a slash): the folder itself
        try:
            name = check_name(raw[:-1] if raw.endswith("/") else raw)
        except InvalidPath as exc:
            log.warning("skipped upstream entry in %s/: %s", rel or "", exc)
            continue
        entry = make(name)
        if name in entries and entries[name].is_dir != entry.is_dir:
            log.warning("upstream %s/ lists %r as both file and folder; keeping the folder", rel or "", name)
            if not entry.is_dir:
                continue
        entries[name] = entry
    return entries
