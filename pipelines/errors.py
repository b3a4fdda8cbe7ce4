"""Errors shared by the command-line entry points."""


class UsageError(Exception):
    """A bad command line, configuration or input: one line, exit status 2."""
