"""The wheel carries every source config, and an installed build uses them; a missing config is an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipelines.core.config import CONFIG_DIR, ConfigError, load_config
from sources.quora import QuoraConfig
from tests.helpers import run_build

REPO = Path(__file__).resolve().parent.parent


def test_wheel_ships_every_config_and_an_installed_build_uses_it(tmp_path, shared_data):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "-w", str(wheels), "--no-deps",
                    "--no-build-isolation", "-q"], check=True, cwd=tmp_path, capture_output=True, timeout=600)
    wheel = next(wheels.glob("pair_curation-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(path.name for path in CONFIG_DIR.glob("*.yaml"))
    assert shipped and all(f"configs/{name}" in names for name in shipped)
    assert "configs/mixtures/example.yaml" in names  # the mixture example ships too

    # "Installed": the wheel unpacked on its own, run from a folder that holds no checkout.
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.build", "--source", "quora",
         "--input", str(shared_data / "quora" / "mini_quora_duplicate_questions.tsv"),
         "--skip", "consistency", "--skip", "negatives", "--output", str(elsewhere / "release")],
        cwd=elsewhere, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((elsewhere / "release" / "manifest.json").read_text())
    # configs/quora.yaml sets minhash.ngram: 3 (the model default is 5): the shipped file was read.
    assert manifest["config"]["minhash"]["ngram"] == 3
    probe = subprocess.run([sys.executable, "-c", "import configs, pipelines; print(configs.__file__)"],
                           cwd=elsewhere, env=environment, capture_output=True, text=True, check=True)
    assert probe.stdout.strip().startswith(str(installed))


def test_missing_config_file_is_an_error_not_defaults(tmp_path, capsys):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("quora", QuoraConfig, tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("no_such_source", QuoraConfig)
    status = run_build("--source", "quora", "--config", str(tmp_path / "absent.yaml"), "--input",
                       str(tmp_path), "--output", str(tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err == [f"error: config file not found: {tmp_path / 'absent.yaml'}"]
