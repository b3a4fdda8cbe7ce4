"""Command-line arguments that are neither the command's own options nor Beam pipeline options.

Beam's own ``PipelineOptions`` keeps unknown flags quietly (a typo such as ``--imput`` or ``--runnr`` would be
ignored, and the run would do something else than asked), so the command checks them first against every
option Beam knows and stops with one line naming the first unknown one, with the closest known option.
"""

from __future__ import annotations

import argparse
import difflib

from pipelines.core.errors import UsageError


def beam_option_parser() -> argparse.ArgumentParser:
    """The parser that holds every option of every Beam ``PipelineOptions`` class imported so far."""
    from apache_beam.options.pipeline_options import PipelineOptions

    captured: list[argparse.ArgumentParser] = []
    # get_all_options builds that parser and hands it to add_extra_args_fn before parsing: take it from there.
    PipelineOptions([]).get_all_options(add_extra_args_fn=captured.append)
    parser = captured[0]

    def error(message: str):  # a bad value (--direct_num_workers two): one line, not argparse's usage text
        raise UsageError(f"bad pipeline option: {message}")

    parser.error = error
    return parser


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [name for action in parser._actions for name in action.option_strings]  # noqa: SLF001


def unknown_arguments(beam_args: list[str]) -> list[str]:
    """The tokens of ``beam_args`` that no Beam option takes (flags and stray values), in order."""
    _, unknown = beam_option_parser().parse_known_args(beam_args)
    return unknown


def closest_option(name: str, known: list[str]) -> str | None:
    matches = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return matches[0] if matches else None


def check_unknown_options(beam_args: list[str], command_parser: argparse.ArgumentParser) -> None:
    """Raises UsageError naming the first argument that is neither the command's nor Beam's option."""
    unknown = unknown_arguments(beam_args)
    if not unknown:
        return
    first = unknown[0]
    if not first.startswith("-"):
        raise UsageError(f"unexpected argument {first!r}: every value belongs to an option (--name VALUE)")
    name = first.split("=", 1)[0]
    known = _option_strings(command_parser) + _option_strings(beam_option_parser())
    suggestion = closest_option(name, [option for option in known if option.startswith("--")])
    hint = f"; did you mean {suggestion}?" if suggestion else "; see python -m pipelines.build --help"
    raise UsageError(f"unknown option {name}{hint}")
