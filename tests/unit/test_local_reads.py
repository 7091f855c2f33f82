"""The file: upstream's reader (backends/local.py): whole files in blocks, a file rewritten
while it is read is refused, special files are not read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from isaacfs.backends.local import BLOCK, LocalRanges
from isaacfs.core.errors import NotFound, Unavailable
from tests.unit.conftest import trio_test


@trio_test
async def test_a_file_is_read_whole_in_order(tmp_path: Path) -> None:
    data = os.urandom(3 * BLOCK + 123)
    (tmp_path / "a.usd").write_bytes(data)
    got: list[bytes] = []

    async def take(block: bytes) -> None:
        got.append(block)

    await LocalRanges(5.0).read(str(tmp_path / "a.usd"), "fetch a.usd", take)
    assert b"".join(got) == data and len(got) == 4


@trio_test
async def test_a_file_rewritten_while_it_is_read_is_refused(tmp_path: Path) -> None:
    """Its blocks would mix two versions, and a file: tree has no ETag to catch that."""
    path = tmp_path / "dome.exr"
    path.write_bytes(b"a" * (2 * BLOCK))

    async def rewrite_after_first(block: bytes) -> None:
        if block[:1] == b"a" and path.stat().st_size == 2 * BLOCK:
            with open(path, "r+b") as stream:  # in place, as `cp` over it does
                stream.write(b"b" * (2 * BLOCK + 10))

    with pytest.raises(Unavailable, match="changed upstream while it was read"):
        await LocalRanges(5.0).read(str(path), "fetch dome.exr", rewrite_after_first)


@trio_test
async def test_missing_and_special_files_are_not_found(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.usd")  # opening it for reading would block without O_NONBLOCK

    async def take(block: bytes) -> None:
        raise AssertionError("nothing may be read")

    for name in ("missing.usd", "pipe.usd"):
        with pytest.raises(NotFound):
            await LocalRanges(5.0).read(str(tmp_path / name), f"fetch {name}", take)
