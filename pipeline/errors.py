"""Errors a user can act on. The CLI prints their message (no traceback) and exits with status 2."""


class SpliceError(Exception):
    """Base of user-facing errors: the message names the input and says what to do."""
