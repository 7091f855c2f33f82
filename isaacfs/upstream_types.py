"""What the upstream answers, as plain types: no omni.client here, so every layer may use them."""

from __future__ import annotations

from dataclasses import dataclass


class UpstreamError(Exception):
    """The upstream did not give what was asked; the message is one operator-readable line."""


class NotFound(UpstreamError):
    pass


class AccessDenied(UpstreamError):
    pass


class Unavailable(UpstreamError):
    """Connection refused or lost, a timeout, a stall, or the upstream is resting after one."""


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """One item of an upstream listing, with a validated name."""

    name: str
    is_dir: bool
    size: int
    mtime: float  # seconds since the epoch; 0 where the upstream gives none (S3 folders)
    etag: str  # S3 ETag (an MD5 for single-part objects) or provider version; "" if none


