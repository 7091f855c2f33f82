"""The category model: which `isaacfs warm --categories C --subset S` covers a path, and back."""

from __future__ import annotations

import shlex

from .errors import InvalidPath, UserError
from .paths import RelPath


def looks_like_file(name: str) -> bool:
    stem, dot, suffix = name.rpartition(".")
    return bool(dot and stem and suffix and len(suffix) <= 5)


def category_of(rel: RelPath) -> tuple[str, str | None]:
    """(category, subset) as `isaacfs warm` takes them, for the folder holding ``rel``.

    Categories are folders under ``Isaac/`` (``Robots``, ``IsaacLab/Robots``) or full
    paths from the root (``NVIDIA/Materials``); the subset is the next folder down.
    """
    parts = rel.parts
    if not parts:
        return "all", None
    if parts[0] == "Isaac":
        rest = parts[1:]
        depth = 2 if rest[:1] == ("IsaacLab",) else 1
        category_parts, remainder = rest[:depth], rest[depth:]
        category = "/".join(category_parts) if category_parts else "all"
    else:
        category_parts, remainder = parts[:2], parts[2:]
        category = "/".join(category_parts)
    if category_parts and looks_like_file(category_parts[-1]):
        # A file directly in a category's parent: warm the parent.
        category = "/".join(("Isaac", *category_parts[:-1])) if parts[0] == "Isaac" else "/".join(category_parts[:-1])
        return category or "all", None
    subset = remainder[0] if remainder else None
    if subset is not None and len(remainder) == 1 and looks_like_file(subset):
        subset = None
    return category, subset


def warm_command(rel: RelPath, mount: str = "") -> str:
    """The command that fetches ``rel``'s category (and subset), into ``mount`` where given:
    a command printed for a mount other than the default must act on that mount."""
    category, subset = category_of(rel)
    target = f" {shlex.quote(mount)}" if mount else ""
    command = f"isaacfs warm{target} --categories {shlex.quote(category)}"
    if subset:
        command += f" --subset {shlex.quote(subset)}"
    return command


def category_root(category: str) -> RelPath:
    """`Robots` and `IsaacLab/Robots` are under Isaac/; `Isaac/...`, `NVIDIA/...` are from the root."""
    if category == "all":
        return RelPath(("Isaac",))
    try:
        rel = RelPath.parse(category)
    except InvalidPath as exc:
        raise UserError(f"category {category!r} is not a valid path: {exc}") from None
    if rel.is_root:
        raise UserError("an empty category; use `all` for everything (Isaac/ and NVIDIA/)")
    return rel if rel.parts[0] in ("Isaac", "NVIDIA") else RelPath(("Isaac", *rel.parts))
