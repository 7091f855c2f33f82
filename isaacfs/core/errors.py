"""Every error kind isaacfs raises on purpose, and the ONE table that turns them into errno.

User-facing errors (``UserError`` and kin) end a command with one sentence. Upstream
errors say what the upstream did. Mirror and fetch failures are kinds of their own
(``MirrorFull``, ``IntegrityError``, ``Stopping``...). ``FetchFailed`` carries the failure
that caused it, never an errno. The FUSE layer answers every request through
:func:`errno_for`, the one place an errno is chosen; no other module names an errno
constant (tests/unit/test_errors.py checks), and questions about an ``OSError`` go through
the predicates at the end of this file.
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


class TooSlow(Unavailable):
    """A transfer that missed its deadline by size (a body that reports no progress): trying
    again would only wait as long again."""


class IntegrityError(Exception):
    """A body that failed its check (size, MD5, multipart ETag): a later try may be right."""


class MirrorFull(Exception):
    """The mirror's disk has no room for a file (or filled up while it was written)."""


class MirrorStalled(Exception):
    """A part of the mirror on a file system that can hang (a network one, or another mount
    inside the mirror) did not answer within its deadline."""


class Stopping(Exception):
    """A fetch discarded because isaacfs is stopping."""


class NotInMirror(Exception):
    """A name the mirror does not hold, where only the mirror may answer (strict mode)."""


class ReadOnly(Exception):
    """A write to the read-only tree."""


class IsAFolder(Exception):
    """A file operation on a folder."""


class NotAFolder(Exception):
    """A folder operation on a file."""


class NoSuchAttribute(Exception):
    """An extended attribute that is not there."""


class FetchFailed(Exception):
    """A fetch that did not put the file in the mirror, with the failure that caused it;
    ``errno`` (what a reader gets) is the table's answer for that cause."""

    def __init__(self, message: str, cause: BaseException) -> None:
        super().__init__(message)
        self.cause = cause

    @property
    def errno(self) -> int:
        return answer_for(self.cause)


# The one errno table: an exception's class (or its nearest listed base) decides.
ERRNO_TABLE: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidPath, errno.ENOENT),  # a name that cannot exist in the tree
    (NotFound, errno.ENOENT),
    (NotInMirror, errno.ENOENT),
    (IntegrityError, errno.EIO),
    (MirrorFull, errno.ENOSPC),
    (MirrorStalled, errno.EIO),
    (Stopping, errno.EINTR),
    (ReadOnly, errno.EROFS),
    (IsAFolder, errno.EISDIR),
    (NotAFolder, errno.ENOTDIR),
    (NoSuchAttribute, errno.ENODATA),
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
    if isinstance(exc, OSError) and is_disk_full(exc):
        return errno.ENOSPC  # a quota is a full disk to a reader
    for kind, number in ERRNO_TABLE:
        if isinstance(exc, kind):
            return number
    if isinstance(exc, OSError):
        # ENAMETOOLONG, ELOOP, EMFILE, ENOSPC, EIO from the mirror's disk: passed on as they are.
        return exc.errno or errno.EIO
    return None


def answer_for(exc: BaseException) -> int:
    """What a reader gets for ``exc``: the table's errno, or EIO for an unexpected error."""
    return errno_for(exc) or errno.EIO


# -- questions about an OSError (the only places outside the table that read an errno) ------

def is_disk_full(exc: BaseException) -> bool:
    """The disk (or the user's quota) has no room."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def is_disconnected(exc: BaseException) -> bool:
    """A FUSE mount whose daemon is gone ("transport endpoint is not connected")."""
    return isinstance(exc, OSError) and exc.errno == errno.ENOTCONN


def is_missing(exc: BaseException) -> bool:
    """A name that is not there (upstream, in the mirror, on a disk), or a path that runs
    through a file or a loop of links."""
    return errno_for(exc) in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
