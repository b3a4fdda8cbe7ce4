"""What the four commands (build, translate, verify, explain) share: the argument parser that fails with one
line, quiet logging, the credential guard for pipeline options, and the runner that maps the project's
errors (``pipelines.core.errors``) to one stderr line and an exit status."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Callable, NoReturn

from pipelines.core.errors import PairCurationError, UsageError

# Pipeline options whose value is a credential: never allowed into a job description.
SECRET_OPTION = re.compile(r"secret|token|password|passwd|access_key|connection_string|private_key|credential",
                           re.IGNORECASE)


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose mistakes are UsageErrors (one line, exit 2), not argparse's usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def run_command(command: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Runs one command's body; a PairCurationError ends it with its one line on stderr and its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return command(argv)
    except PairCurationError as exc:
        print(exc.line(), file=sys.stderr)
        return exc.exit_status


# A project error as the runner relays it in text (multi-process and remote workers pass tracebacks as text).
PROJECT_ERROR_LINE = re.compile(r"\b(?:StoreError|AlreadyExists|ClaimHeld|InputError|ConfigError|UsageError): (.+)")


def quiet_logging() -> None:
    class _DropNoise(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            # The runner logs a failing step with a traceback; the project's own errors are reported once,
            # as one line, by run_command.
            if record.exc_info and isinstance(record.exc_info[1], PairCurationError):
                return False
            # The runner's own error logs (worker tracebacks relayed as job messages, on the root logger too).
            if record.levelno >= logging.ERROR and PROJECT_ERROR_LINE.search(record.getMessage()):
                return False
            return "apitools not found" not in record.getMessage()

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropNoise())


def refuse_secret_options(beam_args: list[str]) -> None:
    """Raise UsageError for a pipeline option that would carry a credential into the job."""
    for arg in beam_args:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0]
        if SECRET_OPTION.search(name):
            raise UsageError(f"pipeline option --{name} would write a credential into the job description; "
                             "give S3 keys to the workers through their environment (AWS_* variables or a "
                             "profile), never as options")
