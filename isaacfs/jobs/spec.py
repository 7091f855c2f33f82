"""What a warm asks for and what it reports: the plain types that cross the control socket."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.errors import InvalidPath, UserError
from ..core.paths import RelPath, unescape_line

Emit = Callable[[dict[str, Any]], None]


@dataclass
class WarmSpec:
    """What one warm asks for; crosses the control socket as a plain dict."""

    categories: list[str] = field(default_factory=list)
    subsets: list[str] = field(default_factory=list)
    manifest: list[str] | None = None  # the lines of a manifest file
    manifest_name: str = ""
    closure: list[str] = field(default_factory=list)
    from_misses: bool = False
    dry_run: bool = False
    listing_ttl: float | None = None  # trust stored listings this long (None: the mount's own TTL)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WarmSpec:
        try:
            spec = cls(**{key: data[key] for key in asdict(cls()) if key in data})
        except TypeError as exc:
            raise UserError(f"malformed warm request: {exc}") from None
        lists = (spec.categories, spec.subsets, spec.closure, spec.manifest or [])
        if not all(isinstance(items, list) and all(isinstance(i, str) for i in items) for items in lists):
            raise UserError("malformed warm request: lists of strings expected")
        if spec.listing_ttl is not None and not (isinstance(spec.listing_ttl, (int, float)) and spec.listing_ttl >= 0):
            raise UserError("malformed warm request: listing_ttl must be a number of seconds")
        return spec

    def describe(self) -> str:
        parts = []
        if self.categories:
            parts.append("categories " + " ".join(self.categories))
        if self.subsets:
            parts.append("subset " + " ".join(self.subsets))
        if self.manifest is not None:
            parts.append(f"manifest {self.manifest_name or '-'}")
        if self.closure:
            parts.append("closure of " + " ".join(self.closure))
        if self.from_misses:
            parts.append("recorded misses")
        return ", ".join(parts) or "nothing"


@dataclass
class GroupReport:
    """One row of the summary table: a category, or the category of listed paths."""

    name: str
    files: int = 0
    size: int = 0
    fetched: int = 0
    fetched_bytes: int = 0
    skipped: int = 0
    failed: int = 0


@dataclass
class WarmResult:
    groups: list[GroupReport] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "path: why"
    notes: list[str] = field(default_factory=list)  # malformed lines, not offline dependencies
    stopped: str = ""  # why the run stopped early (a full disk)
    elapsed: float = 0.0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WarmResult:
        groups = [GroupReport(**group) for group in data.get("groups", [])]
        return cls(groups, data.get("failures", []), data.get("notes", []), data.get("stopped", ""),
                   data.get("elapsed", 0.0), data.get("dry_run", False))

    @property
    def ok(self) -> bool:
        return not self.failures and not self.stopped


def parse_manifest(lines: list[str], name: str) -> tuple[list[RelPath], list[str]]:
    """Paths of a manifest (one per line, # comments); malformed lines are reported, not fatal."""
    paths: list[RelPath] = []
    problems: list[str] = []
    for number, raw in enumerate(lines, 1):
        text = raw.strip(" \t\r\n")  # ASCII only: U+2028, U+0085 ... may stand in a name
        if not text or text.startswith("#"):
            continue
        text = unescape_line(text)
        try:
            rel = RelPath.parse(text.lstrip("/") if text.startswith("/") else text)
            if rel.is_root or rel.is_state():
                raise InvalidPath("names no asset")
        except InvalidPath as exc:
            problems.append(f"{name}:{number}: skipped malformed line {text[:200]!r}: {exc}")
            continue
        paths.append(rel)
    return paths, problems
