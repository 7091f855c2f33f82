"""Errors that end a command with one clear sentence (no stack trace)."""


class UserError(Exception):
    """Bad input or an unusable environment; the message is shown to the user as is."""

    exit_code = 2


class MountError(UserError):
    """The mount could not be set up; nothing in the mirror was changed."""

    exit_code = 1
