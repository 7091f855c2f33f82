"""One validated relative-path type for every path that crosses a boundary.

A FUSE name, an upstream listing entry, a manifest line or a CLI argument becomes a
``RelPath`` before anything touches the disk or the network. A ``RelPath`` can never
climb out of the mirror: it has no ``..``, ``.`` or empty segments, no NUL or ``/``
inside a segment, and is never absolute. Legal odd names (spaces, ``%``, ``+``, ``#``,
unicode) are kept exactly as given.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidPath

# Linux NAME_MAX: a longer name cannot exist in the mirror's folder.
NAME_MAX_BYTES = 255
# isaacfs keeps its own state here, in the mirror's root; it is never part of the tree.
STATE_DIR_NAME = ".isaacfs"


def check_name(name: str) -> str:
    """Return ``name`` if it is one safe path segment, else raise InvalidPath."""
    if name in ("", ".", ".."):
        raise InvalidPath(f"illegal name {name!r}")
    if "/" in name or "\0" in name:
        raise InvalidPath(f"illegal character in name {name!r}")
    try:
        encoded = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise InvalidPath(f"unencodable name {name!r}") from exc
    if len(encoded) > NAME_MAX_BYTES:
        raise InvalidPath(f"name longer than {NAME_MAX_BYTES} bytes: {name[:40]!r}...")
    return name


def name_from_bytes(raw: bytes) -> str:
    """Decode a name as the kernel hands it (FUSE gives bytes); keeps undecodable bytes."""
    return check_name(raw.decode("utf-8", "surrogateescape"))


@dataclass(frozen=True, slots=True)
class RelPath:
    """A path relative to the asset root (and so to the mirror), as a tuple of names."""

    parts: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> RelPath:
        """Parse ``a/b/c``; surrounding slashes are tolerated, anything else unsafe is not."""
        if "\0" in text:
            raise InvalidPath("path contains NUL")
        stripped = text.strip("/")
        if not stripped:
            return ROOT
        if text.startswith("/"):
            raise InvalidPath(f"absolute path {text!r} where a relative one is needed")
        return cls(tuple(check_name(part) for part in stripped.split("/")))

    def child(self, name: str) -> RelPath:
        return RelPath((*self.parts, check_name(name)))

    @property
    def parent(self) -> RelPath:
        if not self.parts:
            raise InvalidPath("the root has no parent")
        return RelPath(self.parts[:-1])

    @property
    def name(self) -> str:
        return self.parts[-1] if self.parts else ""

    @property
    def is_root(self) -> bool:
        return not self.parts

    def is_state(self) -> bool:
        """True for isaacfs's own state folder at the root (never shown, never fetched)."""
        return bool(self.parts) and self.parts[0] == STATE_DIR_NAME

    def __str__(self) -> str:
        return "/".join(self.parts)


ROOT = RelPath(())


def shown(text: object) -> str:
    """``text`` as a log line or a terminal may show it: printable characters as they are
    (unicode included), a byte that is not UTF-8 as ``\\xNN``, control characters (newline,
    escape sequences) as Python escapes. One line, nothing a terminal would act on."""
    value = str(text)
    if value.isprintable():
        return value
    out = []
    for char in value:
        if char.isprintable():
            out.append(char)
        elif "\udc80" <= char <= "\udcff":
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


_LINE_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Unicode line breaks above ASCII (NEL, line and paragraph separators).
_LINE_BREAKS = frozenset("\x85\u2028\u2029")


def escape_line(path: str) -> str:
    """A path as one manifest line: backslash, newline, CR and tab escaped, other control
    characters and undecodable bytes as ``\\xNN``. ``unescape_line`` gives the path back exactly."""
    out = []
    for char in path:
        if char in _LINE_ESCAPES:
            out.append(_LINE_ESCAPES[char])
        elif "\udc80" <= char <= "\udcff":
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")  # escape sequences never reach a terminal raw
        elif char in _LINE_BREAKS:
            out.append(f"\\u{ord(char):04x}")  # str.splitlines() would break the line there
        else:
            out.append(char)
    return "".join(out)


def unescape_line(line: str) -> str:
    """The inverse of ``escape_line``; a line without backslashes is returned as it is."""
    if "\\" not in line:
        return line
    out, chars, index = [], line, 0
    simple = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
    while index < len(chars):
        char = chars[index]
        if char == "\\" and index + 1 < len(chars):
            follow = chars[index + 1]
            if follow in simple:
                out.append(simple[follow])
                index += 2
                continue
            if follow == "u" and _hex(chars[index + 2:index + 6], 4) and chr(int(chars[index + 2:index + 6], 16)) \
                    in _LINE_BREAKS:
                out.append(chr(int(chars[index + 2:index + 6], 16)))
                index += 6
                continue
            if follow == "x" and _hex(chars[index + 2:index + 4]):
                out.append(bytes([int(chars[index + 2:index + 4], 16)]).decode("utf-8", "surrogateescape"))
                index += 4
                continue
        out.append(char)
        index += 1
    return "".join(out)


def _hex(text: str, digits: int = 2) -> bool:
    return len(text) == digits and all(c in "0123456789abcdefABCDEF" for c in text)
