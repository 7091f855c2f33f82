"""Every error kind isaacfs raises on purpose, and the ONE table that turns them into errno.

User-facing errors (``UserError`` and kin) end a command with one sentence. Upstream
errors say what the upstream did. ``FetchFailed`` carries the errno a reader gets. The
FUSE layer answers every request through :func:`errno_for`; no other module picks an
errno for an exception.
"""

from __future__ import annotations

import errno


class UserError(Exception):
    """Bad input or an unusable environment; the message is shown to the user as is."""

    exit_code = 2


class MountError(UserError):
    """The mount could not be set up; nothing in the mirror was changed."""

    exit_code = 1


class InvalidPath(ValueError):
    """A name or path that must not be followed."""


class UpstreamError(Exception):
    """The upstream did not give what was asked; the message is one operator-readable line."""


class NotFound(UpstreamError):
    pass


class AccessDenied(UpstreamError):
    pass


class Unavailable(UpstreamError):
    """No usable answer: a server error, a transfer too slow, or the upstream is resting."""


class ConnectionLost(Unavailable):
    """Evidence that the upstream cannot be reached at all: refused, reset, or no answer to a
    small request in time. Only this makes the upstream rest (``core.health``)."""


class FetchFailed(Exception):
    """A fetch that did not put the file in the mirror; ``errno`` is what a reader gets."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


# The one errno table: an exception's class (or its nearest listed base) decides.
ERRNO_TABLE: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidPath, errno.ENOENT),  # a name that cannot exist in the tree
    (NotFound, errno.ENOENT),
    (AccessDenied, errno.EACCES),
    (Unavailable, errno.EIO),  # ConnectionLost included
    (UpstreamError, errno.EIO),
    (FileNotFoundError, errno.ENOENT),
    (NotADirectoryError, errno.ENOTDIR),
    (IsADirectoryError, errno.EISDIR),
    (PermissionError, errno.EACCES),
)


def errno_for(exc: BaseException) -> int | None:
    """The errno a FUSE reader gets for ``exc``; None for an unexpected error (a bug: EIO)."""
    if isinstance(exc, FetchFailed):
        return exc.errno
    for kind, number in ERRNO_TABLE:
        if isinstance(exc, kind):
            return number
    if isinstance(exc, OSError):
        # ENAMETOOLONG, ELOOP, EMFILE, ENOSPC, EIO from the mirror's disk: passed on as they are.
        return exc.errno or errno.EIO
    return None
