"""Stages are known only through filters.registry: a new stage is one module and one registry line."""

from __future__ import annotations

import json

import pytest

from filters import registry
from pipelines import explain
from pipelines.core.config import PipelineConfig
from pipelines.core.records import SKIPPABLE_STAGES
from pipelines.release.stores import open_store
from tests.helpers import release_rejects, release_rows, run_build

FAST = ("--skip", "consistency", "--skip", "negatives")


def test_registry_order_and_shared_step():
    assert registry.stage_names() == list(SKIPPABLE_STAGES)
    by_name = {stage.name: stage for stage in registry.stages()}
    # consistency and negatives are two stages over one embed-and-search step; the others stand alone.
    assert by_name["consistency"].shared is by_name["negatives"].shared
    assert by_name["consistency"].needs_model and not by_name["minhash"].needs_model
    # Every stage runs by default but decontaminate, which needs evaluation texts to compare with.
    assert [stage.name for stage in registry.stages() if not stage.enabled(PipelineConfig())] == ["decontaminate"]


def _inputs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"id": f"r{n}", "query": f"How do I fix {'my toy' if n % 3 == 0 else 'a thing'} number {n}?",
             "document": f"Turn the knob number {n} slowly until it stops humming."} for n in range(9)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_a_toy_stage_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "STAGE_MODULES", {**registry.STAGE_MODULES, "toy": "tests.stages.toy"})
    out = tmp_path / "out"
    assert run_build("--source", "jsonl", "--input", str(_inputs(tmp_path)), "--output", str(out), *FAST) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    toy_row = [row for row in manifest["funnel"]["total"] if row["stage"] == "toy"]
    assert toy_row == [{"stage": "toy", "in": 9, "out": 6, "dropped": {"mentions_toy": 3}}] or \
        (toy_row and toy_row[0]["dropped"] == {"mentions_toy": 3})
    assert {r["reason"] for r in release_rejects(out) if r["stage"] == "toy"} == {"mentions_toy"}
    assert all("toy" not in row["query"] for row in release_rows(out, "custom_pairs"))
    assert manifest["stage_reports"]["toy"]["rule"] == "query mentions toy"
    # explain follows a pair through the toy stage too.
    [dropped] = [r for r in release_rejects(out) if r["stage"] == "toy"][:1]
    lineage = explain.lineage_json(explain.explain(explain.Release(open_store(str(out))), dropped["id"]))
    assert {"stage": "toy", "decision": "dropped"}.items() <= \
        next(d for d in lineage["stages"] if d["stage"] == "toy").items()

    skipped = tmp_path / "skipped"
    assert run_build("--source", "jsonl", "--input", str(_inputs(tmp_path)), "--output", str(skipped),
                     "--skip", "toy", *FAST) == 0
    assert "toy" in json.loads((skipped / "manifest.json").read_text())["skipped_stages"]


def test_enabled_false_is_the_same_as_skip(tmp_path):
    by_skip, by_config = tmp_path / "skip", tmp_path / "config"
    assert run_build("--source", "jsonl", "--input", str(_inputs(tmp_path)), "--output", str(by_skip),
                     "--skip", "minhash", *FAST) == 0
    assert run_build("--source", "jsonl", "--input", str(_inputs(tmp_path)), "--output", str(by_config),
                     "--set", "minhash.enabled=false", *FAST) == 0
    for name in ("manifest.json", "README.md"):
        assert (by_skip / name).read_bytes() == (by_config / name).read_bytes()
    assert "minhash" in json.loads((by_config / "manifest.json").read_text())["skipped_stages"]


def test_a_stage_names_exactly_one_way_to_run():
    from filters.stage import Stage

    with pytest.raises(ValueError):
        Stage("broken", config_key=None)


def test_stage_counters_share_one_naming_scheme():
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.testing.test_pipeline import TestPipeline

    from filters.normalize import Normalize
    from pipelines.core.config import NormalizeConfig
    from pipelines.core.records import new_pair
    from tests.helpers import KEEP_TEXTS

    pairs = [new_pair(dataset="d", source="s", query=q, document=d, provenance={"record": str(n)})
             for n, (q, d) in enumerate([("How do I fix it?", "Turn the knob until it stops."), ("x", "y")])]
    pipeline = TestPipeline()
    _ = pipeline | beam.Create(pairs) | Normalize(NormalizeConfig(), KEEP_TEXTS)
    result = pipeline.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed
                for c in result.metrics().query(MetricsFilter().with_namespace("normalize"))["counters"]}
    assert counters == {"in": 2, "out": 1, "dropped_query_too_short": 1}


def test_the_command_line_lists_stages_without_importing_them():
    """--skip's choices come from the registry's names: --help and usage errors do not load Beam or the stages."""
    import subprocess
    import sys

    probe = ("import sys; from pipelines.build import make_parser; make_parser(); "
             "print(sorted(m for m in ('apache_beam', 'filters.normalize', 'filters.consistency') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
