"""The project's one error root: every error the project raises on purpose derives from PairCurationError.

Each class says how a command ends when it reaches the command line: ``exit_status`` (2: the user must fix a
command line, configuration, input or destination; 1: the pipeline or the release itself failed) and the one
line printed on stderr (``line()``). ``pipelines.cli.run_command`` is the only place that turns them into an
exit, so build, translate, verify and explain report errors the same way.
"""

from __future__ import annotations

USAGE_EXIT = 2
FAILURE_EXIT = 1


class PairCurationError(Exception):
    """Root of the project's errors: a one-line message and the exit status a command ends with."""

    exit_status = FAILURE_EXIT
    prefix = "error: "

    def line(self) -> str:
        text = str(self).strip().splitlines()
        return f"{self.prefix}{text[0] if text else type(self).__name__}"


class UsageError(PairCurationError):
    """A bad command line, configuration or input: one line, exit status 2."""

    exit_status = USAGE_EXIT


class PipelineError(PairCurationError):
    """The pipeline ran and failed, or finished without committing a release: exit status 1."""

    exit_status = FAILURE_EXIT


class NotFound(PairCurationError):
    """What was asked for is not there (explain: the id is in no shard and no reject): exit status 1."""

    exit_status = FAILURE_EXIT
    prefix = "not found: "
