"""Errors that a user can cause and fix. The CLI prints them as one line, no traceback."""


class UserError(Exception):
    """Bad input from the user: a wrong option, a missing file, an invalid config.

    The message must say what is wrong and, where possible, how to fix it.
    """
