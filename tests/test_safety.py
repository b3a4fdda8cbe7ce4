"""Hostile configurations, inputs and archives: each gives one line (exit 2), a reject, or a correct release;
nothing from outside the input tree reaches a release."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import MAX_CONFIG_BYTES, ConfigError, load_config
from sources.generic import SOURCES

JSONL = SOURCES["jsonl"]
from tests.helpers import run_build

REPO_ROOT = Path(__file__).resolve().parent.parent
FAST = ("--skip", "minhash", "--skip", "consistency", "--skip", "negatives")

ALIAS_BOMB = "\n".join(
    [f'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]) + "\n"


def run_cli(*args: str, memory_bytes: int = 2 << 30, timeout: float = 120) -> subprocess.CompletedProcess:
    """The build command in a child with an address-space cap: a bomb fails the cap instead of the machine."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "pipelines.build", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=limit)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


# -- configuration ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (ALIAS_BOMB, "expands to more than"),
    ("x: [" + ", ".join(["&a 1"] + ["*a"] * 200) + "]\n", "more than 100 YAML aliases"),
    ("# comment\n" * (MAX_CONFIG_BYTES // 10 + 1), "larger than"),
    ("[" * 50_000, "nests too deeply"),
])
def test_hostile_config_files_are_refused_by_name(tmp_path, content, message):
    path = tmp_path / "config.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config("jsonl", JSONL.config_model, path)


def test_config_from_a_device_or_a_folder_is_refused(tmp_path):
    for path in ("/dev/zero", str(tmp_path)):
        with pytest.raises(ConfigError, match="not a regular file"):
            load_config("jsonl", JSONL.config_model, path)


def test_an_alias_bomb_in_a_set_override_is_refused():
    value = "[&a [1,1,1,1,1,1,1,1,1,1], " + ", ".join(
        f"&{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]" for i in range(6)) + "]"
    with pytest.raises(ConfigError, match="--set release.pretty_name expands"):
        load_config("jsonl", JSONL.config_model, None, [f"release.pretty_name={value}"])


@pytest.mark.parametrize("config", ["bomb", "/dev/zero", "big"])
def test_hostile_configs_stop_the_cli_with_one_line(tmp_path, config):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "q", "document": "d"}\n')
    if config == "bomb":
        config = tmp_path / "bomb.yaml"
        config.write_text(ALIAS_BOMB)
    elif config == "big":
        config = tmp_path / "big.yaml"
        with open(config, "w") as handle:
            handle.write(("#" * 1023 + "\n") * (200 * 1024))  # 200 MB of comments
    result = run_cli("--source", "jsonl", "--config", str(config), "--input", str(pairs), "--output",
                     str(tmp_path / "release"))
    assert result.returncode == 2
    assert "config file" in one_error_line(result.stderr)
    assert not (tmp_path / "release").exists()
