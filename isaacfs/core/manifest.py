"""A store's manifest: every file a filled tier holds (size, MD5, the source's ETag and
mtime), the folders it holds whole, where it was filled from. ``warm --to`` writes it last,
as the commit point; nodes read it to know what the tier holds without asking it, to answer
listings of whole folders with no request, and to check every byte the tier serves against
the hash the filler computed from the source (a tier whose objects are wrong, stale or cut
short cannot poison a node).

It lives in the store at ``PREFIX/.isaacfs/manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from .errors import InvalidPath
from .paths import STATE_DIR_NAME, RelPath
from .types import RemoteEntry

FORMAT = "isaacfs-manifest/1"
MANIFEST_PATH = RelPath((STATE_DIR_NAME, "manifest.json"))


class ManifestError(ValueError):
    """A manifest that cannot be read: the tier is used as if it had none."""


@dataclass(frozen=True, slots=True)
class Held:
    size: int
    md5: str
    etag: str  # the source's ETag when it was copied ("" if it had none)
    mtime: float


@dataclass
class Manifest:
    source: str
    created: str
    files: dict[RelPath, Held] = field(default_factory=dict)
    complete: set[RelPath] = field(default_factory=set)  # folders held whole (every name below them)
    id: str = ""
    _children: dict[RelPath, dict[str, RemoteEntry]] | None = field(default=None, repr=False)

    # -- what nodes ask --------------------------------------------------------------
    def is_complete(self, folder: RelPath) -> bool:
        """Whether every name below ``folder`` (at the source, when filled) is held."""
        current = folder
        while True:
            if current in self.complete:
                return True
            if current.is_root:
                return False
            current = current.parent

    def entries(self, folder: RelPath) -> dict[str, RemoteEntry]:
        """The names the manifest holds directly in ``folder`` (files with the manifest's MD5
        as their ETag: the hash every body from this tier is checked against)."""
        if self._children is None:
            children: dict[RelPath, dict[str, RemoteEntry]] = {}
            for rel, held in self.files.items():
                children.setdefault(rel.parent, {})[rel.name] = RemoteEntry(rel.name, False, held.size, held.mtime,
                                                                            held.md5)
                parent = rel.parent
                while not parent.is_root:
                    children.setdefault(parent.parent, {}).setdefault(
                        parent.name, RemoteEntry(parent.name, True, 0, 0.0, ""))
                    parent = parent.parent
            for folder_rel in self.complete:  # a folder held whole may be empty
                if not folder_rel.is_root:
                    children.setdefault(folder_rel.parent, {}).setdefault(
                        folder_rel.name, RemoteEntry(folder_rel.name, True, 0, 0.0, ""))
            self._children = children
        return dict(self._children.get(folder, {}))

    def holds(self, rel: RelPath, size: int, etag: str) -> Held | None:
        """The held copy of ``rel`` if it is the version asked for: the same size and, with an
        ETag, the same hash (the manifest's MD5, or the source's ETag it was copied under)."""
        held = self.files.get(rel)
        if held is None or held.size != size or (etag and etag not in (held.md5, held.etag)):
            return None
        return held

    # -- the file --------------------------------------------------------------------
    def to_json(self) -> bytes:
        files = {str(rel): [held.size, held.md5, held.etag, held.mtime]
                 for rel, held in sorted(self.files.items(), key=lambda item: item[0].parts)}
        body = {"files": files, "complete": sorted(str(rel) for rel in self.complete)}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=True).encode()).hexdigest()
        self.id = digest[:16]
        return json.dumps({"format": FORMAT, "id": self.id, "source": self.source, "created": self.created,
                           **body}, ensure_ascii=True, indent=0).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("format") != FORMAT:
                found = raw.get("format") if isinstance(raw, dict) else None
                raise ManifestError(f"not an isaacfs manifest (format {found!r}, not {FORMAT!r})")
            files: dict[RelPath, Held] = {}
            for text, (size, md5, etag, mtime) in raw["files"].items():
                files[RelPath.parse(text)] = Held(int(size), str(md5), str(etag), float(mtime))
            complete = {RelPath.parse(str(text)) for text in raw.get("complete", [])}
            return cls(str(raw.get("source", "")), str(raw.get("created", "")), files, complete, str(raw.get("id", "")))
        except ManifestError:
            raise
        except (ValueError, TypeError, KeyError, InvalidPath) as exc:
            raise ManifestError(f"the manifest cannot be read: {type(exc).__name__}: {exc}") from None
