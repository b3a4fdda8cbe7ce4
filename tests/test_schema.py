"""One release schema (pipelines.core.schema): the writer, verify, explain and the manifest agree with it."""

from __future__ import annotations

from pipelines import explain, verify
from pipelines.core import schema
from pipelines.release import manifest, writer


def test_line_keys_are_what_verify_requires():
    required = {name for name, field in verify.PairLine.model_fields.items() if field.is_required()}
    assert required == set(schema.PAIR_LINE_KEYS)
    required = {name for name, field in verify.RejectLine.model_fields.items() if field.is_required()}
    assert required == set(schema.REJECT_LINE_KEYS)


def test_one_manifest_key_and_format():
    assert manifest.MANIFEST_KEY is verify.MANIFEST_KEY is explain.MANIFEST_KEY is schema.MANIFEST_KEY
    assert manifest.FORMAT == schema.FORMAT_VERSION
    assert verify.Manifest.model_fields["format"].annotation.__args__ == (schema.FORMAT_VERSION,)
    assert writer.shard_key("data", "d", 3) == "data/d/shard-00003.jsonl.gz" == schema.data_shard_key("d", 3)
    assert writer.shard_key("rejects", "d", 0) == "rejects/d/rejects-00000.jsonl.gz"
