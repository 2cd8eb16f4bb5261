"""The one exception type for mistakes a user can make (bad budget, bad TOML, missing files)."""


class DseError(Exception):
    """A problem the user can fix; the message says what was wrong and how to fix it.

    The CLI prints it on one line and exits with code 2, without a traceback.
    """
