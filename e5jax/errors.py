"""Errors that are the user's to fix: the CLI prints them as one line."""


class E5Error(ValueError):
    """Bad input (a missing folder, a broken config, malformed data...).

    The message must name what to fix; the CLI prints it without a traceback.
    """
