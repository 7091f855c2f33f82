"""What the backends hand the router before names are checked."""

from __future__ import annotations

from collections.abc import Callable

from ..core.paths import RelPath
from ..core.types import RemoteEntry

# (name as listed, None if not UTF-8; how to make its entry once the name is checked)
Listing = list[tuple[str | None, Callable[[str], RemoteEntry]]]
# every folder below a root, with its entries
Folders = dict[RelPath, list[RemoteEntry]]
