"""``s3://BUCKET/PREFIX?endpoint=URL&region=R&profile=P``: an S3-compatible store as a tier.

Requests are path-style (``ENDPOINT/BUCKET/KEY``), which every S3-compatible server
(MinIO, Ceph RGW, SeaweedFS) answers; ``endpoint`` may be plain ``http://`` (site stores
inside a cluster often are): every byte is checked against the store's manifest anyway.
Without ``endpoint``: AWS itself (``https://s3.REGION.amazonaws.com``).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

from .errors import UserError

OPTIONS = ("endpoint", "region", "profile")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or "a/b" (no slashes at the ends)
    endpoint: str  # scheme://host[:port], no slash at the end
    region: str
    profile: str | None

    @property
    def bucket_url(self) -> str:
        """The URL a ListObjectsV2 query goes to."""
        return f"{self.endpoint}/{quote(self.bucket, safe='')}"

    def key(self, parts: tuple[str, ...]) -> str:
        return "/".join([self.prefix, *parts]) if self.prefix else "/".join(parts)

    def object_url(self, parts: tuple[str, ...]) -> str:
        return f"{self.bucket_url}/{quote(self.key(parts), safe='/~')}"

    def display(self) -> str:
        """The tier as logs and status show it (no credentials: there are none in it)."""
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint}" if self.endpoint else "")


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def parse_s3(url: str) -> S3Location:
    """Parse an ``s3://`` tier URL; UserError, naming the fix, for one that cannot work."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise UserError(f"upstream URL {url!r} is not usable: write s3://BUCKET/PREFIX?endpoint=http://HOST:PORT")
    options = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UserError(f"upstream URL {url!r} is not usable: unknown option {unknown[0]!r}"
                        f" (an s3:// tier takes {', '.join(OPTIONS)})")
    region = options.get("region", ["us-east-1"])[-1] or "us-east-1"
    endpoint = options.get("endpoint", [""])[-1].rstrip("/")
    if not endpoint:
        endpoint = f"https://s3.{region}.amazonaws.com"
    elif urlsplit(endpoint).scheme not in ("http", "https") or not urlsplit(endpoint).netloc:
        raise UserError(f"upstream URL {url!r} is not usable: endpoint must be http://HOST[:PORT]"
                        " or https://HOST[:PORT]")
    profile = options.get("profile", [""])[-1] or None
    return S3Location(parts.netloc, parts.path.strip("/"), endpoint, region, profile)
