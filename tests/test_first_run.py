"""A new user's first run: typos stop with one line and a suggestion, the bundled sample builds with no input
and no network, and stderr shows which stage works with counts, rate and ETA (and nothing with --quiet)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli_options import unknown_arguments
from tests.helpers import run_build

REPO_ROOT = Path(__file__).resolve().parent.parent


def _build(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.build", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


# -- unknown options ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("typo, meant", [("--imput", "--input"), ("--runnr", "--runner"),
                                         ("--ouput", "--output"), ("--direct_num_worker", "--direct_num_workers")])
def test_a_misspelt_option_stops_with_one_line_and_a_suggestion(typo, meant, tmp_path, capsys):
    status = run_build("--source", "stackexchange", typo, "x", "--output", str(tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err == [f"error: unknown option {typo}; did you mean {meant}?"]
    assert not (tmp_path / "out").exists()  # stopped before anything was planned or written


def test_unknown_option_without_a_close_match_and_a_stray_value(tmp_path, capsys):
    assert run_build("--source", "stackexchange", "--zzzzzz", "--output", str(tmp_path / "o")) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: unknown option --zzzzzz; see python -m pipelines.build --help"]
    assert run_build("--source", "stackexchange", "stray", "--output", str(tmp_path / "o")) == 2
    assert "unexpected argument 'stray'" in capsys.readouterr().err


def test_beam_options_are_known_and_bad_values_are_one_line(tmp_path, capsys):
    beam_args = ["--runner", "DirectRunner", "--direct_num_workers", "2", "--direct_running_mode",
                 "multi_processing", "--project=p", "--region", "r", "--temp_location", "gs://b/t",
                 "--experiments", "a", "--experiments", "b", "--save_main_session", "--setup_file", "./pyproject.toml"]
    assert unknown_arguments(beam_args) == []
    assert unknown_arguments(["--imput", "x", "--runner", "DirectRunner"]) == ["--imput", "x"]
    assert run_build("--source", "stackexchange", "--direct_num_workers", "two", "--output", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: bad pipeline option:") and "two" in err[0]


def test_a_misspelt_set_key_gets_a_suggestion(tmp_path, capsys):
    for key, meant in [("minhash.treshold", "minhash.threshold"), ("source.min_answer_scor", "source.min_answer_score"),
                       ("negatives.num_negative", "negatives.num_negatives"), ("minhsh.threshold", "minhash")]:
        assert run_build("--source", "stackexchange", "--set", f"{key}=1", "--output", str(tmp_path / "o")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        unknown = key if not key.startswith("minhsh") else "minhsh"
        assert err == [f"error: unknown config key '{unknown}'; did you mean '{meant}'?"]
    assert run_build("--source", "stackexchange", "--set", "embedding.zzz=1", "--output", str(tmp_path / "o")) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: unknown config key 'embedding.zzz'"]


# -- the bundled sample and progress -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def bare_build(tmp_path_factory):
    """`python -m pipelines.build --source stackexchange` with no --input: every stage, on the bundled sample."""
    output = tmp_path_factory.mktemp("bare") / "release"
    result = _build("--source", "stackexchange", "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result.stderr


def test_without_input_the_bundled_sample_is_built(bare_build):
    import json

    from sources.stackexchange import BUNDLED_SAMPLE

    output, stderr = bare_build
    assert "no --input: building the sample bundled with the project" in stderr
    manifest = json.loads((output / "manifest.json").read_text())
    names = {item["name"]: item for item in manifest["inputs"]}
    assert sorted(names) == ["cardano.stackexchange.com/PostLinks.xml", "cardano.stackexchange.com/Posts.xml"]
    assert names["cardano.stackexchange.com/Posts.xml"]["bytes"] == (Path(BUNDLED_SAMPLE) / "Posts.xml").stat().st_size
    # A consistent slice: the 5 duplicate links join kept posts, answers belong to kept questions.
    # (Counted as read: a pair short of num_negatives hard negatives is then a too_few_negatives reject.)
    read = {name: stages[0]["out"] for name, stages in manifest["funnel"]["per_dataset"].items()}
    assert read["stackexchange_duplicates"] == 5
    assert read["stackexchange_title_body"] > 80
    assert read["stackexchange_question_answer"] > 60
    assert (Path(BUNDLED_SAMPLE).parent / "ATTRIBUTION.md").read_text().count("CC BY-SA 4.0") >= 2


def test_stderr_shows_each_stage_with_counts(bare_build):
    import json
    import re

    output, stderr = bare_build
    lines = [line for line in stderr.splitlines() if line.startswith("progress ")]
    for stage in ("read", "normalize", "exact_dedup", "minhash", "embedding", "embed", "search", "write"):
        assert any(line.startswith(f"progress {stage}: ") for line in lines), (stage, lines)
    assert any(re.fullmatch(r"progress read: ([\d.]+ KiB)/\1 \(100%\) done in \d+ s, .*/s", line) for line in lines)
    embed_done = [re.fullmatch(r"progress embed: ([\d,]+)/([\d,]+) texts \(100%\) done in .*", line) for line in lines]
    embed_done = [match for match in embed_done if match]
    assert len(embed_done) == 1 and embed_done[0].group(1) == embed_done[0].group(2)
    manifest = json.loads((output / "manifest.json").read_text())
    pairs = sum(summary["rows"] for summary in manifest["datasets"].values())
    rejects = sum(summary["rows"] for summary in manifest["rejects"].values())
    assert f"progress write: {pairs + rejects:,}/{pairs + rejects:,} rows (100%) done" in stderr
    assert any(re.fullmatch(r"progress search: ([\d,]+)/\1 pairs \(100%\) done in .*", line) for line in lines)
    # Calm: lines at a stage's start and end, and every few seconds between; never one per row.
    assert len(lines) < 60


def test_quiet_prints_no_progress(tmp_path):
    result = _build("--source", "stackexchange", "--output", str(tmp_path / "quiet"), "--quiet",
                    "--skip", "consistency", "--skip", "negatives")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not [line for line in result.stderr.splitlines() if line.startswith("progress")]
    assert "release:" in result.stdout


def test_progress_line_format():
    from pipelines.core.progress import format_line, format_start

    assert format_start("embed", "texts", 4212) == "progress embed: started, 4,212 texts to do"
    assert format_line("embed", "texts", 1536, 4212, 25.0) == \
        "progress embed: 1,536/4,212 texts (36%), 61 texts/s, ETA 44 s"
    assert format_line("read", "bytes", 3 << 20, 6 << 20, 2.0) == \
        "progress read: 3.0 MiB/6.0 MiB (50%), 1.5 MiB/s, ETA 2 s"
    assert format_line("write", "rows", 10, 10, 4.0) == "progress write: 10/10 rows (100%) done in 4 s, 2 rows/s"
    assert format_line("minhash", "pairs", 500, None, 100.0) == \
        "progress minhash: 500 pairs, 5 pairs/s, 1 min 40 s so far"


def test_translate_refuses_unknown_options_too(tmp_path, capsys):
    from pipelines import translate

    status = translate.main(["--source", "stackexchange", "--output", "s3://bucket/rel", "--out",
                             str(tmp_path / "j.json"), "--runner", "DataflowRunner", "--projetc", "p"])
    assert status == 2  # the commands return their exit status (pipelines.cli.run_command)
    assert capsys.readouterr().err.strip().splitlines() == ["error: unknown option --projetc; did you mean --project?"]


def test_progress_figures_are_beam_metrics():
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.testing.test_pipeline import TestPipeline

    from pipelines.core.progress import CountProgress

    pipeline = TestPipeline()
    rows = pipeline | beam.Create([{"rows": 3}, {"rows": 4}, {"rows": 5}])
    total = pipeline | "Total" >> beam.Create([12])
    _ = rows | beam.ParDo(CountProgress("test_write", "rows", weight_key="rows"), total=beam.pvalue.AsSingleton(total))
    result = pipeline.run()
    result.wait_until_finish()
    metrics = result.metrics().query(MetricsFilter().with_namespace("progress"))
    done = {m.key.metric.name: m.committed for m in metrics["counters"]}
    totals = {m.key.metric.name: m.committed.value for m in metrics["gauges"]}
    assert done["test_write_rows_done"] == 12 and totals["test_write_rows_total"] == 12


def test_ci_runs_exactly_the_readme_set_up_and_test_commands():
    import re

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Set up and run"):readme.index("## The pipeline")]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    install, main_job, tests = ([line.strip() for line in block.splitlines() if line.strip()] for block in blocks)
    assert install[0].startswith("python3.11 -m venv .venv") and tests == ["pip install -e '.[test,dataflow]'", "lint-imports",
                                                                  "python -m pytest -q"]
    assert "--index-url https://download.pytorch.org/whl/cpu" in install[1] and "--no-deps" in install[1]
    assert main_job == ["python -m pipelines.build --source stackexchange --output releases/cardano"]
    ci = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[:2] == ["set -euo pipefail", 'cd "$(dirname "$0")/.."']
    assert ci[2:] == install + tests
