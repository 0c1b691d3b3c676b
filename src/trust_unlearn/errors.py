"""User-facing errors: the CLI prints these as one clear message and exits non-zero."""


class UserError(Exception):
    """Bad input or a failed precondition; the message says what is wrong and how to fix it."""
