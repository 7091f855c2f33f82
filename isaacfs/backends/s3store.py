"""Writing to an ``s3://`` store: the filler's side of a site tier (``warm --to``).

Every PUT carries ``Content-MD5``, which the server checks before it keeps the object; a
file above ``MULTIPART_BYTES`` goes up in parts (each with its own ``Content-MD5``) that
become visible only at ``CompleteMultipartUpload``, and an upload that fails is aborted,
so no partial object is ever seen. Each object carries its whole MD5 as metadata
(``x-amz-meta-isaacfs-md5``), so a later fill skips it with one HEAD. Requests are signed
with botocore's SigV4 (``signing.py``). Blocking calls: the fill job runs them in worker
threads.
"""

from __future__ import annotations

import base64
import hashlib
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3

from ..core.errors import AccessDenied, ConnectionLost, Unavailable, UpstreamError, UserError
from ..core.paths import RelPath
from ..core.s3url import parse_s3
from .http import connect_failure, s3_error_code
from .signing import Signer

MULTIPART_BYTES = 64 * 1024 * 1024  # larger files go up in parts
PART_BYTES = 16 * 1024 * 1024
MD5_META = "x-amz-meta-isaacfs-md5"


def _b64md5(data: bytes | memoryview) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


class S3Store:
    def __init__(self, url: str, timeout: float, connections: int = 32) -> None:
        self.location = parse_s3(url)
        self.name = self.location.display()
        try:
            self.signer = Signer(self.location.region, self.location.profile)
        except ValueError as exc:
            raise UserError(f"{self.name}: {exc}; fix the AWS profile or its files") from None
        self.timeout = timeout
        self.pool = urllib3.PoolManager(maxsize=connections, block=True, retries=False,
                                        timeout=urllib3.Timeout(connect=timeout, read=max(timeout, 60.0)))

    def url(self, rel: RelPath) -> str:
        return self.location.object_url(rel.parts)

    def _send(self, method: str, url: str, what: str, body: bytes | memoryview = b"",
              headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        data = bytes(body)
        signed = self.signer.headers(method, url, {"User-Agent": "isaacfs", **(headers or {})}, data)
        try:
            reply = self.pool.request(method, url, body=data or None, headers=signed, redirect=False)
        except urllib3.exceptions.ReadTimeoutError:
            raise Unavailable(f"{what}: the store did not answer within {self.timeout:g}s") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ConnectionLost(f"{what}: store unavailable ({connect_failure(exc)})") from None
        if reply.status in (401, 403):
            code = s3_error_code(reply.data)
            raise AccessDenied(f"{what}: the store refused it (HTTP {reply.status}{' ' + code if code else ''});"
                               " the filler needs credentials that may write this bucket (AWS_ACCESS_KEY_ID /"
                               " AWS_SECRET_ACCESS_KEY or AWS_PROFILE)")
        if reply.status >= 500:
            raise Unavailable(f"{what}: the store failed (HTTP {reply.status} {s3_error_code(reply.data)})")
        if reply.status == 400 and s3_error_code(reply.data) in ("BadDigest", "InvalidDigest"):
            raise Unavailable(f"{what}: the store received other bytes than were sent (BadDigest)")
        return reply

    # -- reading what is there -------------------------------------------------------
    def held_md5(self, rel: RelPath, size: int) -> str | None:
        """The MD5 the store's object carries (its metadata, or a single PUT's ETag), if it
        is there with ``size`` bytes."""
        what = f"HEAD {rel}"
        reply = self._send("HEAD", self.url(rel), what)
        if not _there(reply, what):
            return None
        headers = {key.lower(): value for key, value in reply.headers.items()}
        if headers.get("content-length") != str(size):
            return None
        etag = headers.get("etag", "").strip('"')
        return headers.get(MD5_META) or (etag if len(etag) == 32 and "-" not in etag else None)

    def get(self, rel: RelPath) -> bytes | None:
        what = f"GET {rel}"
        reply = self._send("GET", self.url(rel), what)
        return bytes(reply.data) if _there(reply, what) else None

    # -- writing ---------------------------------------------------------------------
    def put_bytes(self, rel: RelPath, data: bytes, content_type: str = "application/octet-stream") -> None:
        md5 = hashlib.md5(data).hexdigest()
        self._put(rel, data, md5, content_type)

    def put_file(self, rel: RelPath, path: Path, md5: str, size: int) -> None:
        """Upload ``path`` (``size`` bytes whose MD5 is ``md5``) as ``rel``."""
        if size <= MULTIPART_BYTES:
            data = path.read_bytes()
            if len(data) != size or hashlib.md5(data).hexdigest() != md5:
                raise UpstreamError(f"PUT {rel}: the mirror's copy changed while it was read; warm it again")
            self._put(rel, data, md5)
            return
        self._multipart(rel, path, md5, size)

    def _put(self, rel: RelPath, data: bytes, md5: str, content_type: str = "application/octet-stream") -> None:
        what = f"PUT {rel}"
        reply = self._send("PUT", self.url(rel), what, data, {"Content-MD5": _b64md5(data), MD5_META: md5,
                                                              "Content-Type": content_type})
        if reply.status != 200:
            raise UpstreamError(f"{what}: the store answered HTTP {reply.status} {s3_error_code(reply.data)}")

    def _multipart(self, rel: RelPath, path: Path, md5: str, size: int) -> None:
        url = self.url(rel)
        what = f"PUT {rel} (multipart)"
        reply = self._send("POST", f"{url}?uploads", what, b"", {MD5_META: md5})
        if reply.status != 200:
            raise UpstreamError(f"{what}: the store answered HTTP {reply.status} {s3_error_code(reply.data)}")
        upload = _findtext(reply.data, "UploadId")
        if not upload:
            raise UpstreamError(f"{what}: the store gave no UploadId")
        query = f"uploadId={quote(upload, safe='')}"
        done = False
        try:
            parts: list[tuple[int, str]] = []
            whole = hashlib.md5()
            with open(path, "rb") as source:
                number = 0
                while True:
                    block = source.read(PART_BYTES)
                    if not block:
                        break
                    number += 1
                    whole.update(block)
                    answer = self._send("PUT", f"{url}?partNumber={number}&{query}", f"{what} part {number}", block,
                                        {"Content-MD5": _b64md5(block)})
                    if answer.status != 200:
                        raise UpstreamError(f"{what} part {number}: HTTP {answer.status} {s3_error_code(answer.data)}")
                    parts.append((number, answer.headers.get("ETag", "")))
            if whole.hexdigest() != md5 or os.path.getsize(path) != size:
                raise UpstreamError(f"{what}: the mirror's copy changed while it was read; warm it again")
            body = "<CompleteMultipartUpload>" + "".join(
                f"<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>" for number, etag in parts
            ) + "</CompleteMultipartUpload>"
            answer = self._send("POST", f"{url}?{query}", f"{what} complete", body.encode(),
                                {"Content-Type": "application/xml"})
            if answer.status != 200 or b"<Error>" in answer.data[:200]:
                raise UpstreamError(f"{what} complete: HTTP {answer.status} {s3_error_code(answer.data)}")
            done = True
        finally:
            if not done:
                try:  # never leave the parts: nothing partial is visible, and nothing billed
                    self._send("DELETE", f"{url}?{query}", f"{what} abort")
                except UpstreamError:
                    pass

    def close(self) -> None:
        self.pool.clear()


def _there(reply: urllib3.BaseHTTPResponse, what: str) -> bool:
    """True for the object's answer, False for 404; UpstreamError for anything else."""
    if reply.status == 404:
        return False
    if reply.status != 200:
        raise UpstreamError(f"{what}: the store answered HTTP {reply.status}")
    return True


def _findtext(body: bytes, tag: str) -> str:
    try:
        root: Any = ET.fromstring(body)
    except ET.ParseError:
        return ""
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == tag:
            return str(element.text or "")
    return ""
