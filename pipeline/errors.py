"""Errors a user can act on. The CLI prints their message (no traceback) and exits with status 2."""


class SpliceError(Exception):
    """Base of user-facing errors: the message names the input and says what to do."""


class StorageError(SpliceError, OSError):
    """A location that cannot be read or written; the message names the URL."""


class StoreUnreachable(StorageError, TimeoutError):
    """The store did not answer (connection refused, timed out) within transient.NO_ANSWER_WINDOW_S; never retried again."""
