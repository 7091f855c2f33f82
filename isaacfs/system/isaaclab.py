"""Pointing Isaac Lab at a mount, for every version a lab runs, without changing its code.

- Isaac Lab 3.x / Isaac Sim 6.x read ``ISAACSIM_ASSET_ROOT`` first: ``env_line``.
- Isaac Lab 2.x (Kit, Isaac Sim 5.x) reads the Kit setting
  ``/persistent/isaac/asset_root/cloud``: ``kit_args``.
- ``configure`` makes it permanent for a checkout: the asset-root lines of its
  ``apps/*.kit`` files get the mount's path, each changed line carrying its original
  (JSON-escaped) in a trailing marker, so ``undo`` restores every file byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError

SETTINGS = ("default", "cloud", "nvidia")
MARKER = "  # isaacfs-was: "
_LINE = re.compile(r'^(\s*persistent\.isaac\.asset_root\.(default|cloud|nvidia)\s*=\s*)"([^"]*)"(.*)$')
_RELEASE = re.compile(r"/Assets/Isaac/(\d+\.\d+)/?$")


def env_line(mount: Path) -> str:
    return f"export ISAACSIM_ASSET_ROOT={shlex.quote(str(mount))}"


def kit_args(mount: Path) -> str:
    return " ".join(f"--/persistent/isaac/asset_root/{name}={shlex.quote(str(mount))}" for name in SETTINGS)


def release_of(url: str) -> str | None:
    match = _RELEASE.search(url)
    return match.group(1) if match else None


@dataclass
class Change:
    path: Path
    lines: int


def _kit_files(checkout: Path) -> list[Path]:
    apps = checkout / "apps"
    if not apps.is_dir():
        raise UserError(f"{checkout} is not an Isaac Lab checkout: it has no apps/ folder with .kit files")
    return sorted(apps.glob("*.kit"))


def _split(raw: str) -> tuple[str, str]:
    body = raw.rstrip("\r\n")
    return body, raw[len(body):]


def _original(body: str) -> str | None:
    """The line as it was before isaacfs changed it, if it carries the marker."""
    return json.loads(body.split(MARKER, 1)[1]) if MARKER in body else None


def _rewrite(checkout: Path, rewrite_line: Callable[[str], str]) -> list[Change]:
    """Apply ``rewrite_line`` to every line (without its ending) of the checkout's kit files;
    write back, atomically, the files where a line changed."""
    changes = []
    for kit in _kit_files(checkout):
        raw_lines = kit.read_text(encoding="utf-8").splitlines(keepends=True)
        count = 0
        for number, raw in enumerate(raw_lines):
            body, ending = _split(raw)
            new = rewrite_line(body)
            if new != body:
                raw_lines[number] = new + ending
                count += 1
        if count:
            _replace(kit, "".join(raw_lines))
            changes.append(Change(kit, count))
    return changes


def configure(checkout: Path, mount: Path) -> tuple[list[Change], set[str]]:
    """Point every asset-root line at ``mount``; return the changes and the releases the checkout expected."""
    releases: set[str] = set()

    def point_at_mount(body: str) -> str:
        original = _original(body)
        if original is None:
            original = body
        match = _LINE.match(original)
        if match is None:
            return body
        release = release_of(match.group(3))
        if release:
            releases.add(release)
        return f'{match.group(1)}"{mount}"{match.group(4)}{MARKER}{json.dumps(original, ensure_ascii=False)}'

    return _rewrite(checkout, point_at_mount), releases


def undo(checkout: Path) -> list[Change]:
    def restore(body: str) -> str:
        original = _original(body)
        return body if original is None else original

    return _rewrite(checkout, restore)


def _replace(path: Path, text: str) -> None:
    """Write atomically, keeping the file's mode."""
    temp = path.with_name(f".{path.name}.isaacfs-tmp")
    temp.write_text(text, encoding="utf-8")
    os.chmod(temp, path.stat().st_mode & 0o7777)
    os.replace(temp, path)
