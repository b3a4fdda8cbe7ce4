"""End to end: `pipelines.build --output s3://...` against a real S3 server (SeaweedFS), then verify."""

from __future__ import annotations

import json


from pipelines.release.s3_store import S3Store
from pipelines.verify import main as verify_main
from tests.helpers import run_build

pytest_plugins = ("tests.s3_server",)

FAST = ("--skip", "minhash", "--skip", "consistency", "--skip", "negatives")


def test_build_publishes_verifies_and_refuses_to_overwrite(stackexchange_sample, s3_env, s3_bucket, r2_rules,
                                                           monkeypatch, capsys):
    make_client = S3Store._make_client

    def recorded_client(store):  # on top of s3_env's own R2 checks: record the order of writes
        client = make_client(store)
        r2_rules.attach(client)
        return client

    monkeypatch.setattr(S3Store, "_make_client", recorded_client)
    site = str(stackexchange_sample)
    uri = f"s3://{s3_bucket}/rel"
    assert run_build("--source", "stackexchange", "--input", site, "--output", uri, *FAST) == 0
    r2_rules.assert_clean()

    store = S3Store.from_uri(uri)
    keys = store.list_keys()
    assert "manifest.json" in keys and "README.md" in keys
    manifest = json.loads(store.get_bytes("manifest.json"))
    for dataset, summary in manifest["datasets"].items():
        assert summary["counts"]["key"] in keys and summary["offsets"]["key"] in keys
        assert all(shard["key"] in keys for shard in summary["shards"])
    release_writes = [path for path in r2_rules.writes() if "/runs/" not in path]
    assert release_writes[-1] == f"/{s3_bucket}/rel/manifest.json"
    assert release_writes.count(f"/{s3_bucket}/rel/manifest.json") == 1

    capsys.readouterr()
    assert verify_main([uri]) == 0

    # One shard overwritten with other bytes: verify fails and names it.
    shard = manifest["datasets"]["stackexchange_title_body"]["shards"][0]["key"]
    s3_env.client().put_object(Bucket=s3_bucket, Key=f"rel/{shard}", Body=b"not the shard",
                               ContentType="application/jsonl")
    capsys.readouterr()
    assert verify_main([uri]) != 0
    assert shard in capsys.readouterr().out

    # A second publish without --overwrite refuses with one line and changes nothing.
    before = {key: store.head(key) for key in store.list_keys() if not key.startswith("runs/")}
    assert run_build("--source", "stackexchange", "--input", site, "--output", uri, *FAST) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0] and "--overwrite" in err[0]
    assert {key: store.head(key) for key in store.list_keys() if not key.startswith("runs/")} == before
