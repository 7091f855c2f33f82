"""An ``s3://BUCKET/PREFIX?endpoint=URL`` tier: a site's S3-compatible store (MinIO, Ceph
RGW, SeaweedFS) or a bucket on AWS, read over isaacfs's own kept-alive HTTP pool, signed
(SigV4, botocore) when the AWS credential chain finds credentials, anonymous otherwise."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

import trio

from ..core.errors import ConnectionLost, NotFound, UserError
from ..core.health import Health
from ..core.manifest import MANIFEST_PATH
from ..core.paths import RelPath, shown
from ..core.retry import RetryPolicy
from ..core.s3url import S3Location, parse_s3
from ..core.types import OnData, RemoteEntry, Sink, TierRows
from .entries import Folders, checked_entries
from .s3 import HTTP_RETRY, S3Http
from .signing import Signer


class S3Upstream:
    kind = "s3"

    def __init__(self, url: str, timeout: float, stall_timeout: float, retry_after: float,
                 front: bool = False) -> None:
        self.location: S3Location = parse_s3(url)
        self.root_url = url.split("?", 1)[0].rstrip("/")
        self.name = self.location.display()
        self.timeout = timeout
        self.health = Health(self.name, retry_after)
        try:
            self.signer = Signer(self.location.region, self.location.profile)
        except ValueError as exc:
            raise UserError(f"{self.name}: {exc}; fix the AWS profile or its files") from None
        self.s3 = S3Http(self.name, self.location.bucket_url, self.location.prefix, self.health, timeout,
                         stall_timeout, sign=None if self.signer.anonymous else self.signer.headers, explicit=True,
                         retry=RetryPolicy(tries=1) if front else HTTP_RETRY)

    @property
    def available(self) -> bool:
        return self.health.available

    @property
    def ranged(self) -> bool:
        return True

    @property
    def reads_unlisted(self) -> bool:
        return True

    @property
    def body_in_memory(self) -> bool:
        return False

    @property
    def download_path(self) -> str:
        return (f"S3 at {self.location.endpoint}, {self.signer.described}: listings, GETs and ranged"
                " parts over urllib3, kept alive")

    def url_for(self, rel: RelPath) -> str:
        return self.location.object_url(rel.parts)

    async def list(self, rel: RelPath, fresh: bool = False) -> list[RemoteEntry]:
        listed = await self.s3.list(rel, f"list {rel or '/'}")
        assert listed is not None  # an explicit tier lists or raises
        return list(checked_entries(listed, rel).values())

    async def stat(self, rel: RelPath, fresh: bool = False) -> RemoteEntry:
        what = f"stat {shown(rel)}"
        headers = await self.s3.pool.head(self.url_for(rel), what)
        if headers is None:
            raise NotFound(f"{what}: not found upstream")
        folded = {key.lower(): value for key, value in headers.items()}
        try:
            mtime = parsedate_to_datetime(folded.get("last-modified", "")).timestamp()
        except (TypeError, ValueError):
            mtime = 0.0
        return RemoteEntry(rel.name, False, int(folded.get("content-length", "0")), max(0.0, mtime),
                           folded.get("etag", "").removeprefix("W/").strip('"'))

    async def probe(self, rel: RelPath, timeout: float) -> None:
        """A signed listing of the store's own folder (a few keys): any answer but a refusal
        is an answer; a wrong key is AccessDenied naming the store's reason
        (SignatureDoesNotMatch, InvalidAccessKeyId)."""
        with trio.move_on_after(timeout):
            await self.s3.pool.list_folder(self.location.bucket_url, self.location.key(MANIFEST_PATH.parent.parts),
                                           "probe")
            return
        raise ConnectionLost(f"probe: upstream unavailable (no answer within {timeout:g}s)")

    async def download(self, rel: RelPath, size: int, sink: Sink, etag: str = "") -> None:
        what = f"fetch {shown(rel)}"
        self.health.check(what)
        if size > 0:
            await self.s3.download(self.url_for(rel), size, sink, what, etag)

    async def read_range(self, rel: RelPath, start: int, end: int, on_data: OnData,
                         etag: str = "", size: int = -1) -> None:
        await self.s3.read_range(self.url_for(rel), start, end, f"fetch {shown(rel)}", on_data, etag, size)

    async def walk(self, rel: RelPath, max_files: int = 5000, partial: bool = False) -> Folders | None:
        return await self.s3.walk(rel, max_files, partial)

    async def connect_ahead(self, count: int) -> None:
        await self.s3.connect_ahead(count)

    def tier_rows(self) -> TierRows:
        return []

    def rejected(self, rel: RelPath, why: str) -> None:
        """One upstream: nothing to fail over to (the fetcher lists afresh and tries again)."""

    async def aclose(self) -> None:
        await self.s3.aclose()
