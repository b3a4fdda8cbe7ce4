"""S3Store against a real S3 server (SeaweedFS), with every request checked against Cloudflare R2's rules."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.release.s3_store import MIB, S3Store
from pipelines.release.store import AlreadyExists, LocalStore, StoreError, content_type_for
from pipelines.release.stores import open_store
from pipelines.verify import verify_release
from tests.s3_server import FaultyProxy, _free_ports
from tests.test_verify import build_sample_release, publish, sample_rows

pytest_plugins = ("tests.s3_server",)  # the S3 fixtures, shared by all modules

PART = 5 * MIB


def _objects(server, bucket: str, prefix: str) -> dict[str, tuple[int, str, str, str | None]]:
    """key -> (size, sha256 of the bytes, Content-Type, Content-Encoding), read with a plain client."""
    client = server.client()
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            response = client.get_object(Bucket=bucket, Key=item["Key"])
            data = response["Body"].read()
            found[item["Key"][len(prefix) + 1:]] = (len(data), hashlib.sha256(data).hexdigest(),
                                                    response["ContentType"], response.get("ContentEncoding"))
    return found


def _expected(files: list[tuple[str, Path]]) -> dict[str, tuple[int, str]]:
    return {key: (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()) for key, path in files}


def _sizes_and_hashes(objects: dict) -> dict[str, tuple[int, str]]:
    return {key: value[:2] for key, value in objects.items()}


@pytest.fixture
def big_release(tmp_path):
    """A sample release with one shard over the 5 MiB part size (two parts: 5 MiB and the rest), its index
    files keyed for the place it is verified at (``location``, as contrastors would read it there)."""
    def stage(location: str) -> list[tuple[str, Path]]:
        files = build_sample_release(tmp_path / f"staging-{location.replace('/', '_')}",
                                     datasets={"alpha_pairs": [3, 700], "beta_pairs": [2]}, filler=16_000,
                                     location=location)
        sizes = {key: path.stat().st_size for key, path in files}
        assert PART < sizes["data/alpha_pairs/shard-00001.jsonl.gz"] < 2 * PART
        return files
    return stage


def test_a_published_release_follows_the_layout_and_r2_rules(s3_env, s3_bucket, big_release, r2_rules):
    big_release = big_release(f"s3://{s3_bucket}/releases/v1")
    store = S3Store.from_uri(f"s3://{s3_bucket}/releases/v1", part_size=PART)
    r2_rules.attach(store.client)
    publish(store, big_release)
    r2_rules.assert_clean()

    objects = _objects(s3_env, s3_bucket, "releases/v1")
    assert _sizes_and_hashes(objects) == _expected(big_release)
    for key, (_, _, content_type, content_encoding) in objects.items():
        assert content_type == content_type_for(key)
        assert content_encoding is None  # .gz bytes are stored and served as they are
    assert objects["data/alpha_pairs/shard-00000.jsonl.gz"][2] == "application/jsonl"
    assert objects["data/alpha_pairs/offsets.json.gz"][2] == "application/json"
    assert objects["README.md"][2] == "text/markdown; charset=utf-8"
    # The big shard went up in equal parts but the last; the manifest was the last object written.
    big = f"/{s3_bucket}/releases/v1/data/alpha_pairs/shard-00001.jsonl.gz"
    sizes = r2_rules.multipart[big]
    assert sizes == [PART, objects["data/alpha_pairs/shard-00001.jsonl.gz"][0] - PART]
    assert r2_rules.writes()[-1] == f"/{s3_bucket}/releases/v1/manifest.json"
    # What the store reports matches what is there.
    info = store.head("data/alpha_pairs/shard-00001.jsonl.gz")
    assert (info.size, info.sha256) == objects["data/alpha_pairs/shard-00001.jsonl.gz"][:2]
    assert store.head("data/alpha_pairs/shard-00099.jsonl.gz") is None
    assert store.list_keys("rejects/") == ["rejects/alpha_pairs/rejects-00000.jsonl.gz",
                                           "rejects/beta_pairs/rejects-00000.jsonl.gz"]
    assert store.get_bytes("README.md") == dict(big_release)["README.md"].read_bytes()
    assert verify_release(store.uri) == []


def test_the_r2_checks_catch_what_r2_rejects(s3_env, s3_bucket, r2_rules):
    # A client left with boto3's defaults, asked for an ACL and uneven parts: what R2 refuses, the hooks see.
    import boto3

    client = boto3.session.Session().client("s3")
    r2_rules.attach(client)
    client.put_object(Bucket=s3_bucket, Key="acl.txt", Body=b"x", ACL="public-read", ContentType="text/plain")
    upload = client.create_multipart_upload(Bucket=s3_bucket, Key="uneven.bin", ContentType="text/plain")
    parts = [{"PartNumber": number, "ETag": client.upload_part(Bucket=s3_bucket, Key="uneven.bin", PartNumber=number,
                                                               UploadId=upload["UploadId"], Body=body)["ETag"]}
             for number, body in ((1, b"a" * PART), (2, b"b" * (PART + 1)), (3, b"c"))]
    client.complete_multipart_upload(Bucket=s3_bucket, Key="uneven.bin", UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": parts})
    found = "\n".join(r2_rules.violations)
    assert "header x-amz-acl is not supported by R2" in found
    assert "checksum header x-amz-checksum-crc32 sent" in found  # boto3's default: checksums when supported
    assert f"part sizes [{PART}, {PART + 1}, 1] are not all equal but the last" in found
    with pytest.raises(AssertionError, match="requests that R2 would reject"):
        r2_rules.assert_clean()
    # boto3 sends aws-chunked bodies with checksum trailers only over HTTPS: hand the hook such a request.
    from botocore.awsrequest import AWSRequest

    chunked = AWSRequest(method="PUT", url=f"{s3_env.endpoint}/{s3_bucket}/chunked.bin", data=b"0\r\n\r\n",
                         headers={"Content-Encoding": "aws-chunked", "x-amz-trailer": "x-amz-checksum-crc32",
                                  "X-Amz-Content-SHA256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                                  "Content-Type": "text/plain"}).prepare()
    r2_rules.violations.clear()
    r2_rules._check(chunked)
    assert sorted(r2_rules.violations) == sorted([
        f"PUT /{s3_bucket}/chunked.bin: header x-amz-trailer is not supported by R2",
        f"PUT /{s3_bucket}/chunked.bin: aws-chunked body",
        f"PUT /{s3_bucket}/chunked.bin: streaming (chunked) signature"])
    r2_rules.violations.clear()


def test_the_manifest_is_created_once(s3_env, s3_bucket, tmp_path):
    store = open_store(f"s3://{s3_bucket}/rel")
    store.put_bytes("manifest.json", b'{"first": true}\n', if_none_match=True)
    with pytest.raises(AlreadyExists, match=f"s3://{s3_bucket}/rel/manifest.json already exists"):
        store.put_bytes("manifest.json", b'{"second": true}\n', if_none_match=True)
    # A large object is conditional too (If-None-Match on the multipart completion).
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (PART + 10))
    with pytest.raises(AlreadyExists):
        S3Store(s3_bucket, "rel", part_size=PART).put_file("manifest.json", big, if_none_match=True)
    assert store.get_bytes("manifest.json") == b'{"first": true}\n'
    assert s3_env.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    # The same bytes again (a retried commit whose first answer was lost) are not an error.
    store.put_bytes("manifest.json", b'{"first": true}\n', if_none_match=True)


def test_an_interrupted_publish_resumes_with_only_what_is_missing_or_differs(s3_env, s3_bucket, big_release,
                                                                            r2_rules):
    uri = f"s3://{s3_bucket}/resumed"
    big_release = big_release(uri)
    first = S3Store.from_uri(uri, part_size=PART)
    # The first run stops after three shards, one of them cut short mid-upload by a crash.
    for key, path in big_release[:2]:
        first.put_file(key, path)
    broken_key, broken_path = big_release[2]
    first.put_bytes(broken_key, broken_path.read_bytes()[:100])
    assert not first.exists("manifest.json")

    second = S3Store.from_uri(uri, part_size=PART)
    r2_rules.attach(second.client)
    publish(second, big_release)
    r2_rules.assert_clean()
    written = {path.split("/resumed/", 1)[1] for path in r2_rules.writes()}
    assert written == {key for key, _ in big_release[2:]}

    # The same release as an uninterrupted publish.
    publish(S3Store.from_uri(f"s3://{s3_bucket}/clean", part_size=PART), big_release)
    assert _objects(s3_env, s3_bucket, "resumed") == _objects(s3_env, s3_bucket, "clean")
    assert verify_release(uri) == []


def test_faults_on_the_wire_still_yield_the_same_release(s3_env, s3_bucket, big_release, r2_rules, monkeypatch):
    big_release = big_release(f"s3://{s3_bucket}/faulty")
    publish(S3Store(s3_bucket, "clean", part_size=PART), big_release)
    with FaultyProxy(s3_env.endpoint, stall_s=1.5) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        store = S3Store(s3_bucket, "faulty", part_size=PART, read_timeout=1.0, connect_timeout=1.0)
        r2_rules.attach(store.client)
        publish(store, big_release)
        assert verify_release(store.uri) == []
    r2_rules.assert_clean()
    assert set(proxy.faults) == {"drop_before", "drop_mid_body", "drop_after", "error_500", "slowdown_503",
                                 "stall"}
    assert sum(proxy.faults.values()) >= proxy.requests // 4
    assert _objects(s3_env, s3_bucket, "faulty") == _objects(s3_env, s3_bucket, "clean")


def test_bad_credentials_give_one_clear_line_without_the_secret(s3_env, s3_bucket, monkeypatch):
    wrong_secret = "not-the-secret-" + "x" * 20
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    store = open_store(f"s3://{s3_bucket}/rel")
    for attempt in (lambda: store.exists("manifest.json"), lambda: store.put_bytes("README.md", b"# hi\n"),
                    lambda: store.list_keys()):
        with pytest.raises(StoreError) as caught:
            attempt()
        message = str(caught.value)
        assert message.startswith("access denied (")
        assert "AWS_ACCESS_KEY_ID" in message and "\n" not in message
        assert wrong_secret not in message and s3_env.secret_key not in message


def test_a_missing_bucket_is_named(s3_env):
    store = open_store("s3://no-such-bucket-here/rel")
    expected = f"bucket 'no-such-bucket-here' does not exist at {s3_env.endpoint}"
    with pytest.raises(StoreError, match=expected):
        store.exists("manifest.json")  # a HEAD answers a bare 404 either way: the store tells them apart
    with pytest.raises(StoreError, match=expected):
        store.put_bytes("README.md", b"# hi\n")


def test_missing_credentials_and_unreachable_endpoints_are_one_line(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreError, match="^no S3 credentials found: set AWS_ACCESS_KEY_ID"):
        open_store("s3://bucket/rel").exists("manifest.json")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_env.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_ports(1)[0]}")  # nothing listens
    with pytest.raises(StoreError, match=r"^cannot read s3://bucket/rel/manifest.json via http://127\.0\.0\.1"):
        S3Store("bucket", "rel", max_attempts=2, connect_timeout=1).exists("manifest.json")


@pytest.mark.parametrize("uri, problem", [
    ("s3://", "not an S3 release URI"),
    ("s3://AKIA:secret@bucket/rel", "endpoint and keys come from the AWS environment"),
    ("s3://bucket/rel?endpoint=x", "endpoint and keys come from the AWS environment"),
    ("s3://bucket/../rel", "unsafe object key"),
])
def test_release_uris_hold_a_bucket_and_prefix_only(uri, problem):
    with pytest.raises(StoreError, match=problem):
        S3Store.from_uri(uri)


def test_the_region_defaults_to_auto_for_a_custom_endpoint(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert S3Store("bucket").client.meta.region_name == "auto"


def test_the_local_store_skips_unchanged_objects_too(tmp_path):
    store = LocalStore(tmp_path / "release")
    source = tmp_path / "shard.jsonl.gz"
    source.write_bytes(b"first")
    store.put_file("data/a/shard-00000.jsonl.gz", source)
    target = tmp_path / "release/data/a/shard-00000.jsonl.gz"
    inode = target.stat().st_ino
    assert store.put_file("data/a/shard-00000.jsonl.gz", source).sha256 == hashlib.sha256(b"first").hexdigest()
    assert target.stat().st_ino == inode  # left alone: same size and sha256
    source.write_bytes(b"other")
    store.put_file("data/a/shard-00000.jsonl.gz", source)
    assert target.read_bytes() == b"other" and target.stat().st_ino != inode
    with store.local_path("data/a/shard-00000.jsonl.gz") as path:
        assert path == target
    store.put_bytes("manifest.json", b"{}", if_none_match=True)
    store.put_bytes("manifest.json", b"{}", if_none_match=True)  # the same bytes: no conflict, as on S3
    with pytest.raises(AlreadyExists):
        store.put_bytes("manifest.json", b'{"other": 1}', if_none_match=True)
    assert (tmp_path / "release/manifest.json").read_bytes() == b"{}"


def test_the_store_travels_to_beam_workers(s3_env, s3_bucket):
    store = S3Store.from_uri(f"s3://{s3_bucket}/beam")
    store.exists("manifest.json")  # a live client, which must not travel
    copy = pickle.loads(pickle.dumps(store))
    assert copy.uri == store.uri and copy._client is None

    class Upload(beam.DoFn):
        def __init__(self, target):
            self.target = target

        def process(self, name):
            info = self.target.put_bytes(f"data/{name}.json", name.encode())
            yield info.key, info.size

    with test_pipeline.TestPipeline(argv=["--runner=DirectRunner"]) as pipeline:
        written = pipeline | beam.Create(["one", "three"]) | beam.ParDo(Upload(store))
        assert_that(written, equal_to([("data/one.json", 3), ("data/three.json", 5)]))
    assert store.list_keys("data/") == ["data/one.json", "data/three.json"]


def test_datasets_reads_a_release_from_the_bucket(s3_env, s3_bucket, tmp_path):
    datasets = pytest.importorskip("datasets")
    store = S3Store.from_uri(f"s3://{s3_bucket}/hf")
    publish(store, build_sample_release(tmp_path / "staging"))
    # Links a reader without credentials can use; the .gz must arrive as gzip bytes (no Content-Encoding).
    urls = [store.presigned_url(key) for key in store.list_keys("data/alpha_pairs/") if "/shard-" in key]
    loaded = datasets.load_dataset("json", data_files=urls, split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
    assert sorted(loaded["id"]) == sorted(row["id"] for row in sample_rows("alpha_pairs", 7))
