"""Parsing S3 ListObjectsV2 pages (backends/http.py): folders, files, folder markers, pages."""

from __future__ import annotations

import pytest

from isaacfs.backends.http import NotS3, _parse_listing

NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def page(body: str, truncated: bool = False, token: str = "") -> bytes:
    more = f"<IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken>" if truncated \
        else "<IsTruncated>false</IsTruncated>"
    return f'<?xml version="1.0"?><ListBucketResult xmlns="{NS}">{more}{body}</ListBucketResult>'.encode()


def test_folders_files_and_markers() -> None:
    body = ("<CommonPrefixes><Prefix>Assets/Isaac/Robots/</Prefix></CommonPrefixes>"
            "<CommonPrefixes><Prefix>Assets/Isaac//</Prefix></CommonPrefixes>"
            "<Contents><Key>Assets/Isaac/</Key><Size>0</Size></Contents>"
            "<Contents><Key>Assets/Isaac/a.usd</Key><Size>12</Size><ETag>\"0cc175b9c0f1b6a831c399e269772661\"</ETag>"
            "<LastModified>2026-01-02T03:04:05.000Z</LastModified></Contents>")
    entries, token = _parse_listing(page(body), "Assets/Isaac/")
    assert token is None
    assert ("Robots/", True, 0, 0.0, "") in entries
    assert ("/", True, 0, 0.0, "") in entries  # an empty folder name: refused, with a log line, by the caller
    assert ("", False, 0, 0.0, "") in entries  # the folder's own marker object: skipped by the caller
    _name, is_dir, size, mtime, etag = next(e for e in entries if e[0] == "a.usd")
    assert (is_dir, size, etag) == (False, 12, "0cc175b9c0f1b6a831c399e269772661") and mtime == 1767323045.0


def test_a_truncated_page_gives_its_continuation_token() -> None:
    _entries, token = _parse_listing(page("", truncated=True, token="abc=="), "")
    assert token == "abc=="


@pytest.mark.parametrize("body", [b"<html>Access denied</html>", b"not xml at all",
                                  b'<Error><Code>AccessDenied</Code></Error>'])
def test_what_is_not_an_s3_listing_is_refused(body: bytes) -> None:
    with pytest.raises(NotS3):
        _parse_listing(body, "")


def test_a_layer_may_be_read_unlisted_before_the_first_listing_but_not_once_refused() -> None:
    """An https upstream reads a layer beside its folder's listing from the first request on
    (a closure's root layer goes beside the first listing, not after it); once the bucket
    has refused anonymous HTTP, never (omni.client fetches, after the listing)."""
    from isaacfs.backends.omni import OmniUpstream

    upstream = OmniUpstream("https://bucket.example/Assets/Isaac/6.2", 5.0, 30.0, 30.0, 0.0)
    assert upstream.s3 is not None and upstream.s3.answers is None  # not asked yet
    assert upstream.reads_unlisted and not upstream.ranged
    upstream.s3.refused("HTTP 403")
    assert not upstream.reads_unlisted
    assert not OmniUpstream("file:///tmp/assets", 5.0, 30.0, 30.0, 0.0).reads_unlisted
