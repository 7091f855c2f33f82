"""Numbers as people read them: sizes in B/KB/MB/GB and counted nouns."""

from __future__ import annotations


def size(count: int) -> str:
    """``512 B``, ``1.4 KB``, ``12.0 MB``, ``1.25 GB`` (decimal units, as downloads are shown)."""
    if count < 1000:
        return f"{count} B"
    for unit, scale in (("KB", 1e3), ("MB", 1e6)):
        if count < scale * 1000:
            return f"{count / scale:,.1f} {unit}"
    return f"{count / 1e9:,.2f} GB"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 file``, ``2 files``, ``1,000 files``."""
    return f"{count:,} {noun if count == 1 else (nouns or noun + 's')}"
