"""Errors meant for the person at the keyboard: the command line prints them as one line, no traceback."""


class UserError(Exception):
    """Bad input or an impossible request, explained in one line."""
