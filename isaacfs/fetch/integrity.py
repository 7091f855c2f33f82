"""The one check a download passes before it is installed: its size, and its MD5 or S3
multipart ETag where the upstream's ETag is one.

Both transfer strategies (a whole body in one request, ranged parts) feed the same
:class:`BodyHash` with the file's bytes in order, and ask the same :func:`problem`.
"""

from __future__ import annotations

import hashlib
import math
import re

from ..core.types import RemoteEntry

MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
MULTIPART_ETAG = re.compile(r"^([0-9a-f]{32})-(\d+)$")
MIB = 1024 * 1024
# Part sizes uploaders use: the AWS CLI and SDKs (8 MiB), MinIO's clients (16 MiB), rclone
# (5 MiB up), s3cmd (15 MiB), boto3 TransferConfig variants, and decimal sizes.
KNOWN_PART_SIZES = (*(mib * MIB for mib in (5, 8, 10, 15, 16, 25, 32, 50, 64, 100, 128, 256, 512)),
                    5_000_000, 8_000_000, 10_000_000, 16_000_000, 50_000_000, 100_000_000)
MAX_CANDIDATES = 8


def multipart_candidates(size: int, parts: int) -> list[int]:
    """Part sizes that split ``size`` into ``parts`` parts, most likely first: exactly
    size/parts, then the part sizes uploaders use, then whole MiB from the smallest that fits;
    at most MAX_CANDIDATES (each costs an MD5 pass over the file)."""
    if parts <= 1:
        return [max(size, 1)]
    low = math.ceil(size / parts)
    high = (size - 1) // (parts - 1)
    if low > high:
        return []

    def fits(candidate: int) -> bool:
        return low <= candidate <= high and math.ceil(size / candidate) == parts

    found: list[int] = [low] if fits(low) else []
    found += [known for known in KNOWN_PART_SIZES if fits(known) and known not in found]
    mib = max(1, math.ceil(low / MIB))
    while len(found) < MAX_CANDIDATES and mib * MIB <= high:
        if fits(mib * MIB) and mib * MIB not in found:
            found.append(mib * MIB)
        mib += 1
    return found[:MAX_CANDIDATES]


class _PartHashes:
    """The MD5 of each part of a candidate multipart split, fed the file in order."""

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.digests: list[bytes] = []
        self._current = hashlib.md5(usedforsecurity=False)
        self._filled = 0

    def update(self, data: memoryview) -> None:
        while data:
            room = self.part_size - self._filled
            piece, data = data[:room], data[room:]
            self._current.update(piece)
            self._filled += len(piece)
            if self._filled == self.part_size:
                self.digests.append(self._current.digest())
                self._current, self._filled = hashlib.md5(usedforsecurity=False), 0

    def etag(self) -> str:
        digests = self.digests + ([self._current.digest()] if self._filled else [])
        return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


class BodyHash:
    """The MD5 of a body fed in order, and the multipart ETag its bytes give where the
    expected ETag is a multipart one (one candidate split per likely part size). ``update``
    may run in a worker thread (hashlib lets go of the GIL)."""

    def __init__(self, expected: RemoteEntry) -> None:
        self.expected = expected
        self.size = 0
        self._md5 = hashlib.md5(usedforsecurity=False)
        match = MULTIPART_ETAG.match(expected.etag)
        self._splits = ([_PartHashes(part) for part in multipart_candidates(expected.size, int(match.group(2)))]
                        if match else [])
        self._multipart = bool(match)

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self._md5.update(view)
        for split in self._splits:
            split.update(view)
        self.size += len(view)

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()

    def multipart(self) -> str:
        """The multipart ETag the bytes give: the expected one if any candidate split gives it."""
        etags = [split.etag() for split in self._splits]
        return self.expected.etag if self.expected.etag in etags else (etags[0] if etags else "?")

    def problem(self, size: int | None = None) -> str | None:
        """What is wrong with the body (``size``: the file's, where it is not what was fed),
        or None."""
        size = self.size if size is None else size
        expected = self.expected
        if size != expected.size:
            return f"size {size} differs from the listed {expected.size}"
        if MD5_ETAG.match(expected.etag) and self.md5 != expected.etag:
            return f"MD5 {self.md5} differs from the ETag {expected.etag}"
        if self._multipart and self.multipart() != expected.etag:
            return f"multipart ETag {self.multipart()} differs from the upstream's {expected.etag}"
        return None
