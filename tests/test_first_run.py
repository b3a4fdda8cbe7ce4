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
