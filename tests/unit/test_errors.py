"""One errno table, and a FUSE layer that answers every exception with an errno (no mount)."""

from __future__ import annotations

import errno
import inspect
from typing import Any

import pyfuse3
import pytest

from isaacfs.core.errors import (
    AccessDenied,
    ConnectionLost,
    FetchFailed,
    InvalidPath,
    MirrorFull,
    NotFound,
    Unavailable,
    UpstreamError,
    errno_for,
)
from isaacfs.fuse.operations import AssetFS, answers
from tests.unit.conftest import trio_test


@pytest.mark.parametrize(("exc", "expected"), [
    (InvalidPath("bad"), errno.ENOENT),
    (NotFound("x"), errno.ENOENT),
    (AccessDenied("x"), errno.EACCES),
    (Unavailable("x"), errno.EIO),
    (UpstreamError("x"), errno.EIO),
    (FetchFailed("full", MirrorFull("full")), errno.ENOSPC),
    (PermissionError(errno.EACCES, "denied"), errno.EACCES),
    (OSError(errno.ELOOP, "loop"), errno.ELOOP),
    (OSError(errno.ENAMETOOLONG, "long"), errno.ENAMETOOLONG),
    (OSError(errno.EMFILE, "fds"), errno.EMFILE),
    (OSError(errno.EIO, "disk"), errno.EIO),
    (RuntimeError("a bug"), None),
    (TypeError("a bug"), None),
])
def test_errno_table(exc: BaseException, expected: int | None) -> None:
    assert errno_for(exc) == expected


def test_every_operation_of_assetfs_answers_through_the_table() -> None:
    handlers = [name for name, member in vars(AssetFS).items()
                if inspect.iscoroutinefunction(member) and hasattr(pyfuse3.Operations, name)]
    assert len(handlers) >= 12
    unwrapped = [name for name in handlers if not hasattr(getattr(AssetFS, name), "__wrapped__")]
    assert not unwrapped, f"handlers not wrapped by answers(): {unwrapped}"


@trio_test
async def test_unexpected_error_becomes_eio_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    @answers
    async def handler(*args: Any) -> None:
        raise UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates not allowed")

    for _ in range(3):
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await handler(1)
        assert caught.value.errno == errno.EIO
    bugs = [r for r in caplog.records if "bug:" in r.getMessage()]
    assert len(bugs) == 1 and bugs[0].exc_info is not None  # once, with its traceback


@trio_test
async def test_typed_errors_map_and_fuse_errors_pass() -> None:
    @answers
    async def loop(*args: Any) -> None:
        raise OSError(errno.ELOOP, "Too many levels of symbolic links")

    @answers
    async def direct(*args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    with pytest.raises(pyfuse3.FUSEError) as caught:
        await loop()
    assert caught.value.errno == errno.ELOOP
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await direct()
    assert caught.value.errno == errno.EROFS


def test_a_resting_upstream_names_its_cause_once() -> None:
    from isaacfs.core.health import Health

    health = Health("memory://x", retry_after=30)
    health.mark(ConnectionLost("list Isaac: upstream unavailable (ERROR_CONNECTION)"))
    with pytest.raises(Unavailable) as caught:
        health.check("stat Isaac/x.usd")
    message = str(caught.value)
    assert message.count("upstream unavailable") == 1 and "ERROR_CONNECTION" in message, message
    health.mark(None)
    health.check("stat Isaac/x.usd")  # a good answer ends the rest


def test_only_connection_level_evidence_makes_the_upstream_rest() -> None:
    from isaacfs.core.health import Health

    health = Health("memory://x", retry_after=30)
    health.mark(Unavailable("fetch big.exr: not done after 300s, download abandoned"))  # one slow object
    health.mark(Unavailable("stat a.usd: upstream failed (ERROR)"))  # one failing key
    health.mark(NotFound("stat b.usd: not found upstream"))
    assert health.available
    health.mark(ConnectionLost("list Isaac: upstream did not answer within 10s"))
    assert not health.available
    health.mark(NotFound("stat c.usd: not found upstream"))  # an answer: it is back
    assert health.available
