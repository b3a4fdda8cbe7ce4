"""Progress of a build on stderr, and the same figures as Beam metrics.

The DoFns of the long stages (reading a dump, embedding, searching, writing) call :meth:`Progress.add` as they
work. Every DoFn instance and thread of one process adds to one tally per (stage, unit), and a line goes to
stderr when a stage starts, then at most every few seconds, and when its count reaches its total::

    progress embed: 1,536/4,212 texts (36%), 61 texts/s, ETA 44 s

DirectRunner runs the DoFns in the build's own process, so the tally is the whole stage's; with
``--direct_running_mode multi_processing`` each worker process reports its own share (the total is the
stage's). On Dataflow the lines go to the worker logs, and the counts are Beam metrics (counter
``progress/<stage>_<unit>_done``, gauge ``progress/<stage>_<unit>_total``) in the job's monitoring page.

``--quiet`` sets ``PAIR_CURATION_QUIET=1``, which worker processes inherit: no lines, metrics still counted.
``PAIR_CURATION_PROGRESS_S`` sets the seconds between lines (default 5).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.metrics import Metrics

QUIET_ENV = "PAIR_CURATION_QUIET"
INTERVAL_ENV = "PAIR_CURATION_PROGRESS_S"
DEFAULT_INTERVAL_S = 5.0
NAMESPACE = "progress"

_LOCK = threading.Lock()


@dataclass
class _Tally:
    total: int | None = None
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    last_line: float = 0.0
    finished: bool = False


_TALLIES: dict[tuple[str, str], _Tally] = {}


def set_quiet(quiet: bool) -> None:
    """Silence (or not) the progress lines of this process and of the worker processes it starts."""
    os.environ[QUIET_ENV] = "1" if quiet else "0"


def is_quiet() -> bool:
    return os.environ.get(QUIET_ENV, "0") == "1"


def reset() -> None:
    """Forget the tallies of an earlier build in this process (tests run several builds in one process)."""
    with _LOCK:
        _TALLIES.clear()


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _amount(value: float, unit: str) -> str:
    if unit != "bytes":
        return f"{value:,.0f}"
    for scale, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if value >= scale:
            return f"{value / scale:,.1f} {suffix}"
    return f"{value:,.0f} B"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_line(stage: str, unit: str, done: int, total: int | None, elapsed: float) -> str:
    """One progress line: counts (done/total and percent when the total is known), rate and ETA."""
    rate = done / elapsed if elapsed > 0 else 0.0
    rate_text = (f"{_amount(rate, unit)}/s" if unit == "bytes" else f"{rate:,.0f} {unit}/s")
    if total is None:
        counted = f"{_amount(done, unit)} {'' if unit == 'bytes' else unit}".rstrip()
        return f"progress {stage}: {counted}, {rate_text}, {_duration(elapsed)} so far"
    counted = (f"{_amount(done, unit)}/{_amount(total, unit)}" + ("" if unit == "bytes" else f" {unit}")
               + f" ({100 * done / total:.0f}%)" if total else f"0 {unit}")
    if done >= total:
        return f"progress {stage}: {counted} done in {_duration(elapsed)}, {rate_text}"
    eta = f"ETA {_duration((total - done) / rate)}" if rate > 0 else "ETA unknown"
    return f"progress {stage}: {counted}, {rate_text}, {eta}"


def format_start(stage: str, unit: str, total: int | None) -> str:
    if total is None:
        return f"progress {stage}: started"
    return f"progress {stage}: started, {_amount(total, unit)}{'' if unit == 'bytes' else ' ' + unit} to do"


class Progress:
    """One stage's progress in this process. Create it in a DoFn's ``setup`` (or lazily), then ``add(n)``."""

    def __init__(self, stage: str, unit: str, total: int | None = None):
        self.stage = stage
        self.unit = unit
        self.done_metric = Metrics.counter(NAMESPACE, f"{stage}_{unit}_done")
        self.total_metric = Metrics.gauge(NAMESPACE, f"{stage}_{unit}_total")
        self.set_total(total)

    def set_total(self, total: int | None) -> None:
        if total is None:
            return
        self.total_metric.set(int(total))
        with _LOCK:
            _TALLIES.setdefault((self.stage, self.unit), _Tally()).total = int(total)

    def add(self, amount: int = 1) -> None:
        if amount <= 0:
            return
        self.done_metric.inc(amount)
        line = None
        with _LOCK:
            tally = _TALLIES.setdefault((self.stage, self.unit), _Tally())
            now = time.monotonic()
            first = tally.done == 0
            tally.done += amount
            complete = tally.total is not None and tally.done >= tally.total and not tally.finished
            if complete:
                tally.finished = True
            if complete or (not first and now - tally.last_line >= _interval()):
                tally.last_line = now
                line = format_line(self.stage, self.unit, tally.done, tally.total, now - tally.started)
            elif first:
                tally.last_line = now
                line = format_start(self.stage, self.unit, tally.total)
        if line is not None and not is_quiet():
            print(line, file=sys.stderr, flush=True)


class CountProgress(beam.DoFn):
    """Outputs nothing; counts the elements it sees (or ``element[weight_key]``) as the progress of ``stage``.
    Give it ``total=beam.pvalue.AsSingleton(...)`` when the total is known upstream."""

    def __init__(self, stage: str, unit: str, weight_key: str | None = None):
        self.stage = stage
        self.unit = unit
        self.weight_key = weight_key
        self.progress: Progress | None = None

    def setup(self):
        self.progress = None

    def process(self, element, total=None):
        if self.progress is None:
            self.progress = Progress(self.stage, self.unit, total)
        self.progress.add(int(element[self.weight_key]) if self.weight_key else 1)
        return []
